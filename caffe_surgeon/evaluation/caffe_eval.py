"""Evaluate a Caffe TEST net on its own data layer, as Caffe's ``Solver::Test`` does.

The TEST-phase net (``cs.load(train_val, weights, phase="TEST")``) starts with
an ``ImageData`` or LMDB ``Data`` layer. Its records are decoded and
transformed once; batch ``b`` holds records ``(b * batch_size + i) % N``
(Caffe's wrap-around), ``test_iter`` batches in all. The metric is the top blob
``acc_name`` (an Accuracy output or a loss), summed over the batches in float32
and divided by ``test_iter`` - Caffe's ``mean_score``.

The data layer's tops are fed by name (image blob, then label blob), which the
executor hands to the data layer itself; Accuracy and loss layers then run on
the fed labels like any other layer.
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import layers_with_role, spec_for
from .base import Evaluator
from ..detection.ssd_map import (AP_VERSIONS, detection_evaluate, read_name_sizes,
                                  solver_detection_map)
from .caffe_data import AnnotatedLmdbSource, ImageListSource, LmdbSource
from .caffe_transform import Transform, resolver
from .feed_store import FeedStore

F32 = np.float32
_DEPRECATED = ("scale", "mean_file", "crop_size", "mirror")  # V1 data_param fields


class CaffeEvaluator(Evaluator):
    """Feeds and metric of a Caffe TEST net.

    Args:
        graph: the TEST-phase graph (weights optional: only the data layer is read here).
        acc_name: the top blob that holds the metric ("top-1", "accuracy", "loss", ...).
        test_iter: number of test batches (vai_p's config default is 100).
        base_dir: folder that relative paths in the prototxt are taken from
            (default: the current directory, as Caffe does).
    """

    def __init__(self, graph: Graph, acc_name: str, test_iter: int = 100, base_dir=None,
                 ap_version: str = "Integral"):
        super().__init__()
        if ap_version not in AP_VERSIONS:
            raise ModelError(f"ap_version must be one of {', '.join(AP_VERSIONS)}, "
                             f"got {ap_version!r}")
        self.ap_version = ap_version
        if graph.framework != "caffe":
            raise ModelError(f"CaffeEvaluator needs a Caffe graph, not {graph.framework}")
        if int(test_iter) < 1:
            raise ModelError(f"test_iter must be at least 1, got {test_iter}")
        self.net_file = graph.source[0] if graph.source else None
        self.acc_name, self.test_iter = acc_name, int(test_iter)
        self.metric_name = acc_name
        self._check_metric(graph)
        metric_layer = next(l for l in graph.layers if acc_name in l.tops)
        #: how per-batch values combine (None: a plain top, averaged like a metric's)
        self.metric_kind = spec_for("caffe", metric_layer).metric_kind
        layer, self.transform, source, self.batch_size, p = open_data_layer(graph, base_dir)
        self.data_layer, self.tops = layer, list(layer.tops)
        self.outputs = [acc_name]
        self.name_sizes = None  # DetectionEvaluate's name_size_file: (height, width) per image
        if self.metric_kind == "detection_map":
            layer = metric_layer
            dp = layer.params.get("detection_evaluate_param", {})
            if dp.get("name_size_file"):
                self.name_sizes = read_name_sizes(resolver(base_dir)(dp["name_size_file"]))
                self.eval_param = dp
                self.outputs = [acc_name, layer.bottoms[0]]  # re-scored from the detections
        self._note_ignored(p)
        self.source_size = len(source)
        self._note_wrap()
        self.source = source
        self.feeds = self.decode()
        # The data layer's real top shapes (the prototxt alone cannot tell a database's channel
        # count), for infer_shapes / stat on the TEST net.
        self.input_shapes = {top: tuple(a.shape) for top, a in self.feeds[0].items()}

    # ------------------------------------------------------------------ checks
    def _check_metric(self, graph: Graph) -> None:
        produced = [t for layer in graph.layers for t in layer.tops]
        if self.acc_name not in produced:
            scoring = layers_with_role(graph, "metric") + layers_with_role(graph, "loss")
            metric_tops = [t for layer in graph.layers if layer in scoring for t in layer.tops]
            candidates = list(dict.fromkeys(metric_tops + list(graph.outputs)))
            raise ModelError(f"acc_name '{self.acc_name}' is not a top of any layer in the TEST "
                             f"net; candidate tops: {', '.join(candidates) or '(none)'}",
                             file=self.net_file)

    def _note_ignored(self, p: dict) -> None:
        if p.get("shuffle"):
            self.notes.append("shuffle: records are evaluated in file order (Caffe's order is random)")
        if p.get("rand_skip"):
            self.notes.append(f"rand_skip {p['rand_skip']}: no records skipped (Caffe skips a random count)")
        if self.transform.mirror:
            self.notes.append("mirror: images are not mirrored (Caffe mirrors at random, even at TEST)")

    def _note_wrap(self) -> None:
        """Caffe's log says "Restarting data prefetching from start." when its data layer wraps;
        here the evaluation says so once, in the notes."""
        wanted, have = self.test_iter * self.batch_size, self.source_size
        if wanted > have:
            self.notes.append(
                f"test_iter {self.test_iter} x batch_size {self.batch_size} = {wanted} images, but "
                f"data layer '{self.data_layer.name}' has {have}: the evaluation wraps around to "
                f"its first record, as Caffe's data layer does, so {wanted - have} of the images "
                "scored are repeats (set test_iter to at most "
                f"{max(1, have // self.batch_size)} to score each at most once)")

    # ------------------------------------------------------------------ data
    def decode(self) -> FeedStore:
        """Read, decode and transform the records again: the feeds, as Caffe's data layer
        produces them on every test pass. Built batch by batch as the records arrive; a
        wrapped-around record is taken back from its first batch."""
        source, bs = self.source, self.batch_size
        n = min(self.test_iter * bs, len(source))
        self.record_order = [(np.arange(bs) + b * bs) % n for b in range(self.test_iter)]
        annotated = data_format(self.data_layer) == "annotated_db"
        loading = source.iter_load(n)
        try:  # closed on an error too: an LMDB source's read transaction ends with it
            return self._batches(source, loading, n, bs, annotated)
        finally:
            loading.close()

    def _batches(self, source, loading, n: int, bs: int, annotated: bool) -> FeedStore:
        records = enumerate(loading)
        store, labels, current = FeedStore(), [], {}
        for b, idx in enumerate(self.record_order):
            for i in idx:  # record i < n sits in batch i // bs, row i % bs
                if i < len(labels) or i in current:
                    continue
                got = next(records, None)  # the next fresh record is i
                if got is None:
                    raise ModelError(f"the data source ended after {len(labels)} records, "
                                     f"{n} were expected", file=self.net_file,
                                     layer=self.data_layer.name)
                k, (img, label) = got
                self.transform.check(tuple(img.shape), source.describe(k), source.decoded(k))
                current[k] = self.transform(img, source.decoded(k))
                labels.append(label)
            data = [current[i] if i in current else store[i // bs][self.tops[0]][i % bs]
                    for i in idx]
            first = data[0].shape
            for i, x in zip(idx, data):  # Caffe shapes a batch by its first image; the rest must fit
                if x.shape != first:
                    raise ModelError(f"{source.describe(i)} gives {x.shape} (C, H, W) but "
                                     f"{source.describe(idx[0])} in the same batch gives {first}; "
                                     "without crop_size the images of a batch need one size",
                                     file=self.net_file, layer=self.data_layer.name)
            feed = {self.tops[0]: np.stack(data)}
            if len(self.tops) > 1:
                feed[self.tops[1]] = annotation_rows([labels[i] for i in idx]) if annotated \
                    else np.asarray([labels[i] for i in idx], F32)
            store.append(feed)
            current = data = feed = {}  # nothing of this batch stays in memory
        return store

    # ------------------------------------------------------------------ metric
    def _pixel_rows(self, results) -> list[np.ndarray]:
        """DetectionEvaluate with a name_size_file, batch by batch in test order: boxes
        matched in each original image's pixels, the image count running across batches."""
        p, det_blob = self.eval_param, self.outputs[1]
        rows, count = [], 0
        for feed, result in zip(self.feeds, results):
            out, count = detection_evaluate(
                result[det_blob], feed[self.tops[1]], int(p["num_classes"]),
                int(p.get("background_label_id", 0)), float(p.get("overlap_threshold", 0.5)),
                bool(p.get("evaluate_difficult_gt", True)), sizes=self.name_sizes, count=count)
            rows.append(out)
        return rows

    def _score(self, results) -> float:
        if self.metric_kind == "detection_map":  # Solver::TestDetection
            missing = [b for b, r in enumerate(results) if self.acc_name not in r]
            if missing:
                raise ModelError(f"result {missing[0]} has no '{self.acc_name}' blob")
            if self.name_sizes is None:
                return solver_detection_map([r[self.acc_name] for r in results],
                                            self.ap_version)
            return solver_detection_map(self._pixel_rows(results), self.ap_version)
        total = F32(0)
        for b, result in enumerate(results):
            if self.acc_name not in result:
                raise ModelError(f"result {b} has no '{self.acc_name}' blob (run with outputs="
                                 f"{self.outputs})")
            value = np.asarray(result[self.acc_name], F32)
            if value.size != 1:
                raise ModelError(f"acc_name '{self.acc_name}' has {value.size} values "
                                 f"(shape {value.shape}); the metric must be a single number",
                                 file=self.net_file)
            total = F32(total + value.reshape(()))  # Caffe accumulates in Dtype (float)
        return float(F32(total / F32(self.test_iter)))


def open_data_layer(graph: Graph, base_dir=None, training: bool = False, labelled: bool = True):
    """The net's one ImageData / (Annotated)Data layer, opened: ``(layer, transform, source,
    batch_size, params)``, every setting checked before any record is decoded.

    ``training``: a TRAIN-phase layer read for calibration images: its random
    augmentation (SSD's distort/expand/noise, batch samplers, random resize
    interpolation) is left out, so every image comes whole and deterministic."""
    net_file = graph.source[0] if graph.source else None
    layer = _data_layer(graph, net_file)
    params = _upgraded_params(graph, layer)
    resolve = resolver(base_dir)
    tp = dict(params.get("transform_param", {}))
    if training:
        for key in ("distort_param", "expand_param", "noise_param", "emit_constraint"):
            tp.pop(key, None)
        if tp.get("resize_param"):
            r = tp["resize_param"]
            r = dict(r[-1] if isinstance(r, list) else r)
            r.pop("interp_mode", None)  # LINEAR
            r["prob"] = 1.0
            tp["resize_param"] = r
    elif data_format(layer) == "annotated_db":
        crop = [k for k in ("crop_size", "crop_h", "crop_w", "emit_constraint") if tp.get(k)]
        if crop:
            raise ModelError(f"transform_param.{crop[0]} on an AnnotatedData layer is not "
                             "supported for evaluation (its boxes would have to follow the "
                             "crop); resize the whole image instead (resize_param)",
                             file=net_file, layer=layer.name)
    transform = Transform(tp, layer.name, net_file, resolve)
    fmt = data_format(layer)
    p = params.get(spec_for("caffe", layer).data_param, {})
    if fmt == "image_list":
        source = ImageListSource(p, resolve, layer.name, net_file, labelled)
    else:
        kind = AnnotatedLmdbSource if fmt == "annotated_db" else LmdbSource
        source = kind(p, resolve, layer.name, net_file, transform.force_color,
                      transform.force_gray)
        if fmt == "annotated_db" and not training:
            ap = params.get("annotated_data_param", {})
            _check_samplers(ap, layer.name, net_file)
            source.reencode = _samples_whole_image(ap)
    batch_size = int(p.get("batch_size", 1 if fmt == "image_list" else 0))
    if batch_size < 1:
        raise ModelError(f"batch_size is {batch_size}; Caffe needs a positive batch size",
                         file=net_file, layer=layer.name)
    return layer, transform, source, batch_size, p


def _check_samplers(p: dict, layer: str, net_file) -> None:
    """AnnotatedData's batch samplers at TEST: only ones that always sample the whole image."""
    samplers = p.get("batch_sampler", [])
    for b in samplers if isinstance(samplers, list) else [samplers]:
        sampler = b.get("sampler", {})
        ranges = {k: float(sampler.get(k, 1.0)) for k in
                  ("min_scale", "max_scale", "min_aspect_ratio", "max_aspect_ratio")}
        if any(v != 1.0 for v in ranges.values()) or not b.get("use_original_image", True) or \
                b.get("sample_constraint"):
            raise ModelError(f"annotated_data_param.batch_sampler samples random crops "
                             f"({', '.join(f'{k} {v:g}' for k, v in ranges.items())}); a TEST "
                             "net evaluated here must see whole images (batch_sampler {} or none)",
                             file=net_file, layer=layer)


def _samples_whole_image(p: dict) -> bool:
    """Whether a (whole-image) batch sampler yields a sample: ``GenerateSamples`` tries
    ``max_trials`` times (default 100) and stops at ``max_sample`` when that is set."""
    samplers = p.get("batch_sampler", [])
    return any(b.get("use_original_image", True) and int(b.get("max_trials", 100)) > 0
               and int(b.get("max_sample", 1)) > 0
               for b in (samplers if isinstance(samplers, list) else [samplers]))


def read_records(graph: Graph, count: int, base_dir=None) -> tuple[np.ndarray, str]:
    """The first ``count`` records (fewer if the source has fewer) of the net's (TRAIN-phase)
    data layer, whole and transformed as at TEST (no augmentation, centre crop, no mirror):
    ``(images (N, C, H, W), source)``."""
    layer, transform, source, _, _ = open_data_layer(graph, base_dir, training=True)
    images, _ = source.load(min(int(count), len(source)))
    if not images:
        raise ModelError(f"the {layer.type} layer's source has no records",
                         file=graph.source_text, layer=layer.name)
    data = []
    for i, img in enumerate(images):
        transform.check(tuple(img.shape), source.describe(i), source.decoded(i))
        data.append(transform(img, source.decoded(i)))
        if data[-1].shape != data[0].shape:
            raise ModelError(f"{source.describe(i)} gives {data[-1].shape} (C, H, W) but "
                             f"{source.describe(0)} gives {data[0].shape}; without crop_size "
                             "the images need one size", file=graph.source_text, layer=layer.name)
    return np.stack(data), str(getattr(source, "list_file", None) or source.path)


def annotation_rows(boxes: list[np.ndarray]) -> np.ndarray:
    """AnnotatedData's label blob for one batch: rows ``[item, group_label, instance, xmin,
    ymin, xmax, ymax, difficult]``, each box projected on the whole image (clipped to [0, 1],
    dropped when nothing is left), or one row of -1 when the batch has none."""
    rows = []
    for item, b in enumerate(boxes):
        for g, inst, x0, y0, x1, y1, diff in np.asarray(b, F32).reshape(-1, 7):
            if x0 >= 1 or x1 <= 0 or y0 >= 1 or y1 <= 0:
                continue
            c = [min(max(v, F32(0)), F32(1)) for v in (x0, y0, x1, y1)]
            if c[2] <= c[0] or c[3] <= c[1]:
                continue
            rows.append([item, g, inst, *c, diff])
    if not rows:
        return np.full((1, 1, 1, 8), -1, F32)
    return np.asarray(rows, F32).reshape(1, 1, -1, 8)


def data_format(layer) -> str | None:
    """What a data layer reads (``LayerSpec.data_format``); None for one we cannot decode."""
    return spec_for("caffe", layer).data_format


def _data_layer(graph: Graph, net_file):
    sources = [layer for layer in graph.layers if not layer.bottoms and layer.tops]
    usable = [layer for layer in sources if data_format(layer) is not None]
    if len(usable) != 1:
        found = ", ".join(f"{l.name} ({l.type})" for l in sources) or "none"
        what = "no ImageData or Data layer" if not usable else "several data layers"
        raise ModelError(f"the TEST net has {what} to evaluate from (source layers: {found}); "
                         "evaluation reads exactly one ImageData or LMDB Data layer",
                         file=net_file)
    layer = usable[0]
    if len(layer.tops) > 2:
        raise ModelError(f"{layer.type} layer has {len(layer.tops)} tops; expected data and label",
                         file=net_file, layer=layer.name)
    return layer


def _upgraded_params(graph: Graph, layer) -> dict:
    """Layer params with V1 transformation fields moved into transform_param.

    Caffe's ``UpgradeNetDataTransformation`` does this for V1 (``layers {}``) files
    only; in new-style files the deprecated data_param fields are ignored.
    """
    params = dict(layer.params)
    if not getattr(graph.origin, "v1", False):
        return params
    key = spec_for("caffe", layer).data_param
    p = dict(params.get(key, {}))
    moved = {k: p.pop(k) for k in _DEPRECATED if k in p}
    if moved:
        params[key] = p
        params["transform_param"] = {**moved, **params.get("transform_param", {})}
    return params
