"""Evaluate Darknet classifiers (top-k) and detectors (VOC mAP), with or without labels.

Both evaluators decode the ``valid`` list of a ``.data`` file once into batches
of the net's input (``feeds``). With labels, the truth comes from the file
names (classifier) or the ``labels/`` files (detector). Label-free, the truth
is the reference model's own output on the same images: top-1 agreement for a
classifier, and for a detector the mAP of the candidate's detections against
the reference's confident detections (see :mod:`.agreement`).

The reference graph given to a constructor is the unpruned model: label-free
evaluators run it once, at construction. Scoring decodes the candidate's
outputs with the reference's head layers, which pruning leaves untouched.

Memory: each image is kept as float32 at the net's input size (about 2 MB at
416 x 416 x 3), in memory up to a budget and past it in a memory-mapped
temporary file (:mod:`.feed_store`); ``max_images`` evaluates the first images
of the list only.
"""
from __future__ import annotations

import numpy as np

from ..detection import darknet_boxes
from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import infer_shapes, spec_for
from . import agreement
from .base import Evaluator, progress
from .darknet_data import (class_from_path, classifier_input, detector_input, label_path,
                           read_boxes, read_data_cfg, read_image_list, read_names)
from .feed_store import FeedStore
from .voc_map import voc_map

F32 = np.float32


class _DarknetEvaluator(Evaluator):
    """Shared set-up: the .data file, the valid list, the net's input geometry."""

    def __init__(self, data_file, graph: Graph, *, batch_size: int, max_images, base_dir,
                 darknet_bn: str, show_progress: bool):
        super().__init__()
        if graph.framework != "darknet":
            raise ModelError(f"a Darknet evaluator needs a Darknet graph, not {graph.framework}")
        if batch_size < 1:
            raise ModelError(f"batch_size must be at least 1, got {batch_size}")
        self.darknet_bn, self.show_progress = darknet_bn, show_progress
        self.batch_size = batch_size
        self.model_file = graph.source[0] if graph.source else None
        self.data = read_data_cfg(data_file, base_dir)
        shape = graph.inputs.get("data")
        if shape is None or len(shape) != 4:
            raise ModelError(f"the net's input is {shape}; image evaluation needs (1, C, H, W)",
                             file=self.model_file)
        _, self.channels, self.net_h, self.net_w = shape
        if self.channels not in (1, 3):
            raise ModelError(f"the net takes {self.channels}-channel input; images give 3 "
                             "(or 1, the first plane)", file=self.model_file)
        self.items = read_image_list(self.data, "valid", max_images)

    def _batches(self, arrays) -> FeedStore:
        """Batches of ``batch_size`` images from an iterable, built as the images arrive
        (one batch of decoded images is held at a time)."""
        store, batch = FeedStore(), []
        for a in arrays:
            batch.append(a)
            if len(batch) == self.batch_size:
                store.append({"data": np.stack(batch)})
                batch = []
        if batch:
            store.append({"data": np.stack(batch)})
        return store

    def _per_image(self, results, key: str) -> np.ndarray:
        """One array with a row per image from the per-batch results."""
        try:
            return np.concatenate([np.asarray(r[key]) for r in results])
        except KeyError:
            raise ModelError(f"a result has no '{key}' (run with {self.run_args})") from None


def _producer(graph: Graph, layer) -> str | None:
    """The name of the layer that writes ``layer``'s (first) input, None for a net input."""
    i = graph.producers()[graph.index(layer.name)][0]
    return None if i is None else graph.layers[i].name


def _output_layer(graph: Graph):
    """darknet's network output: the last layer that is not a [cost] layer."""
    for layer in reversed(graph.layers):
        if not spec_for(graph.framework, layer).has_role("loss"):
            return layer
    raise ModelError("the net has no layers", file=graph.source_text)


def _checked_reference(reference, count: int):
    """A ``reference=`` given to a constructor: one entry per image of the valid list."""
    if len(reference) != count:
        raise ModelError(f"the given reference covers {len(reference)} images, the valid list "
                         f"has {count}")
    return reference


def top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """darknet ``top_k`` per row: indices of the k largest, ties to the lower index."""
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


class DarknetClassifierEvaluator(_DarknetEvaluator):
    """Top-k accuracy (darknet ``classifier valid``) or top-1 agreement with the reference.

    Args:
        data_file: the ``.data`` file (``classes``, ``valid``, ``labels``/``names``, ``top``).
        graph: the reference (unpruned) model.
        metric: "top-1", "top-5", ... or "top-k" for the .data file's ``top`` (darknet default 1).
        label_free: score agreement of top-1 with the reference model instead of labels.
        batch_size, max_images, base_dir, darknet_bn, show_progress: see the module notes.
    """

    def __init__(self, data_file, graph: Graph, *, metric: str = "top-1", label_free: bool = False,
                 batch_size: int = 32, max_images: int | None = None, base_dir=None,
                 darknet_bn: str = "pjreddie", show_progress: bool = False, reference=None):
        super().__init__(data_file, graph, batch_size=batch_size, max_images=max_images,
                         base_dir=base_dir, darknet_bn=darknet_bn, show_progress=show_progress)
        self.classes = self.data.integer("classes", 2)
        self.k = self._k(metric)
        self.label_free = label_free
        self.metric_name = "top-1 agreement" if label_free else f"top-{self.k}"
        out = _output_layer(graph)
        for layer in graph.layers:
            why = spec_for(graph.framework, layer).unsupported(layer)
            if why:
                raise ModelError(why, file=self.model_file, layer=layer.name)
        size = int(np.prod(infer_shapes(graph).outputs[out.name][0][1:]))
        if size < self.classes:
            raise ModelError(f"the net's output layer '{out.name}' has {size} values per image but "
                             f"{self.data.path} says classes={self.classes}", file=self.model_file)
        self.outputs = [out.tops[0]]
        if not label_free:  # every path must name its class before anything is decoded
            labels = read_names(self.data, ("labels", "names"), self.classes)[:self.classes]
            self.truth = np.array([class_from_path(item, labels) for item in self.items])
        self.feeds = self.decode()
        if label_free:
            self.reference_top1 = top_k(self._scores(self.run(graph)), 1)[:, 0] \
                if reference is None else _checked_reference(reference, len(self.items))

    def reference_state(self):
        return self.reference_top1 if self.label_free else None

    def decode(self) -> FeedStore:
        """Load and resize the valid list's images again (darknet's ``load_image_color``)."""
        images = (classifier_input(item, self.net_w, self.net_h, self.channels) for item in
                  progress(self.items, self.show_progress, "loading images", len(self.items)))
        return self._batches(images)

    def _k(self, metric: str) -> int:
        if metric == "top-k":
            return self.data.integer("top", 1)
        try:
            k = int(metric.removeprefix("top-"))
        except ValueError:
            raise ModelError(f"metric must be 'top-1', 'top-5', ... or 'top-k', not {metric!r}") from None
        if not metric.startswith("top-") or k < 1:
            raise ModelError(f"metric must be 'top-1', 'top-5', ... or 'top-k', not {metric!r}")
        return k

    def predictions(self, results) -> np.ndarray:
        """The output layer's values, one row per image (darknet's ``pred``, all its outputs)."""
        out = self._per_image(results, self.outputs[0])
        return out.reshape(len(out), -1)

    def _scores(self, results) -> np.ndarray:
        return self.predictions(results)[:, :self.classes]

    def accuracies(self, results) -> dict[str, float]:
        """Both darknet figures: {"top-1": .., "top-<k>": ..} (labelled mode)."""
        if self.label_free:
            raise ModelError("a label-free evaluator has no accuracies; use score()")
        best = top_k(self._scores(results), self.k)
        hit = best == self.truth[:, None]
        n = F32(len(self.truth))
        return {"top-1": float(F32(hit[:, 0].sum()) / n), f"top-{self.k}": float(F32(hit.any(1).sum()) / n)}

    def _score(self, results) -> float:
        scores = self._scores(results)
        if self.label_free:
            return agreement.top1_agreement(self.reference_top1, top_k(scores, 1)[:, 0])
        return self.accuracies(results)[f"top-{self.k}"]


class DarknetDetectorEvaluator(_DarknetEvaluator):
    """VOC mAP@0.5 of a YOLO/region detector, against labels or against the reference model.

    Args:
        data_file: the ``.data`` file (``valid``, ``classes``, ``names``).
        graph: the reference (unpruned) model.
        label_free: truth = the reference's detections with probability > ``truth_thresh``.
        thresh, nms: detection threshold and NMS IoU of ``darknet detector valid`` (.005, .45).
        truth_thresh: reference confidence that makes a box "true" (darknet's test default .25).
        iou_thresh: matching IoU for mAP (VOC: 0.5).
    """

    def __init__(self, data_file, graph: Graph, *, label_free: bool = False, thresh: float = .005,
                 nms: float = .45, truth_thresh: float = .25, iou_thresh: float = .5,
                 batch_size: int = 8, max_images: int | None = None, base_dir=None,
                 darknet_bn: str = "pjreddie", show_progress: bool = False, reference=None):
        super().__init__(data_file, graph, batch_size=batch_size, max_images=max_images,
                         base_dir=base_dir, darknet_bn=darknet_bn, show_progress=show_progress)
        heads = darknet_boxes.head_layers(graph)
        if not heads:
            raise ModelError("the net has no [yolo], [region] or [detection] layer",
                             file=self.model_file)
        self.classes = spec_for("darknet", heads[-1]).classes(heads[-1])
        declared = self.data.integer("classes", self.classes)
        if declared != self.classes:
            raise ModelError(f"{self.data.path} says classes={declared} but the last "
                             f"[{heads[-1].type}] layer of {self.model_file} has "
                             f"classes={self.classes}", file=self.data.path)
        self.thresh, self.nms, self.iou_thresh = thresh, nms, iou_thresh
        self.truth_thresh, self.label_free = truth_thresh, label_free
        self.metric_name = "mAP@0.5 agreement" if label_free else "mAP@0.5"
        # A [yolo] head's input is decoded here, the head itself not run: its logistic over
        # every entry of every cell was 14% of a yolov3-tiny ana; here the objectness comes
        # first and the other entries only for the cells above thresh (the same bits).
        producers = {l.name: _producer(graph, l) for l in heads
                     if darknet_boxes.box_format(graph, l) == "yolo_v3"}
        self.raw_inputs = {head: source for head, source in producers.items() if source}
        self.layer_outputs = [self.raw_inputs.get(l.name, l.name) for l in heads]
        #: head name -> whether its boxes come in image pixels (YOLOv1) rather than relative
        self.pixel_boxes = {l.name: darknet_boxes.boxes_in_pixels(graph, l) for l in heads}
        self.decoder = Graph("darknet", layers=heads, inputs=dict(graph.inputs), source=graph.source)
        if not label_free:  # label files are checked before any image is decoded
            self.truths = [read_boxes(self.data.resolve(label_path(item.written)), self.classes, item)
                           for item in self.items]
        self.feeds = self.decode()
        if label_free:
            self.truths = agreement.reference_truth(self.box_rows(self.run(graph)), truth_thresh) \
                if reference is None else list(_checked_reference(reference, len(self.items)))
            if not any(len(t) for t in self.truths):
                raise ModelError(f"the reference model detects nothing with probability > "
                                 f"{truth_thresh} in the {len(self.items)} images of "
                                 f"{self.items[0].list_file}; agreement is undefined",
                                 file=self.model_file)

    def decode(self) -> FeedStore:
        """Load and letterbox the valid list's images again (also sets ``sizes``)."""
        self.sizes = []

        def images():
            for item in progress(self.items, self.show_progress, "loading images", len(self.items)):
                x, size = detector_input(item, self.net_w, self.net_h, self.channels)
                self.sizes.append(size)
                yield x
        return self._batches(images())

    def reference_state(self):
        return self.truths if self.label_free else None

    def detections(self, results) -> list[list[darknet_boxes.Detection]]:
        """Per image, darknet's detection array after ``do_nms_sort`` (thresh ``self.thresh``)."""
        per_image = []
        for result in results:
            outs = {key.split(":")[0]: value for key, value in result.items()}
            missing = [n for n in self.layer_outputs if n not in outs]
            if missing:
                raise ModelError(f"a result lacks the outputs of {missing} (run with {self.run_args})")
            for j in range(len(next(iter(outs.values())))):
                w, h = self.sizes[len(per_image)]
                dets = self._image_boxes(outs, w, h, j)
                if self.nms:
                    dets = darknet_boxes.do_nms_sort(dets, self.classes, self.nms)
                per_image.append(dets)
        if len(per_image) != len(self.items):
            raise ModelError(f"results cover {len(per_image)} images, the evaluator has {len(self.items)}")
        return per_image

    def _image_boxes(self, outs: dict, w: int, h: int, j: int) -> list[darknet_boxes.Detection]:
        """``get_network_boxes`` of image ``j``: the heads in layer order, a [yolo] head's
        from its raw input (:meth:`__init__`), the others from their outputs."""
        from ..engine import darknet_ops
        dets = []
        _, _, net_h, net_w = self.decoder.inputs["data"]
        for layer in darknet_boxes.head_layers(self.decoder):
            source = self.raw_inputs.get(layer.name)
            if source is None:
                dets += darknet_boxes.head_boxes(self.decoder, layer, np.asarray(outs[layer.name][j], np.float32),
                                                 w, h, self.thresh)
                continue
            out = np.asarray(outs[source][j], np.float32)
            raw = darknet_boxes.yolo_cells(layer, out)
            obj = darknet_ops.yolo_objectness(layer, np.ascontiguousarray(raw[:, :, 4]))
            cell, n = np.nonzero(obj > np.float32(self.thresh))
            v = darknet_ops.yolo_values(layer, raw[cell, n], 1)
            dets += darknet_boxes.yolo_cell_detections(layer, cell, n, v, out.shape[1:], w, h, net_w, net_h,
                                                       self.thresh)
        return dets

    def box_rows(self, results) -> list[np.ndarray]:
        """Per image, rows ``(class, prob, x1, y1, x2, y2)`` in relative units, clipped to the image."""
        rows = []
        for dets, (w, h) in zip(self.detections(results), self.sizes):
            if not dets or len({len(d.prob) for d in dets}) != 1:
                rows.append(self._box_rows_one_by_one(dets, w, h))
                continue
            # the loop's float64 steps on all boxes at once; rows in box, then class order
            xywh = np.array([(d.x, d.y, d.w, d.h) for d in dets], np.float64)
            pixels = np.array([self.pixel_boxes[d.layer] for d in dets])
            xywh[pixels] /= (w, h, w, h)
            x, y, bw, bh = xywh.T
            box = np.clip(np.stack([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], axis=1), 0, 1)
            prob = np.stack([d.prob for d in dets])
            det, cls = np.nonzero(prob)
            rows.append(np.column_stack([cls, prob[det, cls].astype(np.float64), box[det]]).reshape(-1, 6))
        return rows

    def _box_rows_one_by_one(self, dets, w, h) -> np.ndarray:
        image_rows = []
        for d in dets:
            x, y, bw, bh = d.x, d.y, d.w, d.h
            if self.pixel_boxes[d.layer]:
                x, y, bw, bh = x / w, y / h, bw / w, bh / h
            box = np.clip([x - bw / 2, y - bh / 2, x + bw / 2, y + bh / 2], 0, 1)
            image_rows += [(c, float(d.prob[c]), *box) for c in np.nonzero(d.prob)[0]]
        return np.asarray(image_rows, np.float64).reshape(-1, 6)

    def _score(self, results) -> float:
        return voc_map(self.box_rows(results), self.truths, self.classes, self.iou_thresh).mean

    def names(self) -> list[str]:
        """Class names from the .data file's ``names`` (darknet default data/names.list)."""
        return read_names(self.data, ("names",), self.classes)[:self.classes]
