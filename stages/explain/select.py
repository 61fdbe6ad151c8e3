"""Selection stage: which (step, layer) explains each target.

A capture records attribution rows (``attr_steps``) for the steps it replayed. A step
is *feasible* (``method.md`` §1.2) when the hidden states its score is differentiated
against contain the whole image span; only feasible attribution steps are selectable:

* ``full`` mode: the step's own forward, as the capture stored it in ``step_feasible``;
* ``prefix-cache`` mode: the prefix pass, whose image-span activations every step's
  score reaches through the cache. ``step_feasible`` is False there (a step's own
  forward holds the response alone) and the capture refuses a prefix pass without
  the whole image span, so every attribution step of such a capture is feasible.
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
    attribution_steps: Sequence[int],
    *,
    policy: str = "unmask-step",
    steps: Sequence[int] | None = None,
    feasible: Sequence[bool] | None = None,
) -> list[tuple[int, float]]:
    """Steps (with weights summing to 1) that explain one target.

    Parameters
    ----------
    unmask_step : int
        Step at which the target was unmasked.
    attribution_steps : sequence of int
        Steps with an attribution row (the capture's ``attr_steps``).
    policy : {"unmask-step", "first-feasible", "last-feasible", "all-feasible-mean", "explicit"}
        ``unmask-step`` takes the target's unmask step, or the nearest feasible step (the earlier on a tie).
    steps : sequence of int, optional
        The steps for ``explicit`` (each must be a feasible attribution step); their maps are averaged.
    feasible : sequence of bool, optional
        Per attribution step, whether it is feasible (:func:`attribution_feasibility`); default: all are.
        Infeasible steps are never selected.

    Returns
    -------
    list of (step, weight)

    Raises
    ------
    DcamError
        If no attribution step is feasible, the policy is unknown, or an explicit step is not a feasible
        attribution step.
    """
    if feasible is not None and len(feasible) != len(attribution_steps):
        raise DcamError(f"feasible: {len(feasible)} flags for {len(attribution_steps)} attribution steps")
    flags = [True] * len(attribution_steps) if feasible is None else [bool(f) for f in feasible]
    usable = sorted({int(s) for s, ok in zip(attribution_steps, flags) if ok})
    if not usable:
        if attribution_steps:
            raise DcamError(f"no feasible step: none of the attribution steps {sorted({int(s) for s in attribution_steps})} "
                            "has the whole image span in its hooked hidden states")
        raise DcamError("no feasible step: the capture recorded no attribution row for this sample")
    if policy == "unmask-step":
        best = min(usable, key=lambda s: (abs(s - unmask_step), s))
        return [(best, 1.0)]
    if policy == "first-feasible":
        return [(usable[0], 1.0)]
    if policy == "last-feasible":
        return [(usable[-1], 1.0)]
    if policy == "all-feasible-mean":
        return [(s, 1.0 / len(usable)) for s in usable]
    if policy == "explicit":
        if not steps:
            raise DcamError("policy 'explicit' needs a list of steps (--steps 0,3,7)")
        bad = [s for s in steps if s not in usable]
        if bad:
            raise DcamError(f"explicit steps {bad} are not feasible; feasible steps: {usable}")
        uniq = sorted(set(int(s) for s in steps))
        return [(s, 1.0 / len(uniq)) for s in uniq]
    raise DcamError(f"unknown selection policy {policy!r}; known: {', '.join(POLICIES)}")


def attribution_feasibility(sample, attribution_steps: Sequence[int]) -> list[bool]:
    """Per attribution step of a captured sample, whether it is feasible (see the module docstring).

    Parameters
    ----------
    sample : schemas.capture.CaptureSample
    attribution_steps : sequence of int
        The sample's ``attr_steps``.

    Returns
    -------
    list of bool, one per attribution step
    """
    if sample.attrs.get("mode") == "prefix-cache":
        prefix = [f for f in sample.attrs.get("forwards", []) if f.get("kind") == "prefix"]
        ok = all(bool(f.get("contains_image_span")) for f in prefix)  # the capture refuses a prefix without it
        return [ok] * len(attribution_steps)
    step_feasible = sample.array("step_feasible")
    bad = [int(s) for s in attribution_steps if not 0 <= int(s) < len(step_feasible)]
    if bad:
        raise DcamError(f"sample {sample.sample_id}: attribution steps {bad} are outside step_feasible "
                        f"({len(step_feasible)} steps)")
    return [bool(step_feasible[int(s)]) for s in attribution_steps]


def selection_rows(sample, *, policy: str, layers: Sequence[int] | None, steps: Sequence[int] | None) -> list[dict[str, Any]]:
    """Selection rows of one captured sample (a :class:`schemas.capture.CaptureSample`)."""
    attr_steps = [int(s) for s in sample.array("attr_steps")]
    use_layers = list(layers) if layers else sample.layers
    missing = [l for l in use_layers if l not in sample.layers]
    if missing:
        raise DcamError(f"sample {sample.sample_id}: layers {missing} were not captured (captured: {sample.layers})")
    feasible = attribution_feasibility(sample, attr_steps)
    recorded = sample.recorded()
    rows = []
    for t in sample.targets:
        for step, weight in select_steps(t["unmask_step"], attr_steps, policy=policy, steps=steps, feasible=feasible):
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
