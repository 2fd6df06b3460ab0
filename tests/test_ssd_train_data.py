"""AnnotatedData at TRAIN: boxes following crops, expansions and mirrors (cases worked out
by hand), the batch samplers' constraints over many draws (checked with overlaps computed
here), the photometric distortion against OpenCV's own conversions, determinism by seed,
the fork's label blob, and the refusals by name."""
from __future__ import annotations

import math

import numpy as np
import pytest

from assets import need_module
from ssd_lmdb import AUGMENT, SAMPLERS, squares, train_val, write_lmdb

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.training import ssd_distort
from caffe_surgeon.training.ssd_augment import SsdAugmentation
from caffe_surgeon.training.ssd_sampler import (crop_window, generate_samples, project,
                                                sample_boxes, satisfies)
from caffe_surgeon.training.ssd_train_data import label_blob
from caffe_surgeon.training.train_data import TrainData


def _rows(*boxes):
    """Rows (group_label, instance, xmin, ymin, xmax, ymax, difficult), class 1."""
    return np.array([(1, k, *b, 0) for k, b in enumerate(boxes)], np.float32).reshape(-1, 7)


def test_a_crop_reprojects_boxes_into_its_window_and_clips_them():
    # window (.1, .1, .5, .5), 0.4 wide: (.2, .2, .6, .6) -> (.25, .25, 1.25 -> 1, 1)
    out = project(_rows((0.2, 0.2, 0.6, 0.6)), np.array([0.1, 0.1, 0.5, 0.5], np.float32))
    np.testing.assert_allclose(out[0, 2:6], [0.25, 0.25, 1.0, 1.0], rtol=1e-6)
    # a box that does not reach into the window is dropped (ProjectBBox is false)
    assert len(project(_rows((0.5, 0.0, 0.9, 0.4)), np.array([0.1, 0.1, 0.5, 0.5], np.float32))) == 0


def test_emit_center_drops_boxes_whose_centre_leaves_the_window():
    rows = _rows((0.2, 0.2, 0.6, 0.6), (0.45, 0.45, 0.9, 0.9))  # centres .4 and .675
    window = np.array([0.1, 0.1, 0.5, 0.5], np.float32)
    kept = project(rows, window, {"emit_type": "CENTER"})
    assert kept[:, 1].tolist() == [0]
    assert len(project(rows, window)) == 2  # without the constraint both are clipped in
    # MIN_OVERLAP: the share of the box inside the window must exceed emit_overlap
    # box 1: inside .05 x .05 of .45 x .45 -> 0.0123
    assert project(rows, window, {"emit_type": "MIN_OVERLAP", "emit_overlap": 0.01})[:, 1].tolist() == [0, 1]
    assert project(rows, window, {"emit_type": "MIN_OVERLAP", "emit_overlap": 0.02})[:, 1].tolist() == [0]


def test_mirror_flips_x_as_one_minus_the_other_edge():
    out = project(_rows((0.1, 0.2, 0.3, 0.4)), np.array([0, 0, 1, 1], np.float32), mirror=True)
    np.testing.assert_allclose(out[0, 2:6], [0.7, 0.2, 0.9, 0.4], rtol=1e-6)


def test_crop_window_truncates_the_scaled_clipped_box_to_whole_pixels():
    # 10 x 20 image: x .1 * 20 = 2, .55 * 20 = 11 -> width 9; y .2 * 10 = 2, .7 * 10 = 7
    assert crop_window(np.array([0.1, 0.2, 0.55, 0.7], np.float32), 10, 20) == (2, 2, 5, 9)
    # outside the image it is clipped first: x from 0 to .5 * 20 = 10
    assert crop_window(np.array([-0.3, 0.0, 0.5, 1.2], np.float32), 10, 20) == (0, 0, 10, 10)


class _Draws:
    """A generator stand-in returning fixed uniforms in [0, 1) (``random``) in order."""

    def __init__(self, *values):
        self.values = list(values)

    def random(self):
        return self.values.pop(0)

    def integers(self, n):
        return 0


def test_expansion_places_the_image_on_a_mean_filled_canvas_and_moves_its_boxes():
    aug = SsdAugmentation({"expand_param": {"prob": 1.0, "max_expand_ratio": 3.0},
                           "mean_value": [10, 20, 30]}, {})
    image = np.full((3, 10, 20), 200, np.uint8)
    # draws: prob 0 (expand), ratio 1 + .5 * 2 = 2 -> 20 x 40 canvas, top .5 * 10 = 5,
    # left .25 * 20 = 5: window (-5/20, -5/10, 35/20, 15/10) on the old image
    canvas_rng = _Draws(0.0, 0.5, 0.5, 0.25)
    out, rows = aug._expand(image, _rows((0.0, 0.0, 1.0, 1.0)), canvas_rng, "color", "img")
    assert out.shape == (3, 20, 40)
    # the JPEG round trip keeps flat areas nearly exact
    assert abs(int(out[0, 0, 0]) - 10) <= 2 and abs(int(out[2, 19, 39]) - 30) <= 2
    assert abs(int(out[1, 10, 20]) - 200) <= 2 and abs(int(out[1, 4, 4]) - 20) <= 2
    # the whole old image: x (0 + .25) / 2 = .125 to (1 + .25) / 2 = .625, y .25 to .75
    np.testing.assert_allclose(rows[0, 2:6], [0.125, 0.25, 0.625, 0.75], rtol=1e-6)


def _iou(a, b):
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)


def test_samples_honour_scale_aspect_and_jaccard_constraints_over_many_draws():
    obj = (0.3, 0.3, 0.6, 0.7)
    sampler = {"sampler": {"min_scale": 0.3, "max_scale": 1.0, "min_aspect_ratio": 0.5,
                           "max_aspect_ratio": 2.0},
               "sample_constraint": {"min_jaccard_overlap": 0.5}, "max_sample": 3,
               "max_trials": 50}
    rng = np.random.default_rng(0)
    count = 0
    for _ in range(200):
        found = generate_samples(np.array([obj], np.float32), [sampler], rng)
        assert len(found) <= 3
        for b in found:
            b = [float(v) for v in b]
            w, h = b[2] - b[0], b[3] - b[1]
            assert 0 <= b[0] and 0 <= b[1] and b[2] <= 1 + 1e-6 and b[3] <= 1 + 1e-6
            assert 0.3 - 1e-5 <= math.sqrt(w * h) <= 1 + 1e-5
            assert 0.5 - 1e-4 <= w / h <= 2 + 1e-4
            assert _iou(b, obj) >= 0.5 - 1e-6
            count += 1
    assert count > 100  # the constraint leaves enough samples to have checked something


def test_coverage_constraints_and_max_limits_are_checked_per_object():
    box = np.array([0.0, 0.0, 0.5, 0.5], np.float32)
    objects = np.array([[0.25, 0.25, 0.75, 0.75], [0.0, 0.0, 0.25, 0.25]], np.float32)
    # sample coverage (share of the sample covered): .25 and .25; object coverage: .25, 1
    assert satisfies(box, objects, {"min_object_coverage": 0.9})
    assert not satisfies(box, objects, {"min_sample_coverage": 0.3})
    assert satisfies(box, objects, {"max_jaccard_overlap": 0.2})  # object 0: 1/7 = .14
    assert not satisfies(box, objects, {"min_jaccard_overlap": 0.3, "max_jaccard_overlap": 0.9})
    assert not satisfies(box, np.zeros((0, 4), np.float32), {"min_jaccard_overlap": 0.1})
    assert satisfies(box, np.zeros((0, 4), np.float32), {})


def test_only_the_first_constraint_group_decides_as_in_the_forks_loop():
    box = np.array([0.0, 0.0, 0.5, 0.5], np.float32)
    obj = np.array([[0.0, 0.0, 0.25, 0.25]], np.float32)  # jaccard .25, sample coverage .25
    # the jaccard range holds: the fork has set `found` before the coverage range fails
    assert satisfies(box, obj, {"min_jaccard_overlap": 0.2, "min_sample_coverage": 0.9})
    assert not satisfies(box, obj, {"min_jaccard_overlap": 0.3, "min_sample_coverage": 0.1})


def test_sample_boxes_from_given_uniforms_by_hand():
    sampler = {"min_scale": 0.2, "max_scale": 1.0, "min_aspect_ratio": 0.5,
               "max_aspect_ratio": 2.0}
    # scale .2 + .5 x .8 = .6, ratio .5 + .5 x 1.5 = 1.25 (inside [.36, 2.78]):
    # w = .6 sqrt(1.25) = .67082, h = .6 / sqrt(1.25) = .53666, offsets half the slack
    got = sample_boxes(sampler, np.array([[0.5, 0.5, 0.5, 0.5]]))[0]
    w, h = 0.6 * math.sqrt(1.25), 0.6 / math.sqrt(1.25)
    np.testing.assert_allclose(got, [(1 - w) / 2, (1 - h) / 2, (1 + w) / 2, (1 + h) / 2], rtol=1e-5)
    # a ratio below scale^2 is raised to it: scale .9, ratio .1 -> .81: w .81, h 1
    got = sample_boxes({"min_scale": 0.9, "max_scale": 0.9, "min_aspect_ratio": 0.1,
                        "max_aspect_ratio": 0.1}, np.zeros((1, 4)))[0]
    np.testing.assert_allclose(got, [0, 0, 0.81, 1.0], rtol=1e-5)


def test_whole_image_samplers_and_max_trials_zero():
    rng = np.random.default_rng(1)
    whole = generate_samples(np.zeros((0, 4), np.float32), [{"max_sample": 1, "max_trials": 1}], rng)
    assert len(whole) == 1 and whole[0].tolist() == [0, 0, 1, 1]
    assert generate_samples(np.zeros((0, 4), np.float32), [{"max_trials": 0}], rng) == []
    assert generate_samples(np.zeros((0, 4), np.float32),
                            [{"use_original_image": False}], rng) == []


def test_hsv_round_trip_matches_opencv_8_bit_conversions():
    cv2 = need_module("cv2")
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (3, 40, 15), dtype=np.uint8)  # 15 columns: OpenCV's scalar path
    img[:, :3, :3] = 90  # grey pixels: no hue
    hwc = np.ascontiguousarray(img.transpose(1, 2, 0))
    np.testing.assert_array_equal(ssd_distort.bgr_to_hsv(img),
                                  cv2.cvtColor(hwc, cv2.COLOR_BGR2HSV).transpose(2, 0, 1))
    hsv = rng.integers(0, 256, (3, 40, 15), dtype=np.uint8)
    np.testing.assert_array_equal(
        ssd_distort.hsv_to_bgr(hsv),
        cv2.cvtColor(np.ascontiguousarray(hsv.transpose(1, 2, 0)), cv2.COLOR_HSV2BGR).transpose(2, 0, 1))


def test_convert_rounds_half_to_even_and_saturates():
    x = np.array([0, 1, 2, 3, 100, 250], np.uint8)
    # 0.5 steps land on ties: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2, 3.5 -> 4
    assert ssd_distort.convert(x, 1.0, 0.5).tolist() == [0, 2, 2, 4, 100, 250]
    assert ssd_distort.convert(x, 1.0, 10).tolist() == [10, 11, 12, 13, 110, 255]
    assert ssd_distort.convert(x, 0.5, 0).tolist() == [0, 0, 1, 2, 50, 125]
    assert ssd_distort.convert(x, 1.0, -2).tolist() == [0, 0, 0, 1, 98, 248]


def test_distortion_with_certain_brightness_shifts_every_pixel_by_one_draw():
    s = ssd_distort.settings({"brightness_prob": 1.0, "brightness_delta": 32})
    img = np.full((3, 4, 4), 100, np.uint8)
    out = ssd_distort.distort(img, s, np.random.default_rng(5))
    assert len(np.unique(out)) == 1 and abs(int(out[0, 0, 0]) - 100) <= 32
    with pytest.raises(ModelError, match="contrast_lower 1.5 / contrast_upper 0.5"):
        ssd_distort.settings({"contrast_lower": 1.5, "contrast_upper": 0.5})


def test_label_blob_numbers_items_and_gives_one_row_of_minus_one_without_boxes():
    rows = [_rows((0.1, 0.1, 0.2, 0.2)), _rows(), _rows((0.3, 0.3, 0.4, 0.4), (0.5, 0.5, 0.6, 0.6))]
    blob = label_blob(rows)
    assert blob.shape == (1, 1, 3, 8)
    assert blob[0, 0, :, 0].tolist() == [0, 2, 2] and blob[0, 0, :, 2].tolist() == [0, 0, 1]
    assert label_blob([_rows(), _rows()]).tolist() == [[[[-1] * 8]]]


@pytest.fixture(scope="module")
def ssd_folder(tmp_path_factory):
    need_module("lmdb")
    d = tmp_path_factory.mktemp("ssd_train")
    write_lmdb(d / "train_lmdb", squares(12))
    (d / "train_val.prototxt").write_text(train_val("train_lmdb"))
    return d


def _graph(folder, text):
    (folder / "net.prototxt").write_text(text)
    return cs.load(str(folder / "net.prototxt"), phase="TRAIN")


def test_batches_are_a_function_of_seed_and_iteration(ssd_folder):
    g = cs.load(str(ssd_folder / "train_val.prototxt"), phase="TRAIN")
    with TrainData(g, base_dir=ssd_folder, seed=7, workers=0) as a, \
            TrainData(g, base_dir=ssd_folder, seed=7, workers=2) as b, \
            TrainData(g, base_dir=ssd_folder, seed=8, workers=0) as c, \
            TrainData(g, base_dir=ssd_folder, seed=7, workers=1, processes=True) as d:
        first = [a.batch(i) for i in range(3)]
        again = [batch for _, batch in b.batches(0, 3)]
        forked = [batch for _, batch in d.batches(0, 3)]
        other = c.batch(0)
    for x, y in [*zip(first, again), *zip(first, forked)]:
        assert x["data"].tobytes() == y["data"].tobytes()
        assert x["label"].tobytes() == y["label"].tobytes()
    assert other["data"].tobytes() != first[0]["data"].tobytes()
    assert first[0]["data"].shape == (4, 3, 32, 32)
    label = first[0]["label"]
    assert label.shape[:2] == (1, 1) and label.shape[3] == 8
    assert set(label[0, 0, :, 0].tolist()) <= {0, 1, 2, 3}
    assert np.all(label[0, 0, :, 3:7] >= 0) and np.all(label[0, 0, :, 3:7] <= 1)


def test_without_augmentation_the_labels_are_the_stored_boxes(ssd_folder):
    text = train_val("train_lmdb", transform="resize_param { resize_mode: WARP height: 32 "
                     "width: 32 }", samplers="")
    with TrainData(_graph(ssd_folder, text), base_dir=ssd_folder, workers=0) as t:
        label = t.batch(0)["label"].reshape(-1, 8)
    stored = squares(12)
    # grouped by label in order of first appearance, as the AnnotatedDatum stores them
    want = [(i, lab, *box) for i in range(4) for lab, *box in
            sorted(stored[i][1], key=lambda r: [b[0] for b in stored[i][1]].index(r[0]))]
    np.testing.assert_allclose(label[:, [0, 1, 3, 4, 5, 6]], np.array(want, np.float32), rtol=1e-6)


def test_a_batch_whose_boxes_all_leave_the_crops_gives_the_minus_one_row(ssd_folder):
    # crops of at most 10% of the side, which no box centre can be sure to fall in, and a
    # constraint that keeps only crops touching no object: every box is dropped
    samplers = ('batch_sampler { sampler { min_scale: 0.1 max_scale: 0.1 } '
                'sample_constraint { max_jaccard_overlap: 0.0 } max_sample: 1 max_trials: 200 }')
    text = train_val("train_lmdb", transform="emit_constraint { emit_type: CENTER } "
                     "resize_param { resize_mode: WARP height: 32 width: 32 }", samplers=samplers)
    with TrainData(_graph(ssd_folder, text), base_dir=ssd_folder, workers=0) as t:
        assert t.batch(0)["label"].tolist() == [[[[-1] * 8]]]


@pytest.mark.parametrize("transform, words", [
    ("noise_param { prob: 0.5 }", "transform_param.noise_param on an AnnotatedData layer"),
    ("crop_size: 16", "transform_param.crop_size on an AnnotatedData layer"),
    ("resize_param { height: 32 width: 32 interp_mode: CUBIC }", "interp_mode CUBIC"),
    ("resize_param { height: 32 width: 32 resize_mode: FIT_SMALL_SIZE }",
     "resize_mode FIT_SMALL_SIZE"),
    ("expand_param { max_expand_ratio: 0.5 }", "max_expand_ratio 0.5"),
])
def test_unsupported_augmentation_is_refused_by_name_before_reading(ssd_folder, transform, words):
    g = _graph(ssd_folder, train_val("train_lmdb", transform=transform, samplers=""))
    with pytest.raises(ModelError, match="layer 'data'") as e:
        TrainData(g, base_dir=ssd_folder)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_a_sampler_with_impossible_ranges_is_refused_naming_the_numbers(ssd_folder):
    samplers = 'batch_sampler { sampler { min_scale: 0.8 max_scale: 0.3 } }'
    g = _graph(ssd_folder, train_val("train_lmdb", samplers=samplers))
    with pytest.raises(ModelError, match="batch_sampler 0 has min_scale 0.8, max_scale 0.3"):
        TrainData(g, base_dir=ssd_folder)


def test_raw_records_are_refused_when_the_augmentation_would_change_their_size(tmp_path):
    need_module("lmdb")
    write_lmdb(tmp_path / "raw_lmdb", squares(4), encoded=False)
    g = _graph(tmp_path, train_val("raw_lmdb", transform=AUGMENT, samplers=SAMPLERS))
    with pytest.raises(ModelError, match="record 0 .* is a raw \\(not encoded\\) Datum"):
        TrainData(g, base_dir=tmp_path, workers=0).batch(0)
    # mirror, mean and scale alone do not change sizes: raw records train
    g = _graph(tmp_path, train_val("raw_lmdb", transform="mirror: true mean_value: 100",
                                   samplers=""))
    with TrainData(g, base_dir=tmp_path, workers=0) as t:
        assert t.batch(0)["data"].shape == (4, 3, 48, 48)


def test_a_record_that_is_not_an_annotated_datum_is_one_line_naming_it(tmp_path):
    lmdb = need_module("lmdb")
    env = lmdb.open(str(tmp_path / "bad_lmdb"), map_size=1 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"00000000", b"\xff\xff not a protobuf")
    env.close()
    g = _graph(tmp_path, train_val("bad_lmdb", batch=1))
    with pytest.raises(ModelError, match=r"layer 'data': .*bad_lmdb record 0 \(key "
                                         r"'00000000'\): not an AnnotatedDatum") as e:
        TrainData(g, base_dir=tmp_path, workers=0).batch(0)
    assert "\n" not in str(e.value)
