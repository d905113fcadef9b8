"""Quality retries: a row's attempts, each a request of its own, and which of them a row still needs.

Attempt 0 is the row's request as before: its id, keys and seed are unchanged. Attempt k + 1 is derived from
attempt k alone: its content and resume keys are attempt k's hashed with k + 1, its id is the first 24 hex
digits of its content key (a content id even where the row names one; the row's id stays in `row_id`), and
its seed is the next one derived from attempt k's. So an attempt is a function of the row's canonical
request and its number: rendered exactly once like any sample, and recognised by a rerun by construction.

Which attempts a row needs (`Chains`), from the verdicts of those it has (the gate's, with review marks):
- `keep: first`: attempt k + 1 once attempt k is rejected, up to `quality.retries` more; the first that
  passes is the row's clip;
- `keep: best`: every attempt 0..K is rendered and the passing one with the highest identity score is kept.
A clip rejected in review (`quality.review`, `run --review`) does not use up the automatic retries: the row
gets one more attempt for each such mark.
"""

import hashlib
from dataclasses import dataclass, field, replace

from ray_jobs.data.quality_gate import QualityGate
from ray_jobs.data.request_identity import ID_LENGTH, derived_seed
from ray_jobs.data.samples import Sample


def row_of(record: dict) -> str:
    """A record's row: the sample id of the row's attempt 0 (its own for attempt 0)."""
    return record.get("row_id") or record["sample_id"]


def attempt_key(key: str, attempt: int) -> str:
    return hashlib.sha256(f"{key}#attempt{attempt}".encode()).hexdigest()[:32]


def next_attempt(sample: Sample) -> Sample:
    """The row's next attempt after `sample` (its image and settings shared, a new id, keys and seed)."""
    attempt = sample.attempt + 1
    content_key = attempt_key(sample.content_key, attempt)
    options = {**sample.options, "seed": derived_seed(sample.options["seed"], f"attempt{attempt}")}
    return replace(sample, sample_id=content_key[:ID_LENGTH], content_key=content_key,
                   row_key=attempt_key(sample.row_key, attempt), options=options, attempt=attempt,
                   row_id=sample.row_id or sample.sample_id, attempts=0, photo=None, duplicate=False, settled=False)


def attempt_of(first: Sample, attempt: int) -> Sample:
    """Attempt `attempt` of the row whose attempt 0 is `first`."""
    sample = first
    while sample.attempt < attempt:
        sample = next_attempt(sample)
    return sample


@dataclass
class Row:
    """What is known of one row's attempts: attempt -> (passed, identity score); how many were rejected in
    review."""

    verdicts: dict[int, tuple[bool, float | None]] = field(default_factory=dict)
    reviewed_out: int = 0

    @property
    def passed(self) -> bool:
        return any(ok for ok, _ in self.verdicts.values())


@dataclass
class Chains:
    retries: int = 0
    keep: str = "first"
    gate: QualityGate = field(default_factory=QualityGate)
    target: int | None = None  # `dataset.target`: rows to pass the gate (counted here, across reruns)
    rows: dict[str, Row] = field(default_factory=dict)  # row id -> its attempts so far
    kept_rows: int = 0  # rows with a passing attempt: kept as verdicts arrive (the loop asks every tick)

    @classmethod
    def of(cls, quality: dict, gate: QualityGate, target: int | None = None) -> "Chains":
        return cls(quality["retries"], quality["keep"], gate, target)

    @property
    def active(self) -> bool:
        """Rows may get more attempts: retries asked for, or review marks that can reject a clip."""
        return self.retries > 0 or bool(self.gate.marks)

    @property
    def tracking(self) -> bool:
        """Verdicts are kept: for further attempts, or to count rows toward a target."""
        return self.active or self.target is not None

    def record(self, row_id: str, attempt: int, sample_id: str, scores: dict | None) -> None:
        """A finished attempt's verdict (this run's, or a record a rerun read back)."""
        status, reason = self.gate.verdict(sample_id, scores)
        row = self.rows.setdefault(row_id, Row())
        passed_before = row.passed
        row.verdicts[attempt] = (status == "ok", (scores or {}).get("identity_average"))
        row.reviewed_out += bool(reason and reason.startswith("rejected in review"))
        self.kept_rows += row.passed - passed_before

    def record_finished(self, record: dict) -> None:
        """A completion record a rerun reads back (`Outputs.resume_index`'s visitor)."""
        self.record(row_of(record), record.get("attempt") or 0, record["sample_id"], record.get("scores"))

    def wanted(self, row_id: str) -> int | None:
        """The next attempt the row needs, or None: its chain is complete (or never started: attempt 0 is the
        dataset's own sample, scheduled by the feed)."""
        row = self.rows.get(row_id)
        if row is None or not self.active:
            return None
        if self.keep == "first" and row.passed:
            return None
        return next((k for k in range(1, self.retries + row.reviewed_out + 1) if k not in row.verdicts), None)

    def follow_up(self, first: Sample) -> Sample | None:
        """For a row the feed skips as finished: the attempt its chain still needs, if any (a rerun)."""
        wanted = self.wanted(first.sample_id)
        return None if wanted is None else attempt_of(first, wanted)

    @property
    def target_reached(self) -> bool:
        return self.target is not None and self.kept_rows >= self.target


def kept_attempt(verdicts: dict[int, tuple[bool, float | None]], keep: str) -> int | None:
    """Which of a row's attempts is its clip: the first passing one, or the passing one with the highest
    identity score (ties: the earlier attempt)."""
    passing = [(attempt, score) for attempt, (ok, score) in sorted(verdicts.items()) if ok]
    if not passing:
        return None
    if keep == "first":
        return passing[0][0]
    return max(passing, key=lambda item: (item[1] if item[1] is not None else float("-inf"), -item[0]))[0]


def settle_rows(finished: list[dict], keep: str) -> None:
    """Mark each finished clip `kept` (its row's clip) or not, in place; a passing clip another attempt of its
    row outranks becomes `superseded` (rendered, passed, not the row's clip)."""
    rows: dict[str, list[dict]] = {}
    for clip in finished:
        rows.setdefault(row_of(clip), []).append(clip)
    for clips in rows.values():
        verdicts = {c.get("attempt") or 0: (c["status"] == "ok", (c.get("scores") or {}).get("identity_average"))
                    for c in clips}
        kept = kept_attempt(verdicts, keep)
        for clip in clips:
            clip["kept"] = (clip.get("attempt") or 0) == kept
            if clip["status"] == "ok" and not clip["kept"]:
                clip.update(status="superseded", error=f"attempt {kept} of its row is kept ({keep})")


def attempt_report(finished: list[dict], ranks: int) -> dict:
    """What the gate cost: the pass rate of each attempt number, and device-seconds per kept clip (every
    attempt's render time, on every rank of its replica)."""
    by_attempt: dict[int, list[bool]] = {}
    for clip in finished:
        by_attempt.setdefault(clip.get("attempt") or 0, []).append(clip["status"] != "rejected")
    kept = sum(bool(clip.get("kept")) for clip in finished)
    seconds = sum(clip.get("seconds") or 0.0 for clip in finished) * ranks
    return {"pass_rate_by_attempt": {str(k): round(sum(v) / len(v), 4) for k, v in sorted(by_attempt.items())},
            "gpu_seconds_per_kept_clip": round(seconds / kept, 2) if kept else None}
