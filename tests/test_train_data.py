"""TRAIN-phase batches (``caffe_surgeon.training.train_data``): Caffe's record order, its
crop / mirror / mean / scale arithmetic, rank slices of one global stream, resuming, and
errors from background workers.

Images here are small synthetic arrays whose pixels say where they came from, so every
expected batch is written out by hand from ``data_transformer.cpp``'s formula
``out[c, h, w'] = (pixel[c, h_off + h, w_off + w] - mean[c, h_off + h, w_off + w]) * scale``
with ``w' = W_crop - 1 - w`` when mirrored.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation.caffe_eval import CaffeEvaluator, read_records
from caffe_surgeon.training.train_data import TrainData
from caffe_surgeon.training.train_order import TrainOrder, augmentation

FASHION = Path(__file__).resolve().parents[1] / "fixtures" / "fashion"
F32 = np.float32


# ---------------------------------------------------------------- builders
def grey_images(n: int, h: int = 8, w: int = 8) -> np.ndarray:
    """Image k: pixel (y, x) = (y * w + x + 7 k) % 256, distinct per record and position."""
    base = np.arange(h * w).reshape(h, w)
    return np.stack([(base + 7 * k) % 256 for k in range(n)]).astype(np.uint8)


def write_list(folder: Path, images: np.ndarray, labels=None, name="list.txt") -> Path:
    from PIL import Image
    (folder / "img").mkdir(exist_ok=True)
    lines = []
    for k, img in enumerate(images):
        Image.fromarray(img).save(folder / "img" / f"{k:03d}.png")
        lines.append(f"{k:03d}.png {k if labels is None else labels[k]}\n")
    (folder / name).write_text("".join(lines))
    return folder / name


def write_lmdb(path: Path, records: dict[bytes, tuple[np.ndarray, int]]) -> Path:
    """Raw-pixel Datums (C, H, W) under the given keys, inserted in the dict's order."""
    import lmdb

    from caffe_surgeon.caffe import caffe_pb2
    env = lmdb.open(str(path), map_size=64 << 20)
    with env.begin(write=True) as txn:
        for key, (img, label) in records.items():
            c, h, w = img.shape
            datum = caffe_pb2.Datum(channels=c, height=h, width=w, label=label,
                                    data=np.ascontiguousarray(img, np.uint8).tobytes())
            txn.put(key, datum.SerializeToString())
    env.close()
    return path


def write_mean(path: Path, mean: np.ndarray) -> Path:
    from caffe_surgeon.caffe import caffe_pb2
    blob = caffe_pb2.BlobProto(num=1, channels=mean.shape[0], height=mean.shape[1],
                               width=mean.shape[2])
    blob.data.extend(mean.astype(F32).ravel().tolist())
    path.write_bytes(blob.SerializeToString())
    return path


def image_data(folder: Path, batch: int, transform: str = "", extra: str = "",
               phase: str = "TRAIN", name: str = "train.prototxt"):
    text = (f'name: "t"\nlayer {{ name: "data" type: "ImageData" top: "data" top: "label" '
            f'include {{ phase: {phase} }}\n  transform_param {{ {transform} }}\n'
            f'  image_data_param {{ source: "list.txt" root_folder: "img/" batch_size: {batch} '
            f'is_color: false {extra} }} }}\n')
    (folder / name).write_text(text)
    return cs.load(folder / name, phase=phase)


def lmdb_data(folder: Path, batch: int, transform: str = "", tops='top: "data" top: "label"'):
    text = (f'name: "t"\nlayer {{ name: "db" type: "Data" {tops} include {{ phase: TRAIN }}\n'
            f'  transform_param {{ {transform} }}\n'
            f'  data_param {{ source: "db" backend: LMDB batch_size: {batch} }} }}\n')
    (folder / "train.prototxt").write_text(text)
    return cs.load(folder / "train.prototxt", phase="TRAIN")


@pytest.fixture
def ten(tmp_path):
    images = grey_images(10)
    write_list(tmp_path, images)
    return tmp_path, images


# ---------------------------------------------------------------- order
def test_list_batches_come_line_by_line_and_wrap_to_the_first_line(ten):
    folder, images = ten
    g = image_data(folder, 4, "scale: 0.5")
    with TrainData(g, base_dir=folder, workers=0) as data:
        assert (data.batch_size, data.tops, data.source_size) == (4, ["data", "label"], 10)
        rows = [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 0, 1], [2, 3, 4, 5]]
        for it, want in enumerate(rows):
            b = data.batch(it)
            assert b["data"].dtype == F32 and b["data"].shape == (4, 1, 8, 8)
            np.testing.assert_array_equal(b["data"][:, 0], images[want].astype(F32) * F32(0.5))
            np.testing.assert_array_equal(b["label"], np.asarray(want, F32))
            assert [r for r, _, _ in data.records(it)] == want
        assert data.epoch(2) == 0 and data.epoch(3) == 1


def test_lmdb_batches_come_in_key_order_whatever_order_they_were_written(tmp_path):
    images = grey_images(5)[:, None]
    keys = [b"00000003", b"00000000", b"00000004", b"00000001", b"00000002"]
    write_lmdb(tmp_path / "db", {k: (images[int(k)], 10 + int(k)) for k in keys})
    g = lmdb_data(tmp_path, 3)
    with TrainData(g, base_dir=tmp_path, workers=2, processes=False, prefetch=3) as data:
        got = [b for _, b in data.batches(0, 3)]  # two threads share the process's handle
        # and close it between batches, so the same database opens again (e.g. to evaluate)
        assert len(read_records(g, 5, base_dir=tmp_path)[0]) == 5
    for b, want in zip(got, [[0, 1, 2], [3, 4, 0], [1, 2, 3]]):
        np.testing.assert_array_equal(b["data"], images[want].astype(F32))
        np.testing.assert_array_equal(b["label"], np.asarray(want, F32) + 10)


def test_a_data_layer_with_one_top_gives_no_label_blob(tmp_path):
    write_lmdb(tmp_path / "db", {b"a": (grey_images(1)[:, None][0], 3)})
    g = lmdb_data(tmp_path, 2, tops='top: "data"')
    b = TrainData(g, base_dir=tmp_path, workers=0).batch(0)
    assert list(b) == ["data"] and b["data"].shape == (2, 1, 8, 8)


def test_shuffle_is_a_fresh_permutation_every_epoch_fixed_by_the_seed(ten):
    folder, _ = ten
    g = image_data(folder, 5, extra="shuffle: true")

    def epochs(seed):
        data = TrainData(g, base_dir=folder, seed=seed, workers=0)
        order = [r for it in range(8) for r, _, _ in data.records(it)]
        return [order[k:k + 10] for k in range(0, 40, 10)]

    first = epochs(3)
    assert all(sorted(e) == list(range(10)) for e in first)  # each epoch reads every line once
    assert len({tuple(e) for e in first}) == 4  # and reshuffles, as Caffe does on wrapping
    assert epochs(3) == first and epochs(4) != first
    data = TrainData(g, base_dir=folder, seed=3, workers=0)
    np.testing.assert_array_equal(data.batch(1)["label"], np.asarray(first[0][5:], F32))


def test_rand_skip_starts_every_rank_at_the_same_seeded_position(ten):
    folder, _ = ten
    g = image_data(folder, 2, extra="rand_skip: 7")
    skips = {s: TrainData(g, base_dir=folder, seed=s, workers=0).records(0)[0][0]
             for s in range(30)}
    assert set(skips.values()) == set(range(7))  # Caffe: caffe_rng_rand() % rand_skip
    d = TrainData(g, base_dir=folder, seed=5, workers=0)
    first = skips[5]
    assert [r for r, _, _ in d.records(0)] == [first, (first + 1) % 10]
    assert TrainData(g, base_dir=folder, seed=5, rank=1, world=2, workers=0).records(0)[0][0] \
        == (first + 2) % 10


# ---------------------------------------------------------------- transform at TRAIN
def test_random_crops_stay_inside_the_image_cover_every_corner_and_mirror_half(ten):
    folder, images = ten
    g = image_data(folder, 10, "crop_size: 5 mirror: true")
    data = TrainData(g, base_dir=folder, seed=11, workers=0)
    corners, flips = set(), []
    for it in range(40):
        b = data.batch(it)
        for row, (r, (top, left), flip) in enumerate(data.records(it)):
            assert 0 <= top <= 3 and 0 <= left <= 3  # Rand(8 - 5 + 1)
            want = images[r, top:top + 5, left:left + 5].astype(F32)
            np.testing.assert_array_equal(b["data"][row, 0], want[:, ::-1] if flip else want)
            corners.add((top, left))
            flips.append(flip)
    assert corners == {(y, x) for y in range(4) for x in range(4)}
    assert 0.4 < np.mean(flips) < 0.6
    again = TrainData(g, base_dir=folder, seed=11, workers=0)
    assert again.records(7) == data.records(7)
    assert TrainData(g, base_dir=folder, seed=12, workers=0).records(7) != data.records(7)


def test_augmentation_of_an_item_depends_on_the_item_alone():
    shapes = [(8, 8)] * 6
    whole = augmentation(9, range(100, 106), shapes, (5, 5), True)
    assert augmentation(9, range(103, 106), shapes[:3], (5, 5), True) == whole[3:]
    assert all(at is None for at, _ in augmentation(9, range(6), shapes, (0, 0), True))
    assert not any(f for _, f in augmentation(9, range(6), shapes, (5, 5), False))
    with pytest.raises(ModelError, match="rand_skip 50 drew a skip of .* only 3 records"):
        TrainOrder(3, seed=next(s for s in range(100) if TrainOrder(99, s, rand_skip=50).skip >= 3),
                   rand_skip=50)


def test_test_phase_crops_the_centre_where_train_phase_crops_at_random(ten):
    folder, images = ten
    transform = "crop_size: 4"
    test_g = image_data(folder, 10, transform, phase="TEST", name="test.prototxt")
    (folder / "l.prototxt").write_text((folder / "test.prototxt").read_text()
                                       + 'layer { name: "s" type: "Power" bottom: "data" top: "s" }\n')
    ev = CaffeEvaluator(cs.load(folder / "l.prototxt", phase="TEST"), "s", test_iter=1,
                        base_dir=folder)
    np.testing.assert_array_equal(ev.feeds[0]["data"][:, 0], images[:, 2:6, 2:6].astype(F32))
    train = TrainData(image_data(folder, 10, transform), base_dir=folder, seed=0, workers=0)
    corners = {at for it in range(5) for _, at, _ in train.records(it)}
    assert len(corners) > 5 and all(0 <= y <= 4 and 0 <= x <= 4 for y, x in corners)


def test_mean_file_is_taken_at_the_source_position_then_scaled_then_mirrored(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 3, 6, 7), dtype=np.uint8)
    mean = rng.uniform(0, 255, (3, 6, 7)).astype(F32)
    write_lmdb(tmp_path / "db", {f"{k}".encode(): (img, k) for k, img in enumerate(images)})
    write_mean(tmp_path / "mean.binaryproto", mean)
    g = lmdb_data(tmp_path, 4, 'crop_size: 3 mirror: true scale: 0.25 '
                                'mean_file: "mean.binaryproto"')
    data = TrainData(g, base_dir=tmp_path, seed=2, workers=0)
    for it in range(6):
        b = data.batch(it)
        for row, (r, (y, x), flip) in enumerate(data.records(it)):
            crop = np.s_[:, y:y + 3, x:x + 3]
            want = (images[r][crop].astype(F32) - mean[crop]) * F32(0.25)  # minus, then times
            np.testing.assert_array_equal(b["data"][row], want[:, :, ::-1] if flip else want)
    assert any(f for it in range(6) for _, _, f in data.records(it))


def test_mean_values_are_per_channel_and_one_value_serves_every_channel(tmp_path):
    images = np.random.default_rng(1).integers(0, 256, (2, 3, 4, 4), dtype=np.uint8)
    write_lmdb(tmp_path / "db", {f"{k}".encode(): (img, k) for k, img in enumerate(images)})
    for values, per_channel in (("mean_value: 10 mean_value: 20 mean_value: 30", [10, 20, 30]),
                                ("mean_value: 5", [5, 5, 5])):
        g = lmdb_data(tmp_path, 2, f"{values} scale: 2")
        b = TrainData(g, base_dir=tmp_path, workers=0).batch(0)["data"]
        want = (images.astype(F32) - np.asarray(per_channel, F32)[:, None, None]) * F32(2)
        np.testing.assert_array_equal(b, want)


# ---------------------------------------------------------------- ranks and resuming
@pytest.mark.parametrize("world", [2, 3])
def test_rank_batches_concatenate_to_the_single_process_global_batch(ten, world):
    folder, _ = ten
    augment = "crop_size: 5 mirror: true scale: 0.1"
    single = TrainData(image_data(folder, 2 * world, augment, extra="shuffle: true",
                                  name="single.prototxt"), base_dir=folder, seed=7, workers=0)
    g = image_data(folder, 2, augment, extra="shuffle: true")
    ranks = [TrainData(g, base_dir=folder, seed=7, rank=r, world=world, workers=0)
             for r in range(world)]
    assert ranks[0].global_batch == single.batch_size == 2 * world
    for it in range(7):  # crosses several epochs of 10 records
        whole = single.batch(it)
        parts = [rank.batch(it) for rank in ranks]
        for top in ("data", "label"):
            np.testing.assert_array_equal(np.concatenate([p[top] for p in parts]), whole[top])


def test_resuming_at_iteration_k_gives_the_batches_of_the_uninterrupted_run(ten):
    folder, _ = ten
    g = image_data(folder, 3, "crop_size: 6 mirror: true", extra="shuffle: true")
    with TrainData(g, base_dir=folder, seed=5, workers=1, processes=True) as run:
        uninterrupted = [b for _, b in run.batches(0, 9)]
        saved = run.state(5)
    with TrainData(g, base_dir=folder, seed=5, workers=2, processes=False) as resumed:
        start = resumed.check_state(saved)
        got = list(resumed.batches(start, 9))
    assert [it for it, _ in got] == [5, 6, 7, 8]
    for (_, b), want in zip(got, uninterrupted[5:]):
        for top in want:
            np.testing.assert_array_equal(b[top], want[top])
    # another world with the same global batch continues the same stream
    half = image_data(folder, 1, "crop_size: 6 mirror: true", extra="shuffle: true",
                      name="half.prototxt")
    ranks = [TrainData(half, base_dir=folder, seed=5, rank=r, world=3, workers=0) for r in range(3)]
    assert ranks[0].check_state(saved) == 5
    np.testing.assert_array_equal(np.concatenate([r.batch(6)["data"] for r in ranks]),
                                  uninterrupted[6]["data"])
    with pytest.raises(ModelError, match=r"seed 5 \(now 6\)"):
        TrainData(g, base_dir=folder, seed=6, workers=0).check_state(saved)


def test_prefetched_batches_equal_the_batches_built_on_demand(ten):
    folder, _ = ten
    g = image_data(folder, 4, "crop_size: 7 mirror: true", extra="shuffle: true")
    with TrainData(g, base_dir=folder, seed=1, workers=2, prefetch=2) as data:
        stream = data.batches(3)
        got = [next(stream) for _ in range(5)]
        stream.close()  # a consumer may stop early; the pending batches are dropped
        for it, b in got:
            direct = data.batch(it)
            assert all(np.array_equal(b[k], direct[k]) for k in direct)
    data.close()  # twice is fine


# ---------------------------------------------------------------- errors
@pytest.mark.parametrize("processes", [True, False])
def test_an_unreadable_image_stops_the_consumer_with_one_line_naming_file_and_line(ten, processes):
    folder, _ = ten
    (folder / "img" / "006.png").write_bytes(b"not a png at all")
    g = image_data(folder, 4)
    with TrainData(g, base_dir=folder, workers=1, processes=processes) as data:
        stream = data.batches(0)
        assert next(stream)[0] == 0
        with pytest.raises(ModelError) as err:
            next(stream)
    message = str(err.value)
    assert "\n" not in message
    assert "list.txt:7" in message and "006.png" in message and "cannot decode" in message


def test_images_of_different_sizes_in_one_batch_without_a_crop_are_refused(tmp_path):
    from PIL import Image
    write_list(tmp_path, grey_images(3))
    tall = np.arange(72, dtype=np.uint8).reshape(9, 8)
    Image.fromarray(tall).save(tmp_path / "img" / "002.png")
    g = image_data(tmp_path, 3)
    with pytest.raises(ModelError, match=r"002.png\) gives \(1, 9, 8\) .* gives \(1, 8, 8\)"):
        TrainData(g, base_dir=tmp_path, workers=0).batch(0)
    g = image_data(tmp_path, 3, "crop_size: 8")  # a crop makes them one size again
    for seed in range(4):
        data = TrainData(g, base_dir=tmp_path, seed=seed, workers=0)
        b = data.batch(0)["data"]
        plan = data.records(0)  # each corner is drawn within its own image's size
        assert b.shape == (3, 1, 8, 8) and [at for _, at, _ in plan[:2]] == [(0, 0), (0, 0)]
        y, x = plan[2][1]
        assert y in (0, 1) and x == 0
        np.testing.assert_array_equal(b[2, 0], tall[y:y + 8].astype(F32))
    g = image_data(tmp_path, 3, "crop_size: 9")
    with pytest.raises(ModelError, match=r"000.png\): image is 8 x 8, smaller than the crop 9 x 9"):
        TrainData(g, base_dir=tmp_path, workers=0).batch(0)


def test_what_cannot_be_reproduced_at_train_is_refused_naming_the_layer(ten):
    folder, _ = ten
    g = image_data(folder, 2, "distort_param { brightness_prob: 0.5 }")
    with pytest.raises(ModelError, match="layer 'data': transform_param.distort_param"):
        TrainData(g, base_dir=folder)
    (folder / "a.prototxt").write_text(
        'layer { name: "ssd" type: "AnnotatedData" top: "data" top: "label" '
        'include { phase: TRAIN } data_param { source: "x" backend: LMDB batch_size: 2 } '
        'transform_param { noise_param { prob: 0.5 } } }\n')
    with pytest.raises(ModelError, match="layer 'ssd': transform_param.noise_param on an "
                                         "AnnotatedData layer is not supported"):
        TrainData(cs.load(folder / "a.prototxt", phase="TRAIN"), base_dir=folder)
    g = image_data(folder, 2)
    for kwargs, text in (({"seed": -1}, "seed must be an integer >= 0"),
                         ({"rank": 2, "world": 2}, "rank 2 is not below world 2"),
                         ({"prefetch": 0}, "prefetch must be an integer >= 1")):
        with pytest.raises(ModelError, match=text):
            TrainData(g, base_dir=folder, **kwargs)
    with pytest.raises(ModelError, match="iteration must be an integer >= 0, got -1"):
        TrainData(g, base_dir=folder, workers=0).batch(-1)


# ---------------------------------------------------------------- the shipped fixture
def test_fashion_train_batches_are_the_evaluation_decoding_of_the_same_records():
    """fixtures/fashion's TRAIN layer reads train_list.txt (64 images, shuffle, mirror,
    28 x 28 grey, scale 1/255): every batch holds the evaluation path's images of the
    records it names, flipped where it says so, and each epoch covers the 64 once."""
    g = cs.load(FASHION / "fashion_train_val.prototxt", phase="TRAIN")
    whole, source = read_records(g, 64, base_dir=FASHION)
    assert source.endswith("train_list.txt") and whole.shape == (64, 1, 28, 28)
    labels = [int(line.rsplit(" ", 1)[1]) for line in
              (FASHION / "train_list.txt").read_text().splitlines() if line.strip()]
    with TrainData(g, base_dir=FASHION, seed=0, workers=2, processes=True, prefetch=2) as data:
        assert (data.batch_size, data.shuffle) == (64, True)
        for it, b in data.batches(0, 3):
            plan = data.records(it)
            assert sorted(r for r, _, _ in plan) == list(range(64))
            want = np.stack([whole[r][:, :, ::-1] if f else whole[r] for r, _, f in plan])
            np.testing.assert_array_equal(b["data"], want)
            np.testing.assert_array_equal(b["label"], np.asarray([labels[r] for r, _, _ in plan], F32))
