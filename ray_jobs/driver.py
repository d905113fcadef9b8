"""The job driver: pull-based scheduling of streamed samples over replicas, retries, rebuilds, progress.

Each idle replica pulls the next sample, so a fast replica takes more work and a slow one never holds
the tail. Failures by cause: bad input fails the sample at once (it would fail again); a dead rank, or
one whose step clock stops for `resources.step_timeout_s`, tears its replica down, requeues the sample
and rebuilds the replica; anything else is retried up to `job.retries` attempts, then recorded with its
reason. A replica that cannot be rebuilt (its node is gone) or keeps dying without finishing a sample
(`job.max_rebuilds` in a row) is dropped and the others finish the work. An unwritable output folder
stops the job cleanly; rerunning it resumes.
"""

import errno
import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from tqdm.auto import tqdm

from echovideo.errors import EchoVideoInputError, ParallelGroupError
from ray_jobs.dataset import Sample, count_requested, iter_samples, unused_columns
from ray_jobs.failures import JobFailure, OutputError
from ray_jobs.job import JobSpec
from ray_jobs.outputs import OutputStore
from ray_jobs.plan import connect, make_plan, replicas_per_node
from ray_jobs.replica import Replica, ReplicaStartError
from ray_jobs.worker import RankWorker

EXIT_OK, EXIT_FAILED_JOB, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3
OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}  # the worker could not write the clip
PROBE_EVERY_S = 5.0
logger = logging.getLogger("ray_jobs")
run_log = logging.getLogger("ray_jobs.driver.run")  # the driver's own record of the run: file only
run_log.setLevel(logging.INFO)
run_log.propagate = False

__all__ = ["JobDriver", "JobFailure", "JobReport", "OutputError", "run_job"]


@dataclass
class InFlight:
    sample: Sample
    replica: Replica
    progress_at: float  # driver clock of the last step rank 0 reported
    probed_at: float  # when rank 0's clock was last asked
    probe: ray.ObjectRef | None = None


@dataclass
class JobReport:
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    rebuilds: int = 0
    dropped_replicas: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.summary.get("failed") else EXIT_OK


def _cause(exc: BaseException) -> BaseException:
    return getattr(exc, "cause", None) or exc


class JobDriver:
    def __init__(self, spec: JobSpec, progress: bool = True, on_result=None, worker: type = RankWorker) -> None:
        self.spec, self.progress, self.on_result, self.worker = spec, progress, on_result, worker
        self.store = OutputStore(spec.output)
        self.report = JobReport()
        self.retry: deque[Sample] = deque()
        self.rebuilds_in_a_row: dict[int, int] = {}
        self.replicas: dict[int, Replica] = {}  # the live replica per slot: all torn down however the run ends
        self.exhausted = False
        self.bar = None

    def run(self) -> JobReport:
        """The job, with the driver's log in `logs/driver.log` next to each rank's."""
        handler = logging.FileHandler(self.store.folder / "logs" / "driver.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        for target in (logger, run_log):  # warnings also reach the console; run-log lines only the file
            target.addHandler(handler)
        try:
            return self._run()
        finally:
            for target in (logger, run_log):
                target.removeHandler(handler)
            handler.close()

    def _run(self) -> JobReport:
        plan, requested = make_plan(self.spec), count_requested(self.spec)
        run_log.info("plan: %s", plan.describe(requested))
        if self.progress:
            print(f"plan: {plan.describe(requested)}", file=sys.stderr)
        ignored = unused_columns(self.spec)
        if ignored:
            logger.warning("dataset columns %s are not used (prompt, identity/image, sample_id and generation "
                           "settings are); check dataset.columns for a typo", ignored)
        self.store.remove_orphan_temps()
        done = self.store.completed_ids()
        samples = iter_samples(self.spec)
        self.bar = tqdm(total=requested, disable=not self.progress, desc="clips", unit="clip")
        idle: deque[Replica] = deque()
        flying: dict[ray.ObjectRef, InFlight] = {}
        try:
            idle.extend(self._build(i, plan.accelerator) for i in range(plan.replicas))
            started = time.monotonic()  # render time: from replicas ready to the last result
            while True:
                while idle:
                    sample = self._next(samples, done)
                    if sample is None:
                        break
                    replica = idle.popleft()
                    ref = replica.submit(sample, str(self.store.video_path(sample.sample_id)),
                                         str(self.store.poster_path(sample.sample_id)))
                    now = time.monotonic()
                    flying[ref] = InFlight(sample, replica, progress_at=now, probed_at=now)
                if not flying:
                    if not idle and (self.retry or not self.exhausted):
                        raise JobFailure("every replica was lost; rerun the job to resume the rest")
                    break
                ready, _ = ray.wait(list(flying), num_returns=1, timeout=1.0)
                for ref in ready:
                    idle.extend(self._collect(ref, flying.pop(ref), plan.accelerator))
                for ref in self._stalled(flying):
                    flying[ref].sample.attempts += 1
                    idle.extend(self._replace(flying.pop(ref), plan.accelerator,
                                              f"no progress within step_timeout_s "
                                              f"({self.spec.resources['step_timeout_s']} s)"))
                elapsed = max(time.monotonic() - started, 1e-9)
                self.bar.set_postfix(ok=self.report.rendered, failed=self.report.failed,
                                     clips_per_min=f"{60 * self.report.rendered / elapsed:.1f}")
        finally:
            self.bar.close()
            for replica in self.replicas.values():
                replica.teardown()
            self.store.remove_orphan_temps()  # renders cut short by a teardown
        run_log.info("finished: %d rendered, %d skipped (done before), %d failed, %d rebuilds", self.report.rendered,
                    self.report.skipped, self.report.failed, self.report.rebuilds)
        self.report.summary = self.store.finalize({
            "job": self.spec.source, "rendered_this_run": self.report.rendered, "skipped_done": self.report.skipped,
            "replicas": plan.replicas, "ranks_per_replica": plan.ranks, "accelerator": plan.accelerator,
            "replica_rebuilds": self.report.rebuilds, "replicas_dropped": self.report.dropped_replicas,
            "render_seconds": round(time.monotonic() - started, 2)})
        return self.report

    def _next(self, samples, done: set[str]) -> Sample | None:
        """A retry first, else the next new sample; rejected rows and finished ids are settled on the way."""
        if self.retry:
            return self.retry.popleft()
        for sample in samples:
            if sample.sample_id in done:
                self.report.skipped += 1
                self.bar.update(1)
            elif sample.error:
                self._fail(sample, sample.error)
            else:
                return sample
        self.exhausted = True
        return None

    def _stalled(self, flying: dict) -> list[ray.ObjectRef]:
        """In-flight samples whose rank 0 finished no step for step_timeout_s (read from its progress clock,
        asked at most every PROBE_EVERY_S, or a third of the timeout if shorter, to keep the driver light)."""
        limit, now, stalled = self.spec.resources["step_timeout_s"], time.monotonic(), []
        every = min(PROBE_EVERY_S, limit / 3)
        for ref, job in flying.items():
            if job.probe is not None and ray.wait([job.probe], timeout=0)[0]:
                try:
                    job.progress_at = max(job.progress_at, now - ray.get(job.probe))
                except ray.exceptions.RayError:  # the actor died: its render reference reports why
                    pass
                job.probe = None
            if job.probe is None and now - job.probed_at >= every:
                job.probe, job.probed_at = job.replica.probe_progress(), now
            if now - job.progress_at > limit:
                stalled.append(ref)
        return stalled

    def _collect(self, ref, job: InFlight, accelerator: str) -> list[Replica]:
        """The replica(s) to put back in the idle queue: itself, its rebuilt successor, or none if dropped."""
        sample = job.sample
        sample.attempts += 1
        try:
            timing = ray.get(ref)
        except Exception as exc:  # classified below; every path records or requeues the sample
            cause = _cause(exc)
            if isinstance(cause, EchoVideoInputError):
                self._fail(sample, str(cause))
                return [job.replica]
            if isinstance(cause, OSError) and cause.errno in OUTPUT_ERRNOS:
                raise OutputError(f"job.output: a worker could not write {sample.sample_id} ({cause.strerror}); "
                                  "free space or fix the folder, then rerun the same job") from exc
            if isinstance(exc, ray.exceptions.RayActorError) or isinstance(cause, ParallelGroupError):
                return self._replace(job, accelerator, f"rank lost: {type(exc).__name__}")
            self._retry_or_fail(sample, f"{type(cause).__name__}: {cause}")
            return [job.replica]
        self.store.record_success({
            "sample_id": sample.sample_id, "prompt": sample.prompt, "identity": sample.identity,
            "seed": sample.options["seed"], "options": sample.options, "attempts": sample.attempts,
            "path": str(self.store.video_path(sample.sample_id).relative_to(self.store.folder)),
            "seconds": round(timing["seconds"], 3), "replica": str(job.replica.index)})
        self.report.rendered += 1
        self.rebuilds_in_a_row[job.replica.index] = 0
        self.bar.update(1)
        if self.on_result:  # tests inject faults here
            self.on_result(sample, job.replica)
        return [job.replica]

    def _replace(self, job: InFlight, accelerator: str, reason: str) -> list[Replica]:
        """Tear the replica down, requeue (or fail) its sample, build a fresh one in its place if it can be."""
        index = job.replica.index
        logger.warning("replica %d torn down and rebuilt (sample %s): %s", index, job.sample.sample_id, reason)
        job.replica.teardown()
        self._retry_or_fail(job.sample, reason)
        del self.replicas[index]
        if len(self.replicas) >= sum(replicas_per_node(self.spec, accelerator).values()):
            return self._drop(index, f"the cluster has no room left for it (a node is gone?); cause: {reason}")
        while True:
            self.report.rebuilds += 1
            self.rebuilds_in_a_row[index] = self.rebuilds_in_a_row.get(index, 0) + 1
            if self.rebuilds_in_a_row[index] > self.spec.job["max_rebuilds"]:
                return self._drop(index, f"rebuilt {self.rebuilds_in_a_row[index] - 1} times in a row without "
                                         f"finishing a sample (job.max_rebuilds); last cause: {reason}")
            try:
                return [self._start(index, accelerator)]
            except ReplicaStartError as exc:  # its node may be gone: try again, then give the slot up
                reason = str(exc)

    def _drop(self, index: int, reason: str) -> list[Replica]:
        logger.warning("replica %d dropped, the others go on: %s", index, reason)
        self.replicas.pop(index, None)
        self.report.dropped_replicas += 1
        return []

    def _retry_or_fail(self, sample: Sample, reason: str) -> None:
        if sample.attempts < self.spec.job["retries"]:
            self.retry.append(sample)
        else:
            self._fail(sample, f"{reason} (after {sample.attempts} attempts)")

    def _fail(self, sample: Sample, reason: str) -> None:
        self.store.record_failure({"sample_id": sample.sample_id, "prompt": sample.prompt, "identity": sample.identity,
                                   "seed": sample.options.get("seed"), "options": sample.options,
                                   "attempts": sample.attempts, "error": reason})
        self.report.failed += 1
        self.bar.update(1)

    def _build(self, index: int, accelerator: str) -> Replica:
        try:
            return self._start(index, accelerator)
        except ReplicaStartError as exc:
            raise JobFailure(str(exc)) from exc

    def _start(self, index: int, accelerator: str) -> Replica:
        replica = Replica(index, self.spec, accelerator, self.worker)
        self.replicas[index] = replica  # before start: a failing start tears itself down, teardown is idempotent
        return replica.start()


def run_job(spec: JobSpec, address: str | None = None, progress: bool = True, on_result=None,
            worker: type = RankWorker) -> JobReport:
    connect(address, spec)
    return JobDriver(spec, progress, on_result, worker).run()
