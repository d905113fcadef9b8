"""How far each fidelity fix moves the final latents, at every released resolution (issue 12).

Tiny preset, fp32, the same seed and photo: the current pipeline against itself with one or all of the
earlier behaviours put back in the same process:
- rope: diffusers >= 0.32's RoPE grid (`get_3d_rotary_pos_embed`, what the earlier code called);
- pad: the face padded to the target aspect with round() instead of the released int();
- fp16: the ArcFace embedding handed to the model unrounded instead of rounded to fp16 as released;
- all: those three plus the token-axis IITF Linears on strided views (the earlier code, whole).
Prints the relative L2 change of the final latents, ||old - new|| / ||new||, per resolution.

    python benchmarks/fidelity_shift.py            # the five released sizes + 720x480, 13 frames, 10 steps
    python benchmarks/fidelity_shift.py --smoke    # 48x64 and 32x48, 5 frames, 2 steps: seconds
"""

import argparse
import contextlib
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from diffusers.models.embeddings import get_3d_rotary_pos_embed

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import echovideo.models.transformer as transformer_module  # noqa: E402
import echovideo.pipeline as pipeline_module  # noqa: E402
from echovideo.face.geometry import face_latent_image  # noqa: E402
from echovideo.images import load_identity_image  # noqa: E402
from echovideo.models.rope import crop_region  # noqa: E402
from echovideo.pipeline import EchoVideoPipeline  # noqa: E402
from echovideo.presets.tiny import tiny_checkpoint  # noqa: E402
from echovideo.sampling import GenerationOptions  # noqa: E402

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"
PROMPT = "a woman smiles at the camera in a sunny park"
FULL_SIZES = [(480, 640), (480, 848), (480, 480), (848, 480), (640, 480), (480, 720)]
SMOKE_SIZES = [(48, 64), (32, 48)]  # both drifts (crop from column 2; 682.7 wide), then neither


@contextlib.contextmanager
def drifted_rope(pipe: EchoVideoPipeline):
    """The transformer's RoPE table from diffusers' current `get_3d_rotary_pos_embed` grid."""
    model = pipe.transformer

    def rotary(frames, height, width, device="cpu", riflex=False):  # RIFLEx is never asked for here
        p = model.config.patch_size
        rows, cols = height // p, width // p
        crops = crop_region(rows, cols, model.config.sample_height // p, model.config.sample_width // p)
        return get_3d_rotary_pos_embed(model.config.attention_head_dim, crops, (rows, cols), frames, device=device)

    model.rotary_embedding = rotary
    try:
        yield
    finally:
        del model.rotary_embedding


def rounded_padding_face_latent_image(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """The earlier padding: the new long side rounded (683 at 480x640, 905 at 480x848)."""
    new_w = max(512, round(512 * width / height))
    new_h = max(512, round(512 * height / width))
    canvas = np.zeros((new_h, new_w, 3), np.uint8)
    top, left = (new_h - 512) // 2, (new_w - 512) // 2
    canvas[top:top + 512, left:left + 512] = face
    return face_latent_image(canvas, height, width)  # no further padding: already at the aspect (+-1 px)


@contextlib.contextmanager
def patched(module, name: str, value):
    original = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, original)


def strided_token_axis(linear, tokens):
    return linear(tokens.transpose(1, 2)).transpose(1, 2)


def run(pipe, opts, variant: str, unrounded_identity) -> torch.Tensor:
    with contextlib.ExitStack() as stack:
        if variant in ("rope", "all"):
            stack.enter_context(drifted_rope(pipe))
        if variant in ("pad", "all"):
            stack.enter_context(patched(pipeline_module, "face_latent_image", rounded_padding_face_latent_image))
        if variant == "all":
            stack.enter_context(patched(transformer_module, "_on_token_axis", strided_token_axis))
        identity = unrounded_identity if variant in ("fp16", "all") else None
        return pipe(PROMPT, FACE, opts, identity=identity, decode=False, progress=False).latents


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    sizes = SMOKE_SIZES if args.smoke else FULL_SIZES
    frames, steps = (5, 2) if args.smoke else (13, 10)
    pipe = EchoVideoPipeline.from_pretrained(tiny_checkpoint(), device="cpu", dtype="fp32")
    identity = pipe.encode_identity(FACE)
    raw = torch.from_numpy(pipe.face_stage.analyze(load_identity_image(FACE)).embedding)
    unrounded = replace(identity, id_embeds=torch.stack([torch.zeros_like(raw), raw]))
    variants = ("rope", "pad", "fp16", "all")
    print(f"relative L2 change of the final latents, tiny preset fp32, {frames} frames, {steps} steps, seed 42")
    print(f"{'H x W':>9} " + " ".join(f"{v:>9}" for v in variants))
    worst = 0.0
    for height, width in sizes:
        opts = GenerationOptions(height=height, width=width, frames=frames, steps=steps)
        new = run(pipe, opts, "new", unrounded)
        shifts = [float((run(pipe, opts, v, unrounded) - new).norm() / new.norm()) for v in variants]
        worst = max(worst, shifts[-1])
        print(f"{height:>4}x{width:<4} " + " ".join(f"{s:9.2e}" for s in shifts), flush=True)
    print(f"headline: the earlier code's latents differ from the released recipe's by up to {worst:.2e} (relative L2)")


if __name__ == "__main__":
    main()
