"""Attention kernels that return the true log-sum-exp, chosen per device (vendor libraries imported lazily).

Ring attention merges partial results by their LSE; a kernel that returns a fake LSE (yunchang's CPU
path returns zeros) silently gives wrong output, so every kernel here returns the real one. All take
and return (B, H, S, d); LSE is (B, H, Sq) fp32.
"""

import importlib
from typing import Callable

import torch

from echovideo.attention_choice import chosen_backend
from echovideo.errors import EchoVideoInputError

AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _optional(module: str, extra: str):
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EchoVideoInputError("attention kernel", f"{module} is not importable ({exc})",
                                  f"pip install 'echovideo[{extra}]' on a machine with the device, or use --kernel auto")


def sdpa_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
    return out, lse.float()


def sdpa_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torch's FlashAttention-2 for fp16/bf16, its memory-efficient kernel otherwise."""
    if q.dtype in (torch.float16, torch.bfloat16):
        return flash_cuda(q, k, v)
    return efficient_cuda(q, k, v)


def flash_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False)[:2]
    return out, lse[..., : q.shape[2]].float()


def efficient_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., : q.shape[2]].float()


def cudnn_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cuDNN attention with its log-sum-exp (fp16/bf16, sm80+); some builds give it a trailing unit dim."""
    out, lse = torch.ops.aten._scaled_dot_product_cudnn_attention(q, k, v, None, True, 0.0, False, False)[:2]
    return out, lse.reshape(*q.shape[:2], -1)[..., : q.shape[2]].float()


def flash_attn_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """flash-attn 2 (fp16/bf16): its public function returns the softmax LSE with return_attn_probs."""
    flash_attn = _optional("flash_attn", "cuda")
    out, lse, _ = flash_attn.flash_attn_func(*(x.transpose(1, 2) for x in (q, k, v)), return_attn_probs=True)
    return out.transpose(1, 2), lse[..., : q.shape[2]].float()


def xfuser_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The flash kernel xDiT's long-context attention runs (yunchang, installed with xfuser)."""
    _optional("xfuser", "xfuser")
    attention = _optional("yunchang.kernels.attention", "xfuser")
    out, lse = attention.flash_attn_forward(*(x.transpose(1, 2) for x in (q, k, v)), softmax_scale=q.shape[-1] ** -0.5)
    return out.transpose(1, 2), lse[..., : q.shape[2]].float()


def fusion_attention_npu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Ascend fused attention returns softmax max and sum (8 copies in the last dim): LSE = max + log(sum)."""
    torch_npu = _optional("torch_npu", "npu")
    out, softmax_max, softmax_sum = torch_npu.npu_fusion_attention(
        q, k, v, q.shape[1], input_layout="BNSD", scale=q.shape[-1] ** -0.5, keep_prob=1.0)[:3]
    return out, (softmax_max[..., 0] + softmax_sum[..., 0].log()).float()


def math_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialises the scores: any device, small sizes only (the correctness yardstick)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype), lse


KERNELS: dict[str, tuple[str, AttentionKernel]] = {  # name -> (device type, kernel)
    "sdpa-cpu": ("cpu", sdpa_cpu),
    "sdpa-cuda": ("cuda", sdpa_cuda),
    "cudnn": ("cuda", cudnn_cuda),
    "flash": ("cuda", flash_cuda),
    "efficient": ("cuda", efficient_cuda),
    "flash-attn": ("cuda", flash_attn_cuda),
    "xfuser": ("cuda", xfuser_cuda),
    "npu-fusion": ("npu", fusion_attention_npu),
    "math": ("any", math_reference),
}
DEFAULT_FOR_DEVICE = {"cpu": "sdpa-cpu", "cuda": "sdpa-cuda", "npu": "npu-fusion"}


def kernel_for(device: torch.device, name: str = "auto", dtype: torch.dtype = torch.float32) -> AttentionKernel:
    """`auto` picks the device's default: on CUDA the kernel measured fastest for this dtype (the one the
    single-device forward runs, `echovideo.attention_choice`), in its log-sum-exp form; a named kernel must
    match the device."""
    if name == "auto":
        name = chosen_backend(device, dtype) or DEFAULT_FOR_DEVICE.get(device.type, "math")
    if name not in KERNELS:
        raise EchoVideoInputError("--kernel", f"unknown attention kernel {name!r}", f"use auto or one of {sorted(KERNELS)}")
    kind, kernel = KERNELS[name]
    if kind not in ("any", device.type):
        raise EchoVideoInputError("--kernel", f"{name} runs on {kind}, the model is on {device.type}",
                                  f"use --kernel auto or {DEFAULT_FOR_DEVICE.get(device.type, 'math')}")
    return kernel
