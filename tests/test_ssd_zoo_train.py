"""The zoo's MobileNet-SSD train_val (chuanqi305, the SSD fork's layers and augmentation):
refused in one line for the interpolations the trainer does not reproduce, and, with
LINEAR alone, every layer trains and two iterations run on a tiny AnnotatedDatum LMDB."""
from __future__ import annotations

import csv
import re

import numpy as np
import pytest

from assets import need_module, zoo
from ssd_lmdb import squares, write_lmdb

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError

TRAIN = "caffe/mobilenet_ssd/MobileNetSSD_train.prototxt"


def _linear_only(text: str, source: str, batch: int) -> str:
    text = text.replace('source: "trainval_lmdb/"', f'source: "{source}"')
    text = text.replace("batch_size: 24", f"batch_size: {batch}")
    return re.sub(r"\n\s*interp_mode: (AREA|NEAREST|CUBIC|LANCZOS4)", "", text)


def test_the_zoo_train_net_is_refused_by_name_for_its_random_interpolations(tmp_path):
    from caffe_surgeon.training.train_data import TrainData
    g = cs.load(str(zoo(TRAIN)), phase="TRAIN")
    with pytest.raises(ModelError, match="layer 'data': resize_param.interp_mode AREA is not "
                                         "supported for training") as e:
        TrainData(g, base_dir=tmp_path)
    assert "\n" not in str(e.value)


def test_every_layer_of_the_zoo_train_net_has_a_torch_forward(tmp_path):
    need_module("torch")
    from caffe_surgeon.training.module import CaffeModule
    (tmp_path / "train.prototxt").write_text(_linear_only(zoo(TRAIN).read_text(), "x", 2))
    module = CaffeModule(cs.load(str(tmp_path / "train.prototxt"), phase="TRAIN"))
    assert [l.type for l in module.layers].count("MultiBoxLoss") == 1


@pytest.mark.slow
def test_the_zoo_train_net_trains_two_iterations_on_a_tiny_lmdb(tmp_path):
    need_module("torch")
    need_module("lmdb")
    from caffe_surgeon.cli.main import main
    write_lmdb(tmp_path / "lmdb", squares(4))
    (tmp_path / "train.prototxt").write_text(
        _linear_only(zoo(TRAIN).read_text(), str(tmp_path / "lmdb"), 2))
    (tmp_path / "solver.prototxt").write_text(
        'base_lr: 0.0005\nlr_policy: "fixed"\nmax_iter: 2\ndisplay: 1\ntype: "RMSProp"\n'
        "weight_decay: 0.00005\nrandom_seed: 1\n")
    net = str(tmp_path / "train.prototxt")
    assert main(["init", "--phase", "TRAIN", net, "-o", str(tmp_path / "init.caffemodel")]) == 0
    assert main(["finetune", net, str(tmp_path / "init.caffemodel"), "--solver",
                 str(tmp_path / "solver.prototxt"), "-o", str(tmp_path / "out")]) == 0
    with open(tmp_path / "out" / "finetune_log.csv") as f:
        losses = [float(r["value"]) for r in csv.DictReader(f) if r["name"] == "loss"]
    assert len(losses) == 2 and all(np.isfinite(losses)) and losses[0] > 0
    assert (tmp_path / "out" / "_iter_2.caffemodel").is_file()
