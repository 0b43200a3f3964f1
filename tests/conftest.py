"""Shared test fixtures: where the real data lives, GPU skipping, hypothesis profiles."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

REPO = Path(__file__).resolve().parents[1]
# CI clones the repository with ../shared beside it; LOBSTREAM_DATA overrides.
DATA_DIR = Path(os.environ.get("LOBSTREAM_DATA", REPO.parent / "shared" / "data"))

settings.register_profile(
    "default", max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.register_profile(
    "thorough", max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The shared real-data folder; tests that need it skip with the reason if it is absent."""
    if not DATA_DIR.is_dir():
        pytest.skip(f"real data folder {DATA_DIR} not found (set LOBSTREAM_DATA)")
    return DATA_DIR


@pytest.fixture
def ipc_dir():
    """A fresh folder for ipc:// endpoints, removed after the test; short, since ipc:// paths
    are limited to ~100 bytes."""
    d = tempfile.mkdtemp(prefix="lob", dir="/tmp")
    yield d
    shutil.rmtree(d, ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    try:
        import torch

        has_cuda = torch.cuda.is_available()
    except ImportError:
        has_cuda = False
    if has_cuda:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
