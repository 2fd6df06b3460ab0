"""Caffe reader/writer: round trips, V1 upgrade, phase rules, binary decoding against protobuf."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.caffe import caffe_pb2, wire
from caffe_surgeon.caffe.reader import read_caffe
from caffe_surgeon.caffe.writer import render_caffemodel, render_prototxt

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "caffe" / "tinynet_deploy.prototxt"
TINY_W = ROOT / "fixtures" / "caffe" / "tinynet.caffemodel"


def test_unchanged_model_writes_identical_files(tmp_path):
    g = cs.load(TINY, TINY_W)
    cs.save(g, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert (tmp_path / "a.prototxt").read_text() == TINY.read_text()
    assert (tmp_path / "a.caffemodel").read_bytes() == TINY_W.read_bytes()


def test_read_write_read_gives_equal_graph(tmp_path):
    g = cs.load(TINY, TINY_W)
    g.layers[1].params["convolution_param"]["num_output"] = 16  # touched but equal
    cs.save(g, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    g2 = cs.load(tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert g.same_as(g2), g.diff(g2)


def test_changed_layer_is_rendered_and_others_keep_their_text(tmp_path):
    g = cs.load(TINY, TINY_W)
    conv = g.layer("branch1x1")
    conv.params["convolution_param"]["num_output"] = 4
    conv.weights = {"weight": conv.weights["weight"][:4].copy(), "bias": conv.weights["bias"][:4].copy()}
    fc = g.layer("fc")  # its input loses branch1x1's last 4 of 20 channels (8x8 each)
    fc.weights = {"weight": fc.weights["weight"].reshape(10, 20, 64)[:, :16].reshape(10, -1).copy(),
                  "bias": fc.weights["bias"]}
    text = render_prototxt(g)
    assert "num_output: 4" in text
    # The comment block and an untouched one-line layer survive verbatim.
    assert "# A small net with the couplings that matter for pruning:" in text
    assert 'layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }' in text
    cs.save(g, tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    g2 = cs.load(tmp_path / "b.prototxt", tmp_path / "b.caffemodel")
    assert g2.layer("branch1x1").weights["weight"].shape == (4, 16, 1, 1)
    np.testing.assert_array_equal(g2.layer("conv1").weights["weight"], g.layer("conv1").weights["weight"])


def test_caffemodel_decoding_matches_protobuf():
    """Our wire scanner agrees with protobuf's own parser on every blob."""
    data = TINY_W.read_bytes()
    ref = caffe_pb2.NetParameter.FromString(data)
    scanned = wire.scan_net(data)
    assert [r.name for r in scanned.records] == [l.name for l in ref.layer]
    for rec, layer in zip(scanned.records, ref.layer):
        assert len(rec.blobs) == len(layer.blobs)
        for ours, theirs in zip(rec.blobs, layer.blobs):
            assert ours.declared_shape == tuple(theirs.shape.dim)
            np.testing.assert_array_equal(ours.data, np.array(theirs.data, np.float32))


def _v1_model(path: Path) -> dict:
    """A V1 binary caffemodel written by protobuf itself, legacy 4-D blob shapes."""
    rng = np.random.default_rng(3)
    net = caffe_pb2.NetParameter(name="v1net")
    arrays = {}
    for name, kind, shapes in (("conv1", caffe_pb2.V1LayerParameter.CONVOLUTION, [(4, 1, 3, 3), (1, 1, 1, 4)]),
                               ("ip1", caffe_pb2.V1LayerParameter.INNER_PRODUCT, [(1, 1, 5, 4 * 6 * 6), (1, 1, 1, 5)])):
        layer = net.layers.add(name=name, type=kind)
        arrays[name] = []
        for shape in shapes:
            a = rng.standard_normal(shape).astype(np.float32)
            arrays[name].append(a)
            blob = layer.blobs.add(num=shape[0], channels=shape[1], height=shape[2], width=shape[3])
            blob.data.extend(a.ravel().tolist())
    path.write_bytes(net.SerializeToString())
    return arrays


V1_DEF = """name: "v1net"
input: "data"
input_dim: 1 input_dim: 1 input_dim: 8 input_dim: 8
layers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1"
         blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0
         convolution_param { num_output: 4 kernel_size: 3 } }
layers { name: "relu1" type: RELU bottom: "conv1" top: "conv1" }
layers { name: "ip1" type: INNER_PRODUCT bottom: "conv1" top: "ip1"
         inner_product_param { num_output: 5 } }
layers { name: "loss" type: SOFTMAX_LOSS bottom: "ip1" bottom: "label" top: "loss"
         include { phase: TRAIN } }
"""


def test_v1_files_are_upgraded_and_legacy_blobs_reshaped(tmp_path):
    arrays = _v1_model(tmp_path / "v1.caffemodel")
    (tmp_path / "v1.prototxt").write_text(V1_DEF)
    g = cs.load(tmp_path / "v1.prototxt", tmp_path / "v1.caffemodel")
    assert [l.type for l in g.layers] == ["Convolution", "ReLU", "InnerProduct"]
    conv = g.layer("conv1")
    assert conv.params["param"] == [{"lr_mult": 1.0, "decay_mult": 1.0}, {"lr_mult": 2.0, "decay_mult": 0.0}]
    assert conv.weights["weight"].shape == (4, 1, 3, 3)
    assert conv.weights["bias"].shape == (4,)
    assert g.layer("ip1").weights["weight"].shape == (5, 144)
    np.testing.assert_array_equal(g.layer("ip1").weights["weight"], arrays["ip1"][0].reshape(5, 144))
    assert g.inputs == {"data": (1, 1, 8, 8)}
    # Written back in the new format, it reads to the same graph.
    cs.save(g, tmp_path / "new.prototxt", tmp_path / "new.caffemodel")
    text = (tmp_path / "new.prototxt").read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text and "lr_mult: 2" in text
    assert 'type: "SoftmaxWithLoss"' in text  # the TRAIN-only layer is kept, upgraded
    g2 = cs.load(tmp_path / "new.prototxt", tmp_path / "new.caffemodel")
    assert g.same_as(g2), g.diff(g2)
    ref = caffe_pb2.NetParameter.FromString((tmp_path / "new.caffemodel").read_bytes())
    assert [l.name for l in ref.layer] == ["conv1", "ip1"] and not ref.layers


TRAIN_VAL = """name: "tv"
layer { name: "data" type: "Input" top: "data" include { phase: TRAIN }
        input_param { shape { dim: 8 dim: 1 dim: 4 dim: 4 } } }
layer { name: "data" type: "Input" top: "data" include { phase: TEST }
        input_param { shape { dim: 2 dim: 1 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip" inner_product_param { num_output: 3 } }
layer { name: "drop" type: "Dropout" bottom: "ip" top: "ip" exclude { stage: "deploy" } }
layer { name: "acc" type: "Softmax" bottom: "ip" top: "acc" include { phase: TEST min_level: 1 } }
"""


def test_phase_stage_and_level_rules(tmp_path):
    p = tmp_path / "tv.prototxt"
    p.write_text(TRAIN_VAL)
    test = read_caffe(p)
    assert [l.name for l in test.layers] == ["data", "ip", "drop"]
    assert test.layers[0].params["input_param"]["shape"][0]["dim"] == [2, 1, 4, 4]
    train = read_caffe(p, phase="TRAIN")
    assert train.layers[0].params["input_param"]["shape"][0]["dim"] == [8, 1, 4, 4]
    deploy = read_caffe(p, stages=["deploy"], level=1)
    assert [l.name for l in deploy.layers] == ["data", "ip", "acc"]
    # Writing the TEST graph keeps the TRAIN layer, verbatim.
    assert render_prototxt(test) == TRAIN_VAL


def test_duplicate_layer_names_are_made_unique_and_written_back(tmp_path):
    text = TRAIN_VAL.replace('name: "acc"', 'name: "ip"').replace("min_level: 1", "")
    p = tmp_path / "dup.prototxt"
    p.write_text(text)
    g = read_caffe(p)
    assert [l.name for l in g.layers] == ["data", "ip", "drop", "ip_1"]
    assert render_prototxt(g) == text


def test_batchnorm_scale_factor_blob_is_kept_raw(tmp_path):
    g = cs.load(TINY, TINY_W)
    bn = g.layer("bn1")
    assert list(bn.weights) == ["mean", "variance", "scale_factor"]
    assert bn.weights["scale_factor"].shape == (1,) and bn.weights["scale_factor"][0] != 1.0


def test_init_is_deterministic_per_seed(tmp_path):
    a = cs.init(cs.load(TINY), seed=5)
    b = cs.init(cs.load(TINY), seed=5)
    c = cs.init(cs.load(TINY), seed=6)
    assert render_caffemodel(a) == render_caffemodel(b)
    assert render_caffemodel(a) != render_caffemodel(c)


def test_fillers_are_honoured():
    g = cs.load(TINY)
    text = TINY.read_text().replace('weight_filler { type: "msra" }', 'weight_filler { type: "constant" value: 0.5 }')
    p = Path(g.source[0]).parent
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        q = Path(d) / "f.prototxt"
        q.write_text(text)
        g = cs.init(cs.load(q), seed=0)
    assert np.all(g.layer("conv1").weights["weight"] == 0.5)
    assert p.exists()


def test_large_blob_beyond_protobuf_default_limit(tmp_path):
    """A 70 MB single blob (protobuf's old default limit is 64 MB) loads, zero-copy."""
    proto = tmp_path / "big.prototxt"
    proto.write_text('input: "data"\ninput_shape { dim: 1 dim: 4096 }\n'
                     'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
                     'inner_product_param { num_output: 4352 bias_term: false } }\n')
    g = cs.init(cs.load(proto), seed=0)
    cs.save(g, tmp_path / "o.prototxt", tmp_path / "big.caffemodel")
    assert (tmp_path / "big.caffemodel").stat().st_size > 64 * 2**20
    g2 = cs.load(proto, tmp_path / "big.caffemodel")
    w = g2.layer("fc").weights["weight"]
    assert w.shape == (4352, 4096) and not w.flags.owndata
    np.testing.assert_array_equal(w, g.layer("fc").weights["weight"])


def test_xilinx_batchnorm_with_five_blobs(tmp_path):
    """caffe-xilinx BatchNorm stores [scale, bias, mean, variance, counter]."""
    proto = tmp_path / "bn.prototxt"
    proto.write_text('input: "data"\ninput_shape { dim: 1 dim: 6 dim: 4 dim: 4 }\n'
                     'layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" '
                     'param { lr_mult: 1 } param { lr_mult: 1 } param { lr_mult: 0 } param { lr_mult: 0 } }\n')
    g = cs.init(cs.load(proto), seed=0)
    assert list(g.layer("bn").weights) == ["scale", "bias", "mean", "variance", "counter"]
    cs.save(g, tmp_path / "o.prototxt", tmp_path / "bn.caffemodel")
    # The same weights read back under a prototxt without the 4 param specs (as in the
    # vendor's AlexNet-BN train_val) are recognised by their count.
    plain = tmp_path / "plain.prototxt"
    plain.write_text(proto.read_text().split("param {")[0] + "}\n")
    g2 = cs.load(plain, tmp_path / "bn.caffemodel")
    assert list(g2.layer("bn").weights) == ["scale", "bias", "mean", "variance", "counter"]
    np.testing.assert_array_equal(g2.layer("bn").weights["variance"], g.layer("bn").weights["variance"])


def test_pure_python_protobuf_backend_reads_the_same(tmp_path):
    """Weights never go through protobuf, so the slow backend is just as fast and equal."""
    import os
    import subprocess
    import sys
    code = ("import sys, hashlib, caffe_surgeon as cs\n"
            "from google.protobuf.internal import api_implementation as a\n"
            "g = cs.load(sys.argv[1], sys.argv[2])\n"
            "h = hashlib.sha256(b''.join(w.tobytes() for l in g.layers for w in l.weights.values()))\n"
            "print(a.Type(), h.hexdigest(), len(g.layers))\n")
    env = dict(os.environ, PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="python")
    out = subprocess.run([sys.executable, "-c", code, str(TINY), str(TINY_W)], env=env, cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout.split()
    g = cs.load(TINY, TINY_W)
    import hashlib
    h = hashlib.sha256(b"".join(w.tobytes() for l in g.layers for w in l.weights.values())).hexdigest()
    assert out == ["python", h, str(len(g.layers))]


def test_guessed_database_channels_keep_legacy_reshaping_elsewhere(tmp_path):
    """A Data layer with crop_size: its channel count (3) is a guess. The grey conv1 keeps its
    stored shape; the other layers are still shaped from the prototxt, so a legacy
    (1, 1, 1, 144) blob of a one-output InnerProduct becomes (1, 144), not (144,)."""
    rng = np.random.default_rng(4)
    net = caffe_pb2.NetParameter(name="v1db")
    for name, kind, shapes in (("conv1", caffe_pb2.V1LayerParameter.CONVOLUTION, [(4, 1, 3, 3), (1, 1, 1, 4)]),
                               ("ip1", caffe_pb2.V1LayerParameter.INNER_PRODUCT, [(1, 1, 1, 144), (1, 1, 1, 1)])):
        layer = net.layers.add(name=name, type=kind)
        for shape in shapes:
            blob = layer.blobs.add(num=shape[0], channels=shape[1], height=shape[2], width=shape[3])
            blob.data.extend(rng.standard_normal(shape).astype(np.float32).ravel().tolist())
    (tmp_path / "db.caffemodel").write_bytes(net.SerializeToString())
    (tmp_path / "db.prototxt").write_text(
        'name: "v1db"\n'
        'layers { name: "data" type: DATA top: "data" top: "label"\n'
        '         data_param { source: "db" backend: LMDB batch_size: 2 }\n'
        '         transform_param { crop_size: 8 } }\n'
        + V1_DEF.split("\n", 3)[3].replace("num_output: 5", "num_output: 1"))
    g = cs.load(tmp_path / "db.prototxt", tmp_path / "db.caffemodel")
    assert g.layer("conv1").weights["weight"].shape == (4, 1, 3, 3)
    assert g.layer("conv1").weights["bias"].shape == (4,)
    assert g.layer("ip1").weights["weight"].shape == (1, 144)
    out = Executor(g).run({"data": rng.standard_normal((2, 1, 8, 8)).astype(np.float32),
                           "label": np.zeros(2, np.float32)}, outputs=["ip1"])["ip1"]
    assert out.shape == (2, 1)


def test_bytes_that_are_not_utf8_in_comments_round_trip(tmp_path):
    # Chinese model zoos ship prototxts with GBK comments; Caffe's parser skips them
    from caffe_surgeon.errors import ModelError
    src = (ROOT / "fixtures" / "caffe" / "tinynet_deploy.prototxt").read_bytes()
    (tmp_path / "gbk.prototxt").write_bytes("# 卷积网络\n".encode("gbk") + src)
    g = cs.load(tmp_path / "gbk.prototxt")
    cs.save(g, tmp_path / "out.prototxt")
    assert (tmp_path / "out.prototxt").read_bytes() == (tmp_path / "gbk.prototxt").read_bytes()
    (tmp_path / "name.prototxt").write_bytes(src.replace(b'name: "conv1"', 'name: "卷积"'.encode("gbk"), 1))
    with pytest.raises(ModelError, match=r"name.prototxt:\d+:\d+: a quoted value holds bytes that "
                                         r"are not UTF-8"):
        cs.load(tmp_path / "name.prototxt")
