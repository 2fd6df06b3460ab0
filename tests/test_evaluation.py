"""Evaluation from a model's own data (caffe_surgeon.evaluation) against independent figures.

Caffe: the real LeNet (shared zoo) in a train_val net fed by ImageData, by an LMDB of raw
Datums and by an LMDB of PNG Datums gives the same feeds and the same accuracy as a direct
computation on the idx arrays (our engine, and OpenCV's cv2.dnn for the predictions);
mean_file, crop_size and wrap-around are checked against hand-built arrays. Darknet: the
Fashion fixture's twin against the Debian ``darknet classifier valid`` binary; yolov3-tiny
against ``darknet detector valid`` (result files line by line); VOC mAP on hand-computed
cases. Skips cleanly without the Fashion-MNIST package, the zoo, the fixture or the binary.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.caffe import caffe_pb2
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import CaffeEvaluator, DarknetClassifierEvaluator
from caffe_surgeon.images.caffe_image import cv_resize_linear, jpeg_roundtrip

from assets import (DARKNET_SHARE, FASHION_DATA, darknet_binary, fashion_data, need_module, needs,
                    zoo)

ROOT = Path(__file__).resolve().parents[1]
FASHION = FASHION_DATA
FIX = ROOT / "fixtures" / "fashion"
DEBIAN_DATA = DARKNET_SHARE / "data"
N = 500            # t10k images for the LeNet and twin checks
BATCH, ITERS = 50, 10
SCALE = 0.00390625  # the LeNet example's transform scale

needs_fashion = needs(FASHION.is_dir(), "Debian package dataset-fashion-mnist is not installed")


def darknet_bin() -> str:
    return str(darknet_binary())


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def fashion(tmp_path_factory):
    fashion_data()
    from tools.fashion_mnist import read_idx
    from tools.make_fashion_data import make_fashion_data
    root = tmp_path_factory.mktemp("fashion")
    paths = make_fashion_data(root, N, encoded=True)
    images, labels = read_idx("t10k")
    return root, paths, images[:N], labels[:N]


@pytest.fixture(scope="module")
def lenet():
    deploy = zoo("caffe/weights/lenet_mnist_deploy.prototxt")
    model = zoo("caffe/weights/lenet_iter_10000.caffemodel")
    return deploy, model


def lenet_train_val(deploy: Path, data_layer: str, path: Path) -> Path:
    """The zoo's LeNet body between a TEST data layer and Accuracy top-1/top-5 + loss."""
    text = deploy.read_text()
    body = text[text.index("layer {", text.index('type: "Input"')):]   # from conv1 on
    body = body[:body.rindex("layer {")]                                # without the Softmax
    path.write_text(f'name: "LeNet"\n{data_layer}\n{body}' + """
layer { name: "top1" type: "Accuracy" bottom: "ip2" bottom: "label" top: "top-1"
  include { phase: TEST } }
layer { name: "top5" type: "Accuracy" bottom: "ip2" bottom: "label" top: "top-5"
  include { phase: TEST } accuracy_param { top_k: 5 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
""")
    return path


def image_data_layer(source, root="t10k/", batch=BATCH, transform=f"scale: {SCALE}", extra=""):
    return (f'layer {{ name: "data" type: "ImageData" top: "data" top: "label" include {{ phase: TEST }}\n'
            f'  transform_param {{ {transform} }}\n'
            f'  image_data_param {{ source: "{source}" root_folder: "{root}" batch_size: {batch} '
            f'is_color: false {extra} }} }}')


def lmdb_layer(source, batch=BATCH, transform=f"scale: {SCALE}"):
    return (f'layer {{ name: "mnist" type: "Data" top: "data" top: "label" include {{ phase: TEST }}\n'
            f'  transform_param {{ {transform} }}\n'
            f'  data_param {{ source: "{source}" backend: LMDB batch_size: {batch} }} }}')


def caffe_accuracy(scores: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Caffe's Accuracy hit per image: fewer than k classes score strictly higher."""
    higher = (scores > scores[np.arange(len(labels)), labels][:, None]).sum(1)
    return higher < k


# ---------------------------------------------------------------- Caffe: LeNet, three sources
@needs_fashion
def test_lenet_imagedata_lmdb_and_direct_computation_agree(fashion, lenet, tmp_path):
    root, paths, images, labels = fashion
    deploy, model = lenet
    layers = {"imagedata": image_data_layer("t10k_list.txt"),
              "lmdb": lmdb_layer("t10k_lmdb"), "lmdb_png": lmdb_layer("t10k_lmdb_encoded")}
    direct_x = images[:, None].astype(np.float32) * np.float32(SCALE)
    feeds, scores = {}, {}
    for name, layer in layers.items():
        proto = lenet_train_val(deploy, layer, tmp_path / f"{name}.prototxt")
        g = cs.load(proto, model, phase="TEST")
        evs = {acc: CaffeEvaluator(g, acc, test_iter=ITERS, base_dir=root)
               for acc in ("top-1", "top-5", "loss")}
        # one forward pass serves all three metrics: score() reads only its own top
        ex = Executor(g)
        results = [ex.run(feed, outputs=["top-1", "top-5", "loss"]) for feed in evs["top-1"].feeds]
        scores[name] = {acc: ev.score(results) for acc, ev in evs.items()}
        feeds[name] = evs["top-1"].feeds
        assert evs["top-1"].evaluate(g) == scores[name]["top-1"]
        again = evs["top-1"].decode()  # the data read again (a database is opened again)
        assert len(again) == ITERS and all(np.array_equal(a[k], b[k]) for a, b in
                                           zip(again, feeds[name]) for k in a)
        assert evs["top-1"].input_shapes == {"data": (BATCH, 1, 28, 28), "label": (BATCH,)}
        # resuming from cached prefix activations (as ana does) scores the same
        stop = g.index("ip1")
        caches = [ex.prefix(feed, stop) for feed in evs["loss"].feeds]
        assert evs["loss"].score([ex.run(cache=c, start=stop, **evs["loss"].run_args)
                                  for c in caches]) == scores[name]["loss"]
    for name in ("lmdb", "lmdb_png"):  # bit-identical inputs, labels and metrics
        for a, b in zip(feeds["imagedata"], feeds[name]):
            assert np.array_equal(a["data"], b["data"]) and np.array_equal(a["label"], b["label"])
        assert scores[name] == scores["imagedata"]
    assert np.array_equal(np.concatenate([f["data"] for f in feeds["imagedata"]]), direct_x)

    logits = Executor(cs.load(deploy, model)).run({"data": direct_x}, outputs=["ip2"])["ip2"]
    top1, top5 = (caffe_accuracy(logits, labels, k).mean() for k in (1, 5))
    logp = logits.astype(np.float64) - logits.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    loss = -logp[np.arange(N), labels].mean()
    got = scores["imagedata"]
    assert abs(got["top-1"] - top1) < 1e-6 and abs(got["top-5"] - top5) < 1e-6
    assert abs(got["loss"] - loss) < 1e-5 * max(1.0, loss)
    print(f"LeNet on {N} Fashion-MNIST t10k: top-1 {got['top-1']:.4f} top-5 {got['top-5']:.4f} "
          f"loss {got['loss']:.4f} (direct: {top1:.4f} {top5:.4f} {loss:.4f})")

    cv2 = need_module("cv2")
    net = cv2.dnn.readNetFromCaffe(str(deploy), str(model))
    net.setInput(direct_x)
    theirs = net.forward().reshape(N, -1)
    assert (theirs.argmax(1) == logits.argmax(1)).mean() >= 0.998
    assert abs((theirs.argmax(1) == labels).mean() - top1) <= 0.002


@needs_fashion
def test_fashion_fixture_caffe_and_darknet_twins_give_the_same_top1(fashion):
    root, paths, images, labels = fashion
    g = cs.load(FIX / "fashion_train_val.prototxt", FIX / "fashion.caffemodel", phase="TEST")
    caffe_top1 = CaffeEvaluator(g, "top-1", test_iter=N // 50, base_dir=root).evaluate(g)
    dg = cs.load(FIX / "fashion.cfg", FIX / "fashion.weights")
    ev = DarknetClassifierEvaluator(paths["data"], dg, metric="top-5", base_dir=root, batch_size=100)
    results = ev.run(dg)
    acc = ev.accuracies(results)
    direct = Executor(dg).run({"data": images[:, None] / np.float32(255)}, outputs=[dg.outputs[0]])
    want = (direct[dg.outputs[0]].reshape(N, -1).argmax(1) == labels).mean()
    assert acc["top-1"] == pytest.approx(want, abs=1e-6)
    assert caffe_top1 == pytest.approx(want, abs=1e-6)
    assert ev.score(results) == acc["top-5"] >= acc["top-1"] > 0.85
    print(f"fashion twins on {N} images: caffe top-1 {caffe_top1:.4f}, darknet top-1 "
          f"{acc['top-1']:.4f} top-5 {acc['top-5']:.4f}")


# ---------------------------------------------------------------- Caffe: transform, wrap-around
def write_blob(path: Path, array: np.ndarray) -> Path:
    blob = caffe_pb2.BlobProto(num=1, channels=array.shape[0], height=array.shape[1],
                               width=array.shape[2])
    blob.data.extend(array.astype(np.float32).reshape(-1).tolist())
    path.write_bytes(blob.SerializeToString())
    return path


def write_raw_lmdb(path: Path, images: np.ndarray, labels) -> Path:
    from tools.make_fashion_data import write_lmdb
    write_lmdb(path, images, labels, encoded=False)
    return path


@needs_fashion
def test_mean_file_and_centre_crop_follow_caffe(fashion, lenet, tmp_path):
    """33 x 31 images, mean file of that size, crop 28: (pixel - mean) * scale at offset (2, 1)."""
    root, paths, images, labels = fashion
    deploy, model = lenet
    from PIL import Image
    n = 40
    padded = np.zeros((n, 33, 31), np.uint8)
    padded[:, 1:29, 2:30] = images[:n]          # deliberately off-centre
    padded[:, 30:, :] = 200                     # and content the crop must cut
    (tmp_path / "big").mkdir()
    lines = []
    for i in range(n):
        Image.fromarray(padded[i]).save(tmp_path / "big" / f"{i}.png")
        lines.append(f"{i}.png {labels[i]}\n")
    (tmp_path / "big.txt").write_text("".join(lines))
    write_raw_lmdb(tmp_path / "big_lmdb", padded, labels[:n])
    mean = padded.astype(np.float64).mean(0)[None] + 0.25
    write_blob(tmp_path / "mean.binaryproto", mean)
    transform = f'scale: {SCALE} crop_size: 28 mean_file: "mean.binaryproto" mirror: false'
    f32 = padded[:, None].astype(np.float32)
    want = ((f32 - mean.astype(np.float32)) * np.float32(SCALE))[:, :, 2:30, 1:29]

    def evaluator(layer: str, test_iter: int = 5) -> CaffeEvaluator:
        net = cs.load(lenet_train_val(deploy, layer, tmp_path / "d.prototxt"), phase="TEST")
        return CaffeEvaluator(net, "top-1", test_iter=test_iter, base_dir=tmp_path)

    # A Data layer's channel count is only known from its database (the prototxt would say 3
    # with crop_size): the grey caffemodel loads against it and runs on the 1-channel records.
    g = cs.load(lenet_train_val(deploy, lmdb_layer("big_lmdb", 8, transform),
                                tmp_path / "m.prototxt"), model, phase="TEST")
    assert g.layers[1].weights["weight"].shape[1] == 1
    logits = Executor(cs.load(deploy, model)).run({"data": want}, outputs=["ip2"])["ip2"]
    per_batch = caffe_accuracy(logits, labels[:n], 1).reshape(5, 8).mean(1)
    for layer in (image_data_layer("big.txt", "big/", 8, transform), lmdb_layer("big_lmdb", 8, transform),
                  # raw records keep their channels whatever force_color says (Caffe decodes
                  # only encoded records with it): the grey model loads and runs on them
                  lmdb_layer("big_lmdb", 8, f"{transform} force_color: true")):
        ev = evaluator(layer)
        got = np.concatenate([f["data"] for f in ev.feeds])
        assert got.shape == (n, 1, 28, 28) and np.array_equal(got, want)
        assert ev.evaluate(g) == pytest.approx(per_batch.mean(), abs=1e-6)
    forced = cs.load(lenet_train_val(deploy, lmdb_layer("big_lmdb", 8, f"{transform} force_color: true"),
                                     tmp_path / "f.prototxt"), model, phase="TEST")
    assert ev.evaluate(forced) == pytest.approx(per_batch.mean(), abs=1e-6)

    got = evaluator(image_data_layer("big.txt", "big/", 8, f"scale: {SCALE} mean_value: 33 crop_size: 28"),
                    1).feeds[0]["data"]
    assert np.array_equal(got, ((f32[:8] - 33) * np.float32(SCALE))[:, :, 2:30, 1:29])

    write_blob(tmp_path / "small.binaryproto", mean[:, :28, :28])
    bad = transform.replace("mean.binaryproto", "small.binaryproto")
    with pytest.raises(ModelError, match=r"small.binaryproto has shape .*\(1, 28, 28\).*\(1, 33, 31\)"):
        evaluator(image_data_layer("big.txt", "big/", 8, bad))
    with pytest.raises(ModelError, match="both mean_file and mean_value"):
        evaluator(image_data_layer("big.txt", "big/", 8, f"{transform} mean_value: 3"))

@needs_fashion
def test_batches_wrap_around_like_caffe_data_layers(fashion, lenet, tmp_path):
    """7 records, batch 3, 4 iterations: records 012 345 601 234 (the list/cursor restarts)."""
    root, paths, images, labels = fashion
    deploy, model = lenet
    first = sorted(p.name for p in (root / "t10k").iterdir())[:7]
    (tmp_path / "seven.txt").write_text("".join(f"{n} {labels[i]}\n" for i, n in enumerate(first)))
    write_raw_lmdb(tmp_path / "seven_lmdb", images[:7], labels[:7])
    order = [[0, 1, 2], [3, 4, 5], [6, 0, 1], [2, 3, 4]]
    logits = Executor(cs.load(deploy, model)).run(
        {"data": images[:7, None] * np.float32(SCALE)}, outputs=["ip2"])["ip2"]
    hits = caffe_accuracy(logits, labels[:7], 1)
    want = np.float32(0)
    for idx in order:  # Caffe: float sum of the per-batch accuracies, divided by test_iter
        want = np.float32(want + np.float32(hits[idx].mean()))
    for layer in (image_data_layer("seven.txt", str(root / "t10k") + "/", 3), lmdb_layer("seven_lmdb", 3)):
        g = cs.load(lenet_train_val(deploy, layer, tmp_path / "w.prototxt"), model, phase="TEST")
        ev = CaffeEvaluator(g, "top-1", test_iter=4, base_dir=tmp_path)
        assert [list(o) for o in ev.record_order] == order
        assert [list(f["label"]) for f in ev.feeds] == [list(labels[idx].astype(np.float32)) for idx in order]
        assert ev.evaluate(g) == float(np.float32(want / np.float32(4)))


def test_resize_is_bit_exact_with_opencv():
    cv2 = need_module("cv2")
    rng = np.random.default_rng(5)
    for (h, w, c), (nh, nw) in [((28, 28, 1), (32, 32)), ((37, 53, 3), (64, 31)),
                                ((480, 640, 3), (227, 227)), ((5, 7, 1), (3, 11))]:
        img = rng.integers(0, 256, (h, w, c), np.uint8)
        want = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_LINEAR).reshape(nh, nw, c)
        assert np.array_equal(cv_resize_linear(img, nh, nw), want), (h, w, nh, nw)


@pytest.mark.parametrize("mode", ["native", "color", "gray"])
def test_jpeg_round_trip_is_opencvs_imencode_then_imdecode(mode):
    # SSD's CropImage stores a sampled encoded record with cv::imencode(".jpg") (default
    # quality 95, 4:2:0) and the transformer decodes it again with the layer's mode
    cv2 = need_module("cv2")
    flag = {"native": cv2.IMREAD_UNCHANGED, "color": cv2.IMREAD_COLOR,
            "gray": cv2.IMREAD_GRAYSCALE}[mode]
    rng = np.random.default_rng(6)
    photo = Path("/usr/share/darknet/data/dog.jpg")
    images = [rng.integers(0, 256, (37, 53, 3), np.uint8), rng.integers(0, 256, (17, 9, 1), np.uint8),
              rng.integers(0, 256, (31, 45, 4), np.uint8)]  # OpenCV's encoder drops alpha
    if photo.exists():
        images.append(cv2.imread(str(photo)))
    for img in images:
        if mode == "color" and img.shape[2] != 3 or mode == "gray" and img.shape[2] != 1:
            continue  # the first decode already gave the mode's channels
        want = cv2.imdecode(cv2.imencode(".jpg", img)[1], flag)
        want = want.reshape(want.shape[0], want.shape[1], -1).transpose(2, 0, 1)
        got = jpeg_roundtrip(np.ascontiguousarray(img.transpose(2, 0, 1)), mode)
        assert got.dtype == np.uint8 and np.array_equal(got, want), (mode, img.shape)
        assert not np.array_equal(got[:3], img.transpose(2, 0, 1)[:3])  # lossy: it matters


def test_imagedata_new_size_resizes_like_opencv(tmp_path, lenet):
    cv2 = need_module("cv2")
    deploy, _ = lenet
    img = np.random.default_rng(6).integers(0, 256, (40, 30), np.uint8)
    cv2.imwrite(str(tmp_path / "a.png"), img)
    (tmp_path / "l.txt").write_text("a.png 1\n")
    layer = image_data_layer("l.txt", "", 1, f"scale: {SCALE}", "new_height: 28 new_width: 28")
    g = cs.load(lenet_train_val(deploy, layer, tmp_path / "r.prototxt"), phase="TEST")
    got = CaffeEvaluator(g, "top-1", test_iter=1, base_dir=tmp_path).feeds[0]["data"]
    want = cv2.resize(img, (28, 28), interpolation=cv2.INTER_LINEAR).astype(np.float32) * np.float32(SCALE)
    assert np.array_equal(got[0, 0], want)


# ---------------------------------------------------------------- Caffe: errors
def test_caffe_errors_name_the_file_line_and_numbers(tmp_path, lenet):
    deploy, _ = lenet
    from PIL import Image
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "ok.png")
    (tmp_path / "broken.png").write_bytes(b"this is not a png")

    def evaluator(layer, acc="top-1", **kw):
        g = cs.load(lenet_train_val(deploy, layer, tmp_path / "e.prototxt"), phase="TEST")
        return CaffeEvaluator(g, acc, test_iter=1, base_dir=tmp_path, **kw)

    with pytest.raises(ModelError, match=r"missing\.txt: the image list .* does not exist"):
        evaluator(image_data_layer("missing.txt", ""))
    (tmp_path / "empty.txt").write_text("\n  \n")
    with pytest.raises(ModelError, match=r"empty\.txt: the image list is empty"):
        evaluator(image_data_layer("empty.txt", ""))
    (tmp_path / "bad.txt").write_text("ok.png 1\nbroken.png 2\n")
    with pytest.raises(ModelError, match=r"bad\.txt:2: cannot load .*broken\.png: cannot decode"):
        evaluator(image_data_layer("bad.txt", "", 2))
    (tmp_path / "gone.txt").write_text("ok.png 1\nok.png 1\nnothere.png 3\n")
    with pytest.raises(ModelError, match=r"gone\.txt:3: image .*nothere\.png listed here does not exist"):
        evaluator(image_data_layer("gone.txt", "", 3))
    (tmp_path / "nolabel.txt").write_text("ok.png 1\nok.png\n")
    with pytest.raises(ModelError, match=r"nolabel\.txt:2: expected 'path label'"):
        evaluator(image_data_layer("nolabel.txt", ""))
    (tmp_path / "ok.txt").write_text("ok.png 1\n")
    with pytest.raises(ModelError, match=r"e\.prototxt: acc_name 'accuracy' is not a top .*"
                                         r"candidate tops: top-1, top-5, loss"):
        evaluator(image_data_layer("ok.txt", ""), acc="accuracy")
    with pytest.raises(ModelError, match=r"no_db: the LMDB database \(source of layer 'mnist'\) "
                                         r"does not exist"):
        evaluator(lmdb_layer("no_db"))
    with pytest.raises(ModelError, match=r"layer 'mnist': data_param.backend is LEVELDB"):
        evaluator(lmdb_layer("no_db").replace("backend: LMDB ", ""))
    with pytest.raises(ModelError, match=r"new_height \(28\) and new_width \(0\) must be set together"):
        evaluator(image_data_layer("ok.txt", "", extra="new_height: 28"))


# ---------------------------------------------------------------- Darknet classifier
def _fixture_twin():
    return cs.load(FIX / "fashion.cfg", FIX / "fashion.weights")


@needs_fashion
def test_darknet_classifier_valid_matches_the_darknet_binary(fashion, tmp_path):
    """Square and non-square images (centre square crop + darknet resize) vs ``classifier valid``."""
    root, paths, images, labels = fashion
    dg = _fixture_twin()
    from PIL import Image
    shutil.copytree(root / "t10k", tmp_path / "t10k")
    names = sorted(p.name for p in (root / "t10k").iterdir())[:30]
    extra = []
    for i, name in enumerate(names[:10]):  # wider, taller and upscaled variants
        img = Image.open(root / "t10k" / name)
        size = [(40, 28), (28, 36), (57, 45)][i % 3]
        canvas = Image.new("L", (max(size[0], 28), max(size[1], 28)), 30 * i)
        canvas.paste(img, (i % 5, i % 3))
        out = f"wide/{i}_{name}"
        (tmp_path / "wide").mkdir(exist_ok=True)
        canvas.resize(size).save(tmp_path / out)
        extra.append(out)
    lines = [f"t10k/{n}" for n in names] + extra
    (tmp_path / "valid.txt").write_text("".join(f"{line}\n" for line in lines))
    shutil.copy(paths["names"], tmp_path / "fashion.names")
    (tmp_path / "f.data").write_text("classes=10\nvalid=valid.txt\nlabels=fashion.names\ntop=5\n")
    ev = DarknetClassifierEvaluator(tmp_path / "f.data", dg, metric="top-k", base_dir=tmp_path, batch_size=16)
    results = ev.run(dg)
    probs = np.concatenate([r[dg.outputs[0]] for r in results]).reshape(len(ev.items), -1)
    ours = ev.accuracies(results)

    proc = subprocess.run([darknet_bin(), "classifier", "valid", "f.data", str(FIX / "fashion.cfg"),
                           str(FIX / "fashion.weights")], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    preds = re.findall(r"^(\S+), (\d+), ([\d.]+), ([\d.]+), $", proc.stdout, re.M)
    assert [p[0] for p in preds] == [i.written for i in ev.items]
    assert [int(p[1]) for p in preds] == list(ev.truth)
    np.testing.assert_allclose(probs[:, :2], np.array([p[2:] for p in preds], float), atol=2e-6)
    top1, top5 = map(float, re.findall(r"top 1: ([\d.]+), top 5: ([\d.]+)", proc.stdout)[-1])
    assert (round(ours["top-1"], 6), round(ours["top-5"], 6)) == (top1, top5)
    assert ev.score(results) == ours["top-5"]


@needs_fashion
def test_darknet_classifier_label_free_agreement(fashion):
    root, paths, images, labels = fashion
    dg = _fixture_twin()
    ev = DarknetClassifierEvaluator(paths["data"], dg, label_free=True, base_dir=root,
                                    batch_size=100, max_images=200)
    assert ev.evaluate(dg) == 1.0
    conv = dg.layer("convolutional_2")
    w = dict(conv.weights, weights=conv.weights["weights"].copy())
    w["weights"][::2] = 0  # half the filters pruned to zero
    pruned = dataclasses.replace(dg, layers=[dataclasses.replace(l, weights=w) if l is conv else l
                                             for l in dg.layers])
    agree = ev.evaluate(pruned)
    assert 0.1 < agree < 1.0, agree


def test_darknet_classifier_errors(tmp_path):
    dg = _fixture_twin()
    from PIL import Image
    (tmp_path / "img").mkdir()
    for n in ("0_coat.png", "1_coat_dress.png", "2_nothing.png"):
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(tmp_path / "img" / n)
    (tmp_path / "bad.png").write_bytes(b"garbage")
    (tmp_path / "names").write_text("tshirt\ntrouser\npullover\ndress\ncoat\nsandal\ncollarshirt\n"
                                    "sneaker\nhandbag\nankleboot\n")

    def ev(lines, **kw):
        (tmp_path / "v.txt").write_text("".join(f"{l}\n" for l in lines))
        (tmp_path / "f.data").write_text("classes = 10\n# comment\nvalid = v.txt\nlabels = names\n")
        return DarknetClassifierEvaluator(tmp_path / "f.data", dg, base_dir=tmp_path, **kw)

    assert ev(["img/0_coat.png"]).truth.tolist() == [4]
    with pytest.raises(ModelError, match=r"v\.txt:2: 'img/1_coat_dress\.png': exactly one class .*"
                                         r"matches: 'dress', 'coat'"):
        ev(["img/0_coat.png", "img/1_coat_dress.png"])
    with pytest.raises(ModelError, match=r"v\.txt:1: .*2_nothing.*matches: none"):
        ev(["img/2_nothing.png"])
    with pytest.raises(ModelError, match=r"v\.txt:2: image .*9_coat\.png listed here does not exist"):
        ev(["img/0_coat.png", "img/9_coat.png"])
    with pytest.raises(ModelError, match=r"v\.txt:1: cannot load .*bad\.png"):
        ev(["bad.png"], label_free=True)
    (tmp_path / "names").write_text("tshirt\n\npullover\n")
    with pytest.raises(ModelError, match=r"names: 3 class names but the model has 10 classes"):
        ev(["img/0_coat.png"])
    (tmp_path / "names").write_text("tshirt\n\npullover\n" + "x\n" * 7)
    with pytest.raises(ModelError, match=r"names:2: empty class name"):
        ev(["img/0_coat.png"])
    with pytest.raises(ModelError, match=r"metric must be"):
        ev(["img/0_coat.png"], metric="best")
    with pytest.raises(ModelError, match=r"nope\.data: the \.data file does not exist"):
        DarknetClassifierEvaluator(tmp_path / "nope.data", dg)


def test_database_channel_count_is_a_marked_guess(tmp_path):
    """crop_size gives a Data layer's size but not its channels: 3 (1 with force_gray) is a
    guess, marked as one. force_gray/force_color do not settle it: Caffe applies them only to
    encoded records, raw ones keep their stored channels."""
    from caffe_surgeon.layers.registry import infer_shapes
    body = ('layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
            'convolution_param { num_output: 2 kernel_size: 3 } }\n')
    for transform, channels, guessed in (("crop_size: 8", 3, True),
                                         ("crop_size: 8 force_gray: true", 1, True),
                                         ("crop_size: 8 force_color: true", 3, True)):
        (tmp_path / "n.prototxt").write_text(lmdb_layer("db", 4, transform).replace(
            "include { phase: TEST }", "") + "\n" + body)
        shapes = infer_shapes(cs.load(tmp_path / "n.prototxt"))
        assert shapes.blobs["data"] == (4, channels, 8, 8)
        assert shapes.guessed == ({"data"} if guessed else set())


def test_the_data_digest_follows_a_top_k_read_from_the_data_file(tmp_path):
    # prune compares digests with ana's: editing top= between them must show
    from caffe_surgeon.evaluation.spec import data_digest
    fix = ROOT / "fixtures" / "fashion"
    g = cs.load(fix / "fashion.cfg", fix / "fashion.weights")
    digests = {}
    for top in (1, 5):
        data = tmp_path / f"top{top}.data"
        data.write_text(f"classes=10\nvalid={fix / 't10k_valid.txt'}\nlabels={fix / 'fashion.names'}\n"
                        f"names={fix / 'fashion.names'}\ntop={top}\n")
        for metric in ("top-k", "top-1"):
            ev = DarknetClassifierEvaluator(data, g, metric=metric, max_images=64, base_dir=fix)
            digests[top, metric] = data_digest(ev)
    assert digests[1, "top-k"] == digests[1, "top-1"] == digests[5, "top-1"]  # k = 1 all three
    assert digests[5, "top-k"] != digests[1, "top-k"]
