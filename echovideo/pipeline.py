"""EchoVideoPipeline: photo + prompt -> video on one device, following the released sampling recipe.

Model / pipeline / scheduler split as in diffusers. What the released script recomputes, this pipeline
computes once: face models are built once per pipeline, identity features and prompt encodings once per
video (callers may cache them across videos), IITF once per video instead of every step.
"""

import hashlib
import logging
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import CogVideoXDPMScheduler
from diffusers.utils.torch_utils import randn_tensor
from tqdm.auto import tqdm

from echovideo.devices import resolve_device, resolve_dtype
from echovideo.encoders import FaceImageEncoder, PromptEncoder
from echovideo.face.geometry import face_latent_image
from echovideo.images import decode_identity_image, load_identity_image
from echovideo.loading import Components, decoder_dtype, load_components
from echovideo.metrics.quality import ClipScores, score_clip
from echovideo.sampling import GenerationOptions, dynamic_cfg_scales
from echovideo.speedups import Denoising, applied
from echovideo.speedups.step_cache import COGVIDEOX_COEFFICIENTS

logger = logging.getLogger(__name__)
CACHED_IDENTITIES = 64  # features of recent photos kept per pipeline (a few MB each on the device)
# Prompt encodings kept on the device, by size: at full size one is 2 x 226 x 4096 bf16 = 3.7 MB, so about 34
# fit; at small sizes hundreds do.
CACHED_PROMPT_BYTES = 128 * 2**20


@dataclass(frozen=True)
class IdentityFeatures:
    """Everything the pipeline needs from one identity photo (reusable across prompts)."""

    aligned_face: np.ndarray  # (512, 512, 3) uint8, parsed
    id_embeds: torch.Tensor  # (2, Da): [negative zeros ; raw ArcFace]
    id_vit_tokens: torch.Tensor  # (2, 196, Dv): [SigLIP(black) ; SigLIP(face)]
    embedding: np.ndarray  # (Da,) fp32 raw ArcFace embedding: the reference of the identity scores


@dataclass
class SamplingState:
    """What the denoising loop needs; a parallel group computes it once and shares it."""

    latents: torch.Tensor  # (1, F_lat, C, h, w) fp32
    face_latents: torch.Tensor  # (1, F_lat, C, h, w) fp32, face on frame 0
    fused_text: torch.Tensor  # (2 or 1, 226, D) IITF output, unconditional first
    generator: torch.Generator  # CPU, already past the noise and face-latent draws
    skipped_steps: int = 0  # set by `denoise`: steps the step cache answered without running the blocks


@dataclass(frozen=True)
class GenerationResult:
    frames: np.ndarray  # (F, H, W, 3) uint8
    latents: torch.Tensor  # (1, F_lat, 16, H/8, W/8) final latents, fp32, CPU
    fps: int
    skipped_steps: int = 0  # steps TeaCache skipped (GenerationOptions.cache)
    scores: ClipScores | None = None  # identity and motion (`echovideo.metrics.quality`), unless turned off


class EchoVideoPipeline:
    teacache_coefficients = COGVIDEOX_COEFFICIENTS  # TeaCache's fit for this model (`speedups.step_cache`)

    def __init__(self, components: Components, device: torch.device, dtype: torch.dtype) -> None:
        self.components = components
        self.transformer = components.transformer
        self.vae = components.vae
        self.scheduler = components.scheduler
        self.face_stage = components.face_stage
        self.has_conditioning = components.text_encoder is not None
        if self.has_conditioning:
            self.prompt_encoder = PromptEncoder(components.tokenizer, components.text_encoder)
            self.face_encoder = FaceImageEncoder(components.image_processor, components.vision_model)
        self.device = device
        self.dtype = dtype
        self.identity_cache: OrderedDict[str, IdentityFeatures] = OrderedDict()
        self.prompt_cache: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()

    @classmethod
    def from_pretrained(
        cls, root: str | Path, device: str = "auto", dtype: str = "auto", scheduler: str = "dpm",
        conditioning: bool = True, compile: bool = False,
    ) -> "EchoVideoPipeline":
        """Load a checkpoint folder in the released layout (the tiny preset writes the same layout).

        `conditioning=False`: DiT, VAE and scheduler only, for parallel ranks that receive the conditioning.
        `compile=True`: `torch.compile` the DiT blocks (compiled on the first video).
        """
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        components = load_components(Path(root), torch_device, torch_dtype, scheduler, conditioning)
        if compile:
            components.transformer.compile_blocks()
        return cls(components, torch_device, torch_dtype)

    # ------------------------------------------------------------------ conditioning
    def encode_identity(self, image: str | Path | bytes | np.ndarray) -> IdentityFeatures:
        """Face stage + SigLIP for a photo (path, encoded bytes or RGB array), memoised by pixel content."""
        if isinstance(image, bytes):
            pixels = decode_identity_image(image, "identity image", "identity")
        else:
            pixels = image if isinstance(image, np.ndarray) else load_identity_image(image)
        key = hashlib.sha256(pixels.tobytes()).hexdigest() + str(pixels.shape)
        if key not in self.identity_cache:
            self.identity_cache[key] = self._analyze_identity(pixels)
            if len(self.identity_cache) > CACHED_IDENTITIES:
                self.identity_cache.popitem(last=False)
        self.identity_cache.move_to_end(key)
        return self.identity_cache[key]

    def _analyze_identity(self, pixels: np.ndarray) -> IdentityFeatures:
        identity = self.face_stage.analyze(pixels)
        black = np.zeros_like(identity.aligned_face)
        vit = self.face_encoder.encode([black, identity.aligned_face], self.device, self.dtype)
        # The released face stage hands the embedding over in fp16, whatever the pipeline dtype.
        arcface = torch.from_numpy(identity.embedding)[None].to(self.device, torch.float16).to(self.dtype)
        return IdentityFeatures(identity.aligned_face, torch.cat([torch.zeros_like(arcface), arcface]), vit,
                                identity.embedding)

    def encode_prompts(self, prompt: str, negative_prompt: str) -> torch.Tensor:
        """(2, 226, D): [negative ; prompt] T5 tokens, memoised (a job renders one prompt for many people)."""
        key = (prompt, negative_prompt)
        if key not in self.prompt_cache:
            self.prompt_cache[key] = self.prompt_encoder.encode([negative_prompt, prompt], self.device, self.dtype)
            while len(self.prompt_cache) > 1 and \
                    sum(t.nbytes for t in self.prompt_cache.values()) > CACHED_PROMPT_BYTES:
                self.prompt_cache.popitem(last=False)
        self.prompt_cache.move_to_end(key)
        return self.prompt_cache[key]

    def fuse(self, identity: IdentityFeatures, text_embeds: torch.Tensor, use_cfg: bool) -> torch.Tensor:
        """IITF once per video: (2 or 1, 226, D), unconditional first."""
        with torch.no_grad():
            fused = self.transformer.fuse_identity_text(text_embeds, identity.id_embeds, identity.id_vit_tokens)
        return fused if use_cfg else fused[1:]

    @torch.no_grad()
    def face_latents(self, identity: IdentityFeatures, opts: GenerationOptions, generator: torch.Generator):
        """Shallow face latent: VAE(padded, resized face) * scaling as latent frame 0, zeros elsewhere."""
        image = torch.from_numpy(face_latent_image(identity.aligned_face, opts.height, opts.width))
        image = image.permute(2, 0, 1)[None, :, None].to(self.device, self.vae.dtype)  # (1, 3, 1, H, W)
        latent = self.vae.encode(image).latent_dist.sample(generator) * self.vae.config.scaling_factor
        latent = latent.permute(0, 2, 1, 3, 4).float()  # (1, 1, C, h, w)
        padding = latent.new_zeros((1, opts.latent_frames - 1) + latent.shape[2:])
        return torch.cat([latent, padding], dim=1)

    # ------------------------------------------------------------------ sampling
    def latent_shape(self, opts: GenerationOptions) -> tuple[int, ...]:
        """(1, F_lat, C, h, w) of the noise and face latents."""
        return (1, opts.latent_frames, self.vae.config.latent_channels, opts.height // 8, opts.width // 8)

    def initial_noise(self, opts: GenerationOptions, generator: torch.Generator) -> torch.Tensor:
        """Drawn in the pipeline dtype as released (bf16 noise is the fp32 draw rounded; the generator advances
        the same), then held in fp32."""
        noise = randn_tensor(self.latent_shape(opts), generator=generator, device=self.device, dtype=self.dtype)
        return noise.float() * self.scheduler.init_noise_sigma

    def decode(self, latents: torch.Tensor, vae_decode=None) -> np.ndarray | None:
        """Latents (1, F, C, h, w) -> uint8 frames (4(F-1)+1, H, W, 3) with the tiled VAE.

        `vae_decode(z)` maps VAE latents to pixels (diffusers' decode by default; a parallel decode
        returns None on the ranks that do not assemble the video, and so does this method there).
        The CogVideoX VAE yields 4(F-1)+1 frames for an odd latent count F (49 frames: F = 13) but 4F
        for an even one; the surplus trailing frames are dropped so every 4k+1 request gets 4k+1 frames.
        """
        frames = 4 * (latents.shape[1] - 1) + 1
        vae_decode = vae_decode or (lambda z: self.vae.decode(z).sample)
        with torch.no_grad():
            z = latents.permute(0, 2, 1, 3, 4).to(decoder_dtype(self.vae))
            video = vae_decode(1 / self.vae.config.scaling_factor * z)  # the released arithmetic, in this order
        if video is None:
            return None
        # diffusers' postprocess as released: [0, 1] in the decoder's dtype, then x255 and rounded in fp32.
        video = (video[0, :, :frames] / 2 + 0.5).clamp(0, 1).float().mul(255).round().to(torch.uint8)  # (3, F, H, W)
        return video.permute(1, 2, 3, 0).cpu().numpy()

    def prepare(
        self,
        prompt: str,
        image: str | Path | bytes | np.ndarray,
        opts: GenerationOptions,
        identity: IdentityFeatures | None = None,
        text_embeds: torch.Tensor | None = None,
    ) -> SamplingState:
        """Conditioning and initial latents; consumes the generator in the released order."""
        if not self.has_conditioning:
            raise RuntimeError("this pipeline was loaded with conditioning=False (a parallel rank other than 0)")
        identity = identity if identity is not None else self.encode_identity(image)
        text_embeds = text_embeds if text_embeds is not None else self.encode_prompts(prompt, opts.negative_prompt)
        generator = torch.Generator("cpu").manual_seed(opts.seed)  # order: noise, face latent, scheduler
        latents = self.initial_noise(opts, generator)
        return SamplingState(
            latents=latents,
            face_latents=self.face_latents(identity, opts, generator),
            fused_text=self.fuse(identity, text_embeds, opts.use_cfg),
            generator=generator,
        )

    def denoise(self, state: SamplingState, opts: GenerationOptions, predict=None, progress: bool = True,
                on_step: Callable[[int], None] | None = None):
        """The released loop: v-prediction, (dynamic) CFG combined in fp32, scheduler steps on fp32 latents.

        `predict(model_in, t, fused_text, rotary)` is the DiT forward: the transformer itself by default, a
        sequence-parallel engine with the same signature under parallelism. `on_step(i)` runs after each step
        (a job's worker uses it as its no-progress clock).

        Speedups (`echovideo.speedups`: TeaCache with `opts.cache`) are hooks on the transformer for this
        video; the steps TeaCache skips are fixed before the loop from the timesteps alone, so every rank of
        a parallel group skips the same ones.
        """
        predict = predict or self.transformer
        rotary = self.transformer.rotary_embedding(opts.latent_frames, opts.height // 8, opts.width // 8, self.device,
                                                   riflex=opts.riflex)
        self.scheduler.set_timesteps(opts.steps, device=self.device)
        timesteps = self.scheduler.timesteps
        host_timesteps = timesteps.tolist()  # one device-to-host copy, before the loop
        scales = (dynamic_cfg_scales(opts.guidance, host_timesteps, opts.steps) if opts.dynamic_cfg
                  else [opts.guidance] * opts.steps)
        denoising = Denoising(self.transformer, opts, host_timesteps, self.device, self.dtype,
                              self.teacache_coefficients)
        with applied(denoising) as report:
            state.skipped_steps = report.get("skipped_steps", 0)
            if opts.cache:
                logger.info("TeaCache %g: %d of %d steps reuse the cached residual", opts.cache,
                            state.skipped_steps, opts.steps)
            return self._loop(state, opts, predict, rotary, (timesteps, host_timesteps), scales, progress, on_step)

    def _loop(self, state: SamplingState, opts: GenerationOptions, predict, rotary, steps: tuple, scales: list[float],
              progress: bool, on_step: Callable[[int], None] | None) -> torch.Tensor:
        """The steps themselves; `steps`: the scheduler's timesteps on the device and as host ints."""
        timesteps, host_timesteps = steps
        latents, batch, old_pred = state.latents, state.fused_text.shape[0], None
        for i, t in enumerate(tqdm(timesteps, disable=not progress, desc="denoise", leave=False)):
            model_in = torch.cat([latents, state.face_latents], dim=2).expand(batch, -1, -1, -1, -1).to(self.dtype)
            with torch.no_grad():
                pred = predict(model_in, t.expand(batch), state.fused_text, rotary).float()
            if opts.use_cfg:
                uncond, cond = pred.chunk(2)
                pred = uncond + scales[i] * (cond - uncond)
            # Host ints, not device tensors: the scheduler indexes a CPU table and branches on them, which
            # with a device scalar forces a host-device synchronisation every step.
            previous = host_timesteps[i - 1] if i > 0 else None
            latents, old_pred = self.step(pred, old_pred, host_timesteps[i], previous, latents, state.generator)
            if on_step is not None:
                on_step(i)
        return latents

    def __call__(
        self,
        prompt: str,
        image: str | Path | bytes | np.ndarray,
        options: GenerationOptions | None = None,
        identity: IdentityFeatures | None = None,
        text_embeds: torch.Tensor | None = None,
        progress: bool = True,
        decode: bool = True,
        scores: bool = True,
    ) -> GenerationResult:
        """`scores=False` skips the quality scores (`echovideo.metrics.quality`; they need the decoded frames)."""
        opts = (options or GenerationOptions()).validate()
        identity = identity if identity is not None else self.encode_identity(image)
        state = self.prepare(prompt, image, opts, identity, text_embeds)
        latents = self.denoise(state, opts, progress=progress)
        frames = self.decode(latents) if decode else np.zeros((0,), np.uint8)
        return GenerationResult(frames=frames, latents=latents.cpu(), fps=opts.fps, skipped_steps=state.skipped_steps,
                                scores=self.score(frames, opts.fps, identity) if decode and scores else None)

    def score(self, frames: np.ndarray, fps: int, identity: "IdentityFeatures | str | Path | bytes | np.ndarray"
              ) -> ClipScores:
        """A clip's quality scores against its identity (features, or the photo: its features are memoised)."""
        if not isinstance(identity, IdentityFeatures):
            identity = self.encode_identity(identity)
        return score_clip(frames, fps, self.face_stage, identity.embedding)

    def step(self, pred, old_pred, t, prev_t, latents, generator):
        """One scheduler step; the DPM scheduler draws generator noise, DDIM does not."""
        if isinstance(self.scheduler, CogVideoXDPMScheduler):  # multistep and stochastic
            return self.scheduler.step(pred, old_pred, t, prev_t, latents, generator=generator, return_dict=False)
        return self.scheduler.step(pred, t, latents, generator=generator, return_dict=False)[0], None
