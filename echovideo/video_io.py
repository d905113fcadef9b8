"""H.264 mp4 export through imageio-ffmpeg (the ffmpeg binary ships inside the wheel).

Written to a temp file in the destination folder, fsynced and renamed: a reader never sees half a
video, and an interrupted run leaves no partial mp4 under the final name.
"""

import hashlib
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import imageio_ffmpeg
import numpy as np

TEMP_MARK = ".echovideo-tmp"  # in every temp name we create, and in no name anything else makes
_OUR_TEMP = re.compile(r"^\..+\.[a-z0-9_]{8}" + re.escape(TEMP_MARK) + r"\.[a-z0-9]+$")

# mkstemp creates files 0600; finished outputs get the permissions a plain open() would give them.
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextmanager
def atomic_output(path: str | Path, suffix: str) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success fsync and rename it into place, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f"{TEMP_MARK}{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def is_our_temp(name: str) -> bool:
    """A temp file `atomic_output` made (a render that died mid-write leaves one): safe to remove."""
    return bool(_OUR_TEMP.match(name))


def check_mp4(path: str | Path, frames: int) -> None:
    """Decode the whole file and count its frames: a clip is published only if it plays to its last frame."""
    try:
        decoded, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    except RuntimeError as exc:  # ffmpeg's whole banner and log: its last line says why
        raise RuntimeError(f"the encoded clip {Path(path).name} does not decode: "
                           f"{str(exc).strip().splitlines()[-1][:200]}") from None
    if decoded != frames:
        raise RuntimeError(f"the encoded clip {Path(path).name} decodes to {decoded} of its {frames} frames")


def read_mp4(path: str | Path) -> tuple[np.ndarray, int]:
    """(F, H, W, 3) uint8 frames and the frame rate of a video file, decoded by the bundled ffmpeg."""
    reader = imageio_ffmpeg.read_frames(str(path))
    meta = reader.__next__()
    width, height = meta["size"]
    frames = [np.frombuffer(chunk, np.uint8).reshape(height, width, 3) for chunk in reader]
    return np.stack(frames), round(meta["fps"])


def write_mp4(frames: np.ndarray, path: str | Path, fps: int, crf: int = 18) -> Path:
    """Encode (F, H, W, 3) uint8 frames as H.264 yuv420p (plays everywhere)."""
    frames = np.ascontiguousarray(frames, dtype=np.uint8)
    count, height, width, _ = frames.shape
    with atomic_output(path, ".mp4") as tmp:
        writer = imageio_ffmpeg.write_frames(
            str(tmp), (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", quality=None,
            macro_block_size=1, output_params=["-crf", str(crf), "-movflags", "+faststart"],
        )
        writer.send(None)
        for frame in frames:
            writer.send(frame)
        writer.close()
    return Path(path)


def file_sha256(path: str | Path) -> str:
    """A file's content digest (read in 8 MB chunks): what exports and records compare, never sizes or names."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(8 << 20):
            digest.update(chunk)
    return digest.hexdigest()
