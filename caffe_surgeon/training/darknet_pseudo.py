"""Label-free Darknet training: the unpruned model's detections are the truths.

For users with images but no labels. Each training image is run once through the teacher
(the model ``prune`` started from) with our engine, as ``caffe-surgeon detect`` runs it:
letterboxed into the teacher's own input size, its heads decoded by
:func:`caffe_surgeon.detection.darknet_boxes.detections` at ``thresh`` (default
:data:`DEFAULT_THRESH`, ``detect``'s) and NMS ``nms`` (default .45, ``darknet detector
test``'s). Every class above ``thresh`` of a kept box becomes one truth row, as
``draw_detections`` prints a line for each; the box is clipped to the image, so a row is
what a label file line would hold (``class x y w h`` relative to the image, float32).

The rows then go through :class:`.darknet_data.DetectionTrainData` unchanged: the same
jitter, placement and flips move the pseudo-boxes as they move real ones. The images come
from a plain list file (one path a line, relative to the current directory as Darknet
reads lists) or from a ``.data`` file's ``train=`` list; no ``labels/`` folder is read.

Cached: the rows are computed once per image when the loader is built; with ``cache``
they are also written to a ``.npz`` (atomically) keyed by the teacher's files, the
thresholds and the images' bytes, so a resumed run reuses them. Deterministic: the engine
forward and the decoding depend on nothing but those inputs.

Refused before anything runs, each a one-line :class:`ModelError`: a teacher whose heads
(count, kind or classes) differ from the student's; an empty image list.
"""
from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..evaluation.darknet_data import DataCfg, read_data_cfg
from ..fileio import atomic_write
from ..images.darknet_image import load_image
from ..layers.registry import layers_with_role, spec_for
from .darknet_data import DetectionTrainData

F32 = np.float32
#: ``caffe-surgeon detect``'s probability threshold (and AlexeyAB darknet's): boxes the
#: teacher is fairly sure of; lower values teach the student the teacher's noise
DEFAULT_THRESH = .25
#: ``darknet detector test``'s NMS IoU
DEFAULT_NMS = .45
CACHE_VERSION = 1


@dataclass(frozen=True)
class Teacher:
    """The model whose detections are the truths.

    Attributes:
        cfg: the unpruned model's ``.cfg``.
        weights: its ``.weights``.
        thresh: class probability a detection needs to become a truth.
        nms: NMS IoU threshold (0: none).
    """

    cfg: Path
    weights: Path
    thresh: float = DEFAULT_THRESH
    nms: float = DEFAULT_NMS

    def __post_init__(self):
        for name in ("thresh", "nms"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) \
                    or not 0 <= value < 1:
                raise ModelError(f"the teacher's {name} must be a number in [0, 1), got {value!r}")
        for f in (self.cfg, self.weights):
            if not Path(f).is_file():
                raise ModelError("the teacher's file does not exist", file=f)


def image_list(path) -> DataCfg:
    """The images to train on: a ``.data`` file (its ``train=``) or a plain list file."""
    path = Path(path)
    if path.suffix.lower() == ".data":
        return read_data_cfg(path)
    if not path.is_file():
        raise ModelError("the image list does not exist", file=path)
    return DataCfg(path, {"train": str(path)})


def check_teacher(teacher_graph, student_graph) -> None:
    """The teacher's detector heads match the student's: same count, kinds and classes
    (the pseudo-labels' class numbers must mean the same thing to both)."""
    def heads(graph):
        return [(l, spec_for("darknet", l)) for l in layers_with_role(graph, "detector_head")]
    theirs, ours = heads(teacher_graph), heads(student_graph)
    t_file, s_file = teacher_graph.source_text, student_graph.source_text
    if len(theirs) != len(ours):
        raise ModelError(f"the teacher has {len(theirs)} detector heads, the student "
                         f"{len(ours)} ({s_file})", file=t_file)
    for (tl, ts), (sl, ss) in zip(theirs, ours):
        if tl.type != sl.type or ts.classes(tl) != ss.classes(sl):
            raise ModelError(f"the teacher's head is [{tl.type}] with classes={ts.classes(tl)}, "
                             f"the student's '{sl.name}' is [{sl.type}] with classes="
                             f"{ss.classes(sl)} ({s_file})", file=t_file, layer=tl.name)


def pseudo_rows(graph, executor, image: np.ndarray, thresh: float = DEFAULT_THRESH,
                nms: float = DEFAULT_NMS) -> np.ndarray:
    """The teacher's detections on ``image`` (C, H, W in [0, 1]) as label rows.

    Returns:
        float32 ``(k, 5)`` rows ``class, x, y, w, h`` relative to the image, in the order of
        the detection array after NMS (classes ascending within a box); boxes clipped to
        the image, those left with no width or height dropped.
    """
    from ..detection.darknet_boxes import detections
    rows = []
    for d in detections(graph, executor, image, thresh, nms):
        x, y, w, h = (float(F32(v)) for v in (d.x, d.y, d.w, d.h))
        left, right = max(x - w / 2, 0.), min(x + w / 2, 1.)
        top, bottom = max(y - h / 2, 0.), min(y + h / 2, 1.)
        if right <= left or bottom <= top:
            continue
        for j in np.flatnonzero(d.prob > F32(thresh)):
            rows.append((j, (left + right) / 2, (top + bottom) / 2, right - left, bottom - top))
    return np.asarray(rows, F32).reshape(-1, 5)


class PseudoLabelledData(DetectionTrainData):
    """:class:`.DetectionTrainData` whose truths are ``teacher``'s detections.

    Args:
        images: a plain list of images or a ``.data`` file (see :func:`image_list`).
        cfg_file: the student's ``.cfg`` or graph.
        teacher: a :class:`Teacher`.
        cache: optional ``.npz`` holding the rows between runs (see the module docstring).
        **options: :class:`.DetectionTrainData`'s (``missing_labels`` does not apply).
    """

    def __init__(self, images, cfg_file, teacher: Teacher, *, cache=None, **options):
        from ..darknet.reader import read_darknet
        self.teacher, self.cache = teacher, Path(cache) if cache is not None else None
        self.student = cfg_file if hasattr(cfg_file, "layers") else read_darknet(cfg_file)
        super().__init__(image_list(images), self.student, **options)

    def _read_labels(self, missing_labels: str) -> list[np.ndarray]:
        from ..darknet.reader import read_darknet
        from ..engine import Executor
        teacher = read_darknet(self.teacher.cfg, self.teacher.weights)
        check_teacher(teacher, self.student)
        key = self._cache_key()
        cached = self._read_cache(key)
        if cached is not None:
            return cached
        executor = Executor(teacher)
        channels = teacher.inputs["data"][1]
        boxes = [pseudo_rows(teacher, executor, self._image(item, channels), self.teacher.thresh,
                             self.teacher.nms) for item in self.items]
        self._write_cache(key, boxes)
        return boxes

    @staticmethod
    def _image(item, channels: int) -> np.ndarray:
        try:
            return load_image(item.path, channels=channels)
        except ModelError as e:
            raise ModelError(f"cannot decode image {item.path}: {e.message}",
                             file=item.list_file, line=item.line) from None

    # ------------------------------------------------------------------ the cache file
    def _cache_key(self) -> str:
        digest = hashlib.sha256(f"v{CACHE_VERSION} {self.teacher.thresh!r} "
                                f"{self.teacher.nms!r}".encode())
        for f in (self.teacher.cfg, self.teacher.weights, *(i.path for i in self.items)):
            digest.update(hashlib.sha256(Path(f).read_bytes()).digest())
        return digest.hexdigest()

    def _read_cache(self, key: str) -> list[np.ndarray] | None:
        if self.cache is None or not self.cache.is_file():
            return None
        try:
            with np.load(self.cache) as z:
                if str(z["key"]) != key:
                    return None  # another teacher, threshold or image set: recomputed
                rows, counts = z["rows"].astype(F32), z["counts"].astype(np.int64)
        except (OSError, KeyError, ValueError):
            return None  # unreadable: recomputed and rewritten
        if len(counts) != len(self.items) or counts.sum() != len(rows):
            return None
        return np.split(rows, np.cumsum(counts)[:-1])

    def _write_cache(self, key: str, boxes: list[np.ndarray]) -> None:
        if self.cache is None:
            return
        buffer = io.BytesIO()
        np.savez(buffer, key=np.asarray(key), rows=np.concatenate(boxes).reshape(-1, 5),
                 counts=np.asarray([len(b) for b in boxes], np.int64))
        atomic_write(self.cache, buffer.getvalue())
