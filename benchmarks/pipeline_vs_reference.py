"""Our single-device pipeline vs the released recipe run naively and vs diffusers' CogVideoX I2V pipeline.

Same process, same components (tiny preset: the EchoVideo architecture with small widths), same sizes:
- ours: `EchoVideoPipeline` (identity features and prompt encodings memoised, IITF once per video, the
  VAE's CPU convolutions on oneDNN: echovideo.models.cpu_conv3d);
- ours-stock: the same with diffusers' VAE as loaded, to tell the memoisation's share from the VAE's;
- naive: the released recipe as its script runs it: face models rebuilt for every video, nothing
  memoised, IITF recomputed inside every denoising step, diffusers' VAE as loaded (T5 resident; on CPU
  offloading changes nothing);
- diffusers: `CogVideoXImageToVideoPipeline` built from the same DiT weights (without IITF, so it does
  less work per step), diffusers' VAE as loaded, T5 and scheduler, given the face photo as its image.
Times per video (first one and the mean of the rest: several videos of one identity) and per denoising
step; the latents of ours and naive are checked equal to fp32 rounding first (the same computation).

    python benchmarks/pipeline_vs_reference.py            # 4 videos, 96x96, 13 frames, 10 steps
    python benchmarks/pipeline_vs_reference.py --smoke    # 2 videos, 32x32, 5 frames, 2 steps: seconds
"""

import argparse
import os
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from reference_models import diffusers_dit  # noqa: E402

from echovideo.face import load_face_stage  # noqa: E402
from echovideo.loading import load_vae  # noqa: E402
from echovideo.pipeline import EchoVideoPipeline  # noqa: E402
from echovideo.presets.tiny import tiny_checkpoint  # noqa: E402
from echovideo.sampling import GenerationOptions  # noqa: E402

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"
PROMPTS = ["a woman smiles at the camera", "a woman walks on a beach", "a woman reads a book",
           "a woman waves hello", "a woman drinks coffee", "a woman laughs"]


class Stages:
    """Seconds per stage of one video: conditioning, denoising loop, VAE decode."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.started = time.perf_counter()

    def mark(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = now - self.started
        self.started = now


def naive_video(pipe: EchoVideoPipeline, root: Path, prompt: str, opts: GenerationOptions) -> tuple:
    """The released script's path for one video (see the module docstring) -> (latents, stage seconds)."""
    stages = Stages()
    pipe.face_stage = load_face_stage(root / "face_encoder", pipe.device)
    pipe.identity_cache.clear()
    pipe.prompt_cache.clear()
    identity = pipe.encode_identity(FACE)
    text = pipe.encode_prompts(prompt, opts.negative_prompt)
    state = pipe.prepare(prompt, FACE, opts, identity, text)
    text = text if opts.use_cfg else text[1:]
    ids, vit = (identity.id_embeds, identity.id_vit_tokens) if opts.use_cfg else \
        (identity.id_embeds[1:], identity.id_vit_tokens[1:])
    stages.mark("conditioning")

    def predict_with_iitf(model_in, t, fused_text, rotary):
        return pipe.transformer(model_in, t, image_rotary_emb=rotary, text_embeds=text, id_embeds=ids,
                                id_vit_tokens=vit)

    latents = pipe.denoise(state, opts, predict=predict_with_iitf, progress=False)
    stages.mark("denoise")
    pipe.decode(latents)
    stages.mark("decode")
    return latents, stages.seconds


def ours_video(pipe: EchoVideoPipeline, prompt: str, opts: GenerationOptions) -> tuple:
    """What `EchoVideoPipeline.__call__` does, stage by stage -> (latents, stage seconds)."""
    stages = Stages()
    state = pipe.prepare(prompt, FACE, opts)
    stages.mark("conditioning")
    latents = pipe.denoise(state, opts, progress=False)
    stages.mark("denoise")
    pipe.decode(latents)
    stages.mark("decode")
    return latents, stages.seconds


def diffusers_pipeline(pipe: EchoVideoPipeline):
    from diffusers import CogVideoXImageToVideoPipeline

    parts = pipe.components
    reference = CogVideoXImageToVideoPipeline(tokenizer=parts.tokenizer, text_encoder=parts.text_encoder,
                                              vae=parts.vae, transformer=diffusers_dit(pipe.transformer),
                                              scheduler=parts.scheduler)
    reference.set_progress_bar_config(disable=True)
    return reference


def interleaved(runs: dict, count: int) -> dict[str, tuple[list[float], dict[str, float]]]:
    """Video i of every pipeline in turn (machine noise hits all alike): seconds per video, and the mean
    seconds per stage over the videos after the first."""
    seconds = {name: [] for name in runs}
    stages = {name: [] for name in runs}
    for index in range(count):
        for name, run in runs.items():
            started = time.perf_counter()
            result = run(index)
            seconds[name].append(time.perf_counter() - started)
            stages[name].append(result[1] if isinstance(result, tuple) else {})
    return {name: (seconds[name], {k: statistics.mean(s[k] for s in (stages[name][1:] or stages[name]))
                                   for k in stages[name][0]}) for name in runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true", help="2 videos at 32x32x5, 2 steps")
    parser.add_argument("--videos", type=int, default=4)
    args = parser.parse_args()
    videos, size, frames, steps = (2, 32, 5, 2) if args.smoke else (args.videos, 96, 13, 10)
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as cache:
        root = tiny_checkpoint(Path(cache))
        pipe = EchoVideoPipeline.from_pretrained(root, device="cpu", dtype="fp32")
        opts = GenerationOptions(height=size, width=size, frames=frames, steps=steps, seed=3)
        naive = EchoVideoPipeline(replace(pipe.components, vae=load_vae(root / "vae")), pipe.device, pipe.dtype)
        mine, released = ours_video(pipe, PROMPTS[0], opts)[0], naive_video(naive, root, PROMPTS[0], opts)[0]
        assert (mine - released).norm() <= 1e-5 * released.norm(), "ours and the naive loop must compute the same"
        reference = diffusers_pipeline(naive)
        ours = EchoVideoPipeline(pipe.components, pipe.device, pipe.dtype)
        ours_stock_vae = EchoVideoPipeline(naive.components, pipe.device, pipe.dtype)
        image = Image.open(FACE).convert("RGB")
        rows = interleaved({
            "ours": lambda i: ours_video(ours, PROMPTS[i % len(PROMPTS)], opts),
            "ours-stock": lambda i: ours_video(ours_stock_vae, PROMPTS[i % len(PROMPTS)], opts),
            "naive": lambda i: naive_video(naive, root, PROMPTS[i % len(PROMPTS)], opts),
            "diffusers": lambda i: reference(
                image=image, prompt=PROMPTS[i % len(PROMPTS)], negative_prompt="", height=size, width=size,
                num_frames=frames, num_inference_steps=steps, guidance_scale=opts.guidance, use_dynamic_cfg=True,
                generator=torch.Generator().manual_seed(3), output_type="np"),
        }, videos)
    print(f"tiny preset, CPU fp32, {videos} videos of one identity, {size}x{size}, {frames} frames, {steps} steps")
    print(f"{'pipeline':<10} {'first (s)':>9} {'rest mean (s)':>13} {'conditioning':>12} {'per step (ms)':>13} "
          f"{'decode (s)':>10} {'all / ours':>10}")
    total_ours = sum(rows["ours"][0])
    for name, (seconds, stages) in rows.items():
        rest = statistics.mean(seconds[1:]) if len(seconds) > 1 else seconds[0]
        split = (f"{stages['conditioning']:>12.3f} {1000 * stages['denoise'] / steps:>13.1f} {stages['decode']:>10.3f}"
                 if stages else f"{'-':>12} {'-':>13} {'-':>10}")
        print(f"{name:<10} {seconds[0]:>9.3f} {rest:>13.3f} {split} {sum(seconds) / total_ours:>10.2f}")
    one = rows["ours"][0][0] / rows["naive"][0][0]
    several = total_ours / sum(rows["naive"][0])
    memoised_only = sum(rows["ours-stock"][0]) / sum(rows["naive"][0])
    print(f"headline: ours / naive reference = {several:.2f} for {videos} videos of one identity (goal <= 0.9), "
          f"{one:.2f} for one video (goal <= 1.0); ours / diffusers = {total_ours / sum(rows['diffusers'][0]):.2f}; "
          f"with diffusers' VAE {memoised_only:.2f}")


if __name__ == "__main__":
    main()
