"""Run the explain chain for presets: select -> base map -> modules -> score.

Every stage output lives at ``ROOT/<stage>/<key>`` where the key digests the stage,
its version, its config and its inputs' content digests
(:mod:`stages.explain.addressing`). A stage whose output exists is ``cached``; a
changed parameter changes that stage's key and so every key after it, and only
those stages are ``computed``. Outputs are written to a temporary directory and
renamed into place, so a killed run never leaves a partial artifact at a final
path, and two runs racing on the same root never both publish one.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from schemas.errors import DcamError
from schemas.capture import finished_manifest
from schemas.lock import sweep_temporaries, temporary_dir
from schemas.manifest import StageManifest, read_manifest
from schemas.storage import ArtifactRoot, as_root
from schemas.verify import verified_manifest
from stages.explain.addressing import StageResult, artifact_dir, artifact_key, dataset_digest, is_done


@dataclass(frozen=True)
class ChainSpec:
    """What a preset (or a run configuration) asks the explain chain to do."""

    name: str
    base: str
    base_options: dict[str, Any]
    modules: tuple[str, ...]
    profile: str
    params: dict[str, dict[str, Any]]
    threshold: float | None = None


def chain_from_preset(name: str) -> ChainSpec:
    from stages.presets import get_preset

    try:
        p = get_preset(name)
    except ValueError as e:
        raise DcamError(str(e)) from None
    return ChainSpec(name=p.name, base=p.base, base_options=dict(p.base_options), modules=tuple(p.modules),
                     profile=p.profile, params={k: dict(v) for k, v in dict(p.params).items()},
                     threshold=p.threshold)


def run_stage(root: "ArtifactRoot | str | Path", stage: str, version: str, config: dict[str, Any],
              inputs: dict[str, str], compute: Callable[[Path], StageManifest], *, kind: str | None = None,
              needs: Sequence[str | Path] = ()) -> StageResult:
    """Compute a stage output unless it already exists; publish it atomically.

    ``root`` may be a URL root (:class:`schemas.storage.ArtifactRoot`): the output is then computed in
    the local mirror and uploaded, and ``needs`` (the input artifacts ``compute`` reads) are downloaded
    first when the mirror lacks them.
    """
    ar = as_root(root)
    key = artifact_key(stage, version, config, inputs)
    final = artifact_dir(ar.local, stage, key)
    done = ar.done_manifest(final, kind)
    if done is not None:
        if not ar.remote:  # a cached output is checked once, where it is reused (in a mirror: when it is read)
            done = verified_manifest(final, kind)
        return StageResult(stage, str(final), "cached", done.content_digest)
    t0 = time.perf_counter()
    if ar.remote and is_done(final, kind):  # complete in the mirror, never uploaded (an interrupted run)
        ar.publish(final)
        return StageResult(stage, str(final), "computed", read_manifest(final).content_digest,
                           time.perf_counter() - t0)
    for path in needs:
        ar.fetch(path)
        verified_manifest(path)
    sweep_stale(final.parent)
    status = "computed"
    with temporary_dir(final) as tmp:
        try:
            manifest = compute(tmp)
            try:
                os.rename(tmp, final)
            except OSError:
                if is_done(final, kind):  # another run published the same artifact first
                    manifest, status = read_manifest(final), "cached"
                else:
                    shutil.rmtree(final, ignore_errors=True)  # a stale partial directory
                    os.rename(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    if ar.publish(final) is False and ar.remote and status == "computed":
        status = "cached"  # another run uploaded it while this one computed it
    return StageResult(stage, str(final), status, manifest.content_digest,
                       time.perf_counter() - t0 if status == "computed" else 0.0)


def sweep_stale(stage_dir: Path) -> None:
    """Remove temporary outputs left by runs that were killed: those whose writer no longer holds their lock
    (:func:`schemas.lock.sweep_temporaries`; a live writer in another container or on another host does)."""
    sweep_temporaries(stage_dir)


def capture_digest(store_path: str | Path, root: "ArtifactRoot | str | Path | None" = None) -> str:
    """The content digest of a finished capture store (read at the URL root when ``root`` is one)."""
    if root is not None and as_root(root).owns(store_path):
        m = as_root(root).done_manifest(store_path, "capture")
    else:
        m = finished_manifest(store_path)  # once per shard: the manifest alone, not the Zarr store
    if m is None:
        raise DcamError(f"{store_path}: the capture run did not finish (no manifest.json); rerun 'dcam capture'")
    return m.content_digest


def explain_chain(
    store: str | Path,
    root: "ArtifactRoot | str | Path",
    spec: ChainSpec,
    *,
    policy: str = "unmask-step",
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    dataset: str | Path | None = None,
    sample_ids: Sequence[str] | None = None,
    tam_resize: str = "uint8",
) -> list[StageResult]:
    """Run select -> base -> modules (-> score when ``dataset`` is given) for one chain.

    ``tam_resize`` (``uint8``, TAM's ``eval.py``, or ``float``) is how TAM's protocol resizes a map
    (:func:`stages.score.stage.run_score`)."""
    from stages.explain.basemap import STAGE_VERSION as BASE_V, run_basemap
    from stages.explain.module import STAGE_VERSION as MOD_V, run_module
    from stages.explain.select import STAGE_VERSION as SEL_V, run_select

    root = as_root(root)
    results = []
    cap = capture_digest(store, root)
    shard = sorted(sample_ids) if sample_ids is not None else None
    sel_cfg = {"policy": policy, "layers": list(layers) if layers else None, "steps": list(steps) if steps else None,
               "sample_ids": shard}
    sel = run_stage(root, "select", SEL_V, sel_cfg, {"capture": cap},
                    lambda out: run_select(store, out, policy=policy, layers=layers, steps=steps, sample_ids=sample_ids),
                    kind="selection", needs=[store])
    results.append(sel)
    base_cfg = {"method": spec.base, "options": spec.base_options}
    prev = run_stage(root, "base", BASE_V, base_cfg, {"capture": cap, "selection": sel.content_digest},
                     lambda out: run_basemap(store, sel.path, out, method=spec.base, options=spec.base_options),
                     kind="maps", needs=[store, sel.path])
    results.append(prev)
    for module in spec.modules:
        params = spec.params.get(module, {})
        cfg = {"module": module, "profile": spec.profile, "params": params}
        src = prev.path
        prev = run_stage(root, module, MOD_V, cfg, {"maps": prev.content_digest},
                         lambda out, src=src, module=module, params=params: run_module(
                             src, out, module=module, profile=spec.profile, params=params),
                         kind="maps", needs=[src])
        results.append(prev)
    if spec.threshold is not None:
        from stages.explain.module import run_threshold

        src = prev.path
        prev = run_stage(root, "threshold", MOD_V, {"threshold": spec.threshold}, {"maps": prev.content_digest},
                         lambda out: run_threshold(src, out, threshold=spec.threshold), kind="maps", needs=[src])
        results.append(prev)
    if dataset is not None:
        from stages.score.stage import STAGE_VERSION as SCORE_V, run_score

        ds_digest = dataset_digest(dataset)
        src = prev.path
        results.append(run_stage(root, "score", SCORE_V, {"method": spec.name, "tam_resize": tam_resize},
                                 {"maps": prev.content_digest, "dataset": ds_digest},
                                 lambda out: run_score(src, dataset, out, method=spec.name, tam_resize=tam_resize),
                                 kind="scores",
                                 needs=[src, dataset]))
    return results


RUN_FILE = "run.json"


def explain_run(
    store: str | Path,
    root: str | Path,
    specs: Sequence[ChainSpec],
    *,
    policy: str = "unmask-step",
    layers: Sequence[int] | None = None,
    steps: Sequence[int] | None = None,
    dataset: str | Path | None = None,
    on_preset: Callable[[str], None] | None = None,
    tam_resize: str = "uint8",
) -> dict[str, Any]:
    """Run several chains over one capture and write ``ROOT/run.json`` describing the run.

    ``run.json`` maps each preset to its stage results, its final maps artifact and (with a
    dataset) its scores artifact; ``dcam report ROOT`` reads it.
    """
    import json

    root = Path(root)
    run: dict[str, Any] = {"store": str(Path(store).resolve()), "dataset": str(Path(dataset).resolve()) if dataset else None,
                           "policy": policy, "layers": list(layers) if layers else None, "tam_resize": tam_resize,
                           "presets": {}}
    for spec in specs:
        res = explain_chain(store, root, spec, policy=policy, layers=layers, steps=steps, dataset=dataset,
                            tam_resize=tam_resize)
        maps = [r for r in res if r.stage != "score"][-1]
        scores = [r for r in res if r.stage == "score"]
        run["presets"][spec.name] = {
            "stages": [r.to_dict() for r in res], "maps": maps.path,
            "scores": scores[0].path if scores else None, "chain": [spec.base, *spec.modules],
            "profile": spec.profile, "threshold": spec.threshold,
        }
        if on_preset:
            on_preset(spec.name)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".{RUN_FILE}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(run, indent=2))
    os.replace(tmp, root / RUN_FILE)
    return run
