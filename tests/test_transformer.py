"""The transformer: released keys and shapes, equality with diffusers' DiT, IITF caching, strict loading."""

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from diffusers import CogVideoXTransformer3DModel
from safetensors.torch import save_file

from echovideo.errors import CheckpointError
from echovideo.models import EchoVideoTransformer3DModel
from echovideo.presets.tiny import TRANSFORMER_CONFIG

# A copy of shared/spec/transformer-checkpoint-keys.tsv: the released transformer's every key and shape.
KEYS_TSV = Path(__file__).resolve().parent / "data" / "transformer-checkpoint-keys.tsv"
RELEASED_CONFIG = dict(
    num_attention_heads=48, attention_head_dim=64, in_channels=32, out_channels=16, flip_sin_to_cos=True,
    freq_shift=0, time_embed_dim=512, text_embed_dim=4096, face_embed_dim=768, face_features_embed_dim=512,
    num_layers=42, attention_bias=True, sample_width=90, sample_height=60, sample_frames=49, patch_size=2,
    temporal_compression_ratio=4, max_text_seq_length=226, face_seq_length=196, face_features_seq_length=144,
    activation_fn="gelu-approximate", timestep_activation_fn="silu", norm_eps=1e-5,
    use_rotary_positional_embeddings=True,
)


def released_shapes() -> dict[str, tuple[int, ...]]:
    rows = [line.rstrip("\n").split("\t") for line in KEYS_TSV.read_text().splitlines() if line.strip()]
    return {key: tuple(int(d) for d in shape.strip("()").split(",") if d.strip()) for key, shape in rows}


def tiny_model(seed: int = 0) -> EchoVideoTransformer3DModel:
    torch.manual_seed(seed)
    model = EchoVideoTransformer3DModel(**TRANSFORMER_CONFIG).eval()
    with torch.no_grad():  # non-trivial norms and biases, so a wrong mapping cannot hide behind zeros/ones
        for param in model.parameters():
            param.add_(0.02 * torch.randn_like(param))
    return model


def dit_inputs(model, batch=2, frames=3, height=8, width=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    latents = torch.randn(batch, frames, c.in_channels, height, width, generator=g)
    text = torch.randn(batch, c.max_text_seq_length, c.text_embed_dim, generator=g)
    arcface = torch.randn(batch, c.face_features_embed_dim, generator=g)
    vit = torch.randn(batch, c.face_seq_length, c.face_embed_dim, generator=g)
    t = torch.tensor([999, 500])[:batch]
    return latents, t, text, arcface, vit


def cached_iitf_forward(model):
    """`dit_inputs` with the IITF computed once, and the model's output for them."""
    latents, t, text, arcface, vit = dit_inputs(model)
    with torch.no_grad():
        fused = model.fuse_identity_text(text, arcface, vit)
        return latents, t, fused, model(latents, t, fused_text=fused)


def test_defaults_are_the_released_config():
    with torch.device("meta"):
        model = EchoVideoTransformer3DModel()
    for key, value in RELEASED_CONFIG.items():
        assert model.config[key] == value, key


def test_full_size_model_has_exactly_the_released_keys_and_shapes():
    with torch.device("meta"):
        model = EchoVideoTransformer3DModel()
    ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    released = released_shapes()
    assert len(released) == 1081
    assert set(ours) == set(released), (set(ours) ^ set(released))
    assert {k: v for k, v in ours.items() if released[k] != v} == {}
    assert sum(math.prod(s) for s in ours.values()) == 5_621_259_202


def test_dit_equals_diffusers_cogvideox_given_the_same_fused_text():
    ours = tiny_model()
    c = ours.config
    reference = CogVideoXTransformer3DModel(
        num_attention_heads=c.num_attention_heads, attention_head_dim=c.attention_head_dim,
        in_channels=c.in_channels, out_channels=c.out_channels, time_embed_dim=c.time_embed_dim,
        text_embed_dim=c.text_embed_dim, num_layers=c.num_layers, use_rotary_positional_embeddings=True,
        max_text_seq_length=c.max_text_seq_length,
    ).eval()
    dit_keys = set(reference.state_dict())
    missing, unexpected = reference.load_state_dict(
        {k: v for k, v in ours.state_dict().items() if k in dit_keys}, strict=False)
    assert not missing and not unexpected
    latents, t, text, arcface, vit = dit_inputs(ours)
    with torch.no_grad():
        fused = ours.fuse_identity_text(text, arcface, vit)
        rotary = ours.rotary_embedding(latents.shape[1], latents.shape[3], latents.shape[4])
        mine = ours(latents, t, fused_text=fused, image_rotary_emb=rotary)
        theirs = reference(latents, fused, t, image_rotary_emb=rotary, return_dict=False)[0]
    assert mine.shape == (2, 3, 16, 8, 12)
    assert torch.equal(mine, theirs)


def test_cached_iitf_equals_recomputing_it():
    model = tiny_model()
    latents, t, text, arcface, vit = dit_inputs(model)
    with torch.no_grad():
        recomputed = model(latents, t, text_embeds=text, id_embeds=arcface, id_vit_tokens=vit)
        fused = model.fuse_identity_text(text, arcface, vit)
        cached = [model(latents, t, fused_text=fused) for _ in range(2)]
    assert torch.equal(recomputed, cached[0]) and torch.equal(cached[0], cached[1])
    # ...and the identity actually reaches the output (a fusion that ignored the face would pass the above).
    with torch.no_grad():
        other = model(latents, t, text_embeds=text, id_embeds=arcface + 1, id_vit_tokens=vit)
    assert not torch.allclose(other, recomputed)


def _write_released_layout(folder: Path, state: dict[str, torch.Tensor], config: dict) -> None:
    """Two shards + index + config.json, written by hand as the released folder is (not by our saver)."""
    folder.mkdir(parents=True, exist_ok=True)
    keys = sorted(state)
    shards = {"diffusion_pytorch_model-00001-of-00002.safetensors": keys[: len(keys) // 2],
              "diffusion_pytorch_model-00002-of-00002.safetensors": keys[len(keys) // 2:]}
    weight_map = {}
    for name, shard_keys in shards.items():
        save_file({k: state[k].contiguous() for k in shard_keys}, str(folder / name))
        weight_map.update({k: name for k in shard_keys})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps({"_class_name": "EchoVideoTransformer3DModel", **config}))


def _released_names_state(model) -> dict[str, torch.Tensor]:
    """Random tensors under the released key names (the tsv), restricted to the tiny model's depth."""
    released = set(released_shapes())
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    assert set(state) <= released  # every tiny key is a released key name
    return state


def test_released_layout_loads_without_key_warnings(tmp_path, caplog):
    model = tiny_model()
    state = _released_names_state(model)
    _write_released_layout(tmp_path / "transformer", state, dict(TRANSFORMER_CONFIG))
    with caplog.at_level(logging.WARNING):
        loaded = EchoVideoTransformer3DModel.from_pretrained(tmp_path / "transformer")
    assert not [r for r in caplog.records if "key" in r.getMessage().lower()]
    for key, value in loaded.state_dict().items():
        assert torch.equal(value, state[key]), key


@pytest.mark.parametrize("damage, named", [
    ("drop", "missing keys: transformer_blocks.1.attn1.to_q.weight"),
    ("extra", "unexpected keys: face_prj_wofc.extra.weight"),
    ("reshape", "wrong shapes: proj_out.bias"),
])
def test_bad_checkpoint_names_the_key(tmp_path, damage, named):
    state = _released_names_state(tiny_model())
    if damage == "drop":
        del state["transformer_blocks.1.attn1.to_q.weight"]
    elif damage == "extra":
        state["face_prj_wofc.extra.weight"] = torch.zeros(3)
    else:
        state["proj_out.bias"] = torch.zeros(7)
    _write_released_layout(tmp_path / "t", state, dict(TRANSFORMER_CONFIG))
    with pytest.raises(CheckpointError, match=named.replace("(", r"\(")):
        EchoVideoTransformer3DModel.from_pretrained(tmp_path / "t")


def test_pickle_weights_are_refused(tmp_path):
    folder = tmp_path / "t"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(TRANSFORMER_CONFIG))
    torch.save(tiny_model().state_dict(), folder / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="pickle"):
        EchoVideoTransformer3DModel.from_pretrained(folder)


def test_fused_qkv_projections_compute_the_same_forward():
    """AttentionMixin's own fusion skips CogVideoX's attention; ours fuses, uses the fused weight, undoes."""
    model = tiny_model()
    latents, t, fused, eager = cached_iitf_forward(model)
    with torch.no_grad():
        model.fuse_qkv_projections()
        saved = [block.attn1.to_q.weight.clone() for block in model.transformer_blocks]
        for block in model.transformer_blocks:
            block.attn1.to_q.weight.zero_()  # only the fused weight can give the eager output now
        assert ((model(latents, t, fused_text=fused) - eager).norm() / eager.norm()).item() <= 1e-6
        model.unfuse_qkv_projections()
        for block, weight in zip(model.transformer_blocks, saved):
            block.attn1.to_q.weight.copy_(weight)
        assert torch.equal(model(latents, t, fused_text=fused), eager)
    assert not any(hasattr(block.attn1, "to_qkv") for block in model.transformer_blocks)
