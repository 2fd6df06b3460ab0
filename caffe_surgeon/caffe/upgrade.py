"""Upgrade of V1 (``layers { type: CONVOLUTION }``) definitions, as Caffe's upgrade_proto does.

Only the layer records change form: the enum type becomes its type string,
``blobs_lr`` / ``weight_decay`` / ``param`` names / ``blob_share_mode`` become
``param { lr_mult decay_mult name share_mode }``; the ``*_param`` messages have
the same names and types in both forms and are copied unchanged.
"""
from __future__ import annotations

from ..errors import ModelError

V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

_MOVED = {"blobs_lr": "lr_mult", "weight_decay": "decay_mult", "param": "name",
          "blob_share_mode": "share_mode"}
_DROPPED = {"blobs"}  # weights come from the caffemodel, never from a definition


def upgrade_v1_layer(v1: dict, where: str = "") -> dict:
    """A V1LayerParameter dict -> LayerParameter dict."""
    if "layer" in v1:
        raise ModelError(f"{where}V0 layer definitions (layers {{ layer {{ ... }} }}) are not supported; "
                         "upgrade the file with Caffe's upgrade_net_proto_text first")
    out: dict = {}
    type_name = v1.get("type", "NONE")
    if isinstance(type_name, int) or type_name not in V1_TYPES:
        raise ModelError(f"{where}V1 layer type {type_name!r} has no modern equivalent")
    for key in ("name", "bottom", "top"):
        if key in v1:
            out[key] = v1[key]
    out["type"] = V1_TYPES[type_name]
    params: list[dict] = []
    for key, target in _MOVED.items():
        for i, value in enumerate(v1.get(key, [])):
            while len(params) <= i:
                params.append({})
            params[i][target] = value
    if params:
        out["param"] = params
    for key, value in v1.items():
        if key in ("name", "bottom", "top", "type") or key in _MOVED or key in _DROPPED:
            continue
        out[key] = value
    return out
