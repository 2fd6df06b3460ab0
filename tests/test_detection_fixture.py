"""tools/make_detection_fixture.py: Fashion-MNIST detection scenes for Darknet and SSD.

Boxes are recomputed from the written pixels (items are bright, the texture dark), the
SSD LMDB is read back through the AnnotatedData reader, and libdarknet's
``load_data_detection`` loads the Darknet side.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import libdarknet_data_oracle as oracle
from assets import fashion_data, need_module, needs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation.caffe_data import AnnotatedLmdbSource
from caffe_surgeon.evaluation.caffe_transform import resolver
from caffe_surgeon.training.darknet_data import DetectionTrainData, SeededRand
from caffe_surgeon.training.darknet_sample import Augmentation, detection_batch
from tools.fashion_mnist import CLASS_NAMES, read_idx
from tools.make_detection_fixture import main, make_detection_fixture

SIZE = 160
CFG = """[net]
batch=8
width=160
height=160
channels=3
hue=.1
saturation=1.5
exposure=1.5

[convolutional]
filters=45
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=20,20, 40,40, 60,60
classes=10
num=3
jitter=.2
random=0
"""


@pytest.fixture(scope="module")
def fixture_set(tmp_path_factory):
    fashion_data()
    need_module("lmdb")
    out = tmp_path_factory.mktemp("det") / "set"
    data = make_detection_fixture(out, train=16, test=6, size=SIZE, seed=5)
    (out / "net.cfg").write_text(CFG)
    return out, data


def label_rows(path: Path) -> np.ndarray:
    rows = [list(map(float, line.split())) for line in path.read_text().splitlines()]
    return np.asarray(rows, np.float64).reshape(-1, 5)


def pixel_boxes(rows: np.ndarray) -> list[tuple[int, int, int, int]]:
    """Darknet rows -> (x0, y0, x1, y1) pixels, right/bottom exclusive."""
    out = []
    for _, cx, cy, w, h in rows:
        out.append(tuple(int(round(v * SIZE)) for v in (cx - w / 2, cy - h / 2, cx + w / 2,
                                                         cy + h / 2)))
    return out


def scenes(out: Path, split: str):
    for line in (out / f"{split}.txt").read_text().splitlines():
        image = np.asarray(Image.open(out / line).convert("RGB"))
        label = out / line.replace("images", "labels", 1).replace(".png", ".txt")
        yield line, image, label_rows(label)


@pytest.mark.parametrize("split", ["train", "test"])
def test_labels_are_the_tight_boxes_of_the_pasted_items_pixels(fixture_set, split):
    out, _ = fixture_set
    counts = []
    for _, image, rows in scenes(out, split):
        assert image.shape == (SIZE, SIZE, 3)
        bright = image.max(axis=2) > 127  # items are drawn >= 140, the texture <= 115
        covered = np.zeros_like(bright)
        boxes = pixel_boxes(rows)
        for x0, y0, x1, y1 in boxes:
            inside = bright[y0:y1, x0:x1]
            # the box is the item's nonzero bounding box: every edge row/column is touched
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
            assert not covered[y0:y1, x0:x1].any()  # boxes never overlap
            covered[y0:y1, x0:x1] = True
        assert not (bright & ~covered).any()  # no item pixel outside the boxes
        assert set(rows[:, 0].astype(int)) <= set(range(10))
        counts.append(len(rows))
    assert min(counts) >= 1 and max(counts) <= 6 and len(set(counts)) > 1


def test_the_manifest_names_the_fashion_items_of_each_box(fixture_set):
    out, _ = fixture_set
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["classes"] == list(CLASS_NAMES) and manifest["seed"] == 5
    for split, kind in (("train", "train"), ("test", "t10k")):
        _, labels = read_idx(kind)
        for scene, (_, _, rows) in zip(manifest[split], scenes(out, split)):
            assert [tuple(i["box"]) for i in scene["items"]] == pixel_boxes(rows)
            for item, row in zip(scene["items"], rows):
                source = int(item["source"].split("[")[1].rstrip("]"))
                assert item["source"].startswith(kind + "[")
                assert item["class"] == int(row[0]) == labels[source]


@pytest.mark.parametrize("split", ["train", "test"])
def test_the_ssd_lmdb_holds_the_same_images_and_boxes_as_the_darknet_files(fixture_set, split):
    out, _ = fixture_set
    source = AnnotatedLmdbSource({"source": f"{split}_lmdb", "backend": "LMDB"}, resolver(out),
                                 "data", "train_val.prototxt", force_color=True)
    listed = list(scenes(out, split))
    images, boxes = source.load(len(source))
    assert len(source) == len(listed)
    keys = [k.decode() for k in source.keys()]
    assert keys == [f"{i:08d}_{line}" for i, (line, _, _) in enumerate(listed)]
    for (line, image, rows), lmdb_image, lmdb_boxes in zip(listed, images, boxes):
        np.testing.assert_array_equal(lmdb_image.transpose(1, 2, 0)[:, :, ::-1], image)  # BGR
        ours = sorted((int(g) - 1, x0, y0, x1, y1) for g, _, x0, y0, x1, y1, _ in lmdb_boxes)
        theirs = sorted((int(c), cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
                        for c, cx, cy, w, h in rows)
        assert [r[0] for r in ours] == [r[0] for r in theirs]
        np.testing.assert_allclose([r[1:] for r in ours], [r[1:] for r in theirs], atol=2e-6)
        # instance ids count within each label group
        for g in set(lmdb_boxes[:, 0]):
            ids = lmdb_boxes[lmdb_boxes[:, 0] == g, 1]
            assert list(ids) == list(range(len(ids)))
    labelmap = (out / "labelmap.prototxt").read_text()
    assert 'name: "background"\n  label: 0' in labelmap and 'name: "ankleboot"\n  label: 10' in labelmap


def test_our_darknet_loader_reads_the_set(fixture_set):
    out, data_file = fixture_set
    data = DetectionTrainData(data_file, out / "net.cfg", base_dir=out, augment=False, workers=0)
    assert len(data.items) == 16 and data.settings.classes == 10
    images, truths, picks = detection_batch(8, SeededRand(0, 0, 0), data.load, 16, SIZE, SIZE,
                                            Augmentation.off())
    again = data.batch(0)
    assert again[0].tobytes() == images.tobytes() and again[1].tobytes() == truths.tobytes()
    for image, truth, pick in zip(images, truths, picks):
        line, pixels, rows = list(scenes(out, "train"))[pick]
        np.testing.assert_allclose(image, pixels.transpose(2, 0, 1) / 255., rtol=0, atol=1e-6)
        kept = truth[truth[:, 2] > 0]
        assert len(kept) == len(rows) and not truth[len(kept):].any()
        np.testing.assert_allclose(sorted(map(tuple, kept[:, [4, 0, 1, 2, 3]].tolist())),
                                   sorted(map(tuple, rows.tolist())), atol=2e-6)


@needs(oracle.available(), "libdarknet not installed (Debian package darknet)")
def test_libdarknet_loads_the_set_as_our_loader_does(fixture_set):
    out, data_file = fixture_set
    data = DetectionTrainData(data_file, out / "net.cfg", base_dir=out, workers=0)
    X, y, rands = oracle.load_detection(out / "o.npz", 3, 2000, 8, SIZE, SIZE, 10, .2, .1, 1.5,
                                        1.5, [i.written for i in data.items], cwd=out)
    it = iter(rands.tolist())
    images, truths, _ = detection_batch(8, lambda: next(it), data.load, 16, SIZE, SIZE,
                                        data.augmentation)
    assert (y[:, :, 2] > 0).sum() >= 8
    np.testing.assert_array_equal(images, X)
    np.testing.assert_array_equal(truths, y)


def test_the_same_seed_gives_byte_identical_files_and_another_seed_another_set(tmp_path):
    fashion_data()
    need_module("lmdb")
    runs = {}
    for name, seed in (("a", 2), ("b", 2), ("c", 3)):
        make_detection_fixture(tmp_path / name, train=3, test=2, size=96, seed=seed)
        runs[name] = {p.relative_to(tmp_path / name).as_posix(): p.read_bytes()
                      for p in sorted((tmp_path / name).rglob("*")) if p.is_file()}
    assert "train_lmdb/data.mdb" in runs["a"] and "train_lmdb/lock.mdb" not in runs["a"]
    assert runs["a"] == runs["b"]
    assert runs["a"].keys() == runs["c"].keys()
    assert runs["a"]["images/train/000000.png"] != runs["c"]["images/train/000000.png"]


def test_bad_arguments_and_an_existing_output_are_refused_leaving_nothing(tmp_path, capsys):
    fashion_data()
    (tmp_path / "taken").mkdir()
    with pytest.raises(ModelError, match="taken: the output folder already exists"):
        make_detection_fixture(tmp_path / "taken", train=1, test=1)
    with pytest.raises(ModelError, match="--train must be an integer >= 1, got 0"):
        make_detection_fixture(tmp_path / "new", train=0)
    with pytest.raises(ModelError, match="Fashion-MNIST file missing"):
        make_detection_fixture(tmp_path / "new", train=1, test=1, dataset_dir=tmp_path / "none")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no half-built set
    assert main([str(tmp_path / "taken"), "--train", "1", "--test", "1"]) == 2
    assert "already exists" in capsys.readouterr().err


def test_the_readme_command_builds_a_set(tmp_path):
    fashion_data()
    need_module("lmdb")
    tool = Path(__file__).resolve().parents[1] / "tools" / "make_detection_fixture.py"
    proc = subprocess.run([sys.executable, str(tool), str(tmp_path / "set"), "--train", "2",
                           "--test", "1", "--size", "96", "--seed", "4"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "wrote 2 train and 1 test scenes" in proc.stdout
    data = (tmp_path / "set" / "fashion_detection.data").read_text()
    assert "train = train.txt" in data and "classes = 10" in data
    assert (tmp_path / "set" / "test.txt").read_text() == "images/test/000000.png\n"
