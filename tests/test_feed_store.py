"""FeedStore: evaluation batches in memory up to a budget, the rest in a mapped temporary file."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.errors import ModelError
from caffe_surgeon.evaluation import CaffeEvaluator, DarknetClassifierEvaluator
from caffe_surgeon.evaluation.feed_store import FEED_MEMORY, FeedStore, feed_memory_budget

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "fashion"


def batches(count=5):
    rng = np.random.default_rng(0)
    return [{"data": rng.standard_normal((b + 1, 3, 5, 7)).astype(np.float32),
             "label": np.arange(b + 1, dtype=np.int64) * 3,
             "rows": rng.standard_normal((b, 8)).astype(np.float32)} for b in range(count)]


@pytest.mark.parametrize("budget", [0, 1000, 1 << 30])
def test_batches_come_back_bit_for_bit_in_order(budget):
    given = batches()
    store = FeedStore(memory_bytes=budget)
    for b in given:
        store.append(b)
    total = sum(a.nbytes for b in given for a in b.values())
    assert len(store) == len(given)
    assert store.memory_bytes + store.spilled_bytes == total
    assert store.memory_bytes <= budget
    assert (store.spilled_bytes == 0) == (budget >= total)
    for got, want in zip(store, given):
        assert list(got) == list(want)
        for k in want:
            assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape
            np.testing.assert_array_equal(got[k], want[k])
    assert [b["label"][0] for b in store[1:3]] == [0, 0]
    assert np.array_equal(store[-1]["label"], given[-1]["label"])


def test_once_spilled_every_later_batch_is_spilled_and_cannot_be_written():
    store = FeedStore(memory_bytes=1000)
    small = {"x": np.ones(10, np.float32)}
    big = {"x": np.ones(1000, np.float32)}
    for b in (small, big, small):
        store.append(b)
    assert store.memory_bytes == 40 and store.spilled_bytes == 4040  # order kept: small goes too
    assert small["x"].flags.writeable  # the caller's arrays are left as they were
    for i in (0, 2):  # in memory or mapped, batches are read-only: nothing changes them
        with pytest.raises(ValueError):
            store[i]["x"][0] = 5
    store.append({"x": np.full(3, 7, np.float32)})  # the file grows after a read: remapped
    np.testing.assert_array_equal(store[3]["x"], [7, 7, 7])
    again = pickle.loads(pickle.dumps(store))
    assert again.spilled_bytes == 0 and len(again) == 4
    np.testing.assert_array_equal(again[1]["x"], big["x"])


def test_the_budget_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CAFFE_SURGEON_FEED_MEMORY", raising=False)
    assert feed_memory_budget() == FEED_MEMORY
    for text, value in [("512M", 512 << 20), ("2g", 2 << 30), ("1.5K", 1536), ("100", 100),
                        ("2GB", 2 << 30), ("64MiB", 64 << 20), ("0", 0)]:
        monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", text)
        assert feed_memory_budget() == value
    assert feed_memory_budget(7) == 7
    for bad in ("lots", "-1M", "inf", "M"):
        monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", bad)
        with pytest.raises(ModelError, match=f"CAFFE_SURGEON_FEED_MEMORY='{bad}'"):
            feed_memory_budget()


def test_a_full_disk_is_a_clear_error(tmp_path, monkeypatch):
    if not Path("/dev/full").exists():
        pytest.skip("no /dev/full")
    monkeypatch.setattr("caffe_surgeon.evaluation.feed_store._anonymous_file",
                        lambda d: open("/dev/full", "w+b", buffering=0))
    store = FeedStore(memory_bytes=0, directory=tmp_path)
    for _ in range(2):  # a small array too: nothing waits in a buffer to fail later
        with pytest.raises(ModelError, match=r"cannot spill .*No space left on device.*"
                                             r"CAFFE_SURGEON_FEED_MEMORY"):
            store.append({"label": np.ones(4, np.float32)})


def test_the_spill_file_leaves_no_name_behind(tmp_path):
    store = FeedStore(memory_bytes=0, directory=tmp_path)
    store.append({"x": np.ones(100, np.float32)})
    assert os.listdir(tmp_path) == []
    np.testing.assert_array_equal(store[0]["x"], np.ones(100))


@pytest.fixture
def fashion(tmp_path):
    return FIX


@pytest.mark.parametrize("test_iter", [10, 13, 1])  # 13 x 50 wraps around the 500 images
def test_caffe_feeds_are_the_same_in_memory_and_mapped(fashion, test_iter, monkeypatch):
    g = cs.load(fashion / "fashion_train_val.prototxt", fashion / "fashion.caffemodel", phase="TEST")
    runs = {}
    for budget in ("8G", "0", "300K"):
        monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", budget)
        ev = CaffeEvaluator(g, "top-1", test_iter=test_iter, base_dir=fashion)
        runs[budget] = (ev.feeds, ev.evaluate(g), ev.feeds.spilled_bytes)
    feeds, metric, spilled = runs["8G"]
    assert spilled == 0 and runs["0"][2] > 0
    for other, m, _ in (runs["0"], runs["300K"]):
        assert m == metric and len(other) == len(feeds) == test_iter
        for a, b in zip(feeds, other):
            for k in a:
                np.testing.assert_array_equal(a[k], b[k])
    if test_iter == 13:  # batch 10 starts again at record 0: the same pixels and labels
        for k in feeds[0]:
            np.testing.assert_array_equal(runs["0"][0][10][k], feeds[0][k])


def test_darknet_feeds_are_the_same_in_memory_and_mapped(fashion, monkeypatch):
    g = cs.load(fashion / "fashion.cfg", fashion / "fashion.weights")
    got = []
    for budget in ("8G", "0"):
        monkeypatch.setenv("CAFFE_SURGEON_FEED_MEMORY", budget)
        ev = DarknetClassifierEvaluator(fashion / "fashion.data", g, batch_size=64, base_dir=fashion)
        got.append((ev.evaluate(g), np.concatenate([f["data"] for f in ev.feeds]),
                    ev.feeds.spilled_bytes))
    assert got[0][0] == got[1][0] and np.array_equal(got[0][1], got[1][1])
    assert got[0][2] == 0 and got[1][2] == got[1][1].nbytes and len(got[0][1]) == 500


def test_empty_and_scalar_arrays_keep_their_shapes():
    store = FeedStore(memory_bytes=0)
    store.append({"rows": np.zeros((0, 8), np.float32)})  # a batch with no boxes
    store.append({"rows": np.zeros((0, 8), np.float32), "x": np.arange(3, dtype=np.int32)})
    assert store[0]["rows"].shape == (0, 8) and store[1]["rows"].dtype == np.float32
    np.testing.assert_array_equal(store[1]["x"], [0, 1, 2])
    store.append({"s": np.float32(3.5) * np.ones((), np.float32)})
    assert store[2]["s"].shape == () and store[2]["s"] == 3.5
