"""The 3D RoPE table exactly as the released model ran it.

Written here, not taken from diffusers, because diffusers drifted: the released code pins diffusers 0.31,
whose `get_3d_rotary_pos_embed` places n rows of a crop [start, stop) at `start + (stop - start) * k / n`;
diffusers >= 0.32 uses `linspace(start, stop * (n - 1) / n, n)`, which is the same grid only when start = 0
(720x480). At 480x848 that moves rows by up to 0.47 of a patch and the final latents by ~1%. The per-axis
frequencies and the rotary application are diffusers' own (unchanged since 0.31).

RIFLEx (arXiv 2502.15894), for clips longer than the trained 49 frames: the temporal component whose
period is closest to the trained length (the "intrinsic" one, 1-based index k = 2 for CogVideoX-5B,
N_k = 20 latent frames) is lowered to 0.9 * 2*pi / L for a clip of L latent frames, so that it completes
less than one period over the clip; only when L > N_k, and only that one frequency.
"""

import math

import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed
from diffusers.pipelines.cogvideo.pipeline_cogvideox import (
    get_resize_crop_region_for_grid,
)

ROPE_THETA = 10000.0
RIFLEX_K, RIFLEX_N_K = 2, 20  # CogVideoX-5B's intrinsic temporal component (1-based) and its period, latent frames


def released_grid(start: float, stop: float, n: int) -> torch.Tensor:
    """n positions `start + (stop - start) * k / n`, k = 0..n-1, in float64 rounded once to float32 (as numpy's
    `linspace(start, stop, n, endpoint=False, dtype=float32)` that diffusers 0.31 called)."""
    k = torch.arange(n, dtype=torch.float64)
    return (start + (stop - start) * k / n).to(torch.float32)


def crop_region(rows: int, cols: int, base_rows: int, base_cols: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The patch grid's resize-crop region on the base (720x480) grid: ((top, left), (bottom, right))."""
    return get_resize_crop_region_for_grid((rows, cols), base_cols, base_rows)


def riflex_axis(dim: int, positions: torch.Tensor, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """diffusers' 1-D RoPE (cos, sin) with RIFLEx's lowered intrinsic frequency. By hand because diffusers'
    function takes no per-component frequency; the same dtypes and operations as it, so every other
    component is bitwise diffusers' (tested)."""
    freqs = 1.0 / (ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    freqs[RIFLEX_K - 1] = 0.9 * 2 * math.pi / frames
    freqs = torch.outer(positions, freqs)
    return (freqs.cos().repeat_interleave(2, dim=1, output_size=dim).float(),
            freqs.sin().repeat_interleave(2, dim=1, output_size=dim).float())


def rotary_table(
    head_dim: int, frames: int, rows: int, cols: int, base_rows: int, base_cols: int,
    device: torch.device | str = "cpu", riflex: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (frames*rows*cols, head_dim): head dims split t/4, h 3/8, w 3/8, tokens frame-major.
    `riflex`: lower the intrinsic temporal frequency when `frames` exceeds its period (module doc)."""
    (top, left), (bottom, right) = crop_region(rows, cols, base_rows, base_cols)
    axes = (
        (head_dim // 4, released_grid(0, frames, frames)),
        (head_dim // 8 * 3, released_grid(top, bottom, rows)),
        (head_dim // 8 * 3, released_grid(left, right, cols)),
    )
    (t_cos, t_sin), (h_cos, h_sin), (w_cos, w_sin) = (
        get_1d_rotary_pos_embed(dim, positions, theta=ROPE_THETA, use_real=True) for dim, positions in axes
    )
    if riflex and frames > RIFLEX_N_K:
        t_cos, t_sin = riflex_axis(axes[0][0], axes[0][1], frames)

    def on_grid(t: torch.Tensor, h: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        shape = (frames, rows, cols)
        parts = (t[:, None, None].expand(*shape, -1), h[None, :, None].expand(*shape, -1),
                 w[None, None, :].expand(*shape, -1))
        return torch.cat(parts, dim=-1).reshape(frames * rows * cols, -1).to(device)

    return on_grid(t_cos, h_cos, w_cos), on_grid(t_sin, h_sin, w_sin)
