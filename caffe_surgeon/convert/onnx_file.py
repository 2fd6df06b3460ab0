"""The bytes of an ONNX model file, written without serializing the weights through protobuf.

Serializing a ModelProto copies every weight through protobuf's encoder, which made an
export several times slower than reading and writing the model itself. Protobuf merges
repeated occurrences of an embedded message field, so a file may be the serialized model
*without* initializers followed by a second ``graph`` field holding only them; each
initializer is a small serialized TensorProto header (name, dims, type) followed by its
``raw_data`` field, whose bytes are the float32 array itself (little-endian, as ONNX
requires). ``onnx.load`` and onnxruntime read the result as the full model.

Field numbers from onnx.proto (onnx/onnx, ``onnx/onnx.proto``): ModelProto.graph = 7,
GraphProto.initializer = 5, TensorProto.raw_data = 9.
"""
from __future__ import annotations

import sys

import numpy as np

MODEL_GRAPH = 7
GRAPH_INITIALIZER = 5
TENSOR_RAW_DATA = 9
LENGTH_DELIMITED = 2


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _field(number: int, payload_len: int) -> bytes:
    """Tag and length of a length-delimited field."""
    return _varint(number << 3 | LENGTH_DELIMITED) + _varint(payload_len)


def _raw(array: np.ndarray):
    a = np.ascontiguousarray(array)
    if sys.byteorder != "little" and a.dtype.byteorder in ("=", ">"):
        a = a.byteswap()
    return memoryview(a).cast("B")


def tensor_header(name: str, array: np.ndarray) -> bytes:
    """The serialized TensorProto of ``array`` without its data."""
    from onnx import TensorProto
    dtype = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}[array.dtype]
    t = TensorProto(name=name, data_type=dtype)
    t.dims.extend(int(d) for d in array.shape)
    return t.SerializeToString()


def model_bytes(skeleton, arrays: list[tuple[str, np.ndarray]]) -> bytes:
    """The file of ``skeleton`` (a ModelProto without initializers) plus ``arrays`` as its
    graph's initializers, in order."""
    chunks = [skeleton.SerializeToString()]
    tensors = []
    for name, array in arrays:
        head = tensor_header(name, array)
        data = _raw(array)
        body_len = len(head) + len(_field(TENSOR_RAW_DATA, data.nbytes)) + data.nbytes
        tensors.append((_field(GRAPH_INITIALIZER, body_len), head, _field(TENSOR_RAW_DATA, data.nbytes), data))
    graph_len = sum(len(a) + len(b) + len(c) + d.nbytes for a, b, c, d in tensors)
    chunks.append(_field(MODEL_GRAPH, graph_len))
    for parts in tensors:
        chunks.extend(parts)
    return b"".join(chunks)
