"""Identity-photo loading with clear errors: unreadable, not an image, empty, odd modes, huge."""

import io
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from echovideo.errors import EchoVideoInputError
from echovideo.face.geometry import limit_long_side

MAX_PIXELS = 20000 * 20000  # beyond this a photo is refused, not decoded (decompression-bomb guard)


def load_identity_image(path: str | Path, field: str = "--image") -> np.ndarray:
    """RGB uint8 (any mode converted: RGBA, grayscale, CMYK), long side limited to 1024 as released."""
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
            image.draft("RGB", (1024, 1024))  # JPEG: decode at a reduced scale, huge photos stay cheap
            image.load()
            rgb = _to_rgb(image)
    except Image.DecompressionBombError:
        raise EchoVideoInputError(field, f"{name} has too many pixels to decode safely",
                                  "downscale it below 20000x20000") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise EchoVideoInputError(field, f"{name} is not a readable image ({type(exc).__name__})",
                                  "pass a valid JPEG or PNG face photo") from None
    return np.asarray(limit_long_side(rgb), dtype=np.uint8)


def _to_rgb(image: Image.Image) -> Image.Image:
    """Transparent pixels become white (as a viewer shows them), other modes convert directly."""
    if image.mode in ("RGBA", "LA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")
