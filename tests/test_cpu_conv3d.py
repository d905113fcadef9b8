"""The VAE's CPU convolutions: oneDNN instead of PyTorch's reference conv3d kernel, same result."""

import torch

from echovideo.loading import load_vae


def conv_kernels(vae, latents) -> set[str]:
    """Names of the aten convolution kernels one decode runs."""
    with torch.no_grad(), torch.profiler.profile() as profile:
        vae.decode(latents)
    return {event.key for event in profile.key_averages() if "conv" in event.key}


def test_loaded_vae_decodes_with_onednn_like_the_stock_vae(tiny_pipe, tiny_root):
    stock = load_vae(tiny_root / "vae")
    latents = torch.randn(1, 16, 3, 6, 8, generator=torch.Generator().manual_seed(0))
    assert "aten::slow_conv3d_forward" in conv_kernels(stock, latents), "precondition: the stock path is slow"
    kernels = conv_kernels(tiny_pipe.vae, latents)
    assert "aten::slow_conv3d_forward" not in kernels and "aten::mkldnn_convolution" in kernels
    with torch.no_grad():
        ours, reference = tiny_pipe.vae.decode(latents).sample, stock.decode(latents).sample
    assert ours.shape == reference.shape
    assert ((ours - reference).norm() / reference.norm()).item() <= 1e-5
    assert tiny_pipe.vae.state_dict().keys() == stock.state_dict().keys()
