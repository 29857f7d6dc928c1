"""Several processes, one result: torch.distributed glue for sharded condensation and split evaluation.

Launched by ``torchrun`` (one process per GPU, or per CPU slot with gloo), every dm_core command notices the
environment torchrun sets (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``...) and joins the process group:
NCCL on CUDA, gloo on the CPU. A library user who initialises a process group themselves gets the same behaviour from
``condense_dm`` / ``make_set`` / ``evaluate_set``.

What is split: DM condenses whole class chunks per rank (every rank makes every random draw of the run, so a class's
draws do not depend on the rank it lands on, and the set is the one-process set); evaluation trains models
``i = rank, rank + world, ...``. Rank 0 gathers and writes; the others write nothing but their own checkpoints.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from .errors import DMError

_JOINED = False  # whether init_from_env joined a group (then leave_group leaves it)
TIMEOUT_ENV = "DM_DIST_TIMEOUT"  # seconds a collective (or the group's start) may wait for the other ranks


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def sharded(self) -> bool:
        return self.size > 1


def world() -> World:
    """This process's place in the initialised process group (rank 0 of 1 when there is none)."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def timeout() -> datetime.timedelta:
    return datetime.timedelta(seconds=float(os.environ.get(TIMEOUT_ENV, "600")))


def init_from_env(device: torch.device) -> World:
    """Join the process group torchrun describes (no-op in a single process or when already joined)."""
    if not launched_by_torchrun() or (dist.is_available() and dist.is_initialized()):
        return world()
    if not dist.is_available():
        raise DMError("this torch build has no torch.distributed: run a single process")
    backend = "nccl" if device.type == "cuda" else "gloo"
    global _JOINED
    try:
        dist.init_process_group(backend, timeout=timeout())
        _JOINED = True
    except Exception as exc:  # a rendezvous that never completes, a wrong address, a refused port
        raise DMError(f"could not join the process group ({type(exc).__name__}: "
                      f"{(str(exc).splitlines() or ['no detail'])[0][:160]}): check --rdzv-endpoint / MASTER_ADDR "
                      f"and that every node was started") from None
    return world()


def leave_group(graceful: bool) -> None:
    """Leave the process group ``init_from_env`` joined. ``graceful``: first wait for every rank, so no process
    exits while another still talks to it (gloo aborts a process whose peer vanished mid-exchange)."""
    global _JOINED
    if not _JOINED:
        return
    _JOINED = False
    if graceful:
        try:
            dist.barrier()
        except Exception:  # a peer already failed: it reported; leave anyway
            pass
    dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under torchrun each process takes the GPU of its local rank."""
    if device.type == "cuda" and device.index is None and "LOCAL_RANK" in os.environ:
        return torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def rank_checkpoint(path, w: World):
    """Each rank keeps its own checkpoint: ``X.ckpt`` becomes ``X.rank1-of-2.ckpt`` (unchanged in one process)."""
    if path is None or not w.sharded:
        return path
    path = Path(path)
    return path.with_name(f"{path.stem}.rank{w.rank}-of-{w.size}{path.suffix}")


def shard_blocks(num_blocks: int, w: World) -> range:
    """The contiguous run of ``num_blocks`` work blocks that rank ``w.rank`` takes (sizes differ by at most one)."""
    if w.size > num_blocks:
        raise DMError(f"{w.size} processes for {num_blocks} classes (or models): start at most {num_blocks} "
                      f"processes")
    base, extra = divmod(num_blocks, w.size)
    start = w.rank * base + min(w.rank, extra)
    return range(start, start + base + (1 if w.rank < extra else 0))


def all_sum(value: torch.Tensor) -> torch.Tensor:
    """Sum of ``value`` over the ranks (``value`` itself in a single process)."""
    if not world().sharded:
        return value
    total = value.detach().clone()
    _collective(dist.all_reduce, total)
    return total


def gather_rows(tensor: torch.Tensor, rows: list[range]) -> torch.Tensor:
    """``tensor`` with the rows ``rows[r]`` taken from rank r, on every rank (each rank owns its rows' values)."""
    w = world()
    if not w.sharded:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(w.size)]
    _collective(dist.all_gather, parts, tensor.detach().contiguous())
    merged = tensor.detach().clone()
    for r, owned in enumerate(rows):
        merged[owned.start:owned.stop] = parts[r][owned.start:owned.stop]
    return merged


def gather_objects(obj) -> list:
    """Every rank's ``obj`` in rank order, on every rank."""
    w = world()
    if not w.sharded:
        return [obj]
    out = [None] * w.size
    _collective(dist.all_gather_object, out, obj)
    return out


def _collective(op, *args) -> None:
    try:
        op(*args)
    except Exception as exc:  # another rank died or timed out: gloo / NCCL raise RuntimeError or DistBackendError
        raise DMError(f"a process of the group failed or stopped answering ({type(exc).__name__}); no result was "
                      f"written: rerun the same command (a condensation resumes from its per-rank "
                      f"checkpoints)") from None
