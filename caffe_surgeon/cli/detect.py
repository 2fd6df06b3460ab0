"""``caffe-surgeon detect``: YOLO detection on one image, printed like ``darknet detector test``.

Output (darknet's lines, each followed by the box darknet would draw)::

    data/dog.jpg: Predicted in 0.412 seconds.
    dog: 56% (129, 186, 369, 517)

The box is ``(left, top, right, bottom)`` in pixels of the original image,
computed and clipped as ``draw_detections`` does. Without ``--names`` classes
are printed by index.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

from ..errors import ModelError


def add_parser(subparsers):
    p = subparsers.add_parser("detect", help="run a Darknet YOLO model on an image (like "
                                             "'darknet detector test')",
                              description="MODEL.cfg MODEL.weights, or a Darknet model converted "
                                          "to Caffe: MODEL.prototxt MODEL.caffemodel with the "
                                          "MODEL.heads.json the conversion wrote beside it")
    p.add_argument("cfg", metavar="MODEL.cfg")
    p.add_argument("weights", metavar="MODEL.weights")
    p.add_argument("image", metavar="IMG")
    p.add_argument("--thresh", type=float, default=.25, help="probability threshold (default .25)")
    p.add_argument("--hier", type=float, default=.5,
                   help="hierarchy threshold (softmax trees only; accepted for compatibility)")
    p.add_argument("--nms", type=float, default=.45, help="NMS IoU threshold, 0 disables (default .45)")
    p.add_argument("--names", help="class names file, one per line (e.g. "
                                   "/usr/share/darknet/data/coco.names)")
    p.add_argument("--bn", choices=("pjreddie", "alexeyab"), default="pjreddie",
                   help="BatchNorm flavour (default pjreddie, as the Debian darknet binary)")
    return p


def read_names(path) -> list[str]:
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError as e:
        raise ModelError(f"cannot read the names file: {e.strerror or e}", file=path) from None
    return text.splitlines()


def run(args) -> int:
    from ..api import classify
    if classify([args.cfg, args.weights])[0] == "caffe":
        return run_caffe(args)
    from ..darknet.reader import read_darknet
    from ..detection import darknet_boxes as detection
    from ..engine import Executor
    from ..images import darknet_image as image
    graph = read_darknet(args.cfg, args.weights)
    channels = graph.inputs["data"][1]
    names = read_names(args.names) if args.names else None
    im = image.load_image(args.image, channels=channels)
    _, _, net_h, net_w = graph.inputs["data"]
    # stderr: stdout stays line for line what darknet prints
    print(f"preprocessing: the cfg's [net] channels={channels} size {net_w}x{net_h}, letterbox, "
          "values in [0, 1]", file=sys.stderr)
    executor = Executor(graph, darknet_bn=args.bn)
    t = time.perf_counter()
    dets = detection.detect(graph, executor, im, thresh=args.thresh, hier=args.hier,
                            nms=args.nms, names=names)
    print(f"{args.image}: Predicted in {time.perf_counter() - t:f} seconds.")
    for d in dets:
        print(f"{d.line()} ({d.box[0]}, {d.box[1]}, {d.box[2]}, {d.box[3]})")
    return 0


def run_caffe(args) -> int:
    """``detect`` on a converted Caffe model: the heads file beside the prototxt decodes it."""
    from ..caffe.reader import read_caffe
    from ..detection.caffe_heads import caffe_detect, read_heads
    from ..engine import Executor
    from ..images import darknet_image as image
    record = read_heads(args.cfg)
    graph = read_caffe(args.cfg, args.weights)
    names = read_names(args.names) if args.names else None
    net = record["net"]
    im = image.load_image(args.image, channels=int(net["channels"]))
    print(f"preprocessing: the heads file's net channels={net['channels']} size "
          f"{net['width']}x{net['height']}, letterbox, values in [0, 1]", file=sys.stderr)
    executor = Executor(graph)
    t = time.perf_counter()
    dets = caffe_detect(graph, executor, record, im, thresh=args.thresh, nms=args.nms, names=names)
    print(f"{args.image}: Predicted in {time.perf_counter() - t:f} seconds.")
    for d in dets:
        print(f"{d.line()} ({d.box[0]}, {d.box[1]}, {d.box[2]}, {d.box[3]})")
    return 0
