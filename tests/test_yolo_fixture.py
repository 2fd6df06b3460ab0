"""The trained YOLO detection fixture (``fixtures/detection/yolo-fashion-tiny.weights``,
issue 16): its recorded mAP@0.5 reproduces on the first test scenes, the Debian darknet
binary's ``detector valid`` gives our detections for it, and the vendor flow (ana, prune,
finetune, transform) on it yields a model that darknet and OpenCV run as our engine does.

The scenes are regenerated here by ``tools/make_detection_fixture.py``: test scene ``i``
depends only on (seed, split, i), so one train scene and the first test scenes are the
scenes the figures were measured on, byte for byte."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

import caffe_surgeon as cs
from assets import darknet_binary, fashion_data, need_module
from caffe_surgeon.evaluation import DarknetDetectorEvaluator, voc_map, write_detector_valid

ROOT = Path(__file__).resolve().parents[1]
DETECTION = ROOT / "fixtures" / "detection"
METRICS = json.loads((DETECTION / "yolo-fashion-tiny.metrics.json").read_text())
FIRST = METRICS["map50"]["first_test_scenes"]  # how many test scenes the fast figure covers


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    """One train scene and the first test scenes of the default set (seed 0, 160 x 160)."""
    fashion_data()
    need_module("lmdb")  # the tool writes the SSD LMDBs too
    from tools.make_detection_fixture import make_detection_fixture
    out = tmp_path_factory.mktemp("yolo") / "set"
    make_detection_fixture(out, train=1, test=FIRST, size=METRICS["detection_set"]["size"],
                           seed=METRICS["detection_set"]["seed"])
    return out


def shipped():
    return cs.load(DETECTION / "yolo-fashion-tiny.cfg", DETECTION / "yolo-fashion-tiny.weights")


def valid_list(folder: Path, count: int) -> Path:
    """``folder/few.data``: the first ``count`` test scenes, results into ``results/``."""
    lines = (folder / "test.txt").read_text().splitlines(True)[:count]
    (folder / "few.txt").write_text("".join(lines))
    (folder / "results").mkdir(exist_ok=True)
    (folder / "few.data").write_text("classes=10\nvalid=few.txt\nnames=fashion.names\n"
                                     "results=results\n")
    return folder / "few.data"


def assert_darknet_valid_gives_ours(folder: Path, cfg: Path, weights: Path, count: int = 4):
    """``darknet detector valid`` on the first ``count`` scenes writes the lines our
    ``write_detector_valid`` writes: same files, order and ids, numbers within 2e-3 (%f
    printing and float noise); returns (lines, evaluator, our results)."""
    data = valid_list(folder, count)
    graph = cs.load(cfg, weights)
    ev = DarknetDetectorEvaluator(data, graph, base_dir=folder, batch_size=count)
    (folder / "ours").mkdir(exist_ok=True)
    results = ev.run(graph)
    files = write_detector_valid(ev, results, folder / "ours")
    proc = subprocess.run([str(darknet_binary()), "detector", "valid", data.name, str(cfg),
                           str(weights)], cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    count_lines, worst = 0, 0.0
    for ours in files:
        mine = ours.read_text().splitlines()
        theirs = (folder / "results" / ours.name).read_text().splitlines()
        assert len(mine) == len(theirs), ours.name
        for a, b in zip(mine, theirs):
            a, b = a.split(), b.split()
            assert a[0] == b[0] and len(a) == len(b) == 6
            worst = max(worst, max(abs(float(x) - float(y)) for x, y in zip(a[1:], b[1:])))
            count_lines += 1
    assert worst < 2e-3, worst
    return count_lines, ev, results


def test_the_shipped_weights_score_their_recorded_map_on_the_first_test_scenes(scenes):
    graph = shipped()
    ev = DarknetDetectorEvaluator(scenes / "fashion_detection.data", graph, base_dir=scenes)
    assert len(ev.items) == FIRST
    assert ev.score(ev.run(graph)) == pytest.approx(METRICS["map50"]["ours_first"], abs=1e-9)
    # the figure means something: the untrained start scores nothing on the same scenes
    start = cs.init(cs.load(DETECTION / "yolo-fashion-tiny.cfg"), seed=0)
    assert ev.score(ev.run(start)) < 0.05 < METRICS["map50"]["ours_first"] - 0.3


def test_darknet_detector_valid_gives_our_detections_of_the_shipped_weights(scenes, tmp_path):
    from benchmarks.finetune_yolo import read_detector_valid, yolo_scratch
    work = yolo_scratch(tmp_path, scenes)
    lines, ev, results = assert_darknet_valid_gives_ours(
        work, DETECTION / "yolo-fashion-tiny.cfg", DETECTION / "yolo-fashion-tiny.weights")
    assert lines > 50  # thresh .005 keeps many boxes per scene
    # darknet's files read back and scored as the fixture's darknet figure was
    theirs = voc_map(read_detector_valid(work / "results", ev), ev.truths, ev.classes).mean
    assert theirs == pytest.approx(ev.score(results), abs=1e-3)
    assert METRICS["map50"]["darknet_test"] == pytest.approx(METRICS["map50"]["ours_test"],
                                                             abs=5e-3)


def test_the_vendor_flow_on_the_fixture_gives_a_model_darknet_and_opencv_run_as_we_do(
        scenes, tmp_path):
    """ana (one ratio, 8 scenes: the command, not its cost), prune at 0.5, finetune 2 batches
    and transform, each through its command; then the transformed model in darknet and in
    OpenCV. The full-size run with figures is ``benchmarks/finetune.py --only yolo``."""
    need_module("torch")
    need_module("cv2")
    from benchmarks.commands import run_logged
    from benchmarks.finetune_yolo import (CFG, FINAL, PRUNED_CFG, TRANSFORMED, WEIGHTS,
                                          yolo_scratch)
    from oracle_darknet import check_against_opencv
    work = yolo_scratch(tmp_path, scenes)
    pruning = work / "yolo-pruning.cfg"
    pruning.write_text(pruning.read_text().replace("ratios=0.1,0.3,0.5,0.7,0.9", "ratios=0.5"))
    lines = (work / "test.txt").read_text().splitlines(True)
    (work / "yolo-ana-valid.txt").write_text("".join(lines[:8]))
    run_logged(work, 1, "vai_p_darknet", "pruner", "ana", pruning.name, WEIGHTS, "-no_progress")
    run_logged(work, 1, "vai_p_darknet", "pruner", "prune", pruning.name, WEIGHTS)
    run_logged(work, 1, "vai_p_darknet", "pruner", "finetune", pruning.name, "-max_batches", "2")
    run_logged(work, 1, "vai_p_darknet", "pruner", "transform", PRUNED_CFG, FINAL, "-o", TRANSFORMED)
    cfg, weights = work / (TRANSFORMED + ".cfg"), work / (TRANSFORMED + ".weights")
    ops = [cs.stat(cs.load(c)).total.ops for c in (work / CFG, cfg)]
    assert 0.45 <= 1 - ops[1] / ops[0] <= 0.55, ops  # rate=0.5 of the operations
    final = cs.load(cfg, weights)
    assert final.origin.header.seen == 64  # -clear, then 2 x batch 32
    errors = check_against_opencv(cfg, tmp_path, prepared=(final, weights))
    assert {"out:yolo_16", "out:yolo_23"} <= set(errors)
    assert assert_darknet_valid_gives_ours(work, cfg, weights)[0] > 0
