"""Selection stage: which (step, layer) explains each target.

A capture records attribution rows only for steps whose score reaches an
image-span activation, so every recorded attribution step is feasible: in
``full`` mode the step's own forward contains the image span; in ``prefix-cache``
mode the step's score reaches the prefix pass's activations through the cache.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from schemas.errors import DcamError
from schemas.manifest import ARTIFACT_SCHEMA_VERSIONS, InputRef, SampleStatus, StageManifest, digest_files, write_manifest

POLICIES = ("unmask-step", "first-feasible", "last-feasible", "all-feasible-mean", "explicit")
STAGE_VERSION = "1.0"
KIND = "selection"


def select_steps(
    unmask_step: int,
    feasible_steps: Sequence[int],
    *,
    policy: str = "unmask-step",
    steps: Sequence[int] | None = None,
) -> list[tuple[int, float]]:
    """Steps (with weights summing to 1) that explain one target.

    Parameters
    ----------
    unmask_step : int
        Step at which the target was unmasked.
    feasible_steps : sequence of int
        Steps with an attribution row (see the module docstring).
    policy : {"unmask-step", "first-feasible", "last-feasible", "all-feasible-mean", "explicit"}
        ``unmask-step`` takes the target's unmask step, or the nearest feasible step (the earlier on a tie).
    steps : sequence of int, optional
        The steps for ``explicit`` (each must be feasible); their maps are averaged.

    Returns
    -------
    list of (step, weight)
    """
    feasible = sorted(set(int(s) for s in feasible_steps))
    if not feasible:
        raise DcamError("no feasible step: the capture recorded no attribution row for this sample")
    if policy == "unmask-step":
        best = min(feasible, key=lambda s: (abs(s - unmask_step), s))
        return [(best, 1.0)]
    if policy == "first-feasible":
        return [(feasible[0], 1.0)]
    if policy == "last-feasible":
        return [(feasible[-1], 1.0)]
    if policy == "all-feasible-mean":
        return [(s, 1.0 / len(feasible)) for s in feasible]
    if policy == "explicit":
        if not steps:
            raise DcamError("policy 'explicit' needs a list of steps (--steps 0,3,7)")
        bad = [s for s in steps if s not in feasible]
        if bad:
            raise DcamError(f"explicit steps {bad} are not feasible; feasible steps: {feasible}")
        uniq = sorted(set(int(s) for s in steps))
        return [(s, 1.0 / len(uniq)) for s in uniq]
    raise DcamError(f"unknown selection policy {policy!r}; known: {', '.join(POLICIES)}")


def selection_rows(sample, *, policy: str, layers: Sequence[int] | None, steps: Sequence[int] | None) -> list[dict[str, Any]]:
    """Selection rows of one captured sample (a :class:`schemas.capture.CaptureSample`)."""
    attr_steps = [int(s) for s in sample.array("attr_steps")]
    use_layers = list(layers) if layers else sample.layers
    missing = [l for l in use_layers if l not in sample.layers]
    if missing:
        raise DcamError(f"sample {sample.sample_id}: layers {missing} were not captured (captured: {sample.layers})")
    recorded = sample.recorded()
    rows = []
    for t in sample.targets:
        for step, weight in select_steps(t["unmask_step"], attr_steps, policy=policy, steps=steps):
            if not recorded[attr_steps.index(step), int(t["index"])]:
                raise DcamError(
                    f"sample {sample.sample_id}: policy {policy!r} asks for step {step} of target {t['index']} "
                    f"({t['text']!r}), which the capture did not record (--record "
                    f"{sample.attrs.get('record', 'unmask-step')}); capture with --record all for this policy")
            for layer in use_layers:
                rows.append({
                    "sample_id": sample.sample_id, "target": int(t["index"]), "word": t["text"],
                    "target_kind": t["kind"], "policy": policy, "step": step, "layer": int(layer),
                    "attr_row": attr_steps.index(step), "weight": weight,
                })
    return rows


def run_select(store_path: str | Path, out_dir: str | Path, *, policy: str = "unmask-step",
               layers: Sequence[int] | None = None, steps: Sequence[int] | None = None,
               sample_ids: Sequence[str] | None = None) -> StageManifest:
    """Write ``selection.parquet`` for every ok sample of a capture store."""
    import pandas as pd

    from schemas.capture import CaptureStore

    if policy not in POLICIES:
        raise DcamError(f"unknown selection policy {policy!r}; known: {', '.join(POLICIES)}")
    if policy == "explicit" and not steps:
        raise DcamError("policy 'explicit' needs a list of steps (--steps 0,3,7)")
    if policy != "explicit" and steps:
        raise DcamError(f"steps are only used by policy 'explicit', not {policy!r}")
    t0 = time.perf_counter()
    store = CaptureStore.open(store_path)
    if store.config.get("record") == "unmask-step" and policy != "unmask-step":
        raise DcamError(f"--policy {policy}: the capture {store_path} recorded each target at its unmask step only "
                        "(--record unmask-step); capture with --record all for this policy")
    cap_manifest = store.manifest()
    rows, statuses = [], []
    wanted = set(sample_ids) if sample_ids is not None else None
    for sid in store.sample_ids():
        if wanted is not None and sid not in wanted:
            continue
        try:
            s = store.sample(sid)
            if not s.ok:
                statuses.append(SampleStatus(sample_id=sid, status="failed", reason=f"capture failed: {s.attrs.get('reason')}"))
                continue
            rows.extend(selection_rows(s, policy=policy, layers=layers, steps=steps))
            statuses.append(SampleStatus(sample_id=sid, status="ok"))
        except DcamError as e:
            statuses.append(SampleStatus(sample_id=sid, status="failed", reason=str(e)))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cols = ["sample_id", "target", "word", "target_kind", "policy", "step", "layer", "attr_row", "weight"]
    pd.DataFrame(rows, columns=cols).to_parquet(out / "selection.parquet", index=False)
    manifest = StageManifest(
        kind=KIND, schema_version=ARTIFACT_SCHEMA_VERSIONS[KIND], stage="select", stage_version=STAGE_VERSION,
        config={"policy": policy, "layers": list(layers) if layers else None, "steps": list(steps) if steps else None,
                "sample_ids": sorted(wanted) if wanted is not None else None},
        inputs={"capture": InputRef(path=str(Path(store_path).resolve()), kind="capture",
                                    content_digest=cap_manifest.content_digest if cap_manifest else store.content_digest())},
        content_digest=digest_files(out), samples=statuses, timings={"wall": time.perf_counter() - t0},
    )
    write_manifest(out, manifest)
    return manifest
