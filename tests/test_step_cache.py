"""TeaCache step caching and RIFLEx on one device: the skip schedule computed from the published rule, a skipped
step adds the last residual, the cache's bookkeeping leaves computed steps bitwise unchanged, RIFLEx lowers
exactly one temporal frequency, and both options are validated and kept out of old sample ids while off."""

import math

import pytest
import torch
from diffusers.models.embeddings import get_1d_rotary_pos_embed

from echovideo.cli import main
from echovideo.models.rope import RIFLEX_K, ROPE_THETA, released_grid, riflex_axis
from echovideo.sampling import GenerationOptions
from echovideo.speedups.step_cache import (
    COGVIDEOX_COEFFICIENTS,
    IDENTITY,
    cached_steps,
    skipped_steps,
)
from ray_jobs.data.request_identity import describe_request, request_key, typed_settings

OPTS = GenerationOptions(height=32, width=48, frames=9, steps=8, guidance=6.0, seed=3)


def teacache_rule(embeddings: torch.Tensor, threshold: float, coefficients) -> list[bool]:
    """The published rule, written out: c0 x^4 + c1 x^3 + c2 x^2 + c3 x + c4 of the relative L1 change,
    accumulated; skip while under the threshold; first and last steps always run."""
    skips, accumulated = [], 0.0
    for i in range(len(embeddings)):
        if i in (0, len(embeddings) - 1):
            skips.append(False)
            accumulated = 0.0
            continue
        x = float((embeddings[i] - embeddings[i - 1]).abs().mean() / embeddings[i - 1].abs().mean())
        accumulated += sum(c * x ** (len(coefficients) - 1 - n) for n, c in enumerate(coefficients))
        skips.append(accumulated < threshold)
        accumulated = accumulated if skips[-1] else 0.0
    return skips


@pytest.mark.parametrize("coefficients, threshold", [(COGVIDEOX_COEFFICIENTS, 0.1), (IDENTITY, 1.0),
                                                     (IDENTITY, 2.5), (IDENTITY, 0.5)])
def test_the_skip_schedule_follows_the_published_rule(tiny_pipe, coefficients, threshold):
    transformer, scheduler = tiny_pipe.transformer, tiny_pipe.scheduler
    scheduler.set_timesteps(20)
    timesteps = scheduler.timesteps.tolist()
    embeddings = transformer.timestep_embedding(torch.tensor(timesteps), torch.float32).detach()
    got = skipped_steps(transformer, timesteps, threshold, torch.device("cpu"), torch.float32, coefficients)
    assert got == teacache_rule(embeddings, threshold, coefficients)
    assert not got[0] and not got[-1]
    assert skipped_steps(transformer, timesteps, 0.0, torch.device("cpu"), torch.float32) == [False] * 20


def test_a_skipped_step_adds_the_residual_of_the_last_computed_step(tiny_pipe):
    """The hooks on the blocks: a computed step runs every block (attention counted), a skipped one none, and
    the model is its plain self again once the video ends."""
    transformer = tiny_pipe.transformer
    generator = torch.Generator().manual_seed(0)
    latents = torch.randn((2, 3, 32, 4, 6), generator=generator)
    text = torch.randn((2, transformer.config.max_text_seq_length, transformer.config.text_embed_dim),
                       generator=generator)
    t = torch.tensor([500, 500])
    attention_calls = []
    handles = [block.attn1.register_forward_pre_hook(lambda *_: attention_calls.append(1))
               for block in transformer.transformer_blocks]
    try:
        with torch.no_grad():
            plain = transformer(latents, t, text)
            with cached_steps(transformer, [False, True]) as cache:
                computed = transformer(latents, t, text)
                ran = len(attention_calls)
                reused = transformer(latents, t, text)
            after = transformer(latents, t, text)
    finally:
        for handle in handles:
            handle.remove()
    blocks = len(transformer.transformer_blocks)
    assert ran == 2 * blocks and len(attention_calls) == 3 * blocks  # plain, computed, none skipped, after
    assert cache.step == 2
    assert torch.equal(computed, plain)  # storing the residual changes nothing
    assert torch.allclose(reused, plain, rtol=0, atol=1e-5)  # x + (f(x) - x): the blocks' output again
    assert torch.equal(after, plain) and not any(hasattr(b, "_diffusers_hook") and b._diffusers_hook.hooks
                                                 for b in transformer.transformer_blocks)


def test_no_skipped_step_registers_no_hook(tiny_pipe):
    with cached_steps(tiny_pipe.transformer, [False] * 4) as cache:
        assert cache is None


def test_computed_steps_are_bitwise_the_uncached_ones(tiny_pipe, face_path, monkeypatch):
    """A threshold under every step's change skips nothing: the cached loop must equal the plain one bitwise."""
    monkeypatch.setattr(tiny_pipe, "teacache_coefficients", IDENTITY)
    plain = tiny_pipe("a man nods", str(face_path), OPTS, decode=False, progress=False)
    none_skipped = tiny_pipe("a man nods", str(face_path), GenerationOptions(**{**OPTS.__dict__, "cache": 1e-6}),
                             decode=False, progress=False)
    cached = tiny_pipe("a man nods", str(face_path), GenerationOptions(**{**OPTS.__dict__, "cache": 1.0}),
                       decode=False, progress=False)
    assert none_skipped.skipped_steps == 0 and torch.equal(none_skipped.latents, plain.latents)
    assert 0 < cached.skipped_steps < OPTS.steps - 1 and not torch.equal(cached.latents, plain.latents)


def test_riflex_lowers_only_the_intrinsic_temporal_frequency():
    dim, frames = 16, 25  # the released temporal RoPE width (64/4); 97 frames = 25 latent frames
    positions = released_grid(0, frames, frames)
    plain_cos, plain_sin = get_1d_rotary_pos_embed(dim, positions, theta=ROPE_THETA, use_real=True)
    cos, sin = riflex_axis(dim, positions, frames)
    lowered = [2 * (RIFLEX_K - 1), 2 * (RIFLEX_K - 1) + 1]
    others = [c for c in range(dim) if c not in lowered]
    assert torch.equal(cos[:, others], plain_cos[:, others]) and torch.equal(sin[:, others], plain_sin[:, others])
    angle = positions[:, None].double() * (0.9 * 2 * math.pi / frames)
    assert torch.allclose(cos[:, lowered].double(), angle.cos().expand(-1, 2), atol=1e-6)
    assert torch.allclose(sin[:, lowered].double(), angle.sin().expand(-1, 2), atol=1e-6)
    assert not torch.allclose(cos[:, lowered], plain_cos[:, lowered])


def test_riflex_leaves_clips_within_the_intrinsic_period_alone(tiny_pipe):
    transformer = tiny_pipe.transformer
    for latent_frames, changed in ((13, False), (20, False), (25, True), (49, True)):
        plain = transformer.rotary_embedding(latent_frames, 4, 6)
        riflex = transformer.rotary_embedding(latent_frames, 4, 6, riflex=True)
        assert (not torch.equal(plain[0], riflex[0])) is changed, latent_frames


@pytest.mark.parametrize("flag, value", [("--cache", "-0.1"), ("--cache", "nan"), ("--cache", "inf")])
def test_a_bad_cache_threshold_is_exit_2_naming_the_flag(tmp_path, capsys, flag, value):
    code = main(["generate", "--preset", "tiny", "--prompt", "x", "--image", "face.jpg",
                 "--out", str(tmp_path / "x.mp4"), flag, value])
    assert code == 2 and "--cache" in capsys.readouterr().err


def test_options_that_are_off_are_the_same_request_as_options_left_out():
    def key(settings):
        return request_key(describe_request("p", typed_settings(settings), {"job": 0}, None, {}), "h")

    before = {"height": 32, "width": 48, "steps": 2}
    assert key({**before, "cache": 0, "riflex": False}) == key(before)
    assert key({**before, "cache": 0.1}) != key(before)
    assert key({**before, "riflex": True}) != key(before)


def test_a_job_sets_them_per_job_and_per_row(tmp_path, face_path):
    from jobs import job, write_jsonl

    from ray_jobs.data.samples import iter_samples

    rows = [{"prompt": "plain", "identity": str(face_path)},
            {"prompt": "cached", "identity": str(face_path), "cache": 0.15},
            {"prompt": "long", "identity": str(face_path), "frames": 97, "riflex": True},
            {"prompt": "bad", "identity": str(face_path), "cache": "fast"}]
    dataset = write_jsonl(tmp_path / "rows.jsonl", rows)
    samples = {s.prompt or s.error: s for s in iter_samples(job(dataset, tmp_path / "out", **{"generation.cache": 0.1}),
                                                               "cpu")}
    assert samples["plain"].options["cache"] == 0.1 and samples["plain"].options["riflex"] is False
    assert samples["cached"].options["cache"] == 0.15
    assert samples["long"].options["riflex"] is True and samples["long"].options["frames"] == 97
    (bad,) = [s for s in samples.values() if s.error]
    assert "cache" in bad.error and "expected a number" in bad.error
