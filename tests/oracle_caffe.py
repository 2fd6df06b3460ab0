"""OpenCV 4.x as an independent oracle for Caffe models (a library; the tests live elsewhere).

OpenCV's Caffe importer (``cv2.dnn.readNetFromCaffe``) is a second, unrelated
implementation of the format: its own schema, shape rules and kernels.
Agreement with it is evidence that our reader, shape rules and writer are
right; a disagreement is settled against BVLC Caffe's source.

What to know about OpenCV's importer (modules/dnn/src/caffe/caffe_importer.cpp
and what OpenCV 4.14 was seen to do):

- It ignores include/exclude phase rules: every layer block is imported, so a
  train_val file (two ``data`` layers, losses) does not load. Such files are
  compared through :func:`opencv_view`.
- Layers are named by their prototxt name, the n-th repeat of a name as
  ``name_n`` (our reader's rule too), except ``Convolution``: OpenCV 4.14
  builds one layer per top and names it after that top blob (a conv named
  ``conv1`` writing ``bn1`` is OpenCV's layer ``bn1``). :func:`compare_shapes`
  matches by layer name first, then by top name.
- Network inputs are the header ``input:`` names, then the tops of ``Input``
  layers; ``Input`` layers are not layers of the OpenCV net.
- It inserts helper layers (``<bn>/mvn`` for a BatchNorm without global
  stats) and fuses layers at the first forward pass. Shapes come from
  ``getLayersShapes`` (the unfused graph); names only OpenCV has are not compared.
- A layer type it does not know is only reported when the layer is
  instantiated; ``getLayersShapes`` on such a net crashes the process, so
  :func:`load_checked` instantiates every layer first.
- Run-time-sized outputs are reported at their reserved size
  (DetectionOutput: keep_top_k rows per image).
"""
from __future__ import annotations

import copy
import gc
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np

Shape = tuple[int, ...]

#: ``shared/zoo/caffe`` beside the repository (may not exist).
ZOO_CAFFE = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "caffe"


# ------------------------------------------------------------------ the zoo
def is_net_definition(path) -> bool:
    """True if ``path`` is a text NetParameter: it has top-level ``layer``/``layers`` blocks.

    Decided by content, not by name: solvers (``net:``, or a ``net_param``
    holding the layers one level down), vai_p ``config.prototxt`` files and
    SSD label maps (``item {}``) have no top-level layer block.
    """
    from caffe_surgeon.caffe.text import top_level_fields

    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return False
    return any(f.name in ("layer", "layers") for f in top_level_fields(text))


def zoo_caffe_definitions(root=None) -> list[Path]:
    """Every NetParameter prototxt under the zoo's ``caffe`` folder, sorted by relative path.

    Args:
        root: the folder to scan (default ``../shared/zoo/caffe``).

    Returns:
        Absolute paths; empty when the folder does not exist.
    """
    root = Path(root) if root is not None else ZOO_CAFFE
    if not root.is_dir():
        return []
    files = [p for p in root.rglob("*") if p.is_file() and p.suffix in (".prototxt", ".pt")]
    return sorted((p for p in files if is_net_definition(p)),
                  key=lambda p: p.relative_to(root).as_posix())


from opencv_caffe import (_cv2, explain_opencv_error, forward_of, input_order,  # noqa: F401
                          load_checked, opencv_error_text, opencv_forward, opencv_layer_shapes,
                          opencv_net, shapes_of)  # the oracle's OpenCV half, re-exported


# ------------------------------------------------------------------ comparing
def deterministic_inputs(shapes: Mapping[str, Sequence[int]], seed: int = 0) -> dict[str, np.ndarray]:
    """A standard-normal float32 array per input, identical on every run and machine."""
    out = {}
    for i, (name, shape) in enumerate(shapes.items()):
        rng = np.random.default_rng([seed, i])
        out[name] = rng.standard_normal(tuple(int(d) for d in shape)).astype(np.float32)
    return out


def outputs_equal(a: Mapping[str, list[np.ndarray]], b: Mapping[str, list[np.ndarray]],
                  rtol: float = 1e-6) -> tuple[bool, str]:
    """Compare two :func:`opencv_forward` results: bit-exact, or within ``rtol``.

    The tolerance is relative to each tensor's largest magnitude, so an
    element that is tiny only by cancellation cannot fail the comparison.

    Returns:
        (equal, "bit-exact" | "max rel diff ..." | what differs).
    """
    if list(a) != list(b):
        return False, f"different outputs: {list(a)} vs {list(b)}"
    worst, exact = 0.0, True
    for name in a:
        if len(a[name]) != len(b[name]):
            return False, f"{name}: {len(a[name])} vs {len(b[name])} outputs"
        for x, y in zip(a[name], b[name]):
            if x.shape != y.shape:
                return False, f"{name}: shape {x.shape} vs {y.shape}"
            if np.array_equal(x, y, equal_nan=True):
                continue
            exact = False
            if (np.isnan(x) != np.isnan(y)).any():
                return False, f"{name}: NaNs differ"
            scale = float(np.nanmax(np.abs(x))) or 1.0
            diff = float(np.nanmax(np.abs(x.astype(np.float64) - y))) / scale
            worst = max(worst, diff)
            if diff > rtol:
                return False, f"{name}: max rel diff {diff:.3g} > {rtol:g}"
    return True, "bit-exact" if exact else f"max rel diff {worst:.3g}"


def compare_shapes(graph, ours: Mapping[str, list[Shape]], theirs: Mapping[str, list[Shape]],
                   skip: Mapping[str, str] | Iterable[str] = ()) -> tuple[int, list[str]]:
    """Compare per-layer output shapes for the layers both sides have.

    Args:
        graph: our graph (gives each layer's tops).
        ours: ``ShapeMap.outputs``.
        theirs: :func:`opencv_layer_shapes`.
        skip: our layer names not to compare (documented deviations).

    Returns:
        (number of layers compared, human-readable mismatches).
    """
    skip = set(skip)
    compared, bad = 0, []
    for layer in graph.layers:
        if layer.name in skip or layer.name not in ours:
            continue
        mine = [tuple(int(d) for d in s) for s in ours[layer.name]]
        by_top = None
        if layer.type in _CONV_TYPES and all(t in theirs and len(theirs[t]) == 1 for t in layer.tops):
            by_top = [theirs[t][0] for t in layer.tops]  # OpenCV 4.14 names a conv by its top
        if by_top is not None:
            other = by_top
        elif layer.name in theirs:
            # A max Pooling whose top nobody reads also reports its argmax mask.
            other = list(theirs[layer.name])[:max(1, len(layer.tops))]
        else:
            continue
        compared += 1
        if mine != other:
            bad.append(f"{layer.name} ({layer.type}): ours {mine} vs OpenCV {other}")
    return compared, bad


_CONV_TYPES = ("Convolution", "ConvolutionDepthwise")


# ------------------------------------------------------------------ one zoo model
#: Image sizes of the databases BVLC's example train_val nets read (their
#: ``data_param.source`` names them); Caffe learns these from the LMDB/LevelDB.
#: The siamese database holds an MNIST pair as 2 channels
#: (examples/siamese/convert_mnist_siamese_data.cpp).
DATABASE_IMAGES = (("siamese", (2, 28, 28)), ("mnist", (1, 28, 28)), ("cifar", (3, 32, 32)))

#: Layer types that only exist for training or evaluation; :func:`opencv_view` drops them.
TRAINING_ONLY = {"Accuracy", "SoftmaxWithLoss", "EuclideanLoss", "SigmoidCrossEntropyLoss",
                 "ContrastiveLoss", "MultiBoxLoss", "HingeLoss", "InfogainLoss",
                 "MultinomialLogisticLoss", "L1Loss", "SmoothL1Loss", "DetectionEvaluate",
                 "Silence"}


@dataclass
class ModelReport:
    """What :func:`check_zoo_model` found for one definition (JSON-serialisable)."""

    model: str
    supported: bool = False
    reason: str = ""                        # why not: our error message
    notes: list = field(default_factory=list)
    layers: int = 0
    shapes_compared: int | None = None      # None: OpenCV gave no shapes (see opencv_error)
    shape_mismatches: list = field(default_factory=list)
    roundtrip_ok: bool | None = None
    roundtrip_detail: str = ""
    opencv_equal: bool | None = None
    opencv_detail: str = ""
    opencv_error: str = ""                  # why OpenCV could not serve as the oracle
    view: bool = False                      # OpenCV was given opencv_view(), not the file
    stage: str = ""                         # last stage reached (for crash reports)
    seconds: float = 0.0


def database_input_shapes(graph, error: str) -> dict:
    """Shapes for data layers whose size only their database knows, or {}."""
    if "depends on its database" not in error:
        return {}
    shapes = {}
    for layer in graph.layers:
        p = layer.params.get("data_param") or {}
        for key, chw in DATABASE_IMAGES:
            if not layer.bottoms and layer.tops and key in str(p.get("source", "")):
                shapes[layer.tops[0]] = (int(p.get("batch_size", 1)),) + chw
                break
    return shapes


def _without_fillers(params: dict) -> dict:
    """``params`` minus every ``*filler`` field: fillers only initialise training."""
    out = {}
    for k, v in params.items():
        if k.endswith("filler"):
            continue
        out[k] = _without_fillers(v) if isinstance(v, dict) else v
    return out


#: caffe-xilinx's quantised layers: the same parameters and weights as the float
#: layer (quantisation changes values, never shapes), so the view gives them so.
OPENCV_ALIASES = {"ConvolutionFixed": "Convolution", "InnerProductFixed": "InnerProduct"}


def opencv_view(graph, shapes, cut_types: Iterable[str] = ()):
    """The graph as a deploy net OpenCV can import.

    OpenCV imports every layer whatever its phase rules and has no Data, loss
    or Accuracy layers, and its schema lacks some fork fields (fillers inside
    batch_norm_param) and caffe-xilinx's 5-blob BatchNorm. The view makes
    data layers network inputs (with our inferred shapes), drops
    training-only layers and layers of ``cut_types`` (an in-place one is
    bypassed, any other takes everything it feeds with it), gives
    :data:`OPENCV_ALIASES` types their float type, removes filler and
    ``param`` (learning rate) fields, and gives a caffe-xilinx BatchNorm as
    BVLC's (statistics kept, built-in affine dropped: the shapes are the
    same). Everything else (types, parameters, weights) is the graph's own.

    Returns:
        A new Graph without origin records (the writer renders it from the IR).
    """
    from caffe_surgeon.graph import Graph, Layer
    from caffe_surgeon.layers.registry import spec_for

    cut = set(cut_types)
    inputs = dict(graph.inputs)
    have = set(inputs)
    layers = []
    for layer in graph.layers:
        if spec_for("caffe", layer).channel_role == "source" and layer.type != "Input":
            inputs[layer.tops[0]] = tuple(shapes.outputs[layer.name][0])
            have.add(layer.tops[0])
            continue
        if layer.type in TRAINING_ONLY or layer.type in cut or not all(b in have for b in layer.bottoms):
            continue
        params = _without_fillers(copy.deepcopy(layer.params))
        params.pop("param", None)  # learning-rate specs; nothing to do with a forward pass
        weights = dict(layer.weights)
        if layer.type == "BatchNorm" and len(weights) == 5:
            # caffe-xilinx's [scale, bias, mean, variance, counter]: OpenCV reads BVLC's
            # [mean, variance, factor] only. Shapes do not depend on the affine part.
            arrays = list(weights.values())
            weights = {"mean": arrays[2], "variance": arrays[3],
                       "scale_factor": np.ones(1, np.float32)}
        layers.append(Layer(layer.name, OPENCV_ALIASES.get(layer.type, layer.type),
                            list(layer.bottoms), list(layer.tops), params, weights))
        have.update(layer.tops)
    return Graph("caffe", name=graph.name, layers=layers, inputs=inputs).refresh()


def _net_inputs(graph, shapes) -> dict:
    """Network input blob -> shape, as OpenCV counts inputs (header inputs, then Input tops)."""
    out = {name: tuple(shapes.blobs[name]) for name in graph.inputs}
    for layer in graph.layers:
        if layer.type == "Input":
            out.update(zip(layer.tops, (tuple(s) for s in shapes.outputs[layer.name])))
    return out


def _strip_origin(graph):
    """A copy of ``graph`` the writer must render from the IR alone (no verbatim text or bytes)."""
    fresh = copy.copy(graph)
    fresh.origin = None
    fresh.layers = [copy.copy(l) for l in graph.layers]
    for l in fresh.layers:
        l.origin = None
    return fresh


def _batch1(shapes: Mapping[str, Sequence[int]]) -> dict:
    return {k: (1,) + tuple(v[1:]) if len(v) == 4 else tuple(v) for k, v in shapes.items()}


_CANT_CREATE = re.compile(r"Can't create layer \"[^\"]*\" of type \"([^\"]+)\"")


def _last_runnable(prototxt, caffemodel, x) -> str | None:
    """The last layer (in OpenCV's order) whose output OpenCV can compute, or None.

    OpenCV runs a net only up to the layer asked for, so when a late layer
    fails (a BatchNorm without global statistics on a 2-D blob) the outputs of
    the layers before it can still be compared. Found by bisection.
    """
    cv2 = _cv2()
    names = list(opencv_net(prototxt, caffemodel).getLayerNames())

    def runs(i):
        try:
            opencv_forward(prototxt, caffemodel, x, [names[i]])
            return True
        except cv2.error:
            return False

    lo, hi = -1, len(names) - 1  # runs(lo) holds (nothing), runs(hi) fails
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if runs(mid) else (lo, mid)
    return names[lo] if lo >= 0 else None


def check_zoo_model(prototxt, workdir, *, root=None, forward: bool = True, seed: int = 0,
                    report: ModelReport | None = None,
                    progress: Callable[[ModelReport], None] | None = None) -> ModelReport:
    """Run every oracle check on one Caffe definition.

    1. Ours: read (TEST phase), infer shapes, synthetic weights (``seed``),
       write ``init.prototxt/.caffemodel``.
    2. Round trip: read the definition with those weights, write it
       (``rt.*``) and re-read; also write it rendered from the IR alone
       (``fresh.*``) and re-read. Both must give a graph equal to the first.
    3. OpenCV shapes: every layer OpenCV builds from the original definition
       + init weights, against ours.
    4. OpenCV outputs: original definition + init weights against the
       rewritten and the re-rendered files, on a deterministic random input
       (batch 1): bit-exact or within 1e-6 relative.

    When OpenCV cannot import the file (training layers, fork fields, or a
    layer type it lacks), steps 3-4 use :func:`opencv_view` of the original
    and of the re-read graph, cut before layer types OpenCV lacks; the notes
    say so and give OpenCV's reason.

    Args:
        prototxt: the definition.
        workdir: an empty folder for the files written (the caller removes it).
        root: the model is named relative to this folder.
        forward: run step 4.
        seed: weights and input seed.
        report: a report to fill in (a caller can then see partial results).
        progress: called with the report after each stage.

    Returns:
        The :class:`ModelReport`; model problems are reported, never raised.
    """
    import caffe_surgeon as cs
    from caffe_surgeon.caffe.reader import read_caffe
    from caffe_surgeon.caffe.writer import write_caffe
    from caffe_surgeon.layers.registry import infer_shapes

    cv2 = _cv2()
    prototxt, workdir = Path(prototxt), Path(workdir)
    rep = report or ModelReport("")
    rep.model = prototxt.relative_to(root).as_posix() if root else prototxt.name
    start = time.monotonic()

    def stage(s):
        rep.stage = s
        rep.seconds = round(time.monotonic() - start, 2)
        if progress:
            progress(rep)

    # 1. ours
    stage("read")
    overrides: dict = {}
    init_p, init_w = workdir / "init.prototxt", workdir / "init.caffemodel"
    try:
        g = read_caffe(prototxt, phase="TEST")
        rep.layers = len(g.layers)
        try:
            sm = infer_shapes(g)
        except cs.ModelError as e:
            overrides = database_input_shapes(g, str(e))
            if not overrides:
                raise
            sm = infer_shapes(g, overrides)
            rep.notes.append("database input shape given: " + ", ".join(
                f"{k}={','.join(map(str, v))}" for k, v in overrides.items()))
        stage("init")
        cs.init(g, seed=seed, input_shapes=overrides or None)
        write_caffe(g, init_p, init_w)
        del g
    except cs.ModelError as e:
        rep.reason = str(e).replace(str(prototxt.parent) + os.sep, "")
        stage("done")
        return rep
    rep.supported = True

    # 2. round trip
    stage("roundtrip")
    rt_p, rt_w = workdir / "rt.prototxt", workdir / "rt.caffemodel"
    fr_p, fr_w = workdir / "fresh.prototxt", workdir / "fresh.caffemodel"
    try:
        g1 = read_caffe(prototxt, init_w, phase="TEST")
        write_caffe(g1, rt_p, rt_w)
        g2 = read_caffe(rt_p, rt_w, phase="TEST")
        problems = [f"rewritten: {d}" for d in g1.diff(g2)]
        write_caffe(_strip_origin(g1), fr_p, fr_w)
        problems += [f"re-rendered: {d}" for d in g1.diff(read_caffe(fr_p, fr_w, phase="TEST"))]
        rep.roundtrip_ok = not problems
        identical = rt_w.read_bytes() == init_w.read_bytes()
        rep.roundtrip_detail = "; ".join(problems[:3]) or (
            "equal graphs (rewritten and re-rendered)" + ("; caffemodel byte-identical" if identical else ""))
    except cs.ModelError as e:
        rep.roundtrip_ok, rep.roundtrip_detail = False, str(e)
        stage("done")
        return rep

    # 3. OpenCV shapes
    stage("opencv")
    graph, shapes = g1, sm
    targets = [("original", prototxt, init_w), ("rewritten", rt_p, rt_w), ("re-rendered", fr_p, fr_w)]
    try:
        if overrides:
            raise cv2.error("Can't create layer of type \"Data\" (OpenCV has no database layers)")
        net = load_checked(prototxt, init_w)
    except cv2.error as e:
        why = explain_opencv_error(prototxt, e) if not overrides else "it has no Data layer"
        cut: set[str] = set()
        while True:  # build the view, dropping layer types OpenCV cannot create
            views = [opencv_view(g, sm, cut) for g in (g1, g2)]
            targets = []
            for label, view in zip(("original", "rewritten"), views):
                p, w = workdir / f"view_{label}.prototxt", workdir / f"view_{label}.caffemodel"
                write_caffe(view, p, w)
                targets.append((label, p, w))
            if not views[0].layers:
                rep.opencv_error = (f"OpenCV: {why}; OpenCV has no {', '.join(sorted(cut))} layer, "
                                    "nothing is left to compare")
                stage("done")
                return rep
            try:
                net = load_checked(targets[0][1], targets[0][2])
                break
            except cv2.error as e2:
                m = _CANT_CREATE.search(str(e2))
                if m and m.group(1) not in cut:
                    cut.add(m.group(1))
                    continue
                rep.opencv_error = f"OpenCV: {why}" + (
                    "" if opencv_error_text(e2) == why else
                    f"; its deploy view: {explain_opencv_error(targets[0][1], e2)}")
                stage("done")
                return rep
        rep.view = True
        graph = views[0]
        shapes = infer_shapes(graph)
        note = f"OpenCV cannot import the file ({why}); compared its deploy view"
        if any(l.type == "BatchNorm" and len(l.weights) == 5 for l in graph.layers):
            note += " (caffe-xilinx 5-blob BatchNorm given as BVLC's 3 blobs)"
        aliased = sorted({l.type for l in g1.layers} & set(OPENCV_ALIASES))
        if aliased:
            note += f"; {', '.join(aliased)} given as " + ", ".join(OPENCV_ALIASES[t] for t in aliased)
        if cut:
            note += (f"; without {', '.join(sorted(cut))} layers (OpenCV has none; "
                     f"{len(graph.layers)} of {rep.layers} layers kept)")
        rep.notes.append(note)
    del g1, g2
    gc.collect()

    inputs = _net_inputs(graph, shapes)
    try:
        theirs = shapes_of(net, inputs)
    except cv2.error as e:
        if all(len(v) != 4 or v[0] == 1 for v in inputs.values()):
            rep.opencv_error = f"OpenCV shapes: {opencv_error_text(e)}"
            stage("done")
            return rep
        # e.g. BatchNorm with use_global_stats: false runs as MVN in OpenCV, batch 1 only.
        rep.notes.append(f"OpenCV shapes at batch 1 ({opencv_error_text(e)})")
        shapes = infer_shapes(graph, batch=1)
        inputs = _batch1(inputs)
        try:
            theirs = shapes_of(net, inputs)
        except cv2.error as e2:
            rep.opencv_error = f"OpenCV shapes: {opencv_error_text(e2)}"
            stage("done")
            return rep
    rep.shapes_compared, rep.shape_mismatches = compare_shapes(graph, shapes.outputs, theirs)
    del net
    if not forward:
        stage("done")
        return rep

    # 4. OpenCV outputs
    stage("forward")
    x = deterministic_inputs(_batch1(inputs), seed)
    reference, details, outputs = None, [], None
    for label, p, w in targets:
        try:
            out = opencv_forward(p, w, x, outputs)
        except cv2.error as e:
            last = _last_runnable(p, w, x) if reference is None else None
            if last is None:
                rep.opencv_error = f"OpenCV forward ({label}): {opencv_error_text(e)}"
                rep.opencv_equal = None
                stage("done")
                return rep
            outputs = [last]
            rep.notes.append(f"OpenCV cannot run the whole net ({opencv_error_text(e)}); "
                             f"outputs compared at layer '{last}', the last one it runs")
            out = opencv_forward(p, w, x, outputs)
        if reference is None:
            reference = out
            continue
        ok, how = outputs_equal(reference, out)
        details.append(f"{label}: {how}")
        rep.opencv_equal = ok if rep.opencv_equal is None else rep.opencv_equal and ok
        del out
        gc.collect()
    rep.opencv_detail = "; ".join(details)
    stage("done")
    return rep
