"""Each I/O package imports on its own, in a fresh interpreter (an import cycle fails here).

A cycle between two packages can hide behind function-level imports or behind
the order in which a test session happens to import things; a fresh process
that imports one module first shows it.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

ALONE = [
    "caffe_surgeon.darknet", "caffe_surgeon.darknet.cfg", "caffe_surgeon.darknet.weights",
    "caffe_surgeon.darknet.reader", "caffe_surgeon.darknet.writer", "darknet_io",
    "caffe_surgeon.caffe", "caffe_surgeon.caffe.reader", "caffe_surgeon.caffe.writer",
    "caffe_surgeon.workflow.config", "caffe_surgeon.workflow",
]


def _run(code: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("module", ALONE)
def test_module_imports_alone_in_a_fresh_interpreter(module):
    res = _run(f"import {module}")
    assert res.returncode == 0, res.stderr


def test_the_darknet_package_does_not_import_its_public_face():
    res = _run("import sys\n"
               "import caffe_surgeon.darknet.cfg, caffe_surgeon.darknet.weights\n"
               "import caffe_surgeon.darknet.reader, caffe_surgeon.darknet.writer\n"
               "import caffe_surgeon, caffe_surgeon.workflow\n"
               "print(sorted(m for m in sys.modules if m.split('.')[0] == 'darknet_io'))")
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "[]"


def test_the_public_face_is_the_package_itself():
    import darknet_io
    from caffe_surgeon.darknet import reader, writer

    assert darknet_io.read_darknet is reader.read_darknet
    assert darknet_io.write_darknet is writer.write_darknet
    assert darknet_io.weight_layouts is reader.weight_layouts
    assert not hasattr(darknet_io, "init_darknet_weights")  # cs.init is the one initialiser
