"""A job's outputs: videos, posters, identity thumbnails, completion records, and at the end manifest,
failures, summary, gallery; in a local folder (`OutputStore`) or an object store (`ObjectStoreOutputs`).

Exactly-once: rank 0 puts the finished mp4 in place whole (see `destination`), then the driver records
the completion. Resume skips ids that are recorded AND whose video is listed; everything else is rendered
again (at-least-once execution, idempotent keyed outputs).

A local folder keeps its records in a journal (`state/completed.jsonl`, appended, fsynced), is held by one
job at a time with a lock, and nothing is written through a symbolic link inside it: a link planted in
the folder could otherwise send videos, journal lines or deletions elsewhere.
"""

import fcntl
import hashlib
import json
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from echovideo.errors import EchoVideoInputError
from echovideo.locations import is_uri, store_hint
from echovideo.video_io import atomic_output, is_our_temp
from ray_jobs.destination import Destination
from ray_jobs.failures import Kind, OutputError
from ray_jobs.gallery import thumbnail_name, write_gallery
from echovideo.images import image_suffix
from ray_jobs.quality_gate import SCORE_COLUMNS, QualityGate
from ray_jobs.redact import redact

SAFE = re.compile(r"[^A-Za-z0-9._-]")
logger = logging.getLogger("ray_jobs")
INPUT_KIND = Kind.INPUT.value


def safe_name(sample_id: str) -> str:
    """A file name that stays inside its folder whatever the id holds (../, /, NUL, 300 characters), and that
    no other id's name equals even where storage ignores case.

    Ids that are already safe and lower-case keep their name (content ids are lower-case hex); any other
    gets a readable prefix and a hash of the whole id, so two different ids never share a file ("a/b" and
    "a_b", "Case" and "case").
    """
    name = SAFE.sub("_", sample_id).lstrip(".")[:80]
    if name == sample_id and name == name.lower():
        return name
    return f"{name or 'sample'}-{hashlib.sha256(sample_id.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def photo_name(identity_sha: str, photo: bytes) -> str:
    """An identity photo's bytes as given, kept in the output: a trainer gets (photo, prompt, video) from the
    job alone, whatever became of the reference the row named."""
    return f"photos/{identity_sha}{image_suffix(photo)}"


@contextmanager
def writing(what: str | Path) -> Iterator[None]:
    """OS errors while writing the output become one clear job-level error (disk full, read-only, gone)."""
    try:
        yield
    except OSError as exc:
        reason = redact(str(exc.strerror or exc))[:300]
        raise OutputError(f"job.output: cannot write {what} ({reason}); free space or fix the folder or store, "
                          "then rerun the same job: finished clips are kept and only the rest is rendered") from exc


class JobOutputs:
    """What both kinds of output share: where rank 0 writes a sample, what a rerun skips, the final files.

    A subclass keeps the completion records (`_completion_records`, `_failure_records`, `record_*`), holds
    the output for one job (`locked`), and says where logs are written (`log_path`, `publish_logs`)."""

    FOLDERS = ("videos", "metadata", "posters", "identities", "photos", "state", "logs")
    RANK_FOLDERS = ("videos", "metadata", "posters", "identities", "photos")  # rank 0 writes these (temps too)

    def __init__(self, destination: Destination) -> None:
        self.destination = destination
        self.name = destination.name  # for messages: never holds credentials

    def video_name(self, sample_id: str) -> str:
        return f"videos/{safe_name(sample_id)}.mp4"

    def files_for(self, sample_id: str, identity_sha: str, photo: bytes) -> dict[str, str]:
        """Where rank 0 writes a sample's video, its json (prompt, settings and scores: what `generate` writes
        to OUT.json), its poster, its identity photo as given and that photo's thumbnail (relative names; a
        photo and its thumbnail are named by the photo's sha256, so each is written once per job)."""
        return {"video": self.video_name(sample_id), "record": f"metadata/{safe_name(sample_id)}.json",
                "poster": f"posters/{safe_name(sample_id)}.jpg", "thumbnail": thumbnail_name(identity_sha),
                "photo": photo_name(identity_sha, photo)}

    def fence(self) -> None:
        """Raise if this job no longer holds the output (a folder's lock cannot be lost; see object_outputs)."""

    def remove_orphan_temps(self) -> int:
        """Temp files of renders that died mid-write: only names we make (nothing else matches)."""
        return self.destination.remove_temps(self.RANK_FOLDERS)

    def _present_videos(self) -> set[str]:
        """File names in videos/, listed once (one listing, not a look-up per record)."""
        return set(self.destination.names("videos"))

    def _completion_records(self) -> Iterator[dict]:
        raise NotImplementedError

    def _failure_records(self) -> Iterator[dict]:
        raise NotImplementedError

    def _settled_completions(self) -> Iterator[dict]:
        present = self._present_videos()
        return (r for r in self._completion_records() if self.video_name(r["sample_id"]).removeprefix("videos/")
                in present)

    def completed(self) -> dict[str, dict]:
        return {r["sample_id"]: r for r in self._settled_completions()}

    def _compact(self, done: dict[str, dict]) -> None:
        """Where records are many small objects, fold them into one a rerun reads instead (see subclasses)."""

    def resume_index(self) -> tuple[dict[str, str | None], dict[str, str]]:
        """What a rerun skips: finished sample id -> its content key, and row key -> sample id for every
        settled row.

        Settled: finished with its video present, or failed as bad input (that row, unchanged, fails the same
        way). A row key is `dataset.request_key` over the whole request (prompt, effective settings, model,
        and the photo's reference with its size and time), so any change to any of them is new work; an
        unavailable photo is never settled. Only ids and keys are kept (tens of bytes per settled row).
        """
        done, rows = {}, {}
        for record in self._settled_completions():
            done[record["sample_id"]] = record.get("content_key")
            if record.get("row_key"):
                rows[record["row_key"]] = record["sample_id"]
        for record in self._failure_records():
            if record.get("kind") == INPUT_KIND and record.get("row_key"):
                rows[record["row_key"]] = record["sample_id"]
        return done, rows

    def finalize(self, summary: dict, gate: QualityGate = QualityGate(), requested: set[str] | None = None) -> dict:
        """manifest.parquet (one row per sample, latest outcome: ok, rejected by the quality gate, or failed),
        failures.parquet, summary.json, the gallery.

        `requested`: every sample id the job asks for, known once its dataset was read to the end. The
        manifest then lists exactly those: clips of an earlier version of the job (other settings, a photo
        since replaced, a row since fixed) stay on disk but are not this job's, and are counted apart."""
        with writing(self.name):
            return self._finalize(summary, gate, requested)

    def _finalize(self, summary: dict, gate: QualityGate, requested: set[str] | None) -> dict:
        done = self.completed()
        self._compact(done)
        failed = {r["sample_id"]: r for r in self._failure_records() if r["sample_id"] not in done}
        if requested is not None:
            earlier = sum(sid not in requested for sid in done)
            done = {sid: r for sid, r in done.items() if sid in requested}
            failed = {sid: r for sid, r in failed.items() if sid in requested}
            summary = {**summary, "not_requested_now": earlier}
        finished = [{**r, "status": "ok", "error": None} for r in done.values()]
        for row in finished:
            status, reason = gate.verdict(row["sample_id"], row.get("scores"))
            mark = gate.marks.get(row["sample_id"])
            row.update(status=status, error=reason, review=mark and mark.mark, review_note=mark and mark.note)
        rows = finished + [{**r, "status": "failed", "path": None} for r in failed.values()]
        table = manifest_table(rows)
        self._write_parquet(table, "manifest.parquet")
        self._write_parquet(table.filter(pc.equal(table["status"], "failed")), "failures.parquet")
        passed = [r for r in finished if r["status"] == "ok"]
        rejected = [r for r in finished if r["status"] == "rejected"]
        in_review = sum((r["error"] or "").startswith("rejected in review") for r in rejected)
        summary = {**summary, "ok": len(passed), "rejected": len(rejected), "rejected_in_review": in_review,
                   "failed": len(failed)}
        with self.destination.output("summary.json", ".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        write_gallery(self.destination, passed, list(failed.values()), rejected)
        return summary

    def _write_parquet(self, table: pa.Table, name: str) -> None:
        with self.destination.output(name, ".parquet") as tmp:
            pq.write_table(table, str(tmp))

    def publish_logs(self) -> None:
        """Logs written on this machine reach the output (a local folder holds them already)."""


class OutputStore(JobOutputs):
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

    def video_path(self, sample_id: str) -> Path:
        return self.folder / self.video_name(sample_id)

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
        return self._journal("completed.jsonl")

    def _failure_records(self) -> Iterator[dict]:
        return self._journal("failed.jsonl")

    def _append(self, name: str, record: dict) -> None:
        path = self.state / name
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

    def record_success(self, record: dict) -> None:
        self._append("completed.jsonl", record)

    def record_failure(self, record: dict) -> None:
        self._append("failed.jsonl", record)


def holder_description() -> str:
    """Who holds an output: host, process, since when."""
    return f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


def open_outputs(location: str) -> JobOutputs:
    """A local folder, or an object-store prefix for a URI."""
    if is_uri(location):
        from ray_jobs.object_outputs import ObjectStoreOutputs

        return ObjectStoreOutputs(location)
    return OutputStore(location)


MANIFEST_TYPES = {"sample_id": pa.string(), "status": pa.string(), "prompt": pa.string(), "identity": pa.string(),
                  "identity_sha256": pa.string(), "photo": pa.string(),
                  "seed": pa.int64(), "options": pa.string(), "path": pa.string(), "video_sha256": pa.string(),
                  "error": pa.string(),
                  "attempts": pa.int64(), "seconds": pa.float64(), "replica": pa.string(),
                  "lease": pa.string(),  # the job that recorded it, on an object store (see object_outputs)
                  "review": pa.string(), "review_note": pa.string(),  # a reviewer's keep/reject (quality.review)
                  **{c: pa.bool_() if c == "dynamic" else pa.float64() for c in SCORE_COLUMNS}, "scores": pa.string()}


def manifest_table(rows: list[dict]) -> pa.Table:
    """One row per sample; the headline scores as their own columns (group and filter on them in any tool),
    every score with the per-frame similarities in the `scores` JSON."""
    def value(row: dict, column: str):
        if column in SCORE_COLUMNS:
            return (row.get("scores") or {}).get(column)
        return _cell(row.get(column))

    return pa.table({c: [value(r, c) for r in rows] for c in MANIFEST_TYPES}, schema=pa.schema(MANIFEST_TYPES.items()))


def read_manifest(output: str, statuses: tuple[str, ...]) -> list[dict]:
    """The manifest's rows with these statuses, their `options` and `scores` parsed back from JSON."""
    source = Destination(output)
    try:
        with source.fs.open_input_file(source.path("manifest.parquet")) as handle:
            rows = pq.read_table(handle).to_pylist()
    except (OSError, ValueError) as exc:
        raise EchoVideoInputError("OUTPUT", f"no manifest.parquet in {redact(output)} ({redact(str(exc))[:200]})"
                                  f"{store_hint(str(exc))}",
                                  "pass a job's output folder (run the job first)") from None
    clips = [row for row in rows if row["status"] in statuses]
    for clip in clips:
        for column in ("options", "scores"):
            clip[column] = json.loads(clip[column]) if isinstance(clip.get(column), str) else clip.get(column)
    return clips


def _cell(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
