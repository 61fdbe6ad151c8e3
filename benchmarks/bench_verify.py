"""Cost of verified reads in the explain chain (not a test).

Builds a capture store of N samples (real toy-model captures of a few templates copied onto every
sample id, as ``bench_explain_flow.py`` does) and runs the explain chain of one preset with scoring
side by side, into fresh roots:

1. verified (as shipped): every sample's attributes checked against its digest and the manifest's list,
   every array read checked against its own digest, every input artifact checked against its manifest;
2. unverified: the same chain with those checks replaced by plain reads.

Prints the CPU time of each (best of ``--repeat``, after one untimed warm-up run, in alternating order;
CPU time of all threads, as wall time on a shared machine measures its load) and their difference per
sample; the time spent inside the digest functions themselves during the
verified runs (a direct measure, immune to the load of a shared machine), per sample and as a share of
the explain run; the CPU time of a rerun where every stage is cached (verified: each cached artifact's files
are hashed once); and the cost of ``dcam inspect --verify`` (every array of every sample) per sample.

    python benchmarks/bench_verify.py [--samples 200] [--repeat 2] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))


@contextmanager
def timed_digests(spent: list[float]):
    """Add the seconds spent in the digest checks of the readers to ``spent``."""
    import schemas.capture
    import stages.catalog

    def timer(fn):
        def wrapped(*a, **k):
            t = time.process_time()
            try:
                return fn(*a, **k)
            finally:
                spent.append(time.process_time() - t)
        return wrapped

    with mock.patch.object(schemas.capture, "array_digest", timer(schemas.capture.array_digest)), \
            mock.patch.object(schemas.capture, "sample_digest", timer(schemas.capture.sample_digest)), \
            mock.patch.object(schemas.capture, "store_digest", timer(schemas.capture.store_digest)), \
            mock.patch.object(stages.catalog, "verified_manifest", timer(stages.catalog.verified_manifest)):
        yield


@contextmanager
def unverified():
    """Reads without the digest checks: the arrays and attributes as Zarr returns them."""
    import numpy as np

    import schemas.verify
    from schemas.capture import CaptureSample, CaptureStore
    from schemas.manifest import read_manifest

    def sample(self, sample_id):
        g = self._samples()[sample_id]
        return CaptureSample(sample_id, dict(g.attrs), g)

    def array(self, name, layer=None):
        return np.asarray(self.group[f"L{layer}/{name}" if layer is not None else name][...])

    with mock.patch.object(CaptureStore, "sample", sample), mock.patch.object(CaptureSample, "array", array), \
            mock.patch("stages.catalog.verified_manifest", lambda path, kind=None: read_manifest(path)):
        schemas.verify._VERIFIED.clear()
        yield


def main() -> None:
    from bench_explain_flow import build_inputs

    import schemas.verify
    from schemas.capture import verify_store
    from stages.graph import explain_shard
    from stages.presets import get_preset

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--preset", default="diffusion-cam-reference")
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-verify-"))
    work.mkdir(parents=True, exist_ok=True)
    data, store = build_inputs(work, args.samples)
    spec = get_preset(args.preset)

    def run(tag: str, fresh: bool = True) -> float:
        root = work / f"root-{tag}"
        if fresh:
            shutil.rmtree(root, ignore_errors=True)
        schemas.verify._VERIFIED.clear()
        t = time.process_time()
        explain_shard(root, store, [spec], dataset=data)
        return time.process_time() - t

    run("warm-up")
    times = {"verified": [], "unverified": []}
    spent: list[float] = []
    for i in range(args.repeat):  # alternate the order, so drift affects both alike
        for tag in (("verified", "unverified") if i % 2 == 0 else ("unverified", "verified")):
            if tag == "verified":
                with timed_digests(spent):
                    times[tag].append(run(tag))
            else:
                with unverified():
                    times[tag].append(run(tag))
    best = {k: min(v) for k, v in times.items()}
    direct = sum(spent) / args.repeat
    rerun = {"verified": run("verified", fresh=False)}  # everything cached: each artifact is checked once
    with unverified():
        rerun["unverified"] = run("unverified", fresh=False)
    t = time.process_time()
    problems = verify_store(store)
    full = time.process_time() - t
    over = best["verified"] - best["unverified"]
    n = args.samples
    print(f"explain chain '{args.preset}' + score over {n} samples (CPU seconds, best of {args.repeat}):")
    print(f"  verified   {best['verified']:.2f} s   ({1e3 * best['verified'] / n:.2f} ms/sample)")
    print(f"  unverified {best['unverified']:.2f} s   ({1e3 * best['unverified'] / n:.2f} ms/sample)")
    print(f"  difference {1e3 * over / n:.2f} ms/sample = {100 * over / best['unverified']:.1f} % of explain")
    print(f"  inside the digest checks: {1e3 * direct / n:.2f} ms/sample = "
          f"{100 * direct / (sum(times['verified']) / args.repeat):.1f} % of the verified explain run")
    print(f"cached rerun: verified {rerun['verified']:.2f} s, unverified {rerun['unverified']:.2f} s "
          f"({1e3 * (rerun['verified'] - rerun['unverified']) / n:.2f} ms/sample to check the cached artifacts)")
    print(f"inspect --verify (every array): {1e3 * full / n:.2f} ms/sample, {len(problems)} problems")


if __name__ == "__main__":
    main()
