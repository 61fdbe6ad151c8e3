"""Dataset-level aggregation of the long-format metrics table (``schemas/LAYOUT.md``, ``scores``).

One row per (sample, target word, method, step, layer, metric):
``sample_id, target, word, method, step, layer, metric, value``. The summary has one row per method
(or per any grouping): the mean of every metric over its rows, and the composite scores computed the
way the papers compute them, from the dataset-level means:

* ``f3`` = :func:`stages.score.metrics.f3` of the means of ``obj_iou``, ``contrast`` and ``concentration``
  (Diffusion-CAM's tables, ``method.md`` §1.6) -- not the mean of per-map F3 values;
* ``f1_iou`` = :func:`stages.score.metrics.f1_iou` of the means of ``tam_obj_iou`` and ``func_iou``, each
  pooled over all words of all samples (TAM, ``method.md`` §2.4);
* ``pointing_accuracy`` = hits / (hits + misses), the mean of ``pointing_hit`` over maps with a
  non-empty object.

Metric families that share a prefix or suffix get the same treatment: ``response_obj_iou``,
``response_contrast`` and ``response_concentration`` give ``response_f3``; ``pointing_hit_word`` gives
``pointing_accuracy_word``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from stages.score.metrics import f1_iou, f3

#: Columns of the long-format metrics table, in order.
LONG_COLUMNS = ("sample_id", "target", "word", "method", "step", "layer", "metric", "value")
#: Per-map values of :func:`~stages.score.metrics.score_map` that are bookkeeping, not metrics.
_NOT_METRICS = ("label", "otsu_threshold")


def long_rows(
    scores: Mapping[str, float],
    *,
    sample_id: str,
    target: int,
    word: str,
    method: str,
    step: int,
    layer: int,
) -> list[dict]:
    """Long-format rows of one map's scores (the output of :func:`~stages.score.metrics.score_map`).

    Parameters
    ----------
    scores : mapping of str to float
        Metric name -> value; ``label`` and ``otsu_threshold`` are kept as rows too (they explain a value).
    sample_id, target, word, method, step, layer
        The map's identity (``target`` is the generated-word index).

    Returns
    -------
    list of dict
        One dict per metric with the keys of :data:`LONG_COLUMNS`.
    """
    ident = {"sample_id": str(sample_id), "target": int(target), "word": str(word), "method": str(method),
             "step": int(step), "layer": int(layer)}
    return [{**ident, "metric": str(name), "value": float(value)} for name, value in scores.items()]


def _check_long(df: pd.DataFrame) -> None:
    missing = [c for c in LONG_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"df: missing column(s) {', '.join(missing)}; expected {', '.join(LONG_COLUMNS)}")


def summarise(df: pd.DataFrame, *, by: Sequence[str] = ("method",)) -> pd.DataFrame:
    """Dataset-level summary of a long-format metrics table.

    Parameters
    ----------
    df : DataFrame
        Columns :data:`LONG_COLUMNS`; NaN values (e.g. the pointing game on an empty mask) are left out
        of the means, and so are per-map ``f3`` / ``*_f3`` / ``f1_iou`` rows and the bookkeeping values
        ``label`` and ``otsu_threshold``.
    by : sequence of str, default ("method",)
        Grouping columns, e.g. ``("method", "layer")`` for a layer sweep.

    Returns
    -------
    DataFrame
        One row per group: the grouping columns, ``n_samples``, ``n_maps`` (distinct (sample, target)
        pairs), the mean of every metric (named as the metric), ``f3`` when ``obj_iou``, ``contrast`` and
        ``concentration`` are present, ``f1_iou`` when ``tam_obj_iou`` and ``func_iou`` are, and
        ``pointing_accuracy`` in place of ``pointing_hit`` (likewise for prefixed and suffixed families,
        see the module docstring). Sorted by the grouping columns.
    """
    _check_long(df)
    by = list(by)
    unknown = [c for c in by if c not in df.columns]
    if unknown:
        raise ValueError(f"by: unknown column(s) {', '.join(unknown)}")
    if df.empty:
        return pd.DataFrame(columns=[*by, "n_samples", "n_maps"])
    # Per-map composites are never averaged: the summary recomputes them from the means.
    composite = df["metric"].str.contains(r"(?:^|_)f3(?:_|$)") | (df["metric"] == "f1_iou")
    data = df[~composite & ~df["metric"].isin(_NOT_METRICS)]
    means = data.pivot_table(index=by, columns="metric", values="value", aggfunc="mean", dropna=False)
    means.columns.name = None
    n_samples = df.groupby(by)["sample_id"].nunique().rename("n_samples")
    n_maps = df.drop_duplicates([*by, "sample_id", "target"]).groupby(by).size().rename("n_maps")
    out = pd.concat([n_samples, n_maps], axis=1).join(means)
    for name in list(out.columns):
        if "obj_iou" in name and not name.startswith("tam_"):
            c, k = name.replace("obj_iou", "contrast"), name.replace("obj_iou", "concentration")
            if c in out.columns and k in out.columns:
                out[name.replace("obj_iou", "f3")] = f3(out[name].to_numpy(), out[c].to_numpy(), out[k].to_numpy())
    if {"tam_obj_iou", "func_iou"} <= set(out.columns):
        out["f1_iou"] = f1_iou(out["tam_obj_iou"].to_numpy(), out["func_iou"].to_numpy())
    out = out.rename(columns={n: n.replace("pointing_hit", "pointing_accuracy") for n in out.columns if "pointing_hit" in n})
    return out.reset_index().sort_values(by, kind="stable").reset_index(drop=True)


def write_table(df: pd.DataFrame, out_dir: str | os.PathLike, *, name: str = "metrics") -> dict[str, Path]:
    """Write a table as ``{name}.parquet`` and ``{name}.csv`` in ``out_dir`` (created if missing).

    Parameters
    ----------
    df : DataFrame
        The long-format table (``name='metrics'``) or a summary (``name='summary'``).
    out_dir : str or os.PathLike
    name : str, default "metrics"
        File stem.

    Returns
    -------
    dict
        ``{"parquet": path, "csv": path}``.
    """
    if not name or "/" in name or name.startswith("."):
        raise ValueError(f"name: expected a plain file stem, got {name!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"parquet": out / f"{name}.parquet", "csv": out / f"{name}.csv"}
    df.to_parquet(paths["parquet"], index=False)
    df.to_csv(paths["csv"], index=False)
    return paths


def frame(rows: Iterable[Mapping]) -> pd.DataFrame:
    """A long-format DataFrame with the columns of :data:`LONG_COLUMNS` in order, from row dicts."""
    df = pd.DataFrame(list(rows), columns=list(LONG_COLUMNS))
    return df.astype({"value": np.float64})


#: Summary figures computed from the means of other metrics: name -> (function, its input metrics).
_COMPOSITES = {"f3": (f3, ("obj_iou", "contrast", "concentration")), "f1_iou": (f1_iou, ("tam_obj_iou", "func_iou"))}


def _composite_statistic(codes: np.ndarray, values: np.ndarray, function, n_inputs: int):
    """``statistic(row_indices)`` for :func:`bootstrap_ci`: ``function`` of the per-metric means of those rows."""

    def statistic(rows: np.ndarray) -> float:
        idx = rows.astype(np.intp)
        c, v = codes[idx], values[idx]
        ok = ~np.isnan(v)
        counts = np.bincount(c[ok], minlength=n_inputs)
        if (counts == 0).any():
            return float("nan")
        return float(function(*(np.bincount(c[ok], weights=v[ok], minlength=n_inputs) / counts)))

    return statistic


def summary_intervals(df: pd.DataFrame, names: Sequence[str], **bootstrap) -> dict[str, tuple[float, float]]:
    """95% percentile bootstrap intervals of summary figures, resampling samples (images), not maps.

    Parameters
    ----------
    df : DataFrame
        The long-format rows of one group (one method, one layer), columns :data:`LONG_COLUMNS`.
    names : sequence of str
        Summary columns of :func:`summarise`: a metric mean (``obj_iou``, ``contrast``...), a pointing
        accuracy (``pointing_accuracy`` is the mean of ``pointing_hit``), or a composite (``f3``, ``f1_iou``),
        which is recomputed from the means of its inputs on every resample.
    **bootstrap
        Passed to :func:`stages.score.bootstrap.bootstrap_ci` (``n_resamples``, ``confidence``, ``seed``).

    Returns
    -------
    dict of str to (float, float)
        Only the names whose input rows exist; ``(nan, nan)`` when fewer than two samples hold a value.
    """
    from stages.score.bootstrap import bootstrap_ci

    _check_long(df)
    out: dict[str, tuple[float, float]] = {}
    for name in names:
        if name in _COMPOSITES:
            function, inputs = _COMPOSITES[name]
            sub = df[df["metric"].isin(inputs)]
            if set(sub["metric"]) != set(inputs):
                continue
            codes = sub["metric"].map({m: i for i, m in enumerate(inputs)}).to_numpy(np.intp)
            statistic = _composite_statistic(codes, sub["value"].to_numpy(np.float64), function, len(inputs))
            out[name] = bootstrap_ci(np.arange(len(sub), dtype=np.float64), groups=sub["sample_id"].to_numpy(),
                                     statistic=statistic, **bootstrap)
            continue
        sub = df[df["metric"] == name.replace("pointing_accuracy", "pointing_hit")]
        if len(sub):
            out[name] = bootstrap_ci(sub["value"].to_numpy(np.float64), groups=sub["sample_id"].to_numpy(), **bootstrap)
    return out
