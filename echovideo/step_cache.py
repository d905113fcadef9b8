"""Step caching (TeaCache, arXiv 2411.19108): on some denoising steps, reuse the DiT blocks' last residual
instead of running the blocks.

On CogVideoX-family models TeaCache decides from the timestep embedding alone: the relative L1 change of
`time_embedding(time_proj(t))` between steps, rescaled by a fitted polynomial and accumulated; while the
sum stays under the threshold the step is skipped, otherwise the blocks run and the sum restarts. The first
and last steps always run. Since that depends only on the timesteps, the skipped steps are a function of
(scheduler, steps, threshold) computed once before the loop: every rank and both CFG halves compute the
same list with no collective, so no rank can skip a step another one runs.

On a skipped step the video tokens get the residual cached at the last computed step (blocks' output
minus their input) and then the output head runs as usual. TeaCache also caches the text stream's
residual; CogVideoX-5B drops the text tokens before its head (its final LayerNorm is token-wise), so that
residual never reaches the output and is not kept.
"""

from dataclasses import dataclass

import numpy as np
import torch

# TeaCache's fit for CogVideoX-5B; its README applies them to ConsisID (a CogVideoX-5B identity model) as is.
# The fit holds for the small per-step changes of a trained model's embedding; far outside it (the tiny
# preset's random embedding changes ~0.9 a step) the polynomial is hugely negative and every step but the
# first and last is skipped. IDENTITY (the raw relative change) is what tests and benchmarks use there.
COGVIDEOX_COEFFICIENTS = (-1.53880483e+03, 8.43202495e+02, -1.34363087e+02, 7.97131516e+00, -5.23162339e-02)
IDENTITY = (1.0, 0.0)


def skipped_steps(transformer, timesteps: list[int], threshold: float, device: torch.device,
                  dtype: torch.dtype, coefficients: tuple[float, ...] = COGVIDEOX_COEFFICIENTS) -> list[bool]:
    """For each step, whether it reuses the cached residual (all False when `threshold` is 0). In the model's
    dtype, as TeaCache computes it."""
    count = len(timesteps)
    if threshold <= 0:
        return [False] * count
    rescale = np.poly1d(coefficients)
    with torch.no_grad():
        embeddings = transformer.timestep_embedding(torch.tensor(timesteps, device=device), dtype)
        previous = embeddings[:-1]
        changes = ((embeddings[1:] - previous).abs().mean(dim=1) / previous.abs().mean(dim=1)).float()
    skips, accumulated = [False], 0.0
    for i, change in enumerate(changes.cpu().tolist(), 1):  # one copy to the host, not a read per step
        accumulated += float(rescale(change))
        skip = i < count - 1 and accumulated < threshold
        accumulated = accumulated if skip else 0.0
        skips.append(skip)
    return skips


@dataclass
class ResidualCache:
    """One video's cache: whether this step reuses, and the video residual of the last computed step."""

    skip: bool = False
    video: torch.Tensor | None = None
