"""Capture cost next to plain generation, on the same samples in one run (not a test).

Prints, for each sampler mode: no-grad generation seconds per sample, capture seconds per
sample (generation + gradient replay), their ratio, bytes stored per sample, peak RSS, and the
speed-up of the batched vector-Jacobian product (all targets in one backward, ``vmap``) over
one backward per target (``loop``).

    python benchmarks/bench_capture.py [--samples 6] [--steps 16] [--weights DIR]

The toy model's timing does not depend on its weights; without bundled weights a random
model of the default size is used.
"""

from __future__ import annotations

import argparse
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from schemas.capture import CaptureStore  # noqa: E402
from stages.capture.core import CaptureConfig, capture_sample  # noqa: E402
from stages.capture.toy_adapter import ToyAdapter  # noqa: E402
from stages.dmllm.sampler import masked_diffusion_sample  # noqa: E402
from stages.synth import render_scene  # noqa: E402
from stages.toy.model import ToyDMLLM  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    try:
        model = ToyDMLLM.from_pretrained(args.weights)
        which = "bundled" if args.weights is None else args.weights
    except Exception:
        torch.manual_seed(0)
        model = ToyDMLLM().eval()
        which = "random init (default size)"
    adapter = ToyAdapter(model)
    images = [render_scene(np.random.default_rng(i)).image for i in range(args.samples)]
    g = adapter.gen_length
    print(f"toy dMLLM ({which}); {args.samples} samples, {args.steps} steps, gen length {g}, "
          f"torch threads {torch.get_num_threads()}")
    rows = []
    for mode in ("full", "prefix-cache"):
        t0 = time.perf_counter()
        for img in images:
            with torch.no_grad():
                prep = adapter.prepare(img)
                masked_diffusion_sample(adapter.logits_fn(prep, mode), gen_length=g, mask_id=adapter.mask_id,
                                        steps=args.steps, block_length=g, forbid_ids=adapter.forbid_ids)
        gen = (time.perf_counter() - t0) / len(images)
        times = {}
        for batching in ("vmap", "loop"):
            cfg = CaptureConfig(layers=(1,), steps=args.steps, block_length=g, mode=mode, grad_batching=batching)
            with tempfile.TemporaryDirectory() as d:
                store = CaptureStore.create(Path(d) / "s", config={"bench": True})
                t0 = time.perf_counter()
                for i, img in enumerate(images):
                    cap = capture_sample(adapter, img, cfg, sample_id=str(i))
                    store.write_sample(str(i), arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
                times[batching] = (time.perf_counter() - t0) / len(images)
                nbytes = store.disk_bytes() / len(images)
                n_targets = len(cap.attrs["targets"])
        rows.append((mode, gen, times["vmap"], times["vmap"] / gen, times["loop"] / times["vmap"], nbytes, n_targets))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'mode':<13}{'gen s/sample':>14}{'capture s/sample':>18}{'capture/gen':>13}"
          f"{'vmap speed-up':>15}{'KB/sample':>11}{'targets':>9}")
    for mode, gen, cap, ratio, speed, nbytes, nt in rows:
        print(f"{mode:<13}{gen:>14.3f}{cap:>18.3f}{ratio:>13.1f}{speed:>14.2f}x{nbytes / 1024:>11.0f}{nt:>9}")
    print(f"peak RSS {peak:.0f} MB (whole process)")


if __name__ == "__main__":
    main()
