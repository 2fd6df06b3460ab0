"""The trained Fashion-MNIST fixture and data the ana tests share (``data_root`` is a
module-scoped fixture: import it into a test module to use it)."""
from __future__ import annotations

from pathlib import Path

import pytest

from assets import fashion_data
from caffe_surgeon.pruning import apply, make_plan
from caffe_surgeon.workflow.ana import AnaJob

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "fashion"
TRAIN_VAL, CAFFEMODEL = FIX / "fashion_train_val.prototxt", FIX / "fashion.caffemodel"
RATIOS = [0.25, 0.5, 0.75]
N = 200


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    fashion_data()
    from tools.make_fashion_data import make_fashion_data
    root = tmp_path_factory.mktemp("ana_fashion")
    make_fashion_data(root, N)
    return root


def caffe_job(root, acc="loss", ratios=RATIOS, files=(TRAIN_VAL, CAFFEMODEL), **spec) -> AnaJob:
    return AnaJob("caffe", [str(f) for f in files],
                  {"kind": "caffe", "acc_name": acc, "test_iter": N // 50, "base_dir": str(root),
                   **spec}, ratios=list(ratios))


def same_metric(got, want) -> bool:
    """ana reuses the original's kept filter outputs, computed with other GEMM shapes than the
    pruned layer's: the same function, so the metric agrees to float rounding."""
    return abs(got - want) <= 1e-6 * max(abs(want), 1e-12)


def from_scratch(graph, evaluator, analysis, gid, ratio, divisor=1):
    """The metric of the pruned model by a plain full forward of every batch."""
    plan = make_plan(analysis, ratios={gid: ratio}, criterion="l1", divisor=divisor)
    return evaluator.evaluate(apply(graph, plan, "dense", fold=True, analysis=analysis))
