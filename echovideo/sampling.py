"""Sampling options and the released guidance schedule."""

import functools
import logging
import math
from dataclasses import dataclass

from echovideo.errors import EchoVideoInputError

logger = logging.getLogger(__name__)
TRAINED_FRAMES = 49
# Options added after the first jobs ran, and off by default: left out of content ids while off, so a job
# rendered before they existed keeps its sample ids (and resumes) after an upgrade.
OFF_BY_DEFAULT = {"cache": 0.0, "riflex": False}


def dynamic_cfg_scales(guidance: float, timesteps: list[int], num_steps: int) -> list[float]:
    """The released dynamic CFG: g = 1 + G*(1 - cos(pi*((N - t)/N)**5))/2 with t the timestep VALUE.

    Using the value (999, 979, ...) rather than the step index is what the released code does (as in
    diffusers' CogVideoX pipeline); it gives quasi-random scales in [1, 1+G]. Computed up front on the
    host so the denoising loop never synchronises with the device to read `t`.
    """
    return [1 + guidance * (1 - math.cos(math.pi * ((num_steps - t) / num_steps) ** 5.0)) / 2 for t in timesteps]


def _is_int(value: object) -> bool:
    """An integer that is not a bool (YAML's `true` must not become 1 step)."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class GenerationOptions:
    height: int = 480
    width: int = 848  # the released demo's size (infer.py)
    frames: int = 49
    steps: int = 50
    guidance: float = 6.0
    dynamic_cfg: bool = True
    negative_prompt: str = ""
    seed: int = 42
    fps: int = 16
    cache: float = 0.0  # TeaCache threshold (echovideo.speedups.step_cache); 0 runs every step. 0.1-0.2 published
    riflex: bool = False  # RIFLEx temporal RoPE for clips longer than the trained 49 frames (models.rope)

    def validate(self) -> "GenerationOptions":
        """Raise EchoVideoInputError naming the first bad field; warn for frames beyond training length."""
        for name in ("height", "width"):
            value = getattr(self, name)
            if not _is_int(value) or value < 16 or value % 16:
                raise EchoVideoInputError(f"--{name}", f"{value!r} is not a positive multiple of 16",
                                          f"use e.g. {max(16, round(value / 16) * 16) if _is_int(value) else 480}")
        if not _is_int(self.frames) or self.frames < 1 or (self.frames - 1) % 4:
            nearest = max(1, 4 * round((self.frames - 1) / 4) + 1) if _is_int(self.frames) else 49
            raise EchoVideoInputError("--frames", f"{self.frames!r} is not of the form 4k+1", f"use e.g. {nearest}")
        if not _is_int(self.steps) or self.steps < 1:
            raise EchoVideoInputError("--steps", f"{self.steps!r} must be at least 1", "use e.g. 50")
        if isinstance(self.guidance, bool) or not isinstance(self.guidance, (int, float)) \
                or not math.isfinite(self.guidance) or self.guidance < 0:
            raise EchoVideoInputError("--guidance", f"{self.guidance!r} must be a finite number >= 0", "use e.g. 6.0")
        if not _is_int(self.seed) or not 0 <= self.seed < 2**63:
            raise EchoVideoInputError("--seed", f"{self.seed!r} must be an integer in [0, 2**63)", "use e.g. 42")
        if not _is_int(self.fps) or not 1 <= self.fps <= 240:
            raise EchoVideoInputError("--fps", f"{self.fps!r} must be in 1..240", "use 16 (released)")
        if isinstance(self.cache, bool) or not isinstance(self.cache, (int, float)) \
                or not math.isfinite(self.cache) or self.cache < 0:
            raise EchoVideoInputError("--cache", f"{self.cache!r} must be a TeaCache threshold >= 0",
                                      "use 0 (off), or 0.1 (published ~1.6x) to 0.2 (~2.7x)")
        if not isinstance(self.riflex, bool):
            raise EchoVideoInputError("--riflex", f"{self.riflex!r} is not true/false", "use true or false")
        if not isinstance(self.dynamic_cfg, bool):
            raise EchoVideoInputError("dynamic_cfg", f"{self.dynamic_cfg!r} is not true/false", "use true or false")
        if not isinstance(self.negative_prompt, str):
            raise EchoVideoInputError("--negative-prompt", f"{self.negative_prompt!r} is not text", "quote it")
        if self.frames > TRAINED_FRAMES and not self.riflex:
            _warn_beyond_training(self.frames)
        return self

    @property
    def latent_frames(self) -> int:
        return latent_frames(self.frames)

    @property
    def use_cfg(self) -> bool:
        return self.guidance > 1.0


def latent_frames(frames: int) -> int:
    """Latent frames of a clip: the VAE keeps the first frame alone and folds every 4 after it into one."""
    return (frames - 1) // 4 + 1


@functools.cache
def _warn_beyond_training(frames: int) -> None:
    """Once per process and length: options are validated by the CLI, the pipeline and every job row."""
    logger.warning("%d frames: the released model was trained on %d; quality may drop beyond that "
                   "(RIFLEx, --riflex, is reported to keep quality up to 2x the length)", frames, TRAINED_FRAMES)
