"""Darknet's evaluation inputs: ``.data`` files, image lists, labels, image preparation.

Rules followed (pjreddie darknet, ``option_list.c``, ``data.c``, ``classifier.c``):

* ``.data``: every whitespace character of a line is removed, lines starting
  with ``#`` or ``;`` and empty lines are skipped, the option is split at the
  first ``=``. Paths in it, and in the lists it names, are relative to the
  current directory (or to ``base_dir`` here).
* classifier truth: the class whose name occurs in the image path (``strstr``).
  Darknet takes the first match; here exactly one must match.
* detector truth: the label file is the image path with the first ``images``,
  ``JPEGImages`` and ``raw`` replaced by ``labels`` and the extension
  (``.jpg``, ``.png``, ``.JPG``, ``.JPEG``) by ``.txt``; one ``class cx cy w h``
  line (relative to the image size) per object.
* classifier images: ``validate_classifier_single`` of pjreddie's final
  classifier.c (the Debian darknet binary): ``load_image_color``, then
  ``center_crop_image`` (crop the central square, then darknet's
  ``resize_image`` to the net size); pixels are bytes / 255 in RGB.
* detector images: ``letterbox_image`` to the net size, as ``validate_detector``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..images.darknet_image import letterbox_image, load_image, resize_image
from ..errors import ModelError

_LABEL_DIRS = ("images", "JPEGImages", "raw")
_IMAGE_EXTS = (".jpg", ".png", ".JPG", ".JPEG")


@dataclass
class DataCfg:
    """A parsed ``.data`` file; relative paths resolve against ``base_dir`` (or the cwd)."""

    path: Path
    options: dict[str, str]
    lines: dict[str, int] = field(default_factory=dict)
    base_dir: Path | None = None

    def resolve(self, p: str) -> Path:
        p = Path(p)
        return p if p.is_absolute() or self.base_dir is None else self.base_dir / p

    def text(self, key: str, default: str | None = None) -> str | None:
        return self.options.get(key, default)

    def integer(self, key: str, default: int) -> int:
        if key not in self.options:
            return default
        try:
            return int(self.options[key])
        except ValueError:
            raise ModelError(f"option {key}={self.options[key]!r} is not an integer",
                             file=self.path, line=self.lines.get(key)) from None

    def file(self, *keys: str, default: str | None = None) -> Path:
        """The first of ``keys`` present (else ``default``, darknet's own), resolved."""
        for key in keys:
            if key in self.options:
                return self.resolve(self.options[key])
        if default is None:
            raise ModelError(f"no '{keys[0]}=' option", file=self.path)
        return self.resolve(default)


def read_data_cfg(path, base_dir=None) -> DataCfg:
    """Parse a darknet ``.data`` file (``read_data_cfg``)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ModelError("the .data file does not exist", file=path) from None
    except (IsADirectoryError, PermissionError) as e:
        raise ModelError(f"cannot read the .data file: {e.strerror}", file=path) from None
    cfg = DataCfg(path, {}, {}, Path(base_dir) if base_dir is not None else None)
    for number, raw in enumerate(text.splitlines(), 1):
        line = "".join(raw.split())
        if not line or line[0] in "#;":
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise ModelError(f"expected 'option=value', got {raw.strip()!r}", file=path, line=number)
        cfg.options[key] = value
        cfg.lines[key] = number
    return cfg


def read_lines(path, what: str) -> list[tuple[int, str]]:
    """Non-blank lines (number, text) of a list or names file (``get_paths``)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ModelError(f"the {what} does not exist", file=path) from None
    except (IsADirectoryError, PermissionError) as e:
        raise ModelError(f"cannot read the {what}: {e.strerror}", file=path) from None
    return [(n, line.rstrip("\r")) for n, line in enumerate(text.split("\n"), 1)
            if line.strip()]


@dataclass
class ImageItem:
    """One line of the valid list: the path as written (darknet matches on it) and on disk."""

    written: str
    path: Path
    line: int
    list_file: Path

    def where(self) -> str:
        return f"{self.list_file}:{self.line}"


def read_image_list(cfg: DataCfg, key: str = "valid", limit: int | None = None) -> list[ImageItem]:
    """The image list named by ``key`` (darknet's default: data/train.list), checked to exist."""
    list_file = cfg.file(key, default="data/train.list")
    lines = read_lines(list_file, f"image list ('{key}=' of {cfg.path})")
    items = [ImageItem(text, cfg.resolve(text), n, list_file) for n, text in lines]
    if not items:
        raise ModelError("the image list is empty", file=list_file)
    items = items[:limit] if limit else items
    for item in items:  # every missing image is caught before any decoding
        if not item.path.is_file():
            raise ModelError(f"image {item.path} listed here does not exist", file=list_file,
                             line=item.line)
    return items


def read_names(cfg: DataCfg, keys: tuple[str, ...], classes: int) -> list[str]:
    """The first ``classes`` class names, one per line (``get_labels``: blank lines count too)."""
    names_file = cfg.file(*keys, default="data/names.list")
    try:
        text = names_file.read_text(encoding="utf-8", errors="surrogateescape")
    except FileNotFoundError:
        raise ModelError("the class names file does not exist", file=names_file) from None
    except (IsADirectoryError, PermissionError) as e:
        raise ModelError(f"cannot read the class names file: {e.strerror}", file=names_file) from None
    names = [line.rstrip("\r") for line in text.split("\n")]
    if names and not names[-1]:
        names.pop()  # the newline that ends the last line
    if len(names) < classes:
        raise ModelError(f"{len(names)} class names but the model has {classes} classes",
                         file=names_file)
    for number, name in enumerate(names[:classes], 1):
        if not name.strip():  # darknet's strstr(path, "") would match every path
            raise ModelError("empty class name", file=names_file, line=number)
    return names[:classes]


def class_from_path(item: ImageItem, labels: list[str]) -> int:
    """The single class whose name occurs in the path (darknet's ``strstr`` rule)."""
    hits = [j for j, name in enumerate(labels) if name in item.written]
    if len(hits) != 1:
        found = ", ".join(repr(labels[j]) for j in hits) or "none"
        raise ModelError(f"{item.written!r}: exactly one class name must occur in the path to "
                         f"give its label; matches: {found}", file=item.list_file, line=item.line)
    return hits[0]


def label_path(image_path: str) -> str:
    """darknet's label file for an image: first occurrence of each pattern replaced, in order."""
    out = image_path
    for old in _LABEL_DIRS:
        out = out.replace(old, "labels", 1)
    for ext in _IMAGE_EXTS:
        out = out.replace(ext, ".txt", 1)
    return out


def read_boxes(path: Path, classes: int, item: ImageItem) -> np.ndarray:
    """Ground truth rows ``(class, x1, y1, x2, y2)`` (relative) from one label file."""
    if not path.is_file():
        raise ModelError(f"label file {path} for this image ({item.written}) does not exist",
                         file=item.list_file, line=item.line)
    rows = []
    for number, text in read_lines(path, "label file"):
        parts = text.split()
        try:
            cls, x, y, w, h = int(parts[0]), *map(float, parts[1:5])
            if len(parts) != 5:
                raise ValueError
        except (ValueError, IndexError):
            raise ModelError(f"expected 'class x y w h', got {text.strip()!r}", file=path,
                             line=number) from None
        if not 0 <= cls < classes:
            raise ModelError(f"class {cls} is outside 0..{classes - 1}", file=path, line=number)
        rows.append((cls, x - w / 2, y - h / 2, x + w / 2, y + h / 2))
    return np.asarray(rows, np.float64).reshape(-1, 5)


def _load(item: ImageItem) -> np.ndarray:
    try:
        return load_image(item.path, channels=3)  # load_image_color
    except ModelError as e:
        raise ModelError(f"cannot load {item.path}: {e.message}", file=item.list_file,
                         line=item.line) from None


def classifier_input(item: ImageItem, w: int, h: int, c: int) -> np.ndarray:
    """``center_crop_image(load_image_color(path), w, h)``, first ``c`` planes, float32 (c, h, w)."""
    im = _load(item)
    _, ih, iw = im.shape
    m = min(iw, ih)
    top, left = (ih - m) // 2, (iw - m) // 2
    return resize_image(im[:, top:top + m, left:left + m], w, h)[:c]


def detector_input(item: ImageItem, w: int, h: int, c: int) -> tuple[np.ndarray, tuple[int, int]]:
    """(letterboxed float32 (c, h, w), (image width, image height))."""
    im = _load(item)
    return letterbox_image(im, w, h)[:c], (im.shape[2], im.shape[1])
