"""The explain flow over a large capture: orchestration overhead and incremental reruns (not a test).

Builds a dataset of N synthetic samples and a capture store for them, then, with the Prefect
server already up, times the explain flow three times side by side:

1. full run (nothing cached): wall time split into stage compute (the sum of the stages'
   own timings) and orchestration overhead (everything else: Prefect task and flow runs,
   caching checks, manifests);
2. identical rerun (everything cached);
3. rerun after changing one CBA parameter (``floor``): recomputes CBA and what follows.

Goals: overhead <= 5 % of the full run (issue 15; benchmarks/bench_orchestration.py prints it beside the
`dcam explain` path); incremental rerun <= 40 % of the full run.

To keep the set-up affordable on a CPU, the store holds real captures of a few template
samples (toy model) copied onto every sample id (same shapes and sizes as real ones; the maps
are not meaningful, the costs are).

    python benchmarks/bench_explain_flow.py [--samples 5000] [--shard-size 500] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def build_inputs(work: Path, n: int, templates: int = 8) -> tuple[Path, Path]:
    import numpy as np

    from schemas.capture import CaptureStore
    from stages.capture.core import CaptureConfig, capture_sample
    from stages.capture.run import finalize
    from stages.capture.toy_adapter import ToyAdapter
    from stages.ingest.loaders import load_dataset
    from stages.synth.write import write_dataset
    from stages.toy.model import ToyDMLLM

    data = work / "data"
    if not (data / "manifest.json").exists():
        write_dataset(data, count=n, seed=0)
    store_path = work / "store"
    if (store_path / "manifest.json").exists():
        return data, store_path
    try:
        model = ToyDMLLM.from_pretrained()
    except Exception:
        model = ToyDMLLM().eval()
    adapter = ToyAdapter(model)
    samples = load_dataset(data).samples
    from PIL import Image

    cfg = CaptureConfig(layers=(1,), steps=16, block_length=adapter.gen_length)
    caps = [capture_sample(adapter, np.asarray(Image.open(s.image_path).convert("RGB")), cfg, sample_id=s.sample_id)
            for s in samples[:templates]]
    store = CaptureStore.create(store_path, config={"bench": "explain-flow", **cfg.to_dict()})
    t0 = time.perf_counter()
    for s, cap in zip(samples, caps):
        store.write_sample(s.sample_id, arrays=cap.arrays, layer_arrays=cap.layer_arrays, attrs=cap.attrs)
    # The other samples get a template's group copied on disk: the same files write_sample would produce
    # (sample groups hold no sample id, so content and digest are the template's), at a fraction of the
    # cost of creating every Zarr array again (about 0.4 s per sample here).
    for i, s in enumerate(samples[templates:], start=templates):
        src = store_path / "samples" / samples[i % templates].sample_id
        shutil.copytree(src, store_path / "samples" / s.sample_id)
    finalize(store, data=data, seconds=time.perf_counter() - t0)
    return data, store_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--samples", type=int, default=5000)
    ap.add_argument("--shard-size", type=int, default=500)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench-explain-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_HOME", str(work / ".prefect"))
    t0 = time.perf_counter()
    data, store = build_inputs(work, args.samples)
    print(f"inputs: {args.samples} samples in {time.perf_counter() - t0:.0f} s ({work})")

    from prefect import flow

    from flows.config import RunConfig
    from flows.prefect_flows import explain_flow, with_runner

    @flow
    def warm_up() -> int:
        return 1

    warm_up()  # start the server before timing
    base = {"name": "bench", "root": str(work / "root"), "dataset": {"path": str(data)},
            "capture": {"model": "toy"}, "report": False, "shard_size": args.shard_size, "runner": "sequential",
            "explain": {"presets": [], "chains": [{"name": "dc", "preset": "diffusion-cam-reference"}]}}

    def run(params=None) -> tuple[float, float, int]:
        cfg = dict(base)
        if params:
            cfg["explain"] = {"presets": [], "chains": [{"name": "dc", "preset": "diffusion-cam-reference",
                                                         "params": params}]}
        rc = RunConfig.model_validate(cfg)
        t = time.perf_counter()
        res = with_runner(explain_flow, rc)(config=rc.model_dump(), store=str(store))
        wall = time.perf_counter() - t
        computed = [s for s in res["stage_results"] if s["status"] == "computed"]
        return wall, sum(s.get("seconds", 0.0) for s in computed), len(computed)

    full = run()
    again = run()
    incr = run({"cba": {"floor": 0.3}})
    print(f"\n{'run':<28}{'wall s':>9}{'stage compute s':>17}{'overhead':>10}{'computed':>10}{'vs full':>9}")
    for name, (wall, comp, n) in (("full (nothing cached)", full), ("identical rerun", again),
                                  ("one CBA parameter changed", incr)):
        over = (wall - comp) / wall if wall else 0.0
        print(f"{name:<28}{wall:>9.1f}{comp:>17.1f}{over:>9.1%}{n:>10}{wall / full[0]:>9.1%}")
    print(json.dumps({"samples": args.samples, "shard_size": args.shard_size, "full": full, "rerun": again,
                      "incremental": incr}))


if __name__ == "__main__":
    main()
