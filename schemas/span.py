"""Image-span metadata (the official code's ``info4cam``) and the token -> grid mapping.

The grid is never inferred from a token count: a capture records, per sample,
where the image tokens are in the sequence and how they are laid out, and every
later stage maps tokens to a 2-D grid through :func:`grid_token_index`.

Layout of the image span ``[start, end)`` of a sequence, in order:

1. ``base_tokens`` tokens of a global base view (LaViDa / LLaVA-NeXT anyres; 0 for
   single-view models), laid out row-major on ``base_grid`` when given;
2. the high-resolution grid of ``grid_h`` rows and ``grid_w`` columns, row-major,
   with one extra newline token at the end of every row when ``newline_per_row``
   is true (LLaVA-NeXT ``spatial_unpad``).

The official Diffusion-CAM code takes the first ``grid_h * grid_w`` tokens after
the base view and reshapes them, ignoring the newline tokens, which shears row r
by r tokens (``method.md`` §1.1). :func:`grid_token_index` skips them;
``official_shear=True`` reproduces the official behaviour for comparison.
"""

from __future__ import annotations

import numpy as np
from pydantic import BaseModel, ConfigDict, model_validator


class SpanLayout(BaseModel):
    """Where the image tokens are and how they map to a 2-D grid."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    start: int
    end: int
    grid_h: int
    grid_w: int
    base_tokens: int = 0
    base_grid: tuple[int, int] | None = None
    newline_per_row: bool = False
    pooling: str = "none"

    @model_validator(mode="after")
    def _consistent(self) -> "SpanLayout":
        if self.grid_h < 1 or self.grid_w < 1:
            raise ValueError(f"grid must be positive, got {self.grid_h}x{self.grid_w}")
        if self.start < 0 or self.end < self.start:
            raise ValueError(f"bad image span [{self.start}, {self.end})")
        expected = self.base_tokens + self.grid_h * (self.grid_w + int(self.newline_per_row))
        if self.end - self.start != expected:
            raise ValueError(
                f"image span [{self.start}, {self.end}) has {self.end - self.start} tokens but the layout "
                f"(base {self.base_tokens} + {self.grid_h} rows x ({self.grid_w}"
                f"{' + 1 newline' if self.newline_per_row else ''})) needs {expected}"
            )
        if self.base_grid is not None and self.base_grid[0] * self.base_grid[1] != self.base_tokens:
            raise ValueError(f"base_grid {self.base_grid} does not hold {self.base_tokens} base tokens")
        return self

    @property
    def n_tokens(self) -> int:
        return self.end - self.start

    @property
    def grid(self) -> tuple[int, int]:
        return (self.grid_h, self.grid_w)


def grid_token_index(layout: SpanLayout, *, official_shear: bool = False) -> np.ndarray:
    """Indices, relative to the span start, of the grid tokens in row-major order.

    Parameters
    ----------
    layout : SpanLayout
    official_shear : bool
        Reproduce the official code's reshape, which takes ``grid_h * grid_w``
        consecutive tokens after the base view and so includes newline tokens.

    Returns
    -------
    index : ndarray of shape (grid_h * grid_w,), int64
    """
    h, w = layout.grid_h, layout.grid_w
    if official_shear or not layout.newline_per_row:
        return layout.base_tokens + np.arange(h * w, dtype=np.int64)
    rows = np.arange(h, dtype=np.int64)[:, None] * (w + 1)
    return (layout.base_tokens + rows + np.arange(w, dtype=np.int64)[None, :]).reshape(-1)


def tokens_to_grid(values: np.ndarray, layout: SpanLayout, *, official_shear: bool = False) -> np.ndarray:
    """Map per-token values over the image span to the spatial grid.

    Parameters
    ----------
    values : ndarray of shape (..., N)
        One value per image-span token (``N == layout.n_tokens``) or per grid token
        (``N == grid_h * grid_w``, already gathered).

    Returns
    -------
    grid : ndarray of shape (..., grid_h, grid_w)
    """
    values = np.asarray(values)
    h, w = layout.grid
    n = values.shape[-1]
    if n == layout.n_tokens:
        values = values[..., grid_token_index(layout, official_shear=official_shear)]
    elif n != h * w:
        raise ValueError(
            f"values has {n} tokens on its last axis; expected the span's {layout.n_tokens} or the grid's {h * w}"
        )
    return values.reshape(values.shape[:-1] + (h, w))
