"""The single-device pipeline against a naive re-implementation of the released recipe."""

import math

import numpy as np
import torch
from diffusers import CogVideoXDDIMScheduler, CogVideoXDPMScheduler

from echovideo.face.geometry import face_latent_image
from echovideo.sampling import GenerationOptions
from tests.released_reference import rope_table

# 32x64: a patch grid whose crop on the base grid starts at row 4, so the released RoPE grid matters.
OPTS = GenerationOptions(height=32, width=64, frames=9, steps=3, guidance=6.0, seed=7)


def released_recipe_latents(pipe, prompt, image, opts):
    """The released loop written naively: IITF inside every forward, t read from the device each step, the
    RoPE table computed from the released formula in numpy."""
    identity = pipe.encode_identity(image)
    text = pipe.encode_prompts(prompt, opts.negative_prompt)
    generator = torch.Generator().manual_seed(opts.seed)
    latents = torch.randn((1, opts.latent_frames, 16, opts.height // 8, opts.width // 8), generator=generator)
    pixels = torch.from_numpy(face_latent_image(identity.aligned_face, opts.height, opts.width))
    face = pipe.vae.encode(pixels.permute(2, 0, 1)[None, :, None]).latent_dist.sample(generator) * 0.7
    face = face.permute(0, 2, 1, 3, 4)
    face = torch.cat([face, torch.zeros((1, opts.latent_frames - 1) + face.shape[2:])], dim=1)
    scheduler = CogVideoXDPMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(opts.steps)
    timesteps, old = scheduler.timesteps, None
    p = pipe.transformer.config.patch_size
    rotary = rope_table(pipe.transformer.config.attention_head_dim, opts.latent_frames, opts.height // 8 // p,
                        opts.width // 8 // p)
    for i, t in enumerate(timesteps):
        model_in = torch.cat([torch.cat([latents] * 2), torch.cat([face] * 2)], dim=2)
        with torch.no_grad():
            pred = pipe.transformer(model_in, t.expand(2), text_embeds=text, id_embeds=identity.id_embeds,
                                    id_vit_tokens=identity.id_vit_tokens, image_rotary_emb=rotary).float()
        uncond, cond = pred.chunk(2)
        n = opts.steps
        scale = 1 + opts.guidance * (1 - math.cos(math.pi * ((n - t.item()) / n) ** 5.0)) / 2
        pred = uncond + scale * (cond - uncond)
        latents, old = scheduler.step(pred, old, t, timesteps[i - 1] if i > 0 else None, latents,
                                      generator=generator, return_dict=False)
    return latents


def test_pipeline_matches_the_released_recipe(tiny_pipe, face_path):
    ours = tiny_pipe("a woman smiles", face_path, OPTS, decode=False, progress=False).latents
    reference = released_recipe_latents(tiny_pipe, "a woman smiles", face_path, OPTS)
    assert ours.shape == (1, 3, 16, 4, 8)
    # Not bitwise: numpy's float32 cos/sin in the reference RoPE table differ from torch's by an ulp or two.
    assert torch.allclose(ours, reference, rtol=0, atol=1e-5)


def test_same_seed_same_latents_other_seed_other_latents(tiny_pipe, face_path):
    runs = [tiny_pipe("a man walks", face_path, OPTS, decode=False, progress=False).latents for _ in range(2)]
    assert torch.equal(runs[0], runs[1])
    other = GenerationOptions(**{**OPTS.__dict__, "seed": 8})
    assert not torch.allclose(runs[0], tiny_pipe("a man walks", face_path, other, decode=False, progress=False).latents)


def test_face_latent_sits_on_frame_zero_only(tiny_pipe, face_path):
    identity = tiny_pipe.encode_identity(face_path)
    face = tiny_pipe.face_latents(identity, OPTS, torch.Generator().manual_seed(0))
    assert face.shape == (1, 3, 16, 4, 8)
    assert face[:, 0].abs().sum() > 0 and face[:, 1:].abs().sum() == 0


def test_options_change_the_result_and_decode_gives_frames(tiny_pipe, face_path):
    base = tiny_pipe("a woman smiles", face_path, OPTS, progress=False)
    assert base.frames.shape == (9, 32, 64, 3) and base.frames.dtype == np.uint8
    variants = [
        GenerationOptions(**{**OPTS.__dict__, "dynamic_cfg": False}),
        GenerationOptions(**{**OPTS.__dict__, "guidance": 1.0}),  # no CFG: batch 1
        GenerationOptions(**{**OPTS.__dict__, "negative_prompt": "blurry"}),
    ]
    for opts in variants:
        latents = tiny_pipe("a woman smiles", face_path, opts, decode=False, progress=False).latents
        assert torch.isfinite(latents).all() and not torch.allclose(latents, base.latents)


def test_ddim_scheduler_runs(tiny_root, face_path):
    from echovideo.pipeline import EchoVideoPipeline

    pipe = EchoVideoPipeline.from_pretrained(tiny_root, device="cpu", dtype="fp32", scheduler="ddim")
    assert isinstance(pipe.scheduler, CogVideoXDDIMScheduler)
    latents = pipe("a woman smiles", face_path, OPTS, decode=False, progress=False).latents
    assert torch.isfinite(latents).all()


def device_scalar_reads(run) -> int:
    """Device scalars `run()` reads: each `.item()`, `int(tensor)` or tensor in an `if` runs
    aten::_local_scalar_dense on any device, a host-device synchronisation on an accelerator."""
    with torch.profiler.profile() as profile:
        run()
    return sum(event.count for event in profile.key_averages() if event.key == "aten::_local_scalar_dense")


def test_the_denoising_loop_reads_no_device_scalar(tiny_pipe, face_path):
    from dataclasses import replace

    from echovideo.pipeline import EchoVideoPipeline

    ddim = CogVideoXDDIMScheduler.from_config(tiny_pipe.scheduler.config)
    for pipe in (tiny_pipe, EchoVideoPipeline(replace(tiny_pipe.components, scheduler=ddim), tiny_pipe.device,
                                              tiny_pipe.dtype)):
        state = pipe.prepare("a woman smiles", face_path, OPTS)
        reads = device_scalar_reads(lambda: pipe.denoise(state, OPTS, progress=False))
        assert reads == 0, f"{type(pipe.scheduler).__name__}: {reads} device scalar reads"
