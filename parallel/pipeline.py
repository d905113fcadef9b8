"""ParallelEchoVideoPipeline: the single-device sampling loop with the DiT and the VAE spread over a ParallelMesh.

Conditioning (face stage, SigLIP, T5, IITF, face latent) runs once, on rank 0 (the only rank that
loads those models), and is broadcast with the generator's state, so every rank then takes identical
scheduler steps with an identical generator and the latents stay replicated. The VAE tiles are
decoded by all ranks and assembled on rank 0, the only rank that returns frames.

Lockstep: whatever rank 0 meets while preparing a sample (a bad photo, an OpenCV error, anything) is
told to every rank before any of them starts it, so all ranks leave the sample together and the group
stays usable. A failure once the sample runs leaves peers inside a collective: the group is lost, the
peers see ParallelGroupError (when the failed process exits, or after the group timeout) and the
launcher (torchrun, or the Ray job driver, which tears the replica down) restarts the group.
"""

import json
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from echovideo.attention_choice import chosen_backend, remember_backend
from echovideo.errors import EchoVideoInputError, PeerFailedError
from echovideo.pipeline import EchoVideoPipeline, GenerationResult, SamplingState
from echovideo.sampling import GenerationOptions
from parallel.comm import collective
from parallel.config import ParallelConfig
from parallel.dit import SequenceParallelDiT
from parallel.kernels import AttentionKernel, kernel_for
from parallel.mesh import DEFAULT_TIMEOUT, ParallelMesh
from parallel.vae import parallel_decode


def _broadcast(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Broadcast from rank 0 through `device` (nccl/hccl need device tensors), returned on the original device."""
    moved = tensor.to(device).contiguous()
    with collective("broadcast of the sample's conditioning"):
        dist.broadcast(moved, src=0)
    return moved.to(tensor.device)


def _agree(failure: BaseException | None, device: torch.device) -> None:
    """Rank 0's outcome of preparing the sample, on every rank: all start the sample, or all raise.

    A bad input is raised as itself everywhere (it pickles with its fields); any other failure is raised as
    itself on rank 0 and as PeerFailedError naming it on the others.
    """
    outcome = [None if failure is None else
               (failure if isinstance(failure, EchoVideoInputError) else None,
                f"{type(failure).__name__}: {failure}")]
    with collective("agreeing on the sample"):
        dist.broadcast_object_list(outcome, src=0, device=device)
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        same_input_error, described = outcome[0]
        raise same_input_error or PeerFailedError(f"rank 0 failed to prepare this sample: {described}")


class ParallelEchoVideoPipeline:
    def __init__(self, pipe: EchoVideoPipeline, mesh: ParallelMesh, kernel: AttentionKernel | None = None) -> None:
        self.pipe = pipe
        self.mesh = mesh
        self.engine = SequenceParallelDiT(pipe.transformer, mesh, kernel)

    @classmethod
    def from_pretrained(cls, root: str | Path, config: ParallelConfig, device: str = "auto", dtype: str = "auto",
                        scheduler: str = "dpm", kernel: str = "auto", timeout: timedelta = DEFAULT_TIMEOUT,
                        compile: bool = False) -> "ParallelEchoVideoPipeline":
        """Every rank of the initialised default group calls this; only rank 0 loads the conditioning models.

        The layout is checked against the checkpoint's head count before any weights are read.
        """
        heads = json.loads((Path(root) / "transformer" / "config.json").read_text())["num_attention_heads"]
        config.validate(heads, dist.get_world_size())
        pipe = EchoVideoPipeline.from_pretrained(root, device, dtype, scheduler, conditioning=dist.get_rank() == 0,
                                                 compile=compile)
        mesh = ParallelMesh.create(config, heads, timeout)
        # every rank runs the kernel rank 0 measured fastest: one choice, one set of numerics, per group
        choice = [chosen_backend(pipe.device, pipe.dtype)]
        dist.broadcast_object_list(choice, src=0)
        remember_backend(pipe.device, pipe.dtype, choice[0])
        return cls(pipe, mesh, kernel_for(pipe.device, kernel, pipe.dtype))

    def shared_state(self, prompt: str, image, opts: GenerationOptions) -> SamplingState:
        pipe = self.pipe
        failure = None
        if self.mesh.rank == 0:
            try:
                state = pipe.prepare(prompt, image, opts)
            except Exception as exc:  # told to the peers below instead of leaving them waiting
                failure = exc
        _agree(failure, pipe.device)
        if self.mesh.rank != 0:  # same shapes, filled by the broadcast
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
                 decode: bool = True, on_step: Callable[[int], None] | None = None,
                 scores: bool = True) -> GenerationResult:
        """Every rank calls this with the same arguments (`image` is only read on rank 0).

        Rank 0's result has the frames and their quality scores; the others' have the (identical) latents only.
        """
        opts = options.validate()  # the same arguments on every rank: all raise here, or none
        state = self.shared_state(prompt, image, opts)
        latents = self.pipe.denoise(state, opts, predict=self.engine, progress=progress and self.mesh.rank == 0,
                                    on_step=on_step)
        frames = self.pipe.decode(latents, lambda z: parallel_decode(self.pipe.vae, z)) if decode else None
        scored = self.pipe.score(frames, opts.fps, image) if frames is not None and scores else None
        return GenerationResult(frames=frames if frames is not None else np.zeros((0,), np.uint8),
                                latents=latents.cpu(), fps=opts.fps, skipped_steps=state.skipped_steps,
                                scores=scored)
