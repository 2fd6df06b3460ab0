"""Training batches for a Darknet detector, as ``darknet detector train`` loads them.

pjreddie darknet (2018, the Debian package): ``examples/detector.c`` ``train_detector``
and ``src/data.c`` ``load_data_detection`` (see :mod:`.darknet_sample` for the
per-image steps, :mod:`.darknet_truth` for the labels):

* the ``.data`` file's ``train=`` list, its paths relative to the current directory
  (or ``base_dir``); each image's label file found by Darknet's path rewrite
  (``images``/``JPEGImages``/``raw`` -> ``labels``, extension -> ``.txt``);
* every batch draws its images with replacement; each is jittered in aspect ratio,
  placed at a random offset on grey, distorted in hue/saturation/exposure, flipped
  on a coin; its boxes shuffled, mapped, clipped and filtered;
* ``random=1`` on the last [yolo]/[region] layer: every 10 batches the input becomes
  ``(r % 10 + 10) * 32`` square (320 ... 608), and 608 once fewer than 200 batches
  remain before ``max_batches``.

Batches are ``(images float32 (N, 3, H, W) RGB in [0, 1], truths float32 (N, 90, 5))``,
each truth row ``x, y, w, h, class`` relative to the network input, zero rows after
the last box: ``fill_truth_detection``'s layout, the trainer's contract.

Determinism: batch ``k`` is a pure function of ``(seed, k)``: its ``rand()`` values come
from a NumPy generator seeded with ``(seed, k)``, the input size of batch ``k`` from
one seeded with ``(seed, k // 10)``. The same seed gives the same batches, in any
order and with any number of workers; a resumed run rebuilds batch ``k`` exactly.
Darknet itself seeds ``rand()`` from the clock, so its draws cannot be matched; given
the same ``rand()`` values our batches equal libdarknet's bit for bit (the tests
replay glibc's ``rand()`` through :func:`.darknet_sample.detection_batch`).

Checked before the first batch, each a one-line :class:`ModelError`: a ``.data``
without ``train=``; a [yolo]/[region] layer whose ``classes`` differs from the
``.data``'s; every label file (see :func:`.darknet_truth.read_label_file`); every
image's header. A missing label file is an error by default (pjreddie's darknet
exits with "Couldn't open file"); ``missing_labels="no_boxes"`` trains those images on
no boxes, as forks that tolerate it do, with one warning naming the first file and
the count. ``angle=`` in [net] is read by Darknet but unused by its detection loader;
it is ignored here too.

Example::

    data = DetectionTrainData("fixture.data", "tiny.cfg", seed=1)
    for images, truths in data.batches(stop=100):
        ...  # images (64, 3, 320, 320), truths (64, 90, 5)
"""
from __future__ import annotations

import collections
import concurrent.futures as cf
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..darknet.reader import read_darknet
from ..errors import ModelError
from ..evaluation.darknet_data import DataCfg, ImageItem, read_data_cfg, read_image_list
from ..images.darknet_image import load_image
from ..layers.registry import layers_with_role, spec_for
from .darknet_sample import RAND_MAX, Augmentation, detection_batch
from .darknet_truth import MAX_BOXES, label_file_of, read_label_file

F32 = np.float32
#: detector.c's multi-scale rule: (rand() % 10 + 10) * 32, every 10 batches; 608 at the end
SCALE_EVERY, SCALE_STEP, SCALE_FIRST, SCALE_COUNT = 10, 32, 10, 10
FINAL_SIZE, FINAL_BATCHES = 608, 200
#: head box formats whose truth is fill_truth_detection's (YOLOv1 trains with `darknet yolo`)
_TRAINED_FORMATS = ("yolo_v3", "yolo_v2")
_MISSING = ("error", "no_boxes")


@dataclass(frozen=True)
class DetectorSettings:
    """What the cfg tells the loader: input size, batch, augmentation, classes."""

    width: int
    height: int
    batch: int
    classes: int
    multiscale: bool
    augmentation: Augmentation
    max_batches: int | None  # [net] max_batches=, for the multi-scale rule's end


class SeededRand:
    """A ``rand()`` stream from a NumPy generator: ints in 0..RAND_MAX, drawn in blocks."""

    def __init__(self, *entropy: int, block: int = 1024):
        self._rng = np.random.default_rng(list(entropy))
        self._block, self._values, self._next = block, np.empty(0, np.int64), 0

    def __call__(self) -> int:
        if self._next == len(self._values):
            self._values, self._next = self._rng.integers(0, RAND_MAX, self._block,
                                                          endpoint=True), 0
        self._next += 1
        return int(self._values[self._next - 1])


def detector_settings(graph, data_path, data_classes: int | None) -> DetectorSettings:
    """Read the loader's settings from a Darknet graph; check its classes against the .data.

    Args:
        graph: the model (``read_darknet(cfg)``).
        data_path: the ``.data`` file, for messages.
        data_classes: its ``classes=``, or None when it does not say.
    """
    cfg_file = graph.source[0] if graph.source else None
    heads = layers_with_role(graph, "detector_head")
    if not heads:
        raise ModelError("the net has no [yolo] or [region] layer: nothing for "
                         "'darknet detector train' to train", file=cfg_file)
    last = heads[-1]  # train_detector reads classes, jitter and random from the last layer
    last_spec = spec_for("darknet", last)
    if last_spec.box_format not in _TRAINED_FORMATS:
        raise ModelError(f"'darknet detector train' trains [yolo] and [region] heads; this "
                         f"{last.type} head is YOLOv1's, trained by 'darknet yolo train' with "
                         f"another truth layout", file=cfg_file, layer=last.name)
    for head in heads:
        n = spec_for("darknet", head).classes(head)
        if data_classes is not None and n != data_classes:
            raise ModelError(f"classes={n} here but {data_path} says classes={data_classes}",
                             file=cfg_file, layer=head.name)
    meta = graph.meta
    _, _, h, w = graph.inputs["data"]

    def number(params, key, default, where):
        value = params.get(key, default)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ModelError(f"{where} {key}={value!r} is not a number", file=cfg_file)
        return float(value)

    batch = int(number(meta, "batch", 1, "[net]"))
    max_batches = int(number(meta, "max_batches", 0, "[net]")) or None
    if batch < 1:
        raise ModelError(f"[net] batch={batch} must be at least 1", file=cfg_file)
    # load_thread: a saturation or exposure of 0 means 1
    aug = Augmentation(jitter=number(last.params, "jitter", .2, f"layer '{last.name}'"),
                       hue=number(meta, "hue", 0, "[net]"),
                       saturation=number(meta, "saturation", 1, "[net]") or 1.,
                       exposure=number(meta, "exposure", 1, "[net]") or 1.)
    return DetectorSettings(int(w), int(h), batch, last_spec.classes(last),
                            bool(number(last.params, "random", 0, f"layer '{last.name}'")), aug,
                            max_batches)


class DetectionTrainData:
    """The training batches of ``darknet detector train DATA CFG``.

    Args:
        data_file: the ``.data`` file (``train=``, optionally ``classes=``), or one already
            read (a :class:`.DataCfg`).
        cfg_file: the model's ``.cfg`` (or an already read Darknet graph).
        base_dir: folder the ``.data``'s and the list's relative paths start from
            (default: the current directory, as Darknet).
        seed: an int >= 0; the same seed gives the same batches.
        batch_size: images per batch (default: the cfg's ``batch=``, what Darknet loads
            per iteration before splitting it into subdivisions).
        augment: False: no jitter, hue, saturation, exposure or flip, and the image
            centred: one fixed input per image (the boxes still shuffled).
        max_batches: the run's length, for the multi-scale rule's final 608 (default: the
            cfg's ``max_batches=``; None there too: never).
        workers: background threads building the next batches (0: built on demand).
        prefetch: batches built ahead (at least 1).
        missing_labels: "error" (default) or "no_boxes" (warn once, train on no boxes).
        check_images: open every image's header before the first batch.
    """

    def __init__(self, data_file, cfg_file, *, base_dir=None, seed: int = 0,
                 batch_size: int | None = None, augment: bool = True,
                 max_batches: int | None = None, workers: int = 1, prefetch: int = 2,
                 missing_labels: str = "error", check_images: bool = True):
        for name, value, low in (("seed", seed, 0), ("workers", workers, 0),
                                 ("prefetch", prefetch, 1)):
            _check_int(name, value, low)
        if missing_labels not in _MISSING:
            raise ModelError(f"missing_labels must be one of {_MISSING}, got {missing_labels!r}")
        self.data = data_file if isinstance(data_file, DataCfg) else \
            read_data_cfg(data_file, base_dir)
        if "train" not in self.data.options:
            raise ModelError("no 'train=' option: the .data file must name the training "
                             "image list", file=self.data.path)
        graph = cfg_file if hasattr(cfg_file, "layers") else read_darknet(cfg_file)
        declared = self.data.integer("classes", -1) if "classes" in self.data.options else None
        self.settings = detector_settings(graph, self.data.path, declared)
        self.batch_size = self.settings.batch if batch_size is None else \
            _check_int("batch_size", batch_size, 1)
        self.max_batches = self.settings.max_batches if max_batches is None else \
            _check_int("max_batches", max_batches, 1)
        self.augmentation = self.settings.augmentation if augment else Augmentation.off()
        self.seed, self.workers, self.prefetch = int(seed), int(workers), int(prefetch)
        self.items: list[ImageItem] = read_image_list(self.data, "train")
        self.boxes = self._read_labels(missing_labels)
        if check_images:
            for item in self.items:
                _check_header(item)
        self._pool = None

    # ------------------------------------------------------------------ contents
    def _read_labels(self, missing_labels: str) -> list[np.ndarray]:
        classes, boxes, missing = self.settings.classes, [], []
        for item in self.items:
            path = label_file_of(item.written, self.data.resolve)
            if not path.is_file():
                if missing_labels == "error":
                    raise ModelError(f"label file {path} for this image ({item.written}) does "
                                     f"not exist (missing_labels='no_boxes' trains it on no boxes)",
                                     file=item.list_file, line=item.line)
                missing.append(path)
                boxes.append(np.zeros((0, 5), F32))
                continue
            boxes.append(read_label_file(path, classes))
        if missing:
            warnings.warn(f"{len(missing)} of {len(self.items)} training images have no label "
                          f"file (the first: {missing[0]}); they train on no boxes", stacklevel=3)
        return boxes

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Image ``index`` of the list: ``(float32 (3, H, W) in [0, 1], boxes (k, 5))``."""
        item = self.items[index]
        try:
            image = load_image(item.path, channels=3)
        except ModelError as e:
            raise ModelError(f"cannot decode image {item.path}: {e.message}",
                             file=item.list_file, line=item.line) from None
        return image, self.boxes[index]

    def size(self, k: int) -> tuple[int, int]:
        """(width, height) of batch ``k``'s images."""
        if not self.settings.multiscale:
            return self.settings.width, self.settings.height
        block = k // SCALE_EVERY
        if self.max_batches is not None and block * SCALE_EVERY + FINAL_BATCHES > self.max_batches:
            return FINAL_SIZE, FINAL_SIZE
        dim = (SeededRand(self.seed, 1, block)() % SCALE_COUNT + SCALE_FIRST) * SCALE_STEP
        return dim, dim

    def batch(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``k``, built now: ``(images (N, 3, H, W), truths (N, 90, 5))``, float32."""
        k = _check_int("batch index", k, 0)
        w, h = self.size(k)
        images, truths, _ = detection_batch(self.batch_size, SeededRand(self.seed, 0, k),
                                            self.load, len(self.items), w, h,
                                            self.augmentation, MAX_BOXES)
        return images, truths

    # ------------------------------------------------------------------ background
    def batches(self, start: int = 0, stop: int | None = None):
        """Batches ``start``, ``start + 1``, ... up to ``stop`` (None: forever), each
        ``(images, truths)``, built ahead by the background threads; equal to
        :meth:`batch` of the same index."""
        start = _check_int("start", start, 0)
        if self.workers == 0:
            k = start
            while stop is None or k < stop:
                yield self.batch(k)
                k += 1
            return
        if self._pool is None:
            self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="darknet-data")
        pending: collections.deque = collections.deque()
        k = start
        try:
            while True:
                while len(pending) < self.prefetch and (stop is None or k < stop):
                    pending.append(self._pool.submit(self.batch, k))
                    k += 1
                if not pending:
                    return
                yield pending.popleft().result()
        finally:
            for future in pending:
                future.cancel()

    def __iter__(self):
        return self.batches()

    def close(self) -> None:
        """Stop the background threads; pending batches are dropped. Safe to call twice."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def __enter__(self) -> "DetectionTrainData":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _check_int(name: str, value, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ModelError(f"DetectionTrainData: {name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _check_header(item: ImageItem) -> None:
    """The image opens and its header is sound (Pillow's ``verify``); else a located error."""
    from PIL import Image
    try:
        with Image.open(Path(item.path)) as img:
            img.verify()
    except Exception as e:  # Pillow raises many types for a bad file; all mean "not an image"
        raise ModelError(f"image {item.path} does not decode: {e}", file=item.list_file,
                         line=item.line) from None
