"""Layer-type knowledge lives on the specs and in the backend tables, nowhere else.

A type name in quotes in any other module means a switch on types outside the
registry: the next layer type would then need a hunt through the code.
"""
from __future__ import annotations

import io
import re
import tokenize
from fnmatch import fnmatch
from pathlib import Path

import pytest

from caffe_surgeon.layers import registry
from caffe_surgeon.layers.roles import BOX_FORMATS, DATA_FORMATS, METRIC_KINDS, ROLES

PACKAGE = Path(__file__).resolve().parents[1] / "caffe_surgeon"

#: where type names belong: the specs, and each backend's table modules (the NumPy engine's
#: forwards, refusals, fused stages and Darknet activation defaults; the torch backend's)
HOMES = ("layers/*", "engine/*_ops.py", "engine/ops.py", "engine/caffe_refused.py",
         "engine/caffe_epilogues.py", "engine/darknet_activations.py", "training/torch_*.py",
         "convert/darknet_caffe_ops.py", "convert/onnx_*.py")
#: (module, string): quoted text that is a type name only by coincidence, and why
KEPT = {
    # V1 files name types by enum; the upgrade maps each enum to its type name (format data).
    **{("caffe/upgrade.py", t): "V1 enum -> type" for t in registry.specs("caffe")},
    # The cfg grammar's section names and their aliases (what the text may say).
    **{("darknet/cfg.py", t): "section names of the cfg grammar" for t in registry.specs("darknet")},
    # The vendor summary's row label, not the layer type.
    ("workflow/report.py", "Accuracy"): "vendor summary row label",
}


def _strings(path: Path):
    for tok in tokenize.generate_tokens(io.StringIO(path.read_text(encoding="utf-8")).readline):
        if tok.type == tokenize.STRING and not tok.string.startswith(('"""', "'''", 'f', 'r"""')):
            m = re.fullmatch(r"[rb]?(['\"])(.*)\1", tok.string, re.S)
            if m:
                yield tok.start[0], m.group(2)


def type_switches(root: Path) -> list[str]:
    """``file:line: 'Type'`` for every quoted type name outside the homes under ``root``."""
    types = set(registry.specs("caffe")) | set(registry.specs("darknet"))
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if any(fnmatch(rel, home) for home in HOMES) or rel.endswith("_pb2.py"):
            continue
        for line, text in _strings(path):
            if text in types and (rel, text) not in KEPT:
                found.append(f"{rel}:{line}: {text!r}")
    return found


def test_no_module_outside_the_registry_and_backends_names_a_layer_type():
    found = type_switches(PACKAGE)
    assert not found, "type switches outside the registry:\n" + "\n".join(found)


def test_the_guard_sees_a_type_switch(tmp_path):
    """A test of the test: a planted switch is reported; the same text in a home is not."""
    (tmp_path / "pruning").mkdir()
    (tmp_path / "pruning" / "planted.py").write_text('def f(l):\n    return l.type == "Eltwise"\n')
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "caffe_ops.py").write_text('X = "Eltwise"\n')
    assert type_switches(tmp_path) == ["pruning/planted.py:2: 'Eltwise'"]


@pytest.mark.parametrize("framework", ["caffe", "darknet"])
def test_every_spec_declares_known_roles(framework):
    for name, spec in registry.specs(framework).items():
        assert spec.roles <= set(ROLES), name
        assert spec.box_format in (None, *BOX_FORMATS), name
        assert spec.data_format in (None, *DATA_FORMATS), name
        assert spec.metric_kind in (None, *METRIC_KINDS), name


def test_a_misspelt_role_is_an_error_at_registration():
    class Bad(registry.LayerSpec):
        framework, types, roles = "caffe", ("NotAType",), frozenset({"detecter_head"})

    with pytest.raises(ValueError, match="unknown role 'detecter_head'"):
        registry.register(Bad)

    class BadFlow(registry.LayerSpec):
        framework, types, channel_role = "caffe", ("NotAType",), "blocker"

    with pytest.raises(ValueError, match="channel_role 'blocker' is not a ChannelFlow kind"):
        registry.register(BadFlow)
    assert ("caffe", "NotAType") not in registry.REGISTRY


def test_roles_answer_what_the_callers_ask():
    caffe, darknet = registry.specs("caffe"), registry.specs("darknet")
    assert {t for t, s in caffe.items() if s.data_format} == {"ImageData", "Data", "AnnotatedData"}
    assert {t for t, s in darknet.items() if "detector_head" in s.roles} == \
        {"yolo", "region", "detection"}
    assert caffe["DetectionOutput"].box_format == "ssd"
    assert caffe["DetectionEvaluate"].metric_kind == "detection_map"
    assert caffe["Accuracy"].metric_kind == "mean"
    assert all("loss" in s.roles for t, s in caffe.items() if t.endswith("Loss"))
    assert caffe["Silence"].may_lack_top and caffe["SoftmaxWithLoss"].may_lack_top
    assert not caffe["ReLU"].may_lack_top
    assert caffe["InnerProduct"].bias_switch == ("inner_product_param", "bias_term")
    assert caffe["Deconvolution"].bias_switch == ("convolution_param", "bias_term")
    assert darknet["route"].link_key == "layers" and darknet["route"].links_replace_previous
    assert darknet["shortcut"].link_key == "from" and not darknet["shortcut"].links_replace_previous
    assert darknet["local"].default_activation == "logistic"
    assert darknet["maxpool"].default_activation == "linear"


def test_fusion_followers_and_the_engines_fused_stages_agree():
    from caffe_surgeon.engine import caffe_epilogues

    followers = set(registry.specs("caffe", "fusion_follower"))
    assert followers == set(caffe_epilogues.STAGES)
    assert set(caffe_epilogues.FITS) <= followers


def test_stackable_specs_say_what_siblings_must_share():
    from caffe_surgeon.layers.registry import LayerSpec

    stackable = registry.specs("caffe", "stackable")
    assert set(stackable) == {"Convolution", "ConvolutionFixed"}
    assert all(type(s).stack_key is not LayerSpec.stack_key for s in stackable.values())
    assert not registry.specs("darknet", "stackable")
