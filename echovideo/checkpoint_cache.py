"""A checkpoint folder given as a URI (`s3://bucket/ckpts`, `gs://...`, any pyarrow filesystem): downloaded once
per node into a node-local cache, then loaded like a local folder.

Concurrent ranks on a node take an exclusive lock on the cache entry: one downloads, the others wait and
then find it done. A download goes to a staging folder, is checked file by file against the store's
listing (every size), and only then renamed into place with that listing. Every use compares the entry's
listing with the store's current one (names, sizes, modification times): weights replaced under the same
URI are downloaded again, and an entry whose files no longer match (a disk cleaner) too. A half download is
never used, and one left by a killed download is removed by the next (its owner provably gone: it held
the entry's lock, which the kernel released when it died).

Only the files the loader reads are listed, fetched and fingerprinted (`checkpoint_identity`): a NOTES.txt
under the prefix is neither downloaded nor part of the weights' name.
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

from echovideo.checkpoint_identity import fingerprint, folder_fingerprint, is_loaded
from echovideo.errors import CheckpointError
from echovideo.locations import default_cache_dir, is_uri, open_uri, public_name

LISTING = ".echovideo-files.json"  # relative path -> [size, mtime_ns] in the store, written last: a complete entry
DOWNLOADS_LOG = "downloads.log"  # one line per download: what a node really fetched
PARTIAL = ".partial-"


def cache_root() -> Path:
    return default_cache_dir() / "checkpoints"


def checkpoint_folder(location: str) -> Path:
    """A local checkpoint folder as given, or the node-local copy of one given as a URI."""
    return local_checkpoint(location) if is_uri(location) else Path(location)


def store_listing(uri: str) -> dict[str, list]:
    """What the store says the checkpoint's loaded files are: relative path -> [size, modification time in ns]."""
    name = public_name(uri)
    try:
        filesystem, root = open_uri(uri)
        infos = [info for info in filesystem.get_file_info(pfs.FileSelector(root, recursive=True))
                 if info.type == pfs.FileType.File]
    except (OSError, ValueError) as exc:
        raise CheckpointError("model.checkpoint", f"cannot list {name} ({str(exc)[:200]})",
                              "check the URI and the storage credentials in the environment") from None
    listing = {info.path[len(root):].lstrip("/"): [info.size, info.mtime_ns] for info in infos}
    listing = {rel: value for rel, value in listing.items() if is_loaded(rel)}
    if not listing:
        raise CheckpointError("model.checkpoint", f"{name} holds no checkpoint files",
                              "point at the released ckpts/ folder")
    return listing


def weights_fingerprint(location: str) -> str:
    """The weights a job pins as it starts: a URI by the store's listing now, a local folder by its files."""
    return fingerprint(store_listing(location)) if is_uri(location) else folder_fingerprint(Path(location))


def loaded_weights(location: str) -> tuple[Path, str]:
    """The local folder a rank loads and the fingerprint of what it holds (a URI's node-local copy is named by
    the store listing it was downloaded from)."""
    if not is_uri(location):
        return Path(location), folder_fingerprint(Path(location))
    entry = local_checkpoint(location)
    return entry, fingerprint(json.loads((entry / LISTING).read_text()))


def local_checkpoint(uri: str, on_progress=None) -> Path:
    """The node-local copy of the checkpoint at `uri` as the store holds it now, downloading it if this node
    has no complete, current one. `on_progress(bytes_done, bytes_total)` is called while downloading."""
    name = public_name(uri)
    entry = cache_root() / hashlib.sha256(name.encode()).hexdigest()[:20]
    entry.parent.mkdir(parents=True, exist_ok=True)
    listing = store_listing(uri)
    with open(entry.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the other ranks of this node wait here for the one downloading
        _remove_dead_partials(entry)
        if not _current(entry, listing):
            _download(uri, name, entry, listing, on_progress)
    return entry


def _current(entry: Path, listing: dict[str, list]) -> bool:
    """The entry holds exactly what the store lists now, every file whole."""
    try:
        recorded = json.loads((entry / LISTING).read_text())
    except (OSError, ValueError):
        return False
    return recorded == listing and all(
        (entry / rel).is_file() and (entry / rel).stat().st_size == size for rel, (size, _) in listing.items())


def _remove_dead_partials(entry: Path) -> None:
    """Staging folders of this entry left by a download that died (SIGKILL, power loss). Called holding the
    entry's lock, which every download holds while it runs: none of them can belong to a live download."""
    for partial in entry.parent.glob(f".{entry.name}{PARTIAL}*"):
        shutil.rmtree(partial, ignore_errors=True)


def keep_free_bytes() -> int:
    """Space a download must leave free on the cache's disk (`ECHOVIDEO_CACHE_KEEP_FREE_GB`, default 1)."""
    return int(float(os.environ.get("ECHOVIDEO_CACHE_KEEP_FREE_GB", "1")) * 2**30)


def _make_room(name: str, entry: Path, total: int) -> None:
    """Refuse a download that cannot fit, before it starts, naming the sizes; a stale copy of this entry is
    removed first when only its space makes the download fit (it is replaced either way)."""
    stale = sum(p.stat().st_size for p in entry.rglob("*") if p.is_file()) if entry.is_dir() else 0
    free, keep = shutil.disk_usage(entry.parent).free, keep_free_bytes()
    if free - total < keep <= free + stale - total:
        shutil.rmtree(entry, ignore_errors=True)
    elif free + stale - total < keep:
        raise CheckpointError("model.checkpoint", f"{name} is {total / 2**30:.2f} GiB, {entry.parent} has "
                              f"{free / 2**30:.2f} GiB free (and keeps {keep / 2**30:g} GiB free: "
                              "ECHOVIDEO_CACHE_KEEP_FREE_GB)",
                              "free space there, or set ECHOVIDEO_CACHE to a disk with room")


def _download(uri: str, name: str, entry: Path, listing: dict[str, list], on_progress) -> None:
    filesystem, root = open_uri(uri)
    total = sum(size for size, _ in listing.values())
    _make_room(name, entry, total)
    staging = Path(tempfile.mkdtemp(prefix=f".{entry.name}{PARTIAL}", dir=entry.parent))
    try:
        started, done = time.monotonic(), 0
        for rel, (size, _) in sorted(listing.items()):  # file by file: progress, and no hidden retry of a whole tree
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            pfs.copy_files(f"{root}/{rel}", str(staging / rel), source_filesystem=filesystem,
                           destination_filesystem=pfs.LocalFileSystem())
            done += size
            if on_progress is not None:
                on_progress(done, total)
        wrong = [rel for rel, (size, _) in listing.items()
                 if not (staging / rel).is_file() or (staging / rel).stat().st_size != size]
        if wrong:
            raise CheckpointError("model.checkpoint", f"download of {name} is incomplete: {wrong[:3]}",
                                  "retry; check the storage") from None
        (staging / LISTING).write_text(json.dumps(listing, sort_keys=True))
        shutil.rmtree(entry, ignore_errors=True)
        os.replace(staging, entry)
        with open(entry.parent / DOWNLOADS_LOG, "a") as log:
            log.write(f"{name} pid {os.getpid()} {total} bytes {time.monotonic() - started:.1f} s\n")
    except OSError as exc:
        raise CheckpointError("model.checkpoint", f"cannot download {name} ({str(exc)[:200]})",
                              "check the URI, the credentials and the free space in ECHOVIDEO_CACHE") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
