"""Faithfulness figures and sanity checks over maps: pure functions.

* :func:`spearman`: rank correlation of two maps (average ranks for ties), the comparison Adebayo et al. (2018)
  use for sanity checks; ``nan`` when either map is constant (a constant map has no ranking to agree with).
* :func:`mean_pairwise_spearman`: target sensitivity. Maps of different words of one response should differ; a
  method whose word maps all share one ranking explains the input, not the word.
* :func:`token_norm_map`: the activation-energy reference. A Grad-CAM-family map that mostly equals the map of
  token activation norms at the hooked block shows where the activations are large, not what the word used.
* :func:`summarise`: dataset-level means with 95% bootstrap intervals (resampling samples) and the sanity flags.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from stages.score.bootstrap import bootstrap_ci

#: Sanity thresholds. A flag is a statement about a method on this model and data, shown next to its figures;
#: each threshold is the conventional "strong" boundary of a rank correlation, not tuned to any method.
ENERGY_RHO = 0.7          # mean Spearman with the token-norm map at or above: the map is activation energy
TARGET_RHO = 0.8          # mean pairwise Spearman of one response's word maps at or above: target-insensitive
RANDOMISED_RHO = 0.5      # Spearman with the trained model's map after randomising everything above the hook

#: Per-map figures averaged in the summary (each gets a ``_ci``).
PER_MAP = ("deletion_auc", "insertion_auc", "random_deletion_auc", "random_insertion_auc",
           "occlusion_spearman", "norm_spearman")
#: Summary fields of each method record, in order (each gets a ``_ci``).
FIGURES = (*PER_MAP, "target_sensitivity")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two maps of one shape (average ranks for ties); ``nan`` if either is
    constant or holds a NaN."""
    from scipy.stats import rankdata

    x = np.asarray(a, dtype=np.float64).reshape(-1)
    y = np.asarray(b, dtype=np.float64).reshape(-1)
    if x.shape != y.shape:
        raise ValueError(f"spearman: maps of {x.size} and {y.size} values")
    if x.size < 2 or np.isnan(x).any() or np.isnan(y).any() or np.ptp(x) == 0 or np.ptp(y) == 0:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx -= rx.mean()
    ry -= ry.mean()
    return float(np.dot(rx, ry) / math.sqrt(np.dot(rx, rx) * np.dot(ry, ry)))


def mean_pairwise_spearman(maps: Sequence[np.ndarray]) -> float:
    """Mean Spearman correlation over all pairs of maps (``nan`` with fewer than two maps or no defined pair)."""
    vals = [spearman(maps[i], maps[j]) for i in range(len(maps)) for j in range(i + 1, len(maps))]
    vals = [v for v in vals if not math.isnan(v)]
    return float(np.mean(vals)) if vals else float("nan")


def token_norm_map(acts: np.ndarray, grid: tuple[int, int]) -> np.ndarray:
    """L2 norm of each image token's activation vector, as an (h, w) map.

    Parameters
    ----------
    acts : ndarray of shape (N, D)
        Hooked-block activations at the grid tokens (grid order).
    grid : (h, w)
    """
    a = np.asarray(acts, dtype=np.float64)
    h, w = (int(v) for v in grid)
    if a.ndim != 2 or a.shape[0] != h * w:
        raise ValueError(f"acts: expected ({h * w}, D) for a {h}x{w} grid, got {a.shape}")
    return np.linalg.norm(a, axis=1).reshape(h, w).astype(np.float32)


def _mean_ci(values: np.ndarray, groups: np.ndarray) -> tuple[float | None, list[float] | None]:
    v = np.asarray(values, dtype=np.float64)
    keep = ~np.isnan(v)
    if not keep.any():
        return None, None
    mean = float(v[keep].mean())
    lo, hi = bootstrap_ci(v, groups=groups)
    return mean, (None if math.isnan(lo) else [lo, hi])


def _fmt(x: float) -> str:
    return f"{x:.2f}"


def sanity_flags(rec: Mapping[str, Any]) -> list[str]:
    """Short statements of the sanity checks a method record fails (empty when it fails none)."""
    flags = []
    rho = rec.get("norm_spearman")
    if rho is not None and rho >= ENERGY_RHO and rec["method"] != "occlusion":
        flags.append(f"activation energy: rank correlation with the token-norm map {_fmt(rho)} >= {ENERGY_RHO}")
    ts = rec.get("target_sensitivity")
    if ts is not None and ts >= TARGET_RHO:
        flags.append(f"target-insensitive: maps of different words correlate {_fmt(ts)} >= {TARGET_RHO}")
    above = rec.get("randomisation_above_hook")
    if above is not None and above >= RANDOMISED_RHO:
        flags.append(f"model-insensitive: {_fmt(above)} rank correlation with the trained maps after "
                     f"randomising every weight above the hooked block (>= {RANDOMISED_RHO})")
    d, d_ci = rec.get("deletion_auc"), rec.get("random_deletion_auc_ci")
    i, i_ci = rec.get("insertion_auc"), rec.get("random_insertion_auc_ci")
    if rec["method"] != "random" and d is not None and i is not None and d_ci and i_ci \
            and d >= d_ci[0] and i <= i_ci[1]:
        flags.append("no better than a random order: deletion and insertion AUC inside or past the random floor")
    return flags


def summarise(per_map, sensitivity, randomisation=None, *, above_hook_level: str | None = None,
              order: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """One record per method: means with 95% bootstrap intervals over samples, randomisation curve, flags.

    Parameters
    ----------
    per_map : DataFrame
        One row per (sample, target, layer, method) with the columns of :data:`PER_MAP`.
    sensitivity : DataFrame
        One row per (sample, layer, method) with ``target_sensitivity``.
    randomisation : DataFrame, optional
        One row per (sample, target, layer, method, level) with ``level_index`` and ``spearman``.
    above_hook_level : str, optional
        The cascade level at which every weight above the hooked block is randomised (the model-insensitivity
        flag is judged there).
    order : sequence of str, optional
        Method order of the records (default: as first seen).
    """
    methods = list(order) if order is not None else list(dict.fromkeys(per_map["method"]))
    out = []
    for m in methods:
        rows = per_map[per_map["method"] == m]
        if rows.empty:
            continue
        rec: dict[str, Any] = {"method": m, "n_maps": int(len(rows))}
        for name in PER_MAP:
            rec[name], rec[f"{name}_ci"] = _mean_ci(rows[name].to_numpy(), rows["sample_id"].to_numpy())
        sens = sensitivity[sensitivity["method"] == m] if len(sensitivity) else sensitivity
        if len(sens):
            rec["target_sensitivity"], rec["target_sensitivity_ci"] = _mean_ci(
                sens["target_sensitivity"].to_numpy(), sens["sample_id"].to_numpy())
        else:
            rec["target_sensitivity"], rec["target_sensitivity_ci"] = None, None
        rec["randomisation"] = None
        rec["randomisation_above_hook"] = None
        if randomisation is not None and len(randomisation):
            rr = randomisation[randomisation["method"] == m]
            if len(rr) and rr["spearman"].notna().any():
                curve = rr.groupby(["level_index", "level"], sort=True)["spearman"].mean()
                rec["randomisation"] = {lvl: (None if math.isnan(v) else float(v)) for (_, lvl), v in curve.items()}
                if above_hook_level is not None:
                    rec["randomisation_above_hook"] = rec["randomisation"].get(above_hook_level)
        rec["flags"] = sanity_flags(rec)
        out.append(rec)
    return out
