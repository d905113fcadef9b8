"""Face geometry of the released recipe: alignment template, similarity warp, parsing mask, padding.

Pure functions on numpy arrays (RGB uint8, HxWx3) so they can be tested with known inputs.
"""

import cv2
import numpy as np
from PIL import Image

# ArcFace 5-point template on its 96x112 canvas: left eye, right eye, nose, left and right mouth corner.
ARCFACE_TEMPLATE_96x112 = np.array(
    [[30.2946, 51.6963], [65.5318, 51.5014], [48.0252, 71.7366], [33.5493, 92.3655], [62.7299, 92.2041]],
    dtype=np.float32,
)
ALIGNED_FACE_SIZE = 512
# BiSeNet (CelebAMask-HQ) labels blacked out: background, clothes, hat, ears, earring, neck, necklace.
BLACKED_OUT_LABELS = (0, 16, 18, 7, 8, 9, 14, 15)
MAX_LONG_SIDE = 1024


def scaled_template(size: int = ALIGNED_FACE_SIZE) -> np.ndarray:
    """The ArcFace template scaled x*size/96, y*size/112 onto a size x size canvas."""
    return ARCFACE_TEMPLATE_96x112 * np.array([size / 96.0, size / 112.0], dtype=np.float32)


def similarity_transform(keypoints: np.ndarray, size: int = ALIGNED_FACE_SIZE) -> np.ndarray:
    """2x3 similarity (rotation, uniform scale, translation) taking 5 keypoints onto the template (LMEDS)."""
    src = np.asarray(keypoints, dtype=np.float32).reshape(5, 2)
    matrix, _ = cv2.estimateAffinePartial2D(src, scaled_template(size), method=cv2.LMEDS)
    if matrix is None:
        raise ValueError("degenerate face keypoints: no similarity transform fits them")
    return matrix


def warp_face(image: np.ndarray, matrix: np.ndarray, size: int = ALIGNED_FACE_SIZE) -> np.ndarray:
    """Warp to size x size with bilinear sampling and a black border."""
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))


def align_face(image: np.ndarray, keypoints: np.ndarray, size: int = ALIGNED_FACE_SIZE) -> np.ndarray:
    return warp_face(image, similarity_transform(keypoints, size), size)


def apply_parsing_mask(face: np.ndarray, labels: np.ndarray, blacked=BLACKED_OUT_LABELS) -> np.ndarray:
    """Set every pixel whose parsing label is in `blacked` to black; other pixels are unchanged."""
    keep = ~np.isin(labels, np.asarray(blacked))
    return face * keep[..., None].astype(face.dtype)


def limit_long_side(image: Image.Image, max_side: int = MAX_LONG_SIDE) -> Image.Image:
    """Downscale so the long side is at most `max_side` (the released recipe's 1024)."""
    long_side = max(image.size)
    if long_side <= max_side:
        return image
    scale = max_side / long_side
    return image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.BILINEAR)


def pad_to_aspect(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad with black to the target aspect ratio: short side kept, long side padded symmetrically."""
    face_h, face_w = face.shape[:2]
    if width * face_h >= height * face_w:  # target wider than the face: pad left/right
        new_h, new_w = face_h, round(face_h * width / height)
    else:
        new_h, new_w = round(face_w * height / width), face_w
    top, left = (new_h - face_h) // 2, (new_w - face_w) // 2
    out = np.zeros((new_h, new_w) + face.shape[2:], dtype=face.dtype)
    out[top:top + face_h, left:left + face_w] = face
    return out


def face_latent_image(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """Aligned face -> HxW float32 in [-1, 1]: padded to aspect, Lanczos-resized (the VAE input)."""
    padded = Image.fromarray(pad_to_aspect(face, height, width)).resize((width, height), Image.LANCZOS)
    return np.asarray(padded, dtype=np.float32) / 127.5 - 1.0
