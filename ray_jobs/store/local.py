"""A job's outputs in a local (or mounted) folder.

Its records are a journal per kind (`state/completed.jsonl`, `state/failed.jsonl`: appended, fsynced), the
folder is held by one job at a time with a kernel lock, and nothing is written through a symbolic link
inside it: a link planted in the folder could otherwise send videos, journal lines or deletions elsewhere.
"""

import fcntl
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from echovideo.errors import EchoVideoInputError
from echovideo.video_io import atomic_output, is_our_temp
from ray_jobs.store.destination import Destination
from ray_jobs.store.outputs import Outputs, holder_description, writing

logger = logging.getLogger("ray_jobs")
JOURNALS = {"done": "completed.jsonl", "failed": "failed.jsonl"}


class LocalOutputs(Outputs):
    """A local (or shared, mounted) folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.videos, self.state = self.folder / "videos", self.folder / "state"
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._refuse_links()
            for name in self.FOLDERS:
                (self.folder / name).mkdir(exist_ok=True)
            with atomic_output(self.state / "writable", ".probe") as probe:
                probe.write_text("ok")
        except OSError as exc:
            raise EchoVideoInputError("job.output", f"{self.folder} cannot be written ({exc.strerror or exc})",
                                      "choose a writable folder with free space") from None
        super().__init__(Destination(self.folder))

    def _refuse_links(self) -> None:
        """Our folders, and every file the driver appends to (state/, logs/), are never symbolic links."""
        links = [self.folder / name for name in self.FOLDERS if (self.folder / name).is_symlink()]
        for name in ("state", "logs"):
            if (self.folder / name).is_dir() and not (self.folder / name).is_symlink():
                links += [Path(e.path) for e in os.scandir(self.folder / name) if e.is_symlink()]
        if links:
            raise EchoVideoInputError("job.output", f"{links[0]} is a symbolic link",
                                      "nothing is written through links inside the output folder: remove it")

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the folder for one job: an exclusive lock on `state/job.lock`, which names its holder.

        A second job into the same folder stops at once (exit 2) instead of rendering the same clips twice.
        The kernel drops the lock when its holder dies, so a crashed or killed job never leaves a stale one
        (flock; on NFSv4 it holds across hosts). A filesystem without locks gets a warning, not a refusal.
        """
        path = self.state / "job.lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 400, 0).decode("utf-8", "replace").strip() or "unknown holder"
                raise EchoVideoInputError("job.output", f"another job is writing into {self.folder} ({holder})",
                                          "wait for it to end, or give this job another job.output") from None
            except OSError as exc:
                logger.warning("cannot lock %s (%s): do not run two jobs into this folder at once", path, exc)
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{holder_description()}\n".encode(), 0)
            yield
        finally:
            os.close(fd)

    def log_path(self, name: str) -> Path:
        return self.folder / "logs" / name

    def remove_orphan_temps(self) -> int:
        """As for any output, but never through a link."""
        orphans = [Path(e.path) for folder in self.RANK_FOLDERS for e in os.scandir(self.folder / folder)
                   if is_our_temp(e.name) and not e.is_symlink()]
        for path in orphans:
            path.unlink(missing_ok=True)
        return len(orphans)

    def _journal(self, name: str) -> Iterator[dict]:
        """The journal's records, streamed (a million-line journal is never one string in memory)."""
        try:
            fd = os.open(self.state / name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        with open(fd) as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash mid-append: that sample is simply redone
                    continue

    def _present_videos(self) -> set[str]:
        return {entry.name for entry in os.scandir(self.videos)}

    def _completion_records(self) -> Iterator[dict]:
        return self._journal(JOURNALS["done"])

    def _failure_records(self) -> Iterator[dict]:
        return self._journal(JOURNALS["failed"])

    def _append(self, kind: str, record: dict) -> None:
        path = self.state / JOURNALS[kind]
        with writing(path), open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644),
                                 "a+b") as handle:
            line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
            size = handle.seek(0, os.SEEK_END)
            if size:  # a crash mid-append leaves a line without its newline: end it, or this record joins it
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
