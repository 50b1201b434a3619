"""Shared test configuration."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "relprop",
    deadline=None,
    max_examples=int(os.environ.get("RELPROP_HYPOTHESIS_EXAMPLES", "25")),
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.load_profile("relprop")

#: the reference fixtures of the absLRP authors' code (present in CI, absent in a user's clone)
SHARED = Path(__file__).resolve().parents[1].parent / "shared"


@pytest.fixture(autouse=True, scope="session")
def _disk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """The tests' traces go to a disk cache of their own (subprocesses inherit it), never
    to the user's ``~/.cache/relprop``; tests of the cache set their own folder."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELPROP_CACHE_DIR", str(tmp_path_factory.mktemp("relprop-cache")))
        yield


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small models: on a shared 2-core machine
    threads competing for the cores make them 2-3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
