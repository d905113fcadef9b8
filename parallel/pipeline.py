"""ParallelEchoVideoPipeline: the single-device sampling loop with the DiT spread over a ParallelMesh.

Conditioning (face stage, SigLIP, T5, IITF, face latent) runs once, on rank 0, and is broadcast with the
generator's state, so every rank then takes identical scheduler steps with an identical generator and
the latents stay replicated. Only rank 0 decodes and returns frames.
"""

import numpy as np
import torch
import torch.distributed as dist

from echovideo.pipeline import EchoVideoPipeline, GenerationResult, SamplingState
from echovideo.sampling import GenerationOptions
from parallel.dit import SequenceParallelDiT
from parallel.kernels import AttentionKernel
from parallel.mesh import ParallelMesh


def _broadcast(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Broadcast from rank 0 through `device` (nccl/hccl need device tensors), returned on the original device."""
    moved = tensor.to(device).contiguous()
    dist.broadcast(moved, src=0)
    return moved.to(tensor.device)


class ParallelEchoVideoPipeline:
    def __init__(self, pipe: EchoVideoPipeline, mesh: ParallelMesh, kernel: AttentionKernel | None = None) -> None:
        self.pipe = pipe
        self.mesh = mesh
        self.engine = SequenceParallelDiT(pipe.transformer, mesh, kernel)

    def shared_state(self, prompt: str, image, opts: GenerationOptions) -> SamplingState:
        pipe = self.pipe
        if self.mesh.rank == 0:
            state = pipe.prepare(prompt, image, opts)
        else:  # same shapes, filled by the broadcast
            latent_shape = pipe.latent_shape(opts)
            config = pipe.transformer.config
            state = SamplingState(
                latents=torch.empty(latent_shape, device=pipe.device),
                face_latents=torch.empty(latent_shape, device=pipe.device),
                fused_text=torch.empty((2 if opts.use_cfg else 1, config.max_text_seq_length, config.text_embed_dim),
                                       device=pipe.device, dtype=pipe.dtype),
                generator=torch.Generator("cpu"),
            )
        device = pipe.device
        state.latents = _broadcast(state.latents, device)
        state.face_latents = _broadcast(state.face_latents, device)
        state.fused_text = _broadcast(state.fused_text, device)
        state.generator.set_state(_broadcast(state.generator.get_state(), device))
        return state

    def __call__(self, prompt: str, image, options: GenerationOptions, progress: bool = False,
                 decode: bool = True) -> GenerationResult:
        opts = options.validate()
        state = self.shared_state(prompt, image, opts)
        latents = self.pipe.denoise(state, opts, predict=self.engine, progress=progress and self.mesh.rank == 0)
        frames = self.pipe.decode(latents) if decode and self.mesh.rank == 0 else np.zeros((0,), np.uint8)
        return GenerationResult(frames=frames, latents=latents.cpu(), fps=opts.fps)
