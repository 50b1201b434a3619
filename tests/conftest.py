"""Shared test configuration."""

from __future__ import annotations

import gc
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
def _disk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The tests' traces go to a disk cache of their own (subprocesses inherit it), never
    to the user's ``~/.cache/relprop``; tests of the cache set their own folder."""
    folder = tmp_path_factory.mktemp("relprop-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RELPROP_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _seed(_disk_cache: Path) -> Iterator[None]:
    torch.manual_seed(0)
    yield
    _drop_pending_writes(_disk_cache)


def _drop_pending_writes(folder: Path) -> None:
    """Forget the programs this process would still write into ``folder`` when it exits.

    relprop puts the disk-cache write of a trace off until the interpreter exits
    (``diskcache.store(..., wait=False)``), holding the program until then.  Nothing reads them
    here: this process never reads back what it has pending, the tests' subprocesses cannot
    see it, and nothing reads the session's folder after the session.  Kept, the hundreds of
    programs the suite traces in this process would be scanned by every garbage collection
    of the tests after them, then serialized after the last test (seconds per test file).
    A test that wants them on disk calls ``diskcache.flush()`` itself; writes into other
    folders, and the writes of the tests' subprocesses, are left as they are."""
    from relprop import diskcache

    diskcache.discard(folder)


@pytest.fixture
def frozen_gc() -> Iterator[None]:
    """For a benchmark run in this process: the benchmarks collect garbage before each memory
    reading, and each collection would scan again every object of the test modules and tests
    before (most of a second each, late in the suite).  Those are frozen out of the collector
    (``gc.freeze``) for the test; what the test creates is collected as usual."""
    gc.collect()
    gc.freeze()
    yield
    gc.unfreeze()


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of small models: on a shared 2-core machine
    threads competing for the cores make them 2-3x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
