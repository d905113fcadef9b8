"""Which sample goes where, and what becomes of it.

Each idle replica pulls the next sample (a retry first, then the dataset's next one), so a fast replica
takes more work and a slow one never holds the tail. An outcome is settled by the failure policy
(`failures.decide`): bad input fails the sample at once and keeps the replica; out of memory fails it at
once and rebuilds the replica; anything else rebuilds the replica and retries the sample up to
`job.retries` attempts; a failure that was its node's renders elsewhere, uncharged (`Elasticity.node_verdict`).
"""

from collections import deque
from typing import Callable

from ray_jobs.data.attempts import Chains, attempt_of
from ray_jobs.data.job import JobSpec
from ray_jobs.data.records import Kind
from ray_jobs.data.samples import Sample
from ray_jobs.runtime.clock import LookClock
from ray_jobs.runtime.elasticity import Elasticity
from ray_jobs.runtime.failures import decide
from ray_jobs.runtime.feed import SampleFeed
from ray_jobs.runtime.logs import logger
from ray_jobs.runtime.recorder import Recorder
from ray_jobs.runtime.replica import Outcome, Replica
from ray_jobs.store import Outputs
from ray_jobs.store.errors import OutputError


class Scheduler:
    def __init__(self, spec: JobSpec, store: Outputs, feed: SampleFeed, elastic: Elasticity, recorder: Recorder,
                 clock: LookClock, chains: Chains, on_result: Callable[[Sample, Replica], None] | None = None) -> None:
        self.spec, self.store, self.feed, self.elastic = spec, store, feed, elastic
        self.recorder, self.clock, self.chains, self.on_result = recorder, clock, chains, on_result
        self.retry: deque[Sample] = deque()  # failed samples to try again, then a row's next attempt
        self.waiting: Sample | None = None  # taken from the feed while no replica was idle
        self.awaiting_verdict: list[tuple[Replica, Outcome]] = []  # failures that may be their node's
        self.rows_taken = 0  # rows begun: handed out from the feed (attempt 0) or failed there

    @property
    def target_reached(self) -> bool:
        return self.chains.target_reached

    @property
    def feed_done(self) -> bool:
        """No new row will be taken: the dataset is read to its end, or the target is reached."""
        return self.feed.exhausted or self.target_reached

    # -- handing out work -------------------------------------------------------------------------------------
    def read_ahead(self, timeout: float = 0.0) -> None:
        """Hold the dataset's next sample, if none is held: a dataset with nothing left ends the job at once,
        without waiting for replicas still loading."""
        if self.waiting is None and not self.target_reached:
            self.waiting = self._from_feed(timeout)

    def dispatch(self) -> None:
        """Each idle replica pulls the next sample."""
        for replica in self.elastic.idle_replicas():
            sample = self._next()
            if sample is None:
                return
            files = self.store.files_for(sample.sample_id, sample.identity_sha, sample.image)
            sample.photo = files["photo"]  # named once (a header read): the completion record repeats it
            replica.submit(sample, files, self.clock.tick())

    def _next(self) -> Sample | None:
        if self.retry:
            return self.retry.popleft()
        if self.target_reached:
            return None
        sample, self.waiting = self.waiting or self._from_feed(), None
        self.rows_taken += sample is not None and sample.attempt == 0  # a row's first hand-out (not a retry)
        return sample

    def _from_feed(self, timeout: float = 0.0) -> Sample | None:
        """The next renderable sample if one is ready; rows rejected while reading fail on the way."""
        while (sample := self.feed.take(timeout)) is not None and sample.error:
            self.rows_taken += 1
            self.recorder.failed(sample, sample.error, Kind(sample.error_kind))
        return sample

    def no_work_left(self) -> bool:
        return self.feed_done and not self.retry and (self.waiting is None or self.target_reached) \
            and not self.awaiting_verdict

    def rows_not_needed(self, requested: int | None) -> dict:
        """With `dataset.target`: the rows never taken because the target was reached (None: a stream, whose
        length nobody read)."""
        if self.chains.target is None:
            return {}
        if not self.target_reached:
            return {"rows_not_needed": 0}
        left = None if requested is None else requested - self.feed.duplicates - self.feed.skipped - self.rows_taken
        return {"rows_not_needed": left}

    def samples_left(self) -> int | None:
        """Samples still to render, once no new row will be taken (None before)."""
        if not self.feed_done:
            return None
        return self.elastic.busy() + len(self.retry) + len(self.awaiting_verdict) + (self.waiting is not None)

    # -- settling outcomes ------------------------------------------------------------------------------------
    def settle(self, replica: Replica, outcome: Outcome | None) -> None:
        """Record a settled sample: done, failed for good, or queued again, as `decide` says; a failure that may
        be its node's waits for Ray's word on the node."""
        if outcome is None:
            return
        sample = outcome.sample
        if outcome.failure is not None:
            lost = self.elastic.node_verdict(outcome.failure, replica)
            if lost is None:
                self.awaiting_verdict.append((replica, outcome))
                return
            if lost:
                logger.warning("sample %s: its replica's node was lost; it renders elsewhere (no attempt charged)",
                               sample.sample_id)
                self.retry.append(sample)
                return
        sample.attempts += 1
        if outcome.failure is None:
            self.recorder.rendered(sample, replica.index, outcome.result)
            self.elastic.sample_finished(replica.index)
            self._follow_up(sample, outcome.result.get("scores"))
            if self.on_result:  # tests inject faults here
                self.on_result(sample, replica)
            return
        failure = outcome.failure
        decision = decide(failure, sample.attempts, self.spec.job["retries"])
        if decision.stop_job:
            raise OutputError(f"job.output: a worker could not write {sample.sample_id}: {failure.message}; free "
                              "space or fix the folder, then rerun the same job")
        if decision.retry:
            self.retry.append(sample)
            return
        attempts = f" (after {sample.attempts} attempts)" if sample.attempts > 1 else ""
        self.recorder.failed(sample, f"{failure.kind.value}: {failure.message}{attempts}", failure.kind)

    def _follow_up(self, sample: Sample, scores: dict | None) -> None:
        """A row whose quality chain wants another attempt gets it next (before new rows)."""
        if not self.chains.tracking:
            return
        row = sample.row_id or sample.sample_id
        self.chains.record(row, sample.attempt, sample.sample_id, scores)
        wanted = self.chains.wanted(row)
        if wanted is not None and wanted > sample.attempt and not self.target_reached:
            self.retry.append(attempt_of(sample, wanted))

    def settle_awaiting_verdict(self) -> None:
        waiting, self.awaiting_verdict = self.awaiting_verdict, []
        for replica, outcome in waiting:
            self.settle(replica, outcome)
