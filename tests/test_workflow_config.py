"""The vai_p workflow's config files and reports (caffe_surgeon.workflow)."""
from __future__ import annotations

import csv
import io
import re
import textwrap
from pathlib import Path

import pytest

from assets import need_module, zoo
from caffe_surgeon.errors import ModelError
from caffe_surgeon.workflow import (PruneSummary, SensitivityRow, SensitivityTable,
                                    format_prune_summary, format_rate, format_sensitivity,
                                    read_caffe_config, read_darknet_pruning,
                                    write_sensitivity_csv, write_sensitivity_plot,
                                    write_sensitivity_table)
from caffe_surgeon.workflow.config import DEFAULT_RATIOS

RPT = "caffe/xilinx_pruning/rpt"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def error_of(fn, *args, **kw) -> str:
    with pytest.raises(ModelError) as e:
        fn(*args, **kw)
    return str(e.value)


# ====================================================================== real caffe configs
REAL = {  # file -> (rate, weights as written, line of 'rate', line of 'weights')
    "config.prototxt": (0.1, "pruning/alexnetBNnoLRN/float.caffemodel", 52, 33),
    "config0.prototxt": (0.0, "pruning/alexnetBNnoLRN/float.caffemodel", 54, 33),
    "config7.prototxt": (0.7, "pruning/alexnetBNnoLRN/regular_rate_0.6/snapshots/"
                              "_iter_12000.caffemodel", 66, 52),
}


@pytest.mark.parametrize("name", sorted(REAL))
def test_real_caffe_configs_parse(name, tmp_path):
    rate, weights, rate_line, weights_line = REAL[name]
    cfg = read_caffe_config(zoo(f"caffe/xilinx_pruning/{name}"), base_dir=tmp_path)
    assert cfg.workspace == tmp_path / "pruning/alexnetBNnoLRN"
    assert cfg.raw == {"workspace": "pruning/alexnetBNnoLRN",
                       "model": "pruning/alexnetBNnoLRN/train_val.prototxt",
                       "weights": weights,
                       "solver": "pruning/alexnetBNnoLRN/solver.prototxt"}
    assert cfg.model == tmp_path / "pruning/alexnetBNnoLRN/train_val.prototxt"
    assert cfg.weights == tmp_path / weights
    assert cfg.solver == tmp_path / "pruning/alexnetBNnoLRN/solver.prototxt"
    assert (cfg.gpu, cfg.worker_count, cfg.test_iter, cfg.acc_name) == ([0], 1, 80, "top-1")
    assert cfg.rate == rate and cfg.method == "REGULAR" and cfg.exclude == []
    assert cfg.lines["rate"] == rate_line and cfg.lines["weights"] == weights_line
    # our extensions keep their defaults
    assert (cfg.criterion, cfg.channel_divisible, cfg.ratios, cfg.workers, cfg.scheduler,
            cfg.label_free) == ("l1", 2, DEFAULT_RATIOS, None, "auto", False)
    # the vendor's output folder names (the compress logs write regular_rate_0/ and _0.7/)
    assert cfg.rate_dir().name == f"regular_rate_{format_rate(rate)}"
    assert cfg.ana_file == tmp_path / "pruning/alexnetBNnoLRN/.ana.regular"


def test_real_config_rate_dirs_match_the_logs():
    for log, cfg_name in (("logfile_compress0_alexnetBNnoLRN.txt", "config0.prototxt"),
                          ("logfile_compress7_alexnetBNnoLRN.txt", "config7.prototxt")):
        text = zoo(f"{RPT}/{log}").read_text(errors="replace")
        out = re.search(r"output model: (\S+)/sparse\.caffemodel", text).group(1)
        cfg = read_caffe_config(zoo(f"caffe/xilinx_pruning/{cfg_name}"), base_dir="/")
        assert str(cfg.rate_dir()) == "/" + out


def test_guide_ssd_config_with_exclude(tmp_path):
    # UG1333's SSD example, odd line breaks included
    path = write(tmp_path, "ssd.prototxt", '''
        workspace: "examples/decent_p/ssd/"

        model: "examples/decent_p/ssd/float.prototxt"
        weights: "examples/decent_p/ssd/float.caffemodel"
        solver: "examples/decent_p/ssd/solver.prototxt"

        gpu: "0,1,2,3"
        test_iter: 10
        acc_name: "detection_eval"
        ssd_ap_version: "11point"

        rate: 0.15

        pruner {
          method: REGULAR

          exclude {
            layer_top:
              "conv4_3_norm_mbox_loc"
            layer_top: "fc7_mbox_loc"
        layer_top:
              "conv9_2_mbox_conf"
        }
        }
    ''')
    cfg = read_caffe_config(path, base_dir=tmp_path)
    assert cfg.gpu == [0, 1, 2, 3] and cfg.worker_count == 4
    assert cfg.ssd_ap_version == "11point" and cfg.rate == 0.15 and cfg.test_iter == 10
    assert cfg.exclude == ["conv4_3_norm_mbox_loc", "fc7_mbox_loc", "conv9_2_mbox_conf"]
    assert cfg.raw["workspace"] == "examples/decent_p/ssd/"
    assert cfg.workspace == tmp_path / "examples/decent_p/ssd"


def test_our_extensions(tmp_path):
    path = write(tmp_path, "c.prototxt", '''
        workspace: "ws"  model: "m.prototxt"
        label_free: true
        criterion: L2
        channel_divisible: 8
        ratios: [0.5, 0.25]
        ratios: 0.75
        workers: 3
        scheduler: "process"
        gpu: 1
        early_stop: 0.05
    ''')
    cfg = read_caffe_config(path, base_dir=tmp_path)
    assert cfg.acc_name is None and cfg.label_free and cfg.early_stop == 0.05
    assert (cfg.criterion, cfg.channel_divisible, cfg.ratios) == ("l2", 8, (0.25, 0.5, 0.75))
    assert (cfg.workers, cfg.worker_count, cfg.scheduler, cfg.gpu) == (3, 3, "process", [1])
    octal = read_caffe_config(write(tmp_path, "o.prototxt", BASE + "test_iter: 010\n"), base_dir=tmp_path)
    assert octal.test_iter == 8  # protobuf's text format, as Caffe's C++ parser reads it
    assert "an integer" in error_of(lambda: read_caffe_config(
        write(tmp_path, "o9.prototxt", BASE + "test_iter: 09\n"), base_dir=tmp_path))
    serial = read_caffe_config(write(tmp_path, "s.prototxt", BASE + 'gpu: "0,1,2"\nscheduler: serial\n'),
                               base_dir=tmp_path)
    assert (serial.gpu, serial.worker_count) == ([0, 1, 2], 1)  # this process only
    assert cfg.test_iter == 100 and cfg.rate is None
    assert read_caffe_config(write(tmp_path, "d.prototxt", BASE), base_dir=tmp_path).early_stop is None
    assert "needs 'weights', 'rate'" in error_of(cfg.require, "weights", "rate", command="prune")
    assert "'rate'" in error_of(cfg.rate_dir)


# ---------------------------------------------------------------- caffe config errors
BASE = 'workspace: "ws"\nmodel: "m.prototxt"\nacc_name: "top-1"\n'


@pytest.mark.parametrize("extra, where, words", [
    ('rates: 0.5\n', ":4:1: ", ["unknown field 'rates'", "accepted fields: workspace, gpu",
                                "rate", "label_free"]),
    ('pruner { method: REGULAR\n  excluded { layer_top: "x" } }\n', ":5:3: ",
     ["unknown field 'excluded' in 'pruner'", "accepted fields: method, exclude"]),
    ('pruner { method: SPARSE }\n', ":4:18: ", ["'method' has value SPARSE",
                                                "accepted values: REGULAR"]),
    ('rate: 1.5\n', ":4:7: ", ["'rate' is 1.5", "[0, 1)"]),
    ('rate: 0.1\nrate: 0.2\n', ":5:1: ", ["'rate' is given twice (first at line 4)"]),
    ('test_iter: 8.5\n', ":4:12: ", ["'test_iter' expects an integer, got 8.5"]),
    ('test_iter: 0\n', ":4:12: ", ["'test_iter' is 0", "at least 1"]),
    ('gpu: "0,x"\n', ":4:6: ", ["'gpu' is \"0,x\"", "\"0,1,2,3\""]),
    ('solver: solver.prototxt\n', ":4:9: ", ["'solver' expects a quoted string"]),
    ('criterion: "fpgm"\n', ":4:12: ", ["accepted values: l1, l2"]),
    ('scheduler: gpu\n', ":4:12: ", ["accepted values: auto, serial, process"]),
    ('scheduler: thread\n', ":4:12: ", ["accepted values: auto, serial, process"]),
    ('ratios: [0.1, 1.0]\n', ":4:1: ", ["ratio 1 is outside (0, 1)"]),
    ('ratios: 0.2 ratios: 0.2\n', ":4:1: ", ["ratio 0.2 is listed twice"]),
    ('ssd_ap_version: "11pt"\n', ":4:17: ", ["11point, MaxIntegral, Integral"]),
    ('pruner: REGULAR\n', ":4:1: ", ["'pruner' is a block"]),
    ('rate { }\n', ":4:1: ", ["'rate' takes a value"]),
    ('pruner {\n method: REGULAR\n', "", ["'pruner' opened at line 4 is not closed"]),
    ('model2 "x"\n', ":4:8: ", ["expected ':' or '{' after field name 'model2'"]),
    ('acc_name: "top-5\n', ":4:11: ", ["not closed on this line"]),
    ('label_free: maybe\n', ":4:13: ", ["expects true or false"]),
    ('early_stop: 0\n', ":4:13: ", ["'early_stop' is 0", "relative metric drop > 0"]),
    ('early_stop: "a lot"\n', ":4:13: ", ["'early_stop' expects a number"]),
])
def test_caffe_config_errors(tmp_path, extra, where, words):
    path = write(tmp_path, "config.prototxt", BASE + extra)
    msg = error_of(read_caffe_config, path)
    assert msg.startswith(f"{path}{where}"), msg
    for w in words:
        assert w in msg, msg
    assert "Traceback" not in msg and "\n" not in msg


def test_caffe_config_missing_required_fields(tmp_path):
    path = write(tmp_path, "c.prototxt", 'gpu: "0"\n# nothing else\n')
    msg = error_of(read_caffe_config, path)
    assert msg.startswith(f"{path}: missing required fields 'workspace', 'model', 'acc_name'")
    assert "label_free" in msg and "accepted fields:" in msg


def test_caffe_config_unknown_field_in_real_file_copy(tmp_path):
    text = zoo("caffe/xilinx_pruning/config.prototxt").read_text()
    path = tmp_path / "config.prototxt"
    path.write_text(text.replace("test_iter: 80", "test_iters: 80"))
    msg = error_of(read_caffe_config, path)
    assert msg.startswith(f"{path}:24:1: unknown field 'test_iters'; accepted fields: "
                          "workspace, gpu, test_iter, acc_name, model, weights, solver, rate, "
                          "pruner, ssd_ap_version, criterion, channel_divisible, ratios, "
                          "workers, scheduler, label_free, early_stop, distill, temperature, "
                          "taylor_batches"), msg


def test_check_files_lists_every_missing_file(tmp_path):
    (tmp_path / "m.prototxt").write_text("")
    (tmp_path / "snap").mkdir()
    path = write(tmp_path, "c.prototxt", '''
        workspace: "ws"
        model: "m.prototxt"
        acc_name: "top-1"
        weights: "snap"
        solver: "nope/solver.prototxt"
    ''')
    cfg = read_caffe_config(path, base_dir=tmp_path)
    missing = cfg.missing_files()
    assert [(m.field, m.line, m.problem) for m in missing] == [
        ("weights", 4, "is a directory"), ("solver", 5, "not found")]
    msg = error_of(cfg.check_files)
    assert msg.startswith(f"{path}: 2 input files missing")
    assert "weights (line 4): 'snap' -> " in msg and "is a directory" in msg
    assert f"solver (line 5): 'nope/solver.prototxt' -> '{tmp_path}/nope/solver.prototxt' " \
           "not found" in msg
    cfg.check_files(fields=("model",))  # model exists: no error
    (tmp_path / "nope").mkdir()
    (tmp_path / "nope/solver.prototxt").write_text("")
    assert [m.field for m in cfg.missing_files()] == ["weights"]


def test_caffe_config_file_problems(tmp_path):
    assert "config file not found" in error_of(read_caffe_config, tmp_path / "none.prototxt")
    bad = tmp_path / "latin1.prototxt"
    bad.write_bytes(b'workspace: "w"\n# caf\xe9\n')
    assert error_of(read_caffe_config, bad).startswith(f"{bad}:2: config file is not UTF-8")


def test_caffe_config_fields_are_the_schema_and_values_follow_protobuf_text(tmp_path):
    from caffe_surgeon.workflow import vai_p_config_pb2

    fields = [f.name for f in vai_p_config_pb2.CaffeConfig.DESCRIPTOR.fields]
    msg = error_of(read_caffe_config, write(tmp_path, "u.prototxt", BASE + "bogus: 1\n"))
    assert msg.endswith("accepted fields: " + ", ".join(fields)), msg
    cfg = read_caffe_config(write(tmp_path, "p.prototxt", BASE.replace('"top-1"', '"top" "-\\x31"')
                                  + "rate: -0\nratios: [0.5]; workers: 0x10\n"
                                  "pruner < exclude { layer_top: ['a', \"b\"] } >\n"),
                            base_dir=tmp_path)
    assert (cfg.acc_name, cfg.rate, cfg.ratios, cfg.workers, cfg.exclude) == (
        "top-1", 0.0, (0.5,), 16, ["a", "b"])
    assert cfg.rate_dir().name == "regular_rate_0"  # -0 is 0, not "regular_rate_-0"
    assert "expects an integer, got 08" in error_of(
        read_caffe_config, write(tmp_path, "o.prototxt", BASE + "workers: 08\n"))


def test_criteria_are_one_list_and_darknet_codes_name_two_of_it(tmp_path):
    from caffe_surgeon.pruning.criteria import CRITERIA
    from caffe_surgeon.workflow.config import DARKNET_CRITERIA

    msg = error_of(read_caffe_config, write(tmp_path, "c.prototxt", BASE + "criterion: l3\n"))
    assert msg.endswith("accepted values: " + ", ".join(CRITERIA))
    cfg = read_caffe_config(write(tmp_path, "b.prototxt", BASE + "criterion: BN\n"))
    assert cfg.criterion == "bn"
    assert set(DARKNET_CRITERIA.values()) < set(CRITERIA)  # the vendor has no code for bn


def test_generated_config_schema_module_is_up_to_date():
    import importlib.util

    pytest.importorskip("grpc_tools", reason="grpcio-tools (dev dependency) not installed")
    root = Path(__file__).resolve().parents[1]
    spec = importlib.util.spec_from_file_location("gen_proto", root / "tools" / "gen_proto.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    target = gen.TARGETS["vai_p_config"]
    fresh = gen.render_module(gen.compile_descriptor(target.proto), target)
    assert fresh == target.output.read_text(encoding="utf-8"), \
        "vai_p_config_pb2.py is stale: run python tools/gen_proto.py"


# ====================================================================== darknet INI
GUIDE_INI = """\
[pruning]
workspace=pruning
datacfg=pruning/voc.data
modelcfg=pruning/yolov3-voc.cfg
prunedcfg=pruning/yolov3-voc-prune.cfg
ana_out_file=pruning/ana.out
prune_out_weights=pruning/weights.prune
criteria=0
kernel_batch=2
ignore_layer=80,81,92,93,104,105
yolov3=1
threshold=0.005
"""


def test_formats_md_darknet_example_parses(tmp_path):
    # the example in FORMATS.md section 1, taken from the file itself when it is there
    text = GUIDE_INI
    formats = Path(__file__).resolve().parents[2] / "shared" / "FORMATS.md"
    if formats.is_file():
        m = re.search(r"```\n(\[pruning\]\n.*?)```", formats.read_text(), re.S)
        assert m, "FORMATS.md lost its [pruning] example"
        text = m.group(1)
    path = tmp_path / "cfg"
    path.write_text(text)
    cfg = read_darknet_pruning(path, base_dir=tmp_path)
    assert cfg.workspace == tmp_path / "pruning"
    assert cfg.datacfg == tmp_path / "pruning/voc.data"
    assert cfg.modelcfg == tmp_path / "pruning/yolov3-voc.cfg"
    assert cfg.prunedcfg == tmp_path / "pruning/yolov3-voc-prune.cfg"
    assert cfg.ana_out_file == tmp_path / "pruning/ana.out"
    assert cfg.prune_out_weights == tmp_path / "pruning/weights.prune"
    assert (cfg.criteria, cfg.criterion, cfg.kernel_batch) == (0, "l1", 2)
    assert cfg.ignore_layer == (80, 81, 92, 93, 104, 105)
    assert (cfg.yolov3, cfg.yolo_v3v4, cfg.threshold) == (True, False, 0.005)
    assert (cfg.rate, cfg.ratios, cfg.worker_count, cfg.scheduler, cfg.label_free) == (
        None, DEFAULT_RATIOS, 1, "auto", False)
    assert cfg.raw["modelcfg"] == "pruning/yolov3-voc.cfg" and cfg.lines["threshold"] == 12
    msg = error_of(cfg.check_files)
    assert "2 input files missing" in msg and "modelcfg (line 4)" in msg \
        and "datacfg (line 3)" in msg


def test_darknet_defaults_comments_and_ours(tmp_path):
    path = write(tmp_path, "cfg", '''
        # pruning a YOLOv4
        ; another comment style

        [pruning]
        workspace = work
        modelcfg = models/yolov4.cfg
        label_free = 1
        yolo_v3v4=1
        ignore_layer = 5, 3 ,5
        criteria=1
        rate=0.5   # about half the ops
        ratios=0.3,0.1
        workers=2
        scheduler=Process
        kernel_batch=4
        early_stop=0.2
    ''')
    (tmp_path / "models").mkdir()
    (tmp_path / "models/yolov4.cfg").write_text("[net]\n")
    cfg = read_darknet_pruning(path, base_dir=tmp_path)
    assert cfg.datacfg is None and cfg.label_free and cfg.yolo_v3v4 and not cfg.yolov3
    assert cfg.prunedcfg == tmp_path / "work/yolov4-prune.cfg"
    assert cfg.raw["prunedcfg"] == "work/yolov4-prune.cfg"
    assert cfg.ana_out_file == tmp_path / "work/ana.out"
    assert cfg.prune_out_weights == tmp_path / "work/weights.prune"
    assert cfg.ignore_layer == (3, 5) and cfg.criterion == "l2" and cfg.kernel_batch == 4
    assert (cfg.rate, cfg.ratios, cfg.worker_count, cfg.scheduler) == (0.5, (0.1, 0.3), 2,
                                                                       "process")
    assert cfg.early_stop == 0.2
    cfg.check_files()  # modelcfg exists, datacfg not set: nothing missing


@pytest.mark.parametrize("lines, line_no, words", [
    (["criteria=2"], 5, ["key 'criteria' is '2'", "0 (L1 norm), 1 (L2 norm)"]),
    (["criteria=L1"], 5, ["key 'criteria' is 'L1'", "integer"]),
    (["kernel_batch=0"], 5, ["'kernel_batch' is '0'", "integer >= 1"]),
    (["kernel_batch=2.5"], 5, ["integer >= 1"]),
    (["ignore_layer=80,81,x"], 5, ["'ignore_layer' is '80,81,x'", "like 80,81,92"]),
    (["ignore_layer=80,-1"], 5, ["layer indices"]),
    (["yolov3=2"], 5, ["'yolov3' is '2'", "0 or 1"]),
    (["threshold=abc"], 5, ["'threshold' is 'abc'", "a number"]),
    (["threshold=-0.1"], 5, ["a number >= 0"]),
    (["rate=1"], 5, ["'rate' is 1", "[0, 1)"]),
    (["ratios=0.1,0.1"], 5, ["ratio 0.1 is listed twice"]),
    (["ratios=0.1,,0.2"], 5, ["numbers in (0, 1)"]),
    (["scheduler=gpu"], 5, ["auto, serial, process"]),
    (["workers=0"], 5, ["integer >= 1"]),
    (["early_stop=0"], 5, ["'early_stop' is '0'", "relative metric drop > 0"]),
    (["early_stop=x"], 5, ["'early_stop' is 'x'", "a number"]),
    (["gpus=0,1"], 5, ["unknown key 'gpus' in [pruning]; accepted keys: workspace, datacfg, "
                       "modelcfg, prunedcfg, ana_out_file, prune_out_weights, criteria, "
                       "kernel_batch, ignore_layer, yolov3, yolo_v3v4, threshold, rate, "
                       "ratios, workers, scheduler, label_free, early_stop"]),
    (["threshold=0.1", "threshold=0.2"], 6, ["'threshold' is given twice (first at line 5)"]),
    (["yolov3=1", "yolo_v3v4=1"], 6, ["not both"]),
    (["just words"], 5, ["expected key=value, got 'just words'"]),
    (["[net]"], 5, ["unknown section [net]"]),
    (["[pruning]"], 5, ["a second [pruning] section"]),
    (["[pruning"], 5, ["not closed with ']'"]),
    (["prunedcfg="], 5, ["'prunedcfg' is ''; expected a path"]),
])
def test_darknet_bad_values(tmp_path, lines, line_no, words):
    text = "[pruning]\nworkspace=w\nmodelcfg=m.cfg\ndatacfg=d.data\n" + "\n".join(lines) + "\n"
    path = tmp_path / "cfg"
    path.write_text(text)
    msg = error_of(read_darknet_pruning, path)
    assert msg.startswith(f"{path}:{line_no}: "), msg
    for w in words:
        assert w in msg, msg


def test_darknet_structure_errors(tmp_path):
    path = tmp_path / "cfg"
    path.write_text("workspace=w\n[pruning]\n")
    assert error_of(read_darknet_pruning, path) == (
        f"{path}:1: 'workspace' comes before the [pruning] section header")
    path.write_text("# only comments\n")
    assert error_of(read_darknet_pruning, path).startswith(f"{path}: no [pruning] section")
    path.write_text("[pruning]\nworkspace=w\n")
    msg = error_of(read_darknet_pruning, path)
    assert msg.startswith(f"{path}: [pruning] lacks required keys modelcfg, datacfg")
    path.write_text("[pruning]\r\nworkspace=w\r\nmodelcfg=m.cfg\r\nis_yolov3=1\r\n"
                    "label_free=true\r\n")
    cfg = read_darknet_pruning(path, base_dir=tmp_path)  # CRLF, alias, label_free
    assert cfg.yolov3 and cfg.modelcfg == tmp_path / "m.cfg" and cfg.lines["yolov3"] == 4


def test_pruning_file_is_read_by_the_darknet_cfg_reader(tmp_path, monkeypatch):
    from caffe_surgeon.darknet import cfg as cfgmod

    calls = []
    real = cfgmod.read_cfg
    monkeypatch.setattr(cfgmod, "read_cfg", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    path = tmp_path / "cfg"
    path.write_text("[pruning]\nwork space = w\nmodelcfg=my models/m.cfg  ; a comment\n"
                    "label_free=1\n")
    cfg = read_darknet_pruning(path, base_dir=tmp_path)  # darknet drops spaces in keys
    assert cfg.raw["workspace"] == "w" and cfg.raw["modelcfg"] == "my models/m.cfg"
    assert calls and calls[0]["head"] == "pruning"
    path.write_text("[pruning]\n[net]\n")
    assert "unknown section [net] (known sections: [pruning])" in error_of(read_darknet_pruning,
                                                                            path)


# ====================================================================== prune summary
def _log_table(name: str) -> tuple[str, str]:
    text = zoo(f"{RPT}/{name}").read_text(errors="replace")
    lines = text.splitlines()
    i = next(k for k, l in enumerate(lines) if "summary of REGULAR compression" in l)
    heading = lines[i].split("] ", 1)[1]
    return heading, "\n".join(lines[i + 1:i + 10])


def _stat_totals(name: str) -> tuple[int, int]:
    text = zoo(f"{RPT}/{name}").read_text(errors="replace")
    ops = int(re.search(r"Total operations: (\d+)", text).group(1))
    params = int(re.search(r"Total params: (\d+)", text).group(1))
    return ops, params


def test_summary_reproduces_real_logs():
    ops0, params0 = _stat_totals("logfile_stat_alexnetBNnoLRN_original.txt")
    ops7, params7 = _stat_totals("logfile_stat_alexnetBNnoLRN_pruned.txt")
    assert (ops0, params0, ops7, params7) == (2153918368, 3764995, 636272830, 425467)
    # the accuracies are the only numbers taken from the compress logs themselves
    heading, table = _log_table("logfile_compress7_alexnetBNnoLRN.txt")
    s = PruneSummary(0.943749785, 0.954749584, params0, params7, ops0, ops7, rate=0.7)
    assert s.heading() == heading == "summary of REGULAR compression with rate 0.7:"
    assert s.table() == table
    assert s.format() == heading + "\n" + table
    heading, table = _log_table("logfile_compress0_alexnetBNnoLRN.txt")
    s = PruneSummary(0.943749785, 0.943749785, params0, params0, ops0, ops0, rate=0.0)
    assert s.heading() == heading and s.table() == table
    assert format_prune_summary(0.943749785, 0.943749785, params0, params0, ops0, ops0) == table


def test_summary_cells_outside_the_logs():
    table = format_prune_summary(0.5, 0.25, 999, 10, 1000, 500).splitlines()
    assert table[3] == "| Accuracy       | 0.5            | 0.25           | -0.25          |"
    assert table[5] == "| Weights        | 999            | 10             | -98.9990005%   |"
    assert table[7] == "| Operations     | 1 K            | 500            | -50%           |"
    assert all(len(l) == 69 for l in table)


# ====================================================================== ana results
def _ana() -> SensitivityTable:
    nan = float("nan")
    return SensitivityTable("top-1", 0.94375, [0.1, 0.5, 0.9], [
        SensitivityRow("conv1", [0.94125, 0.9, 0.5], ("conv1",), 96),
        SensitivityRow("res2a_branch2c", [0.9, nan, 0.125],
                       ("res2a_branch2c", "res2b_branch2c"), 256),
    ])


def test_sensitivity_text_table(tmp_path):
    text = format_sensitivity(_ana())
    assert text.splitlines() == [
        "sensitivity: top-1 with one group pruned by each ratio (baseline top-1 = 0.94375)",
        "group           layers                         channels     0.1     0.5     0.9",
        "--------------  -----------------------------  --------  ------  ------  ------",
        "conv1           conv1                                96  0.9413  0.9000  0.5000",
        "res2a_branch2c  res2a_branch2c,res2b_branch2c       256  0.9000       -  0.1250",
    ]
    rel = format_sensitivity(_ana(), relative=True).splitlines()
    assert rel[0].startswith("sensitivity: change of top-1 in %")
    assert rel[3].split()[-3:] == ["-0.26", "-4.64", "-47.02"]
    assert rel[4].split()[-2:] == ["-", "-86.75"]
    plain = SensitivityTable("mAP", 0.5, [0.5], [SensitivityRow("c", [0.25])])
    assert format_sensitivity(plain).splitlines()[1:] == [
        "group     0.5", "-----  ------", "c      0.2500"]
    out = tmp_path / "ana.txt"
    write_sensitivity_table(_ana(), out)
    assert out.read_text() == text + "\n"


def test_sensitivity_rejects_ragged_rows():
    with pytest.raises(ModelError, match="group 'c' has 1 values for 2 ratios"):
        SensitivityTable("top-1", 1.0, [0.1, 0.2], [SensitivityRow("c", [0.5])])


def test_sensitivity_csv(tmp_path):
    out = tmp_path / "ana.csv"
    write_sensitivity_csv(_ana(), out)
    text = out.read_text()
    assert text.splitlines()[0] == "group,layers,channels,baseline_top-1,0.1,0.5,0.9"
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0] == {"group": "conv1", "layers": "conv1", "channels": "96",
                       "baseline_top-1": "0.94375", "0.1": "0.94125", "0.5": "0.9",
                       "0.9": "0.5"}
    assert rows[1]["layers"] == "res2a_branch2c;res2b_branch2c" and rows[1]["0.5"] == ""
    assert not list(tmp_path.glob(".*.tmp"))


def test_sensitivity_png(tmp_path):
    from PIL import Image
    out = tmp_path / "ana.png"
    write_sensitivity_plot(_ana(), out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    img = Image.open(out)
    width, height = img.size
    assert 700 < width < 1000 and 400 < height < 500, img.size
    again = tmp_path / "again.png"
    write_sensitivity_plot(_ana(), again)
    assert again.read_bytes() == data  # deterministic
    # every group's colour is drawn: the first group's blue, the second's orange
    colours = {c for _, c in img.convert("RGB").getcolors(1 << 20)}
    assert (0x1f, 0x77, 0xb4) in colours and (0xff, 0x7f, 0x0e) in colours
    assert "output folder" in error_of(write_sensitivity_plot, _ana(), tmp_path / "no/x.png")
    assert not list(tmp_path.glob(".*.tmp"))


def test_sensitivity_png_needs_no_plotting_library(tmp_path, monkeypatch):
    import sys
    for name in [m for m in sys.modules if m.split(".")[0] == "matplotlib"]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    out = tmp_path / "ana.png"
    write_sensitivity_plot(_ana(), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_chart_ticks_are_round_and_cover_the_values():
    from caffe_surgeon.workflow.chart import nice_ticks, tick_label
    assert nice_ticks(0.28, 0.9) == [0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]
    assert nice_ticks(0, 1000) == [0, 200, 400, 600, 800, 1000]
    for lo, hi in [(0.28, 0.9), (-3.7, 12.2), (1e-4, 3e-4), (5, 5), (-1, -1), (0.9, 0.3)]:
        t = nice_ticks(lo, hi)
        assert t[0] <= min(lo, hi) and t[-1] >= max(lo, hi) and 2 <= len(t) <= 9, (lo, hi, t)
        steps = {round(b - a, 12) for a, b in zip(t, t[1:])}
        assert len(steps) == 1
    assert tick_label(0.25, 0.05) == "0.25" and tick_label(2.5, 2.5) == "2.5"
    assert tick_label(400, 200) == "400" and tick_label(-1e-17, 0.1) == "0"


def test_chart_legend_takes_columns_for_many_groups():
    import io
    from PIL import Image
    from caffe_surgeon.workflow.chart import PALETTE, Series, line_chart_png

    def width(n):
        s = [Series(f"group {i}", [(0.1, i), (0.9, i + 1)], PALETTE[i % 10], "o") for i in range(n)]
        return Image.open(io.BytesIO(line_chart_png(s, "t", "x", "y"))).size[0]
    assert width(20) < width(5) + 20 < width(40) - 40  # 25 entries to a column here


def test_training_log_plot_has_the_loss_and_the_test_metrics_on_their_own_axes(tmp_path):
    import io
    from PIL import Image
    from caffe_surgeon.training.progress import LOG_NAMES, TrainingLog
    log = TrainingLog(tmp_path, 100, out=io.StringIO())
    log.test(0, {"top-1": 0.5})  # a test before any loss is logged
    png = tmp_path / LOG_NAMES[1]
    first = png.read_bytes()
    assert first[:4] == b"\x89PNG"
    for i in range(10, 101, 10):
        log.train(i, 2.0 / i, 0.01, show=True)
    log.test(100, {"top-1": 0.9})
    img = Image.open(png).convert("RGB")
    colours = {c for _, c in img.getcolors(1 << 20)}
    for want in [(0x1f, 0x77, 0xb4), (0xff, 0x7f, 0x0e)]:  # the loss line, top-1's markers
        assert any(max(abs(a - b) for a, b in zip(c, want)) < 8 for c in colours), want
    assert png.read_bytes() != first and (tmp_path / LOG_NAMES[0]).read_text().count("\n") == 23


def test_chart_draws_with_pillows_bitmap_font(tmp_path, monkeypatch):
    """Without FreeType (or before Pillow 10.1) the text falls back to the bitmap font."""
    from PIL import ImageFont
    from caffe_surgeon.workflow import chart
    if not hasattr(ImageFont, "load_default_imagefont"):
        pytest.skip("this Pillow has no separate bitmap default font")
    monkeypatch.setattr(chart, "_font", lambda size: ImageFont.load_default_imagefont())
    out = tmp_path / "ana.png"
    write_sensitivity_plot(_ana(), out)
    assert out.read_bytes()[:4] == b"\x89PNG"


def test_chart_leaves_out_values_that_are_not_finite():
    import io
    from PIL import Image
    from caffe_surgeon.workflow.chart import Series, line_chart_png
    nan, inf = float("nan"), float("inf")
    png = line_chart_png([Series("a", [(0.1, 0.5), (0.5, nan), (0.9, 0.7)], "#1f77b4", "o"),
                          Series("b", [(0.1, inf), (0.5, nan)], "#ff7f0e", dashed=True)], "t", "x", "y")
    assert Image.open(io.BytesIO(png)).size[0] > 300
