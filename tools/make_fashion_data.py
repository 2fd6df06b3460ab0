"""Materialise Fashion-MNIST as the data sources Caffe and Darknet evaluations read.

    python tools/make_fashion_data.py DIR --count 500 [--kind t10k] [--encoded]

Writes into DIR (paths inside the lists are relative to DIR; evaluate with
``base_dir=DIR`` or from inside DIR, as Caffe and darknet would):

- ``t10k/00000_ankleboot.png ...`` grey 28x28 PNGs, ``t10k_list.txt`` (Caffe ImageData:
  ``00000_ankleboot.png 9``, with ``root_folder: "t10k/"``) and ``t10k_valid.txt``
  (Darknet: ``t10k/00000_ankleboot.png``; the class name in the path is the label),
  all by ``tools.fashion_mnist.write_image_folder``, the fixture's own layout;
- ``t10k_lmdb/``: Caffe ``Datum`` records, raw bytes (channels 1, 28 x 28) and label,
  keyed ``00000000``, ``00000001``, ... (Caffe reads them in key order);
- ``t10k_lmdb_encoded/`` with ``--encoded``: the same records as PNG bytes (``encoded: true``);
- ``fashion.names`` and ``t10k.data`` (classes, valid, labels, names, top=5) for darknet.
"""
from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from caffe_surgeon.errors import ModelError  # noqa: E402
from tools.fashion_mnist import CLASS_NAMES, DARKNET_LISTS, read_idx, write_image_folder  # noqa: E402


def _png_bytes(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def write_lmdb(path: Path, images: np.ndarray, labels: np.ndarray, encoded: bool) -> None:
    """One Datum per image, in index order (keys are zero-padded indices)."""
    try:
        import lmdb
    except ImportError:
        raise ModelError("writing an LMDB database needs the 'lmdb' package (pip install lmdb)") from None
    from caffe_surgeon.caffe import caffe_pb2
    if path.exists():
        raise ModelError("LMDB folder already exists; remove it first", file=path)
    per_record = 28 * 28 * 2 + 256
    env = lmdb.open(str(path), map_size=(64 << 20) + len(images) * per_record * 4)
    with env.begin(write=True) as txn:
        for i, (image, label) in enumerate(zip(images, labels)):
            datum = caffe_pb2.Datum(channels=1, height=image.shape[0], width=image.shape[1],
                                    label=int(label))
            if encoded:
                datum.data, datum.encoded = _png_bytes(image), True
            else:
                datum.data = np.ascontiguousarray(image, np.uint8).tobytes()
            txn.put(f"{i:08d}".encode(), datum.SerializeToString())
    env.close()


def make_fashion_data(out_dir, count: int, kind: str = "t10k", encoded: bool = False,
                      dataset_dir=None) -> dict[str, Path]:
    """Write the images, lists, LMDB(s) and darknet .data file; return their paths by role."""
    if count < 1:
        raise ModelError(f"count must be at least 1, got {count}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    images, labels = read_idx(kind, dataset_dir)
    images, labels = images[:count], labels[:count]
    write_image_folder(out, kind, count, images, labels)
    paths = {"images": out / kind, "image_list": out / f"{kind}_list.txt",
             "valid_list": out / DARKNET_LISTS[kind], "lmdb": out / f"{kind}_lmdb",
             "names": out / "fashion.names", "data": out / f"{kind}.data"}
    write_lmdb(paths["lmdb"], images, labels, encoded=False)
    if encoded:
        paths["lmdb_encoded"] = out / f"{kind}_lmdb_encoded"
        write_lmdb(paths["lmdb_encoded"], images, labels, encoded=True)
    paths["names"].write_text("".join(f"{n}\n" for n in CLASS_NAMES))
    paths["data"].write_text(f"classes={len(CLASS_NAMES)}\nvalid={DARKNET_LISTS[kind]}\n"
                             "labels=fashion.names\nnames=fashion.names\ntop=5\n")
    return paths


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", metavar="DIR")
    ap.add_argument("--count", type=int, required=True, help="number of images (from the start)")
    ap.add_argument("--kind", default="t10k", choices=tuple(DARKNET_LISTS))
    ap.add_argument("--encoded", action="store_true", help="also write a PNG-encoded LMDB")
    args = ap.parse_args(argv)
    try:
        paths = make_fashion_data(args.out_dir, args.count, args.kind, args.encoded)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for role, path in paths.items():
        print(f"{role:13s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
