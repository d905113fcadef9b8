"""Which fused attention kernel a CUDA device runs, chosen by measurement once per process and logged once.

diffusers' CogVideoX attention calls `F.scaled_dot_product_attention`, and torch's selector picks by a
fixed priority, not by speed: on an H100, cuDNN attention (~413 TFLOP/s at head_dim 64, published) and
FlashAttention-2 (~324) differ by a quarter of the DiT's time, and which one wins depends on the torch and
cuDNN builds. So the first forward on a device times each kernel that can run there at the model's head
size and takes the fastest (a tie within TIE goes to the earlier of `BACKENDS`). Both paths use the
choice: the single-device forward runs under `sdpa_backend` (torch's own kernel), and `parallel.kernels`
calls the same kernel's log-sum-exp variant for ring attention.

CPU and NPU have one kernel each: nothing is measured there.
"""

import logging
import time
from contextlib import nullcontext
from typing import Callable

import torch

BACKENDS = ("cudnn", "flash", "efficient")  # preference on a tie
TIE = 0.03
HALF = (torch.float16, torch.bfloat16)
MEASURE_SHAPE = (1, 48, 4096, 64)  # (batch, heads, tokens, head_dim): the released model's heads at a 4k slice
logger = logging.getLogger("echovideo")
_chosen: dict[tuple[str, torch.dtype], str] = {}

Measure = Callable[[str, torch.device, torch.dtype], float]


def candidates(dtype: torch.dtype, capability: tuple[int, int]) -> list[str]:
    """The kernels that can run this dtype on a GPU of this compute capability (flash and cuDNN attention:
    fp16/bf16 on sm80 and newer; the memory-efficient kernel: any)."""
    fused = dtype in HALF and capability >= (8, 0)
    return [name for name in BACKENDS if name == "efficient" or fused]


def pick(seconds: dict[str, float]) -> str:
    """The fastest measured kernel; one within TIE of it that comes earlier in BACKENDS wins the tie."""
    best = min(seconds.values())
    return next(name for name in BACKENDS if name in seconds and seconds[name] <= best * (1 + TIE))


def chosen_backend(device: torch.device, dtype: torch.dtype, measure: Measure | None = None,
                   capability: tuple[int, int] | None = None) -> str | None:
    """The kernel for this CUDA device and dtype (measured on first use, then remembered); None off CUDA.
    `measure` and `capability` default to the device's own (tests pass theirs)."""
    if device.type != "cuda":
        return None
    key = (str(device), dtype)
    if key not in _chosen:
        measure = measure or time_backend
        capability = capability or torch.cuda.get_device_capability(device)
        seconds = {}
        for name in candidates(dtype, capability):
            try:
                seconds[name] = measure(name, device, dtype)
            except RuntimeError as exc:  # not built into this torch, or refuses this shape
                logger.info("attention kernel %s unavailable on %s: %s", name, device, str(exc).splitlines()[0][:200])
        _chosen[key] = pick(seconds) if seconds else "efficient"
        shown = ", ".join(f"{name} {1e3 * s:.2f} ms" for name, s in seconds.items())
        logger.warning("attention on %s (%s): %s chosen by measurement (%s)", device,
                       str(dtype).removeprefix("torch."), _chosen[key], shown or "nothing measurable")
    return _chosen[key]


def remember_backend(device: torch.device, dtype: torch.dtype, name: str | None) -> None:
    """Take another process's choice (a parallel group runs rank 0's)."""
    if name is not None:
        _chosen[(str(device), dtype)] = name


def sdpa_backend(device: torch.device, dtype: torch.dtype):
    """A context in which `F.scaled_dot_product_attention` runs the chosen kernel (nothing changes off CUDA)."""
    name = chosen_backend(device, dtype)
    return nullcontext() if name is None else _only(name)


def _only(name: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel({"cudnn": SDPBackend.CUDNN_ATTENTION, "flash": SDPBackend.FLASH_ATTENTION,
                        "efficient": SDPBackend.EFFICIENT_ATTENTION}[name])


def time_backend(name: str, device: torch.device, dtype: torch.dtype, repeats: int = 5) -> float:
    """Median seconds of one attention call at MEASURE_SHAPE with only kernel `name` allowed."""
    q, k, v = (torch.randn(MEASURE_SHAPE, device=device, dtype=dtype) for _ in range(3))
    times = []
    with _only(name):
        for _ in range(repeats + 1):  # the first call pays for set-up
            torch.cuda.synchronize(device)
            started = time.perf_counter()
            torch.nn.functional.scaled_dot_product_attention(q, k, v)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - started)
    return sorted(times[1:])[len(times[1:]) // 2]
