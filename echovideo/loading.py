"""Load the checkpoint folder (released layout) into pipeline components, each with its library's loader."""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKLCogVideoX,
    CogVideoXDDIMScheduler,
    CogVideoXDPMScheduler,
)
from safetensors.torch import load_file
from transformers import (
    SiglipVisionConfig,
    SiglipVisionModel,
    T5EncoderModel,
    T5Tokenizer,
)

from echovideo.errors import CheckpointError
from echovideo.face import FaceStage, load_face_stage
from echovideo.models import EchoVideoTransformer3DModel
from echovideo.models.cpu_conv3d import use_onednn_conv3d

PARTS = ("transformer", "vae", "text_encoder", "tokenizer", "scheduler", "clip_visual_encoder", "face_encoder")
SCHEDULERS = {"dpm": CogVideoXDPMScheduler, "ddim": CogVideoXDDIMScheduler}


def siglip_processor(folder: Path):
    """SigLIP's image processor; the PIL implementation when torchvision is absent (transformers 5)."""
    try:
        from transformers import (
            SiglipImageProcessorPil as processor_class,  # transformers >= 5
        )
    except ImportError:
        from transformers import SiglipImageProcessor as processor_class
    return processor_class.from_pretrained(str(folder))


def load_siglip_vision(folder: Path) -> SiglipVisionModel:
    """Only the vision tower of a (full, as released) SigLIP checkpoint, strictly.

    `SiglipVisionModel.from_pretrained` on the full model would load fine but print ~200 "unexpected"
    text-tower keys, which hides real problems; filtering by prefix keeps the load strict and quiet.
    """
    config = json.loads((folder / "config.json").read_text())
    model = SiglipVisionModel(SiglipVisionConfig(**config.get("vision_config", config)))
    prefix = "vision_model."
    keep_prefix = any(k.startswith(prefix) for k in model.state_dict())  # differs across transformers versions
    state = {}
    for file in sorted(folder.glob("*.safetensors")):
        state.update({(k if keep_prefix else k[len(prefix):]): v
                      for k, v in load_file(str(file)).items() if k.startswith(prefix)})
    if not state:
        raise CheckpointError(str(folder), "no vision_model.* tensors in *.safetensors",
                              "copy google/siglip-base-patch16-224 (safetensors) into clip_visual_encoder/")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        raise CheckpointError(str(folder), f"SigLIP vision tower mismatch: missing {result.missing_keys[:5]}, "
                              f"unexpected {result.unexpected_keys[:5]}", "use the released SigLIP folder unchanged")
    return model


def load_vae(folder: Path, dtype: torch.dtype = torch.float32) -> AutoencoderKLCogVideoX:
    """The VAE as diffusers loads it (on the CPU), tiled as the released script decodes; load_components adds
    the device and the CPU kernel choice, references (benchmarks, tests) use it as is."""
    vae = AutoencoderKLCogVideoX.from_pretrained(str(folder), use_safetensors=True, torch_dtype=dtype).eval()
    vae.enable_tiling()
    return vae


def decode_in_fp16_under_bf16(vae: AutoencoderKLCogVideoX) -> AutoencoderKLCogVideoX:
    """The released script decodes in fp16 when it samples in bf16: the decoder half (only the decoder; the
    encoder, used for the face latent, stays bf16) is cast once, with no bf16 -> fp16 -> bf16 round trip."""
    if vae.dtype == torch.bfloat16:
        for part in (vae.decoder, vae.post_quant_conv):
            if part is not None:
                part.to(torch.float16)
    return vae


def decoder_dtype(vae: AutoencoderKLCogVideoX) -> torch.dtype:
    """The dtype latents must have to enter the VAE decoder."""
    return next(vae.decoder.parameters()).dtype


@dataclass
class Components:
    """The conditioning models are None when loaded for a rank that only denoises and decodes."""

    transformer: EchoVideoTransformer3DModel
    vae: AutoencoderKLCogVideoX
    scheduler: CogVideoXDPMScheduler | CogVideoXDDIMScheduler
    text_encoder: T5EncoderModel | None = None
    tokenizer: T5Tokenizer | None = None
    vision_model: SiglipVisionModel | None = None
    image_processor: object = None
    face_stage: FaceStage | None = None


def check_checkpoint_folder(root: Path) -> None:
    if not root.is_dir():
        raise CheckpointError("--ckpt", f"{root} is not a folder", "pass the released ckpts/ folder or --preset tiny")
    missing = [p for p in PARTS if not (root / p).is_dir()]
    if missing:
        raise CheckpointError("--ckpt", f"{root} is missing {missing}",
                              "copy the complete released checkpoint (see README: Real weights)")


def load_components(root: Path, device: torch.device, dtype: torch.dtype, scheduler: str = "dpm",
                    conditioning: bool = True) -> Components:
    """Everything on `device` in `dtype` except T5, which stays on the CPU between encodings.

    `conditioning=False` skips T5, SigLIP and the face stage: the ranks of a parallel group other than
    rank 0 receive the conditioning and need only the DiT, the VAE and the scheduler.
    """
    root = Path(root)
    check_checkpoint_folder(root)
    if scheduler not in SCHEDULERS:
        raise CheckpointError("scheduler", f"unknown scheduler {scheduler!r}", f"use one of {sorted(SCHEDULERS)}")
    components = Components(
        transformer=EchoVideoTransformer3DModel.from_pretrained(root / "transformer", torch_dtype=dtype).to(device).eval(),
        vae=use_onednn_conv3d(decode_in_fp16_under_bf16(load_vae(root / "vae", dtype).to(device))),
        scheduler=SCHEDULERS[scheduler].from_pretrained(str(root / "scheduler")),
    )
    if conditioning:
        components.text_encoder = T5EncoderModel.from_pretrained(str(root / "text_encoder"), use_safetensors=True,
                                                                 dtype=dtype)
        components.tokenizer = T5Tokenizer.from_pretrained(str(root / "tokenizer"))
        components.vision_model = load_siglip_vision(root / "clip_visual_encoder").to(device, dtype).eval()
        components.image_processor = siglip_processor(root / "clip_visual_encoder")
        components.face_stage = load_face_stage(root / "face_encoder", device,
                                                components.transformer.config.face_features_embed_dim)
    return components
