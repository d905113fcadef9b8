"""Per-clip quality scores, from the frames a render already holds: identity and motion.

- Identity (FaceSim-Arc, as ConsisID and EchoVideo report it): per sampled frame, max(0, cos) between the
  identity photo's embedding and the largest face's, both from the pipeline's own face stage (the embedding
  that conditions the model). A frame without a face scores 0 and counts: skipping it, as ConsisID's eval
  does, hides the failure this score exists to catch. Identity Average = mean, Identity Variation = std.
- Motion (VBench's Dynamic Degree): every max(1, round(fps/8))-th frame; per consecutive pair the mean of
  the top 5% dense-flow magnitudes; dynamic when at least round(4 * n/16) pairs exceed
  max(1, 8/fps) * 6.0 * min(H, W)/256 px. VBench uses RAFT; we use OpenCV's Farneback (weight-free, as
  OpenS2V-Eval does), so absolute motion differs a little from RAFT's while the rule is VBench's.

Both scores are sampled on the same frames (the Dynamic Degree stride: 25 of a 49-frame 16 fps clip).
Flow pairs are computed on a few threads (Farneback runs on one core and releases the GIL; each pair is
independent, so the result is the same in any order).
"""

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from echovideo.face.stage import FaceStage

TOP_SHARE = 0.05  # VBench: the mean of the top 5% of flow magnitudes per pair
FLOW_THRESHOLD_AT_256 = 6.0  # px at min(H, W) = 256, 8 fps
# OpenCV's documented Farneback settings: pyramid scale, levels, window, iterations, poly_n, poly_sigma, flags.
FARNEBACK = (0.5, 3, 15, 3, 5, 1.2, 0)
# While rank 0 scores, its replica's other ranks wait: a few of the node's cores shorten that wait.
SCORE_THREADS = min(8, len(os.sched_getaffinity(0)))


@dataclass(frozen=True)
class ClipScores:
    """One clip's scores; `identity_*` are None when there is no identity to compare with."""

    identity_average: float | None
    identity_variation: float | None
    face_share: float | None  # frames with a detected face / frames scored
    motion: float  # mean over pairs of the top-5% flow magnitude, in px
    dynamic: bool  # VBench's Dynamic Degree of this one clip
    frames_scored: int
    similarities: tuple[float, ...] = ()  # per scored frame, 0 where no face was found

    def as_dict(self) -> dict:
        return {**asdict(self), "similarities": list(self.similarities)}


def describe_scores(scores: dict) -> str:
    """One line for people: identity 0.52 +- 0.07, face in 100% of frames, motion 12.3 px (dynamic)."""
    motion = f"motion {scores['motion']:.1f} px ({'dynamic' if scores['dynamic'] else 'static'})"
    if scores.get("identity_average") is None:
        return motion
    return (f"identity {scores['identity_average']:.3f} +- {scores['identity_variation']:.3f}, face in "
            f"{100 * scores['face_share']:.0f}% of frames, {motion}")


def frame_stride(fps: int) -> int:
    """VBench's frame sampling for Dynamic Degree: every max(1, round(fps/8))-th frame from the first."""
    return max(1, round(fps / 8))


def motion_threshold(height: int, width: int, fps: int) -> float:
    """The per-pair flow (px) above which a pair moves: 11.25 px for 480x848 at 16 fps."""
    return max(1.0, 8.0 / fps) * FLOW_THRESHOLD_AT_256 * min(height, width) / 256.0


def top_flow(u: np.ndarray, v: np.ndarray) -> float:
    """VBench's `get_score`: the mean of the top 5% of flow magnitudes (int(h * w * 0.05) of them), in px."""
    magnitude = np.sqrt(np.square(u) + np.square(v)).ravel()
    top = max(1, int(magnitude.size * TOP_SHARE))
    return float(np.partition(magnitude, magnitude.size - top)[-top:].mean())


def pair_motion(first: np.ndarray, second: np.ndarray) -> float:
    """Top-5% flow between two RGB frames by OpenCV's Farneback (VBench uses RAFT, which needs weights:
    echovideo/metrics/raft.py takes them as ONNX)."""
    flow = cv2.calcOpticalFlowFarneback(cv2.cvtColor(first, cv2.COLOR_RGB2GRAY),
                                        cv2.cvtColor(second, cv2.COLOR_RGB2GRAY), None, *FARNEBACK)
    return top_flow(flow[..., 0], flow[..., 1])


def motion_scores(frames: np.ndarray, fps: int, pair_score=pair_motion) -> tuple[float, bool]:
    """(mean top-5% flow over the sampled pairs, dynamic) for (F, H, W, 3) uint8 frames; `pair_score`
    measures one pair of frames (Farneback by default, RAFT given its weights)."""
    picked = frames[::frame_stride(fps)]  # a view: no copy of the clip
    with ThreadPoolExecutor(SCORE_THREADS) as pool:
        pairs = list(pool.map(pair_score, picked[:-1], picked[1:]))
    if not pairs:
        return 0.0, False
    threshold = motion_threshold(frames.shape[1], frames.shape[2], fps)
    moving = sum(score > threshold for score in pairs)
    return round(float(np.mean(pairs)), 4), bool(moving >= round(4 * len(picked) / 16))


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def identity_similarities(frames: np.ndarray, face_stage: FaceStage, reference: np.ndarray) -> list[float | None]:
    """max(0, cos(reference, largest face)) per frame; None where the face stage finds no face.

    One frame at a time: the detectors parallelise inside (onnxruntime, OpenCV), and OpenCV's cascade
    classifier is not safe to share between threads."""
    scores = []
    for frame in frames:
        found = face_stage.largest_face(np.ascontiguousarray(frame))
        scores.append(None if found is None else max(0.0, cosine(reference, found[1])))
    return scores


def score_clip(frames: np.ndarray, fps: int, face_stage: FaceStage | None = None,
               reference: np.ndarray | None = None) -> ClipScores:
    """Every score of one clip. `reference`: the identity photo's raw embedding from `face_stage`."""
    motion, dynamic = motion_scores(frames, fps)
    picked = frames[::frame_stride(fps)]
    if face_stage is None or reference is None:
        return ClipScores(None, None, None, motion, dynamic, len(picked))
    found = identity_similarities(picked, face_stage, reference)
    similarities = np.array([0.0 if s is None else s for s in found])
    return ClipScores(identity_average=round(float(similarities.mean()), 6),
                      identity_variation=round(float(similarities.std()), 6),
                      face_share=round(sum(s is not None for s in found) / len(found), 6),
                      motion=motion, dynamic=dynamic, frames_scored=len(picked),
                      similarities=tuple(round(float(s), 6) for s in similarities))
