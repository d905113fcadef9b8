"""What a run leaves behind: each settled sample as a typed record (`data.records`) kept by the store, the
run's counts and its progress bar, and at the end the summary, manifest and gallery.

The one place that turns a sample and its outcome into the manifest's fields: the engine and the scheduler
hand it samples, never dicts.
"""

import time
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from ray_jobs.data.job import JobSpec
from ray_jobs.data.quality_gate import QualityGate
from ray_jobs.data.records import Failed, Kind, Rendered
from ray_jobs.data.samples import Sample
from ray_jobs.runtime.feed import SampleFeed
from ray_jobs.runtime.logs import logger, run_log
from ray_jobs.runtime.placement import Plan
from ray_jobs.store import Outputs
from ray_jobs.store.errors import OutputError
from ray_jobs.store.ledger import LeaseLost

EXIT_OK, EXIT_FAILED_JOB, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3


@dataclass
class JobReport:
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    rebuilds: int = 0
    dropped_replicas: int = 0
    replicas_started: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.summary.get("failed") else EXIT_OK


class Recorder:
    def __init__(self, store: Outputs, progress: bool) -> None:
        self.store, self.progress = store, progress
        self.report = JobReport()
        self.bar = None
        self.up_at: dict[int, float] = {}  # when each slot's first replica was ready: start-up and render time

    def open_bar(self, requested: int | None) -> None:
        self.bar = tqdm(total=requested, disable=not self.progress, desc="clips", unit="clip")

    def replica_up(self, index: int) -> None:
        self.up_at.setdefault(index, time.monotonic())

    def rendered(self, sample: Sample, replica: int, timing: dict) -> None:
        """A clip whose video rank 0 has put in place."""
        self.store.record(Rendered(
            sample_id=sample.sample_id, row_key=sample.row_key, prompt=sample.prompt, identity=sample.identity,
            identity_sha256=sample.identity_sha, seed=sample.options["seed"], options=sample.options,
            attempts=sample.attempts, attempt=sample.attempt, row_id=sample.row_id,
            content_key=sample.content_key, photo=sample.photo,
            path=self.store.video_name(sample.sample_id), seconds=round(timing["seconds"], 3), replica=str(replica),
            scores=timing.get("scores"), video_sha256=timing.get("video_sha256")))
        self.report.rendered += 1
        self.bar.update(1)

    def failed(self, sample: Sample, reason: str, kind: Kind) -> None:
        """Recorded with its kind and row key: a rerun skips an unchanged row that was bad input (it would fail
        the same way) and retries every other failure."""
        self.store.record(Failed(
            sample_id=sample.sample_id, row_key=sample.row_key, prompt=sample.prompt, identity=sample.identity,
            identity_sha256=sample.identity_sha, seed=sample.options.get("seed"), options=sample.options,
            attempts=sample.attempts, attempt=sample.attempt, row_id=sample.row_id, kind=kind.value, error=reason))
        self.report.failed += 1
        self.bar.update(1)

    def count_skipped(self, feed: SampleFeed, requested: int | None) -> None:
        """Rows done before advance the bar; repeated rows come off its total (they are no work)."""
        new = feed.skipped - self.report.skipped
        if new:
            self.report.skipped += new
            self.bar.update(new)
        if requested is not None:
            wanted = requested - feed.duplicates
        else:  # a streamed dataset: known once it is read to its end
            wanted = len(feed.distinct_ids) if feed.walked else None
        if wanted is not None and wanted != self.bar.total:
            self.bar.total = wanted
            self.bar.refresh()

    def show_rate(self) -> None:
        elapsed = max(time.monotonic() - min(self.up_at.values(), default=time.monotonic()), 1e-9)
        self.bar.set_postfix(ok=self.report.rendered, failed=self.report.failed, refresh=False,
                             clips_per_min=f"{60 * self.report.rendered / elapsed:.1f}")

    def finish(self, spec: JobSpec, plan: Plan, feed: SampleFeed, gate: QualityGate, begun: float, ended_by: str,
               extra: dict) -> None:
        """However the run ended (done, a job error, Ctrl-C), what finished is in the manifest, summary and gallery.

        Finalising after a failure is best effort: the disk that stopped the job may refuse this too, and the
        journal, which a rerun reads, already holds every finished clip.
        """
        report = self.report
        run_log.info("finished: %d rendered, %d skipped (done before), %d failed, %d rebuilds; %s", report.rendered,
                     report.skipped, report.failed, report.rebuilds, ended_by)
        ended = time.monotonic()
        first_up = min(self.up_at.values(), default=ended)
        summary = {
            "job": spec.source, "ended": ended_by, "rendered_this_run": report.rendered,
            "skipped_done": report.skipped, "duplicate_rows": feed.duplicates, "replicas": plan.replicas,
            "ranks_per_replica": plan.ranks, "accelerator": plan.accelerator,
            "replicas_started": report.replicas_started, "replica_rebuilds": report.rebuilds,
            "replicas_dropped": report.dropped_replicas,
            "startup_seconds": round(max(self.up_at.values(), default=begun) - begun, 2),
            "render_seconds": round(ended - first_up, 2),
            "replica_seconds": round(sum(ended - up for up in self.up_at.values()), 2), **extra}
        try:
            requested = feed.distinct_ids if feed.walked else None  # the whole job is known
            report.summary = self.store.finalize(summary, gate, requested, spec.quality["keep"])
            self.store.publish_logs()
        except OutputError as exc:
            if ended_by == "complete":
                raise
            logger.warning("could not write the manifest after the job ended (%s); rerunning the job writes it", exc)
        except LeaseLost:
            if ended_by == "complete":
                raise
            # the other job owns the output now: its manifest, not this one's

    def close(self) -> None:
        self.bar.close()
