"""Identity-photo loading with clear errors: unreadable, not an image, empty, odd modes, huge.

The pixels are the released loader's (diffusers 0.31 `load_image` then `resize_numpy_image_long`): EXIF
orientation applied, `.convert("RGB")` (alpha dropped, not composited), fully decoded, a long side over
1024 brought down with OpenCV Lanczos-4.
"""

import io
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from echovideo.errors import EchoVideoInputError
from echovideo.face.geometry import limit_long_side

MAX_PIXELS = 20000 * 20000  # beyond this a photo is refused, not decoded (decompression-bomb guard)


def load_identity_image(path: str | Path, field: str = "--image") -> np.ndarray:
    """RGB uint8 as the released loader sees the photo: upright, any mode converted, long side <= 1024."""
    path = Path(path)
    if not path.is_file():
        raise EchoVideoInputError(field, f"{path} does not exist or is not a file", "pass a path to a face photo")
    return decode_identity_image(path, str(path), field)


def decode_identity_image(source: Path | bytes, name: str, field: str = "--image") -> np.ndarray:
    """`load_identity_image` for a path or the encoded bytes of a photo (a dataset column); `name` is for errors."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size == 0:
        raise EchoVideoInputError(field, f"{name} is empty (0 bytes)", "pass a valid JPEG or PNG face photo")
    try:
        with Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise EchoVideoInputError(field, f"{name} is {image.width}x{image.height}, too large",
                                          "downscale it below 20000x20000")
            rgb = ImageOps.exif_transpose(image).convert("RGB")  # a phone photo stored rotated is seen upright
    except Image.DecompressionBombError:
        raise EchoVideoInputError(field, f"{name} has too many pixels to decode safely",
                                  "downscale it below 20000x20000") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise EchoVideoInputError(field, f"{name} is not a readable image ({type(exc).__name__})",
                                  "pass a valid JPEG or PNG face photo") from None
    return limit_long_side(np.asarray(rgb, dtype=np.uint8))

