"""Several processes, on one machine or many, through ``torch.distributed`` as ``torchrun`` starts them.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` in each process; :func:`setup` joins
the process group (gloo on CPU, NCCL on GPU) and gives each process its device. With one process
every helper here is a no-op, so single-process code needs no special case. :func:`launch` starts
``torchrun`` for ``--nproc N`` on this machine.
"""

from __future__ import annotations

import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import InputError

__all__ = ["World", "world", "setup", "all_reduce_sum", "all_gather_objects", "launch"]


@dataclass(frozen=True)
class World:
    """This process's place among the processes of one run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and progress (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world() -> World:
    """The process's rank and the run's size, from ``torchrun``'s environment (one process without it)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers; start several processes with torchrun.") from None


def setup(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group when there are several processes; return the world and this process's device.

    On CUDA each process takes the GPU of its local rank and the group uses NCCL; on the CPU, gloo.
    """
    here = world()
    if not here.distributed:
        return here, device
    if device.type == "cuda":
        device = torch.device("cuda", here.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return here, device


def _active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all processes (in place; unchanged with one process)."""
    if _active():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's ``value``, in rank order (``[value]`` with one process)."""
    if not _active():
        return [value]
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def launch(nproc: int, argv: list[str]) -> int:
    """Run ``python -m flowgmm_cli ARGV`` in ``nproc`` processes on this machine through torchrun.

    Returns the exit code: 0; 2 when a process found bad input (it has said which); 1 when a
    process failed otherwise (torchrun then stops the others and has named the failed rank on stderr); or 128 + N after signal N; Ctrl-C (SIGINT), which torchrun
    passes on to the processes, raises ``KeyboardInterrupt`` here too.
    """
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    args = get_args_parser().parse_args(
        ["--standalone", f"--nproc-per-node={nproc}", "--max-restarts=0", "--monitor-interval=0.5", "-m", "flowgmm_cli", *argv]
    )
    try:
        run(args)
    except ChildFailedError as failure:
        rank, record = failure.get_first_failure()
        if record.exitcode == 2:  # bad input: the process has said which, in one sentence
            return 2
        print(f"Error: process {rank} of {nproc} failed (exit code {record.exitcode}); the others were stopped and no output was written.", file=sys.stderr)
        return 1
    except SignalException as stop:  # torchrun has passed the signal on to the processes and stopped them
        if stop.sigval == signal.SIGINT:
            raise KeyboardInterrupt from None
        print(f"Error: stopped by {stop.sigval.name}; the processes were stopped and no output was written.", file=sys.stderr)
        return 128 + int(stop.sigval)
    return 0
