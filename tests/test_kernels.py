"""Every attention kernel present on this machine returns the same output and true LSE as the math reference."""

import importlib.util

import pytest
import torch

from echovideo.errors import EchoVideoInputError
from parallel.kernels import KERNELS, kernel_for, math_reference

REQUIRES = {"flash-attn": "flash_attn", "xfuser": "xfuser", "npu-fusion": "torch_npu"}


def device_for(kind: str) -> torch.device | None:
    if kind in ("cpu", "any"):
        return torch.device("cpu")
    if kind == "cuda" and torch.cuda.is_available():
        return torch.device("cuda")
    if kind == "npu" and importlib.util.find_spec("torch_npu") and torch.npu.is_available():
        return torch.device("npu")
    return None


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_kernel_matches_the_math_reference(name):
    kind, kernel = KERNELS[name]
    device = device_for(kind)
    if device is None or (name in REQUIRES and importlib.util.find_spec(REQUIRES[name]) is None):
        pytest.skip(f"{name} needs a {kind} device and {REQUIRES.get(name, 'torch')}")
    dtype = torch.float32 if device.type == "cpu" else torch.bfloat16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, n, 64, generator=g).to(device, dtype) for n in (37, 53, 53))
    out, lse = kernel(q, k, v)
    ref_out, ref_lse = math_reference(q.float(), k.float(), v.float())
    tolerance = 1e-5 if dtype == torch.float32 else 2e-2
    assert lse.dtype == torch.float32 and lse.shape == (2, 3, 37)
    assert torch.allclose(lse.cpu(), ref_lse.cpu(), atol=tolerance * 10)
    assert float((out.float() - ref_out).norm() / ref_out.norm()) <= tolerance


def test_kernel_choice_errors_name_the_flag():
    assert kernel_for(torch.device("cpu")) is KERNELS["sdpa-cpu"][1]
    with pytest.raises(EchoVideoInputError, match="--kernel.*unknown"):
        kernel_for(torch.device("cpu"), "fast")
    with pytest.raises(EchoVideoInputError, match="flash-attn runs on cuda"):
        kernel_for(torch.device("cpu"), "flash-attn")


def test_a_missing_optional_library_says_which_extra_to_install():
    if importlib.util.find_spec("flash_attn") is not None:
        pytest.skip("flash-attn is installed here")
    q = torch.zeros(1, 1, 4, 8)
    with pytest.raises(EchoVideoInputError, match=r"echovideo\[cuda\]"):
        KERNELS["flash-attn"][1](q, q, q)
