"""What a layer is for, beyond computing its output: the closed vocabularies of LayerSpec.

Evaluation, the engine, pruning and the readers ask a layer's spec these
questions instead of matching type names, so a new layer type declares its
roles once, on its spec, and every caller follows. ``register`` rejects a
value outside these vocabularies, so a typo is an error at import time, not a
silently "blocked" or ignored layer.
"""
from __future__ import annotations

#: ``LayerSpec.roles``: what the layer does in a net besides its forward function.
ROLES = {
    # Its tops come from outside the net (a database, an image list, the caller).
    "data_source": "tops fed from outside the net",
    # A score from outputs and labels, never trained through (Accuracy, DetectionEvaluate).
    "metric": "a score computed from outputs and labels",
    # A training objective; Caffe gives one without a top an automatic top.
    "loss": "a training objective",
    # Takes bottoms and gives no top (Caffe's Silence).
    "no_top": "consumes its bottoms and has no top",
    # Its output holds detections; ``box_format`` says how to read them.
    "detector_head": "its output holds detections",
    # The engine may run the per-channel layers after it inside its output pass.
    "fusion_head": "can absorb per-channel followers into its output pass",
    # Siblings (layers reading one value with the same geometry, each with its own weights)
    # may run as one layer, their weights stacked along the outputs: SSD's loc/conf heads.
    "stackable": "siblings on one input may run as one layer, weights stacked",
    # A per-channel affine map or clamp that can run inside the previous layer's pass.
    "fusion_follower": "can run inside the previous layer's output pass",
    # Normalises each channel by stored statistics at test time (BatchNorm): an affine map
    # ``channel_affine`` gives, which ``edit.fold_bn`` folds into the linear layer before it.
    "normalizer": "normalises each channel by stored statistics at test time",
    # Scales and/or shifts each channel by learned values (Scale, Bias): ``channel_affine``
    # gives the map; fold-bn takes it with the normalizer it follows, merge joins runs of them.
    "affine": "scales and/or shifts each channel by learned values",
    # Maps each value on its own by a fixed function: what ``edit.replace_activation`` swaps.
    "pointwise": "maps each value on its own by a fixed function (an activation)",
    # Passes its input through at test time (Dropout): deployment does not run it.
    "test_identity": "passes its input through unchanged at test time",
}

#: ``LayerSpec.box_format``: how a detector head's output encodes boxes.
BOX_FORMATS = {
    "yolo_v3": "darknet [yolo] (YOLOv3 on): anchors per mask, relative to the letterboxed input",
    "yolo_v2": "darknet [region] (YOLOv2): anchors in grid cells, relative boxes",
    "yolo_v1": "darknet [detection] (YOLOv1): one grid, boxes already in image pixels",
    "ssd": "SSD DetectionOutput rows (image, label, score, xmin, ymin, xmax, ymax), relative",
}

#: ``LayerSpec.data_format``: what a data source reads, for the evaluators that decode it.
DATA_FORMATS = {
    "image_list": "a text file of 'path label' lines (ImageData)",
    "datum_db": "an LMDB/LevelDB of Datum records (Data)",
    "annotated_db": "an LMDB of AnnotatedDatum records with boxes (AnnotatedData)",
}

#: ``LayerSpec.metric_kind``: how a metric layer's per-batch values combine into one score.
METRIC_KINDS = {
    "mean": "the mean of the per-batch values (Caffe's Solver::Test)",
    "detection_map": "mean AP over the per-batch detection rows (Solver::TestDetection)",
}


def check(name: str, value, vocabulary: dict, where: str) -> None:
    """Raise if ``value`` (a string or a collection of them) is not in ``vocabulary``."""
    values = [value] if isinstance(value, str) or value is None else list(value)
    bad = [v for v in values if v is not None and v not in vocabulary]
    if bad:
        raise ValueError(f"{where}: unknown {name} {bad[0]!r} (known: {', '.join(vocabulary)})")
