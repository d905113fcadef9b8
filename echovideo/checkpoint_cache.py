"""A checkpoint folder given as a URI (`s3://bucket/ckpts`, `gs://...`, any pyarrow filesystem): downloaded once
per node into a node-local cache, then loaded like a local folder.

Concurrent ranks on a node take an exclusive lock on the cache entry: one downloads, the others wait and
then find it done. A download goes to a staging folder, is checked file by file against the store's
listing (every size), and only then renamed into place with its file list; an entry whose files no longer
match that list (a disk cleaner, a crash before this scheme) is downloaded again. A half download is never
used.
"""

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path

import pyarrow.fs as pfs

from echovideo.errors import CheckpointError
from echovideo.locations import default_cache_dir, is_uri, public_name

LISTING = ".echovideo-files.json"  # relative path -> size, written last: marks a complete entry
DOWNLOADS_LOG = "downloads.log"  # one line per download: what a node really fetched


def cache_root() -> Path:
    return default_cache_dir() / "checkpoints"


def checkpoint_folder(location: str) -> Path:
    """A local checkpoint folder as given, or the node-local copy of one given as a URI."""
    return local_checkpoint(location) if is_uri(location) else Path(location)


def local_checkpoint(uri: str) -> Path:
    """The node-local copy of the checkpoint at `uri`, downloading it if this node has no complete one."""
    name = public_name(uri)
    entry = cache_root() / hashlib.sha256(name.encode()).hexdigest()[:20]
    entry.parent.mkdir(parents=True, exist_ok=True)
    with open(entry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other ranks of this node wait here for the one downloading
        if not _complete(entry):
            _download(uri, name, entry)
    return entry


def _complete(entry: Path) -> bool:
    try:
        files = json.loads((entry / LISTING).read_text())
    except (OSError, ValueError):
        return False
    return all((entry / rel).is_file() and (entry / rel).stat().st_size == size for rel, size in files.items())


def _download(uri: str, name: str, entry: Path) -> None:
    try:
        filesystem, root = pfs.FileSystem.from_uri(uri)
        listing = [info for info in filesystem.get_file_info(pfs.FileSelector(root, recursive=True))
                   if info.type == pfs.FileType.File]
    except (OSError, ValueError) as exc:
        raise CheckpointError("model.checkpoint", f"cannot list {name} ({str(exc)[:200]})",
                              "check the URI and the storage credentials in the environment") from None
    if not listing:
        raise CheckpointError("model.checkpoint", f"{name} holds no files", "point at the released ckpts/ folder")
    files = {info.path[len(root):].lstrip("/"): info.size for info in listing}
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}.partial-", dir=entry.parent))
    try:
        started = time.monotonic()
        pfs.copy_files(root, str(staging), source_filesystem=filesystem, destination_filesystem=pfs.LocalFileSystem())
        wrong = [rel for rel, size in files.items()
                 if not (staging / rel).is_file() or (staging / rel).stat().st_size != size]
        if wrong:
            raise CheckpointError("model.checkpoint", f"download of {name} is incomplete: {wrong[:3]}",
                                  "retry; check the storage") from None
        (staging / LISTING).write_text(json.dumps(files, sort_keys=True))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(staging, entry)
        with open(entry.parent / DOWNLOADS_LOG, "a") as log:
            log.write(f"{name} pid {os.getpid()} {sum(files.values())} bytes {time.monotonic() - started:.1f} s\n")
    except OSError as exc:
        raise CheckpointError("model.checkpoint", f"cannot download {name} ({str(exc)[:200]})",
                              "check the URI, the credentials and the free space in ECHOVIDEO_CACHE") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
