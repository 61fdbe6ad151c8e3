"""Capture cost next to plain generation, on the same samples in one run (not a test).

Prints, for each sampler mode and each ``--record`` policy: no-grad generation seconds per sample,
capture seconds per sample (generation + gradients, ``capture_sample``), their ratio, the store
write's seconds per sample, bytes stored per sample and gradient rows per sample (recorded (step,
target) pairs); then, per mode, the speed-up of the batched vector-Jacobian product (a step's
targets in one backward, ``vmap``) over one backward per target (``loop``) for the default record
policy; and the peak RSS. Seconds are CPU seconds of the process (``time.process_time``): with one
thread they are the work done, whatever else runs on the machine.

    python benchmarks/bench_capture.py [--samples 6] [--steps 16] [--threads 1] [--weights DIR]

The thread count is set here (default 1): on a shared machine two threads made one sample vary from
0.75x to 16x its one-thread time. The toy model's timing does not depend on its weights; without
bundled weights a random model of the default size is used.
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
from stages.capture.core import RECORD, CaptureConfig, capture_sample  # noqa: E402
from stages.capture.toy_adapter import ToyAdapter  # noqa: E402
from stages.dmllm.sampler import masked_diffusion_sample  # noqa: E402
from stages.synth import render_scene  # noqa: E402
from stages.toy.model import ToyDMLLM  # noqa: E402


def capture_seconds(adapter, images, cfg: CaptureConfig) -> tuple[float, float, float, float]:
    """Capture and write seconds per sample, stored bytes per sample and recorded gradient rows per sample."""
    with tempfile.TemporaryDirectory() as d:
        store = CaptureStore.create(Path(d) / "s", config={"bench": True})
        rows, capture, write = 0, 0.0, 0.0
        for i, img in enumerate(images):
            t0 = time.process_time()
            cap = capture_sample(adapter, img, cfg, sample_id=str(i))
            t1 = time.process_time()
            store.write_sample(str(i), arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
            capture, write = capture + t1 - t0, write + time.process_time() - t1
            rows += int(cap.arrays["recorded"].sum())
        n = len(images)
        return capture / n, write / n, store.disk_bytes() / n, rows / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--weights", default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
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
    rows, speedups = [], []
    for mode in ("full", "prefix-cache"):
        t0 = time.process_time()
        for img in images:
            with torch.no_grad():
                prep = adapter.prepare(img)
                masked_diffusion_sample(adapter.logits_fn(prep, mode), gen_length=g, mask_id=adapter.mask_id,
                                        steps=args.steps, block_length=g, forbid_ids=adapter.forbid_ids,
                                        device=adapter.device)
        gen = (time.process_time() - t0) / len(images)
        times = {}
        for record in RECORD:
            cfg = CaptureConfig(layers=(1,), steps=args.steps, block_length=g, mode=mode, record=record)
            times[record] = capture_seconds(adapter, images, cfg)
            rows.append((mode, record, gen, *times[record]))
        cfg = CaptureConfig(layers=(1,), steps=args.steps, block_length=g, mode=mode, record=RECORD[0],
                            grad_batching="loop")
        loop = capture_seconds(adapter, images, cfg)[0]
        vmap = capture_seconds(adapter, images, CaptureConfig(**{**cfg.__dict__, "grad_batching": "vmap"}))[0]
        speedups.append((mode, loop / vmap))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"{'mode':<13}{'record':<13}{'gen s/sample':>13}{'capture s/sample':>18}{'capture/gen':>13}"
          f"{'write s/sample':>16}{'KB/sample':>11}{'grad rows':>11}")
    for mode, record, gen, cap, write, nbytes, grad_rows in rows:
        print(f"{mode:<13}{record:<13}{gen:>13.3f}{cap:>18.3f}{cap / gen:>13.2f}{write:>16.3f}{nbytes / 1024:>11.0f}"
              f"{grad_rows:>11.1f}")
    for mode, speed in speedups:
        print(f"{mode}: batched VJP (vmap) {speed:.2f}x the speed of one backward per target (loop), record {RECORD[0]}")
    print(f"peak RSS {peak:.0f} MB (whole process)")


if __name__ == "__main__":
    main()
