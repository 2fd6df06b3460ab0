"""Fashion-MNIST reader for the Debian package ``dataset-fashion-mnist``.

No network access: the idx files must already be installed under DATASET_DIR.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from caffe_surgeon.errors import ModelError

DATASET_DIR = Path("/usr/share/datasets/fashion-mnist")

# Darknet's classifier finds an image's label with strstr(path, name) over this list,
# so no name may contain another, and none should be a common path word
# ("top" hides in "Desktop", "boot" in "/boot", "shirt" in "tshirt").
CLASS_NAMES = (
    "tshirt",       # 0 T-shirt/top
    "trouser",      # 1
    "pullover",     # 2
    "dress",        # 3
    "coat",         # 4
    "sandal",       # 5
    "collarshirt",  # 6 Shirt
    "sneaker",      # 7
    "handbag",      # 8 Bag
    "ankleboot",    # 9 Ankle boot
)

_KINDS = ("train", "t10k")
# Darknet image lists (the fixture's fashion.data names them as train= and valid=).
DARKNET_LISTS = {"train": "train_darknet.txt", "t10k": "t10k_valid.txt"}


def _read_gz(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        raw = gzip.open(path, "rb").read()
    except FileNotFoundError:
        raise ModelError(
            "Fashion-MNIST file missing (install the Debian package dataset-fashion-mnist)",
            file=path) from None
    except (OSError, EOFError) as exc:
        raise ModelError(f"cannot decompress: {exc}", file=path) from None
    if len(raw) < 4 + 4 * ndim:
        raise ModelError(f"idx file too short: {len(raw)} bytes", file=path)
    got = int.from_bytes(raw[0:4], "big")
    if got != magic:
        raise ModelError(f"idx magic is 0x{got:08x}, expected 0x{magic:08x}", file=path, offset=0)
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    start = 4 + 4 * ndim
    need = int(np.prod(dims))
    if len(raw) - start != need:
        raise ModelError(f"idx payload has {len(raw) - start} bytes, header dims {dims} imply {need}",
                         file=path, offset=start)
    return np.frombuffer(raw, np.uint8, offset=start).reshape(dims)


def read_idx(kind: str = "t10k", directory=None):
    """Return (images uint8 [N,28,28], labels int64 [N]) for kind "train" or "t10k"."""
    if kind not in _KINDS:
        raise ModelError(f"Fashion-MNIST kind must be one of {_KINDS}, got {kind!r}")
    d = Path(directory) if directory is not None else DATASET_DIR
    images = _read_gz(d / f"{kind}-images-idx3-ubyte.gz", 0x00000803, 3)
    labels = _read_gz(d / f"{kind}-labels-idx1-ubyte.gz", 0x00000801, 1).astype(np.int64)
    if images.shape[0] != labels.shape[0]:
        raise ModelError(f"{kind}: {images.shape[0]} images but {labels.shape[0]} labels", file=d)
    if labels.size and labels.max() >= len(CLASS_NAMES):
        raise ModelError(f"{kind}: label {int(labels.max())} out of range 0..9", file=d)
    return images, labels


def write_image_folder(root, kind: str = "t10k", count=None, images=None, labels=None):
    """Write PNGs and list files for the fixture's data layers.

    Creates ``root/<kind>/<index>_<class>.png``, ``root/<kind>_list.txt`` (Caffe ImageData:
    ``<file> <label>``, paths relative to the ``<kind>/`` root_folder) and
    ``root/DARKNET_LISTS[kind]`` (Darknet: ``<kind>/<file>``, relative to ``root``; darknet
    labels an image by the class name inside its path). Returns [(path, label)].
    """
    from PIL import Image

    if images is None or labels is None:
        images, labels = read_idx(kind)
    n = len(images) if count is None else min(int(count), len(images))
    if n < 0:
        raise ModelError(f"count must be >= 0, got {count}")
    if kind not in _KINDS:
        raise ModelError(f"Fashion-MNIST kind must be one of {_KINDS}, got {kind!r}")
    root = Path(root)
    folder = root / kind
    folder.mkdir(parents=True, exist_ok=True)
    out, caffe_lines, darknet_lines = [], [], []
    for i in range(n):
        label = int(labels[i])
        name = f"{i:05d}_{CLASS_NAMES[label]}.png"
        Image.fromarray(np.ascontiguousarray(images[i], np.uint8)).save(folder / name)
        out.append((folder / name, label))
        caffe_lines.append(f"{name} {label}\n")
        darknet_lines.append(f"{kind}/{name}\n")
    (root / f"{kind}_list.txt").write_text("".join(caffe_lines))
    (root / DARKNET_LISTS[kind]).write_text("".join(darknet_lines))
    return out


def _main(argv=None):
    import argparse
    import sys

    ap = argparse.ArgumentParser(description="Write Fashion-MNIST PNG folders and list files.")
    ap.add_argument("--export", required=True, metavar="DIR")
    ap.add_argument("--kind", default="t10k", choices=_KINDS)
    ap.add_argument("--count", type=int, default=None)
    args = ap.parse_args(argv)
    try:
        paths = write_image_folder(args.export, args.kind, args.count)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(paths)} images to {Path(args.export) / args.kind}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
