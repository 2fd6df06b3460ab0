"""Label-free Caffe evaluation: agreement with the unpruned model instead of labels.

:class:`CaffeAgreementEvaluator` scores the fraction of positions whose top-1 class
equals the reference's; :class:`CaffeDetectionAgreementEvaluator` scores an SSD
detector's boxes against the reference's confident ones (VOC mAP@0.5).
"""
from __future__ import annotations

import numpy as np

from ..errors import ModelError
from ..graph import Graph
from ..layers.registry import layers_with_role, spec_for
from . import agreement
from .caffe_eval import CaffeEvaluator
from .voc_map import voc_map


class CaffeAgreementEvaluator(CaffeEvaluator):
    """Label-free Caffe metric: how often the top-1 class is the unpruned model's.

    Feeds come from the TEST net's data layer as for :class:`CaffeEvaluator`
    (its labels are read but not used). The score is the fraction of positions
    - images, or pixels for dense outputs - where the argmax over channels of
    ``score_blob`` equals the reference's (``graph`` as given, run once here).
    """

    def __init__(self, graph: Graph, test_iter: int = 100, base_dir=None, *, acc_name=None,
                 score_blob=None, reference=None):
        blob = score_blob or _score_blob(graph, acc_name)
        super().__init__(graph, blob, test_iter, base_dir)
        self.score_blob = blob
        self.label_free = True
        self.metric_name = "top-1 agreement"
        if reference is not None and len(reference) != len(self.feeds):
            raise ModelError(f"the given reference covers {len(reference)} batches, the "
                             f"evaluation has {len(self.feeds)}", file=self.net_file)
        self.reference = [self._top1(r) for r in self.run(graph)] if reference is None \
            else list(reference)

    def reference_state(self):
        return self.reference

    def _top1(self, result) -> np.ndarray:
        value = np.asarray(result[self.score_blob])
        if value.ndim < 2:
            raise ModelError(f"score_blob '{self.score_blob}' has shape {value.shape}; label-free "
                             "scoring needs (N, classes, ...)", file=self.net_file)
        return np.argmax(value, axis=1)

    def _score(self, results) -> float:
        hits = total = 0
        for ref, result in zip(self.reference, results):
            top1 = self._top1(result)
            if top1.shape != ref.shape:
                raise ModelError(f"score_blob '{self.score_blob}' has shape {top1.shape} "
                                 f"positions, the reference {ref.shape}")
            hits += int(np.count_nonzero(top1 == ref))
            total += ref.size
        return hits / total if total else 0.0


class CaffeDetectionAgreementEvaluator(CaffeEvaluator):
    """Label-free Caffe detector metric (SSD): VOC mAP@0.5 of the candidate's detections
    scored against the unpruned model's confident ones.

    Feeds come from the TEST net's data layer as for :class:`CaffeEvaluator`. The
    ``DetectionOutput`` layer's rows ``(image, label, confidence, xmin, ymin, xmax,
    ymax)`` of each batch position form that position's detections (a position fed
    twice by Caffe's wrap-around counts twice, on both sides). The reference's rows
    with confidence above ``truth_thresh`` are the truth; the candidate's rows, at the
    layer's own ``confidence_threshold``, are ranked against them
    (:mod:`~caffe_surgeon.evaluation.agreement`): the reference scores exactly 1.
    """

    def __init__(self, graph: Graph, test_iter: int = 100, base_dir=None, *,
                 truth_thresh: float = 0.25, iou_thresh: float = 0.5, reference=None):
        heads = ssd_heads(graph)
        if len(heads) != 1:
            raise ModelError(f"label-free detector evaluation needs one DetectionOutput layer, "
                             f"the TEST net has {len(heads)}", file=graph.source_text)
        head = heads[0]
        super().__init__(graph, head.tops[0], test_iter, base_dir)
        self.label_free = True
        self.metric_name = "mAP@0.5 agreement"
        self.truth_thresh, self.iou_thresh = float(truth_thresh), float(iou_thresh)
        p = head.params.get("detection_output_param", {})
        if "num_classes" not in p:
            raise ModelError("DetectionOutput has no num_classes", file=graph.source_text,
                             layer=head.name)
        self.classes = int(p["num_classes"])
        if reference is None:
            self.truths = agreement.reference_truth(self.box_rows(self.run(graph)), truth_thresh)
        else:
            self.truths = [np.asarray(t, np.float64).reshape(-1, 5) for t in reference]
            if len(self.truths) != self.test_iter * self.batch_size:
                raise ModelError(f"the given reference covers {len(self.truths)} images, the "
                                 f"evaluation has {self.test_iter * self.batch_size}",
                                 file=self.net_file)
        if not any(len(t) for t in self.truths):
            raise ModelError(f"the reference model detects nothing with confidence > "
                             f"{truth_thresh} in the {len(self.truths)} images of the TEST data "
                             f"layer '{self.data_layer.name}'; agreement is undefined",
                             file=self.net_file)

    def reference_state(self):
        return self.truths

    def box_rows(self, results) -> list[np.ndarray]:
        """Per batch position, rows ``(label, confidence, xmin, ymin, xmax, ymax)``."""
        rows = []
        for b, result in enumerate(results):
            out = np.asarray(result[self.acc_name], np.float64)
            if out.ndim != 4 or out.shape[-1] != 7:
                raise ModelError(f"DetectionOutput '{self.acc_name}' has shape {out.shape}; "
                                 "expected (1, 1, K, 7)", file=self.net_file)
            out = out.reshape(-1, 7)
            image = out[:, 0]
            for i in range(self.batch_size):
                rows.append(out[image == i][:, 1:])  # Caffe's "no detection" row has image -1
        return rows

    def _score(self, results) -> float:
        return voc_map(self.box_rows(results), self.truths, self.classes, self.iou_thresh).mean


def ssd_heads(graph: Graph) -> list:
    """The TEST net's layers that output decoded SSD detection rows (DetectionOutput)."""
    return [l for l in layers_with_role(graph, "detector_head")
            if spec_for(graph.framework, l).box_format == "ssd"]


def _score_blob(graph: Graph, acc_name) -> str:
    """The class scores: the first bottom of the named (else the first) classification
    metric (Accuracy), else of the first loss."""
    classifying = [l for l in layers_with_role(graph, "metric")
                   if spec_for(graph.framework, l).metric_kind == "mean"]
    if acc_name:
        for l in classifying:
            if acc_name in l.tops and l.bottoms:
                return l.bottoms[0]
    for candidates in (classifying, layers_with_role(graph, "loss")):
        for l in candidates:
            if l.bottoms:
                return l.bottoms[0]
    raise ModelError("label-free Caffe evaluation needs the class scores: the TEST net has no "
                     "Accuracy or *Loss layer to take them from; set 'score_blob' in the "
                     "evaluator spec", file=graph.source_text)
