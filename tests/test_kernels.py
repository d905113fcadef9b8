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


def test_the_kernel_is_chosen_by_measurement_once_and_both_paths_run_it(caplog, monkeypatch):
    """The selection logic on CPU with a stand-in clock (the device run measures real kernels): the fastest
    wins, a tie within 3% goes to cuDNN then flash, a kernel that raises is left out, fp32 has only the
    efficient kernel, the choice is measured once per device and dtype and logged once, and the parallel
    path's `auto` is that kernel's log-sum-exp form."""
    import echovideo.attention_choice as choice

    monkeypatch.setattr(choice, "_chosen", {})
    assert choice.candidates(torch.bfloat16, (9, 0)) == ["cudnn", "flash", "efficient"]
    assert choice.candidates(torch.bfloat16, (7, 5)) == ["efficient"]  # no flash or cuDNN attention before sm80
    assert choice.candidates(torch.float32, (9, 0)) == ["efficient"]
    assert choice.pick({"cudnn": 1.02, "flash": 1.0, "efficient": 2.0}) == "cudnn"  # within 3%: the preference
    assert choice.pick({"cudnn": 1.2, "flash": 1.0, "efficient": 2.0}) == "flash"
    calls = []

    def measure(name, device, dtype):
        calls.append(name)
        if name == "cudnn":
            raise RuntimeError("cuDNN attention is not built into this torch")
        return {"flash": 0.9, "efficient": 1.4}[name]

    gpu = torch.device("cuda:0")
    with caplog.at_level("INFO", logger="echovideo"):
        assert choice.chosen_backend(gpu, torch.bfloat16, measure, (9, 0)) == "flash"
        assert choice.chosen_backend(gpu, torch.bfloat16, measure, (9, 0)) == "flash"
    assert calls == ["cudnn", "flash", "efficient"]  # measured once
    assert sum("chosen by measurement" in r.message for r in caplog.records) == 1
    assert "flash 900.00 ms" in caplog.text and "cudnn unavailable" in caplog.text
    assert choice.chosen_backend(torch.device("cpu"), torch.float32, measure) is None  # one kernel: not measured
    assert kernel_for(gpu, "auto", torch.bfloat16) is KERNELS["flash"][1]
    choice.remember_backend(gpu, torch.bfloat16, "cudnn")  # a parallel group takes rank 0's choice
    assert kernel_for(gpu, "auto", torch.bfloat16) is KERNELS["cudnn"][1]
