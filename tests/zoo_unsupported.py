"""The zoo cases caffe-surgeon does not support, each with its reason.

The slow sweeps consult this list: a sweep's own ``ModelError`` on a case is a
failure unless the case is listed here (then it is skipped with the reason).
``tools/oracle_sweep.py`` renders both dicts into ``docs/zoo_support.md``.
Keys are paths relative to ``shared/zoo``.
"""
from __future__ import annotations

import pytest

#: Definitions caffe-surgeon cannot read or size (``load`` / shape inference refuses them).
UNSUPPORTED = {
    "caffe/yolo/yolov3-tiny.prototxt":
        "darknet2caffe output that BVLC Caffe itself rejects: darknet's size-2 stride-1 maxpool "
        "keeps 13x13, Caffe's Pooling (ceil((13-2)/1)+1) gives 12x12, so the route Concat sees "
        "24x24 vs 26x26 (BVLC concat_layer.cpp fails with '24 vs. 26'; caffe-yolov3 splits the "
        "net or patches pooling_layer.cpp, ChenYingpeng/caffe-yolov3#29, #31)",
    "caffe/bvlc/mnist_autoencoder.prototxt":
        "its data layers are TRAIN, or TEST with stage 'test-on-train'/'test-on-test'; TEST "
        "without a stage has no data layer, and Caffe's Net::Init fails the same way "
        "(read with stages=['test-on-test'] and MNIST's 1x28x28 input, all 19 layers infer)",
    "caffe/mobilenet_ssd/MobileNetSSD_train.prototxt":
        "a TRAIN-only net: its AnnotatedData layer is TRAIN-phase, so TEST phase has no 'data' "
        "(Caffe fails the same way; read it with phase='TRAIN')",
    "caffe/bvlc/hdf5_nonlinear_auto_train.prototxt":
        "HDF5Data takes its shape from the HDF5 files it lists; nothing in the prototxt says it",
    "caffe/segmentation/voc-fcn32s_val.prototxt":
        "its data layer is a Python layer (voc_layers.py); only its code knows the shape",
}

#: Definitions that load, but that the forward engine (and so pruning's checks) cannot run.
NOT_RUNNABLE = {
    "caffe/bvlc/mnist_siamese_train_test.prototxt":
        "its loss is a ContrastiveLoss, a training-only layer the forward engine does not implement",
}


def unsupported_or_raise(case: str, err: BaseException, listed=None) -> None:
    """Skip ``case`` with its listed reason, or re-raise ``err`` (the sweep fails)."""
    listed = {**UNSUPPORTED, **NOT_RUNNABLE} if listed is None else listed
    if case not in listed:
        raise err
    pytest.skip(f"unsupported ({listed[case]}): {err}")
