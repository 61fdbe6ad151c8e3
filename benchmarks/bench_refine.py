"""Throughput of the post-processing chain on one core, next to a per-pixel-loop rank filter.

Run:  OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_refine.py [--maps 5000] [--loop-maps 200]

Single core: the thread-count variables below are set before NumPy is imported and, when
threadpoolctl is installed, every BLAS/OpenMP pool is limited to 1 thread as well. (NumPy's
elementwise ufuncs and sorts are single-threaded anyway.) The loop filter is timed on a
subset and extrapolated per map. Not a test; never gates CI.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from stages.refine import MapContext  # noqa: E402
from stages.refine.akd import paper_kernel_size  # noqa: E402
from stages.refine.chain import apply_chain  # noqa: E402
from stages.refine.rank_filter import rank_gaussian_filter  # noqa: E402

OFFICIAL = ["akd", "dacg", "cba", "normalize", "sicd"]


def loop_rank_filter(img: np.ndarray, k: int = 3) -> np.ndarray:
    """The straightforward per-pixel loop (TAM's ``rank_guassian_filter``), the baseline."""
    out = np.zeros(img.shape)
    p = k // 2
    padded = np.pad(img, p, mode="reflect")
    offsets = np.arange(k * k) - k * k // 2
    for i in range(img.shape[0]):
        for j in range(img.shape[1]):
            window = np.sort(padded[i : i + k, j : j + k].ravel())
            mean = window.mean()
            if mean > 0:
                sigma = window.std() / mean
                kernel = np.exp(-(offsets**2) / (2 * sigma**2))
                out[i, j] = (window * kernel / kernel.sum()).sum()
    return out


def cam_like(n: int, h: int, w: int, seed: int) -> np.ndarray:
    """Normalised float32 maps: one Gaussian blob (std 3 tokens) plus uniform noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0, h, n), rng.uniform(0, w, n)
    maps = np.exp(-((yy - cy[:, None, None]) ** 2 + (xx - cx[:, None, None]) ** 2) / 18.0) + 0.2 * rng.random((n, h, w))
    lo = maps.min(axis=(1, 2), keepdims=True)
    return ((maps - lo) / (maps.max(axis=(1, 2), keepdims=True) + 1e-8)).astype(np.float32)


def best_of(repeats: int, fn) -> tuple[float, float]:
    """Best wall-clock and best CPU (process) time of ``repeats`` runs, in seconds."""
    wall, cpu = [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
    return min(wall), min(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--maps", type=int, default=5000)
    parser.add_argument("--loop-maps", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    limit = contextlib.nullcontext()
    with contextlib.suppress(ImportError):
        from threadpoolctl import threadpool_limits

        limit = threadpool_limits(1)
    ids = [11, 4, 87, 9, 4, 30] + [2] * 58  # a 64-token response padded with repeated EOS
    words = "a red ball and a blue cube on the table".split()
    context = MapContext(generated_ids=ids, words=words, num_steps=32)

    rows = []
    with limit:
        for h, w in ((27, 27), (21, 28)):
            maps = cam_like(args.maps, h, w, seed=h * w)
            sub = maps[: args.loop_maps].astype(np.float64)
            loop = np.divide(best_of(1, lambda: [loop_rank_filter(m) for m in sub]), len(sub))
            filt = np.divide(best_of(args.repeats, lambda: rank_gaussian_filter(maps)), len(maps))
            ref = np.divide(best_of(args.repeats, lambda: apply_chain(maps, OFFICIAL, profile="reference", contexts=context)), len(maps))
            paper = np.divide(best_of(args.repeats, lambda: apply_chain(maps, OFFICIAL, profile="paper", contexts=context)), len(maps))
            ks = paper_kernel_size(maps.std(axis=(1, 2)), (h, w), np.full(len(maps), 32))
            spread = ", ".join(f"k={k} {np.mean(ks == k):.0%}" for k in np.unique(ks))
            rows.append((f"{h}x{w}", "rank filter, per-pixel loop (k=3)", loop, loop))
            rows.append((f"{h}x{w}", "rank filter, vectorised (k=3)", filt, loop))
            rows.append((f"{h}x{w}", "chain akd,dacg,cba,normalize,sicd: reference", ref, loop))
            rows.append((f"{h}x{w}", f"chain, paper profile (32 steps; {spread})", paper, loop))

    print(f"{args.maps} maps per grid (loop: first {args.loop_maps}, extrapolated per map); best of {args.repeats}; one thread")
    print("maps/s from wall-clock time and from CPU time (the two differ when other processes share the cores)")
    print(f"{'grid':<6} {'what':<55} {'maps/s wall':>12} {'maps/s CPU':>11} {'us/map CPU':>11} {'vs loop (CPU)':>14}")
    for grid, what, (wall, cpu), (_, loop_cpu) in rows:
        print(f"{grid:<6} {what:<55} {1 / wall:>12,.0f} {1 / cpu:>11,.0f} {cpu * 1e6:>11.1f} {loop_cpu / cpu:>13,.0f}x")

if __name__ == "__main__":
    main()
