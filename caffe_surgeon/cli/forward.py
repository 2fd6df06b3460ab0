"""``caffe-surgeon forward``: run a model on an image or a .npy array and save its outputs."""
from __future__ import annotations

import io
import time
from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..images.caffe_image import IMAGE_EXT  # noqa: F401  (also read by prune's --calib)
from .common import check_outputs, mean_arg


def add_parser(sub):
    p = sub.add_parser("forward", help="run a model on an image or .npy input and save every output blob")
    p.add_argument("model", nargs="+", metavar="MODEL_FILE", help="definition and weights")
    p.add_argument("--input", required=True, help="an image, or a .npy array (N,C,H,W) or (C,H,W)")
    p.add_argument("--input-name", help="which net input to feed (default: the only one)")
    p.add_argument("--output", help="write the outputs to this .npz file")
    p.add_argument("--blobs", nargs="+", help="blob names to return instead of the net's outputs")
    p.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST")
    p.add_argument("--bn", choices=("pjreddie", "alexeyab"), default="pjreddie",
                   help="Darknet BatchNorm flavour (default pjreddie, as the Debian darknet binary)")
    img = p.add_argument_group("image preprocessing (default: the model's own, printed: a Caffe "
                               "TEST-phase data layer's transform_param, in the prototxt or a "
                               "train_val beside it; Darknet's [net] channels and size. Caffe: "
                               "resize, BGR, minus mean, times scale; Darknet: resize or "
                               "letterbox, RGB in [0, 1]); these flags override it")
    img.add_argument("--mean", type=mean_arg, help="per-channel mean to subtract, e.g. 104,117,123 (Caffe)")
    img.add_argument("--scale", type=float, help="multiply after mean subtraction (Caffe; default: "
                                                  "the model's, else 1)")
    img.add_argument("--rgb", action="store_true", help="keep RGB order for Caffe (default BGR)")
    img.add_argument("--letterbox", action="store_true", help="Darknet letterbox instead of a plain resize")
    return p


def _input_name_and_shape(graph, requested):
    from ..layers.registry import infer_shapes
    names = list(graph.inputs) or [l.tops[0] for l in graph.layers if not l.bottoms and l.tops]
    if requested:
        if requested not in names:
            raise ModelError(f"--input-name '{requested}' is not an input of the net ({', '.join(names)})")
        names = [requested]
    if len(names) != 1:
        raise ModelError(f"the net has {len(names)} inputs ({', '.join(names)}); choose one with --input-name")
    try:
        shape = infer_shapes(graph).blobs[names[0]]
    except ModelError:
        shape = None
    return names[0], shape


def load_input(path: str, graph, shape, args, model_file=None, name=None) -> np.ndarray:
    """The input array. With ``model_file`` (forward), the model's own preprocessing is used
    for an image, and one line says what was applied."""
    say = print if model_file else (lambda *_: None)
    p = Path(path)
    if p.suffix.lower() == ".npy":
        try:
            arr = np.load(p, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise ModelError(f"cannot read the array: {e}", file=p) from None
        if arr.dtype.kind not in "biuf":
            raise ModelError(f"the array holds {arr.dtype} values; inputs are numbers", file=p)
        arr = np.asarray(arr, np.float32)
        return arr[None] if arr.ndim == 3 else arr
    if p.suffix.lower() not in IMAGE_EXT:
        raise ModelError("input must be an image or a .npy array", file=p)
    if shape is None or len(shape) != 4:
        raise ModelError("the net's input size is unknown; feed a .npy array of the right shape", file=p)
    from ..images import darknet_image as image
    h, w = shape[2], shape[3]
    if graph.framework == "darknet":
        img = image.load_image(p, channels=shape[1])
        out = image.letterbox_image(img, w, h) if args.letterbox else image.resize_image(img, w, h)
        say(f"preprocessing: the cfg's [net] channels={shape[1]} size {w}x{h}, "
              f"{'letterbox' if args.letterbox else 'resize'}, values in [0, 1]")
        return out[None]
    from ..images.model_preprocessing import caffe_image_input, caffe_recipe, with_flags
    recipe, note = caffe_recipe(graph, model_file, name) if model_file else (None, "")
    if note:
        say(f"note: {note}")
    flags = [f for f, v in (("--mean", args.mean), ("--scale", args.scale), ("--rgb", args.rgb)) if v]
    if recipe is not None:
        recipe = with_flags(recipe, mean=args.mean, scale=args.scale)
        x = caffe_image_input(p, recipe, shape, rgb=args.rgb)
        say(f"preprocessing: {recipe.source}: {recipe.describe()}"
              + (f" (overridden by {' '.join(flags)})" if flags else ""))
        return x[None]
    scale = 1.0 if args.scale is None else args.scale
    say(f"preprocessing: none from the model; resize {h}x{w}, {'RGB' if args.rgb else 'BGR'}, "
          f"mean {args.mean or 'none'}, scale {scale:g}")
    return image.caffe_preprocess(p, (h, w), mean=args.mean or None, scale=scale,
                                  bgr=not args.rgb, channels=shape[1])[None]


def _argmax(v: np.ndarray, batch: int) -> str:
    """``, argmax 9 = 0.98`` for one image; one such figure per image for a batch."""
    if not v.size:
        return ""
    if batch > 1 and v.ndim >= 2 and v.shape[0] == batch:
        rows = v.reshape(batch, -1)
        return "".join(f"\n    image {i}: argmax {int(r.argmax())} = {float(r.max()):.6g}"
                       for i, r in enumerate(rows))
    flat = v.reshape(-1)
    return f", argmax {int(flat.argmax())} = {float(flat.max()):.6g}"


def run(args):
    from .. import api
    from ..engine import Executor
    graph = api.load(*args.model, phase=args.phase)
    name, shape = _input_name_and_shape(graph, args.input_name)
    if args.output:  # before the forward pass, which may be long
        check_outputs([args.output], list(args.model) + [args.input], option="--output")
    if shape is not None and not str(args.input).lower().endswith(".npy"):
        # An image is resized to the net's size: refuse a net that cannot fit before that.
        from ..engine.memory_plan import check_fits
        from ..layers.registry import infer_shapes
        check_fits(graph, infer_shapes(graph, {name: shape}))
    x = load_input(args.input, graph, shape, args, model_file=args.model[0], name=name)
    ex = Executor(graph, darknet_bn=args.bn)
    t = time.perf_counter()
    outs = ex.run({name: x}, args.blobs)
    elapsed = time.perf_counter() - t
    print(f"{args.input}: forward in {elapsed:.3f} s, input {name} {tuple(x.shape)}")
    for k, v in outs.items():
        print(f"  {k}: shape {tuple(v.shape)}{_argmax(v, len(x))}")
    if args.output:
        from ..fileio import atomic_write
        buf = io.BytesIO()
        np.savez(buf, **{k.replace("/", "_").replace(":", "__"): v for k, v in outs.items()})
        atomic_write(args.output, buf.getvalue())
        print(f"wrote {args.output}")
