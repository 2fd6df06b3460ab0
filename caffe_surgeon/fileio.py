"""Output files appear whole or not at all."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .errors import ModelError


def atomic_write(path, data: bytes | str) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and rename.

    A crash or error midway leaves no partial file behind.
    """
    path = Path(path)
    if isinstance(data, str):  # surrogates: bytes read as not UTF-8, written back as they were
        data = data.encode("utf-8", errors="surrogateescape")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ModelError(f"output folder '{folder}' does not exist", file=path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise ModelError(f"cannot write into folder '{folder}': {e.strerror}", file=path) from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):
            raise ModelError(f"cannot write the file: {e.strerror}", file=path) from None
        raise


def make_folder(path) -> Path:
    """``mkdir -p path``, an OS error (a file in the way, no permission) as a one-line error."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ModelError(f"cannot create the folder: {e.strerror or e}", file=path) from None
    return path


def read_bytes(path, what: str) -> bytes:
    """Read a whole input file, turning OS errors into a ModelError naming the file."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise ModelError(f"{what} not found", file=path) from None
    except IsADirectoryError:
        raise ModelError(f"{what} is a directory, not a file", file=path) from None
    except PermissionError:
        raise ModelError(f"{what} is not readable (permission denied)", file=path) from None
