"""Face geometry of the released recipe: alignment template, similarity warp, parsing mask, padding.

Pure functions on numpy arrays (RGB uint8, HxWx3) so they can be tested with known inputs.
"""

import cv2
import numpy as np
from PIL import Image

from echovideo.errors import EchoVideoInputError

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
        raise EchoVideoInputError("--image", "the detected face's keypoints are degenerate (no similarity transform "
                                  "fits them)", "use a sharper, more frontal photo of the face")
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


def limit_long_side(image: np.ndarray, max_side: int = MAX_LONG_SIDE) -> np.ndarray:
    """Downscale so the long side is at most `max_side`, as released: OpenCV Lanczos-4 to int()-truncated sizes.

    (A side that truncates to 0, e.g. a 1x3000 strip, is kept at 1 pixel where the released code would crash.)
    """
    height, width = image.shape[:2]
    if max(height, width) <= max_side:
        return image
    scale = max_side / max(height, width)
    size = (max(1, int(width * scale)), max(1, int(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_LANCZOS4)


def pad_to_aspect(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad with black to the aspect W/H, as released: the short side kept, the new long side int()-truncated
    (682 wide at 480x640, 904 at 480x848), the padding split with the odd pixel after the image."""
    ratio = width / height
    face_h, face_w = face.shape[:2]
    short = min(face_h, face_w)
    if ratio > 1.0:
        new_h, new_w = short, int(short * ratio)
    else:
        new_h, new_w = int(short / ratio), short
    pad_h, pad_w = max(new_h, face_h) - face_h, max(new_w, face_w) - face_w
    return cv2.copyMakeBorder(face, pad_h // 2, pad_h - pad_h // 2, pad_w // 2, pad_w - pad_w // 2,
                              cv2.BORDER_CONSTANT, value=(0, 0, 0))


def face_latent_image(face: np.ndarray, height: int, width: int) -> np.ndarray:
    """Aligned face -> HxW float32 in [-1, 1], the VAE input: padded to aspect, PIL Lanczos to HxW, then
    diffusers' VaeImageProcessor arithmetic (x / 255, then 2x - 1, in float32) so the values are bit-identical."""
    padded = Image.fromarray(pad_to_aspect(face, height, width)).resize((width, height), Image.LANCZOS)
    unit = np.asarray(padded).astype(np.float32) / np.float32(255.0)
    return np.float32(2.0) * unit - np.float32(1.0)
