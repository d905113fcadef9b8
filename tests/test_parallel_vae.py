"""Parallel tiled VAE decode over real gloo ranks equals diffusers' single-device tiled decode."""

import torch
from diffusers import AutoencoderKLCogVideoX
from distributed import run_ranks

TOLERANCE = 1e-5


def small_tiles_vae(root: str) -> AutoencoderKLCogVideoX:
    """The tiny VAE with 8x8-latent tiles, so a 14x20 latent makes a 3 x 4 grid of overlapping tiles."""
    vae = AutoencoderKLCogVideoX.from_pretrained(f"{root}/vae").eval()
    vae.enable_tiling(tile_sample_min_height=64, tile_sample_min_width=64)
    return vae


def check_decode(rank: int, root: str) -> None:
    from parallel.vae import parallel_decode, tile_origins

    vae = small_tiles_vae(root)
    z = torch.randn(1, 16, 2, 14, 20, generator=torch.Generator().manual_seed(5))  # even frames: odd batching
    assert len(tile_origins(vae, 14, 20)) == 3 * 4  # steps of 6 latent rows and columns
    got = parallel_decode(vae, z)
    if rank != 0:
        assert got is None
        return
    with torch.no_grad():
        expected = vae.tiled_decode(z).sample
    assert got.shape == expected.shape
    error = float((got - expected).norm() / expected.norm())
    assert error <= TOLERANCE, error


def test_parallel_decode_equals_the_tiled_decode(tiny_root):
    run_ranks(3, check_decode, str(tiny_root))


def test_small_latents_take_the_untiled_path(tiny_root):
    from parallel.vae import tile_origins

    vae = small_tiles_vae(str(tiny_root))
    assert tile_origins(vae, 8, 8) == [(0, 0)]
    vae.disable_tiling()
    assert tile_origins(vae, 20, 28) == [(0, 0)]
