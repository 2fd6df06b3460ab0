"""Shared pytest setup.

``@pytest.mark.slow`` marks long oracle sweeps (giant cfgs, hundreds of MB of
weights). A plain ``pytest`` run skips them so the default suite stays fast on
two cores; ``pytest -m slow`` (or any other ``-m`` expression) or
``CAFFE_SURGEON_SLOW=1`` runs them all.

``CAFFE_SURGEON_SLOW_SHARD=K/N`` runs shard K (0-based) of N of the slow cases
besides the fast suite; ``CAFFE_SURGEON_SLOW_SHARD=auto`` (the default under
``CI=true``) picks K from the UTC date, so CI covers every slow case every N
days within its time budget. ``CAFFE_SURGEON_SLOW_SHARD=0`` turns it off.

``@pytest.mark.oracle(available=..., reason=...)`` (built by ``assets.needs``):
the test needs an oracle; without it the test fails under ``CI=true`` and is
skipped elsewhere (``assets.missing_oracle``).
"""
from __future__ import annotations

import datetime
import os
import sys
import zlib
from pathlib import Path

import pytest

# Tests import helpers as ``from assets import ...`` and the package from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))

from assets import in_ci, missing_oracle  # noqa: E402

#: shards of the slow cases under CI: about 18 minutes of sweeps on two cores / 6
SLOW_SHARDS = 6


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long oracle sweeps (skipped unless -m selects them)")
    config.addinivalue_line("markers", "oracle(available, reason): needs an oracle "
                            "(fails under CI=true without it, skips elsewhere)")


def slow_shard(setting: str | None, today: datetime.date | None = None) -> tuple[int, int] | None:
    """(K, N) from a ``CAFFE_SURGEON_SLOW_SHARD`` value, or None for no shard."""
    if setting is None:
        setting = "auto" if in_ci() else "0"
    setting = setting.strip().lower()
    if setting in ("", "0", "off", "no"):
        return None
    if setting == "auto":
        today = today or datetime.datetime.now(datetime.timezone.utc).date()
        return today.toordinal() % SLOW_SHARDS, SLOW_SHARDS
    k, sep, n = setting.partition("/")
    if not sep or not k.isdigit() or not n.isdigit() or not 0 <= int(k) < int(n):
        raise pytest.UsageError(f"CAFFE_SURGEON_SLOW_SHARD must be K/N with 0 <= K < N, "
                                f"'auto' or '0', got {setting!r}")
    return int(k), int(n)


def in_shard(nodeid: str, shard: tuple[int, int]) -> bool:
    """Whether a slow case belongs to ``shard``: a stable hash of its id, not its position."""
    k, n = shard
    return zlib.crc32(nodeid.encode()) % n == k


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr or os.environ.get("CAFFE_SURGEON_SLOW"):
        return
    shard = slow_shard(os.environ.get("CAFFE_SURGEON_SLOW_SHARD"))
    config._slow_shard = shard
    skip = pytest.mark.skip(reason="slow: run with -m slow, CAFFE_SURGEON_SLOW=1 or "
                                   "CAFFE_SURGEON_SLOW_SHARD=K/N")
    chosen = 0
    for item in items:
        if "slow" in item.keywords:
            if shard and in_shard(item.nodeid, shard):
                chosen += 1
            else:
                item.add_marker(skip)
    config._slow_chosen = chosen


def pytest_report_header(config):
    shard = slow_shard(os.environ.get("CAFFE_SURGEON_SLOW_SHARD"))
    if config.option.markexpr or os.environ.get("CAFFE_SURGEON_SLOW"):
        return "slow sweeps: as -m / CAFFE_SURGEON_SLOW select"
    if shard:
        return f"slow sweeps: shard {shard[0]}/{shard[1]} (CAFFE_SURGEON_SLOW_SHARD)"
    return "slow sweeps: off"


def pytest_terminal_summary(terminalreporter, config):
    shard = getattr(config, "_slow_shard", None)
    if shard:
        terminalreporter.write_line(f"slow sweeps: ran shard {shard[0]}/{shard[1]}, "
                                    f"{config._slow_chosen} slow cases")


def pytest_runtest_setup(item):
    for mark in item.iter_markers("oracle"):
        if not mark.kwargs.get("available", mark.args[0] if mark.args else False):
            missing_oracle(mark.kwargs.get("reason", "an oracle is missing"))


@pytest.fixture
def forced(monkeypatch):
    """Which GEMM the convolutions may use: ``forced(None)`` OpenBLAS only, ``forced()``
    whatever this machine allows (our kernels where they reproduce its OpenBLAS)."""
    from caffe_surgeon.engine.kernels import microkernel

    def use(blocking="auto"):
        monkeypatch.setattr(microkernel, "_state", {} if blocking == "auto" else {"blocking": blocking})
        return microkernel.blocking()
    return use
