"""Exactness: one DiT forward under every (cfg, ulysses, ring) layout equals the single-process forward.

Real processes, real gloo collectives; fp32; token counts that do and do not divide the degree.
"""

import pytest
import torch

from distributed import run_ranks
from test_transformer import dit_inputs, tiny_model

# (cfg, ulysses, ring) by world size.
LAYOUTS = {
    2: [(1, 2, 1), (1, 1, 2), (2, 1, 1)],
    3: [(1, 3, 1), (1, 1, 3)],
    4: [(1, 2, 2), (2, 2, 1), (2, 1, 2), (1, 4, 1), (1, 1, 4)],
    8: [(2, 2, 2)],
}
# latent (frames, height, width): 3*4*6 = 72 tokens divides 2, 3, 4, 8; 3*5*7 = 105 and 2*4*5 = 40 do not all.
SHAPES = [(3, 8, 12), (3, 10, 14), (2, 8, 10)]
TOLERANCE = 1e-5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def forward_errors(rank: int, layouts, kernel=None) -> list[tuple]:
    from parallel import ParallelConfig, ParallelMesh, SequenceParallelDiT

    errors = []
    for c, u, r in layouts:
        reference_model, model = tiny_model(), tiny_model()
        mesh = ParallelMesh.create(ParallelConfig(ulysses=u, ring=r, cfg=c), model.config.num_attention_heads)
        engine = SequenceParallelDiT(model, mesh, kernel=kernel)
        for frames, height, width in SHAPES:
            latents, t, text, arcface, vit = dit_inputs(model, frames=frames, height=height, width=width)
            with torch.no_grad():
                fused = model.fuse_identity_text(text, arcface, vit)
                rotary = model.rotary_embedding(frames, height, width)
                expected = reference_model(latents, t, fused_text=fused, image_rotary_emb=rotary)
            got = engine(latents, t, fused, rotary)
            errors.append(((c, u, r), (frames, height, width), relative_error(got, expected)))
    return errors


def check_layouts(rank: int, layouts) -> None:
    bad = [e for e in forward_errors(rank, layouts) if not e[2] <= TOLERANCE]
    assert not bad, f"rank {rank}: layouts over {TOLERANCE}: {bad}"


@pytest.mark.parametrize("world", sorted(LAYOUTS))
def test_every_layout_matches_the_single_process_forward(world):
    run_ranks(world, check_layouts, LAYOUTS[world])


def zero_lse_kernel(q, k, v):
    """yunchang 0.6.4's CPU bug: right partial outputs, LSE of zeros."""
    from parallel.kernels import sdpa_cpu

    out, lse = sdpa_cpu(q, k, v)
    return out, torch.zeros_like(lse)


def check_zero_lse_is_caught(rank: int) -> None:
    errors = forward_errors(rank, [(1, 1, 2)], kernel=zero_lse_kernel)
    assert all(e[2] > 100 * TOLERANCE for e in errors), errors


def test_a_zero_lse_merge_fails_the_exactness_check():
    run_ranks(2, check_zero_lse_is_caught)
