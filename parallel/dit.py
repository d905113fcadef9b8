"""SequenceParallelDiT: the EchoVideo DiT forward over a ParallelMesh, returning the full prediction.

Every rank embeds the whole latent (one patch convolution, cheap next to the blocks) and keeps its own
slice of the flattened video tokens; the blocks' adaLN and FFN and the output head are token-wise and
run on that slice, so only attention communicates. The token count is padded to a multiple of u*r (pads
are trimmed and never used as keys), so every resolution works at any degree.
"""

import math

import torch
import torch.nn.functional as F

from echovideo.models.transformer import DiTTokens, EchoVideoTransformer3DModel
from parallel.attention import USPAttnProcessor
from parallel.comm import all_gather_cat
from parallel.kernels import AttentionKernel, kernel_for
from parallel.mesh import ParallelMesh


def local_slice(x: torch.Tensor, dim: int, rank: int, ranks: int) -> torch.Tensor:
    """Pad `dim` up to a multiple of `ranks` and return this rank's contiguous chunk."""
    chunk = math.ceil(x.shape[dim] / ranks)
    pad = chunk * ranks - x.shape[dim]
    if pad:
        widths = [0, 0] * (x.dim() - 1 - dim) + [0, pad]
        x = F.pad(x, widths)
    return x.narrow(dim, rank * chunk, chunk)


class SequenceParallelDiT:
    def __init__(self, model: EchoVideoTransformer3DModel, mesh: ParallelMesh,
                 kernel: AttentionKernel | None = None) -> None:
        self.model = model
        self.mesh = mesh
        weights = next(model.parameters())
        self.processor = USPAttnProcessor(mesh, kernel or kernel_for(weights.device, dtype=weights.dtype))
        model.set_attn_processor(self.processor)
        self._rotary: tuple[tuple, tuple] | None = None  # (the whole table, this rank's slices)

    def local_rotary(self, table: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        """This rank's rows of the RoPE table, sliced once per video (the loop passes one table to every step).

        Keyed on the table object itself, held here: a held object's identity cannot be reused, whereas its
        shape (480x848 and 848x480 have one) or its grid (RIFLEx changes the values, not the grid) can match
        another table's.
        """
        if self._rotary is None or self._rotary[0] is not table:
            mesh = self.mesh
            self._rotary = table, tuple(local_slice(t, 0, mesh.sequence_rank, mesh.config.sequence) for t in table)
        return self._rotary[1]

    @torch.no_grad()
    def __call__(self, latents, timestep, fused_text, image_rotary_emb):
        """Same inputs and output as `model(...)` (batch 2 = [uncond; cond] under CFG), on every rank.

        Under CFG parallelism each CFG group runs one branch at batch 1. A sample without CFG (guidance
        <= 1, batch 1) runs its single branch on both groups: identical work, no exchange, same result.
        A step cache's hooks on the blocks keep this rank's own slice of the residual (its tokens, its branch).
        """
        mesh = self.mesh
        cfg = mesh.config.cfg if latents.shape[0] > 1 else 1
        if cfg > 1:
            pick = slice(mesh.cfg_rank, mesh.cfg_rank + 1)
            latents, timestep, fused_text = latents[pick], timestep[pick], fused_text[pick]
        _, frames, _, height, width = latents.shape
        tokens = self.model.embed(latents, fused_text, timestep)
        count, ranks, rank = tokens.video.shape[1], mesh.config.sequence, mesh.sequence_rank
        video = local_slice(tokens.video, 1, rank, ranks)
        rotary = self.local_rotary(image_rotary_emb)
        self.processor.valid_video_tokens = count
        patches = self.model.run_blocks(DiTTokens(video, tokens.text, tokens.temb), rotary)
        patches = all_gather_cat(patches, mesh.sequence_group, ranks, dim=1, kind="gather")[:, :count]
        out = self.model.unpatchify(patches, frames, height, width)
        return all_gather_cat(out, mesh.cfg_group, cfg, dim=0, kind="cfg")
