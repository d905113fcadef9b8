"""Attention kernels that return the true log-sum-exp, chosen per device.

Ring attention merges partial results by their LSE; a kernel that returns a fake LSE (yunchang's CPU
path returns zeros) silently gives wrong output, so every kernel here returns the real one.
"""

from typing import Callable

import torch

# (q, k, v) each (B, H, S, d) -> (out (B, H, Sq, d), lse (B, H, Sq) fp32)
AttentionKernel = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def sdpa_cpu(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, False)[:2]
    return out, lse.float()


def sdpa_cuda(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if q.dtype in (torch.float16, torch.bfloat16):
        out, lse = torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, False)[:2]
    else:
        out, lse = torch.ops.aten._scaled_dot_product_efficient_attention(q, k, v, None, True)[:2]
    return out, lse[..., : q.shape[2]].float()


def math_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Materialises the scores: any device, small sizes only (the correctness yardstick)."""
    scores = (q.float() @ k.float().transpose(-1, -2)) * q.shape[-1] ** -0.5
    lse = torch.logsumexp(scores, dim=-1)
    return (torch.softmax(scores, dim=-1) @ v.float()).to(q.dtype), lse


def kernel_for(device: torch.device) -> AttentionKernel:
    return {"cpu": sdpa_cpu, "cuda": sdpa_cuda}.get(device.type, math_reference)
