"""Quality scores on clips whose right answer is known: the identity photo itself, a face-free image, a static
clip, a pattern moving a known number of pixels; VBench's sampling, threshold and counting rule at its
boundary, computed from the published numbers."""

import cv2
import numpy as np
import pytest
import torch

from echovideo.face import load_face_stage
from echovideo.images import load_identity_image
from echovideo.metrics.quality import frame_stride, motion_threshold, score_clip
from echovideo.presets.tiny import tiny_checkpoint

PHOTO = "echovideo/assets/astronaut.jpg"


@pytest.fixture(scope="module")
def stage_and_reference():
    stage = load_face_stage(tiny_checkpoint() / "face_encoder", torch.device("cpu"))
    photo = load_identity_image(PHOTO)
    return stage, stage.analyze(photo).embedding, photo


def textured(height: int, width: int, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return cv2.GaussianBlur(noise, (5, 5), 0)


def panning(steps_px: list[int], height: int = 64, width: int = 96) -> np.ndarray:
    """Frames of one texture, each shifted left by the given number of pixels from the one before."""
    offsets = np.concatenate([[0], np.cumsum(steps_px)])
    pattern = textured(height, width + int(offsets[-1]))
    return np.stack([pattern[:, o:o + width] for o in offsets])


def test_vbench_sampling_and_threshold_for_echovideo_output():
    picked = list(range(49))[::frame_stride(16)]  # every round(16/8) = 2nd frame
    assert picked == list(range(0, 49, 2)) and len(picked) == 25
    assert motion_threshold(480, 848, 16) == pytest.approx(11.25)
    assert motion_threshold(480, 848, 4) == pytest.approx(22.5)  # below 8 fps the threshold grows by 8/fps
    assert frame_stride(8) == 1 and frame_stride(30) == 4 and frame_stride(4) == 1


def test_a_clip_of_the_identity_photo_scores_one_with_no_variation_and_every_face_found(stage_and_reference):
    stage, reference, photo = stage_and_reference
    scores = score_clip(np.stack([photo] * 9), 8, stage, reference)
    assert scores.identity_average == pytest.approx(1.0, abs=1e-5)
    assert scores.identity_variation == pytest.approx(0.0, abs=1e-6)
    assert scores.face_share == 1.0 and scores.frames_scored == 9 and not scores.dynamic


def test_frames_without_a_face_count_as_zero_instead_of_being_skipped(stage_and_reference):
    stage, reference, photo = stage_and_reference
    blank = np.full_like(photo, 128)
    assert score_clip(np.stack([blank] * 5), 8, stage, reference).face_share == 0.0
    half = score_clip(np.stack([photo, blank] * 4), 8, stage, reference)
    assert half.face_share == 0.5
    assert half.identity_average == pytest.approx(0.5, abs=1e-5)  # skipping would report 1.0
    assert half.identity_variation == pytest.approx(0.5, abs=1e-5)
    assert half.similarities[1::2] == (0.0,) * 4


def test_a_static_clip_is_not_dynamic_and_a_moving_pattern_is():
    static = score_clip(np.stack([textured(64, 96)] * 17), 8)
    assert static.motion < 0.1 and not static.dynamic
    moving = score_clip(panning([4] * 16), 8)  # 4 px a frame; the threshold at 64 px is 1.5 px
    assert moving.motion == pytest.approx(4.0, abs=0.6) and moving.dynamic
    assert moving.identity_average is None and moving.face_share is None  # no identity given: motion only


@pytest.mark.parametrize("moving_pairs, dynamic", [(4, True), (3, False)])
def test_dynamic_needs_round_4n_over_16_moving_pairs(moving_pairs, dynamic):
    """16 sampled frames need round(4*16/16) = 4 pairs above the threshold."""
    steps = [4] * moving_pairs + [0] * (15 - moving_pairs)
    assert score_clip(panning(steps), 8).dynamic is dynamic


@pytest.mark.parametrize("quality, field, message", [
    ({"min_identity": 1.5}, "quality.min_identity", "outside 0..1"),
    ({"min_face_share": -0.1}, "quality.min_face_share", "outside 0..1"),
    ({"min_identity": 0.3, "scores": False}, "quality.min_identity", "quality.scores: false turns off"),
    ({"min_identity": "high"}, "quality.min_identity", "expected int or float"),
])
def test_a_quality_gate_that_cannot_work_is_refused_naming_its_key(tmp_path, quality, field, message):
    from jobs import job

    from echovideo.errors import EchoVideoInputError

    with pytest.raises(EchoVideoInputError, match=message) as err:
        job(tmp_path / "rows.jsonl", tmp_path / "out", **{f"quality.{k}": v for k, v in quality.items()})
    assert err.value.field == field


def test_flow_pairs_on_threads_give_the_sequential_result():
    from echovideo.metrics.quality import motion_scores, pair_motion

    clip = panning([1, 5, 2, 7, 3, 0, 4, 6])
    sequential = [pair_motion(a, b) for a, b in zip(clip[:-1], clip[1:])]
    assert motion_scores(clip, 8)[0] == round(float(np.mean(sequential)), 4)
