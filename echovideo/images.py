"""Identity-photo loading with clear errors: unreadable, not an image, empty, odd modes, huge.

The pixels are the released loader's (diffusers 0.31 `load_image` then `resize_numpy_image_long`): EXIF
orientation applied, `.convert("RGB")` (alpha dropped, not composited), fully decoded, a long side over
1024 brought down with OpenCV Lanczos-4.
"""

import io
import struct
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from echovideo.errors import EchoVideoInputError
from echovideo.face.geometry import limit_long_side

# PIL's decompression-bomb limit (2 x Image.MAX_IMAGE_PIXELS): the released loader (diffusers' `load_image`)
# refuses any photo beyond it, so we do too, with the same threshold in every message (13000x13000 passes).
MAX_PIXELS = 178_956_970
TOO_LARGE_FIX = "downscale it: the model sees at most 1024 pixels on the long side"


def load_identity_image(path: str | Path, field: str = "--image") -> np.ndarray:
    """RGB uint8 as the released loader sees the photo: upright, any mode converted, long side <= 1024."""
    path = Path(path)
    if not path.is_file():
        raise EchoVideoInputError(field, f"{path} does not exist or is not a file", "pass a path to a face photo")
    return decode_identity_image(path, str(path), field)


@contextmanager
def _quiet_below_limit() -> Iterator[None]:
    """PIL warns from half MAX_PIXELS up; such photos are accepted (as released), so the warning is noise."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        yield


@contextmanager
def _opened(source: Path | bytes, name: str, field: str) -> Iterator[Image.Image]:
    """The photo opened lazily (header only) with its size checked; any decoder error becomes our one line."""
    size = source.stat().st_size if isinstance(source, Path) else len(source)
    if size == 0:
        raise EchoVideoInputError(field, f"{name} is empty (0 bytes)", "pass a valid JPEG or PNG face photo")
    try:
        with _quiet_below_limit(), Image.open(source if isinstance(source, Path) else io.BytesIO(source)) as image:
            if image.width * image.height > MAX_PIXELS:
                raise EchoVideoInputError(field, f"{name} is too large ({image.width}x{image.height}, over "
                                                 f"{MAX_PIXELS / 1e6:.0f} megapixels)", TOO_LARGE_FIX)
            yield image
    except Image.DecompressionBombError:
        raise EchoVideoInputError(field, f"{name} is too large (over {MAX_PIXELS / 1e6:.0f} megapixels)",
                                  TOO_LARGE_FIX) from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, struct.error) as exc:
        if isinstance(exc, EchoVideoInputError):
            raise
        raise EchoVideoInputError(field, f"{name} is not a readable image ({type(exc).__name__})",
                                  "pass a valid JPEG or PNG face photo") from None


def check_identity_header(data: bytes, name: str, field: str = "identity") -> tuple[int, int]:
    """(width, height) from the header, with the file's structure checked but no pixel decoded: what a driver
    can afford per photo (a 13000x13000 PNG decodes to 500 MB); the rank that renders decodes it fully."""
    with _opened(data, name, field) as image:
        width, height = image.size
        image.verify()
    return width, height


SUFFIXES = {"JPEG": ".jpg", "MPO": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "TIFF": ".tif", "GIF": ".gif"}


def image_suffix(data: bytes) -> str:
    """The file suffix of a photo's own format, from its header (".jpg" for a phone's JPEG or MPO); ".img"
    for a format without a usual one. The bytes are kept as given, so the suffix must say what they are."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return SUFFIXES.get(image.format or "", f".{(image.format or 'img').lower()}")
    except (UnidentifiedImageError, OSError, ValueError):
        return ".img"


def decode_identity_image(source: Path | bytes, name: str, field: str = "--image") -> np.ndarray:
    """`load_identity_image` for a path or the encoded bytes of a photo (a dataset column); `name` is for errors."""
    with _opened(source, name, field) as image:
        rgb = ImageOps.exif_transpose(image).convert("RGB")  # a phone photo stored rotated is seen upright
    return limit_long_side(np.asarray(rgb, dtype=np.uint8))
