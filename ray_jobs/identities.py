"""Reading an identity photo by reference without trusting it: regular files and object-store files only, a
bounded number of bytes, a deadline.

A dataset row can name `/dev/zero` (endless), a FIFO (blocks forever on open), a directory, or a
path on a hung network mount; each must fail its row alone, with a reason, while the job goes on.
"""

import os
import stat
import threading

import pyarrow.fs as pfs

from echovideo.errors import EchoVideoInputError
from ray_jobs.redact import redact

MAX_IDENTITY_BYTES = 64 * 2**20  # far above any phone photo (a 48 MP HEIC-to-JPEG is ~20 MB)
READ_TIMEOUT_S = 60.0


def read_identity(reference: str, name: str) -> bytes:
    """The bytes of a local path or a pyarrow filesystem URI (s3://, gs://, hdfs://, file://); raises
    EchoVideoInputError naming `name` (the redacted reference) for anything but a readable photo-sized file."""
    box: dict = {}
    finished = threading.Event()

    def read() -> None:
        try:
            box["data"] = _read_uri(reference, name) if "://" in reference else _read_local(reference, name)
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            finished.set()

    # A daemon thread, not an executor: a read stuck in the kernel (hung mount) cannot be cancelled, and an
    # executor's worker would then hold up the interpreter's exit; the abandoned thread dies with the process.
    threading.Thread(target=read, name="identity-read", daemon=True).start()
    if not finished.wait(READ_TIMEOUT_S):
        raise EchoVideoInputError("identity", f"reading {name} did not finish within {READ_TIMEOUT_S:.0f} s",
                                  "check the storage it is on")
    error = box.get("error")
    if isinstance(error, EchoVideoInputError):
        raise error
    if error is not None:
        raise EchoVideoInputError("identity", f"cannot read {name} ({type(error).__name__}: {redact(str(error))})",
                                  "check the path or URI") from None
    return box["data"]


def _read_local(path: str, name: str) -> bytes:
    # O_NONBLOCK: opening a FIFO returns at once instead of waiting for a writer; fstat then refuses it.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        raise EchoVideoInputError("identity", f"{name} is not a regular file ({_kind(mode)})",
                                  "point the row at a photo file")
    with os.fdopen(fd, "rb") as handle:
        return _check_size(handle.read(MAX_IDENTITY_BYTES + 1), name)


def _read_uri(uri: str, name: str) -> bytes:
    filesystem, path = pfs.FileSystem.from_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type != pfs.FileType.File:
        problem = "does not exist" if info.type == pfs.FileType.NotFound else "is not a file"
        raise EchoVideoInputError("identity", f"cannot read {name} ({problem})", "check the path or URI")
    with filesystem.open_input_stream(path) as stream:  # bounded whatever size the store reported
        return _check_size(stream.read(MAX_IDENTITY_BYTES + 1), name)


def _check_size(data: bytes, name: str) -> bytes:
    if len(data) > MAX_IDENTITY_BYTES:
        raise EchoVideoInputError("identity", f"{name} is larger than {MAX_IDENTITY_BYTES // 2**20} MB",
                                  "use a smaller photo: the model sees at most 1024 pixels on the long side")
    return data


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a device"),
                       (stat.S_ISBLK, "a device"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return kind
    return "not a plain file"
