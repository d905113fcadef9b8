"""The manifest's schema: what a job records per sample, as typed records, and the columns they become.

The runtime builds these records (`runtime.recorder`), the store journals them and folds them into
manifest.parquet (`store.outputs`), the tools read that back (`tools.export`, `tools.evaluate`). Defining
them here, below all three, keeps the journal, the manifest and its readers one schema: a field is added in
one place.
"""

import json
from dataclasses import asdict, dataclass
from enum import Enum

import pyarrow as pa

from ray_jobs.data.quality_gate import SCORE_COLUMNS


class Kind(Enum):
    """Why a sample failed, as the manifest's `kind` says it (and what the runtime's policy keys on)."""

    INPUT = "bad input"  # the row itself: fails at once; the group agreed on it and is intact
    UNAVAILABLE = "input unavailable"  # the photo could not be read now (missing, network, timeout): a rerun retries
    OUT_OF_MEMORY = "out of memory"  # fails at once (it would again on this layout); the replica is rebuilt
    SAMPLE = "sample error"  # anything else raised while rendering: retried on a rebuilt replica
    GROUP_LOST = "group lost"  # a rank died, hung or its group broke: retried on a rebuilt replica
    OUTPUT = "output error"  # the clip could not be written: the job stops, and resumes when rerun
    UPLOAD = "upload error"  # the store dropped rank 0's upload after the group finished: retried, same replica
    NODE_LOST = "node lost"  # a rank's node died or was preempted: re-rendered elsewhere, no attempt charged

    @property
    def keeps_replica(self) -> bool:
        """Every rank leaves the sample together and the group stays usable (wait for all ranks, keep it)."""
        return self in (Kind.INPUT, Kind.UPLOAD)


@dataclass(frozen=True)
class SampleRecord:
    """What every record of a sample says: which request it was (its id and keys) and how often it was tried."""

    sample_id: str
    row_key: str | None = None  # `request_identity.request_key`: what a rerun skips
    prompt: str | None = None
    identity: str | None = None  # the photo's reference as the row gave it (credentials redacted)
    identity_sha256: str | None = None
    seed: int | None = None
    options: dict | None = None  # the effective generation settings
    attempts: int = 1  # tries of this sample (failures retried: `job.retries`)
    attempt: int = 0  # which render of its row (quality retries: `quality.retries`)
    row_id: str | None = None  # the row's first sample id (None for attempt 0: its own)

    def as_json(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Rendered(SampleRecord):
    """A finished clip, recorded after rank 0 put its video in place."""

    content_key: str | None = None  # what a duplicate row is recognised by
    photo: str | None = None  # the photo as given, kept in the output (`photos/...`)
    path: str | None = None  # the video, relative to the output
    seconds: float | None = None  # render time on the replica
    replica: str | None = None
    scores: dict | None = None
    video_sha256: str | None = None


@dataclass(frozen=True)
class Failed(SampleRecord):
    """A sample that failed for good this run (`kind` says whether a rerun tries it again)."""

    kind: str = Kind.SAMPLE.value
    error: str = ""


MANIFEST_TYPES = {"sample_id": pa.string(), "status": pa.string(), "prompt": pa.string(), "identity": pa.string(),
                  "identity_sha256": pa.string(), "photo": pa.string(),
                  "seed": pa.int64(), "options": pa.string(), "path": pa.string(), "video_sha256": pa.string(),
                  "error": pa.string(),
                  "attempts": pa.int64(), "attempt": pa.int64(), "row_id": pa.string(), "kept": pa.bool_(),
                  "seconds": pa.float64(), "replica": pa.string(),
                  "lease": pa.string(),  # the job that recorded it, on an object store (see store.object_store)
                  "review": pa.string(), "review_note": pa.string(),  # a reviewer's keep/reject (quality.review)
                  **{c: pa.bool_() if c == "dynamic" else pa.float64() for c in SCORE_COLUMNS}, "scores": pa.string()}
# Set when the manifest is written, not by a record: the gate's verdict, the review, which attempt of its row
# is kept, the ledger entry's holder.
FINAL_COLUMNS = ("status", "review", "review_note", "kept", "lease")


def manifest_table(rows: list[dict]) -> pa.Table:
    """One row per sample; the headline scores as their own columns (group and filter on them in any tool),
    every score with the per-frame similarities in the `scores` JSON."""
    def value(row: dict, column: str):
        if column in SCORE_COLUMNS:
            return (row.get("scores") or {}).get(column)
        return _cell(row.get(column))

    return pa.table({c: [value(r, c) for r in rows] for c in MANIFEST_TYPES}, schema=pa.schema(MANIFEST_TYPES.items()))


def _cell(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
