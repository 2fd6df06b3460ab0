"""Darknet detection training data: libdarknet's bits, seeded determinism, refusals.

The oracle is ``load_data_detection`` of the Debian ``libdarknet.so`` (through
``libdarknet_data_oracle.py``, a subprocess): it is given glibc's ``rand()`` after
``srand(seed)``, and our :func:`detection_batch` the same recorded values.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

import libdarknet_data_oracle as oracle
from assets import needs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.images.darknet_image import load_image
from caffe_surgeon.training.darknet_data import DetectionTrainData, SeededRand
from caffe_surgeon.training.darknet_sample import (Augmentation, detection_batch,
                                                   detection_example, rand_scale)

needs_libdarknet = needs(oracle.available(), "libdarknet not installed (Debian package darknet)")

CFG = """[net]
batch={batch}
width={w}
height={h}
channels=3
hue=.1
saturation=1.5
exposure=1.5
angle=7

[convolutional]
filters=24
size=1
stride=1
pad=1
activation=linear

[yolo]
mask=0,1,2
anchors=4,4, 8,8, 16,16
classes={classes}
num=3
jitter=.3
random={random}
"""

#: (width, height) of the test images: wide, tall, square
SIZES = ((90, 60), (50, 80), (64, 64))


def make_set(root: Path, sizes=SIZES, boxes_per_image=4, classes=3, seed=0, folder="images",
             ext=".png", batch=6, w=48, h=40, random=0, data_classes=None) -> tuple[Path, Path]:
    """Random-pixel images with random boxes, a list, a .data and a cfg under ``root``.

    The list's paths are relative to ``root`` (pass ``base_dir=root``): Darknet rewrites
    the first "raw" of the whole path to "labels", and pytest's folders are named
    after the tests."""
    from PIL import Image
    rng = np.random.default_rng(seed)
    (root / folder).mkdir(parents=True)
    (root / "labels").mkdir()
    lines = []
    for i, (iw, ih) in enumerate(sizes):
        pixels = (rng.random((ih, iw, 3)) * 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / folder / f"im{i}{ext}")
        with open(root / "labels" / f"im{i}.txt", "w") as f:
            for k in range(boxes_per_image):
                f.write(f"{k % classes} {rng.uniform(.1, .9):.6f} {rng.uniform(.1, .9):.6f} "
                        f"{rng.uniform(.05, .9):.6f} {rng.uniform(.05, .9):.6f}\n")
        lines.append(f"{folder}/im{i}{ext}\n")  # relative: pytest's folder names may hold "raw"
    (root / "train.txt").write_text("".join(lines))
    data = root / "set.data"
    data.write_text(f"classes = {classes if data_classes is None else data_classes}\n"
                    "train = train.txt\n")
    cfg = root / "net.cfg"
    cfg.write_text(CFG.format(batch=batch, w=w, h=h, classes=classes, random=random))
    return data, cfg


def replay(data: DetectionTrainData, rands, count, w, h, augmentation):
    it = iter(rands.tolist())
    return detection_batch(count, lambda: next(it), data.load, len(data.items), w, h,
                           augmentation)


# ---------------------------------------------------------------------- libdarknet's bits
@needs_libdarknet
@pytest.mark.parametrize("jitter, hue, sat, exp, seed", [
    (0., 0., 1., 1., 1),      # no augmentation: placement and flip only
    (0., 0., 1., 1., 7),
    (.3, .1, 1.5, 1.5, 1),    # the cfg's augmentation
    (.3, .1, 1.5, 1.5, 3),
    (.5, .3, 2., 2., 11),
])
def test_batches_equal_libdarknet_load_data_detection_given_the_same_rand_values(
        tmp_path, jitter, hue, sat, exp, seed):
    data_file, cfg = make_set(tmp_path)
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0)
    n, w, h = 6, 48, 40
    X, y, rands = oracle.load_detection(tmp_path / "o.npz", seed, 500, n, w, h, 3, jitter, hue,
                                        sat, exp, [i.written for i in data.items], cwd=tmp_path)
    images, truths, picks = replay(data, rands, n, w, h,
                                   Augmentation(jitter, hue, sat, exp, flip=True))
    assert len(set(picks)) > 1
    assert images.shape == (n, 3, h, w) and truths.shape == (n, 90, 5)
    np.testing.assert_array_equal(images, X)  # bit for bit (the brief allows 1e-5)
    np.testing.assert_array_equal(truths, y)
    assert (truths[:, :4, 2] > 0).all()  # the 4 boxes of each image are there


@needs_libdarknet
def test_a_broken_arithmetic_is_seen_by_the_oracle(tmp_path, monkeypatch):
    """A test of the test: the C source's flip (1 - (edge*sx - dx)) instead of the
    compiled one changes some truth bits, and libdarknet notices."""
    data_file, cfg = make_set(tmp_path, boxes_per_image=8)
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0)
    X, y, rands = oracle.load_detection(tmp_path / "o.npz", 5, 2000, 24, 48, 40, 3, .3, 0., 1.,
                                        1., [i.written for i in data.items], cwd=tmp_path)
    f32, two = np.float32, np.float32(2)

    def source_flip(boxes, dx, dy, sx, sy, flip):  # the C source, not the compiled code
        x, y, w, h = (boxes[:, k].astype(f32) for k in range(1, 5))
        left, right = (x - w / two) * f32(sx) - f32(dx), (x + w / two) * f32(sx) - f32(dx)
        top, bottom = (y - h / two) * f32(sy) - f32(dy), (y + h / two) * f32(sy) - f32(dy)
        if flip:
            left, right = f32(1) - right, f32(1) - left
        left, right, top, bottom = (np.clip(v, f32(0), f32(1)) for v in (left, right, top, bottom))
        return np.stack([(left + right) / two, (top + bottom) / two,
                         np.clip(right - left, f32(0), f32(1)),
                         np.clip(bottom - top, f32(0), f32(1))], 1)

    monkeypatch.setattr("caffe_surgeon.training.darknet_sample.correct_boxes", source_flip)
    _, truths, _ = replay(data, rands, 24, 48, 40, Augmentation(.3, 0., 1., 1.))
    assert not np.array_equal(truths, y)
    assert np.abs(truths - y).max() < 1e-5


@needs_libdarknet
def test_augmentation_off_gives_darknets_unaugmented_input_centred_and_unflipped(tmp_path):
    """One square image on a square net: Darknet's jitter=0 load has no free space, so its
    only randomness is the flip; our augment=False batch equals its unflipped images."""
    data_file, cfg = make_set(tmp_path, sizes=((64, 64),), w=48, h=48, boxes_per_image=5)
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, augment=False, batch_size=4, workers=0)
    X, y, _ = oracle.load_detection(tmp_path / "o.npz", 2, 200, 8, 48, 48, 3, 0., 0., 1., 1.,
                                    [data.items[0].written], cwd=tmp_path)
    ours, truths = data.batch(0)
    assert (ours == ours[0]).all()  # one fixed input per image
    rows = lambda t: sorted(map(tuple, t[t[:, 2] > 0].tolist()))  # noqa: E731
    unflipped = [i for i in range(8) if np.array_equal(X[i], ours[0])]
    flipped = [i for i in range(8) if np.array_equal(X[i][:, :, ::-1], ours[0])]
    assert unflipped and sorted(unflipped + flipped) == list(range(8))
    for i in unflipped:
        assert rows(y[i]) == rows(truths[0])


# ---------------------------------------------------------------------- seeds and ranges
def test_the_same_seed_gives_identical_batches_and_another_seed_others(tmp_path):
    data_file, cfg = make_set(tmp_path)
    a = DetectionTrainData(data_file, cfg, base_dir=tmp_path, seed=3, workers=0)
    b = DetectionTrainData(data_file, cfg, base_dir=tmp_path, seed=3, workers=2, prefetch=3)
    c = DetectionTrainData(data_file, cfg, base_dir=tmp_path, seed=4, workers=0)
    with b:
        streamed = list(b.batches(start=2, stop=6))
    for k, (images, truths) in zip(range(2, 6), streamed):
        again = a.batch(k)
        assert images.tobytes() == again[0].tobytes() and truths.tobytes() == again[1].tobytes()
        assert images.dtype == np.float32 and truths.dtype == np.float32
    assert not np.array_equal(a.batch(2)[0], c.batch(2)[0])
    assert not np.array_equal(a.batch(2)[0], a.batch(3)[0])


def test_augmented_draws_stay_in_darknets_ranges(tmp_path):
    data_file, cfg = make_set(tmp_path, sizes=((90, 60),))
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0)
    image, boxes = data.load(0)
    aug = data.augmentation
    assert (aug.jitter, aug.hue, aug.saturation, aug.exposure) == (.3, .1, 1.5, 1.5)
    rand = SeededRand(9)
    ratios, flips, offsets = [], [], []
    for _ in range(300):
        x, truth, placed = detection_example(image, boxes, rand, 48, 40, aug)
        ratios.append(float(placed.nw / placed.nh))
        flips.append(placed.flip)
        offsets.append((float(placed.dx), float(48 - placed.nw), float(placed.dy),
                        float(40 - placed.nh)))
        assert x.min() >= 0 and x.max() <= 1
        kept = truth[truth[:, 2] > 0]
        assert len(kept) >= 1 and (kept[:, :4] >= 0).all() and (kept[:, :4] <= 1).all()
        assert (kept[:, 2:4] >= .001).all() and (truth[len(kept):] == 0).all()
    low, high = (90 - 27) / (60 + 18), (90 + 27) / (60 - 18)  # (w +- .3w) / (h -+ .3h)
    assert low - 1e-4 <= min(ratios) and max(ratios) <= high + 1e-4
    assert max(ratios) - min(ratios) > .5 * (high - low)  # the range is used, not a point
    assert 100 < sum(flips) < 200
    for dx, free_x, dy, free_y in offsets:
        assert min(0, free_x) - 1e-4 <= dx <= max(0, free_x) + 1e-4
        assert min(0, free_y) - 1e-4 <= dy <= max(0, free_y) + 1e-4
    scales = [float(rand_scale(rand, 1.5)) for _ in range(1000)]
    assert 1 / 1.5 - 1e-6 <= min(scales) < .75 and 1.4 < max(scales) <= 1.5 + 1e-6


def test_colour_distortion_changes_colours_and_off_keeps_them(tmp_path):
    data_file, cfg = make_set(tmp_path, sizes=((64, 64),), w=64, h=64)
    on = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0, batch_size=8)
    off = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0, batch_size=8, augment=False)
    image = load_image(on.items[0].path)
    images, _ = off.batch(0)
    # a square image at its own size keeps every pixel, up to the float rounding of the
    # RGB -> HSV -> RGB round trip Darknet makes even with nothing to change
    np.testing.assert_allclose(images[0], image, rtol=0, atol=1e-6)
    assert not np.array_equal(images[0], image[:, :, ::-1])
    colours, _ = on.batch(0)
    value = colours.max(axis=1)
    saturation = (value - colours.min(axis=1)) / np.maximum(value, 1e-6)
    assert np.ptp(value.mean(axis=(1, 2))) > .05  # exposure 1/1.5 .. 1.5 per image
    assert np.ptp(saturation.mean(axis=(1, 2))) > .02  # saturation likewise


def test_multiscale_sizes_follow_detector_c(tmp_path):
    data_file, cfg = make_set(tmp_path, random=1, batch=2)
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, seed=1, max_batches=1000, workers=0)
    sizes = [data.size(k) for k in range(1000)]
    assert all(w == h and w % 32 == 0 and 320 <= w <= 608 for w, h in sizes)
    blocks = [sizes[k:k + 10] for k in range(0, 800, 10)]
    assert all(len(set(b)) == 1 for b in blocks)  # one size per 10 batches
    assert len({b[0] for b in blocks}) >= 6
    assert set(sizes[810:]) == {(608, 608)}  # the last 200 batches train at 608
    images, truths = data.batch(3)
    assert images.shape == (2, 3) + sizes[3][::-1] and truths.shape == (2, 90, 5)
    assert data.settings.multiscale  # random=1 on the last layer
    cfg.write_text(cfg.read_text().replace("random=1", "random=0"))
    assert DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0).size(0) == (48, 40)


def test_label_files_are_found_by_darknets_path_rewrite(tmp_path):
    data_file, cfg = make_set(tmp_path, folder="JPEGImages", ext=".JPEG")
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=0)
    assert [len(b) for b in data.boxes] == [4, 4, 4]
    first = (tmp_path / "labels" / "im0.txt").read_text().split("\n")[0].split()
    np.testing.assert_allclose(data.boxes[0][0], [float(v) for v in first], rtol=1e-6)


# ---------------------------------------------------------------------- refusals
def test_a_data_file_without_train_is_refused_naming_it(tmp_path):
    data_file, cfg = make_set(tmp_path)
    data_file.write_text("classes = 3\nvalid = x.txt\n")
    with pytest.raises(ModelError, match=r"set\.data: no 'train=' option"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)


def test_a_class_beyond_the_models_classes_is_refused_with_file_line_and_counts(tmp_path):
    data_file, cfg = make_set(tmp_path)
    label = tmp_path / "labels" / "im1.txt"
    label.write_text(label.read_text() + "3 .5 .5 .2 .2\n")
    with pytest.raises(ModelError) as e:
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)
    assert f"{label}:5: class 3 is outside 0..2 (the model has 3 classes)" in str(e.value)


@pytest.mark.parametrize("line, what", [
    ("1 1.2 .5 .2 .2", "out of range"), ("1 .5 .5 0 .2", "out of range"),
    ("1 .5 .5 .2 1.5", "out of range"), ("1 .5 .5 .2", "expected 'class x y w h'"),
    ("1 0 0 .2 .2", "centred at exactly")])
def test_boxes_out_of_range_are_refused_with_file_and_line(tmp_path, line, what):
    data_file, cfg = make_set(tmp_path)
    label = tmp_path / "labels" / "im2.txt"
    label.write_text(line + "\n" + label.read_text())
    with pytest.raises(ModelError, match=f"{label}:1: .*{what}"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)


def test_an_image_that_does_not_decode_is_refused_naming_it(tmp_path):
    data_file, cfg = make_set(tmp_path)
    bad = tmp_path / "images" / "im1.png"
    bad.write_bytes(bad.read_bytes()[:60] + b"\0" * 40)
    with pytest.raises(ModelError, match=r"train\.txt:2: image .*im1\.png does not decode"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)


def test_an_image_broken_after_the_check_fails_its_batch_in_the_consumer(tmp_path):
    data_file, cfg = make_set(tmp_path, sizes=((40, 40),))
    data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, workers=1)
    (tmp_path / "images" / "im0.png").write_bytes(b"not a png")
    with data, pytest.raises(ModelError, match=r"train\.txt:1: cannot decode image .*im0\.png"):
        next(iter(data.batches()))


def test_a_missing_label_file_is_an_error_unless_asked_to_train_on_no_boxes(tmp_path):
    data_file, cfg = make_set(tmp_path)
    missing = tmp_path / "labels" / "im1.txt"
    missing.unlink()
    with pytest.raises(ModelError, match=rf"train\.txt:2: label file {missing} .*does not exist"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = DetectionTrainData(data_file, cfg, base_dir=tmp_path, missing_labels="no_boxes", workers=0)
    assert len(caught) == 1 and f"1 of 3 training images have no label file (the first: " \
        f"{missing})" in str(caught[0].message)
    assert len(data.boxes[1]) == 0 and len(data.boxes[0]) == 4


def test_a_cfg_whose_classes_differ_from_the_data_file_is_refused_naming_the_layer(tmp_path):
    data_file, cfg = make_set(tmp_path, data_classes=5)
    with pytest.raises(ModelError, match=r"net\.cfg: layer 'yolo_1': classes=3 here but "
                                         r".*set\.data says classes=5"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path)


def test_bad_arguments_are_one_line_errors(tmp_path):
    data_file, cfg = make_set(tmp_path)
    with pytest.raises(ModelError, match="seed must be an integer >= 0"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path, seed=-1)
    with pytest.raises(ModelError, match="missing_labels must be one of"):
        DetectionTrainData(data_file, cfg, base_dir=tmp_path, missing_labels="skip")

