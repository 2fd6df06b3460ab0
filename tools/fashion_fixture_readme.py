"""The README of fixtures/fashion, written by tools/train_fashion_fixture.py from its metrics.
"""
from __future__ import annotations

from pathlib import Path


def write_readme(out: Path, arch, m, stat, index):
    """Write ``out``/README.md: the architecture ``arch``, metrics ``m``, the stat table."""
    sizes = {f: (out / f).stat().st_size for f in ("fashion.caffemodel", "fashion.weights")}
    t1 = m["t10k_top1"]
    spot = m["darknet_binary_spot_check"]
    spot_line = (f"{sum(s['darknet_top1'] == s['ours_top1'] for s in spot)}/{len(spot)} images: same top-1 "
                 f"as our engine (probabilities within 1e-3)" if spot else "not run (no /usr/bin/darknet)")
    arch = "\n".join(f"| {name} | {kind} | {bottom if isinstance(bottom, str) else ' + '.join(bottom)} | "
                     f"{n or ''} | {k or ''} | {index[name]} |" for name, kind, bottom, n, k in arch)
    text = f"""# Fashion-MNIST fixture (trained, Caffe + Darknet twin)

A small CNN trained on Fashion-MNIST (Debian package `dataset-fashion-mnist`) for the
pruning workflow: conv-BN-ReLU blocks, a residual add, a two-branch concat, max pooling
and a fully connected classifier. Generated, not hand-edited:

```sh
pip install torch==2.13.0   # CPU; only this tool imports torch
python -m tools.train_fashion_fixture --checkpoint /tmp/fashion_fixture.pt
```

Seed {m['seed']}, {m['epochs']} epochs, batch {m['batch']}, AdamW + one-cycle LR, random
horizontal flips, one CPU thread, deterministic algorithms: {m['train_seconds']:.0f} s of training
with torch {m['torch_version']}. Input: 1x28x28 grey, pixel / 255 (scale 0.00392156862745098, no mean).

## Files

- `fashion_train_val.prototxt` - TRAIN/TEST ImageData layers (`train_list.txt` + `train/`,
  `t10k_list.txt` + `t10k/`, batch 50 in TEST), TEST-only Accuracy `top-1` / `top-5`, SoftmaxWithLoss `loss`.
- `fashion_deploy.prototxt` - Input 1x1x28x28 ... Softmax `prob`.
- `fashion.caffemodel` ({sizes['fashion.caffemodel']:,} bytes) - weights for both prototxts (matched by layer name).
  BatchNorm is BVLC style (mean, variance, scale_factor 1, eps 1e-5) followed by Scale with bias.
- `fashion.cfg` / `fashion.weights` ({sizes['fashion.weights']:,} bytes) - the Darknet twin. BN statistics are
  rewritten for pjreddie Darknet, `(x - mean) / (sqrt(var') + 1e-6)` with
  `var' = (sqrt(var + 1e-5) - 1e-6)^2`, so run it with `Executor(g, darknet_bn="pjreddie")`
  or the Debian `darknet` binary (AlexeyAB's `sqrt(var + 1e-5)` form moves the logits by
  ~3e-4 relative: use the pjreddie flavour for tight comparisons).
- `fashion.data`, `fashion.names` - for `darknet classifier predict|valid`; class names are
  Darknet-safe (no name contains another: darknet labels a file by `strstr(path, name)`).
- `metrics.json` - the numbers below, read by `tests/test_fashion_fixture.py`.

The image folders and lists are not stored; write them with
`python -m tools.fashion_mnist --export DIR [--kind t10k] [--count N]`, which creates
`DIR/t10k/00000_ankleboot.png ...`, `DIR/t10k_list.txt` (Caffe: `name label`) and
`DIR/t10k_valid.txt` (Darknet: `t10k/name`, run darknet from `DIR`; `--kind train` writes
`train/`, `train_list.txt`, `train_darknet.txt`).

## Architecture

| name | kind | input | channels | kernel | darknet layer |
|---|---|---|---|---|---|
{arch}

`cbr` = Convolution (no bias) + BatchNorm + Scale + ReLU (Darknet: convolutional with
batch_normalize=1, activation=relu; `cb` uses activation=linear); `add` = Eltwise SUM + ReLU
(Darknet `[shortcut]` activation=relu); `cat` = Concat (Darknet `[route]` of two layers; the
`[route]` at layer 8 re-reads `pool2` for the second branch); `pool` = 2x2/2 MAX; `fc` = InnerProduct
(Darknet `[connected]`, same C,H,W flattening and [out][in] weight layout), then Softmax.

## Accuracy on all 10,000 t10k images

| runtime | top-1 |
|---|---|
| PyTorch (training framework) | {t1['torch']:.4f} |
| caffe-surgeon engine, deploy + caffemodel | {t1['caffe_ours']:.4f} |
| OpenCV {_cv2_version()} `readNetFromCaffe` | {t1['opencv']:.4f} |
| caffe-surgeon engine, Darknet twin (pjreddie BN) | {t1['darknet_ours']:.4f} |
| Debian `darknet classifier valid fashion.data fashion.cfg fashion.weights` | {_fmt(t1['darknet_binary'])} |

Top-5 (ours, Caffe): {m['t10k_top5']['caffe_ours']:.4f}. First 1000 images (the test's subset):
{m['t10k_first1000_top1']:.4f}. Caffe and Darknet twins agree on top-1 for
{m['caffe_darknet_top1_agreement'] * 100:.2f}% of images. Largest relative differences
(max |a-b| / max |b| over all 10k): {', '.join(f'{k} {v:.1e}' for k, v in m['max_rel_error'].items())}.
Debian `darknet classifier predict` spot check: {spot_line}.

## `caffe-surgeon stat fixtures/fashion/fashion_deploy.prototxt fixtures/fashion/fashion.caffemodel`

```
{stat.rstrip()}
```
"""
    (out / "README.md").write_text(text)


def _fmt(v):
    return "not run (no /usr/bin/darknet)" if v is None else f"{v:.4f}"


def _cv2_version():
    try:
        import cv2
        return cv2.__version__
    except ImportError:
        return "(absent)"
