"""Smoke test of capture on a GPU: the toy and every replica family end to end on ``cuda`` (not a test).

For each model and each sampler mode it supports: one sample's plain generation and its capture
(``--record unmask-step``, the family's own sampler defaults) on the device, their ratio and the peak device memory; checks that the
capture's arrays are finite and shaped as the store expects, that gradients reach the image span,
and that a seed gives the same trajectory on the device as on the CPU (noise is drawn on the CPU and
moved). Exits 1 if any check fails, 2 if the device is missing. A few minutes on one GPU.

    python benchmarks/gpu_smoke.py [--device cuda] [--steps 8] [--families toy,lavida-llada,...]

``--device cpu`` runs the same checks on the CPU (to check the script itself).
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from stages.capture.config import family_config  # noqa: E402
from stages.capture.core import CaptureConfig, capture_sample  # noqa: E402
from stages.capture.registry import replica_families  # noqa: E402
from stages.capture.replicas import build_replica  # noqa: E402
from stages.dmllm.sampler import masked_diffusion_sample  # noqa: E402
from stages.dmllm.uniform import uniform_noise_sample  # noqa: E402
from stages.synth import render_scene  # noqa: E402

FAMILIES = ("toy", *replica_families())


def build(family: str):
    if family == "toy":
        from stages.capture.toy_adapter import ToyAdapter

        return ToyAdapter.load(None)
    return build_replica(family, seed=0)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def generate(adapter, image, config: CaptureConfig, seed: int):
    """One plain generation (no gradients) with the capture's sampler settings; the trajectory on the host."""
    with torch.no_grad():
        prep = adapter.prepare(image)
        if adapter.sampler == "uniform-noise":
            cache, _ = adapter.prefix_pass(prep)
            return uniform_noise_sample(
                lambda x, c: adapter.answer_logits(prep, cache, x, conditioning=c), gen_length=adapter.gen_length,
                vocab_size=adapter.vocab_size, steps=config.steps, generator=torch.Generator().manual_seed(seed),
                device=adapter.device,
            ).to("cpu")
        return masked_diffusion_sample(
            adapter.logits_fn(prep, config.mode), gen_length=adapter.gen_length, mask_id=adapter.mask_id,
            steps=config.steps, block_length=config.block_length, temperature=config.temperature,
            remasking=config.remasking, generator=torch.Generator().manual_seed(seed), forbid_ids=adapter.forbid_ids,
            device=adapter.device, schedule=config.schedule, top_p=config.top_p,
        ).to("cpu")


def check_capture(cap, adapter, image) -> list[str]:
    problems = []
    span = adapter.prepare(image).span
    n = span.grid_h * span.grid_w
    r, t = cap.arrays["recorded"].shape
    for layer, arrays in cap.layer_arrays.items():
        for name, a in arrays.items():
            if not np.all(np.isfinite(a)):
                problems.append(f"L{layer}/{name} not finite")
        if arrays["alpha"].shape[:2] != (r, t) or arrays["gxa"].shape != (r, t, n):
            problems.append(f"L{layer} shapes {arrays['alpha'].shape} / {arrays['gxa'].shape} for R={r} T={t} N={n}")
        if not np.abs(arrays["gxa"]).max() > 0:
            problems.append(f"L{layer}: no gradient reaches the image span")
    if cap.attrs["replay_max_abs_diff"] > 1e-3:
        problems.append(f"replay differs from generation by {cap.attrs['replay_max_abs_diff']:.2e}")
    return problems


def run_one(family: str, mode: str, device: torch.device, steps: int, image) -> dict:
    adapter = build(family)
    config = family_config(adapter, layers=(1,), steps=steps, mode=mode, record="unmask-step")  # family's sampler
    on_cpu = generate(adapter, image, config, seed=7)
    adapter.model.to(device)
    generate(adapter, image, config, seed=7)  # warm-up (kernels, allocator)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    t0 = time.perf_counter()
    on_device = generate(adapter, image, config, seed=7)
    synchronize(device)
    gen = time.perf_counter() - t0
    t0 = time.perf_counter()
    cap = capture_sample(adapter, image, config, sample_id="smoke")
    synchronize(device)
    capture = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
    problems = check_capture(cap, adapter, image)
    if not torch.equal(on_cpu.states, on_device.states):
        diff = int((on_cpu.final != on_device.final).sum())
        problems.append(f"the seed's trajectory differs between cpu and {device} ({diff} final tokens)")
    return {"family": family, "mode": mode, "gen": gen, "capture": capture, "peak_mb": peak, "problems": problems}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--families", default=",".join(FAMILIES))
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_smoke: error: CUDA is not available on this machine", file=sys.stderr)
        return 2
    image = render_scene(np.random.default_rng(3), size=96, min_objects=2, max_objects=2).image
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}), torch {torch.__version__}, {args.steps} steps, record unmask-step")
    print(f"{'family':<17}{'mode':<14}{'gen s':>8}{'capture s':>11}{'capture/gen':>13}{'peak MB':>10}  status")
    failed = 0
    t_all = time.perf_counter()
    for family in args.families.split(","):
        modes = build(family).modes
        for mode in modes:
            try:
                row = run_one(family, mode, device, args.steps, image)
            except Exception as exc:  # one failure is reported, the others still run
                failed += 1
                print(f"{family:<17}{mode:<14}{'':>42}  FAILED {type(exc).__name__}: {str(exc).splitlines()[0]}")
                traceback.print_exc(limit=-3)
                continue
            failed += bool(row["problems"])
            status = "ok" if not row["problems"] else "FAILED " + "; ".join(row["problems"])
            print(f"{family:<17}{mode:<14}{row['gen']:>8.3f}{row['capture']:>11.3f}{row['capture'] / row['gen']:>13.2f}"
                  f"{row['peak_mb']:>10.1f}  {status}")
    print(f"{failed} failed, {time.perf_counter() - t_all:.0f} s in all")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
