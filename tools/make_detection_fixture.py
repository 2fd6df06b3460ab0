"""Build a labelled detection set from Fashion-MNIST, for Darknet and SSD training.

    python tools/make_detection_fixture.py OUT [--train 2000] [--test 500] [--size 160]
                                              [--seed 0] [--dataset DIR]

Scenes (see ``tools/detection_scenes.py``): 1 to 6 Fashion items pasted at random
scales and places on a dark textured canvas; train scenes from Fashion's train items,
test scenes from its t10k items. Everything follows from ``--seed``: two runs give
byte-identical files.

Size: 160 x 160 by default, chosen for minutes of CPU training: a yolov3-tiny shaped
net then has 5 x 5 and 10 x 10 grids (enough to separate six items of 21 .. 70 px),
a quarter of the work per image of 320 x 320, and our Darknet loader prepares ~140
augmented images a second on one core instead of ~55 (measured on this project's 2-core
Xeon). ``--size`` changes it.

Writes OUT (which must not exist; the set is built in a hidden sibling folder and
renamed when complete, so OUT never holds half a set):

- ``images/train/000000.png`` ..., ``images/test/...``: RGB PNG scenes;
- ``labels/train/000000.txt`` ...: Darknet labels, ``class cx cy w h`` relative to the
  image, where Darknet's path rewrite looks for them (images -> labels, .png -> .txt);
- ``train.txt``, ``test.txt``: Darknet image lists, relative to OUT (run from OUT);
- ``fashion_detection.data`` (classes, train, valid, names, backup) and ``fashion.names``;
- ``train_lmdb/``, ``test_lmdb/``: SSD ``AnnotatedDatum`` records (type BBOX), the same
  PNG bytes (``encoded``, label -1), one annotation group per class present with
  ``group_label`` = class + 1 (SSD's label 0 is the background), ``instance_id``
  counting within the group, boxes normalised ``xmin ymin xmax ymax`` (as SSD's
  ``convert_annoset`` stores ``label xmin ymin xmax ymax`` pixel files), keys
  ``00000000_images/train/000000.png`` (``convert_annoset``'s key), in list order;
- ``labelmap.prototxt`` (SSD ``LabelMap``: background, then the 10 classes) and
  ``test_name_size.txt`` (``name height width``, the name_size_file of SSD's evaluation);
- ``manifest.json``: per scene, each item's class, source index and pixel box.

A box is the tight bounding box of the item's visible pixels, in pixels ``x0, y0`` to
``x1, y1`` (exclusive): Darknet ``cx = (x0 + x1) / 2 / W``, ``w = (x1 - x0) / W``; SSD
``xmin = x0 / W``, ``xmax = x1 / W``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from caffe_surgeon.errors import ModelError  # noqa: E402
from tools.detection_scenes import ITEMS_PER_SCENE, render_scene  # noqa: E402
from tools.fashion_mnist import CLASS_NAMES, read_idx  # noqa: E402

#: (split name, Fashion kind, split number in the seed)
SPLITS = (("train", "train", 0), ("test", "t10k", 1))
DATA_FILE = "fashion_detection.data"
NAMES_FILE = "fashion.names"


def _png(image: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def darknet_label(box, size: int, cls: int) -> str:
    """``class cx cy w h`` of a pixel box (x0, y0, x1, y1 exclusive) on a size x size image."""
    x0, y0, x1, y1 = box
    return (f"{cls} {(x0 + x1) / 2 / size:.6f} {(y0 + y1) / 2 / size:.6f} "
            f"{(x1 - x0) / size:.6f} {(y1 - y0) / size:.6f}")


def annotated_datum(png: bytes, placed, size: int) -> bytes:
    """An SSD ``AnnotatedDatum`` record: the encoded image and its boxes, grouped by label."""
    from caffe_surgeon.caffe import caffe_pb2
    record = caffe_pb2.AnnotatedDatum(type=caffe_pb2.AnnotatedDatum.BBOX)
    record.datum.data, record.datum.encoded, record.datum.label = png, True, -1
    groups = {}
    for item in placed:  # groups in order of first appearance, as convert_annoset adds them
        label = item.cls + 1
        if label not in groups:
            groups[label] = record.annotation_group.add(group_label=label)
        group = groups[label]
        a = group.annotation.add(instance_id=len(group.annotation))
        x0, y0, x1, y1 = item.box
        a.bbox.xmin, a.bbox.ymin, a.bbox.xmax, a.bbox.ymax = x0 / size, y0 / size, x1 / size, y1 / size
        a.bbox.difficult = False
    return record.SerializeToString(deterministic=True)


def _write_lmdb(path: Path, records: list[tuple[bytes, bytes]]) -> None:
    try:
        import lmdb
    except ImportError:
        raise ModelError("writing an LMDB database needs the 'lmdb' package (pip install lmdb)") \
            from None
    size = sum(len(k) + len(v) for k, v in records)
    # lock=False: no lock.mdb beside the data (one writer, and its bytes would vary)
    env = lmdb.open(str(path), map_size=4 * size + (16 << 20), lock=False, subdir=True)
    try:
        with env.begin(write=True) as txn:
            for key, value in records:
                txn.put(key, value)
    finally:
        env.close()


def _labelmap() -> str:
    entries = [("background", 0, "background")] + [(n, i + 1, n) for i, n in enumerate(CLASS_NAMES)]
    return "".join(f'item {{\n  name: "{n}"\n  label: {label}\n  display_name: "{d}"\n}}\n'
                   for n, label, d in entries)


def _write_split(tmp: Path, name: str, kind: str, split: int, count: int, size: int, seed: int,
                 dataset_dir, manifest: dict) -> None:
    items, labels = read_idx(kind, dataset_dir)
    order = np.random.default_rng([seed, split, 1 << 20]).permutation(len(items))
    per_scene = ITEMS_PER_SCENE[1]
    (tmp / "images" / name).mkdir(parents=True)
    (tmp / "labels" / name).mkdir(parents=True)
    listed, records, sizes, scenes = [], [], [], []
    for i in range(count):
        sources = np.take(order, range(i * per_scene, (i + 1) * per_scene), mode="wrap")
        image, placed = render_scene(seed, split, i, items, labels, sources, size)
        png = _png(image)
        rel = f"images/{name}/{i:06d}.png"
        (tmp / rel).write_bytes(png)
        (tmp / "labels" / name / f"{i:06d}.txt").write_text(
            "".join(darknet_label(p.box, size, p.cls) + "\n" for p in placed))
        listed.append(rel)
        records.append((f"{i:08d}_{rel}".encode(), annotated_datum(png, placed, size)))
        sizes.append(f"{i:06d} {size} {size}\n")
        scenes.append({"image": rel, "items": [{"class": p.cls, "name": CLASS_NAMES[p.cls],
                                                 "source": f"{kind}[{p.source}]",
                                                 "box": list(p.box)} for p in placed]})
    (tmp / f"{name}.txt").write_text("".join(f"{p}\n" for p in listed))
    _write_lmdb(tmp / f"{name}_lmdb", records)
    (tmp / f"{name}_name_size.txt").write_text("".join(sizes))
    manifest[name] = scenes


def make_detection_fixture(out_dir, train: int = 2000, test: int = 500, size: int = 160,
                           seed: int = 0, dataset_dir=None) -> Path:
    """Build the set into ``out_dir`` (see the module docstring); returns its .data file."""
    for what, value, low in (("train", train, 1), ("test", test, 1), ("size", size, 48),
                             ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ModelError(f"--{what} must be an integer >= {low}, got {value!r}")
    out = Path(out_dir)
    if out.exists():
        raise ModelError("the output folder already exists; choose a new one or remove it",
                         file=out)
    if not out.parent.is_dir():
        raise ModelError(f"the output's parent folder '{out.parent}' does not exist", file=out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        manifest: dict = {"seed": seed, "size": size, "classes": list(CLASS_NAMES)}
        for name, kind, split in SPLITS:
            _write_split(tmp, name, kind, split, train if name == "train" else test, size, seed,
                         dataset_dir, manifest)
        (tmp / NAMES_FILE).write_text("".join(f"{n}\n" for n in CLASS_NAMES))
        (tmp / DATA_FILE).write_text(f"classes = {len(CLASS_NAMES)}\ntrain = train.txt\n"
                                     f"valid = test.txt\nnames = {NAMES_FILE}\nbackup = backup/\n")
        (tmp / "labelmap.prototxt").write_text(_labelmap())
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out / DATA_FILE


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", metavar="OUT")
    ap.add_argument("--train", type=int, default=2000, help="train scenes (default 2000)")
    ap.add_argument("--test", type=int, default=500, help="test scenes (default 500)")
    ap.add_argument("--size", type=int, default=160, help="canvas side in pixels (default 160)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dataset", default=None, help="Fashion-MNIST folder (default: the "
                    "Debian package's /usr/share/datasets/fashion-mnist)")
    args = ap.parse_args(argv)
    try:
        data = make_detection_fixture(args.out_dir, args.train, args.test, args.size, args.seed,
                                      args.dataset)
    except ModelError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {args.train} train and {args.test} test scenes; Darknet: {data}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
