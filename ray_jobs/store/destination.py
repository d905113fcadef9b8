"""Where a job's files go: a local folder, or a prefix in an object store (any pyarrow filesystem URI).

A file appears under its final name whole or not at all. Locally that is a temp file beside it, renamed.
An object store has no rename, and pyarrow completes an upload even when the code inside
`open_output_stream` raises, so a failure half way would leave a truncated object: a file is written
locally first, uploaded to a temp key beside its final one (a name `is_our_temp` matches), then moved by
the store itself (a server-side copy, all or nothing) and the temp key deleted. A crash between leaves only
a temp key, which the next run sweeps.
"""

import secrets
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pfs

from echovideo.locations import filesystem, is_uri, public_name
from echovideo.video_io import TEMP_MARK, atomic_output, is_our_temp
from ray_jobs.data.redact import redact

CHUNK_BYTES = 8 << 20


class UploadError(OSError):
    """The store refused or dropped an upload (after pyarrow's own retries); nothing reached the final key."""


class Destination:
    def __init__(self, location: str | Path) -> None:
        self.location = str(location)
        self.remote = is_uri(self.location)
        self.fs, self.root = filesystem(self.location)
        # a file:// URI is a local disk: written through atomic local files like a path (an output stream there
        # is neither atomic nor able to create its folders)
        self.local_disk = isinstance(self.fs, pfs.LocalFileSystem)
        self.name = public_name(self.location) if self.remote else self.root  # never holds credentials

    def path(self, relative: str) -> str:
        return f"{self.root}/{relative}"

    @contextmanager
    def output(self, relative: str, suffix: str) -> Iterator[Path]:
        """Yield a local path to write; on success it becomes `relative` whole, on failure nothing does."""
        if self.local_disk:
            with atomic_output(self.path(relative), suffix) as tmp:
                yield tmp
            return
        with tempfile.TemporaryDirectory(prefix="echovideo-") as folder:
            local = Path(folder) / f"file{suffix}"
            yield local
            self.upload(local, relative)

    def upload(self, local: Path, relative: str) -> None:
        """A whole local file to `relative`, through a temp key and a server-side move (see the module doc)."""
        final = self.path(relative)
        parent, name = final.rsplit("/", 1)
        if self.local_disk:
            self.fs.create_dir(parent, recursive=True)
        temp = f"{parent}/.{name}.{secrets.token_hex(4)}{TEMP_MARK}{Path(name).suffix or '.bin'}"
        try:
            with open(local, "rb") as source, self.fs.open_output_stream(temp) as stream:
                for chunk in _chunks(source):
                    stream.write(chunk)
            self.fs.move(temp, final)
        except OSError as exc:
            if self.local_disk:  # a local disk's errors keep their errno (full, read-only: the job stops)
                raise
            raise UploadError(f"cannot upload {relative} to {self.name}: {redact(str(exc))[:300]}") from None
        finally:
            self._delete_quietly(temp)

    def put(self, relative: str, data: bytes) -> None:
        """Small bytes held in memory (markers, leases, logs): one write, so no code of ours runs while the
        upload is open and it completes whole or not at all."""
        if self.local_disk:
            with atomic_output(self.path(relative), Path(relative).suffix or ".bin") as tmp:
                tmp.write_bytes(data)
            return
        with self.fs.open_output_stream(self.path(relative)) as stream:
            stream.write(data)

    def read(self, relative: str) -> bytes | None:
        """The file's bytes, or None if there is none."""
        try:
            with self.fs.open_input_stream(self.path(relative)) as stream:
                return stream.read()
        except FileNotFoundError:
            return None

    def exists(self, relative: str) -> bool:
        return self.fs.get_file_info(self.path(relative)).type == pfs.FileType.File

    def names(self, folder: str) -> list[str]:
        """File names directly in `folder` ("" for the root; one listing, an object store pages it 1,000 keys a
        request)."""
        selector = pfs.FileSelector(self.path(folder) if folder else self.root, allow_not_found=True)
        return [info.base_name for info in self.fs.get_file_info(selector) if info.type == pfs.FileType.File]

    def delete(self, relative: str) -> None:
        self._delete_quietly(self.path(relative))

    def remove_temps(self, folders: tuple[str, ...]) -> int:
        """Temp files and keys of writes that died half way: only names we make match."""
        orphans = [f"{folder}/{name}" for folder in folders for name in self.names(folder) if is_our_temp(name)]
        for relative in orphans:
            self.delete(relative)
        return len(orphans)

    def _delete_quietly(self, path: str) -> None:
        try:
            self.fs.delete_file(path)
        except FileNotFoundError:
            pass


def _chunks(source) -> Iterator[bytes]:
    while chunk := source.read(CHUNK_BYTES):
        yield chunk
