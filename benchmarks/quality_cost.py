"""What the per-clip quality scores cost rank 0, against encoding the same clip to mp4 (which every clip pays),
in the same process: motion (Farneback on the sampled pairs) and identity (face stage on the sampled frames).

    python benchmarks/quality_cost.py [--height 480 --width 848 --frames 49 --fps 16] [--ckpt CKPT] [--smoke]

The clip is the identity photo moving across a textured background (faces in every frame, real motion).
Without --ckpt the tiny preset's stand-in face stage (OpenCV Haar + a small CNN) is timed; with the released
`face_encoder/` the timing is SCRFD-10G + glintr100 on onnxruntime (on the GPU when its provider is there).
"""

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from echovideo.face import load_face_stage
from echovideo.images import load_identity_image
from echovideo.metrics.quality import frame_stride, identity_similarities, motion_scores
from echovideo.presets.tiny import tiny_checkpoint
from echovideo.video_io import write_mp4

PHOTO = Path(__file__).resolve().parents[1] / "echovideo" / "assets" / "astronaut.jpg"


def moving_portrait(frames: int, height: int, width: int) -> np.ndarray:
    """The photo (scaled to 80% of the height) panning 6 px a frame over blurred noise."""
    side = int(height * 0.8)
    face = cv2.resize(load_identity_image(PHOTO), (side, side))
    background = cv2.GaussianBlur(np.random.default_rng(0).integers(0, 256, (height, width + 6 * frames, 3),
                                                                    dtype=np.uint8), (9, 9), 0)
    clip = []
    for i in range(frames):
        frame = background[:, 6 * i:6 * i + width].copy()
        x = min(width - side, 6 * i)
        frame[(height - side) // 2:(height - side) // 2 + side, x:x + side] = face
        clip.append(frame)
    return np.stack(clip)


def best_of(repeats: int, work) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        work()
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=848)
    parser.add_argument("--frames", type=int, default=49)
    parser.add_argument("--fps", type=int, default=16)
    parser.add_argument("--ckpt", help="released checkpoint folder (its face_encoder/ is timed)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--smoke", action="store_true", help="CI size: 17 frames at 256x448, one repeat")
    args = parser.parse_args()
    if args.smoke:
        args.height, args.width, args.frames, args.repeats = 256, 448, 17, 1
    root = Path(args.ckpt) if args.ckpt else tiny_checkpoint()
    stage = load_face_stage(root / "face_encoder", torch.device(args.device))
    clip = moving_portrait(args.frames, args.height, args.width)
    reference = stage.analyze(load_identity_image(PHOTO)).embedding
    picked = clip[::frame_stride(args.fps)]
    with tempfile.TemporaryDirectory() as folder:
        encode = best_of(args.repeats, lambda: write_mp4(clip, Path(folder) / "clip.mp4", fps=args.fps))
    motion = best_of(args.repeats, lambda: motion_scores(clip, args.fps))
    identity = best_of(args.repeats, lambda: identity_similarities(picked, stage, reference))
    found = identity_similarities(picked, stage, reference)
    print(f"clip {args.frames} frames {args.width}x{args.height} @ {args.fps} fps; {len(picked)} frames scored, "
          f"face found in {sum(s is not None for s in found)}; face stage: {'released' if args.ckpt else 'stand-in'}")
    print(f"mp4 encode (reference)  {1000 * encode:8.0f} ms  1.00x")
    print(f"motion (Farneback)      {1000 * motion:8.0f} ms  {motion / encode:.2f}x")
    print(f"identity (face stage)   {1000 * identity:8.0f} ms  {identity / encode:.2f}x")
    print(f"all scores              {1000 * (motion + identity):8.0f} ms  {(motion + identity) / encode:.2f}x")
    print(f"headline: scores cost {(motion + identity) / encode:.2f}x the clip's mp4 encode "
          f"({1000 * (motion + identity) / args.frames:.1f} ms per frame of clip)")


if __name__ == "__main__":
    main()
