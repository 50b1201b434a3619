"""torch.distributed for the ``relprop`` commands: one process per GPU or per CPU share, started by torchrun.

    torchrun --nproc-per-node 4 -m relprop explain images/ --model imagenet --out heat/
    torchrun --nnodes 2 --nproc-per-node 8 --rdzv-backend c10d --rdzv-endpoint host0:29400 \\
        --rdzv-id job1 -m relprop explain /shared/images --model imagenet --out /shared/heat

:func:`session` initialises the default process group when torchrun's environment variables
(``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) are present -- NCCL
when the command runs on CUDA (each process on ``cuda:LOCAL_RANK``), gloo on the CPU -- and
destroys it afterwards; without them it is a world of one and every helper is a no-op, so a
command is written once for both.  Work is split with :func:`shard` (strided: rank ``r`` of
``w`` takes items ``r, r + w, r + 2w, ...``; every item exactly once), results come back to
rank 0 with :func:`gather` or to every rank with :func:`all_gather`.  A session that ends
normally waits for every rank (a barrier) before it destroys the group.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

__all__ = [
    "World",
    "all_gather",
    "barrier",
    "broadcast",
    "end_worker",
    "from_environment",
    "gather",
    "session",
    "shard",
]

T = TypeVar("T")

#: how long a collective waits for the slowest rank (a rank that dies ends the job through torchrun)
TIMEOUT = timedelta(hours=2)
#: the variables torchrun sets for every process
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class World:
    """Where this process stands: ``rank`` of ``size`` processes, ``local_rank`` on its node, the
    backend (``"nccl"``, ``"gloo"``, or None for a single process) and the device it should use."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    backend: str | None = None
    device: str = "cpu"

    @property
    def distributed(self) -> bool:
        return self.backend is not None

    @property
    def main(self) -> bool:
        """True on rank 0, the process that reports and writes the shared files."""
        return self.rank == 0


def from_environment() -> bool:
    """True when torchrun's variables are set (the command runs as one of several processes)."""
    return all(k in os.environ for k in ENV)


def _device(requested: str | None, local_rank: int) -> str:
    import torch

    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        return f"cuda:{local_rank}"
    return requested


@contextmanager
def session(device: str | None = None) -> Iterator[World]:
    """The :class:`World` of this process; starts and ends the process group under torchrun.

    ``device``: ``"cpu"``, ``"cuda"`` (under torchrun: ``cuda:LOCAL_RANK``) or an explicit
    device; None: CUDA when available.  The backend is NCCL for CUDA devices, gloo otherwise.
    """
    import torch
    import torch.distributed as dist

    if not from_environment() or dist.is_initialized():
        rank = dist.get_rank() if dist.is_initialized() else 0
        size = dist.get_world_size() if dist.is_initialized() else 1
        backend = dist.get_backend() if dist.is_initialized() else None
        yield World(rank, size, int(os.environ.get("LOCAL_RANK", 0)), backend, _device(device, 0))
        return
    local = int(os.environ["LOCAL_RANK"])
    where = _device(device, local)
    cuda = where.startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(where))
    backend = "nccl" if cuda else "gloo"
    dist.init_process_group(backend, timeout=TIMEOUT, device_id=torch.device(where) if cuda else None)
    world = World(dist.get_rank(), dist.get_world_size(), local, backend, where)
    try:
        yield world
    except BaseException:
        # a rank that fails may leave the others inside a collective: tear gloo down so that they
        # fail fast; NCCL's teardown waits for its peers and could hang, so torchrun ends those
        if backend == "gloo":
            dist.destroy_process_group()
        raise
    # every rank leaves together: a rank that tears its group down while another still works
    # (rank 0 writing the shared files) can abort in gloo's teardown
    barrier(world)
    dist.destroy_process_group()


def end_worker(code: int) -> None:
    """End a torchrun worker process with ``code``, without the interpreter's teardown.

    After the session is over (every rank past the closing barrier, the process group
    destroyed), a rank's interpreter teardown could still abort in gloo's threads
    ("terminate called without an active exception", seen under heavy load), which made
    torchrun report a failure after all work was done and written.  The disk cache's
    pending entries and the output streams are flushed first.  Outside torchrun: nothing.
    """
    if not from_environment():
        return
    import logging
    import sys

    from relprop import diskcache

    diskcache.flush()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def shard(items: Sequence[T], world: World) -> list[T]:
    """This rank's share of ``items``: every ``world.size``-th item from ``world.rank`` on."""
    return list(items[world.rank :: world.size])


def barrier(world: World) -> None:
    """Wait until every rank is here."""
    import torch.distributed as dist

    if world.distributed:
        if world.backend == "nccl":
            dist.barrier(device_ids=[int(world.device.split(":")[1])])
        else:
            dist.barrier()


def broadcast(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank (any picklable object)."""
    import torch.distributed as dist

    if not world.distributed:
        return obj
    box = [obj if world.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj``, by rank, on rank 0 (None on the other ranks)."""
    import torch.distributed as dist

    if not world.distributed:
        return [obj]
    out: list[Any] | None = [None] * world.size if world.main else None
    dist.gather_object(obj, out, dst=0)
    return out


def all_gather(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, by rank, on every rank."""
    import torch.distributed as dist

    if not world.distributed:
        return [obj]
    out: list[Any] = [None] * world.size
    dist.all_gather_object(out, obj)
    return out
