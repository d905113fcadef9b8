"""Run a function on N real processes joined in a gloo group (torch.multiprocessing, file store)."""

import tempfile
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _entry(rank: int, world: int, init: str, fn, args) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world, timeout=timedelta(seconds=120))
    try:
        fn(rank, *args)
    finally:
        dist.destroy_process_group()


def run_ranks(world: int, fn, *args) -> None:
    """Raises (with the rank's traceback) if any rank raises."""
    with tempfile.TemporaryDirectory() as folder:
        mp.spawn(_entry, args=(world, f"file://{folder}/store", fn, args), nprocs=world, join=True)
