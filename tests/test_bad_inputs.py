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


NET_HEAD = 'name: "n"\ninput: "data"\ninput_shape { dim: 1 dim: 3 dim: 8 dim: 8 }\n'


@pytest.mark.parametrize("layers, words", [
    ('layer { name: "c" type: "Convolution" top: "c" convolution_param { num_output: 4 '
     'kernel_size: 3 } }', ["layer 'c'", "Convolution cannot work out its output from 0 bottom(s)"]),
    ('layer { name: "p" type: "Pooling" top: "p" pooling_param { kernel_size: 2 } }',
     ["layer 'p'", "0 bottom(s)"]),
    ('layer { name: "r" type: "ReLU" bottom: "data" }', ["layer 'r'", "ReLU has no top"]),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 4 kernel_size: 3 stride: 0 } }', ["layer 'c'", "ZeroDivisionError"]),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 4 kernel_size: 3 group: 0 } }', ["layer 'c'"]),
    ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { '
     'num_output: 3000000000 kernel_size: 3 } }', ["layer 'c'", "over 2147483647"]),
])
@pytest.mark.parametrize("command", ["stat", "groups"])
def test_missing_bottoms_tops_zero_and_huge_parameters_are_named(capsys, tmp_path, layers, words,
                                                                 command):
    (tmp_path / "n.prototxt").write_text(NET_HEAD + layers + "\n")
    msg = run(capsys, command, tmp_path / "n.prototxt")
    assert all(w in msg for w in words), msg


def test_darknet_values_too_large_for_an_integer(capsys, tmp_path):
    body = "[net]\nwidth={w}\nheight=32\nchannels=3\n\n[convolutional]\nfilters=4\nsize={s}\n" \
           "stride=1\npad=1\nactivation=leaky\n"
    (tmp_path / "a.cfg").write_text(body.format(w="1e400", s=3))
    assert "[net] width=inf is not a finite number" in run(capsys, "stat", tmp_path / "a.cfg")
    (tmp_path / "b.cfg").write_text(body.format(w=32, s="1e400"))
    msg = run(capsys, "stat", tmp_path / "b.cfg")
    assert "layer 'convolutional_0'" in msg and "OverflowError" in msg


def test_plan_keep_must_be_channel_indices(capsys, tmp_path, model):
    import json
    proto, weights = model
    assert main(["prune", str(proto), str(weights), "--ratio", "0.5", "-o", str(tmp_path / "p")]) == 0
    plan = json.loads((tmp_path / "p" / "plan.json").read_text())
    for bad in (None, 3, ["a"], [0.5, 1], [True, False]):
        plan["groups"][0]["keep"] = bad
        (tmp_path / "bad.json").write_text(json.dumps(plan))
        msg = run(capsys, "prune", proto, weights, "--plan", tmp_path / "bad.json", "-o", tmp_path / "q")
        assert "keep must be a list of channel indices (integers)" in msg, msg
        assert not (tmp_path / "q").exists() or not any((tmp_path / "q").iterdir())


def test_outputs_never_overwrite_inputs_and_arguments_are_checked(capsys, tmp_path, model):
    proto, weights = model
    before = weights.read_bytes()
    x = tmp_path / "x.npy"
    import numpy as np
    np.save(x, np.zeros((1, 3, 32, 32), np.float32))
    assert "would overwrite the input" in run(capsys, "forward", proto, weights, "--input", x,
                                              "--output", weights)
    assert "would overwrite the input" in run(capsys, "forward", proto, weights, "--input", x,
                                              "--output", x)
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    assert "holds <U1 values" in run(capsys, "forward", proto, weights, "--input", tmp_path / "s.npy")
    (tmp_path / "folder.caffemodel").mkdir()
    assert "is a folder" in run(capsys, "rewrite", proto, weights, "-o", tmp_path / "ok.prototxt",
                                tmp_path / "folder.caffemodel")
    assert not (tmp_path / "ok.prototxt").exists()  # nothing half-written
    assert weights.read_bytes() == before
    for argv, words in [(["init", proto, "-o", tmp_path / "s.caffemodel", "--seed", "-1"],
                         "expected an integer >= 0"),
                        (["forward", proto, weights, "--input", x, "--mean", "a,b"],
                         "expected numbers separated by commas")]:
        with pytest.raises(SystemExit) as e:  # argparse: usage line, exit 2
            main([str(a) for a in argv])
        assert e.value.code == 2 and words in capsys.readouterr().err


def test_save_refuses_weights_the_prototxt_would_not_load(tmp_path, model):
    import caffe_surgeon as cs
    from caffe_surgeon.errors import ModelError
    g = cs.load(*model)
    g.layer("conv1").weights["weight"] = g.layer("conv1").weights["weight"][:3]
    with pytest.raises(ModelError, match=r"layer 'conv1': weights 'weight' have shape \(3, 3, 3, 3\) "
                                         r"but the prototxt implies \(16, 3, 3, 3\)"):
        cs.save(g, tmp_path / "a.prototxt", tmp_path / "a.caffemodel")
    assert not (tmp_path / "a.prototxt").exists() and not (tmp_path / "a.caffemodel").exists()


def test_vai_p_caffe_transform_names_darknet_files(capsys):
    from caffe_surgeon.cli.vai_p_caffe import main as vai_main
    fix = ROOT / "fixtures" / "fashion"
    assert vai_main(["transform", "-model", str(fix / "fashion.cfg"), "-weights",
                     str(fix / "fashion.weights"), "-output", "unused.caffemodel"]) == 2
    err = capsys.readouterr().err
    assert "takes a Caffe prototxt and caffemodel, not darknet files" in err and "fashion.cfg" in err


def test_input_shape_must_name_an_input_and_calib_count_be_positive(capsys, model):
    proto, weights = model
    msg = run(capsys, "stat", proto, "--input-shape", "foo=1,3,32,32")
    assert "names foo, which the net does not take as input; its inputs: data" in msg
    with pytest.raises(SystemExit) as e:
        main(["prune", str(proto), str(weights), "--ratio", "0.5", "--calib-count", "-1",
              "-o", "unused"])
    assert e.value.code == 2 and "expected an integer >= 1, got '-1'" in capsys.readouterr().err


def test_prune_refuses_a_plan_json_folder_before_writing(capsys, tmp_path, model):
    proto, weights = model
    (tmp_path / "p" / "plan.json").mkdir(parents=True)
    assert "is a folder" in run(capsys, "prune", proto, weights, "--ratio", "0.5", "-o", tmp_path / "p")
    assert [f.name for f in (tmp_path / "p").iterdir()] == ["plan.json"]


def test_darknet_stat_reads_the_weights_it_is_given(capsys, tmp_path):
    from caffe_surgeon.cli.vai_p_darknet import main as darknet_main
    fix = ROOT / "fixtures" / "fashion"
    (tmp_path / "short.weights").write_bytes((fix / "fashion.weights").read_bytes()[:1000])
    assert darknet_main(["pruner", "stat", str(fix / "fashion.cfg"), str(tmp_path / "short.weights")]) == 2
    assert "weights file ends inside layer" in capsys.readouterr().err


def test_a_loss_layer_without_a_top_is_legal(capsys, tmp_path):
    # Caffe gives loss layers an automatic top (zoo: bvlc pascal_finetune_trainval_test)
    (tmp_path / "n.prototxt").write_text(
        NET_HEAD + 'input: "label"\ninput_shape { dim: 1 }\n'
        'layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc" '
        'inner_product_param { num_output: 3 } }\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" }\n')
    assert main(["stat", str(tmp_path / "n.prototxt")]) == 0
    assert capsys.readouterr().err == ""
