"""Data-parallel training through PyTorch's own tools: torchrun starts the processes, DDP averages the gradients.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in each process it starts; without them this is one process and
every function here is a no-op. Each rank trains on its share of the same global batch (every rank draws the
same windows from the same seeded generator and keeps its slice), so that n processes take the steps one
process would, and only rank 0 writes checkpoints, metrics and curves.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

AGENT_PID = "LLAMA_PE_TORCHRUN_PID"  # set by relaunch_under_torchrun: the pid torchrun runs as
PR_SET_PDEATHSIG = 1  # linux/prctl.h


@dataclass(frozen=True)
class Ranks:
    """Where this process stands among those of one run."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


ONE_PROCESS = Ranks()  # frozen: safe as a default argument


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def relaunch_under_torchrun(nproc: int, argv: list[str]) -> None:
    """Replace this process with torchrun running the same script nproc times on this machine (never returns)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", *argv]
    log.info("train.nproc=%d: %s", nproc, " ".join(command[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.environ[AGENT_PID] = str(os.getpid())  # exec keeps the pid: torchrun will run as this one
    # exec, not a child: a signal to this process (DVC, a kill of its process group) reaches torchrun directly,
    # and torchrun stops every rank when one of them fails.
    os.execv(sys.executable, command)


def init(device: torch.device) -> Ranks:
    """Join the process group torchrun set up (NCCL on CUDA, gloo on CPU); one process: nothing to join."""
    if not launched_by_torchrun():
        return ONE_PROCESS
    ranks = Ranks(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]))
    die_with_torchrun()
    if ranks.distributed and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    if not ranks.is_main:
        logging.getLogger("llama_pe").setLevel(logging.WARNING)  # one log, rank 0's; warnings and errors from all
    return ranks


def die_with_torchrun() -> None:
    """End this rank when torchrun ends, however it ends.

    torchrun starts each rank in a session of its own, so a SIGKILL of torchrun (or of the process group DVC runs
    a stage in) would leave the ranks running on, writing checkpoints for a run that was stopped. Linux can send
    a signal to a process whose parent dies; elsewhere ranks outlive a killed torchrun.
    """
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    agent = os.environ.get(AGENT_PID)
    if agent is not None and os.getppid() != int(agent):
        os._exit(1)  # torchrun died before the line above took effect


def device_for(device: torch.device, ranks: Ranks) -> torch.device:
    """One GPU per process on a machine: cuda:LOCAL_RANK; a CPU is shared."""
    if device.type == "cuda" and launched_by_torchrun():
        torch.cuda.set_device(ranks.local_rank)
        return torch.device("cuda", ranks.local_rank)
    return device


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def mean_over_ranks(value: float, ranks: Ranks, device: torch.device) -> float:
    """The mean of a float over the ranks (each rank's share of the global batch is the same size)."""
    if not ranks.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / ranks.world_size


def sum_over_ranks(values: list[float], ranks: Ranks, device: torch.device) -> list[float]:
    if not ranks.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def gather_to_main(obj: Any, ranks: Ranks) -> list[Any]:
    """Every rank's obj, in rank order (every rank gets the list; rank 0 is the one that writes it)."""
    if not ranks.distributed:
        return [obj]
    gathered: list[Any] = [None] * ranks.world_size
    dist.all_gather_object(gathered, obj)
    return gathered
