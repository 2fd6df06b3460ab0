"""Nothing but the trainer imports torch: with torch blocked, the product imports and runs.

A child process puts a meta-path finder first that raises ImportError for ``torch`` (as if
it were not installed), imports the public API, every CLI module, ``workflow.ana``, the
pruning package and the NumPy engine, runs ``caffe-surgeon stat`` and a forward pass on the
fashion fixture, and checks torch never got in. The trainer itself then fails in one line
that names the extra to install.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import importlib, pkgutil, sys

class BlockTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            raise ImportError(f"import of {name} blocked (torch is not installed here)")
        return None

sys.meta_path.insert(0, BlockTorch())
import caffe_surgeon.api, caffe_surgeon.workflow.ana, caffe_surgeon.pruning, caffe_surgeon.engine
import caffe_surgeon.cli
for info in pkgutil.iter_modules(caffe_surgeon.cli.__path__):
    importlib.import_module(f"caffe_surgeon.cli.{info.name}")
from caffe_surgeon.cli.main import main
import numpy as np
import caffe_surgeon as cs
fashion = "fixtures/fashion/"
try:
    rc = main(["stat", fashion + "fashion_deploy.prototxt"])
except SystemExit as e:
    rc = e.code
assert rc in (0, None), rc
g = cs.load(fashion + "fashion_deploy.prototxt", fashion + "fashion.caffemodel")
prob = caffe_surgeon.engine.Executor(g).run({"data": np.load(fashion + "sample.npy")})["prob"]
assert prob.shape == (4, 10), prob.shape
assert not [m for m in sys.modules if m == "torch" or m.startswith("torch.")]
try:
    import caffe_surgeon.training.module
except ModuleNotFoundError as e:
    assert e.name == "torch" and "caffe-surgeon[finetune]" in str(e), e
else:
    raise AssertionError("the trainer imported without torch")
print("TORCH-FREE OK")
'''


def test_product_imports_and_runs_with_torch_blocked():
    r = subprocess.run([sys.executable, "-c", CHILD], cwd=ROOT, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "TORCH-FREE OK" in r.stdout
