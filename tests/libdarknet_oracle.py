"""Run the Debian package's ``libdarknet.so`` (pjreddie, 2018) as a numerical oracle.

Always used through :func:`call`, which runs this file in a subprocess:
darknet calls ``exit()`` on a cfg it dislikes and keeps global state, neither
of which may touch the test process. The C API comes from
``/usr/lib/darknet/include/darknet.h``; structs used by value are mirrored
below (``image``, ``box``, ``detection``).

Commands (argv[1]):
  layers  CFG WEIGHTS INPUT.npy OUT.npz OUTPUTS
                                          network_predict on INPUT (N=1), then every
                                          layer's output (get_network_image_layer) as
                                          key "<index>" (C, H, W) plus "output": the
                                          OUTPUTS values network_predict returns (the
                                          last non-cost layer, flat layers included)
  detect  CFG WEIGHTS IMAGE OUT.npz THRESH HIER NMS CLASSES
                                          load_image_color, letterbox, predict,
                                          get_network_boxes (relative), do_nms_sort with
                                          the last layer's CLASSES (as test_detector; region
                                          detections leave their own .classes unset);
                                          saves "pixels" and, per detection, its box,
                                          objectness and probabilities
  resize  IN.npy W H OUT.npy              resize_image on a (C, H, W) array
  letterbox IN.npy W H OUT.npy            letterbox_image on a (C, H, W) array
  load    IMAGE OUT.npy                   load_image_color(IMAGE, 0, 0)
  train   CFG WEIGHTS IMAGES.npy TRUTHS.npy OUTDIR SAVE_AT [W H]
                                          load_network (seen from the header; with W H
                                          resize_network to W x H, as multi-scale training
                                          does), then per
                                          batch k of IMAGES (K, N, C, H, W) and TRUTHS
                                          (K, N, rows, 5): a data struct with X and y
                                          (fill_truth_detection's layout) and train_network;
                                          after the iterations listed in SAVE_AT (comma
                                          separated) save_weights to OUTDIR/<iter>.weights;
                                          OUTDIR/losses.json holds train_network's values
  rate    CFG OUT.json SEEN...            for each SEEN, load_network with a header-only
                                          weights file holding it, then get_current_rate
                                          (CFG must have one weightless layer)
"""
from __future__ import annotations

import ctypes as C
import json
import os
import subprocess
import sys
from pathlib import Path

LIB = Path("/usr/lib/darknet/libdarknet.so")


class Image(C.Structure):
    _fields_ = [("w", C.c_int), ("h", C.c_int), ("c", C.c_int), ("data", C.POINTER(C.c_float))]


class Box(C.Structure):
    _fields_ = [("x", C.c_float), ("y", C.c_float), ("w", C.c_float), ("h", C.c_float)]


class Detection(C.Structure):
    _fields_ = [("bbox", Box), ("classes", C.c_int), ("prob", C.POINTER(C.c_float)),
                ("mask", C.POINTER(C.c_float)), ("objectness", C.c_float),
                ("sort_class", C.c_int)]


class Matrix(C.Structure):
    _fields_ = [("rows", C.c_int), ("cols", C.c_int), ("vals", C.POINTER(C.POINTER(C.c_float)))]


class Data(C.Structure):
    _fields_ = [("w", C.c_int), ("h", C.c_int), ("X", Matrix), ("y", Matrix),
                ("shallow", C.c_int), ("num_boxes", C.POINTER(C.c_int)),
                ("boxes", C.POINTER(C.POINTER(Box)))]


def available() -> bool:
    return LIB.exists()


def call(*args, timeout=900) -> subprocess.CompletedProcess:
    """Run a command of this module in a fresh interpreter; raises on failure."""
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    proc = subprocess.run([sys.executable, __file__, *map(str, args)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"libdarknet {args[0]} failed ({proc.returncode}): "
                           f"{(proc.stderr or proc.stdout)[-2000:]}")
    return proc


def _lib():
    lib = C.CDLL(str(LIB))
    lib.load_network.restype = C.c_void_p
    lib.load_network.argtypes = [C.c_char_p, C.c_char_p, C.c_int]
    lib.set_batch_network.argtypes = [C.c_void_p, C.c_int]
    lib.network_predict.restype = C.POINTER(C.c_float)
    lib.network_predict.argtypes = [C.c_void_p, C.POINTER(C.c_float)]
    lib.network_inputs.restype = C.c_int
    lib.network_inputs.argtypes = [C.c_void_p]
    lib.network_width.argtypes = [C.c_void_p]
    lib.network_height.argtypes = [C.c_void_p]
    lib.get_network_image_layer.restype = Image
    lib.get_network_image_layer.argtypes = [C.c_void_p, C.c_int]
    lib.load_image_color.restype = Image
    lib.load_image_color.argtypes = [C.c_char_p, C.c_int, C.c_int]
    lib.letterbox_image.restype = Image
    lib.letterbox_image.argtypes = [Image, C.c_int, C.c_int]
    lib.resize_image.restype = Image
    lib.resize_image.argtypes = [Image, C.c_int, C.c_int]
    lib.free_image.argtypes = [Image]
    lib.get_network_boxes.restype = C.POINTER(Detection)
    lib.get_network_boxes.argtypes = [C.c_void_p, C.c_int, C.c_int, C.c_float, C.c_float,
                                      C.POINTER(C.c_int), C.c_int, C.POINTER(C.c_int)]
    lib.do_nms_sort.argtypes = [C.POINTER(Detection), C.c_int, C.c_int, C.c_float]
    lib.free_detections.argtypes = [C.POINTER(Detection), C.c_int]
    lib.train_network.restype = C.c_float
    lib.train_network.argtypes = [C.c_void_p, Data]
    lib.save_weights.argtypes = [C.c_void_p, C.c_char_p]
    lib.resize_network.argtypes = [C.c_void_p, C.c_int, C.c_int]
    lib.get_current_rate.restype = C.c_float
    lib.get_current_rate.argtypes = [C.c_void_p]
    return lib


def _matrix(np, rows):
    """A darknet matrix over the rows of a C-contiguous float32 2-D array (kept alive by
    the caller)."""
    ptrs = (C.POINTER(C.c_float) * rows.shape[0])(
        *[rows[i].ctypes.data_as(C.POINTER(C.c_float)) for i in range(rows.shape[0])])
    return Matrix(rows.shape[0], rows.shape[1], ptrs), ptrs


def _train(np, lib, cfg, weights, images, truths, outdir, save_at, size=None):
    net = lib.load_network(str(cfg).encode(), str(weights).encode(), 0)
    if size:
        lib.resize_network(net, *size)
    losses = []
    for k in range(images.shape[0]):
        x = np.ascontiguousarray(images[k].reshape(images.shape[1], -1), np.float32)
        y = np.ascontiguousarray(truths[k].reshape(truths.shape[1], -1), np.float32)
        mx, keep_x = _matrix(np, x)
        my, keep_y = _matrix(np, y)
        d = Data(0, 0, mx, my, 1, None, None)
        losses.append(float(lib.train_network(net, d)))
        if k + 1 in save_at:
            lib.save_weights(net, str(Path(outdir) / f"{k + 1}.weights").encode())
    (Path(outdir) / "losses.json").write_text(json.dumps(losses))


def _rates(np, lib, cfg, out, seens):
    import struct
    import tempfile
    rates = []
    with tempfile.TemporaryDirectory() as tmp:
        for seen in seens:
            path = Path(tmp) / f"{seen}.weights"
            path.write_bytes(struct.pack("<3iQ", 0, 2, 0, seen))
            net = lib.load_network(str(cfg).encode(), str(path).encode(), 0)
            rates.append(float(lib.get_current_rate(net)))
    Path(out).write_text(json.dumps(rates))


def _to_image(np, arr):
    arr = np.ascontiguousarray(arr, np.float32)
    c, h, w = arr.shape
    return Image(w, h, c, arr.ctypes.data_as(C.POINTER(C.c_float))), arr


def _from_image(np, im):
    n = im.w * im.h * im.c
    return np.ctypeslib.as_array(im.data, shape=(n,)).reshape(im.c, im.h, im.w).copy()


def _load(lib, cfg, weights):
    net = lib.load_network(str(cfg).encode(), str(weights).encode(), 0)
    lib.set_batch_network(net, 1)
    return net


def _main(argv):
    import numpy as np
    lib = _lib()
    cmd = argv[0]
    if cmd == "layers":
        cfg, weights, inp, out, n_out = argv[1:6]
        net = _load(lib, cfg, weights)
        x = np.ascontiguousarray(np.load(inp), np.float32).reshape(-1)
        if x.size != lib.network_inputs(net):
            raise SystemExit(f"input has {x.size} values, the net takes {lib.network_inputs(net)}")
        res = lib.network_predict(net, x.ctypes.data_as(C.POINTER(C.c_float)))
        n_layers = C.cast(net, C.POINTER(C.c_int))[0]  # struct network starts with int n
        outs = {}
        for i in range(n_layers):
            im = lib.get_network_image_layer(net, i)
            if im.w and im.h and im.c:
                outs[str(i)] = _from_image(np, im)
        outs["output"] = np.ctypeslib.as_array(res, shape=(int(n_out),)).copy()
        np.savez(out, **outs)
    elif cmd == "detect":
        cfg, weights, img, out = argv[1:5]
        thresh, hier, nms = (float(v) for v in argv[5:8])
        classes = int(argv[8])
        net = _load(lib, cfg, weights)
        im = lib.load_image_color(img.encode(), 0, 0)
        sized = lib.letterbox_image(im, lib.network_width(net), lib.network_height(net))
        lib.network_predict(net, sized.data)
        num = C.c_int(0)
        dets = lib.get_network_boxes(net, im.w, im.h, thresh, hier, None, 1, C.byref(num))
        if num.value and nms:
            lib.do_nms_sort(dets, num.value, classes, nms)
        rows = []
        for i in range(num.value):
            d = dets[i]
            rows.append([d.bbox.x, d.bbox.y, d.bbox.w, d.bbox.h, d.objectness]
                        + [d.prob[j] for j in range(classes)])
        np.savez(out, pixels=_from_image(np, im), letterboxed=_from_image(np, sized),
                 dets=np.asarray(rows, np.float32).reshape(len(rows), 5 + classes),
                 size=np.array([im.w, im.h]))
        lib.free_detections(dets, num.value)
    elif cmd in ("resize", "letterbox"):
        src, w, h, out = argv[1], int(argv[2]), int(argv[3]), argv[4]
        im, keep = _to_image(np, np.load(src))
        fn = lib.resize_image if cmd == "resize" else lib.letterbox_image
        res = fn(im, w, h)
        np.save(out, _from_image(np, res))
    elif cmd == "train":
        cfg, weights, imgs, truths, outdir, save_at = argv[1:7]
        _train(np, lib, cfg, weights, np.load(imgs), np.load(truths), outdir,
               {int(v) for v in save_at.split(",")}, [int(v) for v in argv[7:9]])
    elif cmd == "rate":
        _rates(np, lib, argv[1], argv[2], [int(v) for v in argv[3:]])
    elif cmd == "load":
        im = lib.load_image_color(argv[1].encode(), 0, 0)
        np.save(argv[2], _from_image(np, im))
    else:
        raise SystemExit(f"unknown command {cmd}; see the module docstring")
    print(json.dumps({"ok": True}))


if __name__ == "__main__":
    _main(sys.argv[1:])
