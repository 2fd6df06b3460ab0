"""Numba's cached kernels are dropped when any kernel source changes (it checks only each
function's own file, and the kernels inline helpers from other files)."""
from __future__ import annotations

from caffe_surgeon.engine.kernels import cache_stamp


def _fill(folder):
    for name in ("conv._row_tiles-84.py311.nbi", "conv._row_tiles-84.py311.1.nbc"):
        (folder / name).write_bytes(b"cached")


def test_a_changed_source_drops_the_cache_and_an_unchanged_one_keeps_it(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    assert cache_stamp.refresh(folder) is False  # fresh: stamped before Numba fills it
    assert (folder / cache_stamp.STAMP).read_text().strip() == cache_stamp.sources_digest()
    _fill(folder)
    assert cache_stamp.refresh(folder) is False
    assert len(list(folder.glob("*.nb?"))) == 2
    # an edited kernel source (here: another digest of the sources) drops every cached file
    monkeypatch.setattr(cache_stamp, "sources_digest", lambda: "0" * 64)
    assert cache_stamp.refresh(folder) is True
    assert not list(folder.glob("*.nb?"))
    assert (folder / cache_stamp.STAMP).read_text().strip() == "0" * 64
    _fill(folder)
    assert cache_stamp.refresh(folder) is False
    assert len(list(folder.glob("*.nb?"))) == 2


def test_the_digest_covers_every_kernel_source(tmp_path, monkeypatch):
    import shutil
    copy = tmp_path / "kernels"
    shutil.copytree(cache_stamp.HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(cache_stamp, "HERE", copy)
    before = cache_stamp.sources_digest()
    epilogue = copy / "epilogue.py"
    epilogue.write_text(epilogue.read_text() + "\n# an edit to an inlined helper's file\n")
    assert cache_stamp.sources_digest() != before


def test_the_stamp_sits_in_the_folder_numba_caches_the_kernels_in():
    from caffe_surgeon.engine.kernels import conv
    folder = cache_stamp.cache_folder()
    assert folder is not None and str(folder) == conv.ROW_TILES_K[0]._cache._cache_path
    assert (folder / cache_stamp.STAMP).read_text().strip() == cache_stamp.sources_digest()
