"""Shared pytest setup.

``@pytest.mark.slow`` marks long oracle sweeps (giant cfgs, hundreds of MB of
weights). A plain ``pytest`` run skips them so the default suite stays fast on
two cores; ``pytest -m slow`` (or any other ``-m`` expression) or
``CAFFE_SURGEON_SLOW=1`` runs them.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

# Tests import helpers as ``from assets import ...`` and the package from the repo root.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: long oracle sweeps (skipped unless -m selects them)")


def pytest_collection_modifyitems(config, items):
    if config.option.markexpr or os.environ.get("CAFFE_SURGEON_SLOW"):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or CAFFE_SURGEON_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
