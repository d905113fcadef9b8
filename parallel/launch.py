"""Join a torch.distributed group from torchrun's environment or from explicit coordinates (Ray replicas).

Backend by device kind: gloo on CPU, nccl on CUDA, hccl on Ascend NPU. Each rank drives one local device.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from parallel.mesh import DEFAULT_TIMEOUT

BACKENDS = {"cpu": "gloo", "cuda": "nccl", "npu": "hccl"}


def launched_by_torchrun() -> bool:
    return "TORCHELASTIC_RUN_ID" in os.environ or ("RANK" in os.environ and "WORLD_SIZE" in os.environ)


def local_device(kind: str, local_rank: int) -> torch.device:
    """The device this rank drives: accelerator number `local_rank`, or the CPU."""
    if kind == "cpu":
        return torch.device("cpu")
    device = torch.device(kind, local_rank)
    getattr(torch, kind).set_device(device)  # nccl/hccl pick the current device for their communicators
    return device


def init_group(kind: str, rank: int, world_size: int, init_method: str | None = None,
               timeout: timedelta = DEFAULT_TIMEOUT, store: dist.Store | None = None) -> None:
    """Initialise the default group from `init_method` (env:// by default) or an open `store`; a peer that
    dies or hangs makes collectives fail after `timeout`."""
    if kind not in BACKENDS:
        raise ValueError(f"device kind {kind!r}: expected one of {sorted(BACKENDS)}")
    if kind == "npu":
        import torch_npu  # noqa: F401  (registers hccl)
    where = {"store": store} if store is not None else {"init_method": init_method or "env://"}
    dist.init_process_group(BACKENDS[kind], rank=rank, world_size=world_size, timeout=timeout, **where)


def init_from_torchrun(kind: str, timeout: timedelta = DEFAULT_TIMEOUT) -> torch.device:
    """torchrun's env:// rendezvous; returns this rank's device."""
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    device = local_device(kind, int(os.environ.get("LOCAL_RANK", 0)))
    init_group(kind, rank, world, "env://", timeout)
    return device
