"""Direct reading and writing of the protobuf wire format for .caffemodel files.

Why not the generated classes: with protobuf's pure-Python backend a 24 MB
caffemodel takes seconds to parse because every float becomes a Python object,
files over 512 MB hit the library's size limits, and the forks give the same
LayerParameter field numbers different meanings (see proto/README.md). The
fields that carry weights are numbered identically in every fork, so we scan
records ourselves, decode only those fields, view packed floats with
``np.frombuffer`` (no copy), and carry every other byte through verbatim.

Field numbers come from caffe.proto (all forks agree on these):
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..errors import ModelError

# Wire types (protobuf encoding spec).
VARINT, FIXED64, LEN, SGROUP, EGROUP, FIXED32 = 0, 1, 2, 3, 4, 5

# NetParameter
NET_NAME = 1
NET_LAYERS_V1 = 2
NET_LAYER = 100
# LayerParameter
LAYER_NAME, LAYER_TYPE, LAYER_BOTTOM, LAYER_TOP, LAYER_BLOBS = 1, 2, 3, 4, 7
# V1LayerParameter
V1_BOTTOM, V1_TOP, V1_NAME, V1_TYPE, V1_BLOBS = 2, 3, 4, 5, 6
# BlobProto
BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH = 1, 2, 3, 4
BLOB_DATA, BLOB_DIFF, BLOB_SHAPE, BLOB_DOUBLE_DATA = 5, 6, 7, 8
# NVIDIA Caffe / OpenCV store half-precision weights as raw bytes: raw_data_type (10,
# varint) + raw_data (12, bytes). Xilinx uses 10 and 12 for a packed float mask and a
# format enum; the wire types tell the two apart (see proto/README.md).
BLOB_RAW_TYPE, BLOB_RAW_DATA = 10, 12
RAW_DTYPES = {0: "<f8", 1: "<f4", 2: "<f2"}
# BlobShape
SHAPE_DIM = 1


class WireError(Exception):
    """Malformed bytes at ``offset`` (absolute within the file)."""

    def __init__(self, message: str, offset: int):
        super().__init__(message)
        self.offset = offset


def read_varint(buf, pos: int, end: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        if pos >= end:
            raise WireError("truncated varint", pos)
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise WireError("varint longer than 10 bytes", pos)


@dataclass
class Field:
    """One field occurrence: number, wire type, and where its value lies.

    For LEN fields ``start:end`` is the payload; for numeric fields ``value``
    holds the number. ``raw_start`` is where the field's tag begins, so
    ``buf[raw_start:end]`` re-emits the field verbatim.
    """

    number: int
    wire_type: int
    raw_start: int
    start: int
    end: int
    value: int = 0


def iter_fields(buf, start: int, end: int):
    """Yield the fields of the message stored in ``buf[start:end]``."""
    pos = start
    while pos < end:
        raw = pos
        key, pos = read_varint(buf, pos, end)
        number, wt = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0 (corrupt data)", raw)
        if wt == VARINT:
            value, pos = read_varint(buf, pos, end)
            yield Field(number, wt, raw, pos, pos, value)
        elif wt == LEN:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise WireError(f"field {number} says {length} bytes but only {end - pos} remain", raw)
            yield Field(number, wt, raw, pos, pos + length)
            pos += length
        elif wt == FIXED32:
            if pos + 4 > end:
                raise WireError("truncated 32-bit field", raw)
            yield Field(number, wt, raw, pos, pos + 4, int.from_bytes(buf[pos:pos + 4], "little"))
            pos += 4
        elif wt == FIXED64:
            if pos + 8 > end:
                raise WireError("truncated 64-bit field", raw)
            yield Field(number, wt, raw, pos, pos + 8, int.from_bytes(buf[pos:pos + 8], "little"))
            pos += 8
        else:
            raise WireError(f"unsupported wire type {wt} for field {number}", raw)


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


@dataclass
class Blob:
    """A decoded BlobProto: the array and the shape the file declared."""

    data: np.ndarray
    declared_shape: tuple[int, ...]
    legacy_shape: bool


def decode_blob(buf, start: int, end: int) -> Blob:
    legacy = {}
    dims: list[int] = []
    chunks: list[np.ndarray] = []
    doubles: list[np.ndarray] = []
    raw_type, raw = None, None
    for f in iter_fields(buf, start, end):
        if f.number in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH) and f.wire_type == VARINT:
            legacy[f.number] = _signed64(f.value)
        elif f.number == BLOB_DATA:
            if f.wire_type == LEN:
                if (f.end - f.start) % 4:
                    raise WireError(f"packed float data of {f.end - f.start} bytes is not a multiple of 4", f.start)
                chunks.append(np.frombuffer(buf, dtype="<f4", count=(f.end - f.start) // 4, offset=f.start))
            elif f.wire_type == FIXED32:
                chunks.append(np.frombuffer(buf, dtype="<f4", count=1, offset=f.start))
        elif f.number == BLOB_DOUBLE_DATA:
            if f.wire_type == LEN:
                doubles.append(np.frombuffer(buf, dtype="<f8", count=(f.end - f.start) // 8, offset=f.start))
            elif f.wire_type == FIXED64:
                doubles.append(np.frombuffer(buf, dtype="<f8", count=1, offset=f.start))
        elif f.number == BLOB_RAW_TYPE and f.wire_type == VARINT:
            raw_type = f.value
        elif f.number == BLOB_RAW_DATA and f.wire_type == LEN:
            raw = (f.start, f.end)
        elif f.number == BLOB_SHAPE and f.wire_type == LEN:
            for d in iter_fields(buf, f.start, f.end):
                if d.number != SHAPE_DIM:
                    continue
                if d.wire_type == VARINT:
                    dims.append(_signed64(d.value))
                elif d.wire_type == LEN:  # packed dims
                    pos = d.start
                    while pos < d.end:
                        v, pos = read_varint(buf, pos, d.end)
                        dims.append(_signed64(v))
    if chunks:
        data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks)
    elif doubles:
        data = (doubles[0] if len(doubles) == 1 else np.concatenate(doubles)).astype(np.float32)
    elif raw is not None and raw_type is not None:
        dtype = RAW_DTYPES.get(raw_type)
        if dtype is None:
            raise WireError(f"raw_data of type {raw_type} is not a floating-point type", raw[0])
        size = np.dtype(dtype).itemsize
        if (raw[1] - raw[0]) % size:
            raise WireError(f"raw_data of {raw[1] - raw[0]} bytes is not a multiple of {size}", raw[0])
        data = np.frombuffer(buf, dtype=dtype, count=(raw[1] - raw[0]) // size,
                             offset=raw[0]).astype(np.float32)
    else:
        data = np.zeros(0, np.float32)
    if legacy:
        shape = tuple(legacy.get(k, 1) for k in (BLOB_NUM, BLOB_CHANNELS, BLOB_HEIGHT, BLOB_WIDTH))
    else:
        shape = tuple(dims)
    return Blob(data, shape, bool(legacy))


# ------------------------------------------------------------------ encoding
def encode_varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def encode_tag(number: int, wire_type: int) -> bytes:
    return encode_varint((number << 3) | wire_type)


def encode_len(number: int, payload: bytes) -> bytes:
    return encode_tag(number, LEN) + encode_varint(len(payload)) + payload


def encode_string(number: int, text: str) -> bytes:
    return encode_len(number, text.encode("utf-8"))


def encode_blob(array: np.ndarray) -> bytes:
    """BlobProto with a ``shape`` (new style) and packed float32 ``data``."""
    arr = np.ascontiguousarray(array, dtype="<f4")
    dims = b"".join(encode_varint(int(d)) for d in arr.shape)
    shape = encode_len(SHAPE_DIM, dims)
    return encode_len(BLOB_SHAPE, shape) + encode_len(BLOB_DATA, arr.tobytes())


@dataclass
class Record:
    """One layer record of a caffemodel (new or V1 format), scanned but not decoded."""

    v1: bool
    start: int
    end: int
    name: str
    type: str | int
    blobs: list[Blob] = field(default_factory=list)
    blob_field_spans: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class ScannedNet:
    name: str
    records: list[Record]
    other_fields: list[tuple[int, int]]  # raw spans of non-layer top-level fields, in order
    order: list[tuple[str, int]]         # ("record", i) / ("other", i), in file order


def scan_net(buf, file=None) -> ScannedNet:
    """Scan a binary NetParameter: layer records plus verbatim other fields."""
    try:
        return _scan_net(buf)
    except WireError as e:
        raise ModelError(f"corrupt or truncated caffemodel: {e}", file=file, offset=e.offset) from None
    except UnicodeDecodeError:
        raise ModelError("corrupt caffemodel: a layer name is not valid UTF-8", file=file) from None


def _scan_net(buf) -> ScannedNet:
    end = len(buf)
    name = ""
    records: list[Record] = []
    others: list[tuple[int, int]] = []
    order: list[tuple[str, int]] = []
    for f in iter_fields(buf, 0, end):
        if f.number in (NET_LAYER, NET_LAYERS_V1) and f.wire_type == LEN:
            records.append(_scan_record(buf, f, v1=f.number == NET_LAYERS_V1))
            order.append(("record", len(records) - 1))
        else:
            if f.number == NET_NAME and f.wire_type == LEN:
                name = bytes(buf[f.start:f.end]).decode("utf-8")
            others.append((f.raw_start, f.end))
            order.append(("other", len(others) - 1))
    return ScannedNet(name, records, others, order)


def _scan_record(buf, outer: Field, v1: bool) -> Record:
    name_no, type_no, blobs_no = (V1_NAME, V1_TYPE, V1_BLOBS) if v1 else (LAYER_NAME, LAYER_TYPE, LAYER_BLOBS)
    rec = Record(v1, outer.raw_start, outer.end, "", 0 if v1 else "")
    for f in iter_fields(buf, outer.start, outer.end):
        if f.number == name_no and f.wire_type == LEN:
            rec.name = bytes(buf[f.start:f.end]).decode("utf-8")
        elif f.number == type_no:
            rec.type = f.value if f.wire_type == VARINT else bytes(buf[f.start:f.end]).decode("utf-8")
        elif f.number == blobs_no and f.wire_type == LEN:
            rec.blobs.append(decode_blob(buf, f.start, f.end))
            rec.blob_field_spans.append((f.raw_start, f.end))
    return rec


def record_without(buf, rec: Record, drop: set[int]) -> bytes:
    """The record's payload with the given field numbers removed (others verbatim)."""
    # The record span includes its own tag and length; find the payload start again.
    pos = rec.start
    _, pos = read_varint(buf, pos, rec.end)
    _, pos = read_varint(buf, pos, rec.end)
    return b"".join(bytes(buf[f.raw_start:f.end]) for f in iter_fields(buf, pos, rec.end)
                    if f.number not in drop)

