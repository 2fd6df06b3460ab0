"""The finetune commands before the torch backend is plugged in: one-line errors, the
solver file finetune writes, the TRAIN-net checks, the fixture's solver."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.training.finetune import check_train_net, solver_text_for

FASHION = Path(__file__).resolve().parents[1] / "fixtures/fashion"


def test_without_the_backend_finetune_is_one_line_naming_what_is_missing(tmp_path, capsys, monkeypatch):
    from caffe_surgeon.cli.main import main
    monkeypatch.setitem(sys.modules, "caffe_surgeon.training.module", None)  # as if absent
    assert main(["finetune", str(FASHION / "fashion_train_val.prototxt"),
                 str(FASHION / "fashion.caffemodel"), "--solver", str(FASHION / "solver.prototxt"),
                 "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and ("training backend" in err[0] or "PyTorch" in err[0]), err
    assert not (tmp_path / "out").exists()


def test_the_finetune_solver_points_at_finetunes_net_and_snapshots_and_keeps_the_rest(tmp_path):
    from caffe_surgeon.training.solver_config import SolverConfig
    text = solver_text_for(FASHION / "solver.prototxt", "net_finetune.prototxt", "snapshots/")
    (tmp_path / "solver_finetune.prototxt").write_text(text)
    (tmp_path / "snapshots").mkdir()
    cfg = SolverConfig.from_prototxt(tmp_path / "solver_finetune.prototxt")
    base = SolverConfig.from_prototxt(FASHION / "solver.prototxt")
    assert cfg.net == "net_finetune.prototxt" and text.count("snapshot_prefix") == 1
    assert (cfg.type, cfg.max_iter, cfg.schedule, cfg.weight_decay, cfg.momentum, cfg.test_interval) == \
        (base.type, base.max_iter, base.schedule, base.weight_decay, base.momentum, base.test_interval)


def test_the_fixture_config_names_its_solver():
    from caffe_surgeon.workflow.config import read_caffe_config
    cfg = read_caffe_config(FASHION / "config.prototxt", base_dir=FASHION)
    assert cfg.solver is not None and cfg.solver.name == "solver.prototxt"


def test_a_train_net_without_a_loss_or_data_is_refused_in_one_line(tmp_path):
    train = cs.load(FASHION / "fashion_train_val.prototxt", phase="TRAIN")
    check_train_net(train)
    deploy = cs.load(FASHION / "fashion_deploy.prototxt", phase="TRAIN")
    with pytest.raises(ModelError, match="no loss layer") as err:
        check_train_net(deploy)
    assert "\n" not in str(err.value)
    no_data = cs.load(FASHION / "fashion_train_val.prototxt", phase="TRAIN")
    no_data.layers = [l for l in no_data.layers if l.name != "data"]
    no_data.inputs = {}
    with pytest.raises(ModelError, match="no data layer"):
        check_train_net(no_data)
