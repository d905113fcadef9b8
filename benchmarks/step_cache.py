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
"""

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from echovideo.pipeline import EchoVideoPipeline  # noqa: E402
from echovideo.presets.tiny import tiny_checkpoint  # noqa: E402
from echovideo.sampling import GenerationOptions  # noqa: E402
from echovideo.step_cache import IDENTITY  # noqa: E402

FACE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "echovideo", "assets",
                    "astronaut.jpg")
THRESHOLDS = (1.0, 2.0, 3.0, 5.0)


def render(pipe, opts: GenerationOptions, repeats: int) -> tuple[float, np.ndarray, int]:
    """(best denoising time of `repeats`, decoded frames, skipped steps)."""
    best = float("inf")
    for _ in range(repeats):
        state = pipe.prepare("a person turns to the camera", FACE, opts)
        started = time.perf_counter()
        latents = pipe.denoise(state, opts, progress=False)
        best = min(best, time.perf_counter() - started)
    return best, pipe.decode(latents), state.skipped_steps


def compare(frames: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    psnr = np.mean([peak_signal_noise_ratio(r, f, data_range=255) for r, f in zip(reference, frames)])
    ssim = np.mean([structural_similarity(r, f, channel_axis=2, data_range=255) for r, f in zip(reference, frames)])
    return float(psnr), float(ssim)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    opts = (GenerationOptions(height=32, width=48, frames=9, steps=8, seed=1) if args.smoke else
            GenerationOptions(height=192, width=320, frames=25, steps=30, seed=1))
    repeats = 1 if args.smoke else 3
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("ECHOVIDEO_CACHE", tmp)
        pipe = EchoVideoPipeline.from_pretrained(tiny_checkpoint(), device="cpu", dtype="fp32")
        pipe.teacache_coefficients = IDENTITY
        render(pipe, opts, 1)  # warm-up
        base_s, reference, _ = render(pipe, opts, repeats)
        print(f"tiny, CPU, {opts.width}x{opts.height}, {opts.frames} frames, {opts.steps} steps; "
              f"uncached denoise {base_s:.2f} s")
        print(f"{'threshold':>9} {'computed':>8} {'time ratio':>10} {'PSNR dB':>8} {'SSIM':>6}")
        worst = 0.0
        for threshold in THRESHOLDS:
            seconds, frames, skipped = render(pipe, replace(opts, cache=threshold), repeats)
            computed = (opts.steps - skipped) / opts.steps
            psnr, ssim = compare(frames, reference)
            worst = max(worst, abs(seconds / base_s - computed))
            print(f"{threshold:>9g} {computed:>8.2f} {seconds / base_s:>10.2f} {psnr:>8.1f} {ssim:>6.3f}")
    print(f"headline: cached / uncached time tracks the computed share of steps within {worst:.2f}")


if __name__ == "__main__":
    main()
