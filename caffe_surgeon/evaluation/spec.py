"""Evaluators from plain data (a spec), so that any process (a worker, a Dask node) can rebuild them.

An evaluator *spec* is a JSON-able dict; :func:`normalize_spec` checks it and
fills the defaults, :func:`build_evaluator` turns it into an
:class:`~caffe_surgeon.evaluation.Evaluator` for a loaded graph and
:func:`load_eval_graph` loads the net that evaluator runs. Kinds and fields
(defaults in brackets):

``{"kind": "caffe", ...}`` - the TEST phase of a train_val prototxt, scored on
its own ``ImageData`` / LMDB ``Data`` layer (:class:`CaffeEvaluator`):

- ``acc_name``: the top blob holding the metric ("top-1", "loss", ...);
  required unless ``label_free``.
- ``test_iter`` [100]: batches per evaluation.
- ``base_dir`` [None = current directory]: what relative paths in the prototxt
  are read from.
- ``label_free`` [false]: score the fraction of positions whose top-1 class
  (argmax over channels) of ``score_blob`` equals the unpruned model's,
  instead of ``acc_name`` (:class:`CaffeAgreementEvaluator`).
- ``ap_version`` [None = "Integral", the SSD solver's default]: how the mAP of a
  ``DetectionEvaluate`` metric is integrated: "11point", "MaxIntegral" or
  "Integral" (:mod:`~caffe_surgeon.detection.ssd_map`).
- ``score_blob`` [None]: the class scores for ``label_free``; by default the
  first bottom of the Accuracy layer writing ``acc_name``, else of the first
  Accuracy layer, else of the first ``*Loss`` layer.
- Detectors (a TEST net with a ``DetectionOutput`` layer, SSD) ``label_free``
  without ``score_blob``: VOC mAP@0.5 of the candidate's detections against
  the unpruned model's above ``truth_thresh`` [.25], matched at IoU above
  ``iou_thresh`` [.5] (:class:`CaffeDetectionAgreementEvaluator`); the two
  fields exist only with ``label_free``.

``{"kind": "darknet-classifier", ...}`` (:class:`DarknetClassifierEvaluator`)
and ``{"kind": "darknet-detector", ...}`` (:class:`DarknetDetectorEvaluator`):

- ``data_file`` (required): the ``.data`` file whose ``valid`` list is evaluated
  (a relative path is taken from the current directory, as darknet does; the
  paths inside it from ``base_dir``).
- ``label_free`` [false]: agreement with the unpruned model instead of labels.
- ``max_images`` [None = all]: evaluate the first images of the list only.
- ``metric``: classifier "top-1" [default], "top-5", ... or "top-k" (the .data
  file's ``top``); detector "mAP@0.5" [default, the only one].
- ``batch_size`` [32 classifier, 8 detector], ``base_dir`` [None].
- detector only: ``thresh`` [.005], ``nms`` [.45], ``truth_thresh`` [.25],
  ``iou_thresh`` [.5] (see :class:`DarknetDetectorEvaluator`).

Every problem with a spec is a :class:`ModelError` naming the field and the
value, raised before any image is decoded.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..detection.ssd_map import AP_VERSIONS
from ..errors import ModelError
from ..graph import Graph
from .base import Evaluator
from .caffe_agreement import CaffeAgreementEvaluator, CaffeDetectionAgreementEvaluator, ssd_heads
from .caffe_eval import CaffeEvaluator
from .darknet_eval import DarknetClassifierEvaluator, DarknetDetectorEvaluator

KINDS = ("caffe", "darknet-classifier", "darknet-detector")
FRAMEWORK_OF = {"caffe": "caffe", "darknet-classifier": "darknet", "darknet-detector": "darknet"}

_COMMON_DARKNET = {"data_file": None, "label_free": False, "max_images": None, "base_dir": None}
DEFAULTS = {
    "caffe": {"acc_name": None, "test_iter": 100, "base_dir": None, "label_free": False,
              "score_blob": None, "truth_thresh": 0.25, "iou_thresh": 0.5, "ap_version": None},
    "darknet-classifier": {**_COMMON_DARKNET, "metric": "top-1", "batch_size": 32},
    "darknet-detector": {**_COMMON_DARKNET, "metric": "mAP@0.5", "batch_size": 8,
                         "thresh": 0.005, "nms": 0.45, "truth_thresh": 0.25, "iou_thresh": 0.5},
}


def _bad(field: str, value, expected: str) -> ModelError:
    return ModelError(f"evaluator spec: field '{field}' must be {expected}, got {value!r}")


def _int(spec, field, minimum, optional=False):
    v = spec[field]
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < minimum:
        raise _bad(field, v, f"an integer >= {minimum}" + (" or null" if optional else ""))
    return int(v)


def _number(spec, field, lo, hi):
    v = spec[field]
    if isinstance(v, bool) or not isinstance(v, (int, float, np.floating, np.integer)) or \
            not math.isfinite(float(v)) or not lo <= float(v) <= hi:
        raise _bad(field, v, f"a number in [{lo}, {hi}]")
    return float(v)


def _bool(spec, field):
    v = spec[field]
    if not isinstance(v, (bool, np.bool_)):
        raise _bad(field, v, "true or false")
    return bool(v)


def _str(spec, field, optional=False):
    v = spec[field]
    if v is None and optional:
        return None
    if not isinstance(v, str) or not v:
        raise _bad(field, v, "a non-empty string" + (" or null" if optional else ""))
    return v


def normalize_spec(spec) -> dict:
    """The spec checked, with every default filled in (plain JSON types only).

    Checks types and ranges, and that ``data_file`` and ``base_dir`` exist;
    never reads a model or an image.
    """
    if not isinstance(spec, dict):
        raise ModelError(f"evaluator spec must be a dict with a 'kind', got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise _bad("kind", kind, " or ".join(repr(k) for k in KINDS))
    defaults = DEFAULTS[kind]
    unknown = sorted(set(spec) - set(defaults) - {"kind"})
    if unknown:
        raise ModelError(f"evaluator spec: unknown field(s) {', '.join(map(repr, unknown))} for "
                         f"kind '{kind}'; accepted: {', '.join(sorted(defaults))}")
    s = {**defaults, **spec}
    out = {"kind": kind}
    out["label_free"] = _bool(s, "label_free")
    out["base_dir"] = _str(s, "base_dir", optional=True)
    if out["base_dir"] is not None and not Path(out["base_dir"]).is_dir():
        raise ModelError(f"evaluator spec: base_dir {out['base_dir']!r} is not a folder")
    if kind == "caffe":
        out["acc_name"] = _str(s, "acc_name", optional=True)
        if out["acc_name"] is None and not out["label_free"]:
            raise ModelError("evaluator spec: field 'acc_name' is required for kind 'caffe' "
                             "(the top blob holding the metric, e.g. \"top-1\"), unless label_free")
        out["test_iter"] = _int(s, "test_iter", 1)
        out["score_blob"] = _str(s, "score_blob", optional=True)
        # Fields added later are kept only when they differ from their defaults, so the
        # analysis files made before them still match the same settings.
        if s["ap_version"] is not None:
            if s["ap_version"] not in AP_VERSIONS:
                raise _bad("ap_version", s["ap_version"], " or ".join(map(repr, AP_VERSIONS)))
            if s["ap_version"] != "Integral":
                out["ap_version"] = s["ap_version"]
        if any(f in spec for f in ("truth_thresh", "iou_thresh")) and not out["label_free"]:
            raise ModelError("evaluator spec: 'truth_thresh' and 'iou_thresh' apply to "
                             "label-free detector evaluation only (label_free: true)")
        for field in ("truth_thresh", "iou_thresh"):
            value = _number(s, field, 0.0, 1.0)
            if value != DEFAULTS["caffe"][field]:
                out[field] = value
        return out
    out["data_file"] = _str(s, "data_file")
    if not Path(out["data_file"]).is_file():
        raise ModelError(f"evaluator spec: data_file {out['data_file']!r} is not a file",
                         file=out["data_file"])
    out["max_images"] = _int(s, "max_images", 1, optional=True)
    out["batch_size"] = _int(s, "batch_size", 1)
    metric = s["metric"]
    if kind == "darknet-classifier":
        ok = isinstance(metric, str) and (metric == "top-k" or (
            metric.startswith("top-") and metric[4:].isdigit() and int(metric[4:]) >= 1))
        if not ok:
            raise _bad("metric", metric, "'top-1', 'top-5', ... or 'top-k'")
        out["metric"] = metric
    else:
        if metric is None or (isinstance(metric, str) and metric.lower() in ("map", "map@0.5")):
            metric = "mAP@0.5"
        if metric != "mAP@0.5":
            raise _bad("metric", metric, "'mAP@0.5' (the detector metric)")
        out["metric"] = metric
        for field in ("thresh", "nms", "truth_thresh", "iou_thresh"):
            out[field] = _number(s, field, 0.0, 1.0)
    return out


def load_eval_graph(framework: str, model_files, spec: dict) -> Graph:
    """The net the evaluator of ``spec`` runs, with weights.

    Caffe: ``[train_val.prototxt, weights.caffemodel]`` read in the TEST phase (the
    phase holding the evaluation data layer and the metric). Darknet:
    ``[net.cfg, net.weights]``.
    """
    from .. import api
    spec = normalize_spec(spec)
    if framework not in ("caffe", "darknet"):
        raise ModelError(f"framework must be 'caffe' or 'darknet', not {framework!r}")
    if FRAMEWORK_OF[spec["kind"]] != framework:
        raise ModelError(f"an evaluator of kind '{spec['kind']}' cannot evaluate a {framework} model")
    files = [str(f) for f in (model_files or [])]
    if len(files) != 2:
        what = "train_val.prototxt and .caffemodel" if framework == "caffe" else ".cfg and .weights"
        raise ModelError(f"model_files must name the {what} files, got {len(files)} file(s): {files}")
    for f in files:
        if not Path(f).is_file():
            raise ModelError("model file not found", file=f)
    if framework == "caffe":
        return api.load(files[0], files[1], phase="TEST")
    return api.load(files[0], files[1])


def build_evaluator(spec: dict, graph: Graph, *, darknet_bn: str = "pjreddie",
                    show_progress: bool = False, reference=None) -> Evaluator:
    """The evaluator ``spec`` describes, for ``graph`` (the unpruned reference model).

    ``reference``: a label-free evaluator's ``reference_state()`` for the same model and
    data, which spares running the reference model again (ana's worker processes).
    """
    spec = normalize_spec(spec)
    if FRAMEWORK_OF[spec["kind"]] != graph.framework:
        raise ModelError(f"an evaluator of kind '{spec['kind']}' cannot evaluate a "
                         f"{graph.framework} model", file=graph.source_text)
    kind = spec["kind"]
    if kind == "caffe":
        if spec["label_free"] and spec["score_blob"] is None and ssd_heads(graph):
            d = DEFAULTS["caffe"]
            return CaffeDetectionAgreementEvaluator(
                graph, spec["test_iter"], spec["base_dir"],
                truth_thresh=spec.get("truth_thresh", d["truth_thresh"]),
                iou_thresh=spec.get("iou_thresh", d["iou_thresh"]), reference=reference)
        if spec["label_free"]:
            return CaffeAgreementEvaluator(graph, spec["test_iter"], spec["base_dir"],
                                           acc_name=spec["acc_name"], score_blob=spec["score_blob"],
                                           reference=reference)
        return CaffeEvaluator(graph, spec["acc_name"], spec["test_iter"], spec["base_dir"],
                              ap_version=spec.get("ap_version") or "Integral")
    common = dict(label_free=spec["label_free"], batch_size=spec["batch_size"],
                  max_images=spec["max_images"], base_dir=spec["base_dir"],
                  darknet_bn=darknet_bn, show_progress=show_progress,
                  reference=reference if spec["label_free"] else None)
    if kind == "darknet-classifier":
        return DarknetClassifierEvaluator(spec["data_file"], graph, metric=spec["metric"], **common)
    return DarknetDetectorEvaluator(spec["data_file"], graph, thresh=spec["thresh"], nms=spec["nms"],
                                    truth_thresh=spec["truth_thresh"],
                                    iou_thresh=spec["iou_thresh"], **common)


def data_digest(evaluator: Evaluator) -> str:
    """sha256 over what the evaluator scores against: its decoded batches and its truth.

    Two evaluators with the same digest feed the same arrays and compare with
    the same labels (or reference outputs, which depend on the model only).
    """
    import hashlib
    h = hashlib.sha256()

    def add(name, arr):
        a = np.ascontiguousarray(arr)
        h.update(f"{name}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())

    for b, feed in enumerate(evaluator.feeds):
        for key in sorted(feed):
            add(f"feed{b}.{key}", feed[key])
    truth = getattr(evaluator, "truth", None)
    if truth is not None:
        add("truth", np.asarray(truth))
    if not getattr(evaluator, "label_free", True):
        for i, t in enumerate(getattr(evaluator, "truths", None) or []):
            add(f"truths{i}", np.asarray(t))
    sizes = getattr(evaluator, "sizes", None)
    if sizes is not None:
        add("sizes", np.asarray(sizes, np.int64))
    k = getattr(evaluator, "k", None)  # Darknet's top-k from the .data file's top=
    if k not in (None, 1):
        add("k", np.asarray(k, np.int64))
    return h.hexdigest()
