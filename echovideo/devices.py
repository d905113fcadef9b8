"""Device and dtype resolution: CUDA, Ascend NPU or CPU, detected automatically, overridable."""

import importlib.util

import torch

from echovideo.errors import EchoVideoInputError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def npu_available() -> bool:
    """True when torch_npu is installed and sees a device (imported lazily: it patches torch)."""
    if importlib.util.find_spec("torch_npu") is None:
        return False
    import torch_npu  # noqa: F401

    return bool(torch.npu.is_available())


def resolve_device(name: str = "auto") -> torch.device:
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


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """`auto` is bf16 on accelerators (the released precision) and fp32 on CPU (bf16 matmuls are slow there)."""
    if name == "auto":
        return torch.float32 if device.type == "cpu" else torch.bfloat16
    if name not in DTYPES:
        raise EchoVideoInputError("--dtype", f"unknown dtype {name!r}", f"use auto or one of {sorted(DTYPES)}")
    return DTYPES[name]
