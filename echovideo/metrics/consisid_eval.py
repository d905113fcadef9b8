"""ConsisID's evaluation protocol, so our numbers sit next to the papers' tables (EchoVideo reports against
ConsisID's): FaceSim-Arc and the per-frame Inception Distance ("FID" there) computed as ConsisID's published
`eval/get_facesim_fid.py` computes them:

- the photo: PIL's decode converted to RGB (no EXIF rotation, no size limit);
- 16 frames at `np.linspace(0, frames - 1, 16)` (integer part);
- faces: insightface `FaceAnalysis` at `det_size` 320x320, the largest box; none found: the image padded by
  25 % of its height/width on each side with grey (128, 128, 128), detected again, keypoints moved back;
  still none: the frame is skipped (the photo: the clip is not measured);
- FaceSim-Arc per frame: max(0, cosine) of the two ArcFace embeddings; the clip's: the mean over the frames
  with a face, 0.0 if none had one; FaceSim-Cur the same with CurricularFace's (`curricularface.py`);
- Inception Distance per frame: the face `norm_crop`ped to 224x224, resized to 299x299 by PIL's bilinear
  filter (torchvision's `Resize` on a PIL image), scaled to [0, 1], InceptionV3's 2048-d pool feature;
  the squared distance to the photo's (one sample each: the Frechet distance's covariances vanish); the
  clip's: the mean over the frames with a face, 0.0 if none had one (sic: ConsisID's fallback, which
  scores a face-less clip as perfect; `frames_with_face` says when that happened).

Our default (echovideo/metrics/quality.py, echovideo/metrics/inception.py) differs on purpose where it is stricter; README
"Quality scores" lists each difference.
"""

import io
from collections.abc import Callable

import cv2
import numpy as np
from PIL import Image

from echovideo.face.antelope import norm_crop
from echovideo.face.stage import DetectedFace, FaceStage
from echovideo.metrics.inception import INCEPTION_SIDE
from echovideo.metrics.quality import cosine

FRAMES = 16
DET_SIZE = 320
PAD_SCALE = 1.25
PAD_GREY = (128, 128, 128)
CROP_SIDE = 224


def decode_photo(data: bytes) -> np.ndarray:
    """`Image.open(path).convert("RGB")`, as the script reads the reference photo."""
    with Image.open(io.BytesIO(data)) as image:
        return np.array(image.convert("RGB"))


def sampled_frames(frames: np.ndarray) -> np.ndarray:
    return frames[np.linspace(0, len(frames) - 1, FRAMES, dtype=int)]


def padded(image: np.ndarray) -> tuple[np.ndarray, tuple[int, int]]:
    """The image with int(h * 0.25) rows above and below and int(w * 0.25) columns each side, grey; and
    (left, top), the offset of the original inside it."""
    height, width = image.shape[:2]
    top, left = int(height * (PAD_SCALE - 1.0)), int(width * (PAD_SCALE - 1.0))
    return cv2.copyMakeBorder(image, top, top, left, left, cv2.BORDER_CONSTANT, value=PAD_GREY), (left, top)


def find_face(stage: FaceStage, image: np.ndarray) -> DetectedFace | None:
    """The largest face, on the image or else on its padded copy (keypoints then in the image's pixels)."""
    face = stage.analysis_face(image, DET_SIZE)
    if face is not None:
        return face
    canvas, (left, top) = padded(image)
    face = stage.analysis_face(canvas, DET_SIZE)
    if face is None:
        return None
    return DetectedFace(face.bbox, face.keypoints - np.array([left, top], dtype=np.float32), face.embedding)


def aligned_face(image: np.ndarray, face: DetectedFace) -> np.ndarray:
    """The 224x224 `norm_crop` (RGB) that FaceSim-Cur and the Inception Distance read."""
    return norm_crop(image, face.keypoints, CROP_SIDE)  # channel-blind: the script crops BGR, we crop RGB


def inception_pixels(aligned: np.ndarray) -> np.ndarray:
    """(3, 299, 299) float32 in [0, 1]: the aligned face upsized by PIL's bilinear filter."""
    resized = Image.fromarray(aligned).resize((INCEPTION_SIDE, INCEPTION_SIDE), Image.BILINEAR)
    return (np.asarray(resized, dtype=np.float32) / 255.0).transpose(2, 0, 1)


def consisid_scores(frames: np.ndarray, photo: np.ndarray, stage: FaceStage,
                    features: Callable[[np.ndarray], np.ndarray] | None = None,
                    curricular: Callable[[np.ndarray], np.ndarray] | None = None) -> dict | None:
    """{"facesim_arc", "facesim_cur" (None without `curricular`), "inception_distance" (None without
    `features`), "frames_with_face"} of one clip, or None when the photo has no face (the script stops there).
    `features`: (3, 299, 299) -> 2048-d; `curricular`: an aligned face -> its unit embedding."""
    reference = find_face(stage, photo)
    if reference is None:
        return None
    photo_face = aligned_face(photo, reference)
    anchor = features(inception_pixels(photo_face)) if features else None
    anchor_cur = curricular(photo_face) if curricular else None
    similarities, cur, distances = [], [], []
    for frame in sampled_frames(frames):
        frame = np.ascontiguousarray(frame)
        face = find_face(stage, frame)
        if face is None:
            continue
        similarities.append(max(0.0, cosine(reference.embedding, face.embedding)))
        aligned = aligned_face(frame, face) if features or curricular else None
        if curricular:
            cur.append(max(0.0, cosine(anchor_cur, curricular(aligned))))
        if features:
            distances.append(float(np.sum((features(inception_pixels(aligned)) - anchor) ** 2)))

    def mean_or_zero(values: list, wanted) -> float | None:  # the script's 0.0 for a clip without faces
        return (float(np.mean(values)) if values else 0.0) if wanted else None

    return {"facesim_arc": mean_or_zero(similarities, True), "facesim_cur": mean_or_zero(cur, curricular),
            "inception_distance": mean_or_zero(distances, features), "frames_with_face": len(similarities)}
