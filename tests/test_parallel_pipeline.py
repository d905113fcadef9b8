"""A full tiny pipeline (CFG, dynamic CFG, stochastic DPM steps) under parallel layouts equals one process,
also with TeaCache skipping steps (the same ones on every rank) and with RIFLEx at 97 frames, and its
denoising loop reads no device scalar (no host-device synchronisation per step)."""

from dataclasses import replace

import torch
import torch.distributed as dist
from distributed import run_ranks
from test_pipeline import device_scalar_reads

from echovideo.sampling import GenerationOptions
from echovideo.speedups.step_cache import IDENTITY

OPTS = GenerationOptions(height=32, width=48, frames=9, steps=3, guidance=6.0, seed=11)
CACHED = replace(OPTS, steps=8, cache=1.0)  # with IDENTITY: computed, skipped, computed, ... (~0.9 a step)
LONG = GenerationOptions(height=16, width=16, frames=97, steps=2, guidance=6.0, seed=5, riflex=True)
LAYOUTS = {2: [(1, 2, 1), (1, 1, 2), (2, 1, 1)], 4: [(2, 1, 2)]}


def check_pipeline(rank: int, root: str, face: str, layouts, opts: GenerationOptions = OPTS) -> None:
    from echovideo.pipeline import EchoVideoPipeline
    from parallel import ParallelConfig, ParallelMesh
    from parallel.pipeline import ParallelEchoVideoPipeline

    pipe = EchoVideoPipeline.from_pretrained(root, device="cpu", dtype="fp32")
    pipe.teacache_coefficients = IDENTITY  # the tiny model's embedding lies outside the 5B fit (step_cache)
    single = pipe("a woman smiles", face, opts, decode=False, progress=False)
    expected = single.latents
    assert (single.skipped_steps > 0) == (opts.cache > 0)
    for c, u, r in layouts:
        mesh = ParallelMesh.create(ParallelConfig(ulysses=u, ring=r, cfg=c), pipe.transformer.config.num_attention_heads)
        result = ParallelEchoVideoPipeline(pipe, mesh)("a woman smiles", face, opts)
        got = result.latents
        error = float((got - expected).norm() / expected.norm())
        assert error <= 1e-4, f"layout {(c, u, r)}: relative error {error}"
        assert result.skipped_steps == single.skipped_steps
        every = [torch.empty_like(got) for _ in range(dist.get_world_size())]
        dist.all_gather(every, got)
        assert all(torch.equal(every[0], other) for other in every), f"layout {(c, u, r)}: ranks diverged"
    parallel = ParallelEchoVideoPipeline(pipe, mesh)
    state = parallel.shared_state("a woman smiles", face, opts)
    assert device_scalar_reads(lambda: pipe.denoise(state, opts, predict=parallel.engine, progress=False)) == 0


def test_parallel_pipeline_matches_single_process(tiny_root, face_path):
    for world, layouts in LAYOUTS.items():
        run_ranks(world, check_pipeline, str(tiny_root), str(face_path), layouts)


def test_cached_and_longer_clips_match_single_process_under_every_layout(tiny_root, face_path):
    for opts in (CACHED, LONG):
        for world, layouts in LAYOUTS.items():
            run_ranks(world, check_pipeline, str(tiny_root), str(face_path), layouts, opts)
