"""SICD: Single-Instance Causal Debiasing (``method.md`` §1.5(d)).

A single-image version of TAM's estimated causal inference (``method.md`` §2.2): an
interference map ``I`` is scaled by the least-squares ``alpha* = argmin_a ||H - a I||^2
= <H, I> / <I, I>`` (capped at 0.5) and subtracted, ``H_enh = max(H - alpha I, 0)``.
"""

from __future__ import annotations

from collections import Counter

import numpy as np

from stages.refine import as_stack, check_profile, contexts_for, from_stack

REPEAT_WEIGHT = 0.05
OUTLIER_WEIGHT = 0.02
OUTLIER_Z = 2.0
MAX_ALPHA = 0.5
#: Keep the input when the subtraction shrinks the map's range below this fraction.
RANGE_GUARD = 0.9


def repeat_ratio_ids(generated_ids) -> float:
    """The official repeat ratio: (#distinct ids that occur more than once) / len(ids).

    The ids are the whole generated response, repeated EOS/padding included, so the
    ratio is almost never 0. None or an empty list gives 0.
    """
    if generated_ids is None or len(generated_ids) == 0:
        return 0.0
    counts = Counter(int(t) for t in generated_ids)
    return sum(1 for c in counts.values() if c > 1) / len(generated_ids)


def repeat_ratio_words(words, function_words) -> float:
    """The paper profile's ratio: (#distinct interfering words) / #words.

    Interfering words are function words (e.g. "a", "in", "of", "and", the paper
    figure's "repeated tokens") and words that occur more than once, compared in lower
    case. Tokens without a letter or digit (punctuation) are ignored. None or no word
    gives 0.
    """
    tokens = [w.strip().lower() for w in (() if words is None else words) if any(ch.isalnum() for ch in w)]
    if not tokens:
        return 0.0
    counts = Counter(tokens)
    interfering = {w for w, c in counts.items() if c > 1 or w in function_words}
    return len(interfering) / len(tokens)


def causal_debias(cam, *, profile: str = "reference", context=None) -> np.ndarray:
    """SICD: subtract the least-squares share of an interference map.

    ``I = 0.05 r`` everywhere (when ``r > 0``) ``+ 0.02`` where ``H > mean(H) + 2 std(H)``,
    with r a repeat ratio; if ``max I > 0``: ``alpha = min(<H, I> / <I, I>, 0.5)`` (the
    closed form of the official ``minimize_scalar``), ``H_enh = max(H - alpha I, 0)``;
    the result is ``H`` if ``range(H_enh) < 0.9 range(H)`` (the guard of
    ``apply_cam_postprocess``), else ``H_enh``. No renormalisation afterwards.

    Parameters
    ----------
    cam : ndarray of shape (h, w) or (n, h, w)
        Normalised map(s), after the ``normalize`` step in the official order.
    profile : {"reference", "paper"}
        ``"reference"``: r from ``context.generated_ids`` (:func:`repeat_ratio_ids`),
        the response's token ids including the repeated EOS/padding, as the code does.
        ``"paper"``: r from the repeated *words* of the generated text, function words
        included (:func:`repeat_ratio_words` on ``context.words``), as the paper's figure
        describes; EOS/padding ids play no part.
    context : MapContext, sequence of MapContext or None
        Without ids (reference) or words (paper), r = 0 and only the outlier term remains.

    Returns
    -------
    debiased : ndarray, same shape as ``cam``
    """
    check_profile(profile)
    stack, single, dtype = as_stack(cam)
    n = stack.shape[0]
    contexts = contexts_for(context, n)
    if profile == "reference":
        keys = [() if c.generated_ids is None else tuple(c.generated_ids) for c in contexts]
        ratio_of = repeat_ratio_ids
    else:
        keys = [(() if c.words is None else tuple(c.words), c.function_words) for c in contexts]
        ratio_of = lambda key: repeat_ratio_words(*key)  # noqa: E731
    # The maps of one response share its ids and words: count each distinct response once.
    memo: dict = {}
    for key in keys:
        if key not in memo:
            memo[key] = ratio_of(key)
    ratio = np.array([memo[key] for key in keys])
    flat = stack.reshape(n, -1)
    mean, std = flat.mean(axis=1), flat.std(axis=1)
    outlier = flat > (mean + OUTLIER_Z * std)[:, None]
    interference = REPEAT_WEIGHT * ratio[:, None] + OUTLIER_WEIGHT * outlier
    energy = np.einsum("ij,ij->i", interference, interference)
    active = energy > 0
    alpha = np.minimum(np.einsum("ij,ij->i", flat, interference) / np.where(active, energy, 1.0), MAX_ALPHA)
    enhanced = np.maximum(flat - alpha[:, None] * interference, 0.0)
    span = np.ptp(flat, axis=1)
    keep = ~active | (np.ptp(enhanced, axis=1) < RANGE_GUARD * span)
    out = np.where(keep[:, None], flat, enhanced)
    return from_stack(out.reshape(stack.shape), single, dtype)
