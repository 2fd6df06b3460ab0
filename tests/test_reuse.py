"""reusable_values: which values of a dense-pruned model are the original's, sliced.

Checked by running both models with every intermediate value kept: each value
listed as reusable (before the first changed layer or after it) must equal the
original's at the listed channels, and the first changed layer must really change.
"""
from __future__ import annotations

from pathlib import Path

import re

import numpy as np
import pytest

import caffe_surgeon as cs
from caffe_surgeon.engine import Executor
from caffe_surgeon.layers.registry import feed_shapes
from caffe_surgeon.pruning import analyse, apply, make_plan, node_keep
from caffe_surgeon.pruning.reuse import reusable_values

from assets import zoo

ROOT = Path(__file__).resolve().parents[1]
FIX = ROOT / "fixtures"

NORMALIZE_NET = """
name: "norm"
input: "data"
input_shape { dim: 1 dim: 3 dim: 12 dim: 12 }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu1" type: "ReLU" bottom: "conv1" top: "conv1" }
layer { name: "norm1" type: "Normalize" bottom: "conv1" top: "norm1"
        norm_param { across_spatial: false channel_shared: false } }
layer { name: "conv2" type: "Convolution" bottom: "norm1" top: "conv2"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def every_value(graph, feed):
    ex = Executor(graph)
    res = ex.run(feed, outputs=[], layer_outputs=[l.name for l in graph.layers])
    return {(i, t): res[f"{l.name}:{t}"] for i, l in enumerate(graph.layers) for t in l.tops}


def random_feed(graph, a, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((2,) + tuple(s[1:])).astype(np.float32)
            for k, s in feed_shapes(graph, a.shapes).items()}


def check_every_group(graph, ratio=0.5):
    a = analyse(graph)
    feed = random_feed(graph, a)
    original = every_value(graph, feed)
    starts = {}
    for grp in a.prunable_groups():
        plan = make_plan(a, ratios={grp.id: ratio})
        reuse = reusable_values(a, node_keep(a, plan))
        pruned_graph = apply(graph, plan, "dense", fold=True, analysis=a)
        pruned = every_value(pruned_graph, feed)
        first_member = min(graph.index(m) for m in grp.members)
        assert first_member <= reuse.start < len(graph.layers), grp.producers
        sliced = 0
        assert reuse.changed and reuse.changed[0] == reuse.start
        assert list(reuse.changed) == sorted(set(reuse.changed))
        for v, idx in reuse.columns.items():
            if v[0] < 0:
                continue
            assert v[0] not in reuse.changed
            want = original[v] if idx is None else np.take(original[v], idx, axis=1)
            # the same function, computed with other GEMM shapes: equal to float rounding
            assert pruned[v].shape == want.shape, (grp.producers, v)
            assert np.abs(pruned[v] - want).max() <= 1e-5 * max(np.abs(want).max(), 1e-30), \
                (grp.producers, v)
            np.testing.assert_array_equal(reuse.take(v, original[v]), want)
            sliced += idx is not None
        assert sliced, f"group {grp.producers}: no producer output listed as a channel subset"
        # the first changed layer really changes: some top differs from every reading of the original
        layer = graph.layers[reuse.start]
        changed = False
        for t in layer.tops:
            p, o = pruned[(reuse.start, t)], original[(reuse.start, t)]
            changed |= p.shape != o.shape or np.abs(p - o).max() > 1e-3 * np.abs(o).max()
        assert changed, f"group {grp.producers}: layer {layer.name} is listed as changed but is not"
        starts[tuple(grp.producers)] = layer.name
        # every version is either listed or written by a changed layer
        for i, l in enumerate(graph.layers):
            for t in l.tops:
                assert ((i, t) in reuse.columns) != (i in reuse.changed), (grp.producers, l.name)
    return starts


def test_fashion_fixture_consumers_start_the_recomputation():
    g = cs.load(FIX / "fashion/fashion_deploy.prototxt", FIX / "fashion/fashion.caffemodel")
    starts = check_every_group(g)
    # conv1's BN/Scale/ReLU and pool1 keep their values: conv2a, the first consumer, starts
    assert starts[("conv1",)] == "conv2a"
    # the Concat of b3a/b3b only moves channels: conv4 reads it and starts
    assert starts[("b3a",)] == starts[("b3b",)] == "conv4"


def test_tinynet_eltwise_and_concat_groups():
    check_every_group(cs.load(FIX / "caffe/tinynet_deploy.prototxt", FIX / "caffe/tinynet.caffemodel"))


def test_darknet_routes_and_upsample():
    g = cs.init(cs.load(FIX / "darknet/tiny-yolo.cfg"), seed=3)
    check_every_group(g, ratio=0.3)


def test_a_head_group_leaves_the_other_head_unchanged(tmp_path):
    """yolov3-tiny: the first head's last 3x3 conv feeds only that head; the second head
    (route, 1x1, upsample, route, convs, yolo) comes later but keeps the original's values."""
    text = zoo("darknet/pjreddie/yolov3-tiny.cfg").read_text()
    cfg = tmp_path / "yolov3-tiny.cfg"
    cfg.write_text(re.sub(r"(?m)^(width|height)\s*=\s*416", r"\1=128", text))
    g = cs.init(cs.load(cfg), seed=4)
    a = analyse(g)
    names = [l.name for l in g.layers]
    grp = next(x for x in a.prunable_groups() if x.producers == ["convolutional_14"])
    plan = make_plan(a, ratios={grp.id: 0.5})
    reuse = reusable_values(a, node_keep(a, plan))
    assert [names[i] for i in reuse.changed] == ["convolutional_15", "yolo_16"]
    assert reuse.start == names.index("convolutional_15")
    feed = random_feed(g, a)
    original = every_value(g, feed)
    pruned = every_value(apply(g, plan, "dense", fold=True, analysis=a), feed)
    head2 = names.index("yolo_23")
    assert reuse.columns[(head2, g.layers[head2].tops[0])] is None
    for i in range(reuse.start, len(names)):
        for t in g.layers[i].tops:
            same = np.array_equal(pruned[(i, t)], original[(i, t)])
            assert same == (i not in reuse.changed), names[i]


def test_darknet_fixture_twin():
    check_every_group(cs.load(FIX / "fashion/fashion.cfg", FIX / "fashion/fashion.weights"))


def test_normalize_mixes_channels_so_it_changes(tmp_path):
    proto = tmp_path / "norm.prototxt"
    proto.write_text(NORMALIZE_NET)
    g = cs.init(cs.load(proto), seed=1)
    starts = check_every_group(g)
    assert starts[("conv1",)] == "norm1"  # not conv2: the norm runs over the kept channels only
    from caffe_surgeon.pruning.surgery import constants_stand_alone
    assert not constants_stand_alone(analyse(g))  # ana then folds plan by plan


@pytest.mark.parametrize("ratio", [0.25, 0.75])
def test_keep_all_lists_nothing_as_changed(ratio):
    g = cs.load(FIX / "fashion/fashion_deploy.prototxt", FIX / "fashion/fashion.caffemodel")
    a = analyse(g)
    keep = np.ones(len(a.node_space), bool)
    reuse = reusable_values(a, keep)
    assert reuse.start == len(g.layers)
    assert all(idx is None for idx in reuse.columns.values())


MULTI_TOP_NET = """
name: "twin"
input: "a"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
input: "b"
input_shape { dim: 1 dim: 3 dim: 8 dim: 8 }
layer { name: "conv1" type: "Convolution" bottom: "a" bottom: "b" top: "c1a" top: "c1b"
        convolution_param { num_output: 8 kernel_size: 3 pad: 1 } }
layer { name: "relu" type: "ReLU" bottom: "c1b" top: "r" }
layer { name: "conv2" type: "Convolution" bottom: "c1a" top: "c2"
        convolution_param { num_output: 4 kernel_size: 1 } }
"""


def test_a_cut_producer_with_an_untraced_second_top_changes(tmp_path):
    """Only a producer's first top is traced; its other tops shrink all the same."""
    proto = tmp_path / "twin.prototxt"
    proto.write_text(MULTI_TOP_NET)
    g = cs.init(cs.load(proto), seed=2)
    a = analyse(g)
    grp = next(x for x in a.prunable_groups() if x.producers == ["conv1"])
    reuse = reusable_values(a, node_keep(a, make_plan(a, ratios={grp.id: 0.5})))
    assert reuse.start == g.index("conv1")
    assert (0, "c1b") not in reuse.columns and (1, "r") not in reuse.columns


def test_executor_runs_only_the_listed_layers():
    """Executor.run(only=): the changed layers alone, from the original's sliced values, give
    the pruned model's output; a value nobody supplied is named; a fused chain never pulls in
    followers outside ``only``."""
    g = cs.load(FIX / "fashion/fashion_deploy.prototxt", FIX / "fashion/fashion.caffemodel")
    a = analyse(g)
    feed = random_feed(g, a)
    original = every_value(g, feed)
    grp = next(x for x in a.prunable_groups() if x.producers == ["conv2b"])
    plan = make_plan(a, ratios={grp.id: 0.5})
    reuse = reusable_values(a, node_keep(a, plan))
    pruned = apply(g, plan, "dense", fold=True, analysis=a)
    ex = Executor(pruned)
    only = set(reuse.changed)
    reads = {v for i in reuse.changed for v in ex.reads[i] if v[0] not in only}
    cache = {v: reuse.take(v, original[v]) for v in reads}
    got = ex.run(None, start=reuse.start, cache=cache, only=only)
    want = Executor(pruned).run(feed)
    for name in want:
        assert np.abs(got[name] - want[name]).max() <= 1e-5 * np.abs(want[name]).max()
    missing = min(reads, key=lambda v: v[0])
    with pytest.raises(cs.ModelError, match="not available") as err:
        ex.run(None, start=reuse.start, cache={v: a for v, a in cache.items() if v != missing},
               only=only)
    assert g.layers[min(i for i in reuse.changed if missing in ex.reads[i])].name in str(err.value)
    # conv1 fuses BN, Scale and ReLU when they run; with only={conv1} they must not
    conv1 = g.index("conv1")
    assert Executor(g).chains[conv1] == [2, 3, 4]
    plain = Executor(g).run(feed, outputs=[], layer_outputs=["conv1"], only={0, conv1})
    np.testing.assert_array_equal(plain["conv1:conv1"], original[(conv1, "conv1")])
    with pytest.raises(cs.ModelError, match="not computed"):  # conv1's final value: relu's
        Executor(g).run(feed, outputs=["conv1"], only={0, conv1})


@pytest.mark.slow
@pytest.mark.parametrize("rel", ["caffe/mobilenet_ssd/MobileNetSSD_deploy.prototxt",
                                 "caffe/opencv/face_detector_deploy.prototxt",
                                 "darknet/pjreddie/yolov3-tiny.cfg",
                                 "caffe/ssd/VGG_VOC0712_SSD_300x300_deploy.prototxt"])
def test_zoo_detectors_changed_layers_alone_give_the_pruned_outputs(rel):
    """Real multi-head topologies: for every group whose pruning leaves later layers
    unchanged, running only the changed layers (as ana does) on the original's values gives
    the pruned model's outputs, and the unchanged layers' outputs are the original's bits."""
    g = cs.init(cs.load(zoo(rel)), seed=11)
    a = analyse(g)
    feed = random_feed(g, a)
    ex = Executor(g)
    original = None
    tried = 0
    for grp in a.prunable_groups():
        plan = make_plan(a, ratios={grp.id: 0.5})
        reuse = reusable_values(a, node_keep(a, plan))
        later = set(range(reuse.start, len(g.layers))) - set(reuse.changed)
        if not later:
            continue
        if original is None:
            original = every_value(g, feed)
        tried += 1
        pruned = apply(g, plan, "dense", fold=True, analysis=a)
        pex = Executor(pruned)
        only = set(reuse.changed)
        cache = {v: reuse.take(v, original[v] if v[0] >= 0 else feed[v[1]])
                 for i in reuse.changed for v in pex.reads[i] if v[0] not in only}
        got = pex.run(None, start=reuse.start, cache=cache, only=only,
                      outputs=[o for o in g.outputs if ex.version_of(o)[0] in only])
        want = Executor(pruned).run(feed)
        for name, arr in got.items():
            scale = max(np.abs(want[name]).max(), 1e-30)
            assert np.abs(arr - want[name]).max() <= 1e-4 * scale, (grp.producers, name)
        for name in g.outputs:
            v = ex.version_of(name)
            if v[0] in later:
                np.testing.assert_array_equal(reuse.take(v, original[v]), want[name])
    assert tried, f"{rel}: no group leaves a later layer unchanged"


@pytest.mark.parametrize("first", [
    'type: "ReLU" bottom: "data" top: "p"',
    'type: "Scale" bottom: "data" top: "p" scale_param { bias_term: true }',
    'type: "BatchNorm" bottom: "data" top: "p"',
    'type: "Eltwise" bottom: "data" bottom: "data" top: "p"',
    'type: "Reshape" bottom: "data" top: "v" reshape_param { shape { dim: 0 dim: -1 dim: 1 '
    'dim: 1 } } } layer { name: "r" type: "ReLU" bottom: "v" top: "v" } layer { name: "u" '
    'type: "Reshape" bottom: "v" top: "p" reshape_param { shape { dim: 0 dim: 2 dim: 3 dim: 3 } }',
])
def test_the_callers_inputs_are_never_overwritten(first, tmp_path):
    # Evaluators feed the same arrays to every pruned variant: an in-place first layer
    # (or one reading a view of the input) must not change them.
    proto = tmp_path / "n.prototxt"
    proto.write_text(f'name: "n" input: "data" input_shape {{ dim: 2 dim: 2 dim: 3 dim: 3 }}\n'
                     f'layer {{ name: "f" {first} }}\n'
                     'layer { name: "c" type: "Convolution" bottom: "p" top: "c" '
                     'convolution_param { num_output: 2 kernel_size: 1 } }\n')
    g = cs.load(proto)
    cs.init(g, seed=1)
    if "BatchNorm" in first:
        g.layer("f").weights = {"mean": np.full(2, 0.5, np.float32), "variance": np.ones(2, np.float32),
                                "scale_factor": np.ones(1, np.float32)}
    x = np.random.default_rng(5).standard_normal((2, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    ex = Executor(g)
    first_run = ex.run({"data": x})["c"]
    ex.prefix({"data": x}, 1)
    np.testing.assert_array_equal(x, before)
    np.testing.assert_array_equal(ex.run({"data": x})["c"], first_run)
    np.testing.assert_array_equal(Executor(g).run({"data": before.copy()})["c"], first_run)


def test_resuming_from_a_prefix_leaves_the_inputs_and_the_cache_alone(tmp_path):
    # data is read again after the prefix, by an in-place ReLU and an Eltwise that could
    # both write into it: the prefix hands back the caller's own array
    proto = tmp_path / "n.prototxt"
    proto.write_text('name: "n" input: "data" input_shape { dim: 2 dim: 2 dim: 3 dim: 3 }\n'
                     'layer { name: "c0" type: "Convolution" bottom: "data" top: "c0" '
                     'convolution_param { num_output: 2 kernel_size: 1 } }\n'
                     'layer { name: "r" type: "ReLU" bottom: "data" top: "data" }\n'
                     'layer { name: "e" type: "Eltwise" bottom: "data" bottom: "c0" top: "e" }\n')
    g = cs.load(proto)
    cs.init(g, seed=2)
    x = np.random.default_rng(7).standard_normal((2, 2, 3, 3)).astype(np.float32)
    before = x.copy()
    ex = Executor(g)
    cache = ex.prefix({"data": x}, 1)
    kept = {v: a.copy() for v, a in cache.items()}
    first = ex.run(cache=cache, start=1)["e"]
    np.testing.assert_array_equal(x, before)
    assert all(np.array_equal(cache[v], kept[v]) for v in kept)
    np.testing.assert_array_equal(ex.run(cache=cache, start=1)["e"], first)
    np.testing.assert_array_equal(Executor(g).run({"data": before})["e"], first)
    x.flags.writeable = False  # a read-only input (a mapped feed) runs the same
    np.testing.assert_array_equal(ex.run(cache=ex.prefix({"data": x}, 1), start=1)["e"], first)
    # donate_cache: the caller gives its arrays up, and the in-place ReLU takes one
    mine = {v: a.copy() for v, a in ex.prefix({"data": before}, 1).items()}
    np.testing.assert_array_equal(ex.run(cache=mine, start=1, donate_cache=True)["e"], first)
    assert any(not np.array_equal(mine[v], kept[v]) for v in kept)
