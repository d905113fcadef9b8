"""Speedups applied to the model as hooks for one video, diffusers-style: the pipeline's loop and the
sequence-parallel engine call the transformer as they always do, and each speedup registers what it needs
on the model's modules for the video and takes it off after.

A new speedup is a module here with an `apply(denoising)` context manager, listed in SPEEDUPS: no pipeline
edit. Sequence parallelism is applied the same way, as an attention processor (`parallel.attention`).
"""

from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Callable, ContextManager, Iterator

import torch

from echovideo.sampling import GenerationOptions
from echovideo.speedups import step_cache


@dataclass(frozen=True)
class Denoising:
    """What a speedup may read about the video about to be denoised."""

    transformer: torch.nn.Module
    options: GenerationOptions
    timesteps: list[int]  # host ints, the scheduler's
    device: torch.device
    dtype: torch.dtype
    teacache_coefficients: tuple[float, ...]


@contextmanager
def _step_cache(denoising: Denoising) -> Iterator[dict]:
    """TeaCache (`GenerationOptions.cache`): the skipped steps fixed from the timesteps, then the block hooks."""
    schedule = step_cache.skipped_steps(denoising.transformer, denoising.timesteps, denoising.options.cache,
                                        denoising.device, denoising.dtype, denoising.teacache_coefficients)
    with step_cache.cached_steps(denoising.transformer, schedule):
        yield {"skipped_steps": sum(schedule)}


SPEEDUPS: tuple[Callable[[Denoising], ContextManager[dict]], ...] = (_step_cache,)


@contextmanager
def applied(denoising: Denoising) -> Iterator[dict]:
    """Every speedup on the model for one video; yields what they report (e.g. `skipped_steps`)."""
    with ExitStack() as stack:
        report: dict = {}
        for speedup in SPEEDUPS:
            report.update(stack.enter_context(speedup(denoising)))
        yield report
