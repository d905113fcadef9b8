"""diffusers' CogVideoX transformer holding our DiT's weights: the reference our DiT is timed against."""

import torch
from diffusers import CogVideoXTransformer3DModel


def diffusers_dit(ours) -> CogVideoXTransformer3DModel:
    """Same config and DiT weights as `ours` (an EchoVideoTransformer3DModel), without the IITF fusion."""
    c = ours.config
    first = next(ours.parameters())
    with torch.device(first.device):
        dit = CogVideoXTransformer3DModel(
            num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
            in_channels=c.in_channels, out_channels=c.out_channels, time_embed_dim=c.time_embed_dim,
            text_embed_dim=c.text_embed_dim, num_layers=c.num_layers, use_rotary_positional_embeddings=True,
            max_text_seq_length=c.max_text_seq_length, sample_height=c.sample_height, sample_width=c.sample_width,
        ).to(first.dtype).eval()
    keys = set(dit.state_dict())
    dit.load_state_dict({k: v for k, v in ours.state_dict().items() if k in keys})
    return dit
