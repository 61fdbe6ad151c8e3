"""The capture configuration, built once from the command line's or the run config's options and the adapter.

``dcam capture`` (:mod:`flows.cli_capture`) and the pipeline's capture shards (:func:`flows.pipeline.capture_shard`)
both call :func:`family_config`: every option left None takes the family's own default from the adapter's
declared attributes (``modes``, ``default_mode``, ``default_steps``, ``default_temperature``, ...), and the
gradient reductions stored are those the named base methods declare.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from schemas.errors import DcamError
from stages.capture.adapter import ModelAdapter
from stages.capture.core import CaptureConfig

__all__ = ["family_config", "resolve_layers", "method_reductions"]


def method_reductions(methods: Iterable[str] | None) -> tuple[str, ...] | None:
    """The sorted gradient reductions the base methods ``methods`` declare (None: None, the default of every
    registered method).

    Raises
    ------
    DcamError
        Naming an unknown method (and the known ones).
    """
    if methods is None:
        return None
    from stages.basemaps import reductions_for

    try:
        return reductions_for(methods)
    except ValueError as e:
        raise DcamError(f"--methods: {e}") from None


def family_config(adapter: ModelAdapter, *, layers: Sequence[int] | None = None, steps: int | None = None,
                  block_length: int | None = None, mode: str | None = None, temperature: float | None = None,
                  schedule: str | None = None, remasking: str | None = None, top_p: float | None = None,
                  methods: Iterable[str] | None = None, **options: Any) -> CaptureConfig:
    """The capture config, with the family's own defaults (``adapter.default_*``) for every option left None.

    Parameters
    ----------
    adapter : ModelAdapter
    layers, steps, block_length, mode, temperature, schedule, remasking, top_p : optional
        None takes the family's: the middle block, ``adapter.default_steps``, one block, ``adapter.default_mode``,
        ``adapter.default_temperature``, ``adapter.default_schedule``, ``adapter.default_remasking``,
        ``adapter.default_top_p``.
    methods : iterable of str, optional
        Base methods (:data:`stages.basemaps.BASE_METHODS` names) whose gradient reductions to store (their
        union); None: every registered method's.
    **options
        The other :class:`~stages.capture.core.CaptureConfig` fields (seed, score, store_grads, record, ...).

    Raises
    ------
    DcamError
        If the family does not support ``mode``, a layer does not exist, or a method is unknown.
    """
    mode = mode or adapter.default_mode
    if mode not in adapter.modes:
        raise DcamError(f"--mode {mode}: the {adapter.family} family supports {', '.join(adapter.modes)}")
    reductions = method_reductions(methods)
    if reductions is not None:
        options["reductions"] = reductions
    return CaptureConfig(
        layers=resolve_layers(adapter, layers), steps=steps or adapter.default_steps,
        block_length=block_length or adapter.gen_length, mode=mode,
        temperature=adapter.default_temperature if temperature is None else temperature,
        schedule=schedule or adapter.default_schedule, remasking=remasking or adapter.default_remasking,
        top_p=adapter.default_top_p if top_p is None else top_p, **options,
    )


def resolve_layers(adapter: ModelAdapter, layers: Sequence[int] | None) -> tuple[int, ...]:
    """Validate hook layers (negative indices allowed); default: the middle block.

    Raises
    ------
    DcamError
        If a layer does not exist or is the last block (whose image positions get no gradient).
    """
    n = len(adapter.blocks())
    if not layers:
        return ((n - 1) // 2,)
    out = []
    for layer in layers:
        idx = layer + n if layer < 0 else layer
        if not 0 <= idx < n:
            raise DcamError(f"--layers: block {layer} does not exist; the model has blocks 0..{n - 1}")
        if idx == n - 1:
            raise DcamError(
                f"--layers: block {layer} is the last block; its image positions feed no response logit, so "
                f"their gradient is exactly zero. Hook an earlier block (0..{n - 2}; default {(n - 1) // 2})"
            )
        out.append(idx)
    return tuple(sorted(set(out)))
