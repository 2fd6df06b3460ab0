"""Every layer type with a spec has, in every backend, a forward or a stated refusal.

A backend is a module whose ``tables()`` returns ``(implemented, refused)``: dicts
keyed by ``(framework, type)``, the second giving a one-line reason. Today only the
NumPy engine; the torch trainer and the ONNX/Caffe converters join with one line.
"""
from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

from assets import missing_oracle
from caffe_surgeon.layers.registry import REGISTRY, supported_types

BACKENDS = [
    "caffe_surgeon.engine.ops",  # the NumPy engine
    "caffe_surgeon.training.torch_ops",  # the torch trainer (finetune)
    "caffe_surgeon.convert.darknet_caffe_ops",  # Darknet -> Caffe conversion (darknet only)
    "caffe_surgeon.convert.onnx_table",  # the ONNX exporter (convert --to onnx)
]
FRAMEWORKS = ("caffe", "darknet")
#: backends that serve only some frameworks (a converter reads one source format)
ONLY = {"caffe_surgeon.convert.darknet_caffe_ops": ("darknet",)}


def _tables(backend):
    try:
        module = importlib.import_module(backend)
    except ModuleNotFoundError as e:  # an optional backend's engine (torch) is not installed
        if e.name and not e.name.startswith("caffe_surgeon"):
            missing_oracle(f"backend {backend} needs {e.name}, which is not installed")
        raise
    return module.tables()


@pytest.mark.parametrize("backend,framework", [(b, f) for b in BACKENDS
                                                for f in ONLY.get(b, FRAMEWORKS)])
def test_every_type_has_a_forward_or_a_stated_refusal(backend, framework):
    implemented, refused = _tables(backend)
    types = supported_types(framework)
    neither = [t for t in types if (framework, t) not in implemented and (framework, t) not in refused]
    both = [t for t in types if (framework, t) in implemented and (framework, t) in refused]
    assert not neither, f"{backend}: {framework} types with neither a forward nor a refusal: {neither}"
    assert not both, f"{backend}: {framework} types both implemented and refused: {both}"
    stray = sorted(t for f, t in [*implemented, *refused] if f == framework and (f, t) not in REGISTRY)
    assert not stray, f"{backend}: entries for {framework} types without a spec: {stray}"
    for t in types:
        why = refused.get((framework, t))
        assert why is None or (why.strip() and "\n" not in why), (t, why)


def test_a_type_cannot_be_both_implemented_and_refused():
    from caffe_surgeon.engine import ops
    ops.tables()
    with pytest.raises(RuntimeError, match="registered twice"):
        ops.refuse("caffe", "Convolution", reason="test")
    with pytest.raises(RuntimeError, match="registered twice"):
        ops.op("darknet", "rnn")(lambda layer, inputs, ctx: [])
    assert ("caffe", "Convolution") not in ops.REFUSED


def test_refused_layer_is_a_one_line_error_naming_layer_type_and_reason():
    from caffe_surgeon.engine.ops import op_for
    from caffe_surgeon.errors import ModelError
    from caffe_surgeon.graph import Layer
    with pytest.raises(ModelError) as e:
        op_for("caffe", Layer("mbox_loss", "MultiBoxLoss", ["a"], ["l"], {}))
    msg = str(e.value)
    assert "\n" not in msg and "mbox_loss" in msg and "MultiBoxLoss" in msg and "trainer (finetune)" in msg


def test_numpy_engine_runs_the_caffe_types_real_nets_use():
    """The seven fork types that had shape rules and no forward now run; only losses are refused."""
    implemented, refused = _tables("caffe_surgeon.engine.ops")
    for t in ("Interp", "DeephiResize", "Reorg", "Tile", "MVN", "GELU", "HardSigmoid"):
        assert ("caffe", t) in implemented
    assert all(t.endswith("Loss") for f, t in refused if f == "caffe")


def test_stat_path_imports_neither_numba_nor_torch():
    code = ("import sys, caffe_surgeon as cs\n"
            "from caffe_surgeon.layers import registry\n"
            "from caffe_surgeon import opcount\n"
            "registry.supported_types('caffe')\n"
            "g = cs.Graph('caffe', name='t', layers=[cs.Layer('c', 'Convolution', ['x'], ['y'], "
            "{'convolution_param': {'num_output': 4, 'kernel_size': [3]}})], inputs={'x': (1, 3, 8, 8)})\n"
            "cs.stat(g)\n"
            "bad = [m for m in ('numba', 'torch', 'caffe_surgeon.engine') if m in sys.modules]\n"
            "assert not bad, bad\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
