"""Detection scenes from Fashion-MNIST items: textured canvases with 1 to 6 items pasted.

One scene is a pure function of ``(seed, split, index)`` and the items it is given,
so a set can be rebuilt, or one scene of it, without the others.

Design (what a small YOLO can learn in minutes on a CPU):

* Background texture is dark (every channel 0..115): low-frequency colour noise plus
  a random grating. Items are bright (every channel 140..255): the Fashion pixel's
  intensity, tinted. Finding items is then easy, so the capacity of a small net goes
  to telling the 10 classes apart by shape, and a box can be recomputed from the
  pixels alone (any channel >= 140 is an item).
* Each item is the Fashion image scaled to 0.75x .. 2.5x (21 .. 70 px, aspect
  jittered +-15%) with bilinear filtering; pixels of intensity < 40 of 255 stay
  background (Fashion's soft halo), so the box is the tight bounding box of the
  item's visible pixels.
* Boxes never touch (one pixel of background at least between them), so no item
  hides part of another and every box holds exactly one item's pixels.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: colour ranges: background <= BACKGROUND_MAX < ITEM_MIN <= item, per channel, uint8
BACKGROUND_MAX, ITEM_MIN = 115, 140
#: Fashion intensity (0..255) below which a scaled item pixel stays background
ITEM_THRESHOLD = 40
SCALES = (.75, 2.5)
ASPECT_JITTER = .15
ITEMS_PER_SCENE = (1, 6)
PLACEMENT_TRIES = 60


@dataclass
class PlacedItem:
    """One pasted item: its class, the Fashion item it came from, its pixel box
    (x0, y0, x1, y1, right/bottom exclusive)."""

    cls: int
    source: int
    box: tuple[int, int, int, int]


def texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """A dark textured canvas, uint8 (size, size, 3), every value <= BACKGROUND_MAX."""
    from PIL import Image
    cells = int(rng.integers(3, 9))
    coarse = (rng.random((cells, cells, 3)) * 255).astype(np.uint8)
    noise = np.asarray(Image.fromarray(coarse).resize((size, size), Image.BILINEAR), np.float64)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(6, 30)
    grating = .5 + .5 * np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period)
    mix = rng.uniform(.2, .6)
    tone = rng.uniform(.3, 1., 3)
    value = ((1 - mix) * noise / 255 + mix * grating[:, :, None]) * tone
    return np.clip(np.round(value * BACKGROUND_MAX), 0, BACKGROUND_MAX).astype(np.uint8)


def scaled_item(rng: np.random.Generator, item: np.ndarray, limit: int) -> np.ndarray | None:
    """A 28x28 Fashion item resized to a random size (each side at most ``limit``),
    cropped to its visible pixels (intensity >= ITEM_THRESHOLD); uint8 (h, w), or None
    when nothing of it is visible."""
    from PIL import Image
    scale = rng.uniform(*SCALES)
    aspect = rng.uniform(1 - ASPECT_JITTER, 1 + ASPECT_JITTER)
    w = int(min(limit, max(8, round(28 * scale * aspect))))
    h = int(min(limit, max(8, round(28 * scale / aspect))))
    resized = np.asarray(Image.fromarray(item).resize((w, h), Image.BILINEAR), np.uint8)
    visible = resized >= ITEM_THRESHOLD
    if not visible.any():
        return None
    rows, cols = np.flatnonzero(visible.any(axis=1)), np.flatnonzero(visible.any(axis=0))
    return resized[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _touches(box, boxes) -> bool:
    x0, y0, x1, y1 = box
    return any(x0 <= b[2] and b[0] <= x1 and y0 <= b[3] and b[1] <= y1 for b in boxes)


def render_scene(seed: int, split: int, index: int, items: np.ndarray, labels: np.ndarray,
                 sources: np.ndarray, size: int) -> tuple[np.ndarray, list[PlacedItem]]:
    """One scene: ``(uint8 (size, size, 3) RGB, the placed items)``.

    Args:
        seed, split, index: what the scene's random draws derive from.
        items, labels: the Fashion split's images (N, 28, 28) and classes.
        sources: indices into ``items`` this scene may use, in order (1 to 6 are used).
        size: canvas side in pixels.
    """
    rng = np.random.default_rng([seed, split, index])
    canvas = texture(rng, size)
    wanted = int(rng.integers(ITEMS_PER_SCENE[0], ITEMS_PER_SCENE[1] + 1))
    placed: list[PlacedItem] = []
    for source in sources[:wanted]:
        item = scaled_item(rng, items[source], size - 2)
        if item is None:
            continue
        h, w = item.shape
        tint = rng.uniform(.55, 1., 3)
        for _ in range(PLACEMENT_TRIES):
            x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
            box = (x0, y0, x0 + w, y0 + h)
            if not _touches(box, [p.box for p in placed]):
                break
        else:
            continue  # no room left for this one: the scene keeps fewer items
        visible = item >= ITEM_THRESHOLD
        colour = ITEM_MIN + np.round((255 - ITEM_MIN) * (item[:, :, None] / 255.) * tint)
        region = canvas[y0:y0 + h, x0:x0 + w]
        region[visible] = colour[visible].astype(np.uint8)
        placed.append(PlacedItem(int(labels[source]), int(source), box))
    return canvas, placed


def item_pixels(image: np.ndarray) -> np.ndarray:
    """Where a rendered scene shows an item: bool (H, W), from the pixels alone."""
    return image.max(axis=2) >= ITEM_MIN
