"""USP joint attention for the CogVideoX blocks, as a diffusers attention processor.

Video tokens are split over the u*r ranks of a sequence group; the 226 text tokens are replicated.
Ulysses all-to-all inside (heads <-> sequence), ring K/V rotation outside with an fp32 LSE merge.
Text keys enter each softmax exactly once (before the ring), text queries are computed on every
ring rank for its heads and gathered over Ulysses; padded video tokens never act as keys.
"""

import torch
from diffusers.models.embeddings import apply_rotary_emb

from parallel.comm import (
    RingExchange,
    all_gather_cat,
    heads_to_sequence,
    sequence_to_heads,
)
from parallel.kernels import AttentionKernel
from parallel.mesh import ParallelMesh


def merge_partial(out, lse, block_out, block_lse):
    """Combine two softmax-normalised partial attentions by their log-sum-exp (fp32)."""
    if out is None:
        return block_out.float(), block_lse
    new_lse = torch.logaddexp(lse, block_lse)
    out = out * torch.exp(lse - new_lse)[..., None] + block_out.float() * torch.exp(block_lse - new_lse)[..., None]
    return out, new_lse


class USPAttnProcessor:
    """Set on every CogVideoX attention of the model; `valid_video_tokens` is set per forward."""

    def __init__(self, mesh: ParallelMesh, kernel: AttentionKernel) -> None:
        self.mesh = mesh
        self.kernel = kernel
        self.valid_video_tokens = 0
        self.ring = RingExchange(mesh.ring_peers, mesh.rank)

    def __call__(self, attn, hidden_states, encoder_hidden_states, attention_mask=None, image_rotary_emb=None):
        text_len = encoder_hidden_states.shape[1]
        joint = torch.cat([encoder_hidden_states, hidden_states], dim=1)
        batch = joint.shape[0]
        heads, head_dim = attn.heads, attn.to_q.out_features // attn.heads
        projected = attn.to_qkv(joint).chunk(3, dim=-1) if attn.fused_projections else \
            (attn.to_q(joint), attn.to_k(joint), attn.to_v(joint))
        q, k, v = (x.view(batch, -1, heads, head_dim).transpose(1, 2) for x in projected)
        if attn.norm_q is not None:
            q, k = attn.norm_q(q), attn.norm_k(k)
        if image_rotary_emb is not None:  # the local slice of the RoPE table, matching the local tokens
            q = torch.cat([q[:, :, :text_len], apply_rotary_emb(q[:, :, text_len:], image_rotary_emb)], dim=2)
            k = torch.cat([k[:, :, :text_len], apply_rotary_emb(k[:, :, text_len:], image_rotary_emb)], dim=2)
        text_out, video_out = self.attend(q, k, v, text_len)
        out = torch.cat([text_out, video_out], dim=2).transpose(1, 2).reshape(batch, -1, heads * head_dim)
        out = attn.to_out[1](attn.to_out[0](out.to(joint.dtype)))
        return out[:, text_len:], out[:, :text_len]

    def attend(self, q, k, v, text_len):
        mesh, u, r = self.mesh, self.mesh.config.ulysses, self.mesh.config.ring
        heads_local = q.shape[1] // u
        my_heads = slice(mesh.ulysses_rank * heads_local, (mesh.ulysses_rank + 1) * heads_local)
        video_q, video_k, video_v = (heads_to_sequence(x[:, :, text_len:], mesh.ulysses_group, u) for x in (q, k, v))
        query = torch.cat([q[:, my_heads, :text_len], video_q], dim=2)
        out, lse = merge_partial(None, None, *self.kernel(query, k[:, my_heads, :text_len], v[:, my_heads, :text_len]))
        block_len = video_k.shape[2]
        kv = torch.stack([video_k, video_v]).contiguous()
        for step in range(r):
            pending = self.ring.start(kv) if step < r - 1 else None
            source = (mesh.ring_rank - step) % r
            valid = min(max(self.valid_video_tokens - source * block_len, 0), block_len)
            if valid:
                out, lse = merge_partial(out, lse, *self.kernel(query, kv[0][:, :, :valid], kv[1][:, :, :valid]))
            if pending is not None:
                self.ring.finish(pending[0])
                kv = pending[1]
        out = out.to(q.dtype)
        text_out = all_gather_cat(out[:, :, :text_len].contiguous(), mesh.ulysses_group, u, dim=1, kind="text")
        video_out = sequence_to_heads(out[:, :, text_len:].contiguous(), mesh.ulysses_group, u)
        return text_out, video_out
