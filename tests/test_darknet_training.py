"""Darknet training against libdarknet.so (the Debian package, pjreddie 2018): the same cfg,
weights and batches through ``train_network`` there and ``DarknetTrainer`` here must give the
same loss every iteration and the same weights, biases, scales and rolling statistics after
1 and after 10 iterations: 1e-4 relative to the array's largest value, and 1e-3 relative to
the largest change training made to it (the weights move by 3-100% of their size here, so
the first bound alone would let a wrong update through).

The batches change every iteration; burn_in, the steps / poly policies, momentum, decay and
subdivisions=2 all act within the 10 iterations, and the [region] net starts at seen=12780
so that the 12,800-image prior warm-up ends in the middle.
"""
from __future__ import annotations

import json
import struct

import numpy as np
import pytest

import libdarknet_oracle as lo
from assets import FIXTURES, need_module, needs

torch = need_module("torch")

from caffe_surgeon.darknet.reader import read_darknet, weight_layouts  # noqa: E402
from caffe_surgeon.errors import ModelError  # noqa: E402
from caffe_surgeon.training.darknet_trainer import DarknetTrainer  # noqa: E402

TRAIN = FIXTURES / "darknet" / "train"
TINY, REGION = TRAIN / "yolov3_tiny_shaped.cfg", TRAIN / "yolov2_region.cfg"
ITERATIONS = 10
TOLERANCE = 1e-4
CHANGE_TOLERANCE = 1e-3
needs_lib = needs(lo.available(), "libdarknet.so (Debian package darknet) missing")


def random_weights(cfg, path, seed: int, seen: int = 0):
    """A .weights file for ``cfg`` written byte by byte (header 0.2.0 + float32), He-scaled
    weights, BatchNorm scales near 1 and positive variances."""
    rng = np.random.default_rng(seed)
    parts = []
    for lay in weight_layouts(read_darknet(cfg)):
        for a in lay.arrays:
            if a.name == "weights":
                v = rng.normal(0, np.sqrt(2.0 / (a.count // a.shape[0])), a.count)
            elif a.name == "scales":
                v = rng.uniform(.8, 1.2, a.count)
            elif a.name == "rolling_variance":
                v = rng.uniform(.5, 1.5, a.count)
            else:
                v = rng.normal(0, .1, a.count)
            parts.append(v.astype("<f4"))
    path.write_bytes(struct.pack("<3iQ", 0, 2, 0, seen) + np.concatenate(parts).tobytes())
    return path


def random_batches(cfg, k: int, seed: int, size=None):
    """``k`` batches of [net] batch images in [0, 1] (the cfg's size, or ``size`` = (w, h))
    and 1-3 truth boxes each, (k, N, 90, 5)."""
    g = read_darknet(cfg)
    _, c, h, w = g.inputs["data"]
    w, h = size or (w, h)
    n = int(g.meta["batch"])
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 1, (k, n, c, h, w)).astype(np.float32)
    truths = np.zeros((k, n, 90, 5), np.float32)
    for i in range(k):
        for b in range(n):
            for t in range(rng.integers(1, 4)):
                truths[i, b, t] = [rng.uniform(.05, .95), rng.uniform(.05, .95),
                                   rng.uniform(.05, .7), rng.uniform(.05, .7), rng.integers(0, 2)]
    return images, truths


def oracle_run(cfg, weights, images, truths, rows, out):
    """libdarknet's losses and its saved weights after iterations 1 and 10 (the network
    resized to the images' size when it differs from the cfg's)."""
    np.save(out / "images.npy", images)
    np.save(out / "truths.npy", np.ascontiguousarray(truths[:, :, :rows]))
    _, _, _, h, w = images.shape
    lo.call("train", cfg, weights, out / "images.npy", out / "truths.npy", out,
            f"1,{ITERATIONS}", w, h, timeout=120)
    losses = json.loads((out / "losses.json").read_text())
    return losses, {k: read_darknet(cfg, out / f"{k}.weights") for k in (1, ITERATIONS)}


def worst_errors(trainer, reference, start=None):
    """Per array, max |ours - darknet| / max |darknet| (with ``start``, the graph training
    began from: divided by max |darknet - start| instead, for arrays that changed); and the
    seen counters."""
    mine = trainer.trained_graph()
    errors = {}
    for i, (a, b) in enumerate(zip(mine.layers, reference.layers)):
        for name in a.weights:
            ours, theirs = a.weights[name].astype(np.float64), b.weights[name].astype(np.float64)
            scale = np.abs(theirs).max() if start is None else \
                np.abs(theirs - start.layers[i].weights[name]).max()
            if scale > 0:
                errors[f"{a.name}.{name}"] = np.abs(ours - theirs).max() / scale
    return errors, (mine.origin.header.seen, reference.origin.header.seen)


@pytest.fixture(scope="module")
def tiny_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny")
    weights = random_weights(TINY, out / "start.weights", seed=1)
    images, truths = random_batches(TINY, ITERATIONS, seed=2)
    losses, saved = oracle_run(TINY, weights, images, truths, 90, out)
    return weights, images, truths, losses, saved


@pytest.fixture(scope="module")
def region_case(tmp_path_factory):
    out = tmp_path_factory.mktemp("region")
    weights = random_weights(REGION, out / "start.weights", seed=3, seen=12780)
    images, truths = random_batches(REGION, ITERATIONS, seed=4)
    losses, saved = oracle_run(REGION, weights, images, truths, 30, out)
    return weights, images, truths, losses, saved


def _train_and_compare(cfg, case, **options):
    weights, images, truths, their_losses, saved = case
    trainer = DarknetTrainer(read_darknet(cfg, weights), **options)
    start = read_darknet(cfg, weights)
    report = {}
    for k in range(ITERATIONS):
        loss = trainer.train(images[k], truths[k])
        assert loss == pytest.approx(their_losses[k], rel=TOLERANCE), (k + 1, loss,
                                                                       their_losses[k])
        if k + 1 in saved:
            errors, (seen, their_seen) = worst_errors(trainer, saved[k + 1])
            assert seen == their_seen
            report[k + 1] = errors
            report[f"change {k + 1}"], _ = worst_errors(trainer, saved[k + 1], start)
    return trainer, report


def _assert_within(report):
    for k, errors in report.items():
        worst = max(errors, key=errors.get)
        bound = CHANGE_TOLERANCE if str(k).startswith("change") else TOLERANCE
        assert errors[worst] < bound, (k, worst, errors[worst])


@needs_lib
def test_yolov3_tiny_shaped_training_matches_libdarknet_after_1_and_10_iterations(tiny_case):
    _, report = _train_and_compare(TINY, tiny_case)
    _assert_within(report)


@needs_lib
def test_region_training_matches_libdarknet_across_the_prior_warmup_and_burn_in(region_case):
    """The CPU build's region backward is commented out: with region_backward="cpu" only
    decay, momentum and the BatchNorm statistics move, and the losses check the deltas."""
    trainer, report = _train_and_compare(REGION, region_case, region_backward="cpu")
    assert trainer.seen == 12780 + 4 * ITERATIONS  # crossed 12800 in the 5th iteration
    _assert_within(report)
    assert "convolutional_14.biases" not in report[f"change {ITERATIONS}"]  # no gradient


@needs_lib
def test_the_oracle_notices_darknet_dropping_deltas_a_1x1_convolution_overwrites(tiny_case):
    """A test of the test: summing every reader's gradient, as autograd would by itself,
    instead of letting the 1x1 convolution after maxpool_7 overwrite route_11's part,
    moves the backbone's weights away from libdarknet's."""
    weights, images, truths, _, saved = tiny_case
    trainer = DarknetTrainer(read_darknet(TINY, weights))
    trainer.overwritten = set()
    trainer.train(images[0], truths[0])
    errors, _ = worst_errors(trainer, saved[1], read_darknet(TINY, weights))
    assert errors["convolutional_0.weights"] > 100 * CHANGE_TOLERANCE
    assert errors["convolutional_16.weights"] < CHANGE_TOLERANCE  # the head's side is right


def test_how_darknet_trains_each_section_is_stated_where_its_torch_forward_registers():
    """The trainable sections, the heads and the backwards that assign the delta below come
    from the torch backend's registrations: a forward registered without its rule would
    leave its section refused, or sum deltas Darknet drops."""
    from caffe_surgeon.graph import Layer
    from caffe_surgeon.training.torch_darknet_train import (head_of, overwrites_input_delta,
                                                            training_refusal)

    def section(t, **params):
        return Layer(name=f"{t}_0", type=t, bottoms=["x"], tops=["y"], params=params)

    trainable = ["activation", "avgpool", "convolutional", "maxpool", "region", "reorg",
                 "route", "shortcut", "upsample", "yolo"]
    for t in trainable:
        assert training_refusal(section(t)) == "", t
    for t in ["reorg3d", "dropout", "connected", "crop", "batchnorm", "softmax"]:
        why = training_refusal(section(t))
        assert f"[{t}] section" in why and f"trainable: {', '.join(trainable)})" in why, why
    assert [t for t in trainable if head_of(section(t))] == ["region", "yolo"]
    assert head_of(section("region")).logistic_backward
    assert not head_of(section("yolo")).logistic_backward
    assigning = [section("convolutional", size=1), section("convolutional"),  # size=1 default
                 section("upsample", stride=-2),
                 section("reorg"), section("activation", activation="leaky")]
    adding = [section("convolutional", size=3), section("upsample", stride=2), section("route", layers="-1"), section("shortcut"),
              section("maxpool"), section("yolo"), section("reorg3d"), section("dropout")]
    assert all(overwrites_input_delta(layer) for layer in assigning)
    assert not any(overwrites_input_delta(layer) for layer in adding)


def test_same_inputs_give_byte_identical_weights_and_seen_in_the_header(tmp_path):
    weights = random_weights(TINY, tmp_path / "start.weights", seed=5, seen=8)
    images, truths = random_batches(TINY, 2, seed=6)
    files = []
    for run in range(2):
        trainer = DarknetTrainer(read_darknet(TINY, weights))
        for k in range(2):
            trainer.train(images[k], truths[k])
        files.append(tmp_path / f"run{run}.weights")
        trainer.save_weights(files[-1])
    assert files[0].read_bytes() == files[1].read_bytes()
    assert read_darknet(TINY, files[0]).origin.header.seen == 8 + 2 * 4
    assert files[0].read_bytes() != weights.read_bytes()


def test_a_resumed_snapshot_continues_bit_exactly(tmp_path):
    weights = random_weights(TINY, tmp_path / "start.weights", seed=7)
    images, truths = random_batches(TINY, 4, seed=8)
    straight = DarknetTrainer(read_darknet(TINY, weights))
    for k in range(2):
        straight.train(images[k], truths[k])
    straight.save_snapshot(tmp_path / "snap.npz", extra={"loader": [1, 2]})
    for k in range(2, 4):
        straight.train(images[k], truths[k])
    resumed = DarknetTrainer(read_darknet(TINY, weights))
    assert resumed.load_snapshot(tmp_path / "snap.npz") == {"loader": [1, 2]}
    assert resumed.seen == 8
    for k in range(2, 4):
        resumed.train(images[k], truths[k])
    straight.save_weights(tmp_path / "a.weights")
    resumed.save_weights(tmp_path / "b.weights")
    assert (tmp_path / "a.weights").read_bytes() == (tmp_path / "b.weights").read_bytes()
    for (key, u), v in zip(straight.sgd.updates.items(), resumed.sgd.updates.values()):
        assert torch.equal(u, v), key  # momentum carried over too


def test_region_gpu_backward_lowers_the_loss_on_a_repeated_batch(tmp_path):
    """The GPU build's region backward (logistic derivative on x, y, objectness) trains."""
    weights = random_weights(REGION, tmp_path / "start.weights", seed=9, seen=20000)
    images, truths = random_batches(REGION, 1, seed=10)
    g = read_darknet(REGION, weights)
    g.meta.update(burn_in=0, learning_rate=0.05)
    trainer = DarknetTrainer(g)
    losses = [trainer.train(images[0], truths[0]) for _ in range(8)]
    assert losses[-1] < 0.8 * losses[0], losses
    before = read_darknet(REGION, weights).layers[-2].weights["biases"]
    assert not np.array_equal(trainer.trained_graph().layers[-2].weights["biases"], before)


# ---------------------------------------------------------------- refusals and bad input
def _cfg_with(tmp_path, base, old, new):
    text = base.read_text().replace(old, new, 1)
    assert text != base.read_text()
    path = tmp_path / base.name
    path.write_text(text)
    return path


@pytest.mark.parametrize("old, new, needles", [
    ("ignore_thresh = .5", "ignore_thresh = .5\ndelta_normalizer = 2",
     ["[yolo] cannot be trained", "delta_normalizer", "AlexeyAB"]),
    ("ignore_thresh = .5", "ignore_thresh = .5\niou_loss=smoothl1",
     ["[yolo] cannot be trained", "iou_loss"]),
    ("momentum=0.9", "momentum=0.9\nadam=1", ["[net] adam=1 cannot be trained"]),
    ("policy=steps", "policy=random", ["policy=random is not supported", "rand()"]),
    ("batch=4", "batch=5", ["batch=5 is not a positive multiple of subdivisions=2"]),
    ("[upsample]", "[dropout]\nprobability=.5\n\n[upsample]",
     ["[dropout] cannot be trained", "trainable: "]),
    ("[upsample]\nstride=2", "[upsample]\nstride=2\ndontload=1",
     ["[upsample] cannot be trained", "dontload=1"]),
])
def test_settings_darknet_trains_otherwise_are_refused_by_name_in_one_line(tmp_path, old, new,
                                                                           needles):
    cfg = _cfg_with(tmp_path, TINY, old, new)
    with pytest.raises(ModelError) as e:
        DarknetTrainer(read_darknet(cfg, random_weights(cfg, tmp_path / "w.weights", 0)))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in needles), msg


@pytest.mark.parametrize("change, needles", [
    (lambda im, tr: (im[:, :2], tr), ["images are (4, 2, 64, 64)", "(N, 3, H, W)"]),
    (lambda im, tr: (im[:3], tr[:3]), ["3 images is not a positive multiple", "= 2"]),
    (lambda im, tr: (im, tr[:, :40]), ["truths are (4, 40, 5)", ">= 90"]),
    (lambda im, tr: (im, _set(tr, (1, 0, 0), 1.2)), ["truth row 0 of image 1", "x, y in [0, 1)"]),
    (lambda im, tr: (im, _set(tr, (2, 0, 4), 7)), ["truth row 0 of image 2", "class in [0, 2)"]),
])
def test_a_batch_that_breaks_the_data_contract_is_a_clear_error(tmp_path, change, needles):
    trainer = DarknetTrainer(read_darknet(TINY, random_weights(TINY, tmp_path / "w.weights", 0)))
    images, truths = random_batches(TINY, 1, seed=0)
    before = trainer.seen
    with pytest.raises(ModelError) as e:
        trainer.train(*change(images[0], truths[0]))
    assert all(n in str(e.value) for n in needles), str(e.value)
    assert trainer.seen == before  # nothing ran


def _set(a, index, value):
    a = a.copy()
    a[index] = value
    return a


def test_the_readme_darknet_training_example_runs(tmp_path, monkeypatch, capsys):
    """The README's example under "Darknet training", as written, writing into tmp_path."""
    import re
    import tempfile
    readme = (FIXTURES.parent / "README.md").read_text()
    section = readme.split("## Darknet training\n", 1)[1].split("\n## ", 1)[0]
    code = re.findall(r"```python\n(.*?)```", section, re.S)[0]
    monkeypatch.setattr(tempfile, "mkdtemp", lambda *a, **k: str(tmp_path))
    monkeypatch.chdir(FIXTURES.parent)
    exec(compile(code, "README.md", "exec"), {"__name__": "readme"})
    losses = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert len(losses) == 3 and losses[2] < losses[0]
    assert read_darknet(TINY, tmp_path / "trained.weights").origin.header.seen == 12


def _variant(base, section, options, path):
    """``base`` with ``options`` set in its first ``[section]`` (replacing the same keys)."""
    lines = base.read_text().splitlines()
    keys = {kv.split("=")[0] for kv in options}
    start = lines.index(f"[{section}]")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("[")), len(lines))
    body = [line for line in lines[start + 1:end] if line.split("=")[0].strip() not in keys]
    path.write_text("\n".join(lines[:start + 1] + list(options) + body + lines[end:]) + "\n")
    return path


@needs_lib
@pytest.mark.parametrize("base, section, options, rows, seen, backward", [
    (REGION, "region", ("bias_match=0", "rescore=0", "softmax=0"), 30, 12780, "cpu"),
    (REGION, "region", ("background=1",), 30, 12780, "cpu"),
    (REGION, "region", ("thresh=.2", "object_scale=1", "noobject_scale=2"), 30, 0, "cpu"),
    (TINY, "yolo", ("truth_thresh=.3", "ignore_thresh=.1"), 90, 0, "gpu"),
], ids=["region-anchor-by-prediction-logistic", "region-background", "region-scales",
        "yolo-truth-thresh"])
def test_head_options_match_libdarknet_over_10_iterations(tmp_path, base, section, options,
                                                          rows, seen, backward):
    cfg = _variant(base, section, options, tmp_path / base.name)
    weights = random_weights(cfg, tmp_path / "start.weights", seed=11, seen=seen)
    images, truths = random_batches(cfg, ITERATIONS, seed=12)
    case = (weights, images, truths, *oracle_run(cfg, weights, images, truths, rows, tmp_path))
    _, report = _train_and_compare(cfg, case, region_backward=backward)
    _assert_within(report)


@needs_lib
@pytest.mark.parametrize("base, rows, size, backward", [
    (TINY, 90, (96, 96), "gpu"),
    (REGION, 30, (96, 128), "cpu"),
], ids=["yolo-96x96", "region-96x128"])
def test_a_resized_network_trains_as_libdarknet_after_resize_network(tmp_path, base, rows, size,
                                                                       backward):
    """Multi-scale training: batches of another size than the cfg's, as after Darknet's
    resize_network (the heads then measure boxes against the new net.w, net.h)."""
    weights = random_weights(base, tmp_path / "start.weights", seed=13)
    images, truths = random_batches(base, ITERATIONS, seed=14, size=size)
    case = (weights, images, truths, *oracle_run(base, weights, images, truths, rows, tmp_path))
    _, report = _train_and_compare(base, case, region_backward=backward)
    _assert_within(report)
