"""TeaCache step caching: speed ratio cached / uncached, and how far the cached video moves from the uncached one.

One process, tiny preset on CPU, the same prompt, photo and seed at each threshold; the uncached run is the
reference. Timed: the denoising loop only (conditioning and decode are the same work either way). Quality:
PSNR and SSIM (scikit-image) of the decoded frames against the uncached frames, mean over frames.

The tiny model's random timestep embedding changes ~0.9 a step, far outside the range TeaCache's
CogVideoX-5B polynomial was fitted on (there it is hugely negative and every middle step is skipped), so
the thresholds here apply to the raw relative change (`step_cache.IDENTITY`). What this can show on CPU
is that the time tracks the fraction of steps computed; the quality figures of a random model say
nothing about real videos (see the published anchors in RESULTS.md).

    python benchmarks/step_cache.py            # 320x192, 25 frames, 30 steps
    python benchmarks/step_cache.py --smoke    # 32x48, 9 frames, 8 steps
    python benchmarks/step_cache.py --ckpt ckpts --device cuda   # real weights: 720x480, 49 frames, 50 steps,
                                                                 # TeaCache's own polynomial, thresholds 0.1-0.3
"""

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from echovideo.pipeline import EchoVideoPipeline  # noqa: E402
from echovideo.presets.tiny import tiny_checkpoint  # noqa: E402
from echovideo.sampling import GenerationOptions  # noqa: E402
from echovideo.speedups.step_cache import IDENTITY  # noqa: E402

FACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "echovideo", "assets",
                    "astronaut.jpg")
THRESHOLDS = (1.0, 2.0, 3.0, 5.0)  # on the raw relative change (tiny preset)
REAL_THRESHOLDS = (0.1, 0.15, 0.2, 0.3)  # on TeaCache's CogVideoX-5B polynomial (real weights)


def render(pipe, opts: GenerationOptions, repeats: int) -> tuple[float, np.ndarray, int]:
    """(best denoising time of `repeats`, decoded frames, skipped steps)."""
    best = float("inf")
    for _ in range(repeats):
        state = pipe.prepare("a person turns to the camera", FACE, opts)
        started = time.perf_counter()
        latents = pipe.denoise(state, opts, progress=False)
        if latents.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return best, pipe.decode(latents), state.skipped_steps


def compare(frames: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    psnr = np.mean([peak_signal_noise_ratio(r, f, data_range=255) for r, f in zip(reference, frames)])
    ssim = np.mean([structural_similarity(r, f, channel_axis=2, data_range=255) for r, f in zip(reference, frames)])
    return float(psnr), float(ssim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--ckpt", help="the released ckpts/ folder: real weights, released size")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    opts = (GenerationOptions(height=32, width=48, frames=9, steps=8, seed=1) if args.smoke else
            GenerationOptions(height=480, width=720, seed=1) if args.ckpt else
            GenerationOptions(height=192, width=320, frames=25, steps=30, seed=1))
    repeats = 1 if args.smoke or args.ckpt else 3
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ECHOVIDEO_CACHE", tmp)
        pipe = EchoVideoPipeline.from_pretrained(args.ckpt or tiny_checkpoint(), device=args.device,
                                                 dtype="auto" if args.ckpt else "fp32")
        if not args.ckpt:
            pipe.teacache_coefficients = IDENTITY
        thresholds = REAL_THRESHOLDS if args.ckpt else THRESHOLDS
        if not args.ckpt:
            render(pipe, opts, 1)  # warm-up
        base_s, reference, _ = render(pipe, opts, repeats)
        print(f"{'real weights' if args.ckpt else 'tiny'}, {args.device}, {opts.width}x{opts.height}, "
              f"{opts.frames} frames, {opts.steps} steps; uncached denoise {base_s:.2f} s")
        print(f"{'threshold':>9} {'computed':>8} {'time ratio':>10} {'PSNR dB':>8} {'SSIM':>6}")
        worst = 0.0
        for threshold in thresholds:
            seconds, frames, skipped = render(pipe, replace(opts, cache=threshold), repeats)
            computed = (opts.steps - skipped) / opts.steps
            psnr, ssim = compare(frames, reference)
            worst = max(worst, abs(seconds / base_s - computed))
            print(f"{threshold:>9g} {computed:>8.2f} {seconds / base_s:>10.2f} {psnr:>8.1f} {ssim:>6.3f}")
    print(f"headline: cached / uncached time tracks the computed share of steps within {worst:.2f}")


if __name__ == "__main__":
    main()
