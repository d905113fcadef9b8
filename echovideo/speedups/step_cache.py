"""Step caching (TeaCache, arXiv 2411.19108): on some denoising steps, reuse the DiT blocks' last residual
instead of running the blocks.

On CogVideoX-family models TeaCache decides from the timestep embedding alone: the relative L1 change of
`time_embedding(time_proj(t))` between steps, rescaled by a fitted polynomial and accumulated; while the
sum stays under the threshold the step is skipped, otherwise the blocks run and the sum restarts. The first
and last steps always run. Since that depends only on the timesteps, the skipped steps are a function of
(scheduler, steps, threshold) computed once before the loop: every rank and both CFG halves compute the
same list with no collective, so no rank can skip a step another one runs.

On a skipped step the video tokens get the residual cached at the last computed step (blocks' output
minus their input) and then the output head runs as usual. That is done by hooks on the transformer's
blocks (diffusers' `HookRegistry`, as its FirstBlockCache does), registered for one video by `cached_steps`:
the first block adds the residual and the others pass their input through on a skipped step, the last one
keeps the residual on a computed one. Neither the model's forward nor the sequence-parallel engine knows.
TeaCache also caches the text stream's residual; CogVideoX-5B drops the text tokens before its head (its final
LayerNorm is token-wise), so that residual never reaches the output and is not kept.
"""

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from diffusers.hooks import HookRegistry, ModelHook

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


HOOK_NAME = "echovideo_step_cache"


@dataclass
class StepCache:
    """One video's cache, shared by its block hooks: which steps reuse, the step being run, the video residual
    of the last computed step (this rank's own tokens and CFG branch under parallelism)."""

    schedule: list[bool]
    step: int = 0
    skipping: bool = False
    start: torch.Tensor | None = field(default=None, repr=False)
    residual: torch.Tensor | None = field(default=None, repr=False)


class BlockHook(ModelHook):
    """On one transformer block: run it, or on a skipped step stand in for it (the first block adds the cached
    residual, the others pass their input on). The first block reads the step's verdict, the last one keeps
    the residual and ends the step: every path (single device, sequence-parallel, CFG-parallel) runs the
    first block exactly once per denoising step."""

    def __init__(self, cache: StepCache, first: bool, last: bool) -> None:
        super().__init__()
        self.cache, self.first, self.last = cache, first, last

    def new_forward(self, module: torch.nn.Module, *args, **kwargs):
        cache = self.cache
        if self.first:
            cache.skipping = cache.schedule[cache.step]
            cache.start = None if cache.skipping else kwargs["hidden_states"]
        if cache.skipping:
            video, text = kwargs["hidden_states"], kwargs["encoder_hidden_states"]
            out = (video + cache.residual if self.first else video, text)
        else:
            out = self.fn_ref.original_forward(*args, **kwargs)
        if self.last:
            if not cache.skipping:
                cache.residual, cache.start = out[0] - cache.start, None
            cache.step += 1
        return out


@contextmanager
def cached_steps(transformer, schedule: list[bool]) -> Iterator[StepCache | None]:
    """The block hooks for one video's `schedule` (from `skipped_steps`), removed when it ends; none when no
    step is skipped (the loop is then the plain one, bitwise)."""
    if not any(schedule):
        yield None
        return
    cache, blocks = StepCache(list(schedule)), list(transformer.transformer_blocks)
    for index, block in enumerate(blocks):
        hook = BlockHook(cache, first=index == 0, last=index == len(blocks) - 1)
        HookRegistry.check_if_exists_or_initialize(block).register_hook(hook, HOOK_NAME)
    try:
        yield cache
    finally:
        for block in blocks:
            block._diffusers_hook.remove_hook(HOOK_NAME, recurse=False)
