"""Render one synthetic grounded scene: coloured shapes on a textured background, with masks and a caption.

Each scene holds 1-3 solid-colour objects (a shape from :data:`SHAPES` in a colour from :data:`COLOURS`)
on a low-saturation, mid-grey textured background, sometimes with small grey specks or short lines that
are clutter, not objects. Every object comes with its exact pixel mask and COCO bounding box, so a map of
where a model looked when it wrote "circle" can be scored against the circle's mask.

Caption grammar
---------------
The caption names the objects from left to right (by bounding-box centre x), each as
``a <colour> <shape>``; the phrases are joined with ``and`` before the last one and with a comma
token before every other one. Everything is lowercase, tokens are separated by single spaces, the comma
is a token of its own and there is no final period::

    1 object    a red circle
    2 objects   a red circle and a blue square
    3 objects   a red circle , a blue square and a green triangle

:func:`caption_for` writes this grammar and :func:`parse_caption` reads it back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Object colours, an attribute of an object (not its category).
COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple")

#: Object shapes; the shape is the COCO category.
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: COCO category id of each shape (0 is background in ``seg_label``).
CATEGORIES: dict[str, int] = {"circle": 1, "square": 2, "triangle": 3, "cross": 4}

#: Saturated RGB of each colour; every object gets a small jitter around it.
_RGB: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "green": (35, 175, 55),
    "blue": (35, 75, 220),
    "yellow": (235, 215, 35),
    "purple": (150, 45, 195),
}

_REFERENCE_SIZE = 96          # the sizes below are in pixels at this image size and scale with it
_OBJECT_DIAMETER = (18.0, 30.0)
_MIN_GAP = 2.0                # least distance between two objects' masks
_MIN_CENTRE_DX = 6.0          # least distance between two bbox centres along x (unambiguous order)
#: Most objects a scene can hold; more than this does not fit reliably at the smallest size.
MAX_OBJECTS = 4
_TRIES_PER_OBJECT = 100
_BACKGROUNDS = ("gradient", "noise", "stripes", "checker", "blotches")


@dataclass(frozen=True, eq=False)
class SceneObject:
    """One object of a scene.

    Attributes
    ----------
    shape : str
        One of :data:`SHAPES` (the COCO category).
    colour : str
        One of :data:`COLOURS`.
    mask : ndarray of shape (H, W), bool, read-only
        The object's pixels.
    bbox : tuple of 4 float
        COCO box ``(x, y, w, h)`` of the mask: left column, top row, width and height in pixels.
    """

    shape: str
    colour: str
    mask: np.ndarray
    bbox: tuple[float, float, float, float]

    @property
    def centre_x(self) -> float:
        return self.bbox[0] + self.bbox[2] / 2.0


@dataclass(frozen=True, eq=False)
class Scene:
    """A rendered scene.

    Attributes
    ----------
    image : ndarray of shape (H, W, 3), uint8, read-only
        RGB image.
    objects : tuple of SceneObject
        Sorted left to right by bounding-box centre x; masks are pairwise disjoint.
    caption : str
        ``caption_for(objects)``.
    """

    image: np.ndarray
    objects: tuple[SceneObject, ...]
    caption: str


def caption_for(objects) -> str:
    """The caption of objects given left to right (grammar in the module docstring).

    Parameters
    ----------
    objects : sequence of SceneObject or of (colour, shape) pairs
        At least one.

    Returns
    -------
    str
        e.g. ``"a red circle , a blue square and a green triangle"``.
    """
    pairs = [(o.colour, o.shape) if isinstance(o, SceneObject) else tuple(o) for o in objects]
    if not pairs:
        raise ValueError("objects: a caption needs at least one object")
    for colour, shape in pairs:
        if colour not in COLOURS:
            raise ValueError(f"objects: unknown colour {colour!r}, expected one of {COLOURS}")
        if shape not in SHAPES:
            raise ValueError(f"objects: unknown shape {shape!r}, expected one of {SHAPES}")
    phrases = [f"a {colour} {shape}" for colour, shape in pairs]
    if len(phrases) == 1:
        return phrases[0]
    return " , ".join(phrases[:-1]) + " and " + phrases[-1]


def parse_caption(caption: str) -> list[tuple[str, str]]:
    """Read a caption written by :func:`caption_for` back into ``(colour, shape)`` pairs, left to right.

    Raises
    ------
    ValueError
        If ``caption`` does not follow the grammar of the module docstring.
    """
    tokens = caption.split(" ")
    # Each phrase is 3 tokens and each phrase but the first is preceded by one joiner token.
    if len(tokens) < 3 or (len(tokens) - 3) % 4 != 0:
        raise ValueError(f"caption: {caption!r} does not follow 'a <colour> <shape> (, ...) and ...'")
    n = 1 + (len(tokens) - 3) // 4
    pairs = []
    for k in range(n):
        start = 4 * k
        if k > 0:
            expected = "and" if k == n - 1 else ","
            if tokens[start - 1] != expected:
                raise ValueError(
                    f"caption: expected {expected!r} before object {k + 1} in {caption!r}, found {tokens[start - 1]!r}"
                )
        article, colour, shape = tokens[start : start + 3]
        if article != "a" or colour not in COLOURS or shape not in SHAPES:
            raise ValueError(f"caption: {' '.join(tokens[start:start + 3])!r} in {caption!r} is not 'a <colour> <shape>'")
        pairs.append((colour, shape))
    return pairs


def _shape_mask(shape: str, cx: float, cy: float, r: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Pixels of ``shape`` centred at (cx, cy) with half-extent ``r``; ``ys``, ``xs`` are pixel-centre grids."""
    dx = xs - cx
    dy = ys - cy
    if shape == "circle":
        return dx * dx + dy * dy <= r * r
    if shape == "square":
        half = 0.85 * r  # about the circle's area, so the two differ by outline, not size
        return (np.abs(dx) <= half) & (np.abs(dy) <= half)
    if shape == "triangle":
        # Apex up, base at the bottom; the half-width grows from 0 at the apex to r at the base.
        return (dy <= r) & (np.abs(dx) <= (dy + r) / 2.0)
    if shape == "cross":
        arm = 0.32 * r
        adx, ady = np.abs(dx), np.abs(dy)
        return ((adx <= r) & (ady <= arm)) | ((adx <= arm) & (ady <= r))
    raise ValueError(f"shape: unknown shape {shape!r}, expected one of {SHAPES}")


def _dilate(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of ``mask`` by a (2·radius+1)² square (outside the image counts as background)."""
    from scipy.ndimage import binary_dilation

    return binary_dilation(mask, structure=np.ones((2 * radius + 1, 2 * radius + 1), dtype=bool))


def _bbox(mask: np.ndarray) -> tuple[float, float, float, float]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return (float(cols[0]), float(rows[0]), float(cols[-1] - cols[0] + 1), float(rows[-1] - rows[0] + 1))


def _background(rng: np.random.Generator, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """A low-saturation, mid-grey texture, float of shape (H, W, 3)."""
    size = ys.shape[0]
    scale = size / _REFERENCE_SIZE
    kind = _BACKGROUNDS[rng.integers(len(_BACKGROUNDS))]
    base = rng.uniform(95.0, 165.0)
    if kind == "gradient":
        angle = rng.uniform(0.0, 2.0 * np.pi)
        t = ((xs * np.cos(angle) + ys * np.sin(angle)) / size) - 0.5
        grey = base + rng.uniform(20.0, 50.0) * t
    elif kind == "noise":
        grey = base + rng.normal(0.0, rng.uniform(8.0, 18.0), ys.shape)
    elif kind == "stripes":
        angle = rng.uniform(0.0, np.pi)
        period = rng.uniform(6.0, 16.0) * scale
        phase = (xs * np.cos(angle) + ys * np.sin(angle)) / period
        grey = base + rng.uniform(12.0, 30.0) * np.sign(np.sin(2.0 * np.pi * phase))
    elif kind == "checker":
        cell = max(2, int(round(rng.uniform(6.0, 16.0) * scale)))
        parity = ((ys.astype(np.int64) // cell) + (xs.astype(np.int64) // cell)) % 2
        grey = base + rng.uniform(12.0, 30.0) * (2.0 * parity - 1.0)
    else:  # blotches: a few soft grey blobs, darker or lighter than the base
        grey = np.full(ys.shape, base)
        for _ in range(rng.integers(4, 9)):
            by, bx = rng.uniform(0, size, 2)
            sigma = rng.uniform(6.0, 18.0) * scale
            grey = grey + rng.uniform(-35.0, 35.0) * np.exp(-((ys - by) ** 2 + (xs - bx) ** 2) / (2 * sigma * sigma))
    tint = rng.uniform(-8.0, 8.0, 3)  # a faint colour cast keeps saturation far below the objects'
    return grey[..., None] + tint


def _clutter(rng: np.random.Generator, image: np.ndarray, keep_out: np.ndarray) -> None:
    """Draw 1-4 small grey or dark specks or short thin lines into ``image`` (in place), each clear of ``keep_out``."""
    size = image.shape[0]
    scale = size / _REFERENCE_SIZE
    for _ in range(rng.integers(1, 5)):
        value = rng.uniform(20.0, 200.0)
        for _ in range(_TRIES_PER_OBJECT):  # a speck that would touch an object is moved, never clipped
            y, x = rng.integers(0, size, 2)
            patch = np.zeros((size, size), dtype=bool)
            if rng.random() < 0.5:
                side = max(1, int(round(rng.integers(2, 5) * scale)))
                patch[y : y + side, x : x + side] = True
            else:
                length = rng.uniform(4.0, 9.0) * scale
                angle = rng.uniform(0.0, np.pi)
                t = np.linspace(0.0, length, int(np.ceil(length)) * 2 + 1)
                py = np.clip(np.round(y + t * np.sin(angle)).astype(np.int64), 0, size - 1)
                px = np.clip(np.round(x + t * np.cos(angle)).astype(np.int64), 0, size - 1)
                patch[py, px] = True
            if not (patch & keep_out).any():
                image[patch] = value
                break


def _place(rng, shapes, ys, xs, *, size, gap, min_dx):
    """Masks and boxes for ``shapes``, pairwise at least ``gap`` apart with centres ``min_dx`` apart in x, or None."""
    scale = size / _REFERENCE_SIZE
    occupied = np.zeros((size, size), dtype=bool)
    placed = []
    for shape in shapes:
        for _ in range(_TRIES_PER_OBJECT):
            r = rng.uniform(*_OBJECT_DIAMETER) * scale / 2.0
            cx, cy = rng.uniform(r + 1.0, size - r - 1.0, 2)
            mask = _shape_mask(shape, cx, cy, r, ys, xs)
            if not mask.any() or (mask & occupied).any():
                continue
            bbox = _bbox(mask)
            centre = bbox[0] + bbox[2] / 2.0
            if any(abs(centre - (b[0] + b[2] / 2.0)) < min_dx for _, b in placed):
                continue
            placed.append((mask, bbox))
            occupied |= _dilate(mask, gap)
            break
        else:
            return None
    return placed


def render_scene(
    rng: np.random.Generator,
    *,
    size: int = 96,
    min_objects: int = 1,
    max_objects: int = 3,
    clutter_prob: float = 0.3,
) -> Scene:
    """Render one scene of coloured shapes with exact masks and a left-to-right caption.

    Parameters
    ----------
    rng : numpy.random.Generator
        The only source of randomness; the same generator state gives the same scene.
    size : int
        Image height and width in pixels (at least 32). Object diameters are 18-30 px at 96 and scale with it.
    min_objects, max_objects : int
        The object count is uniform over ``min_objects..max_objects`` (1 <= min <= max <= 4).
    clutter_prob : float
        Probability of drawing distractor clutter (small grey specks or short lines, in no mask).

    Returns
    -------
    Scene
        ``image`` of shape (size, size, 3) uint8; ``objects`` sorted by bbox centre x with disjoint masks at
        least 2 px (scaled) apart and centres at least 6 px (scaled) apart in x; ``caption`` per the module grammar.
    """
    if not isinstance(size, (int, np.integer)) or size < 32:
        raise ValueError(f"size: must be an integer >= 32, got {size!r}")
    if not 1 <= min_objects <= max_objects <= MAX_OBJECTS:
        raise ValueError(
            f"min_objects, max_objects: need 1 <= min_objects <= max_objects <= {MAX_OBJECTS}, "
            f"got {min_objects} and {max_objects}"
        )
    if not 0.0 <= clutter_prob <= 1.0:
        raise ValueError(f"clutter_prob: must be in [0, 1], got {clutter_prob!r}")

    scale = size / _REFERENCE_SIZE
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    gap = max(1, int(round(_MIN_GAP * scale)))
    min_dx = _MIN_CENTRE_DX * scale

    n = int(rng.integers(min_objects, max_objects + 1))
    shapes = [SHAPES[i] for i in rng.integers(len(SHAPES), size=n)]
    colours = [COLOURS[i] for i in rng.integers(len(COLOURS), size=n)]
    placed = None
    while placed is None:  # a crowded draw is resampled from scratch
        placed = _place(rng, shapes, ys, xs, size=size, gap=gap, min_dx=min_dx)

    image = _background(rng, ys, xs)
    if rng.random() < clutter_prob:
        occupied = np.zeros((size, size), dtype=bool)
        for mask, _ in placed:
            occupied |= mask
        _clutter(rng, image, _dilate(occupied, gap))
    objects = []
    for shape, colour, (mask, bbox) in zip(shapes, colours, placed):
        rgb = np.asarray(_RGB[colour], dtype=np.float64) + rng.uniform(-12.0, 12.0, 3)
        image[mask] = rgb + rng.normal(0.0, 5.0, (int(mask.sum()), 3))
        mask.setflags(write=False)
        objects.append(SceneObject(shape=shape, colour=colour, mask=mask, bbox=bbox))
    image = np.clip(np.round(image), 0, 255).astype(np.uint8)
    image.setflags(write=False)
    objects.sort(key=lambda o: o.centre_x)
    return Scene(image=image, objects=tuple(objects), caption=caption_for(objects))
