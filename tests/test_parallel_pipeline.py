"""A full tiny pipeline (CFG, dynamic CFG, stochastic DPM steps) under parallel layouts equals one process,
and its denoising loop reads no device scalar (no host-device synchronisation per step)."""

import torch
import torch.distributed as dist

from distributed import run_ranks
from test_pipeline import device_scalar_reads
from echovideo.sampling import GenerationOptions

OPTS = GenerationOptions(height=32, width=48, frames=9, steps=3, guidance=6.0, seed=11)
LAYOUTS = {2: [(1, 2, 1), (1, 1, 2), (2, 1, 1)], 4: [(2, 1, 2)]}


def check_pipeline(rank: int, root: str, face: str, layouts) -> None:
    from echovideo.pipeline import EchoVideoPipeline
    from parallel import ParallelConfig, ParallelMesh
    from parallel.pipeline import ParallelEchoVideoPipeline

    pipe = EchoVideoPipeline.from_pretrained(root, device="cpu", dtype="fp32")
    expected = pipe("a woman smiles", face, OPTS, decode=False, progress=False).latents
    for c, u, r in layouts:
        mesh = ParallelMesh.create(ParallelConfig(ulysses=u, ring=r, cfg=c), pipe.transformer.config.num_attention_heads)
        got = ParallelEchoVideoPipeline(pipe, mesh)("a woman smiles", face, OPTS).latents
        error = float((got - expected).norm() / expected.norm())
        assert error <= 1e-4, f"layout {(c, u, r)}: relative error {error}"
        every = [torch.empty_like(got) for _ in range(dist.get_world_size())]
        dist.all_gather(every, got)
        assert all(torch.equal(every[0], other) for other in every), f"layout {(c, u, r)}: ranks diverged"
    parallel = ParallelEchoVideoPipeline(pipe, mesh)
    state = parallel.shared_state("a woman smiles", face, OPTS)
    assert device_scalar_reads(lambda: pipe.denoise(state, OPTS, predict=parallel.engine, progress=False)) == 0


def test_parallel_pipeline_matches_single_process(tiny_root, face_path):
    for world, layouts in LAYOUTS.items():
        run_ranks(world, check_pipeline, str(tiny_root), str(face_path), layouts)
