"""Reading an identity photo by reference without trusting it: regular files and object-store files only, a
bounded number of bytes, a deadline on every filesystem call.

A dataset row can name `/dev/zero` (endless), a FIFO (blocks forever on open), a directory, or a
path on a hung network mount; each must fail its row alone, with a reason, while the job goes on.

Two kinds of failure: a definite property of what is there (not a regular file, too large; "not an image"
is the header check's) settles the row, while anything that could pass on a retry (missing, a network error,
a 5xx, a timeout, permission) raises `IdentityUnavailable`: retried a few times now, and again by a rerun.
"""

import hashlib
import os
import re
import stat
import threading
import time
from collections import OrderedDict
from typing import Callable, TypeVar

import pyarrow.fs as pfs

from echovideo.errors import EchoVideoInputError
from echovideo.images import check_identity_header
from echovideo.locations import open_uri
from echovideo.locations import shown_location as shown_reference
from ray_jobs.data.redact import redact

MAX_IDENTITY_BYTES = 64 * 2**20  # far above any phone photo (a 48 MP HEIC-to-JPEG is ~20 MB)
READ_TIMEOUT_S = 60.0
READ_ATTEMPTS, RETRY_WAIT_S = 3, 0.5  # a transient failure is tried this often in a run, waits doubling
MAX_STUCK_READS = 8  # calls stuck in the kernel at once; past that, storage is failing, not one photo
NAME_MAX, PATH_MAX, KEY_MAX = 255, 4096, 1024  # bytes: a path component, a path, an object key (S3)
T = TypeVar("T")
_readers = threading.BoundedSemaphore(MAX_STUCK_READS)


class IdentityUnavailable(EchoVideoInputError):
    """The photo could not be read now for a reason that may pass (it may exist on the next try)."""


def under_deadline(call: Callable[[], T], name: str) -> T:
    """`call()` on a thread of its own, given READ_TIMEOUT_S: a call stuck in the kernel (a hung mount) is
    abandoned, not waited for. Its own EchoVideoInputError passes through; any other error is transient."""
    box: dict = {}
    finished = threading.Event()
    if not _readers.acquire(blocking=False):  # abandoned threads are bounded: each holds its slot until it returns
        raise IdentityUnavailable("identity", f"cannot read {name}: {MAX_STUCK_READS} reads are still stuck on "
                                  "the storage", "check the storage the photos are on; a rerun tries them again")

    def run() -> None:
        try:
            box["value"] = call()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc
        finally:
            finished.set()
            _readers.release()

    # A daemon thread, not an executor: a call stuck in the kernel cannot be cancelled, and an executor's
    # worker would then hold up the interpreter's exit; the abandoned thread dies with the process.
    threading.Thread(target=run, name="identity-io", daemon=True).start()
    if not finished.wait(READ_TIMEOUT_S):
        raise IdentityUnavailable("identity", f"reading {name} did not finish within {READ_TIMEOUT_S:.0f} s",
                                  "check the storage it is on; a rerun tries it again")
    error = box.get("error")
    if isinstance(error, EchoVideoInputError):
        raise error
    if error is not None:
        raise IdentityUnavailable("identity", f"cannot read {name} ({type(error).__name__}: "
                                  f"{redact(str(error))[:300]})", "check the path or URI; a rerun tries it again")
    return box["value"]


def read_identity(reference: str, name: str) -> bytes:
    """The bytes of a local path or a pyarrow filesystem URI (s3://, gs://, hdfs://, file://); raises
    EchoVideoInputError naming `name` (the public reference) for anything but a readable photo-sized file.
    A transient failure is tried READ_ATTEMPTS times (not a timeout: that already waited its minute)."""
    check_reference(reference, name)
    read = (lambda: _read_uri(reference, name)) if "://" in reference else (lambda: _read_local(reference, name))
    for attempt in range(1, READ_ATTEMPTS + 1):
        try:
            return under_deadline(read, name)
        except IdentityUnavailable as exc:
            if attempt == READ_ATTEMPTS or "did not finish" in str(exc):
                raise
            time.sleep(RETRY_WAIT_S * 2 ** (attempt - 1))
    raise AssertionError("unreachable")


def identity_version(reference: str, name: str) -> list | None:
    """What the filesystem says of the photo now (size, modification time, file identity), under the
    deadline: a replaced photo gets a new resume key without being read. None if it cannot be asked now."""
    try:
        check_reference(reference, name)
    except EchoVideoInputError as exc:
        return ["invalid", str(exc)]  # a definite property of the reference: its row settles

    def ask() -> list:
        if "://" not in reference:
            info = os.stat(reference)
            return [info.st_size, info.st_mtime_ns, info.st_ino, stat.S_IFMT(info.st_mode)]
        filesystem, path = open_uri(reference)
        info = filesystem.get_file_info(path)
        mtime = info.mtime_ns if info.type == pfs.FileType.File else None
        return [info.type.name, info.size, mtime]

    try:
        return under_deadline(ask, name)
    except EchoVideoInputError:
        return None


def check_reference(reference: str, name: str) -> None:
    """A reference no filesystem can open (a NUL byte, a name over NAME_MAX, a path over PATH_MAX, an object
    key over 1024 bytes) is the row's definite error, not a failure to retry."""
    problem = None
    if "\x00" in reference:
        problem = "holds a NUL byte"
    elif "://" in reference:
        if len(reference.split("://", 1)[1].split("?", 1)[0].encode("utf-8", "surrogatepass")) > KEY_MAX:
            problem = f"is longer than an object key may be ({KEY_MAX} bytes)"
    elif len(reference.encode("utf-8", "surrogatepass")) > PATH_MAX:
        problem = f"is longer than a path may be ({PATH_MAX} bytes)"
    elif any(len(part.encode("utf-8", "surrogatepass")) > NAME_MAX for part in reference.split("/")):
        problem = f"has a name longer than a file name may be ({NAME_MAX} bytes)"
    if problem:
        raise EchoVideoInputError("identity", f"{printable(name)[:300]} {problem}", "fix the path in the dataset")


def printable(text: str) -> str:
    """Control characters (a NUL, a newline) shown escaped, so a message is one readable line."""
    return re.sub(r"[\x00-\x1f\x7f]", lambda m: f"\\x{ord(m.group()):02x}", text)


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
    filesystem, path = open_uri(uri)
    info = filesystem.get_file_info(path)
    if info.type == pfs.FileType.NotFound:  # perhaps not uploaded yet
        raise IdentityUnavailable("identity", f"cannot read {name} (does not exist)",
                                  "check the path or URI; a rerun tries it again")
    if info.type != pfs.FileType.File:
        raise EchoVideoInputError("identity", f"cannot read {name} (is not a file)", "point the row at a photo file")
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


class IdentityReader:
    """Image bytes and their content hash by reference; recent ones memoised (identities repeat in a job).

    Each new photo's header is checked here (format, size, structure; no pixel decoded), so an unreadable,
    empty or oversized photo fails its rows in the driver instead of occupying a replica, at a cost the
    driver can afford for any photo. The filesystem's word on each reference (`identity_version`) is
    memoised the same way: a rerun asks it once per distinct photo, not once per row.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.versions: OrderedDict[str, object] = OrderedDict()
        self.unavailable: OrderedDict[str, IdentityUnavailable] = OrderedDict()
        self.capacity = capacity

    def get(self, value) -> tuple[bytes, str, str]:
        """-> (bytes, sha256, display name); raises EchoVideoInputError naming the identity."""
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            key = hashlib.sha256(data).hexdigest()
            name = f"<bytes {key[:12]}>"
        elif isinstance(value, str) and value.strip():
            data, key, name = None, value, shown_reference(value)
        else:
            raise EchoVideoInputError("identity", f"{value!r} is not an image path, URI or bytes", "fill the column")
        if key in self.unavailable:  # one deadline per reference and run, not one per row naming it
            raise self.unavailable[key]
        if key not in self.cache:
            if data is None:
                try:
                    data = read_identity(value, name)
                except IdentityUnavailable as exc:
                    _remember(self.unavailable, key, exc, self.capacity)
                    raise
            check_identity_header(data, name, "identity")
            _remember(self.cache, key, (data, hashlib.sha256(data).hexdigest()), self.capacity)
        self.cache.move_to_end(key)
        return (*self.cache[key], name)

    def reference(self, value) -> dict:
        """The photo as a reference: its public name and what its filesystem says of it now (a photo given as
        bytes is its content). Cheap: no photo is read."""
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": hashlib.sha256(value).hexdigest()}
        if not isinstance(value, str) or not value.strip():
            return {"value": repr(value)}
        if value not in self.versions:
            _remember(self.versions, value, identity_version(value, shown_reference(value)), self.capacity)
        return {"reference": shown_reference(value), "version": self.versions[value]}


def _remember(cache: OrderedDict, key, value, capacity: int) -> None:
    cache[key] = value
    if len(cache) > capacity:
        cache.popitem(last=False)
