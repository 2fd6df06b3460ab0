"""TRAIN batches without labels (``TrainData(labelled=False)``): what label-free
finetuning (distillation) reads. An ImageData source may be a list of bare paths, a
labelled list (labels ignored) or a folder of images; batches hold the data top alone."""
from __future__ import annotations

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.training.train_data import TrainData
from test_train_data import F32, grey_images, image_data, lmdb_data, write_list, write_lmdb


def test_a_list_of_bare_paths_gives_batches_of_images_alone_in_line_order(tmp_path):
    images = grey_images(5)
    write_list(tmp_path, images)
    (tmp_path / "list.txt").write_text("".join(f"{k:03d}.png\n" for k in range(5)))
    g = image_data(tmp_path, 3, "scale: 0.5")
    with pytest.raises(ModelError, match=r"list.txt:1: expected 'path label'"):
        TrainData(g, base_dir=tmp_path, workers=0)  # a labelled run still needs labels
    with TrainData(g, base_dir=tmp_path, workers=0, labelled=False) as data:
        assert data.tops == ["data"]
        for it, want in enumerate([[0, 1, 2], [3, 4, 0]]):
            b = data.batch(it)
            assert list(b) == ["data"]
            np.testing.assert_array_equal(b["data"][:, 0], images[want].astype(F32) * F32(0.5))


def test_a_labelled_list_is_read_as_paths_with_its_labels_dropped(tmp_path):
    images = grey_images(4)
    write_list(tmp_path, images, labels=[7, 7, 7, 7])
    g = image_data(tmp_path, 4)
    b = TrainData(g, base_dir=tmp_path, workers=0, labelled=False).batch(0)
    assert list(b) == ["data"]
    np.testing.assert_array_equal(b["data"][:, 0], images.astype(F32))


def test_a_folder_source_gives_its_images_in_name_order(tmp_path):
    images = grey_images(3)
    write_list(tmp_path, images)
    (tmp_path / "img" / "notes.txt").write_text("not an image")
    (tmp_path / "train.prototxt").write_text(
        'name: "t"\nlayer { name: "data" type: "ImageData" top: "data" top: "label" '
        'include { phase: TRAIN }\n image_data_param { source: "img" batch_size: 3 '
        'is_color: false } }\n')
    g = cs.load(tmp_path / "train.prototxt", phase="TRAIN")
    with TrainData(g, base_dir=tmp_path, workers=1, labelled=False) as data:
        (_, b), = list(data.batches(0, 1))
    np.testing.assert_array_equal(b["data"][:, 0], images.astype(F32))
    (tmp_path / "empty").mkdir()
    (tmp_path / "train.prototxt").write_text(
        (tmp_path / "train.prototxt").read_text().replace('"img"', '"empty"'))
    g = cs.load(tmp_path / "train.prototxt", phase="TRAIN")
    with pytest.raises(ModelError, match="holds no image files"):
        TrainData(g, base_dir=tmp_path, workers=0, labelled=False)


def test_an_lmdb_source_drops_its_labels(tmp_path):
    write_lmdb(tmp_path / "db", {b"a": (grey_images(1)[:, None][0], 3)})
    b = TrainData(lmdb_data(tmp_path, 2), base_dir=tmp_path, workers=0, labelled=False).batch(0)
    assert list(b) == ["data"] and b["data"].shape == (2, 1, 8, 8)
