"""Bad inputs get one clear line (file, position, layer, numbers), exit code 2, and no output file."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from caffe_surgeon.cli.main import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "fixtures" / "caffe" / "tinynet_deploy.prototxt"
TINY_W = ROOT / "fixtures" / "caffe" / "tinynet.caffemodel"


def run(capsys, *argv) -> str:
    """Run the CLI; it must fail with exit 2 and exactly one line on stderr, no traceback."""
    rc = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def model(tmp_path):
    shutil.copy(TINY, tmp_path / "m.prototxt")
    shutil.copy(TINY_W, tmp_path / "m.caffemodel")
    return tmp_path / "m.prototxt", tmp_path / "m.caffemodel"


def rewrite_fails(capsys, tmp_path, proto, weights) -> str:
    out_p, out_w = tmp_path / "out" / "o.prototxt", tmp_path / "out" / "o.caffemodel"
    out_p.parent.mkdir()
    msg = run(capsys, "rewrite", proto, weights, "-o", out_p, out_w)
    assert list(out_p.parent.iterdir()) == [], "no output file (not even a temporary one) may remain"
    return msg


def test_truncated_caffemodel(capsys, tmp_path, model):
    proto, weights = model
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    msg = rewrite_fails(capsys, tmp_path, proto, weights)
    assert str(weights) in msg and "truncated" in msg and "byte" in msg
    assert f"only {len(data) // 2 - 1}" not in msg  # the numbers come from the real layout
    assert "bytes but only" in msg


def test_garbage_caffemodel(capsys, tmp_path, model):
    proto, weights = model
    weights.write_bytes(b"\xff" * 64)
    msg = rewrite_fails(capsys, tmp_path, proto, weights)
    assert str(weights) in msg and "corrupt" in msg


def test_prototxt_syntax_error_has_line_and_column(capsys, tmp_path, model):
    proto, weights = model
    lines = proto.read_text().splitlines()
    n = lines.index('  bottom: "data"')
    lines[n] = '  bottom "data"'  # a scalar field without its colon
    proto.write_text("\n".join(lines) + "\n")
    msg = rewrite_fails(capsys, tmp_path, proto, weights)
    assert f"{proto}:{n + 1}:" in msg


def test_unknown_field_is_named_with_its_line(capsys, tmp_path, model):
    proto, weights = model
    text = proto.read_text().replace("pool: MAX kernel_size: 2", "pool: MAX kernel_size: 2 bogus_size: 3")
    proto.write_text(text)
    line = next(i for i, l in enumerate(text.splitlines(), 1) if "bogus_size" in l)
    msg = rewrite_fails(capsys, tmp_path, proto, weights)
    assert "unknown field 'bogus_size'" in msg and f"{proto}:{line}:" in msg
    assert "PoolingParameter" in msg


def test_unknown_layer_type_lists_supported_types(capsys, tmp_path, model):
    proto, _ = model
    proto.write_text(proto.read_text().replace('type: "Softmax"', 'type: "FancySoftmax"'))
    msg = run(capsys, "stat", proto)
    assert "unknown caffe layer type 'FancySoftmax'" in msg and "layer 'prob'" in msg
    assert str(proto) in msg and "Convolution" in msg and "Eltwise" in msg


def test_blob_shape_disagrees_with_prototxt(capsys, tmp_path, model):
    proto, weights = model
    proto.write_text(proto.read_text().replace("num_output: 12", "num_output: 10"))
    msg = rewrite_fails(capsys, tmp_path, proto, weights)
    assert "layer 'branch3x3'" in msg and "(12, 16, 3, 3)" in msg and "(10, 16, 3, 3)" in msg
    assert str(weights) in msg


def test_missing_file(capsys, tmp_path):
    msg = run(capsys, "stat", tmp_path / "nope.prototxt")
    assert "nope.prototxt" in msg and "not found" in msg


def test_caffemodel_given_as_prototxt(capsys, tmp_path, model):
    _, weights = model
    fake = tmp_path / "w.prototxt"
    shutil.copy(weights, fake)
    msg = run(capsys, "stat", fake)
    assert str(fake) in msg


def test_input_shape_argument_is_checked(capsys):
    msg = run(capsys, "stat", TINY, "--input-shape", "data=1,3,x,32")
    assert "data=1,3,x,32" in msg


def test_shape_mismatch_in_a_layer_names_both_shapes(capsys, tmp_path, model):
    proto, _ = model
    proto.write_text(proto.read_text().replace('bottom: "conv1" bottom: "conv2b"', 'bottom: "conv1" bottom: "pool2"'))
    msg = run(capsys, "stat", proto)
    # pool2 comes after res2 in the file, so Caffe order makes this an undefined bottom.
    assert "layer 'res2'" in msg and "pool2" in msg
