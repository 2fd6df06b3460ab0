"""Pruning core: groups, plans, dense/sparse surgery, folding, against OpenCV and darknet."""
from __future__ import annotations

import json

import numpy as np
import pytest

import caffe_surgeon as cs
from assets import zoo
from caffe_surgeon.cli.main import main
from caffe_surgeon.engine import Executor
from caffe_surgeon.errors import ModelError
from caffe_surgeon.pruning import Plan, analyse, apply, kept_count, make_plan

from pruning_checks import ROOT, TINY, dense_sparse_check, feeds, needs_cv, rel


# ------------------------------------------------------------------ groups
def test_tinynet_groups_follow_eltwise_concat_and_softmax():
    a = analyse(cs.load(*TINY))
    by_prod = {tuple(g.producers): g for g in a.groups}
    res = by_prod[("conv1", "conv2b")]  # Eltwise ties conv1 and conv2b channel by channel
    assert res.prunable and res.channels == 16
    assert all(len(c) == 2 for c in res.classes)
    assert {"bn1", "scale1", "conv2a", "res2"} <= set(res.members)
    # both concat branches are separate groups feeding fc through the concat
    assert by_prod[("branch3x3",)].prunable and by_prod[("branch1x1",)].prunable
    assert "fc" in by_prod[("branch3x3",)].members
    fc = by_prod[("fc",)]
    assert not fc.prunable and "Softmax" in fc.reasons[0]


def test_ignore_layer_and_unknown_name():
    g = cs.load(*TINY)
    a = analyse(g, ignore=["conv2a"])
    grp = a.group("conv2a")
    assert not grp.prunable and "ignore_layer" in grp.reasons[0]
    with pytest.raises(ModelError, match="nope"):
        analyse(g, ignore=["nope"])


def test_groups_cli_json(capsys):
    assert main(["groups", *map(str, TINY), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [d["producers"] for d in data][:2] == [["conv1", "conv2b"], ["conv2a"]]
    assert data[-1]["prunable"] is False


def test_darknet_yolo_heads_and_shortcut_blocked_or_tied():
    from darknet_io import read_darknet
    g = read_darknet(ROOT / "fixtures/darknet/tiny-yolo.cfg")
    a = analyse(g)
    heads = [grp for grp in a.groups if not grp.prunable]
    assert heads and all("yolo" in grp.reasons[0] for grp in heads)


CONV3 = "[convolutional]\n{extra}filters=8\nsize=3\npad=1\nactivation=leaky\n"
SHARED_CFG = "[net]\nheight=12\nwidth=12\nchannels=3\n\n" + "\n".join(
    CONV3.format(extra=extra) for extra in ("", "", "", "share_index=1\n", "")) + \
    "\n[convolutional]\nfilters=4\nsize=1\nactivation=linear\n"


def test_darknet_share_index_pins_the_shared_layers_channels(tmp_path):
    """AlexeyAB share_index: layer 3 runs with layer 1's arrays, so neither layer 1's filters
    nor its input channels may go (nor layer 3's input channels); layer 4 stays prunable."""
    cfg = tmp_path / "shared.cfg"
    cfg.write_text(SHARED_CFG)
    g = cs.init(cs.load(cfg), seed=5)
    a = analyse(g)
    prunable = [grp.producers for grp in a.prunable_groups()]
    assert prunable == [["convolutional_4"]]
    pinned = {tuple(grp.producers): grp.reasons for grp in a.groups if not grp.prunable}
    assert any("shared by 'convolutional_3'" in r for r in pinned[("convolutional_0",)])
    assert any("shared by 'convolutional_3'" in r for r in pinned[("convolutional_1",)])
    plan = make_plan(a, ratio=0.5)
    x = {"data": np.random.default_rng(0).standard_normal((1, 3, 12, 12)).astype(np.float32)}
    out = Executor(apply(g, plan, "dense", analysis=a)).run(x)
    assert next(iter(out.values())).shape == (1, 4, 12, 12)


# ------------------------------------------------------------------ plans
@pytest.mark.parametrize("n,ratio,div,want", [(64, 0.3, 8, 48), (6, 0.9, 4, 4), (10, 0.5, 1, 5),
                                              (3, 0.0, 2, 3), (16, 0.99, 1, 1), (7, 0.5, 2, 4)])
def test_kept_count_rounds_up_to_divisor(n, ratio, div, want):
    assert kept_count(n, ratio, div) == want


def test_ratio_one_refused():
    with pytest.raises(ModelError, match="every channel"):
        kept_count(8, 1.0)


def test_plan_is_deterministic_and_ranks_by_l1():
    g = cs.load(*TINY)
    a = analyse(g)
    p1, p2 = make_plan(a, ratio=0.5), make_plan(a, ratio=0.5)
    assert p1.to_json() == p2.to_json()
    gp = next(x for x in p1.groups if x.producers == ["conv2a"])
    w = g.layer("conv2a").weights["weight"]
    l1 = np.abs(w).reshape(w.shape[0], -1).sum(1)
    assert gp.keep == sorted(np.argsort(l1, kind="stable")[8:].tolist())
    assert Plan.from_json(p1.to_json()).to_json() == p1.to_json()


def test_a_scores_cache_scores_each_group_once_and_plans_the_same(monkeypatch):
    """ana plans every group at every ratio from the same weights: with a cache each group
    is scored once, and every plan equals the one made without it."""
    from caffe_surgeon.pruning import plan as plan_module
    g = cs.load(*TINY)
    a = analyse(g)
    groups = [x.id for x in a.prunable_groups()]
    want = [make_plan(a, ratios={gid: r}).to_json() for gid in groups for r in (0.25, 0.5)]
    scored = []
    real = plan_module.class_scores
    monkeypatch.setattr(plan_module, "class_scores", lambda a_, grp, *k: scored.append(grp.id) or real(a_, grp, *k))
    cache: dict = {}
    got = [make_plan(a, ratios={gid: r}, scores_cache=cache).to_json() for gid in groups for r in (0.25, 0.5)]
    assert got == want and len(groups) > 1
    assert sorted(scored) == sorted(groups)
    # a group that cannot be scored is left whole while untouched, and refused once pruned
    bn: dict = {}
    make_plan(a, ratios={"conv1": 0.25}, criterion="bn", scores_cache=bn)
    with pytest.raises(ModelError, match="no BatchNorm/Scale multiplier"):
        make_plan(a, ratios={"conv2a": 0.5}, criterion="bn", scores_cache=bn)


def test_bn_criterion_reads_scale_after_bn():
    g = cs.load(*TINY)
    a = analyse(g)
    plan = make_plan(a, ratios={"conv1": 0.25}, criterion="bn")
    gp = next(x for x in plan.groups if x.producers == ["conv1", "conv2b"])
    # conv2b has no BatchNorm after it: the group is scored by scale1's gammas alone
    assert np.allclose(gp.scores, np.abs(g.layer("scale1").weights["scale"]), rtol=1e-6)
    with pytest.raises(ModelError, match="no BatchNorm/Scale multiplier"):
        make_plan(a, ratios={"conv2a": 0.5}, criterion="bn")


def test_keep_all_plan_writes_identical_files(tmp_path):
    g = cs.load(*TINY)
    out = apply(g, make_plan(analyse(g), ratio=0.0))
    cs.save(out, tmp_path / "t.prototxt", tmp_path / "t.caffemodel")
    assert (tmp_path / "t.prototxt").read_bytes() == TINY[0].read_bytes()
    assert (tmp_path / "t.caffemodel").read_bytes() == TINY[1].read_bytes()


def test_plan_mismatch_and_blocked_group_refused(tmp_path):
    g = cs.load(*TINY)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5)
    bad = Plan.from_json(plan.to_json())
    bad.groups[0].channels = 99
    with pytest.raises(ModelError, match="99"):
        apply(g, bad, analysis=a)
    bad = Plan.from_json(plan.to_json())
    bad.groups[0].keep = []
    with pytest.raises(ModelError, match="keeps no channel"):
        apply(g, bad, analysis=a)
    with pytest.raises(ModelError, match="Softmax"):
        make_plan(a, ratios={"fc": 0.5})
    # the CLI writes nothing when the plan does not fit
    (tmp_path / "p.json").write_text(bad.to_json())
    assert main(["prune", *map(str, TINY), "--plan", str(tmp_path / "p.json"),
                 "-o", str(tmp_path / "out")]) == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_ratio_file_maps_layers_to_groups(tmp_path):
    g = cs.load(*TINY)
    a = analyse(g)
    from caffe_surgeon.pruning.plan import read_ratio_file
    f = tmp_path / "r.txt"
    f.write_text("conv2a 0.5  # inner conv\nconv1 0.25\nconv2b 0.25\n")
    r = read_ratio_file(f, a)
    assert r == {a.group("conv2a").id: 0.5, a.group("conv1").id: 0.25}
    f.write_text("conv1 0.25\nconv2b 0.5\n")
    with pytest.raises(ModelError, match="together with"):
        read_ratio_file(f, a)


# ------------------------------------------------------------------ surgery
@needs_cv
def test_tinynet_dense_equals_sparse_and_opencv_agrees(tmp_path):
    g = cs.load(*TINY)
    plan, dense, _ = dense_sparse_check(g, tmp_path=tmp_path, opencv=True)
    assert dense.layer("conv2a").params["convolution_param"]["num_output"] == 8
    assert dense.layer("fc").weights["weight"].shape[1] < g.layer("fc").weights["weight"].shape[1]


def test_sparse_zeroes_filters_and_keeps_shapes():
    g = cs.load(*TINY)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5)
    sp = apply(g, plan, "sparse", analysis=a)
    for l0, l1 in zip(g.layers, sp.layers):
        assert {k: v.shape for k, v in l0.weights.items()} == {k: v.shape for k, v in l1.weights.items()}
    gp = next(x for x in plan.groups if x.producers == ["conv2a"])
    dropped = sorted(set(range(16)) - set(gp.keep))
    assert not sp.layer("conv2a").weights["weight"][dropped].any()
    assert not sp.layer("conv2b").weights["weight"][:, dropped].any()


def test_folding_makes_dead_filters_free():
    """A channel whose filter is all zero emits act(bias) everywhere; removing it with folding
    changes nothing (up to the zero-padded border of the consumer), without folding it does."""
    g = cs.load(*TINY)
    conv = g.layer("conv2a")
    w = conv.weights["weight"].copy()
    w[[1, 4, 9]] = 0
    conv.weights["weight"] = w
    conv.weights["bias"] = np.full_like(conv.weights["bias"], 0.5)
    a = analyse(g)
    keep = [k for k in range(16) if k not in (1, 4, 9)]
    plan = make_plan(a, ratios={"conv2a": 0.0})
    next(x for x in plan.groups if x.producers == ["conv2a"]).keep = keep
    x = feeds(g, shapes=a.shapes)
    ref = Executor(g).run(x, ["res2"])["res2"]
    folded = Executor(apply(g, plan, analysis=a)).run(x, ["res2"])["res2"]
    plain = Executor(apply(g, plan, fold=False, analysis=a)).run(x, ["res2"])["res2"]
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))  # conv2b pads by 1
    assert rel(folded[inner], ref[inner]) < 1e-5
    assert rel(plain[inner], ref[inner]) > 1e-2


def test_conv_without_bias_folds_into_the_batch_norm_after_it():
    """ResNet's convs have bias_term: false; the constant goes into the next BatchNorm's mean,
    so the file layout (and a sparse caffemodel's pairing with the original prototxt) stays."""
    g = cs.load(zoo("caffe/resnet/ResNet-50-deploy.prototxt"))
    cs.init(g, seed=3)
    a = analyse(g)
    plan = make_plan(a, ratios={"res2a_branch2a": 0.5})
    for mode in ("dense", "sparse"):
        out = apply(g, plan, mode, analysis=a)
        conv = out.layer("res2a_branch2b")
        assert conv.params["convolution_param"].get("bias_term", True) is False
        assert list(conv.weights) == ["weight"]
        bn0, bn1 = g.layer("bn2a_branch2b").weights["mean"], out.layer("bn2a_branch2b").weights["mean"]
        assert bn0.shape == bn1.shape and not np.allclose(bn0, bn1)
    x = feeds(g, shapes=a.shapes)
    d, s = apply(g, plan, "dense", analysis=a), apply(g, plan, "sparse", analysis=a)
    assert rel(Executor(d).run(x)["prob"], Executor(s).run(x)["prob"]) < 1e-4


# ------------------------------------------------------------------ CLI
def test_prune_cli_dense_and_sparse(tmp_path, capsys):
    assert main(["prune", *map(str, TINY), "--ratio", "0.5", "-o", str(tmp_path / "d")]) == 0
    out = capsys.readouterr().out
    assert "operations" in out and "plan.json" in out
    plan = Plan.load(tmp_path / "d" / "plan.json")
    assert plan.removed > 0
    assert main(["prune", *map(str, TINY), "--plan", str(tmp_path / "d" / "plan.json"),
                 "--mode", "sparse", "-o", str(tmp_path / "s")]) == 0
    d = cs.load(tmp_path / "d" / TINY[0].name, tmp_path / "d" / TINY[1].name)
    s = cs.load(tmp_path / "s" / TINY[0].name, tmp_path / "s" / TINY[1].name)
    x = feeds(d)
    assert rel(Executor(d).run(x)["prob"], Executor(s).run(x)["prob"]) < 1e-5
    assert (tmp_path / "s" / TINY[0].name).read_bytes() == TINY[0].read_bytes()


# ------------------------------------------------------------------ transform
def test_transform_recovers_the_plan_and_the_dense_model(tmp_path, capsys):
    from caffe_surgeon.cli.vai_p_caffe import main as vai_main
    g = cs.load(*TINY)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5)
    cs.save(apply(g, plan, "sparse", analysis=a), tmp_path / "s.prototxt", tmp_path / "s.caffemodel")
    assert vai_main(["transform", "-model", str(tmp_path / "s.prototxt"), "-weights",
                     str(tmp_path / "s.caffemodel"), "-output", str(tmp_path / "t.caffemodel")]) == 0
    assert "removed 26" in capsys.readouterr().out
    t = cs.load(tmp_path / "t.prototxt", tmp_path / "t.caffemodel")
    d = apply(g, plan, "dense", analysis=a)
    for l1, l2 in zip(t.layers, d.layers):
        assert l1.params == l2.params
        for k in l2.weights:
            np.testing.assert_allclose(l1.weights[k], l2.weights[k], rtol=1e-6, atol=1e-7)


def test_darknet_transform_cli(tmp_path):
    from caffe_surgeon.cli.vai_p_darknet import main as vai_main
    from darknet_io import read_darknet, write_darknet
    g = read_darknet(ROOT / "fixtures/darknet/tiny-yolo.cfg")
    cs.init(g, seed=4)
    a = analyse(g)
    plan = make_plan(a, ratio=0.5, divisor=2)
    write_darknet(apply(g, plan, "sparse", analysis=a), tmp_path / "s.cfg", tmp_path / "s.weights")
    assert vai_main(["pruner", "transform", str(tmp_path / "s.cfg"), str(tmp_path / "s.weights"),
                     "-o", str(tmp_path / "t")]) == 0
    t = read_darknet(tmp_path / "t.cfg", tmp_path / "t.weights")
    x = feeds(g)
    d = apply(g, plan, "dense", analysis=a)
    for k, v in Executor(d).run(x).items():
        assert rel(Executor(t).run(x)[k], v) < 1e-5


ROUTES_CFG = """[net]
height=16
width=16
channels=3

[convolutional]
filters=8
size=3
pad=1
activation=leaky

[convolutional]
filters=16
size=3
pad=1
activation=leaky

[shortcut]
from=-2
activation=linear

[convolutional]
filters=8
size=3
pad=1
activation=leaky

[convolutional]
filters=8
size=1
activation=leaky

[shortcut]
from=-2
activation=linear

[route]
layers=3,5

[route]
layers=3,6

[convolutional]
filters=6
size=1
activation=linear
"""


def test_mismatched_shortcut_refused_and_nested_routes_exact(tmp_path):
    """A shortcut adding 8 onto 16 channels is refused with the counts; a layer read by two
    routes, one nested in the other, with a residual join inside, is pruned exactly."""
    from darknet_io import read_darknet
    (tmp_path / "r.cfg").write_text(ROUTES_CFG)
    g = read_darknet(tmp_path / "r.cfg")
    cs.init(g, seed=3)
    a = analyse(g)
    first = a.group("convolutional_0")
    assert not first.prunable and "[16, 8]" in " ".join(first.reasons)
    tied = a.group("convolutional_3")
    assert tied.prunable and set(tied.producers) == {"convolutional_3", "convolutional_4"}
    assert {"route_6", "route_7", "convolutional_8"} <= set(tied.members)
    plan, dense, _ = dense_sparse_check(g, ratio=0.5)
    w = dense.layer("convolutional_8").weights["weights"]
    assert w.shape[1] == 4 + 4 + 4  # route_7 = conv_3 (4 kept) + route_6 (4 + 4)


def test_folding_with_batch_norm_uses_act_beta():
    """Darknet conv + BN: a dead filter (running mean 0) is removed without changing the
    consumer's output (interior); a live channel folds act(beta), not act(beta - gamma mean/std)."""
    from darknet_io import read_darknet
    g = read_darknet(ROOT / "fixtures/darknet/tiny-yolo.cfg")
    cs.init(g, seed=6)
    conv = g.layer("convolutional_0")
    dead = [1, 3, 10]
    for k in ("weights", "rolling_mean"):
        w = conv.weights[k].copy()
        w[dead] = 0
        conv.weights[k] = w
    a = analyse(g)
    plan = make_plan(a, ratios={"convolutional_0": 0.0})
    next(x for x in plan.groups if x.producers == ["convolutional_0"]).keep = \
        [k for k in range(16) if k not in dead]
    x = feeds(g, shapes=a.shapes)
    want = Executor(g).run(x, [], layer_outputs=["convolutional_2"])["convolutional_2:convolutional_2"]
    got = Executor(apply(g, plan, analysis=a)).run(x, [], layer_outputs=["convolutional_2"])
    got = got["convolutional_2:convolutional_2"]
    inner = (slice(None), slice(None), slice(1, -1), slice(1, -1))
    assert rel(got[inner], want[inner]) < 1e-5
    # live channel: the folded constant is leaky(biases) (BN output at its mean)
    from caffe_surgeon.pruning.surgery import removed_constants
    keep = np.ones(len(a.node_space), bool)
    keep[a.spaces[a.group("convolutional_0").classes[5][0][0]].first_node + 5] = False
    consts = removed_constants(g, a, keep)
    beta = float(conv.weights["biases"][5])
    assert consts[g.index("convolutional_2")][5] == pytest.approx(beta if beta > 0 else 0.1 * beta, rel=1e-5)


@pytest.mark.parametrize("files", [("caffe/tinynet_deploy.prototxt", "caffe/tinynet.caffemodel"),
                                   ("fashion/fashion_deploy.prototxt", "fashion/fashion.caffemodel"),
                                   ("fashion/fashion.cfg", "fashion/fashion.weights"),
                                   ("darknet/tiny-yolo.cfg", None)])
def test_constants_of_a_whole_group_fold_like_each_plans_own(files):
    """ana folds every ratio of a group with the constants of the whole group removed (one
    dead-model pass): the pruned arrays are exactly those apply() finds plan by plan."""
    from caffe_surgeon.pruning.surgery import constants_stand_alone, removed_constants
    model, weights = (ROOT / "fixtures" / f if f else None for f in files)
    g = cs.load(model, weights) if weights else cs.init(cs.load(model), seed=7)
    a = analyse(g)
    assert constants_stand_alone(a)
    folded, moved = 0, None
    for grp in a.prunable_groups():
        constants = removed_constants(g, a, a.node_group != grp.id)
        for ratio in (0.3, 0.7):
            plan = make_plan(a, ratios={grp.id: ratio})
            want = apply(g, plan, "dense", analysis=a)
            got = apply(g, plan, "dense", analysis=a, constants=constants)
            for lw, lg, lo in zip(want.layers, got.layers, g.layers):
                assert lw.weights.keys() == lg.weights.keys()
                for k in lw.weights:
                    np.testing.assert_array_equal(lg.weights[k], lw.weights[k], err_msg=lw.name)
                    if k in lo.weights and lw.weights[k].shape == lo.weights[k].shape and \
                            lw.weights[k].ndim == 1 and not np.array_equal(lw.weights[k], lo.weights[k]):
                        folded, moved = folded + 1, (plan, want)
    assert folded  # some offset really moved
    # and apply() does use what it is given: no constants, no folding
    plan, want = moved
    unfolded = apply(g, plan, "dense", analysis=a, constants={})
    assert any(not np.array_equal(lu.weights[k], lw.weights[k])
               for lu, lw in zip(unfolded.layers, want.layers) for k in lw.weights)
