"""The one interface of a job's outputs (`Outputs`): videos, posters, identity photos, the records of finished
and failed samples, and at the end manifest, failures, summary, gallery. `LocalOutputs` (store.local) keeps
them in a folder, `ObjectStoreOutputs` (store.object_store) under an object-store prefix; `open_outputs`
(the package) picks one for a location.

Exactly-once: rank 0 puts the finished mp4 in place whole (see `destination`), then the driver records
the completion. Resume skips ids that are recorded AND whose video is listed (a *finished* sample);
everything else is rendered again (at-least-once execution, idempotent keyed outputs).
"""

import hashlib
import json
import logging
import os
import re
import socket
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from echovideo.errors import EchoVideoInputError
from echovideo.images import image_suffix
from echovideo.locations import store_hint
from ray_jobs.data.attempts import attempt_report, settle_rows
from ray_jobs.data.quality_gate import QualityGate
from ray_jobs.data.records import Kind, Rendered, SampleRecord, manifest_table
from ray_jobs.data.redact import redact
from ray_jobs.store.destination import Destination
from ray_jobs.store.errors import OutputError
from ray_jobs.store.gallery import thumbnail_name, write_gallery

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


class Outputs:
    """What both kinds of output share: where rank 0 writes a sample, what a rerun skips, the final files.

    A subclass keeps the records (`_append`, `_completion_records`, `_failure_records`), holds the output
    for one job (`locked`), and says where logs are written (`log_path`, `publish_logs`)."""

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
        """Raise if this job no longer holds the output (a folder's lock cannot be lost; see store.object_store)."""

    def remove_orphan_temps(self) -> int:
        """Temp files of renders that died mid-write: only names we make (nothing else matches)."""
        return self.destination.remove_temps(self.RANK_FOLDERS)

    def _present_videos(self) -> set[str]:
        """File names in videos/, listed once (one listing, not a look-up per record)."""
        return set(self.destination.names("videos"))

    def record(self, entry: SampleRecord) -> None:
        """Keep a sample's outcome for good (a rerun reads it back): a clip once its video is in place, or a
        failure."""
        self._append("done" if isinstance(entry, Rendered) else "failed", entry.as_json())

    def _append(self, kind: str, record: dict) -> None:
        raise NotImplementedError

    @contextmanager
    def locked(self) -> Iterator[None]:
        raise NotImplementedError

    def log_path(self, name: str) -> Path:
        raise NotImplementedError

    def _completion_records(self) -> Iterator[dict]:
        raise NotImplementedError

    def _failure_records(self) -> Iterator[dict]:
        raise NotImplementedError

    def _finished_records(self) -> Iterator[dict]:
        """Completion records whose video is listed: the clips a rerun keeps."""
        present = self._present_videos()
        return (r for r in self._completion_records() if self.video_name(r["sample_id"]).removeprefix("videos/")
                in present)

    def finished(self) -> dict[str, dict]:
        """Sample id -> completion record, for every finished sample."""
        return {r["sample_id"]: r for r in self._finished_records()}

    def _compact(self, done: dict[str, dict]) -> None:
        """Where records are many small objects, fold them into one a rerun reads instead (see subclasses)."""

    def resume_index(self, visit: Callable[[dict], None] | None = None
                     ) -> tuple[dict[str, str | None], dict[str, str]]:
        """What a rerun skips: finished sample id -> its content key, and row key -> sample id for every
        settled row. `visit` sees every finished record on the way (quality chains read their verdicts in the
        same pass, not a second read of the records).

        Settled: finished with its video present, or failed as bad input (that row, unchanged, fails the same
        way). A row key is `dataset.request_key` over the whole request (prompt, effective settings, model,
        and the photo's reference with its size and time), so any change to any of them is new work; an
        unavailable photo is never settled. Only ids and keys are kept (tens of bytes per settled row).
        """
        done, rows = {}, {}
        for record in self._finished_records():
            if visit is not None:
                visit(record)
            done[record["sample_id"]] = record.get("content_key")
            if record.get("row_key"):
                rows[record["row_key"]] = record["sample_id"]
        for record in self._failure_records():
            if record.get("kind") == INPUT_KIND and record.get("row_key"):
                rows[record["row_key"]] = record["sample_id"]
        return done, rows

    def finalize(self, summary: dict, gate: QualityGate = QualityGate(), requested: set[str] | None = None,
                 keep: str = "first") -> dict:
        """manifest.parquet (one row per sample, latest outcome: ok, rejected by the quality gate, superseded by
        another attempt of its row, or failed), failures.parquet, summary.json, the gallery.

        `requested`: every row's sample id the job asks for, known once its dataset was read to the end. The
        manifest then lists exactly those and their attempts: clips of an earlier version of the job (other
        settings, a photo since replaced, a row since fixed) stay on disk but are not this job's, and are
        counted apart. `keep`: which passing attempt is a row's clip (`quality.keep`)."""
        with writing(self.name):
            return self._finalize(summary, gate, requested, keep)

    def _finalize(self, summary: dict, gate: QualityGate, requested: set[str] | None, keep: str) -> dict:
        done = self.finished()
        self._compact(done)
        failed = {r["sample_id"]: r for r in self._failure_records() if r["sample_id"] not in done}
        if requested is not None:
            def asked(record: dict) -> bool:
                return (record.get("row_id") or record["sample_id"]) in requested

            earlier = sum(not asked(r) for r in done.values())
            done = {sid: r for sid, r in done.items() if asked(r)}
            failed = {sid: r for sid, r in failed.items() if asked(r)}
            summary = {**summary, "not_requested_now": earlier}
        finished = [{**r, "status": "ok", "error": None} for r in done.values()]
        for row in finished:
            status, reason = gate.verdict(row["sample_id"], row.get("scores"))
            mark = gate.marks.get(row["sample_id"])
            row.update(status=status, error=reason, review=mark and mark.mark, review_note=mark and mark.note)
        settle_rows(finished, keep)
        rows = finished + [{**r, "status": "failed", "path": None, "kept": False} for r in failed.values()]
        table = manifest_table(rows)
        self._write_parquet(table, "manifest.parquet")
        self._write_parquet(table.filter(pc.equal(table["status"], "failed")), "failures.parquet")
        passed = [r for r in finished if r["status"] == "ok"]
        rejected = [r for r in finished if r["status"] == "rejected"]
        in_review = sum((r["error"] or "").startswith("rejected in review") for r in rejected)
        summary = {**summary, "ok": len(passed), "rejected": len(rejected), "rejected_in_review": in_review,
                   "superseded": sum(r["status"] == "superseded" for r in finished), "failed": len(failed),
                   **attempt_report(finished, summary.get("ranks_per_replica", 1))}
        with self.destination.output("summary.json", ".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        write_gallery(self.destination, passed, list(failed.values()), rejected,
                      [r for r in finished if r["status"] == "superseded"])
        return summary

    def _write_parquet(self, table: pa.Table, name: str) -> None:
        with self.destination.output(name, ".parquet") as tmp:
            pq.write_table(table, str(tmp))

    def publish_logs(self) -> None:
        """Logs written on this machine reach the output (a local folder holds them already)."""


def holder_description() -> str:
    """Who holds an output: host, process, since when."""
    return f"host {socket.gethostname()} pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S %Z')}"


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

