"""Darknet ``.weights`` files: header, then raw little-endian float32, layers in cfg order.

Layout (pjreddie and AlexeyAB ``src/parser.c``, ``load_weights_upto`` /
``save_weights_upto``): int32 major, minor, revision; then ``seen`` as uint64
when major*10+minor >= 2 and both are < 1000, else as uint32. Files with
major or minor > 1000 store every connected matrix transposed (in x out).
There are no per-layer markers, so the cfg alone decides where each array
starts. Darknet only warns when the length is wrong; a wrong length almost
always means the cfg and the weights belong to different models (a pruned cfg
with the original weights, a missed ``filters=`` edit), so here it is an error
that names the layer where the file ran out or how much is left over.

The whole file is read once with ``np.fromfile`` and every array is a view into
that buffer (no per-value Python objects); arrays are writable.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ModelError

FLOAT = np.dtype("<f4")
#: header written for new files, as both darknets do: version 0.2.0, 64-bit seen.
DEFAULT_VERSION = (0, 2, 0)


@dataclass(frozen=True)
class Header:
    """The file header, kept as raw bytes so a rewrite reproduces it exactly."""

    major: int
    minor: int
    revision: int
    seen: int
    raw: bytes

    @property
    def transpose(self) -> bool:
        """Connected weights are stored transposed (darknet: major or minor > 1000)."""
        return self.major > 1000 or self.minor > 1000

    @property
    def size(self) -> int:
        return len(self.raw)

    def with_seen(self, seen: int) -> "Header":
        """This header with another ``seen`` (the images trained on), same version and width."""
        wide = self.size == 20
        if seen < 0 or seen >= (1 << (64 if wide else 32)):
            raise ModelError(f"seen={seen} does not fit the {8 if wide else 4}-byte counter of "
                             f"a version {self.major}.{self.minor}.{self.revision} header")
        raw = self.raw[:12] + struct.pack("<Q" if wide else "<I", seen)
        return Header(self.major, self.minor, self.revision, seen, raw)


def default_header(seen: int = 0) -> Header:
    raw = struct.pack("<3iQ", *DEFAULT_VERSION, seen)
    return Header(*DEFAULT_VERSION, seen, raw)


def parse_header(buf: np.ndarray, file=None) -> Header:
    """Decode the header at the start of ``buf`` (uint8 array)."""
    if len(buf) < 16:
        raise ModelError(f"weights file is {len(buf)} bytes long, shorter than the 16-byte "
                         "minimum header (major, minor, revision, seen)", file=file)
    major, minor, revision = (int(v) for v in buf[:12].view("<i4"))
    wide = major * 10 + minor >= 2 and major < 1000 and minor < 1000
    size = 20 if wide else 16
    if len(buf) < size:
        raise ModelError(f"weights file is {len(buf)} bytes long, shorter than its "
                         f"{size}-byte header (version {major}.{minor}.{revision})", file=file)
    seen = int(buf[12:size].view("<u8" if wide else "<u4")[0])
    return Header(major, minor, revision, seen, buf[:size].tobytes())


@dataclass(frozen=True)
class ArraySpec:
    """One stored array: its IR name and shape, and whether transposed files flip it."""

    name: str
    shape: tuple[int, ...]
    transposable: bool = False

    @property
    def count(self) -> int:
        n = 1
        for d in self.shape:
            n *= int(d)
        return n


@dataclass(frozen=True)
class LayerLayout:
    """What one cfg layer stores, in file order (empty for route, maxpool, ...)."""

    index: int
    section: str
    arrays: tuple[ArraySpec, ...]

    @property
    def label(self) -> str:
        return f"layer {self.index} [{self.section}]"


def total_floats(layouts) -> int:
    return sum(a.count for lay in layouts for a in lay.arrays)


def read_weights(path, layouts: list[LayerLayout]) -> tuple[Header, list[dict[str, np.ndarray]]]:
    """Read ``path`` and split it into per-layer arrays following ``layouts``.

    Returns:
        (header, one ordered name -> float32 array dict per layout).
    Raises:
        ModelError if the file is shorter or longer than the cfg implies.
    """
    file = str(path)
    buf = _read_uint8(path)
    header = parse_header(buf, file)
    body = buf[header.size:]
    nfloats, stray = divmod(len(body), 4)
    floats = body[: nfloats * 4].view(FLOAT)
    need = total_floats(layouts)
    held = f"{nfloats} floats" + (f" and {stray} stray bytes" if stray else "")
    out: list[dict[str, np.ndarray]] = []
    pos = 0
    for lay in layouts:
        arrays: dict[str, np.ndarray] = {}
        for spec in lay.arrays:
            n = spec.count
            if pos + n > nfloats:
                raise ModelError(
                    f"weights file ends inside {lay.label}, array '{spec.name}' {spec.shape}: "
                    f"the cfg needs {need} floats after the {header.size}-byte header, the file "
                    f"holds {held}; {nfloats - pos} floats were left for '{spec.name}', "
                    f"which needs {n}", file=file, offset=header.size + 4 * pos,
                    layer=f"{lay.section}_{lay.index}")
            flat = floats[pos:pos + n]
            if spec.transposable and header.transpose and len(spec.shape) == 2:
                arr = np.ascontiguousarray(flat.reshape(spec.shape[::-1]).T)
            else:
                arr = flat.reshape(spec.shape)
            arrays[spec.name] = arr
            pos += n
        out.append(arrays)
    if pos != nfloats or stray:
        extra = nfloats - pos
        raise ModelError(
            f"weights file has {extra} floats ({4 * extra + stray} bytes) left over after the "
            f"last layer: the cfg needs {need} floats after the {header.size}-byte header, "
            f"the file holds {held}", file=file, offset=header.size + 4 * pos)
    return header, out


def encode_weights(header: Header, layouts: list[LayerLayout],
                   weights: list[dict[str, np.ndarray]], names: list[str]) -> bytes:
    """The bytes of a weights file; checks every array against its layout first.

    ``names`` are the IR layer names, used in error messages.
    """
    out = np.empty(total_floats(layouts), dtype=FLOAT)
    pos = 0
    for lay, arrays, lname in zip(layouts, weights, names):
        expected = [a.name for a in lay.arrays]
        if list(arrays) != expected:
            raise ModelError(f"{lay.label} holds weight arrays {list(arrays)}, but its cfg "
                             f"section needs {expected} in that order", layer=lname)
        for spec in lay.arrays:
            arr = np.asarray(arrays[spec.name])
            if tuple(arr.shape) != tuple(spec.shape):
                raise ModelError(f"weight array '{spec.name}' has shape {tuple(arr.shape)}, "
                                 f"but the cfg needs {tuple(spec.shape)}", layer=lname)
            if spec.transposable and header.transpose and arr.ndim == 2:
                arr = arr.T
            out[pos:pos + spec.count] = arr.reshape(-1)
            pos += spec.count
    return header.raw + out.tobytes()


def _read_uint8(path) -> np.ndarray:
    """Whole file as a writable uint8 array, OS errors turned into ModelError."""
    p = Path(path)
    try:
        return np.fromfile(p, dtype=np.uint8)
    except FileNotFoundError:
        raise ModelError("weights file not found", file=p) from None
    except IsADirectoryError:
        raise ModelError("weights file is a directory, not a file", file=p) from None
    except PermissionError:
        raise ModelError("weights file is not readable (permission denied)", file=p) from None
