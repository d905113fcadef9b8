"""The `tiny` preset: the EchoVideo architecture at toy sizes, written in the released folder layout.

Built from a fixed seed into a cache folder and then loaded by the same loader as the real weights,
so demos, tests and benchmarks exercise the real loading path. Everything is made offline: the
tokenizer is a SentencePiece model trained on a bundled corpus, the face stage is the documented
stand-in (echovideo.face.standin).
"""

import json
import os
import shutil
import tempfile
from pathlib import Path

from echovideo.locations import default_cache_dir

VERSION = "tiny-v1"
SEED = 20250123
CORPUS = Path(__file__).resolve().parent.parent / "assets" / "tokenizer_corpus.txt"
TEXT_DIM = 64
VISION_DIM = 64
ARCFACE_DIM = 64

VAE_CONFIG = dict(block_out_channels=(16, 16, 16, 16), layers_per_block=1, norm_num_groups=4, latent_channels=16,
                  scaling_factor=0.7)
TRANSFORMER_CONFIG = dict(
    num_attention_heads=12,  # divisible by 1, 2, 3, 4, 6, 12: every Ulysses degree the tests use
    attention_head_dim=16,
    time_embed_dim=64,
    text_embed_dim=TEXT_DIM,
    num_layers=2,
    face_embed_dim=VISION_DIM,
    face_features_embed_dim=ARCFACE_DIM,
    face_resampler_dim=64,
    face_resampler_depth=2,
    face_resampler_heads=2,
    face_resampler_head_dim=32,
    face_resampler_queries=4,
    face_resampler_ff_mult=2,
)
# The CogVideoX-5b scheduler config (v-prediction, zero-SNR, trailing spacing), identical to the released one.
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=1.0,
    timestep_spacing="trailing", clip_sample=False, set_alpha_to_one=True, steps_offset=0,
)


def tiny_checkpoint(cache_dir: Path | None = None) -> Path:
    """Path of the tiny checkpoint, built on first use (atomic: concurrent builders never see half a folder)."""
    target = (cache_dir or default_cache_dir()) / VERSION
    if (target / "model_index.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{VERSION}-", dir=target.parent))
    try:
        write_tiny_checkpoint(staging)
        missing = [part for part in ("transformer", "vae", "text_encoder", "clip_visual_encoder")
                   if not any((staging / part).glob("*.safetensors"))]
        if missing:  # e.g. transformers skips weights on a non-zero torch.distributed rank
            raise RuntimeError(f"tiny checkpoint build wrote no weights for {missing}; build it before "
                               "torch.distributed is initialised")
        os.replace(staging, target)
    except OSError:
        if not (target / "model_index.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def write_tiny_checkpoint(root: Path) -> None:
    """Write every part in the released layout; model_index.json last (it marks the folder complete).
    The model libraries load here, on a build: reading the preset's configs (`plan`) needs none of them."""
    import torch
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDPMScheduler
    from transformers import T5Config, T5EncoderModel

    from echovideo.face.standin import save_standin
    from echovideo.models import EchoVideoTransformer3DModel

    torch.manual_seed(SEED)
    transformer = EchoVideoTransformer3DModel(**TRANSFORMER_CONFIG)
    transformer.save_pretrained(root / "transformer", max_shard_size="4MB")  # two shards + index, as released
    AutoencoderKLCogVideoX(**VAE_CONFIG).save_pretrained(root / "vae")
    vocab_size = _write_tokenizer(root / "tokenizer")
    T5EncoderModel(T5Config(vocab_size=vocab_size, d_model=TEXT_DIM, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
                            feed_forward_proj="gated-gelu", pad_token_id=0, eos_token_id=1,
                            decoder_start_token_id=0)).save_pretrained(root / "text_encoder")
    CogVideoXDPMScheduler(**SCHEDULER_CONFIG).save_pretrained(root / "scheduler")
    _write_siglip(root / "clip_visual_encoder")
    save_standin(root / "face_encoder", ARCFACE_DIM, SEED)
    (root / "configuration.json").write_text(json.dumps({"framework": "pytorch", "preset": VERSION}))
    index = {"_class_name": "EchoVideoPipeline", "preset": VERSION,
             **{part: ["echovideo", part] for part in ("transformer", "vae", "text_encoder", "tokenizer",
                                                       "scheduler", "clip_visual_encoder", "face_encoder")}}
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


def _write_tokenizer(folder: Path) -> int:
    """A T5-style SentencePiece unigram model (pad 0, eos 1, unk 2) trained on the bundled corpus.

    Written as spiece.model + tokenizer_config.json, the released layout, and loaded with
    `T5Tokenizer.from_pretrained` (transformers 5's `T5Tokenizer(vocab_file=...)` ignores the file).
    """
    import sentencepiece as spm

    folder.mkdir(parents=True)
    spm.SentencePieceTrainer.train(
        input=str(CORPUS), model_prefix=str(folder / "spiece"), vocab_size=400, model_type="unigram",
        pad_id=0, eos_id=1, unk_id=2, bos_id=-1, hard_vocab_limit=False, character_coverage=1.0,
        minloglevel=2, num_threads=1, seed_sentencepiece_size=10000,
    )
    (folder / "spiece.vocab").unlink()
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "T5Tokenizer", "model_max_length": 226, "extra_ids": 0,
        "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}))
    return spm.SentencePieceProcessor(model_file=str(folder / "spiece.model")).get_piece_size()


def _write_siglip(folder: Path) -> None:
    """A whole tiny SigLIP (text + vision, as google/siglip-base-patch16-224 is) and its preprocessor config."""
    from transformers import SiglipConfig, SiglipModel

    config = SiglipConfig(
        text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         vocab_size=64, max_position_embeddings=16, pad_token_id=1, bos_token_id=2,
                         eos_token_id=3),
        vision_config=dict(hidden_size=VISION_DIM, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           image_size=224, patch_size=16),
    )
    SiglipModel(config).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "SiglipImageProcessor", "do_resize": True, "size": {"height": 224, "width": 224},
        "resample": 3, "do_rescale": True, "rescale_factor": 1 / 255, "do_normalize": True,
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5]}))
