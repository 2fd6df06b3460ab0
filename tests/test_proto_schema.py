"""Tests for the merged Caffe schema (proto/caffe.proto -> caffe_pb2).

(a) Every real prototxt in shared/zoo/caffe parses with the merged schema as
    the message its content says it is (net, solver, label map); vai_p_caffe
    configs and Vitis-AI-Library DpuModelParam files are not Caffe messages
    and are skipped.
(b) Targeted checks that fail if the merge is wrong: fields from clashing
    forks coexist, relocated numbers are where README says, fork extensions
    parse, unknown fields are reported by name and line.

shared/ is the folder beside the repository; grpcio-tools is in the test extra.
Without either, the tests that need them skip (fail under CI=true: assets.missing_oracle).
"""
from __future__ import annotations

import importlib.util
import os
import pickle
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2, text_format

from assets import missing_oracle, need_module
from caffe_surgeon.caffe import caffe_pb2

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared"
ZOO = SHARED / "zoo"
CAFFE_ZOO = ZOO / "caffe"
FORK_PROTOS = CAFFE_ZOO / "proto"

def _need_shared() -> None:
    if not CAFFE_ZOO.is_dir():
        missing_oracle(f"shared zoo not found at {CAFFE_ZOO}")


def _parse(text: str, msg_cls=caffe_pb2.NetParameter):
    return text_format.Parse(text, msg_cls())


def _field(msg_cls, name: str):
    return msg_cls.DESCRIPTOR.fields_by_name[name]


# ---------------------------------------------------------------------------
# (a) kind detection by content and parsing of every zoo prototxt
# ---------------------------------------------------------------------------

_TOKEN = re.compile(
    r'"(?:[^"\\\n]|\\.)*"'        # double-quoted string
    r"|'(?:[^'\\\n]|\\.)*'"       # single-quoted string
    r"|#[^\n]*"                   # comment
    r"|[{}<>:\[\],;]"             # punctuation
    r"|[A-Za-z_][\w.]*"           # identifier
    r"|[^\s]"                     # anything else (numbers, signs, ...)
)


def top_level_keys(text: str) -> set[str]:
    """Field names used at depth 0 of a protobuf text-format document."""
    keys: set[str] = set()
    depth = 0
    prev = None
    for m in _TOKEN.finditer(text):
        tok = m.group(0)
        if tok.startswith("#"):
            continue
        if tok in "{<":
            depth += 1
        elif tok in "}>":
            depth -= 1
        elif depth == 0 and (tok[0].isalpha() or tok[0] == "_") and prev != ":":
            keys.add(tok)
        prev = tok
    return keys


_NET_KEYS = {"layer", "layers", "input", "input_shape", "input_dim"}
_SOLVER_KEYS = {"base_lr", "lr_policy", "max_iter", "solver_mode", "solver_type",
                "net", "net_param", "train_net", "train_net_param", "test_net",
                "snapshot_prefix", "test_interval"}
_VAI_P_KEYS = {"workspace", "acc_name", "pruner"}


def classify(text: str) -> str:
    keys = top_level_keys(text)
    if keys & _VAI_P_KEYS:
        return "vai_p_config"        # closed vai_p_caffe message, not Caffe
    if keys & _NET_KEYS:
        return "net"
    if keys & _SOLVER_KEYS:
        return "solver"
    if keys == {"item"}:
        return "labelmap"
    if "model" in keys and re.search(r"\bkernel\s*\{", text):
        return "dpu_model_param"     # Vitis-AI-Library DpuModelParam
    return "unknown"


KIND_TO_MESSAGE = {
    "net": caffe_pb2.NetParameter,
    "solver": caffe_pb2.SolverParameter,
    "labelmap": caffe_pb2.LabelMap,
}
NOT_CAFFE = {"vai_p_config", "dpu_model_param"}


def _zoo_prototxts():
    if not CAFFE_ZOO.is_dir():
        return [pytest.param(None, id="no-shared-zoo")]
    files = sorted(CAFFE_ZOO.rglob("*.prototxt"))
    return [pytest.param(p, id=str(p.relative_to(CAFFE_ZOO))) for p in files]


@pytest.mark.parametrize("path", _zoo_prototxts())
def test_zoo_prototxt_parses(path):
    if path is None:
        missing_oracle(f"shared zoo not found at {CAFFE_ZOO}")
    text = path.read_text(encoding="utf-8", errors="replace")
    kind = classify(text)
    assert kind != "unknown", f"cannot tell what message {path.name} holds"
    if kind in NOT_CAFFE:
        pytest.skip(f"{kind}: not a Caffe message")
    msg_cls = KIND_TO_MESSAGE[kind]
    try:
        msg = text_format.Parse(text, msg_cls())
    except text_format.ParseError as exc:  # pragma: no cover - failure path
        pytest.fail(f"{path.relative_to(CAFFE_ZOO)} ({kind}): {exc}")
    if kind == "net":
        assert len(msg.layer) + len(msg.layers) > 0
    elif kind == "labelmap":
        assert len(msg.item) > 0


def test_zoo_classification_sanity():
    """The content-based classifier sees the kinds the zoo is known to hold."""
    _need_shared()
    kinds = {}
    for p in CAFFE_ZOO.rglob("*.prototxt"):
        kinds.setdefault(classify(p.read_text(encoding="utf-8", errors="replace")), []).append(p.name)
    assert "unknown" not in kinds, kinds.get("unknown")
    assert len(kinds.get("net", [])) >= 10
    assert "lenet_solver.prototxt" in kinds.get("solver", [])
    assert "labelmap_voc.prototxt" in kinds.get("labelmap", [])
    assert "config.prototxt" in kinds.get("vai_p_config", [])
    # V1-format nets are nets too
    assert "caffenet_deploy_V1_layers.prototxt" in kinds["net"]


def test_classifier_on_snippets():
    assert classify('name: "n"\nlayer { name: "a" type: "ReLU" }') == "net"
    assert classify('net: "train.prototxt"  # comment { layer\nbase_lr: 0.01\nsolver_mode: GPU') == "solver"
    assert classify('item { name: "none_of_the_above" label: 0 }') == "labelmap"
    assert classify('workspace: "w"\ngpu: "0"\npruner { method: REGULAR }') == "vai_p_config"
    assert classify('model { name: "yolo" kernel { name: "k" } model_type: YOLOv3 }') == "dpu_model_param"
    assert top_level_keys('a: "x { y" b { c: 1 } d: E') == {"a", "b", "d"}


def test_files_that_failed_every_public_schema_now_parse():
    """upsample_param (darknet2caffe) and detection_output clip (OpenCV)."""
    _need_shared()
    yolo = CAFFE_ZOO / "yolo" / "yolov3-tiny.prototxt"
    face = CAFFE_ZOO / "opencv" / "face_detector_deploy.prototxt"
    for p in (yolo, face):
        if not p.exists():
            missing_oracle(f"{p} not in the zoo")
    net = _parse(yolo.read_text())
    ups = [l for l in net.layer if l.type == "Upsample"]
    assert ups and all(l.upsample_param.scale == 2 for l in ups)
    net = _parse(face.read_text())
    det = [l for l in net.layer if l.type == "DetectionOutput"][0]
    assert det.detection_output_param.clip is True


def test_malformed_mixed_v1_string_type_fails():
    """A real-world defect (googlenet_bn_lim0606_deploy.prototxt, PROTO_NOTES §3, not in the
    zoo): mixing layer {} with a V1 `layers {}` whose enum `type` is a string."""
    text = ('name: "g"\n'
            'layer { name: "conv" type: "Convolution" }\n'
            'layers { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
    with pytest.raises(text_format.ParseError) as info:
        _parse(text)
    assert info.value.GetLine() == 3
    assert "Softmax" in str(info.value)
    # ...while a proper V1 block with the enum parses
    net = _parse('layers { name: "prob" type: SOFTMAX }')
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.SOFTMAX


# ---------------------------------------------------------------------------
# (b) targeted merge checks
# ---------------------------------------------------------------------------

def test_bvlc_and_xilinx_clashing_layer_fields_coexist():
    text = """
    layer { name: "sw"  type: "Swish"        swish_param { beta: 1.5 } }
    layer { name: "cl"  type: "Clip"         clip_param { min: -1 max: 6 } }
    layer { name: "ti"  type: "Tiling"       tiling_param { tile_dim: 2 } }
    layer { name: "sl"  type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 } }
    layer { name: "ro"  type: "Reorg"        reorg_param { stride: 2 } }
    layer { name: "pa"  type: "Parameter"    parameter_param { shape { dim: 3 } } }
    layer { name: "ls"  type: "LSTM"         recurrent_param { num_output: 8 } }
    layer { name: "fx"  type: "FixedNeuron"  fixed_param { bit_width: 8 } }
    layer { name: "rz"  type: "DeephiResize" deephi_resize_param { scale_h: 2 } }
    """
    net = _parse(text)
    assert net.layer[0].swish_param.beta == 1.5
    assert (net.layer[1].clip_param.min, net.layer[1].clip_param.max) == (-1, 6)
    assert net.layer[2].tiling_param.tile_dim == 2
    assert net.layer[3].smooth_l1_loss_param.sigma == 3
    assert net.layer[4].reorg_param.stride == 2
    assert list(net.layer[5].parameter_param.shape.dim) == [3]
    assert net.layer[6].recurrent_param.num_output == 8
    assert net.layer[7].fixed_param.bit_width == 8
    L = caffe_pb2.LayerParameter
    numbers = {n: _field(L, n).number for n in (
        "tiling_param", "smooth_l1_loss_param", "reorg_param", "swish_param",
        "clip_param", "parameter_param", "recurrent_param", "fixed_param",
        "deephi_resize_param", "roi_pooling_param", "upsample_param",
        "interp_param", "psroi_pooling_param")}
    assert numbers == {
        "tiling_param": 147, "smooth_l1_loss_param": 148, "reorg_param": 149,  # Xilinx
        "swish_param": 10147, "clip_param": 10148,                             # BVLC, relocated
        "parameter_param": 145, "recurrent_param": 146,                        # BVLC
        "fixed_param": 1100, "deephi_resize_param": 1202, "roi_pooling_param": 1201,
        "upsample_param": 10149, "interp_param": 10143, "psroi_pooling_param": 10002,
    }
    # the binary round trip keeps both sides of each clash apart
    again = caffe_pb2.NetParameter.FromString(net.SerializeToString())
    assert again == net


def test_pooling_ceil_mode_and_round_mode():
    net = _parse("""
    layer { name: "p1" type: "Pooling" pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false } }
    layer { name: "p2" type: "Pooling" pooling_param { pool: AVE global_pooling: true round_mode: FLOOR } }
    """)
    p1, p2 = net.layer[0].pooling_param, net.layer[1].pooling_param
    assert p1.HasField("ceil_mode") and p1.ceil_mode is False
    assert p2.round_mode == caffe_pb2.PoolingParameter.FLOOR
    assert caffe_pb2.PoolingParameter().ceil_mode is True          # PR #3057 default
    assert caffe_pb2.PoolingParameter().round_mode == caffe_pb2.PoolingParameter.CEIL
    assert _field(caffe_pb2.PoolingParameter, "round_mode").number == 13
    assert _field(caffe_pb2.PoolingParameter, "ceil_mode").number == 10013


def test_unknown_field_reports_name_and_line():
    text = ('name: "n"\n'
            'layer {\n'
            '  name: "pool1" type: "Pooling"\n'
            '  pooling_param { pool: MAX foo: 1 }\n'
            '}\n')
    with pytest.raises(text_format.ParseError) as info:
        _parse(text)
    msg = str(info.value)
    assert '"foo"' in msg and "caffe.PoolingParameter" in msg
    assert info.value.GetLine() == 4
    assert msg.startswith("4:")


def test_unknown_layer_level_field_reports_line():
    with pytest.raises(text_format.ParseError) as info:
        _parse('layer { name: "a" }\nlayer {\n  name: "b"\n  bogus_param { x: 1 }\n}\n')
    assert info.value.GetLine() == 4 and '"bogus_param"' in str(info.value)


def test_solver_fields_from_every_fork():
    text = """
    net: "train_val.prototxt"
    base_lr: 0.01
    lr_policy: "plateau"
    rms_decay: 0.98
    layer_wise_reduce: false            # BVLC 41
    weights: "a.caffemodel"             # BVLC 42
    weights: "b.caffemodel"
    per_parameter_reduce: true          # Xilinx 41
    ap_version: "11point"               # SSD/Xilinx 42
    plateau_winsize: 1000               # SSD 43
    plateau_winsize: 2000
    show_per_class_result: true         # SSD/Xilinx 44
    eval_type: "detection"              # SSD 41 / Xilinx 45
    classiou_class_num: 19              # Xilinx 46
    """
    s = _parse(text, caffe_pb2.SolverParameter)
    assert s.layer_wise_reduce is False and list(s.weights) == ["a.caffemodel", "b.caffemodel"]
    assert s.per_parameter_reduce and s.ap_version == "11point"
    assert list(s.plateau_winsize) == [1000, 2000] and s.eval_type == "detection"
    S = caffe_pb2.SolverParameter
    assert {n: _field(S, n).number for n in (
        "per_parameter_reduce", "ap_version", "plateau_winsize", "show_per_class_result",
        "eval_type", "classiou_class_num", "layer_wise_reduce", "weights")} == {
        "per_parameter_reduce": 41, "ap_version": 42, "plateau_winsize": 43,
        "show_per_class_result": 44, "eval_type": 45, "classiou_class_num": 46,
        "layer_wise_reduce": 10041, "weights": 10042}
    assert caffe_pb2.SolverParameter().rms_decay == pytest.approx(0.99)


def test_solver_state_ssd_fields():
    st = _parse("iter: 10 minimum_loss: 0.5 iter_last_event: 7", caffe_pb2.SolverState)
    assert (st.minimum_loss, st.iter_last_event) == (0.5, 7)
    assert _field(caffe_pb2.SolverState, "minimum_loss").number == 5
    assert _field(caffe_pb2.SolverState, "iter_last_event").number == 6


def test_transformation_param_ssd_and_xilinx_names():
    net = _parse("""
    layer { name: "data" type: "AnnotatedData"
      transform_param {
        mirror: true use_gpu_transform: false use_letterbox_resize: true
        resize_param { prob: 1 resize_mode: WARP height: 300 width: 300 interp_mode: LINEAR }
        noise_param { prob: 0.1 }
        emit_constraint { emit_type: CENTER }
        distort_param { brightness_prob: 0.5 }
        expand_param { prob: 0.5 max_expand_ratio: 4 }
      }
      annotated_data_param { label_map_file: "labelmap.prototxt" batch_sampler { max_sample: 1 } }
    }""")
    tp = net.layer[0].transform_param
    assert tp.resize_param.height == 300 and tp.emit_constraint.emit_type == caffe_pb2.EmitConstraint.CENTER
    T = caffe_pb2.TransformationParameter
    # Xilinx numbering wins where SSD used 8/9/10 for other fields
    assert [_field(T, n).number for n in ("use_gpu_transform", "resize_param", "noise_param",
                                          "emit_constraint")] == [8, 9, 10, 15]


def test_ssd_layers_parse():
    net = _parse("""
    layer { name: "n" type: "Normalize" norm_param { across_spatial: false channel_shared: false scale_filler { type: "constant" value: 20 } } }
    layer { name: "pm" type: "Permute" permute_param { order: 0 order: 2 order: 3 order: 1 } }
    layer { name: "pb" type: "PriorBox" prior_box_param { min_size: 30 max_size: 60 aspect_ratio: 2 flip: true clip: false variance: 0.1 step: 8 offset: 0.5 } }
    layer { name: "do" type: "DetectionOutput" detection_output_param { num_classes: 21 nms_param { nms_threshold: 0.45 top_k: 400 } code_type: CENTER_SIZE keep_top_k: 200 confidence_threshold: 0.01 visualize: false } }
    layer { name: "ml" type: "MultiBoxLoss" multibox_loss_param { loc_loss_type: SMOOTH_L1 match_type: PER_PREDICTION mining_type: MAX_NEGATIVE } }
    """)
    assert net.layer[4].multibox_loss_param.mining_type == caffe_pb2.MultiBoxLossParameter.MAX_NEGATIVE


def test_fork_extensions_parse():
    net = _parse("""
    layer { name: "up"  type: "Upsample" upsample_param { scale: 2 } }
    layer { name: "up2" type: "Upsample" upsample_param { scale_h: 2 scale_w: 3 pad_out_h: true pad_out_w: false upsample_h: 38 upsample_w: 50 } }
    layer { name: "ip"  type: "Interp" interp_param { height: 60 width: 60 zoom_factor: 8 shrink_factor: 1 pad_beg: 0 pad_end: 0 } }
    layer { name: "ps"  type: "PSROIPooling" psroi_pooling_param { spatial_scale: 0.0625 output_dim: 21 group_size: 7 } }
    layer { name: "rp"  type: "ROIPooling" roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.0625 } }
    layer { name: "do"  type: "DetectionOutput" detection_output_param { num_classes: 2 clip: 1 normalized_bbox: false visualize: true } }
    layer { name: "pb"  type: "PriorBox" prior_box_param { width: 10 width: 20 height: 30 height: 40 offset_h: 0.5 offset_w: 0.5 step: 16 } }
    layer { name: "bn"  type: "BatchNorm" batch_norm_param { use_global_stats: true scale_bias: true scale_filler { value: 1 } bias_filler { value: 0 } } }
    layer { name: "dr"  type: "Dropout" dropout_param { dropout_ratio: 0.5 scale_train: false } }
    layer { name: "pr"  type: "Proposal" proposal_param { feat_stride: 16 base_size: 16 ratio: 0.5 ratio: 1 scale: 8 nms_thresh: 0.7 } }
    layer { name: "px"  type: "Proposal" proposal_param { stride_h: 16 stride_w: 16 nms_iou_th: 0.7 anchor { left: -8 top: -8 right: 8 bottom: 8 } } }
    layer { name: "mi"  type: "Mish" }
    layer { name: "dw"  type: "ConvolutionDepthwise" convolution_param { num_output: 32 group: 32 kernel_size: 3 } }
    """)
    L = {l.name: l for l in net.layer}
    assert L["up"].upsample_param.scale == 2 and L["up2"].upsample_param.upsample_w == 50
    assert L["ip"].interp_param.zoom_factor == 8
    assert L["ps"].psroi_pooling_param.group_size == 7
    do = L["do"].detection_output_param
    assert do.clip is True and do.normalized_bbox is False and do.visualize is True
    assert list(L["pb"].prior_box_param.width) == [10, 20]
    assert L["bn"].batch_norm_param.scale_bias is True
    assert L["dr"].dropout_param.scale_train is False
    assert list(L["pr"].proposal_param.ratio) == [0.5, 1]
    assert L["px"].proposal_param.anchor[0].right == 8
    # `required` relaxed to `optional`: a fork file lacking them still serializes
    assert L["pr"].proposal_param.IsInitialized()
    caffe_pb2.NetParameter.FromString(net.SerializeToString())
    # the OpenCV field that clashed with SSD `visualize` (10) was relocated
    D = caffe_pb2.DetectionOutputParameter
    assert (_field(D, "visualize").number, _field(D, "normalized_bbox").number,
            _field(D, "clip").number) == (10, 10010, 20001)


def test_zf_faster_rcnn_dropout_scale_train():
    """The ZF faster-rcnn file failed every schema because of scale_train."""
    text = """
    name: "ZF"
    input: "data" input_shape { dim: 1 dim: 3 dim: 224 dim: 224 }
    input: "im_info" input_shape { dim: 1 dim: 3 }
    layer { name: "roi_pool_conv5" type: "ROIPooling" bottom: "conv5" bottom: "rois" top: "roi_pool_conv5"
            roi_pooling_param { pooled_w: 6 pooled_h: 6 spatial_scale: 0.0625 } }
    layer { name: "fc6" type: "InnerProduct" bottom: "roi_pool_conv5" top: "fc6" inner_product_param { num_output: 4096 } }
    layer { name: "drop6" type: "Dropout" bottom: "fc6" top: "fc6" dropout_param { dropout_ratio: 0.5 scale_train: false } }
    """
    net = _parse(text)
    assert net.layer[2].dropout_param.scale_train is False
    _need_shared()
    for p in ZOO.rglob("*faster_rcnn*ZF*.prototxt"):
        _parse(p.read_text(encoding="utf-8", errors="replace"))


def test_labelmap_and_annotated_messages():
    lm = _parse('item { name: "none_of_the_above" label: 0 display_name: "background" }\n'
                'item { name: "aeroplane" label: 1 display_name: "aeroplane" }', caffe_pb2.LabelMap)
    assert [i.label for i in lm.item] == [0, 1]


def test_v1_format_and_blobproto_fields():
    net = _parse("""
    layers { name: "conv1" type: CONVOLUTION blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
             convolution_param { num_output: 96 kernel_size: 11 stride: 4 } }
    layers { name: "rs" deephi_reisze_param { scale_h: 2 } }
    """)
    assert net.layers[0].type == caffe_pb2.V1LayerParameter.CONVOLUTION
    assert list(net.layers[0].blobs_lr) == [1, 2]
    assert net.layers[1].deephi_reisze_param.scale_h == 2  # caffe-xilinx typo kept
    B = caffe_pb2.BlobProto
    # core BlobProto numbers are the same in every fork (binary reader relies on it)
    assert {f.name: f.number for f in B.DESCRIPTOR.fields}.items() >= {
        "num": 1, "channels": 2, "height": 3, "width": 4, "data": 5, "diff": 6,
        "shape": 7, "double_data": 8, "double_diff": 9}.items()
    assert _field(B, "mask").number == 10  # caffe-xilinx


# ---------------------------------------------------------------------------
# schema-level checks against the three fork schemas (need grpcio-tools)
# ---------------------------------------------------------------------------

def _compile(proto: Path) -> descriptor_pb2.FileDescriptorProto:
    need_module("grpc_tools")
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out.desc"
        res = subprocess.run(
            [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={proto.parent}",
             f"--descriptor_set_out={out}", str(proto)],
            capture_output=True, text=True)
        assert res.returncode == 0, res.stderr
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return fds.file[0]


def _index(fdp: descriptor_pb2.FileDescriptorProto):
    fields, enums = {}, {}

    def walk(msgs, prefix):
        for m in msgs:
            name = prefix + m.name
            fields[name] = {f.name: f for f in m.field}
            for e in m.enum_type:
                enums[name + "." + e.name] = {v.name: v.number for v in e.value}
            walk(m.nested_type, name + ".")
    walk(fdp.message_type, "")
    for e in fdp.enum_type:
        enums[e.name] = {v.name: v.number for v in e.value}
    return fields, enums


# (fork, message, field) -> merged number, for every field whose number moved.
EXPECTED_RENUMBERING = {
    ("bvlc", "SolverParameter", "layer_wise_reduce"): 10041,
    ("bvlc", "SolverParameter", "weights"): 10042,
    ("bvlc", "LayerParameter", "swish_param"): 10147,
    ("bvlc", "LayerParameter", "clip_param"): 10148,
    ("ssd", "SolverParameter", "eval_type"): 45,
    ("ssd", "TransformationParameter", "resize_param"): 9,
    ("ssd", "TransformationParameter", "noise_param"): 10,
    ("ssd", "TransformationParameter", "emit_constraint"): 15,
}
FORKS = {"bvlc": "bvlc_caffe.proto", "ssd": "ssd_weiliu89_caffe.proto",
         "xilinx": "xilinx_caffe.proto"}


def test_merged_schema_is_a_name_superset_of_every_fork():
    _need_shared()
    merged_fields, merged_enums = _index(_compile(REPO / "proto" / "caffe.proto"))
    moved = {}
    for fork, fname in FORKS.items():
        fields, enums = _index(_compile(FORK_PROTOS / fname))
        for msg, fmap in fields.items():
            assert msg in merged_fields, f"{fork}: message {msg} missing"
            for name, f in fmap.items():
                g = merged_fields[msg].get(name)
                assert g is not None, f"{fork}: {msg}.{name} missing"
                assert (f.type, f.type_name) == (g.type, g.type_name), f"{fork}: {msg}.{name} type"
                assert f.label == g.label or (f.label, g.label) == (
                    f.LABEL_REQUIRED, f.LABEL_OPTIONAL), f"{fork}: {msg}.{name} label"
                if f.number != g.number:
                    moved[(fork, msg, name)] = g.number
        for enum, values in enums.items():
            assert enum in merged_enums, f"{fork}: enum {enum} missing"
            for v, num in values.items():
                assert merged_enums[enum].get(v) == num, f"{fork}: {enum}.{v}"
    assert moved == EXPECTED_RENUMBERING


def test_every_xilinx_number_is_kept():
    """The base schema's binary layout is untouched (merge rule 1)."""
    _need_shared()
    merged, _ = _index(_compile(REPO / "proto" / "caffe.proto"))
    xil, _ = _index(_compile(FORK_PROTOS / FORKS["xilinx"]))
    for msg, fmap in xil.items():
        for name, f in fmap.items():
            assert merged[msg][name].number == f.number, (msg, name)


def test_generated_module_is_up_to_date():
    need_module("grpc_tools")
    spec = importlib.util.spec_from_file_location("gen_proto", REPO / "tools" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    fresh = gen.render_module(gen.compile_descriptor())
    current = (REPO / "caffe_surgeon" / "caffe" / "caffe_pb2.py").read_text(encoding="utf-8")
    assert fresh == current, "caffe_pb2.py is stale: run python tools/gen_proto.py"


# ---------------------------------------------------------------------------
# the generated module itself
# ---------------------------------------------------------------------------

def test_module_api_like_protoc_output():
    assert caffe_pb2.DESCRIPTOR.package == "caffe"
    assert caffe_pb2.DESCRIPTOR.name == "caffe.proto"
    assert (caffe_pb2.TRAIN, caffe_pb2.TEST) == (0, 1)
    assert caffe_pb2.Phase.Name(1) == "TEST"
    assert caffe_pb2.V1LayerParameter.CONVOLUTION == 4
    assert caffe_pb2.ProposalParameter.Anchor(left=1).left == 1
    net = _parse('name: "n" layer { name: "a" type: "ReLU" }')
    assert pickle.loads(pickle.dumps(net)) == net
    assert type(net).__module__ == caffe_pb2.__name__


def test_lenet_caffemodel_decodes():
    _need_shared()
    path = CAFFE_ZOO / "weights" / "lenet_iter_10000.caffemodel"
    if not path.exists():
        missing_oracle("lenet caffemodel not in the zoo")
    net = caffe_pb2.NetParameter.FromString(path.read_bytes())
    blobs = {l.name: [list(b.shape.dim) for b in l.blobs] for l in net.layer if l.blobs}
    assert blobs["conv1"] == [[20, 1, 5, 5], [20]]
    assert blobs["ip1"] == [[500, 800], [500]]


def test_private_pool_tolerates_another_caffe_proto():
    """Importing caffe_pb2 after some other caffe.proto was loaded still works."""
    code = r"""
from google.protobuf import descriptor_pb2, descriptor_pool
fdp = descriptor_pb2.FileDescriptorProto(name="caffe.proto", package="caffe")
m = fdp.message_type.add(name="NetParameter")
m.field.add(name="other", number=1, type=9, label=1)
descriptor_pool.Default().Add(fdp) if hasattr(descriptor_pool.Default(), "Add") else \
    descriptor_pool.Default().AddSerializedFile(fdp.SerializeToString())
from caffe_surgeon.caffe import caffe_pb2
from google.protobuf import text_format
n = text_format.Parse('name: "x" layer { name: "a" }', caffe_pb2.NetParameter())
print("OK", n.layer[0].name)
"""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(REPO), env=env)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "OK a"
