"""The trained Fashion-MNIST fixture (fixtures/fashion/): accuracy, Caffe/Darknet twins, oracles.

Regenerate with ``python -m tools.train_fashion_fixture`` (needs torch); these tests only
read the stored files and the Debian ``dataset-fashion-mnist`` package.
"""
from __future__ import annotations

import gzip
import itertools
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from assets import darknet_binary, need_module, needs
from tools import fashion_mnist as fm

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures" / "fashion"
DEPLOY, TRAIN_VAL, MODEL = FIX / "fashion_deploy.prototxt", FIX / "fashion_train_val.prototxt", FIX / "fashion.caffemodel"
CFG, WEIGHTS = FIX / "fashion.cfg", FIX / "fashion.weights"
N = 1000

needs_data = needs(
    all((fm.DATASET_DIR / f"t10k-{k}-idx{d}-ubyte.gz").is_file() for k, d in (("images", 3), ("labels", 1))),
    "Debian package dataset-fashion-mnist is not installed")


def test_class_names_are_darknet_safe():
    names = fm.CLASS_NAMES
    assert len(names) == 10 and len(set(names)) == 10
    for a, b in itertools.permutations(names, 2):
        assert a not in b, f"{a!r} is a substring of {b!r}: darknet's strstr labelling would mix them"
    for n in names:
        assert n.isalnum() and n.islower(), n
        # the fixture's own paths must not label every image as one class
        assert n not in str(FIX / "t10k" / "00000.png").lower(), n


def test_names_file_matches_class_names():
    assert (FIX / "fashion.names").read_text().split("\n")[:10] == list(fm.CLASS_NAMES)
    data = dict(l.split("=", 1) for l in (FIX / "fashion.data").read_text().split())
    assert data["classes"] == "10" and data["names"] == "fashion.names"


def test_read_idx_rejects_bad_input(tmp_path):
    with pytest.raises(ModelError, match="kind"):
        fm.read_idx("validation")
    with pytest.raises(ModelError, match="dataset-fashion-mnist"):
        fm.read_idx("t10k", directory=tmp_path)
    # labels file with an image magic number
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000803 00000001 00000002 00000002") + bytes(4))
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000803 00000001") + bytes(1))
    with pytest.raises(ModelError, match="magic"):
        fm.read_idx("t10k", directory=tmp_path)
    # truncated payload
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000801 00000002") + bytes(1))
    with pytest.raises(ModelError, match="payload"):
        fm.read_idx("t10k", directory=tmp_path)
    with gzip.open(tmp_path / "t10k-labels-idx1-ubyte.gz", "wb") as f:
        f.write(bytes.fromhex("00000801 00000001") + bytes([3]))
    images, labels = fm.read_idx("t10k", directory=tmp_path)
    assert images.shape == (1, 2, 2) and images.dtype == np.uint8
    assert labels.tolist() == [3] and labels.dtype == np.int64


@needs_data
def test_image_folder_round_trips_pixels(tmp_path):
    from PIL import Image
    images, labels = fm.read_idx("t10k")
    paths = fm.write_image_folder(tmp_path, "t10k", count=3, images=images, labels=labels)
    listed = (tmp_path / "t10k_list.txt").read_text().split("\n")
    valid = (tmp_path / "t10k_valid.txt").read_text().split()
    for i, (path, label) in enumerate(paths):
        assert np.array_equal(np.asarray(Image.open(path)), images[i])
        assert listed[i] == f"{path.name} {labels[i]}" and label == labels[i]
        assert valid[i] == f"t10k/{path.name}" and fm.CLASS_NAMES[label] in valid[i]


@needs_data
@pytest.mark.parametrize("kind,count", [("t10k", 500), ("train", 64)])
def test_shipped_images_are_the_first_of_the_dataset(kind, count):
    """The quick start's images and their lists are the dataset's, pixel for pixel."""
    from PIL import Image
    images, labels = fm.read_idx(kind)
    listed = (FIX / f"{kind}_list.txt").read_text().splitlines()
    valid = (FIX / fm.DARKNET_LISTS[kind]).read_text().splitlines()
    files = sorted(p.name for p in (FIX / kind).iterdir())
    assert len(listed) == len(valid) == len(files) == count
    for i, line in enumerate(listed):
        name, label = line.split()
        assert name == files[i] and int(label) == labels[i]
        assert valid[i] == f"{kind}/{name}" and fm.CLASS_NAMES[labels[i]] in name
        assert np.array_equal(np.asarray(Image.open(FIX / kind / name)), images[i]), name


@pytest.fixture(scope="module")
def data():
    images, labels = fm.read_idx("t10k")
    return (images[:N, None].astype(np.float32) * np.float32(1 / 255)), labels[:N]


@pytest.fixture(scope="module")
def caffe_out(data):
    x, _ = data
    ex = Executor(cs.load(DEPLOY, MODEL))
    parts = [ex.run({"data": x[i:i + 250]}, ["prob"])["prob"] for i in range(0, N, 250)]
    return np.concatenate(parts).reshape(N, 10)


@needs_data
def test_caffe_accuracy_matches_recorded(data, caffe_out):
    _, labels = data
    metrics = json.loads((FIX / "metrics.json").read_text())
    acc = float((caffe_out.argmax(1) == labels).mean())
    assert abs(acc - metrics["t10k_first1000_top1"]) <= 0.01, (acc, metrics["t10k_first1000_top1"])
    assert metrics["t10k_top1"]["torch"] >= 0.88
    assert np.allclose(caffe_out.sum(1), 1, atol=1e-5)


@needs_data
def test_darknet_twin_agrees_with_caffe(data, caffe_out):
    x, _ = data
    g = cs.load(CFG, WEIGHTS)
    out = g.layers[-1].name
    assert g.layers[-1].type == "softmax"
    ex = Executor(g, darknet_bn="pjreddie")
    dk = np.concatenate([ex.run({"data": x[i:i + 250]}, [out])[out] for i in range(0, N, 250)]).reshape(N, 10)
    assert (dk.argmax(1) == caffe_out.argmax(1)).mean() >= 0.999
    assert np.abs(dk - caffe_out).max() <= 1e-4


@needs_data
def test_train_val_accuracy_layers(data, caffe_out):
    """TEST phase of the train_val net: its top-1/top-5 blobs agree with the deploy probs."""
    x, labels = data
    g = cs.load(TRAIN_VAL, MODEL, phase="TEST")
    assert set(g.outputs) == {"top-1", "top-5", "loss"}
    out = Executor(g).run({"data": x[:50], "label": labels[:50].astype(np.float32)})
    assert float(out["top-1"]) == pytest.approx(float((caffe_out[:50].argmax(1) == labels[:50]).mean()))
    top5 = np.argsort(-caffe_out[:50], 1)[:, :5]
    assert float(out["top-5"]) == pytest.approx(float((top5 == labels[:50, None]).any(1).mean()))
    nll = -np.log(caffe_out[np.arange(50), labels[:50]]).mean()
    assert float(out["loss"]) == pytest.approx(nll, rel=1e-4)
    assert [l.type for l in cs.load(TRAIN_VAL, MODEL, phase="TRAIN").layers][-1] == "SoftmaxWithLoss"


@needs_data
def test_opencv_agrees(data, caffe_out):
    cv2 = need_module("cv2")
    x, _ = data
    net = cv2.dnn.readNetFromCaffe(str(DEPLOY), str(MODEL))
    net.setInput(x[:200])
    theirs = net.forward("prob").reshape(200, 10)
    assert np.abs(theirs - caffe_out[:200]).max() <= 1e-4


@needs_data
def test_darknet_binary_predicts_like_our_engine(tmp_path, caffe_out):
    exe = str(darknet_binary())
    for f in ("fashion.cfg", "fashion.weights", "fashion.names", "fashion.data"):
        shutil.copy(FIX / f, tmp_path / f)
    paths = fm.write_image_folder(tmp_path, "t10k", count=3)
    for i, (path, _) in enumerate(paths):
        run = subprocess.run([exe, "classifier", "predict", "fashion.data", "fashion.cfg", "fashion.weights",
                              str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert run.returncode == 0, run.stderr[-500:]
        pct, name = next(l for l in run.stdout.splitlines() if "%: " in l).split("%: ")
        assert name.strip() == fm.CLASS_NAMES[int(caffe_out[i].argmax())]
        assert float(pct) / 100 == pytest.approx(float(caffe_out[i].max()), abs=1e-3)
