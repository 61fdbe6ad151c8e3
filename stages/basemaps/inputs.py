"""The arrays a base method reads at one attribution row and layer of a captured sample.

A gradient reduction the capture did not store is derived from the stored full gradient (``--store-grads``)
with the reduction's own function (:meth:`stages.basemaps.reductions.Reduction.from_arrays`); without either,
the method fails in one line that names the array and how to capture it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from schemas.errors import DcamError
from stages.basemaps import BaseMethod
from stages.basemaps.reductions import GRADS, Reduction

__all__ = ["SampleInputs"]


class SampleInputs:
    """Serves a base method's inputs from one captured sample, each stored array read once.

    Parameters
    ----------
    sample : schemas.capture.CaptureSample
        Anything with ``sample_id``, ``has(name, layer)`` and ``array(name, layer)``.
    """

    def __init__(self, sample: Any):
        self.sample = sample
        self.act_row = sample.array("act_row")
        self._arrays: dict[tuple[str, int | None], np.ndarray] = {}

    def _stored(self, name: str, layer: int | None) -> np.ndarray:
        if (name, layer) not in self._arrays:
            self._arrays[(name, layer)] = self.sample.array(name, layer)
        return self._arrays[(name, layer)]

    def _acts(self, r: int, layer: int) -> np.ndarray:
        return self._stored("acts", layer)[self.act_row[r]]

    def _reduction(self, method: BaseMethod, red: Reduction, r: int, layer: int) -> np.ndarray:
        if self.sample.has(red.name, layer):
            return self._stored(red.name, layer)[r]
        if self.sample.has(GRADS.name, layer):
            return red.from_arrays(self._stored(GRADS.name, layer)[r], self._acts(r, layer))
        raise DcamError(f"base method {method.name!r} needs the gradient reduction '{red.name}' (L{layer}), which "
                        f"the capture of sample {self.sample.sample_id} did not store; recapture with "
                        f"'dcam capture --methods {method.name}' (or --store-grads)")

    def row(self, method: BaseMethod, r: int, layer: int) -> dict[str, np.ndarray]:
        """The inputs of ``method`` at attribution row ``r`` and hooked layer ``layer``, by name.

        ``acts`` is the row's activation row as float32; other plain names are read per layer where the
        capture stores them per layer, else per sample, at row ``r``.

        Raises
        ------
        DcamError
            If a reduction is neither stored nor derivable (no ``grads``), or another array is absent.
        """
        out: dict[str, np.ndarray] = {}
        for item in method.inputs:
            if isinstance(item, Reduction):
                out[item.name] = self._reduction(method, item, r, layer)
            elif item == "acts":
                out[item] = self._acts(r, layer).astype(np.float32)
            else:
                out[item] = self._stored(item, layer if self.sample.has(item, layer) else None)[r]
        return out
