"""The records behind Caffe's ``ImageData`` and ``Data`` (LMDB) layers.

Both layers walk their records in order and wrap to the first one at the end
(``lines_id_ = 0`` in ``image_data_layer.cpp``; ``cursor->SeekToFirst()`` in
``data_layer.cpp``), so batch ``b`` holds records ``(b * batch_size + i) % N``.
A source therefore decodes only the first ``min(N, needed)`` records.

Each source checks everything cheap first (list syntax, that the files or the
database exist) and only then decodes, so a typo fails in milliseconds.
``shuffle`` and ``rand_skip`` are random in Caffe; records are taken in file
order instead (the evaluator notes it).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import ModelError
from ..images.caffe_image import IMAGE_EXT, decode_image, jpeg_roundtrip, read_image_caffe

#: the label of every image of an unlabelled source
NO_LABEL = -1


class ImageListSource:
    """``image_data_param``: a text file of ``path label`` lines.

    Like Caffe, the label is what follows the last space (so paths may contain
    spaces) and the image path is ``root_folder + path``, a plain string
    concatenation. Blank lines are skipped; a line without a label, or with a
    label that is not an integer, is an error (Caffe's ``atoi`` would read 0).

    ``labelled=False`` (images only, for label-free training): ``source`` may be a
    list of paths, one a line (a line that names no file but ends in `` <integer>``
    is read as ``path label``, so a labelled list works too), or a folder, whose
    image files (:data:`~..images.caffe_image.IMAGE_EXT`) are taken in name order.
    Every label then reads -1.
    """

    def __init__(self, params: dict, resolve, layer: str, net_file, labelled: bool = True):
        self.layer, self.net_file = layer, net_file
        if not params.get("source"):
            raise ModelError("image_data_param.source is not set", file=net_file, layer=layer)
        self.list_file = resolve(params["source"])
        nh, nw = int(params.get("new_height", 0)), int(params.get("new_width", 0))
        if (nh > 0) != (nw > 0):
            raise ModelError(f"new_height ({nh}) and new_width ({nw}) must be set together "
                             "(Caffe requires both or neither)", file=net_file, layer=layer)
        self.new_size = (nh, nw)
        self.is_color = bool(params.get("is_color", True))
        root = params.get("root_folder", "")
        self.labelled = labelled
        if not labelled and self.list_file.is_dir():
            self.entries = self._read_folder()
        else:
            self.entries = self._read_list(root, resolve)

    def _read_folder(self) -> list[tuple[Path, int, int]]:
        files = sorted(p for p in self.list_file.iterdir()
                       if p.is_file() and p.suffix.lower() in IMAGE_EXT)
        if not files:
            raise ModelError(f"the image folder (source of layer '{self.layer}') holds no "
                             f"image files ({', '.join(sorted(IMAGE_EXT))})", file=self.list_file)
        return [(p, NO_LABEL, 0) for p in files]

    def _read_list(self, root: str, resolve) -> list[tuple[Path, int, int]]:
        try:
            text = self.list_file.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            raise ModelError(f"the image list (source of layer '{self.layer}') does not exist",
                             file=self.list_file) from None
        except (IsADirectoryError, PermissionError) as e:
            raise ModelError(f"cannot read the image list: {e.strerror}", file=self.list_file) from None
        entries = []
        for number, line in enumerate(text.splitlines(), 1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            if not self.labelled:
                entries.append(self._unlabelled(line, root, resolve, number))
                continue
            name, sep, label = line.rpartition(" ")
            if not sep or not name:
                raise ModelError(f"expected 'path label', got {line!r}", file=self.list_file, line=number)
            try:
                value = int(label)
            except ValueError:
                raise ModelError(f"label {label!r} is not an integer", file=self.list_file,
                                 line=number) from None
            entries.append((resolve(root + name), value, number))
        if not entries:
            what = "'path label'" if self.labelled else "path"
            raise ModelError(f"the image list is empty (no {what} lines)", file=self.list_file)
        return entries

    def _unlabelled(self, line: str, root: str, resolve, number: int) -> tuple[Path, int, int]:
        """A path line; ``path label`` when the whole line names no file and ends in an integer."""
        whole = resolve(root + line)
        name, sep, label = line.rpartition(" ")
        if not whole.is_file() and sep and name and label.lstrip("-").isdigit():
            return resolve(root + name), NO_LABEL, number
        return whole, NO_LABEL, number

    def __len__(self) -> int:
        return len(self.entries)

    def describe(self, index: int) -> str:
        path, _, number = self.entries[index]
        return f"{self.list_file}:{number} ({path})" if number else str(path)

    def decoded(self, index: int) -> bool:  # image files are always decoded
        return True

    def load(self, count: int) -> tuple[list[np.ndarray], list[int]]:
        """Decode the first ``count`` images: uint8 (C, H, W) BGR or grey, and their labels."""
        return _unzip(self.iter_load(count))

    def iter_load(self, count: int):
        """``load``, one ``(image, label)`` at a time (missing files are reported first)."""
        chosen = self.entries[:count]
        for path, _, number in chosen:  # all missing files are reported before any decoding
            if not path.is_file():
                raise ModelError(f"image {path} listed here does not exist", file=self.list_file,
                                 line=number or None)
        for index in range(len(chosen)):
            yield self.load_one(index)

    def load_one(self, index: int) -> tuple[np.ndarray, int]:
        """Entry ``index`` (a line of the list, blank lines not counted): image and label.
        Random access, for TRAIN-phase reading in any (shuffled) order."""
        path, label, number = self.entries[index]
        try:
            image = read_image_caffe(path, *self.new_size, self.is_color)
        except ModelError as e:
            raise ModelError(f"cannot load {path}: {e.message}", file=self.list_file,
                             line=number or None) from None
        return image, label


class LmdbSource:
    """``data_param`` with ``backend: LMDB``: Caffe ``Datum`` records in key order."""

    def __init__(self, params: dict, resolve, layer: str, net_file, force_color=False,
                 force_gray=False):
        self.layer, self.net_file = layer, net_file
        backend = params.get("backend", "LEVELDB")
        if backend != "LMDB":
            raise ModelError(f"data_param.backend is {backend}; only LMDB databases can be read "
                             "(convert with Caffe's convert_imageset -backend lmdb)",
                             file=net_file, layer=layer)
        if not params.get("source"):
            raise ModelError("data_param.source is not set", file=net_file, layer=layer)
        self.path = resolve(params["source"])
        self.mode = "color" if force_color else "gray" if force_gray else "native"
        if not self.path.exists():
            raise ModelError(f"the LMDB database (source of layer '{layer}') does not exist",
                             file=self.path)
        env = _open_lmdb(self.path)
        try:
            self.size = int(env.stat()["entries"])
        finally:
            env.close()  # opened again by each load: no handle held between reads
        self.raw: set[int] = set()  # indices of the last load's raw (not encoded) records
        if self.size == 0:
            raise ModelError("the LMDB database has no records", file=self.path)

    def __len__(self) -> int:
        return self.size

    def describe(self, index: int) -> str:
        return f"{self.path} record {index}"

    def decoded(self, index: int) -> bool:
        """Whether record ``index`` (of the last load) was an encoded image, not raw pixels."""
        return index not in self.raw

    def _records(self, count: int):
        """``(index, where, value)`` of the first ``count`` records, in key order as Caffe's
        cursor walks them."""
        self.raw = set()
        env = _open_lmdb(self.path)
        try:
            with env.begin(buffers=False) as txn:
                for i, (key, value) in enumerate(txn.cursor()):
                    if i == count:
                        break
                    yield i, f"{self.path} record {i} (key {key.decode('latin-1')!r})", value
        finally:
            env.close()

    def keys(self) -> list[bytes]:
        """Every key in cursor (key) order: record ``i`` of ``load`` is stored under
        ``keys()[i]``. Random access by record index (TRAIN reading from any iteration)
        needs them; only the keys are read, not the values."""
        env = _open_lmdb(self.path)
        try:
            with env.begin(buffers=False) as txn:
                return list(txn.cursor().iternext(keys=True, values=False))
        finally:
            env.close()

    def open(self):
        """A read-only handle on the database, for ``load_keyed``; an LMDB database can be
        open once per process, so threads share it (each reads in its own transaction)."""
        return _open_lmdb(self.path)

    def load_keyed(self, items, env=None) -> list[tuple[np.ndarray, int, bool]]:
        """Records by ``(index, key)`` (index as in ``keys()``), in one read transaction:
        ``(image, label, decoded)`` each, ``decoded`` False for raw-pixel Datums.
        ``env``: a handle from ``open`` (default: opened and closed here)."""
        own = env is None
        env = self.open() if own else env
        out = []
        try:
            with env.begin(buffers=False) as txn:
                for i, key in items:
                    where = f"{self.path} record {i} (key {key.decode('latin-1')!r})"
                    value = txn.get(key)
                    if value is None:
                        raise ModelError(f"{where} is gone (was the database rewritten "
                                         "while reading?)")
                    datum = _parse_datum(value, where)
                    out.append((datum_image(datum, self.mode, where), int(datum.label),
                                bool(datum.encoded)))
        finally:
            if own:
                env.close()
        return out

    def _image(self, i: int, datum, where: str) -> np.ndarray:
        if not datum.encoded:
            self.raw.add(i)
        return datum_image(datum, self.mode, where)

    def load(self, count: int) -> tuple[list[np.ndarray], list[int]]:
        """Decode the first ``count`` records: images and labels."""
        return _unzip(self.iter_load(count))

    def iter_load(self, count: int):
        """``load``, one ``(image, label)`` at a time."""
        for i, where, value in self._records(count):
            datum = _parse_datum(value, where)
            yield self._image(i, datum, where), int(datum.label)


def _parse_datum(value: bytes, where: str):
    from ..caffe import caffe_pb2
    datum = caffe_pb2.Datum()
    try:
        datum.ParseFromString(value)
    except Exception as e:  # protobuf raises DecodeError, sometimes others
        raise ModelError(f"{where}: not a Caffe Datum: {e}") from None
    return datum


def _open_lmdb(path: Path):
    try:
        import lmdb
    except ImportError:
        raise ModelError("reading an LMDB database needs the 'lmdb' package "
                         "(pip install lmdb)", file=path) from None
    try:
        return lmdb.open(str(path), readonly=True, lock=False, readahead=False,
                         subdir=path.is_dir(), max_readers=1)
    except lmdb.Error as e:
        raise ModelError(f"cannot open the LMDB database: {e}", file=path) from None


def datum_image(datum, mode: str, where: str) -> np.ndarray:
    """One Datum's image as uint8 (C, H, W), or float32 for ``float_data`` records.

    Encoded records are decoded like ``DecodeDatumToCVMat``: as stored ("native",
    ``IMREAD_UNCHANGED``) unless transform_param forces colour or grey.
    """
    if datum.encoded:
        img = decode_image(bytes(datum.data), mode, what=where)
        return np.ascontiguousarray(img.transpose(2, 0, 1))
    shape = (datum.channels, datum.height, datum.width)
    size = int(np.prod(shape))
    if size == 0:
        raise ModelError(f"{where}: Datum has shape {shape} (channels, height, width)")
    if len(datum.data):
        raw, kind = np.frombuffer(datum.data, np.uint8), "bytes of data"
    else:
        raw, kind = np.asarray(datum.float_data, np.float32), "float_data values"
    if raw.size != size:
        raise ModelError(f"{where}: Datum holds {raw.size} {kind} but channels x height x "
                         f"width = {' x '.join(map(str, shape))} = {size}")
    return raw.reshape(shape)


class AnnotatedLmdbSource(LmdbSource):
    """SSD's ``AnnotatedData`` layer: LMDB ``AnnotatedDatum`` records (image + boxes).

    ``load`` returns, per record, the image and an array of its boxes, rows
    ``(group_label, instance_id, xmin, ymin, xmax, ymax, difficult)`` in
    normalized coordinates, as stored.

    ``reencode``: the layer has a batch sampler that yields the whole image, so
    the fork crops each encoded record to itself and stores it again as JPEG
    (``CropImage`` -> ``EncodeCVMatToDatum(.., "jpg", ..)``) before transforming:
    the image is what that JPEG decodes to.
    """

    reencode = False

    def iter_load(self, count: int):
        """``load``, one ``(image, boxes)`` at a time."""
        from ..caffe import caffe_pb2
        for i, where, value in self._records(count):
            record = caffe_pb2.AnnotatedDatum()
            try:
                record.ParseFromString(value)
            except Exception as e:  # protobuf raises DecodeError, sometimes others
                raise ModelError(f"{where}: not an AnnotatedDatum: {e}") from None
            if not record.HasField("datum"):
                raise ModelError(f"{where}: AnnotatedDatum without a datum (is this a plain "
                                 "Datum database? use a Data layer)")
            if record.type != caffe_pb2.AnnotatedDatum.BBOX:
                raise ModelError(f"{where}: annotation type {record.type}; only BBOX "
                                 "annotations can be evaluated")
            image = self._image(i, record.datum, where)
            if self.reencode and record.datum.encoded:
                image = jpeg_roundtrip(image, self.mode, where)
            rows = [(g.group_label, a.instance_id, a.bbox.xmin, a.bbox.ymin, a.bbox.xmax,
                     a.bbox.ymax, float(a.bbox.difficult))
                    for g in record.annotation_group for a in g.annotation]
            yield image, np.asarray(rows, np.float32).reshape(-1, 7)


def _unzip(pairs) -> tuple[list, list]:
    images, labels = [], []
    for image, label in pairs:
        images.append(image)
        labels.append(label)
    return images, labels
