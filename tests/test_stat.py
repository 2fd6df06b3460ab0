"""stat reproduces the vendor's own logs, layer by layer (vai_p_caffe stat on AlexNet-BN)."""
from __future__ import annotations

import json
import re

import pytest

import caffe_surgeon as cs
from caffe_surgeon.cli.vai_p_caffe import main as vai_p_caffe
from caffe_surgeon.cli.main import main as surgeon
from assets import zoo

LOG_LINE = re.compile(r"net_counter\.cpp:\d+\] (?:(\w+) layer (\S+) (ops|params)|Total (operations|params)): (\d+)")


def vendor_log(name):
    """{(layer, 'ops'|'params'): n} and totals from a real vai_p_caffe stat log."""
    per_layer, totals = {}, {}
    for m in LOG_LINE.finditer(zoo(f"caffe/xilinx_pruning/rpt/{name}").read_text(errors="replace")):
        if m.group(2):
            per_layer[(m.group(2), m.group(3))] = int(m.group(5))
        else:
            totals[m.group(4)] = int(m.group(5))
    return per_layer, totals


@pytest.mark.parametrize("prototxt,log", [
    ("alexnetBNnoLRN_train_val.prototxt", "logfile_stat_alexnetBNnoLRN_original.txt"),
    ("regular_rate_0.7_final.prototxt", "logfile_stat_alexnetBNnoLRN_pruned.txt"),
])
def test_vendor_counts_exactly(prototxt, log):
    per_layer, totals = vendor_log(log)
    assert totals, "the log has totals"
    report = cs.stat(cs.load(zoo(f"caffe/xilinx_pruning/{prototxt}")))
    ours = {}
    for l in report.layers:
        if l.in_total and (l.ops or l.params):
            if l.ops:
                ours[(l.name, "ops")] = l.ops
            ours[(l.name, "params")] = l.params
    assert ours == per_layer
    assert report.total.ops == totals["operations"]
    assert report.total.params == totals["params"]


def test_vai_p_caffe_stat_prints_the_vendor_lines(capsys):
    per_layer, totals = vendor_log("logfile_stat_alexnetBNnoLRN_original.txt")
    assert vai_p_caffe(["stat", "-model", str(zoo("caffe/xilinx_pruning/alexnetBNnoLRN_train_val.prototxt"))]) == 0
    out = capsys.readouterr().out
    assert f"Total operations: {totals['operations']}" in out
    assert f"Convolution layer conv2 ops: {per_layer[('conv2', 'ops')]}" in out


def test_json_output_shape(capsys, tmp_path):
    from pathlib import Path
    tiny = Path(__file__).resolve().parents[1] / "fixtures" / "caffe" / "tinynet_deploy.prototxt"
    assert surgeon(["stat", str(tiny), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["total"]) == {"ops", "macs", "params"}
    convs = [l for l in data["layers"] if l["type"] == "Convolution"]
    conv1 = next(l for l in convs if l["name"] == "conv1")
    # 16 x 32 x 32 outputs, each 3x3x3 MACs (no bias term).
    assert conv1["macs"] == 16 * 32 * 32 * 27 and conv1["params"] == 16 * 27
    assert data["total"]["ops"] == sum(l["ops"] for l in data["layers"] if l["in_total"])
    ip = next(l for l in data["layers"] if l["type"] == "InnerProduct")
    assert not ip["in_total"] and data["total_all"]["params"] > data["total"]["params"]
