"""Darknet's ``load_data_detection`` given its stream of ``rand()`` values.

pjreddie darknet (2018, the Debian package), ``src/data.c``, per batch of ``n``:

1. ``n`` images drawn with replacement, ``rand() % m`` each (``get_random_paths``);
2. per image, in this order of ``rand()`` calls: the jitter of the aspect ratio
   (two ``rand_uniform(-jitter * size, jitter * size)``, width first, then height,
   as the Debian library's code calls them), the offset ``dx``
   then ``dy`` (``rand_uniform(0, free space)``), ``random_distort_image`` (hue
   ``rand_uniform(-hue, hue)``, then saturation and exposure ``rand_scale``: a
   ``rand_uniform(1, s)`` and a coin for taking its inverse), the flip coin
   ``rand() % 2``, and ``randomize_boxes``' one ``rand() % n`` per box.

The image keeps its jittered aspect ratio and fills the input's width (or height),
placed at the random offset on a 0.5 grey canvas (the rest of the input). Darknet's
``scale`` is fixed at 1 there; ``angle`` is parsed from the cfg but this loader never
rotates. :func:`detection_batch` follows those steps with any source of ``rand()``
values: the data loader feeds it a NumPy generator seeded per batch (Darknet's own
``rand()`` cannot be matched: it is seeded from the clock), the tests feed it glibc's
``rand()`` replayed after ``srand(seed)`` and get libdarknet's bits.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .darknet_augment import distort_image, flip_image, place_image
from .darknet_truth import MAX_BOXES, correct_boxes, shuffle_boxes, truth_rows

F32 = np.float32
#: glibc's RAND_MAX; ``(float)rand() / RAND_MAX`` divides by its float value, 2^31
RAND_MAX = 2147483647

Rand = Callable[[], int]


@dataclass(frozen=True)
class Augmentation:
    """What varies between two loads of one image.

    Args:
        jitter: the aspect ratio's relative jitter (the last [yolo]/[region] ``jitter=``).
        hue: hue shift range, +-hue ([net] ``hue=``).
        saturation, exposure: scale ranges, 1/s .. s ([net] ``saturation=``, ``exposure=``).
        flip: mirror half the images (Darknet always does).
        centred: place the image in the middle of the free space instead of at a random
            offset. Darknet has no such switch; :meth:`off` uses it so that augmentation
            off gives one fixed input per image.
    """

    jitter: float = .2
    hue: float = 0.
    saturation: float = 1.
    exposure: float = 1.
    flip: bool = True
    centred: bool = False

    @classmethod
    def off(cls) -> "Augmentation":
        """No augmentation: the image letterboxed by place_image, centred, colours kept."""
        return cls(jitter=0., hue=0., saturation=1., exposure=1., flip=False, centred=True)


def rand_uniform(rand: Rand, low: float, high: float) -> F32:
    """Darknet ``rand_uniform``: ``(float)rand() / RAND_MAX * (max - min) + min``, floats."""
    low, high = F32(low), F32(high)
    if high < low:
        low, high = high, low
    return F32(F32(rand()) / F32(RAND_MAX)) * (high - low) + low


def rand_scale(rand: Rand, s: float) -> F32:
    """Darknet ``rand_scale``: ``rand_uniform(1, s)`` or, on a coin, its inverse (in
    float: ``-Ofast`` compiles the source's double ``1./scale`` to a float division)."""
    scale = rand_uniform(rand, 1, s)
    if rand() % 2:
        return scale
    return F32(1) / scale


@dataclass
class Placement:
    """Where one image went: the float size and offset the boxes use (C's nw, nh, dx, dy)."""

    nw: F32
    nh: F32
    dx: F32
    dy: F32
    flip: bool


def detection_example(image: np.ndarray, boxes: np.ndarray, rand: Rand, w: int, h: int,
                      augment: Augmentation, max_boxes: int = MAX_BOXES):
    """One image of ``load_data_detection``: ``(x (3, h, w) float32, truth (max_boxes, 5)
    float32, placement)``.

    Args:
        image: float32 (3, H, W) in [0, 1] (``load_image_color``).
        boxes: float32 rows ``(class, x, y, w, h)`` from its label file.
        rand: the ``rand()`` stream (see the module docstring for the order of calls).
    """
    _, oh, ow = image.shape
    sized = np.full((3, h, w), F32(.5), F32)
    jitter = F32(augment.jitter)
    dw, dh = jitter * F32(ow), jitter * F32(oh)
    jitter_w = rand_uniform(rand, -dw, dw)  # the width's call comes first (as compiled)
    jitter_h = rand_uniform(rand, -dh, dh)
    new_ar = (F32(ow) + jitter_w) / (F32(oh) + jitter_h)
    if new_ar < 1:
        nh = F32(h)
        nw = nh * new_ar
    else:
        nw = F32(w)
        nh = nw / new_ar
    dx = rand_uniform(rand, 0, F32(w) - nw)
    dy = rand_uniform(rand, 0, F32(h) - nh)
    if augment.centred:
        dx, dy = (F32(w) - nw) / F32(2), (F32(h) - nh) / F32(2)
    place_image(image, int(nw), int(nh), int(dx), int(dy), sized)
    dhue = rand_uniform(rand, -augment.hue, augment.hue)
    dsat = rand_scale(rand, augment.saturation)
    dexp = rand_scale(rand, augment.exposure)
    sized = distort_image(sized, dhue, dsat, dexp)
    flip = bool(rand() % 2) and augment.flip
    if flip:
        sized = flip_image(sized)
    shuffled = shuffle_boxes(boxes, rand)
    # -dx/w, nw/w as compiled: multiplications by the reciprocals of w and h
    rw, rh = F32(1) / F32(w), F32(1) / F32(h)
    corrected = correct_boxes(shuffled, -(dx * rw), -(dy * rh), nw * rw, nh * rh, flip)
    return sized, truth_rows(shuffled, corrected, max_boxes), Placement(nw, nh, dx, dy, flip)


def detection_batch(count: int, rand: Rand, load: Callable[[int], tuple[np.ndarray, np.ndarray]],
                    sources: int, w: int, h: int, augment: Augmentation,
                    max_boxes: int = MAX_BOXES):
    """``load_data_detection``: ``(images float32 (count, 3, h, w), truths float32
    (count, max_boxes, 5), the source indices drawn)``.

    Args:
        count: images in the batch.
        rand: the ``rand()`` stream.
        load: source index -> ``(image float32 (3, H, W), boxes (k, 5))``.
        sources: how many images the list holds (Darknet's ``m``).
    """
    picks = [rand() % sources for _ in range(count)]
    images = np.empty((count, 3, h, w), F32)
    truths = np.empty((count, max_boxes, 5), F32)
    for i, index in enumerate(picks):
        image, boxes = load(index)
        images[i], truths[i], _ = detection_example(image, boxes, rand, w, h, augment, max_boxes)
    return images, truths, picks
