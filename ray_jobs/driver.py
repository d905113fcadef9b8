"""The job driver: pull-based scheduling of streamed samples over replicas, retries, rebuilds, progress.

Each idle replica pulls the next sample, so a fast replica takes more work and a slow one never holds
the tail. Failures by cause: bad input fails the sample at once (it would fail again); a dead or hung
rank tears its replica down, requeues the sample and rebuilds (both capped); anything else is retried
up to `job.retries` attempts, then recorded with its reason.
"""

import sys
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from tqdm.auto import tqdm

from echovideo.errors import EchoVideoInputError, ParallelGroupError
from ray_jobs.dataset import Sample, count_requested, iter_samples
from ray_jobs.job import JobSpec
from ray_jobs.outputs import OutputStore
from ray_jobs.plan import connect, make_plan
from ray_jobs.replica import Replica, ReplicaStartError
from ray_jobs.worker import RankWorker

EXIT_OK, EXIT_FAILED_JOB, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3


class JobFailure(RuntimeError):
    """The job cannot go on (no replica can be built)."""


@dataclass
class InFlight:
    sample: Sample
    replica: Replica
    started: float


@dataclass
class JobReport:
    rendered: int = 0
    skipped: int = 0
    failed: int = 0
    rebuilds: int = 0
    summary: dict = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_SOME_FAILED if self.summary.get("failed") else EXIT_OK


def _is_input_error(exc: BaseException) -> bool:
    cause = getattr(exc, "cause", None)
    return isinstance(exc, EchoVideoInputError) or isinstance(cause, EchoVideoInputError)


class JobDriver:
    def __init__(self, spec: JobSpec, progress: bool = True, on_result=None, worker: type = RankWorker) -> None:
        self.spec, self.progress, self.on_result, self.worker = spec, progress, on_result, worker
        self.store = OutputStore(spec.output)
        self.report = JobReport()
        self.retry: deque[Sample] = deque()

    def run(self) -> JobReport:
        plan, requested = make_plan(self.spec), count_requested(self.spec)
        if self.progress:
            print(f"plan: {plan.describe(requested)}", file=sys.stderr)
        self.store.remove_orphan_temps()
        done = self.store.completed()
        samples = iter_samples(self.spec)
        bar = tqdm(total=requested, disable=not self.progress, desc="clips", unit="clip")
        replicas = [self._build(i, plan.accelerator) for i in range(plan.replicas)]
        idle, flying, started = deque(replicas), {}, time.monotonic()
        try:
            while True:
                while idle:
                    sample = self._next(samples, done, bar)
                    if sample is None:
                        break
                    replica = idle.popleft()
                    ref = replica.submit(sample, str(self.store.video_path(sample.sample_id)),
                                         str(self.store.poster_path(sample.sample_id)))
                    flying[ref] = InFlight(sample, replica, time.monotonic())
                if not flying:
                    break
                ready, _ = ray.wait(list(flying), num_returns=1, timeout=1.0)
                for ref in ready:
                    job = flying.pop(ref)
                    idle.append(self._collect(ref, job, plan.accelerator, bar))
                for ref, job in list(flying.items()):  # a rank that stopped answering: rebuild its replica
                    if time.monotonic() - job.started > self.spec.resources["sample_timeout_s"]:
                        flying.pop(ref)
                        idle.append(self._replace(job, plan.accelerator, "no progress within sample_timeout_s"))
                elapsed = max(time.monotonic() - started, 1e-9)
                bar.set_postfix(ok=self.report.rendered, failed=self.report.failed,
                                clips_per_min=f"{60 * self.report.rendered / elapsed:.1f}")
        finally:
            bar.close()
            for replica in set(idle) | {job.replica for job in flying.values()}:
                replica.teardown()
        self.report.summary = self.store.finalize({
            "job": self.spec.source, "rendered_this_run": self.report.rendered, "skipped_done": self.report.skipped,
            "replicas": plan.replicas, "ranks_per_replica": plan.ranks, "accelerator": plan.accelerator,
            "replica_rebuilds": self.report.rebuilds, "render_seconds": round(time.monotonic() - started, 2)})
        return self.report

    def _next(self, samples, done: dict, bar) -> Sample | None:
        """A retry first, else the next new sample; rejected rows and finished ids are settled on the way."""
        if self.retry:
            return self.retry.popleft()
        for sample in samples:
            if sample.sample_id in done:
                self.report.skipped += 1
                bar.update(1)
            elif sample.error:
                self._fail(sample, sample.error, bar)
            else:
                return sample
        return None

    def _collect(self, ref, job: InFlight, accelerator: str, bar) -> Replica:
        sample = job.sample
        sample.attempts += 1
        try:
            timing = ray.get(ref)
        except Exception as exc:  # classified below; every path records or requeues the sample
            if _is_input_error(exc):
                self._fail(sample, str(getattr(exc, "cause", exc)), bar)
                return job.replica
            if isinstance(exc, ray.exceptions.RayActorError) or isinstance(getattr(exc, "cause", None),
                                                                            ParallelGroupError):
                return self._replace(job, accelerator, f"rank lost: {type(exc).__name__}")
            self._retry_or_fail(sample, f"{type(exc).__name__}: {exc}", bar)
            return job.replica
        self.store.record_success({
            "sample_id": sample.sample_id, "prompt": sample.prompt, "identity": sample.identity,
            "seed": sample.options["seed"], "options": sample.options, "attempts": sample.attempts,
            "path": str(self.store.video_path(sample.sample_id).relative_to(self.store.folder)),
            "seconds": round(timing["seconds"], 3), "replica": str(job.replica.index)})
        self.report.rendered += 1
        bar.update(1)
        if self.on_result:  # tests inject faults here
            self.on_result(sample, job.replica)
        return job.replica

    def _replace(self, job: InFlight, accelerator: str, reason: str) -> Replica:
        """Tear the replica down, requeue (or fail) its sample, build a fresh one in its place."""
        job.replica.teardown()
        self._retry_or_fail(job.sample, reason, None)
        self.report.rebuilds += 1
        if self.report.rebuilds > self.spec.job["max_rebuilds"]:
            raise JobFailure(f"replicas rebuilt {self.report.rebuilds} times (job.max_rebuilds "
                             f"{self.spec.job['max_rebuilds']}); last cause: {reason}")
        return self._build(job.replica.index, accelerator)

    def _retry_or_fail(self, sample: Sample, reason: str, bar) -> None:
        if sample.attempts < self.spec.job["retries"]:
            self.retry.append(sample)
        else:
            self._fail(sample, f"{reason} (after {sample.attempts} attempts)", bar)

    def _fail(self, sample: Sample, reason: str, bar) -> None:
        self.store.record_failure({"sample_id": sample.sample_id, "prompt": sample.prompt, "identity": sample.identity,
                                   "seed": sample.options.get("seed"), "options": sample.options,
                                   "attempts": sample.attempts, "error": reason})
        self.report.failed += 1
        if bar is not None:
            bar.update(1)

    def _build(self, index: int, accelerator: str) -> Replica:
        try:
            return Replica(index, self.spec, accelerator, self.worker).start()
        except ReplicaStartError as exc:
            raise JobFailure(str(exc)) from exc


def run_job(spec: JobSpec, address: str | None = None, progress: bool = True, on_result=None) -> JobReport:
    connect(address, spec)
    return JobDriver(spec, progress, on_result).run()
