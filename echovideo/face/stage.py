"""The identity stage: photo -> (aligned parsed 512x512 face, raw ArcFace embedding).

Detection, embedding and parsing differ between the released models and the tiny preset's stand-in;
the recipe around them (largest face, similarity alignment, parsing mask) is shared and lives here.
"""

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from echovideo.errors import NoFaceFoundError
from echovideo.face.geometry import align_face, apply_parsing_mask


@dataclass(frozen=True)
class DetectedFace:
    bbox: np.ndarray  # (4,) x1, y1, x2, y2
    keypoints: np.ndarray  # (5, 2) eyes, nose, mouth corners
    embedding: np.ndarray | None = None  # raw ArcFace embedding when the detector computes it


@dataclass(frozen=True)
class FaceIdentity:
    aligned_face: np.ndarray  # (512, 512, 3) uint8 RGB, parsing-masked: feeds SigLIP and the VAE
    embedding: np.ndarray  # (D,) float32 raw (not L2-normalised) ArcFace embedding


def largest(faces: list[DetectedFace]) -> DetectedFace:
    """insightface's pick in the released recipe: the largest bounding box (the last of equals, as its
    `sorted(...)[-1]` takes)."""
    return sorted(faces, key=lambda f: float((f.bbox[2] - f.bbox[0]) * (f.bbox[3] - f.bbox[1])))[-1]


def nearest_to_centre(faces: list[DetectedFace], height: int, width: int) -> DetectedFace:
    """facexlib's `only_center_face` pick (the released fallback): the box whose centre is nearest the image
    centre (the first of equals)."""
    centre = np.array([width / 2, height / 2])
    distances = [float(np.linalg.norm(np.array([(f.bbox[0] + f.bbox[2]) / 2, (f.bbox[1] + f.bbox[3]) / 2]) - centre))
                 for f in faces]
    return faces[distances.index(min(distances))]


class FaceStage(ABC):
    """Built once per pipeline (face models are expensive to load), applied to every identity photo."""

    @abstractmethod
    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        """The candidate faces in an RGB uint8 image; `analyze` keeps the largest."""

    @abstractmethod
    def embed(self, aligned: np.ndarray) -> np.ndarray:
        """Raw identity embedding of the whole 512x512 aligned (unparsed) face, for a face the detector
        gave no embedding for (the released fallback)."""

    @abstractmethod
    def parse(self, aligned: np.ndarray) -> np.ndarray:
        """Per-pixel BiSeNet-style labels (512x512 int) of an aligned face."""

    def analyze(self, image: np.ndarray) -> FaceIdentity:
        found = self.largest_face(image)
        if found is None:
            raise NoFaceFoundError("--image", "no face found in the identity photo",
                                   "use a photo with a clearly visible, roughly frontal face")
        aligned, embedding = found
        parsed = apply_parsing_mask(aligned, self.parse(aligned))
        return FaceIdentity(aligned_face=parsed, embedding=embedding)

    def analysis_face(self, image: np.ndarray, det_size: int) -> DetectedFace | None:
        """The largest face with its embedding as insightface's `FaceAnalysis(det_size=(det_size, det_size))`
        finds it (what published evaluations call): the released stage runs only SCRFD at that size, no
        RetinaFace fallback. This default serves detectors without a size (the tiny stand-in)."""
        found = self._largest(image)
        if found is None:
            return None
        face, _, embedding = found
        return DetectedFace(face.bbox, face.keypoints, embedding)

    def largest_face(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """(aligned unparsed 512x512 face, raw embedding) of the largest face as the conditioning computes
        them, or None without a face. The quality scores embed every scored frame this same way."""
        found = self._largest(image)
        return None if found is None else found[1:]

    def _largest(self, image: np.ndarray) -> tuple[DetectedFace, np.ndarray, np.ndarray] | None:
        """(the largest face, its aligned 512x512 crop, its raw embedding: the detector's, else `embed`'s)."""
        faces = self.detect(image)
        if not faces:
            return None
        face = largest(faces)
        aligned = align_face(image, face.keypoints)
        embedding = face.embedding if face.embedding is not None else self.embed(aligned)
        return face, aligned, np.asarray(embedding, dtype=np.float32)
