"""The stage graph: every node with its named inputs, output, version and where it runs, and the one walker.

The nodes are registered in :data:`NODES` (``dcam graph`` prints them; ``docs/ARCHITECTURE.md`` draws them).
A node's function reads its input artifacts and writes its own; where that artifact lives and whether it is
reused is the catalog's decision (:mod:`stages.catalog`), never the node's.

Explain runs one path, whichever command starts it:

* :func:`explain_shard` walks every chain (:class:`stages.chain.Chain`) over one shard of samples:
  ``select -> base -> refine (one node per module) -> threshold -> score``;
* :func:`finish_run` merges the shards of each chain (``merge-maps``, ``merge-scores``) and writes
  ``ROOT/run.json`` (:class:`schemas.run.RunRecord`);
* :func:`run_explain` is the two in sequence. ``dcam explain`` calls it; ``dcam demo`` calls the two with its
  shards; ``dcam run`` and the Prefect flows wrap each call in a task.

Slicing (``--only STAGE`` / ``--from STAGE``, as Kedro's ``--nodes`` / ``--from-nodes``): STAGE is a node name
(``select``, ``base``, ``refine``, ``threshold``, ``score``) or a module name (``akd``, ``cba``, ...), which
names that module's refine node. ``--from`` recomputes STAGE and every node after it in each chain, even when
their outputs exist; ``--only`` recomputes STAGE alone (the nodes after it are reused when its output did not
change, so ``run.json`` always names each chain's final maps and scores). Either way the outputs upstream of
STAGE must exist (they are reused), else the run stops in one line before anything is written. A chain that
does not run STAGE is walked as usual.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from schemas.errors import DcamError
from schemas.manifest import StageManifest
from schemas.storage import ArtifactRoot, as_root
from stages.capture import STAGE_VERSION as CAPTURE_VERSION
from stages.catalog import StageResult, capture_manifest, dataset_digest, lookup, materialize, write_run_record
from stages.chain import Chain



@dataclass(frozen=True)
class Node:
    """A registered stage: its name, named inputs, output kind, version and where it runs.

    ``run(out_dir, inputs, **config)`` writes the node's artifact into ``out_dir`` and returns its manifest;
    ``inputs`` maps each input name to the path of that input's artifact.
    """

    name: str
    version: str
    inputs: tuple[str, ...]
    output: str
    where: str  # "GPU" (needs the model) or "CPU"
    summary: str
    run: Callable[..., StageManifest] | None = field(default=None, compare=False, repr=False)


def _select(out, inputs, **cfg):
    from stages.explain.select import run_select

    return run_select(inputs["capture"], out, policy=cfg["policy"], layers=cfg["layers"], steps=cfg["steps"],
                      sample_ids=cfg["sample_ids"])


def _base(out, inputs, **cfg):
    from stages.explain.basemap import run_basemap

    return run_basemap(inputs["capture"], inputs["selection"], out, method=cfg["method"], options=cfg["options"])


def _refine(out, inputs, **cfg):
    from stages.explain.postprocess import run_module

    return run_module(inputs["maps"], out, module=cfg["module"], profile=cfg["profile"], params=cfg["params"])


def _threshold(out, inputs, **cfg):
    from stages.explain.postprocess import run_threshold

    return run_threshold(inputs["maps"], out, threshold=cfg["threshold"])


def _score(out, inputs, **cfg):
    from stages.score.stage import run_score

    return run_score(inputs["maps"], inputs["dataset"], out, method=cfg["method"], tam_resize=cfg["tam_resize"])


def _merge_maps(out, inputs, **cfg):
    from stages.explain.merge import merge_maps

    return merge_maps([inputs[k] for k in sorted(inputs, key=_shard_order)], out)


def _merge_scores(out, inputs, **cfg):
    from stages.explain.merge import merge_scores

    return merge_scores([inputs[k] for k in sorted(inputs, key=_shard_order)], out)


def _shard_order(key: str) -> int:
    return int(key.lstrip("s"))


def _versions() -> dict[str, str]:
    from stages.explain.basemap import STAGE_VERSION as base
    from stages.explain.merge import STAGE_VERSION as merge
    from stages.explain.postprocess import STAGE_VERSION as refine
    from stages.explain.select import STAGE_VERSION as select
    from stages.faithfulness.stage import FAITHFULNESS_VERSION, OCCLUSION_VERSION
    from stages.report.build import STAGE_VERSION as report
    from stages.score.stage import STAGE_VERSION as score
    from stages.synth.write import STAGE_VERSION as synth

    return {"select": select, "base": base, "refine": refine, "score": score, "occlusion": OCCLUSION_VERSION,
            "faithfulness": FAITHFULNESS_VERSION, "dataset": synth, "report": report, "merge": merge}


_V = _versions()

#: Every node of the graph, in topological order.
NODES: dict[str, Node] = {n.name: n for n in (
    Node("dataset", _V["dataset"], (), "dataset", "CPU", "a synthetic dataset (run config 'dataset: {synth: ...}')"),
    Node("capture", CAPTURE_VERSION, ("dataset",), "capture", "GPU",
         "generation with hooks: activations, gradient reductions, TAM logits per sample (one store per run)"),
    Node("select", _V["select"], ("capture",), "selection", "CPU",
         "which (step, layer) explains each target (policy)", _select),
    Node("base", _V["base"], ("capture", "selection"), "maps", "CPU",
         "the chain's base method at token-grid resolution", _base),
    Node("refine", _V["refine"], ("maps",), "maps", "CPU",
         "one post-processing module (its artifact stage is the module's name)", _refine),
    Node("threshold", _V["refine"], ("maps",), "maps", "CPU", "zero every value below the chain's threshold",
         _threshold),
    Node("score", _V["score"], ("maps", "dataset"), "scores", "CPU", "plausibility against the dataset's masks",
         _score),
    Node("merge-maps", _V["merge"], ("maps",), "maps", "CPU", "one maps artifact from the shards' (sharded runs)",
         _merge_maps),
    Node("merge-scores", _V["merge"], ("scores",), "scores", "CPU",
         "one scores artifact from the shards' (sharded runs)", _merge_scores),
    Node("occlusion", _V["occlusion"], ("capture", "selection"), "maps", "GPU",
         "perturbation maps: the score drop when a grid cell is replaced"),
    Node("faithfulness", _V["faithfulness"], ("capture", "maps", "dataset"), "faithfulness", "GPU",
         "deletion/insertion curves, rank agreement, target sensitivity, cascading randomisation"),
    Node("report", _V["report"], ("maps", "scores", "faithfulness"), "report", "CPU", "the HTML report (not content-addressed)"),
)}

#: Nodes a chain walks, in order (``--only`` / ``--from`` accept these and the refine modules' names).
CHAIN_NODES = ("select", "base", "refine", "threshold", "score")


@dataclass(frozen=True)
class Step:
    """One node of one chain: the artifact stage it writes, its config, and where each input comes from
    (another step's stage, or ``capture`` / ``dataset``)."""

    node: str
    stage: str
    config: dict[str, Any]
    sources: dict[str, str]


def chain_steps(chain: Chain, *, policy: str, layers: Sequence[int] | None, steps: Sequence[int] | None,
                sample_ids: Sequence[str] | None, scored: bool, tam_resize: str) -> list[Step]:
    """The nodes one chain runs over one shard, with the configs that key their artifacts."""
    out = [Step("select", "select", {"policy": policy, "layers": list(layers) if layers else None,
                                     "steps": list(steps) if steps else None,
                                     "sample_ids": sorted(sample_ids) if sample_ids is not None else None},
                {"capture": "capture"}),
           Step("base", "base", {"method": chain.base, "options": dict(chain.base_options)},
                {"capture": "capture", "selection": "select"})]
    prev = "base"
    for module in chain.modules:
        out.append(Step("refine", module, {"module": module, "profile": chain.profile,
                                           "params": dict(chain.params.get(module, {}))}, {"maps": prev}))
        prev = module
    if chain.threshold is not None:
        out.append(Step("threshold", "threshold", {"threshold": chain.threshold}, {"maps": prev}))
        prev = "threshold"
    if scored:
        out.append(Step("score", "score", {"method": chain.name, "tam_resize": tam_resize},
                        {"maps": prev, "dataset": "dataset"}))
    return out


def check_slice(only: str | None = None, start: str | None = None) -> None:
    """Refuse an unknown ``--only`` / ``--from`` stage, or both at once (one line)."""
    from stages.refine.chain import MODULES

    if only is not None and start is not None:
        raise DcamError("give --only or --from, not both")
    for flag, value in (("--only", only), ("--from", start)):
        if value is not None and value not in CHAIN_NODES and value not in MODULES:
            raise DcamError(f"{flag}: unknown stage {value!r}; stages: {', '.join(CHAIN_NODES)} or a module "
                            f"({', '.join(MODULES)})")


def _matches(step: Step, name: str) -> bool:
    return name in (step.node, step.stage)


def _inputs(step: Step, done: dict[str, StageResult], external: dict[str, tuple[str, str]]):
    paths = {name: (external[src][0] if src in external else done[src].path) for name, src in step.sources.items()}
    digests = {name: (external[src][1] if src in external else done[src].content_digest)
               for name, src in step.sources.items()}
    return paths, digests


def lookup_upstream(root: ArtifactRoot, steps: list[Step], external: dict[str, tuple[str, str]],
                    name: str, flag: str) -> dict[str, StageResult]:
    """The existing outputs of the steps before the one named ``name`` (none when the chain does not run it).

    Raises
    ------
    DcamError
        When one of them does not exist (``flag`` is ``--only`` or ``--from``, for the message).
    """
    if not any(_matches(s, name) for s in steps):
        return {}
    done: dict[str, StageResult] = {}
    for step in steps:
        if _matches(step, name):
            break
        node = NODES[step.node]
        _paths, digests = _inputs(step, done, external)
        res = lookup(root, step.stage, node.version, step.config, digests, kind=node.output)
        if res is None:
            raise DcamError(f"{flag} {name}: the {step.stage!r} output it reads does not exist yet; run without "
                            "--only/--from first")
        done[step.stage] = res
    return done


def walk_chain(root: ArtifactRoot, steps: list[Step], external: dict[str, tuple[str, str]], *,
               only: str | None = None, start: str | None = None,
               upstream: dict[str, StageResult] | None = None) -> list[StageResult]:
    """Run a chain's steps in order through the catalog.

    ``external`` maps ``capture`` / ``dataset`` to (path, content digest). Without slicing every step is
    reused when its output exists and computed otherwise. With ``only`` / ``start`` the steps before the named
    one are the ``upstream`` outputs (:func:`lookup_upstream`, run by the caller for every chain before any
    write, which must have found them all); the named step
    (with ``start``: and every step after it) is recomputed even when its output exists; with ``only`` the
    steps after it are walked as usual (reused when the recomputed output is unchanged). A chain that does not
    run the named step is walked as usual.
    """
    name = only or start
    upstream = upstream or {}
    done: dict[str, StageResult] = {}
    results = []
    forcing = False
    for step in steps:
        hit = name is not None and _matches(step, name)
        if name is not None and not forcing and not hit and step.stage in upstream:
            res = upstream[step.stage]
        else:
            force = hit or (start is not None and forcing)
            forcing = forcing or hit
            node = NODES[step.node]
            paths, digests = _inputs(step, done, external)
            res = materialize(root, step.stage, node.version, step.config, digests,
                              lambda out, node=node, paths=paths, cfg=step.config: node.run(out, paths, **cfg),
                              kind=node.output, needs=[p for p in paths.values()], force=force)
        done[step.stage] = res
        results.append(res)
    return results


def explain_shard(root: "ArtifactRoot | str | Path", store: str | Path, chains: Sequence[Chain], *,
                  policy: str = "unmask-step", layers: Sequence[int] | None = None,
                  steps: Sequence[int] | None = None, dataset: str | Path | None = None,
                  sample_ids: Sequence[str] | None = None, tam_resize: str = "uint8", only: str | None = None,
                  start: str | None = None, on_chain: Callable[[str], None] | None = None
                  ) -> dict[str, list[dict[str, Any]]]:
    """Every chain over one shard (``sample_ids``; None: every sample): per chain, its node results."""
    ar = as_root(root)
    check_slice(only, start)
    cap = capture_manifest(store, ar)
    check_capture_serves(cap.config, chains, store)
    external = {"capture": (str(store), cap.content_digest)}
    if dataset is not None:
        external["dataset"] = (str(dataset), dataset_digest(dataset))
    if (only or start) == "score" and dataset is None:
        raise DcamError(f"{'--only' if only else '--from'} score: this run scores nothing (give the dataset: --score)")
    plans = {chain.name: chain_steps(chain, policy=policy, layers=layers, steps=steps, sample_ids=sample_ids,
                                     scored=dataset is not None, tam_resize=tam_resize) for chain in chains}
    # slicing: every chain's upstream outputs are looked up first, so a missing one stops the run before any write
    upstream = {name: lookup_upstream(ar, plan, external, only or start, "--only" if only else "--from")
                for name, plan in plans.items()} if (only or start) else {}
    out = {}
    for chain in chains:
        out[chain.name] = [r.to_dict() for r in walk_chain(ar, plans[chain.name], external, only=only, start=start,
                                                           upstream=upstream.get(chain.name))]
        if on_chain:
            on_chain(chain.name)
    return out


def check_capture_serves(capture_config: dict[str, Any], chains: Sequence[Chain], store: str | Path) -> None:
    """Refuse, before anything is written, a chain whose base method reads a gradient reduction the capture
    did not store and cannot derive (it derives any from ``--store-grads``). One line naming the chain, the
    method, what is missing and the capture that would serve it. Stores written before capture 1.2 record no
    ``reductions`` and are not checked here (each sample says what it holds)."""
    from stages.basemaps import reductions_for

    stored = capture_config.get("reductions")
    if stored is None or capture_config.get("store_grads"):
        return
    for chain in chains:
        missing = sorted(set(reductions_for([chain.base])) - set(stored))
        if missing:
            raise DcamError(f"chain {chain.name!r}: base method {chain.base!r} needs the gradient reduction(s) "
                            f"{missing}, which the capture {store} did not store (it holds {list(stored)}); "
                            f"recapture with 'dcam capture --methods {chain.base}' (or --store-grads)")


def _merge(root: ArtifactRoot, node: str, results: list[dict[str, Any]]) -> StageResult:
    n = NODES[node]
    return materialize(root, node, n.version, {}, {f"s{i}": r["content_digest"] for i, r in enumerate(results)},
                       lambda out: n.run(out, {f"s{i}": r["path"] for i, r in enumerate(results)}),
                       kind=n.output, needs=[r["path"] for r in results])


def finish_run(root: "ArtifactRoot | str | Path", store: str | Path, chains: Sequence[Chain],
               shard_results: Sequence[dict[str, list[dict[str, Any]]]], *, dataset: str | Path | None = None,
               policy: str = "unmask-step", layers: Sequence[int] | None = None,
               steps: Sequence[int] | None = None, tam_resize: str = "uint8", name: str | None = None
               ) -> dict[str, Any]:
    """Merge each chain's shards (one shard: its own artifacts) and write ``ROOT/run.json``.

    Returns the run description (:class:`schemas.run.RunRecord` as a dict); at a URL root the mirror's
    ``run.json`` names mirror paths and the root's names URLs.
    """
    from schemas.run import RunRecord

    ar = as_root(root)
    presets = {}
    for chain in chains:
        per_shard = [sr[chain.name] for sr in shard_results]
        maps = [[r for r in res if r["stage"] != "score"][-1] for res in per_shard]
        scores = [r for res in per_shard for r in res if r["stage"] == "score"]
        if len(per_shard) == 1:
            stages, final_maps, final_scores = list(per_shard[0]), maps[0]["path"], scores[0]["path"] if scores else None
        else:
            merged = [_merge(ar, "merge-maps", maps)] + ([_merge(ar, "merge-scores", scores)] if scores else [])
            stages = [{**r, "shard": i} for i, res in enumerate(per_shard) for r in res] + [m.to_dict() for m in merged]
            final_maps, final_scores = merged[0].path, merged[1].path if scores else None
        presets[chain.name] = {"stages": stages, "maps": final_maps, "scores": final_scores, "chain": chain.steps,
                               "profile": chain.profile, "threshold": chain.threshold, "spec": chain.key()}
    record = RunRecord(name=name, store=str(Path(store).resolve()),
                       dataset=str(Path(dataset).resolve()) if dataset else None, policy=policy,
                       layers=list(layers) if layers else None, steps=list(steps) if steps else None,
                       tam_resize=tam_resize, presets=presets)
    write_run_record(ar, record)
    return record.to_dict()


def check_unique_names(chains: Sequence[Chain]) -> None:
    """Refuse two chains of one run with the same name (their artifacts and run.json entries would collide)."""
    names = [c.name for c in chains]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise DcamError(f"explain: chain names must be unique; repeated: {dup}")


def run_explain(root: "ArtifactRoot | str | Path", store: str | Path, chains: Sequence[Chain], *,
                policy: str = "unmask-step", layers: Sequence[int] | None = None,
                steps: Sequence[int] | None = None, dataset: str | Path | None = None, tam_resize: str = "uint8",
                shards: Sequence[Sequence[str]] | None = None, name: str | None = None, only: str | None = None,
                start: str | None = None, on_chain: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Every chain over a capture (in ``shards``, or all samples at once), merged, with ``run.json`` written.

    The one explain path: ``dcam explain``, ``dcam demo``, ``dcam run`` and the Prefect flows run these same
    nodes with the same keys, so their artifacts are shared.
    """
    check_unique_names(chains)
    parts = list(shards) if shards is not None else [None]
    results = [explain_shard(root, store, chains, policy=policy, layers=layers, steps=steps, dataset=dataset,
                             sample_ids=part, tam_resize=tam_resize, only=only, start=start, on_chain=on_chain)
               for part in parts]
    return finish_run(root, store, chains, results, dataset=dataset, policy=policy, layers=layers, steps=steps,
                      tam_resize=tam_resize, name=name)


def chain_of(run: dict[str, Any], method: str) -> Chain | None:
    """The chain a run recorded for ``method`` (None for a method with no chain, e.g. ``occlusion``).

    A ``run.json`` written before the chain was recorded (no ``spec``) is read by rebuilding the chain from
    its first shard's node configs (the base node was then called ``gradcam``)."""
    entry = run["presets"][method]
    if entry.get("spec") is not None:
        return Chain.model_validate({"name": method, **entry["spec"]})
    from schemas.manifest import read_manifest

    fields: dict[str, Any] = {"name": method, "modules": [], "params": {}, "profile": "reference"}
    for s in entry["stages"]:
        if s.get("shard") not in (None, 0) or s["stage"] in ("select", "score") or s["stage"].startswith("merge"):
            continue
        cfg = read_manifest(s["path"]).config
        if s["stage"] in ("base", "gradcam"):
            fields.update(base=cfg["method"], base_options=dict(cfg.get("options") or {}))
        elif s["stage"] == "threshold":
            fields["threshold"] = float(cfg["threshold"])
        elif "module" in cfg:
            fields["modules"].append(cfg["module"])
            fields["profile"] = cfg.get("profile", fields["profile"])
            if cfg.get("params"):
                fields["params"][cfg["module"]] = dict(cfg["params"])
    return Chain.model_validate(fields) if "base" in fields else None
