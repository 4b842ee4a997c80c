"""Which process of a multi-process run this is, as torchrun tells it (RANK, WORLD_SIZE). The Trainer (through
accelerate) turns the environment into DDP by itself; tunelab only needs to know who writes: rank 0 stages and
commits the run, prints and measures, the other ranks train and stay silent."""

from __future__ import annotations

import os

from tunelab.errors import TunelabError


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main() -> bool:
    return rank() == 0


def wait_for_each_other() -> None:
    """Every process of a multi-process run waits here for the others (rank 0 for its commit), so that a run is on
    disk for all of them when `train` returns; nothing to wait for in a single process."""
    import torch.distributed

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def per_process(batch_size: int, what: str, processes: int | None = None) -> int:
    """A global batch split over the processes (default: this run's), so that N processes take the steps one
    process would."""
    processes = processes or world_size()
    if batch_size % processes:
        raise TunelabError(f"{what} {batch_size} does not split over {processes} processes: give a multiple of "
                           f"{processes}")
    return batch_size // processes
