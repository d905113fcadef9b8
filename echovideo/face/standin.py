"""Offline stand-in face stage for the tiny preset (no downloadable weights needed).

Documented substitute for the released models, same interface and same geometry:
- detection: OpenCV's bundled Haar cascade (ships inside opencv-python-headless); the 5 keypoints are
  the ArcFace template placed in the detected box (Haar gives no landmarks);
- embedding: a small random conv net saved as safetensors in the checkpoint (seeded, deterministic);
- parsing: an ellipse of "skin" (label 1) on background (label 0).
It preserves no real identity: it exists so the whole pipeline runs anywhere in seconds.
"""

import json
from pathlib import Path

import cv2
import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from echovideo.face.geometry import ALIGNED_FACE_SIZE, ARCFACE_TEMPLATE_96x112
from echovideo.face.stage import DetectedFace, FaceStage

MARKER = "standin.json"
WEIGHTS = "standin_embedder.safetensors"
EMBED_INPUT = 112  # ArcFace's input size


def _embedder(embed_dim: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.Conv2d(8, 16, 4, stride=4), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, embed_dim),
    )


def save_standin(folder: Path, embed_dim: int, seed: int) -> None:
    """Write the stand-in's marker and seeded embedding weights into `folder` (the face_encoder/)."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    save_file({k: v.contiguous() for k, v in _embedder(embed_dim).state_dict().items()}, str(folder / WEIGHTS))
    (folder / MARKER).write_text(json.dumps({"kind": "standin", "embed_dim": embed_dim}))


class StandInFaceStage(FaceStage):
    def __init__(self, folder: Path) -> None:
        spec = json.loads((folder / MARKER).read_text())
        self.embedder = _embedder(spec["embed_dim"]).eval()
        self.embedder.load_state_dict(load_file(str(folder / WEIGHTS)))
        self.cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        min_side = max(24, min(gray.shape) // 20)
        boxes = self.cascade.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=5, minSize=(min_side, min_side))
        faces = []
        for x, y, w, h in np.asarray(boxes).reshape(-1, 4):
            keypoints = np.array([x, y]) + ARCFACE_TEMPLATE_96x112 * np.array([w / 96.0, h / 112.0])
            faces.append(DetectedFace(bbox=np.array([x, y, x + w, y + h], dtype=np.float32),
                                      keypoints=keypoints.astype(np.float32)))
        return faces

    @torch.no_grad()
    def embed(self, aligned: np.ndarray) -> np.ndarray:
        crop = cv2.resize(aligned, (EMBED_INPUT, EMBED_INPUT), interpolation=cv2.INTER_AREA)
        pixels = torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return self.embedder(pixels)[0].numpy()

    def parse(self, aligned: np.ndarray) -> np.ndarray:
        labels = np.zeros(aligned.shape[:2], dtype=np.uint8)
        c = ALIGNED_FACE_SIZE // 2
        cv2.ellipse(labels, (c, int(c * 1.1)), (int(c * 0.7), int(c * 0.85)), 0, 0, 360, 1, thickness=-1)
        return labels
