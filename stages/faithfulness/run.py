"""Faithfulness over an explain run: occlusion -> score(occlusion) -> faithfulness, content-addressed.

One path for ``dcam faithfulness``, ``dcam demo``, ``dcam run`` and the Prefect flows. Each stage output lives at
``ROOT/<stage>/<key>`` like every explain stage (:func:`stages.catalog.materialize`; the nodes ``occlusion``, ``score`` and
``faithfulness`` of :mod:`stages.graph`): the occlusion maps'
key digests the capture, the selection and the model; the faithfulness key adds every method's final maps. A
rerun with nothing changed reports all three ``cached`` and loads no model. The run description
(``ROOT/run.json``) gains a ``faithfulness`` entry (the artifact holding ``summary.json``) and an ``occlusion``
preset (its maps and scores), so ``dcam report`` shows both.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

from schemas.errors import DcamError
from stages.faithfulness.stage import (FAITHFULNESS_VERSION, OCCLUSION_VERSION, FaithfulnessConfig, run_faithfulness,
                                       run_occlusion)

#: Methods the faithfulness stage adds to a run's own: the reference and the noise map.
ADDED = ("occlusion", "random")


def selection_of(run: dict[str, Any], method: str):
    """The selection rows (all shards) behind ``method``'s maps, and their digests."""
    import pandas as pd

    from schemas.manifest import read_manifest

    paths = [s["path"] for s in run["presets"][method]["stages"] if s["stage"] == "select"]
    if not paths:
        raise DcamError(f"faithfulness: the run has no selection stage for {method!r}")
    frames = [pd.read_parquet(Path(p) / "selection.parquet") for p in paths]
    digests = [read_manifest(p).content_digest for p in paths]
    return pd.concat(frames, ignore_index=True), digests


def faithfulness_for_run(root, run: dict[str, Any], *, config: FaithfulnessConfig, methods: Sequence[str] | None = None,
                         load_adapter: Callable[[], Any], model_key: str = "",
                         tam_resize: str = "uint8", progress: Callable[[str, str], None] | None = None) -> dict[str, Any]:
    """Run the occlusion, occlusion-score and faithfulness stages for an explain run.

    Parameters
    ----------
    root : path or ArtifactRoot
        The explain run's artifact root.
    run : dict
        Its run description (``run.json``); updated in place and returned.
    config : FaithfulnessConfig
    methods : sequence of str, optional
        The run's methods to evaluate (default: all of them).
    load_adapter : callable
        Returns the captured model's adapter; called only when a stage must be computed.
    model_key : str
        Digest of the model's weights, part of the stage keys.
    tam_resize : str
        Passed to the occlusion maps' scoring.
    progress : callable(stage, sample_id), optional

    Returns
    -------
    dict
        ``run`` with ``faithfulness`` (artifact path), ``presets.occlusion`` and ``faithfulness_stages``.
    """
    from schemas.storage import as_root
    from stages.catalog import capture_digest, dataset_digest, materialize as run_stage
    from stages.graph import NODES, chain_of

    ar = as_root(root)
    known = [m for m in run["presets"] if m != "occlusion"]
    names = list(methods) if methods else known
    unknown = [m for m in names if m not in known and m not in ADDED]
    if unknown:
        raise DcamError(f"faithfulness: methods {unknown} are not in the run; it has {', '.join(known)}")
    names = [m for m in names if m not in ADDED]
    if not names:
        raise DcamError("faithfulness: no method of the run to evaluate")
    store, dataset = run["store"], run.get("dataset")
    if config.targets == "objects" and not dataset:
        raise DcamError("faithfulness: targets 'objects' needs the run's dataset; explain with --score or use "
                        "targets 'words'")
    cap = capture_digest(store, ar)
    selection, sel_digests = selection_of(run, names[0])
    adapter_cache: list[Any] = []

    def adapter():
        if not adapter_cache:
            adapter_cache.append(load_adapter())
        return adapter_cache[0]

    def tick(stage: str):
        return (lambda sid: progress(stage, sid)) if progress else None

    occ = run_stage(ar, "occlusion", OCCLUSION_VERSION, config.occlusion_key(),
                    {"capture": cap, "selection": ",".join(sel_digests), "model": model_key},
                    lambda out: run_occlusion(store, selection, out, adapter=adapter(), config=config, dataset=dataset,
                                              progress=tick("occlusion")),
                    kind="maps", needs=[store])
    stages = [occ]
    occ_scores = None
    if dataset:
        score = NODES["score"]
        cfg = {"method": "occlusion", "tam_resize": tam_resize}
        sc = run_stage(ar, "score", score.version, cfg, {"maps": occ.content_digest, "dataset": dataset_digest(dataset)},
                       lambda out: score.run(out, {"maps": occ.path, "dataset": dataset}, **cfg),
                       kind="scores", needs=[occ.path, dataset])
        stages.append(sc)
        occ_scores = sc.path
    maps = {m: run["presets"][m]["maps"] for m in names}
    maps["occlusion"] = occ.path
    from schemas.manifest import read_manifest

    inputs = {"capture": cap, "model": model_key, **{f"maps:{m}": read_manifest(p).content_digest for m, p in maps.items()}}
    chains = {}
    for m in names:
        chain = chain_of(run, m)
        if chain is not None:
            chains[m] = chain
    faith = run_stage(ar, "faithfulness", FAITHFULNESS_VERSION, {**config.key(), "methods": names}, inputs,
                      lambda out: run_faithfulness(store, maps, selection, out, adapter=adapter(), config=config,
                                                   chains=chains, dataset=dataset, progress=tick("faithfulness")),
                      kind="faithfulness", needs=[store, *maps.values()])
    stages.append(faith)
    run["presets"]["occlusion"] = {"stages": [s.to_dict() for s in stages[:-1]], "maps": occ.path,
                                   "scores": occ_scores, "chain": ["occlusion"],
                                   "profile": f"{config.baseline} baseline", "threshold": None}
    run["faithfulness"] = faith.path
    run["faithfulness_stages"] = [s.to_dict() for s in stages]
    return run


def load_summary(run: dict[str, Any]) -> dict[str, Any] | None:
    """The faithfulness ``summary.json`` of a run, or None when it has none."""
    path = run.get("faithfulness")
    if not path:
        return None
    try:
        return json.loads((Path(path) / "summary.json").read_text())
    except (OSError, ValueError) as e:
        raise DcamError(f"{path}: unreadable faithfulness summary: {e}") from None
