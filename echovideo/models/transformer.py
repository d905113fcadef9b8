"""EchoVideoTransformer3DModel: the CogVideoX-5b DiT (diffusers' own blocks) plus the IITF layers.

The DiT forward is split into stages (`embed`, `run_blocks`, `unpatchify`) so that sequence-parallel
code can run each stage on its own slice of the video tokens without copying the model.
"""

from dataclasses import dataclass

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.attention import AttentionMixin
from diffusers.models.attention_processor import (
    CogVideoXAttnProcessor2_0,
    FusedCogVideoXAttnProcessor2_0,
)
from diffusers.models.embeddings import (
    CogVideoXPatchEmbed,
    TimestepEmbedding,
    Timesteps,
)
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.normalization import AdaLayerNorm
from diffusers.models.transformers.cogvideox_transformer_3d import CogVideoXBlock
from torch import nn

from echovideo.attention_choice import sdpa_backend
from echovideo.models.checkpoint import StrictCheckpointMixin
from echovideo.models.iitf import FaceResampler
from echovideo.models.rope import rotary_table


def _on_token_axis(linear: nn.Linear, tokens: torch.Tensor) -> torch.Tensor:
    """A Linear over the token axis of (B, N, D), on contiguous copies as released: a strided input takes
    another GEMM path and moves bf16 results by ~3e-3."""
    return linear(tokens.transpose(1, 2).contiguous()).transpose(1, 2).contiguous()


@dataclass
class DiTTokens:
    """Token streams between the stages of one DiT forward."""

    video: torch.Tensor  # (B, N, D) video tokens
    text: torch.Tensor  # (B, T, D) text tokens (the fused IITF output, embedded)
    temb: torch.Tensor  # (B, time_embed_dim) timestep embedding


class EchoVideoTransformer3DModel(StrictCheckpointMixin, ModelMixin, AttentionMixin, ConfigMixin):
    """CogVideoX-5b DiT with 32 input channels (noise + face latent) and the IITF fusion layers.

    The defaults are the released config; the `tiny` preset shrinks every size, architecture unchanged.
    """

    _no_split_modules = ["CogVideoXBlock", "CogVideoXPatchEmbed"]

    @register_to_config
    def __init__(
        self,
        num_attention_heads: int = 48,
        attention_head_dim: int = 64,
        in_channels: int = 32,
        out_channels: int = 16,
        flip_sin_to_cos: bool = True,
        freq_shift: int = 0,
        time_embed_dim: int = 512,
        text_embed_dim: int = 4096,
        num_layers: int = 42,
        attention_bias: bool = True,
        sample_width: int = 90,
        sample_height: int = 60,
        sample_frames: int = 49,
        patch_size: int = 2,
        temporal_compression_ratio: int = 4,
        max_text_seq_length: int = 226,
        activation_fn: str = "gelu-approximate",
        timestep_activation_fn: str = "silu",
        norm_elementwise_affine: bool = True,
        norm_eps: float = 1e-5,
        use_rotary_positional_embeddings: bool = True,
        face_embed_dim: int = 768,
        face_features_embed_dim: int = 512,
        face_seq_length: int = 196,
        face_features_seq_length: int = 144,
        face_resampler_dim: int = 1024,
        face_resampler_depth: int = 4,
        face_resampler_heads: int = 12,
        face_resampler_head_dim: int = 64,
        face_resampler_queries: int = 16,
        face_resampler_ff_mult: int = 4,
    ) -> None:
        super().__init__()
        if not use_rotary_positional_embeddings:
            raise ValueError("EchoVideo uses 3D RoPE only: use_rotary_positional_embeddings must be true")
        inner_dim = num_attention_heads * attention_head_dim

        # DiT: diffusers' CogVideoX modules under diffusers' (= the released) names.
        self.patch_embed = CogVideoXPatchEmbed(
            patch_size=patch_size,
            in_channels=in_channels,
            embed_dim=inner_dim,
            text_embed_dim=text_embed_dim,
            sample_width=sample_width,
            sample_height=sample_height,
            sample_frames=sample_frames,
            temporal_compression_ratio=temporal_compression_ratio,
            max_text_seq_length=max_text_seq_length,
            use_positional_embeddings=False,
            use_learned_positional_embeddings=False,
        )
        self.time_proj = Timesteps(inner_dim, flip_sin_to_cos, freq_shift)
        self.time_embedding = TimestepEmbedding(inner_dim, time_embed_dim, timestep_activation_fn)
        self.transformer_blocks = nn.ModuleList(
            CogVideoXBlock(
                dim=inner_dim,
                num_attention_heads=num_attention_heads,
                attention_head_dim=attention_head_dim,
                time_embed_dim=time_embed_dim,
                activation_fn=activation_fn,
                attention_bias=attention_bias,
                norm_elementwise_affine=norm_elementwise_affine,
                norm_eps=norm_eps,
            )
            for _ in range(num_layers)
        )
        self.norm_final = nn.LayerNorm(inner_dim, norm_eps, norm_elementwise_affine)
        self.norm_out = AdaLayerNorm(
            embedding_dim=time_embed_dim,
            output_dim=2 * inner_dim,
            norm_elementwise_affine=norm_elementwise_affine,
            norm_eps=norm_eps,
            chunk_dim=1,
        )
        self.proj_out = nn.Linear(inner_dim, patch_size * patch_size * out_channels)

        # IITF.
        self.face_prj_wofc = FaceResampler(
            in_dim=face_features_embed_dim,
            dim=face_resampler_dim,
            out_dim=face_embed_dim,
            depth=face_resampler_depth,
            heads=face_resampler_heads,
            head_dim=face_resampler_head_dim,
            num_queries=face_resampler_queries,
            ff_mult=face_resampler_ff_mult,
        )
        self.face_info_proj = nn.Linear(face_resampler_queries + face_seq_length, face_seq_length)
        self.face_proj = nn.Linear(face_embed_dim, text_embed_dim)
        self.text_proj = nn.Linear(face_seq_length + max_text_seq_length, max_text_seq_length)

    # ---------------------------------------------------------------- IITF
    def fuse_identity_text(
        self, text_embeds: torch.Tensor, id_embeds: torch.Tensor, id_vit_tokens: torch.Tensor
    ) -> torch.Tensor:
        """(T5 tokens (B,226,Dt), raw ArcFace (B,Da), SigLIP tokens (B,196,Dv)) -> DiT text input (B,226,Dt).

        Independent of the timestep: compute once per video and pass as `fused_text` to every step.
        """
        repeats = self.config.face_features_seq_length
        arcface_tokens = id_embeds[:, None, :].expand(-1, repeats, -1)
        face_tokens = torch.cat([self.face_prj_wofc(arcface_tokens), id_vit_tokens], dim=1)
        face_tokens = _on_token_axis(self.face_info_proj, face_tokens)
        joint = torch.cat([self.face_proj(face_tokens), text_embeds], dim=1)
        return _on_token_axis(self.text_proj, joint)

    # ---------------------------------------------------------------- RoPE
    def rotary_embedding(
        self, latent_frames: int, latent_height: int, latent_width: int, device: torch.device | str = "cpu",
        riflex: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """3D RoPE (cos, sin), each (frames*rows*cols, head_dim), positions on the base grid as released;
        `riflex` for clips longer than the trained length (`rope.riflex_axis`)."""
        p = self.config.patch_size
        return rotary_table(self.config.attention_head_dim, latent_frames, latent_height // p, latent_width // p,
                            self.config.sample_height // p, self.config.sample_width // p, device, riflex)

    # ---------------------------------------------------------------- DiT stages
    def timestep_embedding(self, timestep: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """(B,) timesteps -> (B, time_embed_dim): what every block is modulated by (and what TeaCache reads)."""
        return self.time_embedding(self.time_proj(timestep).to(dtype=dtype))

    def embed(self, hidden_states: torch.Tensor, fused_text: torch.Tensor, timestep: torch.Tensor) -> DiTTokens:
        """Latents (B,F,C,H,W) + fused text + timestep -> token streams. Token-wise: any slice of rows works."""
        temb = self.timestep_embedding(timestep, hidden_states.dtype)
        tokens = self.patch_embed(fused_text, hidden_states)
        text_len = fused_text.shape[1]
        return DiTTokens(video=tokens[:, text_len:], text=tokens[:, :text_len], temb=temb)

    def compile_blocks(self, **options) -> "EchoVideoTransformer3DModel":
        """`torch.compile` every transformer block in place (off unless asked: compiling costs minutes).

        Blocks rather than the whole model: weights and state-dict keys stay as they are, and the
        sequence-parallel engine, which runs the same blocks around its collectives, keeps working.
        """
        for block in self.transformer_blocks:
            block.compile(**options)
        return self

    def fuse_qkv_projections(self) -> None:
        """One GEMM into a concatenated (3D, D) weight instead of three for every block's Q, K and V.

        Overrides AttentionMixin's, which skips CogVideoX's `Attention` class (it lacks
        `_supports_qkv_fusion` in diffusers 0.42) and so silently fuses nothing. Keeps the separate
        weights (as diffusers does: +3 D^2 per block, 2.4 GB for the 5B model in bf16) so unfusing and
        saving still work. Processors other than diffusers' CogVideoX one (the sequence-parallel
        processor) read `attn.fused_projections` themselves and are left in place.
        """
        for block in self.transformer_blocks:
            block.attn1.fuse_projections()
            if type(block.attn1.processor) is CogVideoXAttnProcessor2_0:
                block.attn1.set_processor(FusedCogVideoXAttnProcessor2_0())

    def unfuse_qkv_projections(self) -> None:
        for block in self.transformer_blocks:
            attn = block.attn1
            if attn.fused_projections:
                del attn.to_qkv
                attn.fused_projections = False
            if type(attn.processor) is FusedCogVideoXAttnProcessor2_0:
                attn.set_processor(CogVideoXAttnProcessor2_0())

    def run_blocks(self, tokens: DiTTokens, image_rotary_emb: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """The transformer blocks and the output head; returns projected video tokens (B,N,p*p*C).

        Blocks are called by keyword: speedups hook them (`echovideo.speedups`) and read their inputs by name."""
        video, text = tokens.video, tokens.text
        for block in self.transformer_blocks:
            video, text = block(
                hidden_states=video, encoder_hidden_states=text, temb=tokens.temb,
                image_rotary_emb=image_rotary_emb,
            )
        video = self.norm_final(video)
        video = self.norm_out(video, temb=tokens.temb)
        return self.proj_out(video)

    def unpatchify(self, patches: torch.Tensor, frames: int, height: int, width: int) -> torch.Tensor:
        """(B, F*rows*cols, p*p*C) -> (B, F, C, H, W)."""
        p = self.config.patch_size
        out = patches.reshape(patches.shape[0], frames, height // p, width // p, -1, p, p)
        return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        fused_text: torch.Tensor | None = None,
        image_rotary_emb: tuple[torch.Tensor, torch.Tensor] | None = None,
        text_embeds: torch.Tensor | None = None,
        id_embeds: torch.Tensor | None = None,
        id_vit_tokens: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict v for latents (B,F,C_in,H,W). Pass `fused_text` (cached IITF) or the three IITF inputs."""
        if fused_text is None:
            if text_embeds is None or id_embeds is None or id_vit_tokens is None:
                raise ValueError("pass fused_text, or all of text_embeds, id_embeds and id_vit_tokens")
            fused_text = self.fuse_identity_text(text_embeds, id_embeds, id_vit_tokens)
        _, frames, _, height, width = hidden_states.shape
        if image_rotary_emb is None:
            image_rotary_emb = self.rotary_embedding(frames, height, width, hidden_states.device)
        tokens = self.embed(hidden_states, fused_text, timestep)
        with sdpa_backend(hidden_states.device, self.dtype):  # the kernel measured fastest here (CUDA only)
            out = self.run_blocks(tokens, image_rotary_emb)
        return self.unpatchify(out, frames, height, width)
