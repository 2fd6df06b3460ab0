"""A tiny SSD training set for the tests: an LMDB of AnnotatedDatum records (PNG-encoded
BGR images with one or two filled squares each, class 1 red, class 2 green, on noise)
and a tiny SSD train_val that reads it through AnnotatedData."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

SIZE = 48  # stored images are SIZE x SIZE; the net resizes them to 32 x 32


def squares(count: int, seed: int = 0):
    """``(images uint8 (H, W, 3) BGR, boxes [(label, xmin, ymin, xmax, ymax)])`` per image."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = rng.integers(0, 60, (SIZE, SIZE, 3), dtype=np.uint8)
        boxes = []
        for k in range(1 + i % 2):
            side = int(rng.integers(12, 24))
            x, y = (int(v) for v in rng.integers(0, SIZE - side, 2))
            label = 1 + (i + k) % 2
            img[y:y + side, x:x + side] = (30, 30, 220) if label == 1 else (30, 200, 30)
            boxes.append((label, x / SIZE, y / SIZE, (x + side) / SIZE, (y + side) / SIZE))
        out.append((img, boxes))
    return out


def write_lmdb(path: Path, items, encoded: bool = True, difficult=()) -> Path:
    """Records ``00000000``, ``00000001``, ... as convert_annoset writes them."""
    import lmdb
    from PIL import Image

    from caffe_surgeon.caffe import caffe_pb2
    env = lmdb.open(str(path), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for i, (img, boxes) in enumerate(items):
            rec = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
            if encoded:
                buf = io.BytesIO()
                Image.fromarray(np.ascontiguousarray(img[:, :, ::-1])).save(buf, format="PNG")
                rec.datum.data, rec.datum.encoded = buf.getvalue(), True
            else:
                rec.datum.channels, rec.datum.height, rec.datum.width = 3, *img.shape[:2]
                rec.datum.data = np.ascontiguousarray(img.transpose(2, 0, 1)).tobytes()
            groups = {}
            for k, (label, x0, y0, x1, y1) in enumerate(boxes):
                if label not in groups:
                    groups[label] = rec.annotation_group.add(group_label=label)
                a = groups[label].annotation.add(instance_id=k)
                a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0, y0, x1, y1
                a.bbox.difficult = (i, k) in difficult
            txn.put(f"{i:08d}".encode(), rec.SerializeToString())
    env.close()
    return path


DATA = """layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: TRAIN }}
  transform_param {{ {transform} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}
  annotated_data_param {{ {samplers} }} }}
"""

AUGMENT = ('mirror: true mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017 '
           'resize_param { prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR } '
           'emit_constraint { emit_type: CENTER } '
           'distort_param { brightness_prob: 0.5 brightness_delta: 32 contrast_prob: 0.5 '
           'contrast_lower: 0.5 contrast_upper: 1.5 hue_prob: 0.5 hue_delta: 18 '
           'saturation_prob: 0.5 saturation_lower: 0.5 saturation_upper: 1.5 } '
           'expand_param { prob: 0.5 max_expand_ratio: 2.0 }')
SAMPLERS = ('batch_sampler { max_sample: 1 max_trials: 1 } '
            'batch_sampler { sampler { min_scale: 0.3 max_scale: 1.0 min_aspect_ratio: 0.5 '
            'max_aspect_ratio: 2.0 } sample_constraint { min_jaccard_overlap: 0.3 } '
            'max_sample: 1 max_trials: 50 }')

#: conv 3->8 /2, conv 8->16 /2 (8 x 8 cells), 4 priors a cell, 3 classes (background 0)
BODY = """layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 8 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "conv2" type: "Convolution" bottom: "conv1" top: "conv2"
  convolution_param { num_output: 16 kernel_size: 3 stride: 2 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "relu2" type: "ReLU" bottom: "conv2" top: "conv2" }
layer { name: "loc" type: "Convolution" bottom: "conv2" top: "loc"
  convolution_param { num_output: 16 kernel_size: 3 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "loc_perm" type: "Permute" bottom: "loc" top: "loc_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "mbox_loc" type: "Flatten" bottom: "loc_perm" top: "mbox_loc"
  flatten_param { axis: 1 } }
layer { name: "conf" type: "Convolution" bottom: "conv2" top: "conf"
  convolution_param { num_output: 12 kernel_size: 3 pad: 1
    weight_filler { type: "xavier" } bias_filler { type: "constant" } } }
layer { name: "conf_perm" type: "Permute" bottom: "conf" top: "conf_perm"
  permute_param { order: 0 order: 2 order: 3 order: 1 } }
layer { name: "mbox_conf" type: "Flatten" bottom: "conf_perm" top: "mbox_conf"
  flatten_param { axis: 1 } }
layer { name: "mbox_priorbox" type: "PriorBox" bottom: "conv2" bottom: "data"
  top: "mbox_priorbox"
  prior_box_param { min_size: 12 max_size: 24 aspect_ratio: 2 flip: true clip: false
    variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2 } }
"""

LOSS = """layer { name: "mbox_loss" type: "MultiBoxLoss"
  bottom: "mbox_loc" bottom: "mbox_conf" bottom: "mbox_priorbox" bottom: "label"
  top: "mbox_loss" include { phase: TRAIN }
  propagate_down: true propagate_down: true propagate_down: false propagate_down: false
  loss_param { normalization: VALID }
  multibox_loss_param { loc_loss_type: SMOOTH_L1 conf_loss_type: SOFTMAX loc_weight: 1.0
    num_classes: 3 share_location: true match_type: PER_PREDICTION overlap_threshold: 0.5
    use_prior_for_matching: true background_label_id: 0 use_difficult_gt: true
    neg_pos_ratio: 3.0 neg_overlap: 0.5 code_type: CENTER_SIZE
    ignore_cross_boundary_bbox: false mining_type: MAX_NEGATIVE } }
"""

DEPLOY_INPUT = ('name: "tinyssd"\ninput: "data"\n'
                'input_shape { dim: 1 dim: 3 dim: 32 dim: 32 }\n')


def train_val(source: str, batch: int = 4, transform: str = AUGMENT,
              samplers: str = SAMPLERS) -> str:
    test_input = ('layer { name: "input" type: "Input" top: "data" include { phase: TEST } '
                  'input_param { shape { dim: 1 dim: 3 dim: 32 dim: 32 } } }\n')
    return ('name: "tinyssd"\n' + DATA.format(transform=transform, source=source, batch=batch,
                                              samplers=samplers)
            + test_input + BODY + LOSS)

TEST_DATA = """layer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"
  include {{ phase: TEST }}
  transform_param {{ mean_value: 104 mean_value: 117 mean_value: 123 scale: 0.017
    resize_param {{ prob: 1 resize_mode: WARP height: 32 width: 32 interp_mode: LINEAR }} }}
  data_param {{ source: "{source}" batch_size: {batch} backend: LMDB }}
  annotated_data_param {{ batch_sampler {{ }} }} }}
"""

DETECT = """layer { name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape"
  include { phase: TEST } reshape_param { shape { dim: 0 dim: -1 dim: 3 } } }
layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax"
  include { phase: TEST } softmax_param { axis: 2 } }
layer { name: "conf_flatten" type: "Flatten" bottom: "conf_softmax" top: "conf_flatten"
  include { phase: TEST } flatten_param { axis: 1 } }
layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc"
  bottom: "conf_flatten" bottom: "mbox_priorbox" top: "detection_out" include { phase: TEST }
  detection_output_param { num_classes: 3 share_location: true background_label_id: 0
    nms_param { nms_threshold: 0.45 top_k: 100 } code_type: CENTER_SIZE keep_top_k: 50
    confidence_threshold: 0.01 } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out"
  bottom: "label" top: "detection_eval" include { phase: TEST }
  detection_evaluate_param { num_classes: 3 background_label_id: 0 overlap_threshold: 0.5
    evaluate_difficult_gt: false } }
"""


def train_val_with_test(train_source: str, test_source: str, batch: int = 4) -> str:
    """``train_val`` whose TEST phase reads ``test_source`` and scores detection mAP."""
    return ('name: "tinyssd"\n' + DATA.format(transform=AUGMENT, source=train_source,
                                              batch=batch, samplers=SAMPLERS)
            + TEST_DATA.format(source=test_source, batch=batch) + BODY + LOSS + DETECT)
