"""The identity resampler of IITF (identity image-text fusion).

diffusers ships the exact PerceiverAttention EchoVideo uses (ConsisID's: no biases, q and k scaled by
head_dim**-0.25, fp32 softmax) under the released key names, so only the stack around it is written here.
"""

import torch
from diffusers.models.transformers.consisid_transformer_3d import PerceiverAttention
from torch import nn


def _feed_forward(dim: int, mult: int) -> nn.Sequential:
    # Indices 0..3 are part of the released key names (`layers.N.1.{0,1,3}`).
    return nn.Sequential(
        nn.LayerNorm(dim),
        nn.Linear(dim, dim * mult, bias=False),
        nn.GELU(),
        nn.Linear(dim * mult, dim, bias=False),
    )


class FaceResampler(nn.Module):
    """Perceiver resampler (`face_prj_wofc`): repeated ArcFace tokens -> a few learned identity tokens."""

    def __init__(
        self,
        in_dim: int,
        dim: int,
        out_dim: int,
        depth: int,
        heads: int,
        head_dim: int,
        num_queries: int,
        ff_mult: int,
    ) -> None:
        super().__init__()
        self.latents = nn.Parameter(torch.randn(1, num_queries, dim) / dim**0.5)
        self.proj_in = nn.Linear(in_dim, dim)
        self.layers = nn.ModuleList(
            nn.ModuleList([PerceiverAttention(dim=dim, dim_head=head_dim, heads=heads), _feed_forward(dim, ff_mult)])
            for _ in range(depth)
        )
        self.proj_out = nn.Linear(dim, out_dim)
        self.norm_out = nn.LayerNorm(out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.latents.expand(features.shape[0], -1, -1)
        features = self.proj_in(features)
        for attention, feed_forward in self.layers:
            latents = attention(features, latents) + latents
            latents = feed_forward(latents) + latents
        return self.norm_out(self.proj_out(latents))
