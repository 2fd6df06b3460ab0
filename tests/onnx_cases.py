"""The ONNX export sweep's cases and what it accepts besides agreement (read by the slow
sweep in tests/test_convert_onnx.py and by tools/onnx_sweep.py, which renders them into
docs/zoo_support.md)."""
from __future__ import annotations

from pathlib import Path

from assets import DARKNET_SHARE
from zoo_unsupported import UNSUPPORTED

ZOO = Path(__file__).resolve().parents[2] / "shared" / "zoo"

#: Models whose export ONNX cannot express, with the reason (the exporter's own refusal
#: must name it; any other refusal fails the sweep). Keys: zoo-relative or debian:NAME.
ONNX_REFUSED = {
    "debian:darknet9000.cfg": "softmax with tree= (YOLO9000's hierarchical softmax): the engine "
                              "has no forward for it, so there is nothing to export",
    "debian:yolo9000.cfg": "region with tree= (YOLO9000's softmax tree over data/9k.tree): the "
                           "engine has no forward for it",
    "darknet/pjreddie/yolo9000.cfg": "region with tree= (YOLO9000's softmax tree over "
                                     "data/9k.tree): the engine has no forward for it",
    "debian:rnn.cfg": "[rnn] carries its hidden state from one call to the next; a stateless "
                      "ONNX graph cannot",
    "debian:rnn.train.cfg": "[rnn] carries its hidden state from one call to the next; a "
                            "stateless ONNX graph cannot",
    "debian:gru.cfg": "[gru] carries its hidden state from one call to the next; a stateless "
                      "ONNX graph cannot",
}

#: Models whose final output is too ill-conditioned under init weights for a 1e-4 relative
#: comparison; their outputs' inputs (logits) are compared instead, and why.
ILL_CONDITIONED = {
    "caffe/segmentation/enet_deploy.prototxt":
        "with init weights its score logits reach 1.2e6, where float32 rounding (1e-7 "
        "relative) moves the softmax probabilities by 6e-2; the logits (ConvNd_91) are compared",
}


def zoo_cases() -> list[str]:
    """Every Caffe NetParameter definition of the zoo (relative to shared/zoo), every Darknet
    cfg of the zoo, and the Debian darknet cfgs (``debian:NAME``)."""
    import oracle_caffe as oc
    cases = []
    if (ZOO / "caffe").is_dir():
        cases += [p.relative_to(ZOO).as_posix() for p in oc.zoo_caffe_definitions(ZOO / "caffe")]
    if (ZOO / "darknet").is_dir():
        cases += [p.relative_to(ZOO).as_posix() for p in sorted((ZOO / "darknet").rglob("*.cfg"))]
    if (DARKNET_SHARE / "cfg").is_dir():
        cases += [f"debian:{p.name}" for p in sorted((DARKNET_SHARE / "cfg").glob("*.cfg"))]
    return cases


def case_path(case: str) -> Path:
    if case.startswith("debian:"):
        return DARKNET_SHARE / "cfg" / case.split(":", 1)[1]
    return ZOO / case


def skipped(case: str) -> str | None:
    """Why a case is not exported at all (it does not load or size), or None."""
    return UNSUPPORTED.get(case)
