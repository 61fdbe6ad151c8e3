"""``dcam inspect``: summarise and validate any artifact, with its lineage."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from schemas.errors import DcamError


def inspect_capture(path: Path) -> dict:
    """Summary of a capture store and the problems found validating it against its schema."""
    from schemas.capture import CaptureStore

    store = CaptureStore.open(path)
    problems: list[str] = []
    samples = []
    for sid in store.sample_ids():
        try:
            s = store.sample(sid)  # its attributes checked against its digests ('--verify': every array too)
        except DcamError as e:
            problems.append(str(e))
            samples.append({"sample_id": sid, "status": "damaged", "reason": str(e), "bytes": store.disk_bytes(sid)})
            continue
        row = {"sample_id": sid, "status": s.attrs.get("status"), "bytes": store.disk_bytes(sid)}
        if not s.ok:
            row["reason"] = s.attrs.get("reason")
            samples.append(row)
            continue
        try:
            span = s.span
            n = span.grid_h * span.grid_w
            steps = int(s.attrs["steps"])
            tokens = s.group["tokens"]
            feas = s.array("step_feasible")
            attr_steps = s.array("attr_steps")
            t = len(s.targets)
            if tokens.shape[0] != steps + 1:
                problems.append(f"{sid}: tokens has {tokens.shape[0]} states for {steps} steps")
            for layer in s.layers:
                acts = s.group[f"L{layer}/acts"]
                alpha = s.group[f"L{layer}/alpha"]
                if acts.shape[1] != n:
                    problems.append(f"{sid}: L{layer}/acts has {acts.shape[1]} tokens, grid {span.grid} needs {n}")
                if alpha.shape[:2] != (len(attr_steps), t):
                    problems.append(f"{sid}: L{layer}/alpha shape {alpha.shape} != ({len(attr_steps)}, {t}, D)")
            row.update({
                "generated_text": s.attrs.get("generated_text"),
                "mode": s.attrs.get("mode"),
                "steps": steps,
                "feasible_steps": [int(i) for i in feas.nonzero()[0]],
                # hooked forwards holding the whole image span (prefix-cache: the prefix pass alone)
                "feasible_forwards": [f for f in s.attrs.get("forwards", []) if f.get("contains_image_span")],
                "attr_steps": [int(i) for i in attr_steps],
                "layers": s.layers,
                "grid": list(span.grid),
                "targets": [tg["text"] for tg in s.targets],
                "replay_max_abs_diff": s.attrs.get("replay_max_abs_diff"),
            })
        except (KeyError, ValueError, DcamError) as e:
            problems.append(f"{sid}: {e}")
        samples.append(row)
    incomplete = store.incomplete_ids()
    if incomplete:
        problems.append(f"{len(incomplete)} incomplete sample group(s) (an interrupted run; rerun capture to finish): {incomplete[:5]}")
    manifest = store.manifest()
    if manifest is None:
        problems.append("no manifest.json: the capture run did not finish; rerun 'dcam capture' with the same settings")
    n_ok = sum(r["status"] == "ok" for r in samples)
    return {
        "path": str(path),
        "kind": "capture",
        "schema_version": store.root.attrs.get("schema_version"),
        "config": store.config,
        "n_samples": len(samples),
        "n_ok": n_ok,
        "n_failed": len(samples) - n_ok,
        "bytes_on_disk": store.disk_bytes(),
        "bytes_per_sample": store.disk_bytes() // max(1, len(samples)),
        "samples": samples,
        "problems": problems,
        "lineage": lineage(path) if manifest else [],
    }


def _read_at(location: str):
    """The manifest of the artifact at a local path or a URL."""
    from schemas.manifest import read_manifest
    from schemas.storage import is_url, read_remote_manifest

    if not is_url(location):
        return read_manifest(location)
    m = read_remote_manifest(location)
    if m is None:
        raise DcamError(f"{location} is not a diffusion-cam artifact: no manifest.json there "
                        "(absent, or an upload that did not finish)")
    return m


def _locate(recorded: str, referrer: str) -> str:
    """Where an input recorded in the manifest at ``referrer`` is. Manifests record local paths (at a URL
    root, those of the run's mirror): an input of an artifact at a URL root is ``ROOT/<stage>/<key>`` when
    that has a manifest, else (an external dataset) as recorded."""
    from schemas.storage import at_root, is_url, read_remote_manifest, root_of

    if is_url(recorded) or not is_url(referrer):
        return recorded
    found = at_root(root_of(referrer), recorded)
    return found if read_remote_manifest(found) is not None else recorded


def lineage(path: Path | str) -> list[dict]:
    """The chain of manifests from ``path`` (a directory or a URL) back to the dataset (first = this artifact)."""
    from schemas.storage import is_url

    chain, seen = [], set()
    todo = [str(path)]
    while todo:
        p = todo.pop(0)
        key = p if is_url(p) else str(Path(p).resolve())
        if key in seen:
            continue
        seen.add(key)
        try:
            m = _read_at(p)
        except DcamError as e:
            chain.append({"path": p, "error": str(e)})
            continue
        chain.append({
            "path": p, "kind": m.kind, "stage": m.stage, "stage_version": m.stage_version,
            "schema_version": m.schema_version, "content_digest": m.content_digest, "config": m.config,
            "code_version": m.code_version, "created": m.created, "timings": m.timings,
            "n_ok": m.n_ok, "n_failed": m.n_failed,
            "failed": [{"sample_id": s.sample_id, "reason": s.reason} for s in m.failed()],
            "inputs": {k: v.model_dump() for k, v in m.inputs.items()},
        })
        todo.extend(_locate(ref.path, p) for ref in m.inputs.values())
    return chain


def inspect_artifact(path: Path) -> dict:
    if (path / "zarr.json").exists() and not (path / "index.parquet").exists():
        return inspect_capture(path)
    from schemas.manifest import read_manifest

    m = read_manifest(path)
    return {
        "path": str(path), "kind": m.kind, "schema_version": m.schema_version, "stage": m.stage,
        "n_samples": len(m.samples), "n_ok": m.n_ok, "n_failed": m.n_failed,
        "bytes_on_disk": sum(p.stat().st_size for p in path.rglob("*") if p.is_file()),
        "problems": [], "lineage": lineage(path),
    }


def inspect_remote(url: str) -> dict:
    """An artifact at a URL root, from its manifest and its inputs' manifests (data files are not read)."""
    from schemas.storage import open_fs, storage_error

    m = _read_at(url)
    fs, path = open_fs(url)
    try:
        size = fs.du(path)
    except Exception as e:
        raise storage_error(url, e) from None
    return {
        "path": url, "kind": m.kind, "schema_version": m.schema_version, "stage": m.stage, "remote": True,
        "config": m.config, "n_samples": len(m.samples), "n_ok": m.n_ok, "n_failed": m.n_failed,
        "failed": [{"sample_id": s.sample_id, "reason": s.reason} for s in m.failed()],
        "bytes_on_disk": size, "problems": [], "lineage": lineage(url),
    }


def inspect(
    path: str = typer.Argument(..., help="An artifact directory (capture store, selection, maps, scores, report, "
                                         "dataset), or its URL at a URL root (s3://bucket/prefix/<stage>/<key>)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a summary."),
    verify: bool = typer.Option(False, "--verify", help="Recompute every digest the artifact records (a capture "
                                "store: every array of every sample) and print one line per problem."),
    deep: bool = typer.Option(False, "--deep", help="With --verify: also verify the artifacts it was computed from, "
                              "back to the dataset, and that each still has the digest recorded for it."),
) -> None:
    """Summarise and validate an artifact against its schema, and show its lineage back to the dataset.

    For a capture store: samples, per-sample status (failed ones with their reason), steps, feasible steps,
    layers, grid, targets and bytes on disk. Exit status 1 if validation found problems. ``--verify``
    recomputes the digests instead (``--deep``: of the whole lineage) and prints one line per mismatch. At a
    URL root only the manifests are read (the artifact's and its lineage's); the endpoint and credentials come
    from the environment (AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, ...).
    """
    from schemas.storage import is_url

    if deep and not verify:
        raise DcamError("--deep applies to --verify; pass both")
    if verify:
        verify_command(path, deep=deep)
        return
    if is_url(path):
        info = inspect_remote(path)
    else:
        if not Path(path).exists():
            raise DcamError(f"{path} does not exist")
        info = inspect_artifact(Path(path))
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
    else:
        _print_summary(info)
    if info["problems"]:
        raise typer.Exit(1)


def verify_command(path: str, *, deep: bool) -> None:
    """``dcam inspect PATH --verify``: one line per problem and exit status 1, or one line saying it is intact."""
    from schemas.storage import is_url
    from schemas.verify import verify_artifact

    if is_url(path):
        raise DcamError(f"--verify reads every data file: run it on a local copy of {path} (its mirror)")
    if not Path(path).exists():
        raise DcamError(f"{path} does not exist")
    problems = verify_artifact(path, deep=deep)
    for line in problems:
        typer.echo(f"problem: {line}")
    if problems:
        raise typer.Exit(1)
    typer.echo(f"verified: {path}{' and its inputs' if deep else ''}: every digest matches")


def _print_summary(info: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    con = Console()
    con.print(f"[bold]{info['path']}[/bold]  kind {info['kind']}  schema {info['schema_version']}")
    con.print(f"samples {info['n_samples']}: ok {info['n_ok']}, failed {info['n_failed']};  "
              f"{info['bytes_on_disk'] / 1e6:.2f} MB on disk")
    if info.get("remote"):
        con.print("at a URL root: manifests only (the data files were not read)")
    elif info["kind"] == "capture":
        cfg = info["config"]
        con.print(f"model {cfg.get('model')}  mode {cfg.get('mode')}  layers {cfg.get('layers')}  "
                  f"steps {cfg.get('steps')}  block {cfg.get('block_length')}  score {cfg.get('score')}")
        table = Table("sample", "status", "feasible/steps", "grid", "targets", "KB", "text / reason")
        for r in info["samples"][:50]:
            if r["status"] == "ok":
                feasible = (f"{len(r.get('feasible_steps', []))}/{r.get('steps')}" if r.get("mode") != "prefix-cache"
                            else f"prefix pass -> {len(r.get('attr_steps', []))}")
                table.add_row(r["sample_id"], "ok", feasible,
                              "x".join(map(str, r.get("grid", []))), str(len(r.get("targets", []))),
                              f"{r['bytes'] / 1e3:.0f}", r.get("generated_text", ""))
            else:
                table.add_row(r["sample_id"], "[red]failed[/red]", "", "", "", f"{r['bytes'] / 1e3:.0f}", r.get("reason", ""))
        con.print(table)
        if len(info["samples"]) > 50:
            con.print(f"... {len(info['samples']) - 50} more (use --json)")
    for step in info.get("lineage", [])[1:]:
        con.print(f"  <- {step.get('kind')} ({step.get('stage')}) {step.get('path')}  digest {str(step.get('content_digest'))[:12]}")
    for p in info["problems"]:
        con.print(f"[red]problem:[/red] {p}")


def register(app: typer.Typer) -> None:
    app.command("inspect")(inspect)
