"""Device and dtype resolution: CUDA, Ascend NPU or CPU, detected automatically, overridable."""

from __future__ import annotations

import importlib.util
from typing import TYPE_CHECKING

from echovideo.errors import EchoVideoInputError

if TYPE_CHECKING:
    import torch

# Names, not torch objects: a job's ids and `plan` resolve a dtype without importing torch.
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}


def npu_available() -> bool:
    """True when torch_npu is installed and sees a device (imported lazily: it patches torch)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch
    import torch_npu  # noqa: F401

    return bool(torch.npu.is_available())


def resolve_device(name: str = "auto") -> torch.device:
    import torch

    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("npu") if npu_available() else torch.device("cpu")
    kind = name.split(":")[0]
    if kind not in ("cpu", "cuda", "npu"):
        raise EchoVideoInputError("--device", f"unknown device {name!r}", "use auto, cpu, cuda[:N] or npu[:N]")
    if kind == "cuda" and not torch.cuda.is_available():
        raise EchoVideoInputError("--device", "CUDA is not available here", "use --device auto or cpu")
    if kind == "npu" and not npu_available():
        raise EchoVideoInputError("--device", "no Ascend NPU (torch_npu) is available here",
                                  "pip install 'echovideo[npu]' on an Ascend host, or use --device auto")
    return torch.device(name)


def dtype_name(name: str, device_type: str) -> str:
    """The torch dtype's name that `name` means on a device of `device_type` ("cpu", "cuda", "npu"): `auto` is
    bf16 on accelerators (the released precision) and fp32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        return "float32" if device_type == "cpu" else "bfloat16"
    if name not in DTYPES:
        raise EchoVideoInputError("--dtype", f"unknown dtype {name!r}", f"use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    import torch

    return getattr(torch, dtype_name(name, device.type))
