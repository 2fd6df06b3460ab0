"""``caffe-surgeon convert``: a model to ONNX (any supported one) or to Caffe (Darknet ones).

Everything is checked before anything is written: the target, the options that belong to
it, the output names and extensions, and every layer (a layer the target cannot express is
refused by name); outputs are written atomically.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ModelError
from .common import INPUT_SHAPE_HELP, check_outputs

TARGETS = ("onnx", "caffe")
FLAVORS = ("bvlc", "xilinx")


def add_parser(sub):
    p = sub.add_parser("convert", help="convert a model to ONNX, or a Darknet model to Caffe")
    p.add_argument("model", nargs="+", metavar="MODEL_FILE",
                   help="definition (.prototxt/.cfg) and weights (.caffemodel/.weights)")
    p.add_argument("--to", required=True, metavar="TARGET", help="onnx or caffe")
    p.add_argument("-o", "--output", nargs="+", required=True, metavar="OUT",
                   help="onnx: OUT.onnx; caffe: OUT.prototxt [OUT.caffemodel] (default: the "
                        "prototxt's stem + .caffemodel), plus OUT.heads.json for YOLO heads")
    p.add_argument("--flavor", metavar="FLAVOR", help="caffe: bvlc (default) or xilinx")
    p.add_argument("--opset", metavar="N", help="onnx: the opset, 13 (default) or later")
    p.add_argument("--fold-bn", action="store_true",
                   help="onnx: fold BatchNorm/Scale into the convolutions before them")
    p.add_argument("--heads-only", action="store_true",
                   help="onnx: leave DetectionOutput / YOLO decoding out; the graph ends at the "
                        "heads' inputs")
    p.add_argument("--conf-thresh", type=float, metavar="P",
                   help="onnx, Darknet detectors: default of the graph's conf_thresh input "
                        "(objectness x class probability kept above it; default .5)")
    p.add_argument("--nms-thresh", type=float, metavar="IOU",
                   help="onnx, Darknet detectors: default of the graph's nms_thresh input "
                        "(per-class NMS suppresses IoU above it; default .45, 1 = off)")
    p.add_argument("--bn", choices=("pjreddie", "alexeyab"), default="pjreddie",
                   help="Darknet BatchNorm formula (default pjreddie, as the Debian darknet)")
    p.add_argument("--phase", choices=("TEST", "TRAIN"), default="TEST")
    p.add_argument("--input-shape", action="append", metavar="[NAME=]N,C,H,W", help=INPUT_SHAPE_HELP)
    return p


def _check_args(args) -> None:
    if args.to not in TARGETS:
        raise ModelError(f"--to {args.to!r}: the targets are {', '.join(TARGETS)}")
    if args.to == "onnx":
        if args.flavor is not None:
            raise ModelError("--flavor applies to --to caffe only")
        if len(args.output) != 1 or Path(args.output[0]).suffix.lower() != ".onnx":
            raise ModelError(f"--to onnx writes one .onnx file, got -o {' '.join(args.output)}")
        from ..convert.to_onnx import check_opset
        args.opset = check_opset(args.opset if args.opset is not None else 13)
        return
    if args.opset is not None or args.fold_bn or args.heads_only or \
            args.conf_thresh is not None or args.nms_thresh is not None:
        raise ModelError("--opset, --fold-bn, --heads-only, --conf-thresh and --nms-thresh apply "
                         "to --to onnx only")
    if (args.flavor or "bvlc") not in FLAVORS:
        raise ModelError(f"--flavor {args.flavor!r}: the Caffe flavors are {', '.join(FLAVORS)}")
    exts = [Path(o).suffix.lower() for o in args.output]
    if not 1 <= len(args.output) <= 2 or exts[0] != ".prototxt" or exts[1:] not in ([], [".caffemodel"]):
        raise ModelError(f"--to caffe writes OUT.prototxt [OUT.caffemodel], got -o {' '.join(args.output)}")


def run(args) -> None:
    from .. import api
    from .common import parse_input_shapes, resolve_input_shapes
    _check_args(args)
    framework, _, _ = api.classify(args.model)
    if args.to == "caffe" and framework != "darknet":
        raise ModelError(f"--to caffe converts Darknet models; {args.model[0]} is already Caffe")
    outputs = list(args.output)
    if args.to == "caffe" and len(outputs) == 1:
        outputs.append(str(Path(outputs[0]).with_suffix(".caffemodel")))
    check_outputs(outputs, args.model, option="-o")
    graph = api.load(*args.model, phase=args.phase)
    shapes = resolve_input_shapes(graph, parse_input_shapes(args.input_shape)) or None
    if args.to == "onnx":
        from ..convert.to_onnx import export_onnx
        data = export_onnx(graph, outputs[0], opset=args.opset, fold_bn=args.fold_bn,
                           heads_only=args.heads_only, input_shapes=shapes, darknet_bn=args.bn,
                           conf_thresh=args.conf_thresh, nms_thresh=args.nms_thresh)
        print(f"wrote {outputs[0]} (opset {args.opset}, {len(graph.layers)} layers, "
              f"{len(data) / 2**20:.1f} MB)")
        return
    from ..convert import caffe_conversion
    to_caffe, save_caffe_conversion = caffe_conversion()
    caffe_graph, heads = to_caffe(graph, flavor=args.flavor or "bvlc")
    save_caffe_conversion(caffe_graph, heads, outputs[0], outputs[1])
    extra = f" and {Path(outputs[0]).with_suffix('').name}.heads.json" if heads else ""
    print(f"wrote {outputs[0]} and {outputs[1]}{extra} ({len(caffe_graph.layers)} layers, "
          f"{args.flavor or 'bvlc'} flavor)")
