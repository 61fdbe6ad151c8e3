"""The one chain type: a base method, post-processing modules in order, an optional threshold.

A :class:`Chain` says how a map is made from the stored capture arrays: ``base`` (a
:data:`stages.basemaps.BASE_METHODS` name) with ``base_options``, then the :mod:`stages.refine` modules in order
under one ``profile`` with per-module ``params``, then an optional ``threshold`` (values below it set to 0).
It is validated when built and frozen. The presets (:mod:`stages.presets`) are chains; a run config's
``explain.chains`` entries are chains (an entry may start from a preset: ``{name: mine, preset: tam,
params: {rank-filter: {size: 5}}}``); a sweep is a list of chains (:func:`sweep_chains`).

A chain is executed one way: base method, :func:`stages.refine.chain.apply_chain`, threshold. The stage graph
(:mod:`stages.graph`) runs those three steps as separate nodes with an artifact each; :meth:`Chain.maps` runs
them in memory on one sample's arrays (the faithfulness stage's recomputation).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Mapping, Sequence

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from schemas.errors import DcamError


class Chain(BaseModel):
    """A named recipe: base map, post-processing modules, threshold (validated, frozen)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    base: str = Field(description="base method (see 'dcam presets' / stages.basemaps.BASE_METHODS)")
    modules: tuple[str, ...] = Field(description="post-processing modules in order; [] runs none")
    profile: str = Field("paper", description="reference (the official code) or paper")
    base_options: dict[str, Any] = Field(default_factory=dict)
    params: dict[str, dict[str, Any]] = Field(default_factory=dict, description="module -> its parameters")
    threshold: float | None = Field(None, description="zero every value below it (after the modules)")
    summary: str = Field("", description="one line shown by 'dcam presets' (not part of any artifact key)")

    @model_validator(mode="before")
    @classmethod
    def _start_from_preset(cls, data: Any) -> Any:
        """``preset: NAME`` starts from that preset: given fields replace the preset's, ``params`` are merged
        per module, and parameters of modules the chain no longer runs are dropped."""
        if not isinstance(data, Mapping):
            return data
        data = dict(data)
        params = data.get("params")
        if params is not None and not (isinstance(params, Mapping)
                                       and all(isinstance(p, Mapping) for p in params.values())):
            raise ValueError(f"chain {data.get('name')!r}: params must map each module to its parameters "
                             f"({{module: {{param: value}}}}), got {params!r}")
        preset = data.pop("preset", None)
        if preset is None:
            if data.get("base") is None or data.get("modules") is None:
                raise ValueError(f"chain {data.get('name')!r}: give 'preset' to start from, or both 'base' and "
                                 "'modules'")
            return {k: v for k, v in data.items() if v is not None}
        from stages.presets import get_preset

        if not data.get("name"):
            raise ValueError(f"a chain that starts from preset {preset!r} needs its own 'name'")
        start = get_preset(str(preset))
        given = data.pop("params", None) or {}
        merged = {m: dict(p) for m, p in start.params.items()}
        for module, p in given.items():
            merged.setdefault(module, {}).update(p)
        out = start.model_dump()
        out["summary"] = ""
        out.update({k: v for k, v in data.items() if v is not None})
        modules = tuple(out["modules"])
        stray = sorted(set(given) - set(modules))
        if stray:
            raise ValueError(f"chain {out['name']!r}: parameters given for modules it does not run: {stray}")
        out["params"] = {m: p for m, p in merged.items() if m in modules}
        return out

    @model_validator(mode="after")
    def _known(self) -> "Chain":
        from stages.basemaps import get_base_method
        from stages.refine import check_profile
        from stages.refine.chain import get_module

        try:
            get_base_method(self.base)
            for module in self.modules:
                get_module(module)
            check_profile(self.profile)
        except ValueError as e:
            raise ValueError(f"chain {self.name!r}: {e}") from None
        stray = sorted(set(self.params) - set(self.modules))
        if stray:
            raise ValueError(f"chain {self.name!r}: parameters given for modules it does not run: {stray}")
        if self.threshold is not None and not math.isfinite(self.threshold):
            raise ValueError(f"chain {self.name!r}: threshold must be a finite number, got {self.threshold}")
        return self

    @property
    def steps(self) -> list[str]:
        """The base method then the modules, in order (``run.json``'s ``chain``)."""
        return [self.base, *self.modules]

    def key(self) -> dict[str, Any]:
        """What the chain's artifacts depend on (everything but the summary)."""
        return self.model_dump(exclude={"summary"})

    def renamed(self, name: str, **changes: Any) -> "Chain":
        """A validated copy under another name, with some fields changed."""
        return Chain.model_validate({**self.model_dump(), "name": name, **changes})

    def maps(self, arrays: Mapping[str, object], grid: tuple[int, int], *, contexts=None) -> np.ndarray:
        """Run the chain in memory on one sample and layer's stored arrays.

        Parameters
        ----------
        arrays : mapping of str to ndarray
            Stored capture arrays (``acts``, ``alpha``, ``alpha_pos``, ``gxa``, ``tam_logits``, ...), see
            :mod:`stages.basemaps`.
        grid : tuple of int (h, w)
        contexts : MapContext, sequence of T MapContext, or None
            One per target map, or one shared (:class:`stages.refine.MapContext`).

        Returns
        -------
        maps : ndarray of shape (T, h, w), float32
            The same values as the chain's staged nodes (base, modules, threshold) produce.
        """
        from stages.basemaps import get_base_method
        from stages.refine.chain import apply_chain

        maps = get_base_method(self.base)(arrays, grid, **self.base_options)
        maps = apply_chain(maps, self.modules, profile=self.profile, params=self.params, contexts=contexts)
        return apply_threshold(maps, self.threshold)


def apply_threshold(maps: np.ndarray, threshold: float | None) -> np.ndarray:
    """Zero every value below ``threshold`` (the official baseline's 0.4, LLaVA-CAM's 0.5); float32."""
    from stages.refine.normalize import zero_below

    maps = np.asarray(maps)
    if threshold is not None:
        maps = zero_below(maps, threshold)
    return maps.astype(np.float32, copy=False)


def as_chain(value: "Chain | str | Mapping[str, Any]") -> Chain:
    """A chain from a chain, a preset name or a mapping (one-line :class:`DcamError` when it is not one)."""
    from pydantic import ValidationError

    if isinstance(value, Chain):
        return value
    try:
        if isinstance(value, str):
            from stages.presets import get_preset

            return get_preset(value)
        return Chain.model_validate(value)
    except ValidationError as e:
        first = e.errors()[0]
        raise DcamError(str(first["msg"]).removeprefix("Value error, ")) from None
    except ValueError as e:
        raise DcamError(str(e)) from None


def sweep_chains(base: str, grid: Mapping[str, Sequence[Any]]) -> list[Chain]:
    """One chain per combination of ``grid`` (``'module.param'`` -> values) over preset ``base``.

    Chains are named ``<base>[module.param=value,...]`` in the sorted order of the grid's keys.
    """
    start = as_chain(base)
    keys = sorted(grid)
    for k in keys:
        if "." not in k:
            raise DcamError(f"sweep grid key {k!r} must be 'module.param'")
        if k.split(".", 1)[0] not in start.modules:
            raise DcamError(f"sweep: {base} does not run module {k.split('.', 1)[0]!r}")
    out = []
    for values in itertools.product(*(grid[k] for k in keys)):
        params = {m: dict(p) for m, p in start.params.items()}
        label = []
        for k, v in zip(keys, values):
            module, param = k.split(".", 1)
            params.setdefault(module, {})[param] = v
            label.append(f"{k}={v}")
        out.append(start.renamed(f"{base}[{','.join(label)}]", params=params, summary=""))
    return out
