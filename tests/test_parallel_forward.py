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
# Every resolution of the spec (480x640, 480x848, 480x480, 848x480, 640x480) at one latent frame: the
# spatial grids (e.g. 30 x 53 patches) that xDiT refuses or resizes, at one layout for each P = 2, 3, 4, 6, 8.
SPEC_SHAPES = [(1, h // 8, w // 8) for h, w in ((480, 640), (480, 848), (480, 480), (848, 480), (640, 480))]
SPEC_LAYOUTS = {2: (1, 1, 2), 3: (1, 3, 1), 4: (1, 2, 2), 6: (1, 6, 1), 8: (1, 4, 2)}
TOLERANCE = 1e-5


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def forward_errors(rank: int, layouts, kernel=None, shapes=SHAPES) -> list[tuple]:
    """Errors on rank 0 (every rank ends with the same gathered output; the reference runs once)."""
    from parallel import ParallelConfig, ParallelMesh, SequenceParallelDiT

    errors = []
    for c, u, r in layouts:
        reference_model, model = tiny_model(), tiny_model()
        mesh = ParallelMesh.create(ParallelConfig(ulysses=u, ring=r, cfg=c), model.config.num_attention_heads)
        engine = SequenceParallelDiT(model, mesh, kernel=kernel)
        for frames, height, width in shapes:
            latents, t, text, arcface, vit = dit_inputs(model, frames=frames, height=height, width=width)
            with torch.no_grad():
                fused = model.fuse_identity_text(text, arcface, vit)
                rotary = model.rotary_embedding(frames, height, width)
            got = engine(latents, t, fused, rotary)
            if rank == 0:
                with torch.no_grad():
                    expected = reference_model(latents, t, fused_text=fused, image_rotary_emb=rotary)
                errors.append(((c, u, r), (frames, height, width), relative_error(got, expected)))
    return errors


def check_layouts(rank: int, layouts, spec_layout) -> None:
    errors = forward_errors(rank, layouts) + forward_errors(rank, [spec_layout], shapes=SPEC_SHAPES)
    bad = [e for e in errors if not e[2] <= TOLERANCE]
    assert not bad, f"layouts over {TOLERANCE}: {bad}"
    assert len(errors) == (len(layouts) * len(SHAPES) + len(SPEC_SHAPES) if rank == 0 else 0)


@pytest.mark.parametrize("world", sorted(SPEC_LAYOUTS))
def test_every_layout_and_resolution_matches_the_single_process_forward(world):
    run_ranks(world, check_layouts, LAYOUTS.get(world, []), SPEC_LAYOUTS[world])


def zero_lse_kernel(q, k, v):
    """yunchang 0.6.4's CPU bug: right partial outputs, LSE of zeros."""
    from parallel.kernels import sdpa_cpu

    out, lse = sdpa_cpu(q, k, v)
    return out, torch.zeros_like(lse)


def check_zero_lse_is_caught(rank: int) -> None:
    errors = forward_errors(rank, [(1, 1, 2)], kernel=zero_lse_kernel)
    assert len(errors) == (len(SHAPES) if rank == 0 else 0)
    assert all(e[2] > 100 * TOLERANCE for e in errors), errors


def test_a_zero_lse_merge_fails_the_exactness_check():
    run_ranks(2, check_zero_lse_is_caught)


def check_fused_qkv(rank: int) -> None:
    """Fused Q/K/V under the USP processor, fused before and after the engine is built, with the separate
    Q/K/V weights zeroed so that only the fused projection can produce the reference output."""
    from parallel import ParallelConfig, ParallelMesh, SequenceParallelDiT

    reference_model = tiny_model()
    for fuse_first in (True, False):
        model = tiny_model()
        mesh = ParallelMesh.create(ParallelConfig(ulysses=2), model.config.num_attention_heads)
        if fuse_first:
            model.fuse_qkv_projections()
        engine = SequenceParallelDiT(model, mesh)
        if not fuse_first:
            model.fuse_qkv_projections()
        with torch.no_grad():
            for block in model.transformer_blocks:
                for projection in (block.attn1.to_q, block.attn1.to_k, block.attn1.to_v):
                    projection.weight.zero_()
        latents, t, text, arcface, vit = dit_inputs(model, frames=3, height=10, width=14)
        with torch.no_grad():
            fused = reference_model.fuse_identity_text(text, arcface, vit)
            rotary = model.rotary_embedding(3, 10, 14)
            expected = reference_model(latents, t, fused_text=fused, image_rotary_emb=rotary)
        assert relative_error(engine(latents, t, fused, rotary), expected) <= TOLERANCE, fuse_first


def test_fused_qkv_projections_match_the_single_process_forward():
    run_ranks(2, check_fused_qkv)


def check_single_branch_and_grid_change(rank: int) -> None:
    """CFG parallel given one branch (guidance <= 1: batch 1) runs it on both CFG groups, exactly; and a
    RoPE table rewritten in place for another grid of the same token count (the memory a freed table's
    successor reuses) is re-sliced, not served from the previous video's slices."""
    from parallel import ParallelConfig, ParallelMesh, SequenceParallelDiT

    reference_model, model = tiny_model(), tiny_model()
    mesh = ParallelMesh.create(ParallelConfig(ulysses=2, cfg=2), model.config.num_attention_heads)
    engine = SequenceParallelDiT(model, mesh)
    table = None
    for frames, height, width in ((3, 8, 12), (3, 12, 8)):  # 72 tokens each, transposed grids
        latents, t, text, arcface, vit = dit_inputs(model, batch=1, frames=frames, height=height, width=width)
        with torch.no_grad():
            fused = model.fuse_identity_text(text, arcface, vit)
            rotary = model.rotary_embedding(frames, height, width)
            expected = reference_model(latents, t, fused_text=fused, image_rotary_emb=rotary)
        if table is None:
            table = rotary
        else:  # the same tensors, now holding the new grid's positions
            for old, new in zip(table, rotary):
                old.copy_(new)
        got = engine(latents, t, fused, table)
        assert got.shape == expected.shape
        assert relative_error(got, expected) <= TOLERANCE, (rank, (frames, height, width))


def test_cfg_parallel_without_cfg_and_a_new_grid_in_reused_memory_match_the_single_process():
    run_ranks(4, check_single_branch_and_grid_change)
