"""The job driver's engine: one non-blocking event loop that only moves events.

Split as vLLM splits its engine: this loop waits for Ray's next event and hands it on; the `Scheduler`
decides which sample goes to which idle replica and settles outcomes by the failure policy; `Elasticity`
places, grows, drains and replaces replicas and talks to the autoscaler; the `Recorder` writes records,
counts and the summary. Replicas are placed, started, rebuilt and torn down inside the loop (all of them at
once at start-up), so a replica loading its model never holds up the others' results or their stall clocks.
An unwritable output folder stops the job cleanly; rerunning it resumes.
"""

import logging
import sys
import time

import ray
from tqdm.contrib.logging import logging_redirect_tqdm

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.attempts import Chains
from ray_jobs.data.job import JobSpec
from ray_jobs.data.quality_gate import QualityGate
from ray_jobs.data.request_identity import pin_weights
from ray_jobs.data.samples import iter_samples
from ray_jobs.data.validation import unused_columns, validate_dataset
from ray_jobs.runtime.clock import LookClock
from ray_jobs.runtime.cluster import RayCluster
from ray_jobs.runtime.elasticity import Elasticity
from ray_jobs.runtime.feed import SampleFeed
from ray_jobs.runtime.logs import logger, run_log
from ray_jobs.runtime.placement import Plan, connect, make_plan
from ray_jobs.runtime.preflight import NodeChecks
from ray_jobs.runtime.recorder import JobReport, Recorder
from ray_jobs.runtime.replica import Replica, State
from ray_jobs.runtime.scheduler import Scheduler
from ray_jobs.runtime.worker import RankWorker
from ray_jobs.store import open_outputs
from ray_jobs.store.errors import JobFailure
from ray_jobs.store.ledger import LeaseLost

LOOP_WAIT_S = 0.5  # the longest the loop waits for an event before reading its clocks again
LOG_UPLOAD_WAIT_S = 30.0  # at the end, how long the ranks get to upload their logs to an object store
ASK = object()  # `JobDriver.run`'s default: validate the dataset first (a streamed one answers None)

__all__ = ["JobDriver", "JobReport", "run_job"]


class JobDriver:
    def __init__(self, spec: JobSpec, progress: bool = True, on_result=None, worker: type = RankWorker) -> None:
        self.spec, self.progress, self.on_result, self.worker = spec, progress, on_result, worker
        self.store = open_outputs(spec.output)
        self.recorder = Recorder(self.store, progress)
        self.clock = LookClock()
        self.checks = NodeChecks(spec, progress)  # which nodes may hold replicas
        self.requested: int | None = None

    @property
    def report(self) -> JobReport:
        return self.recorder.report

    def run(self, requested: int | None | object = ASK, can_grow: bool = False) -> JobReport:
        """The job, with the driver's log in `logs/driver.log` next to each rank's; `requested` as
        `validate_dataset` answered (asked here if not given). `can_grow`: the cluster is one the job joined
        (an autoscaler may add nodes): no node with room is then a wait, not an error."""
        handler = logging.FileHandler(self.store.log_path("driver.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        for target in (logger, run_log):  # warnings also reach the console; run-log lines only the file
            target.addHandler(handler)
        try:
            return self._run(validate_dataset(self.spec) if requested is ASK else requested, can_grow)
        finally:
            for target in (logger, run_log):
                target.removeHandler(handler)
            handler.close()

    def _run(self, requested: int | None, can_grow: bool) -> JobReport:
        gate = QualityGate.of(self.spec.quality)  # a review file that cannot be read stops the job before work
        plan = make_plan(self.spec, can_grow=can_grow)
        self._say_plan(plan, requested)
        self.store.remove_orphan_temps()
        pin_weights(self.spec)  # the weights every id names and every rank checks before it loads
        chains = Chains.of(self.spec.quality, gate, self.spec.dataset["target"])
        done, finished_rows = self.store.resume_index(chains.record_finished if chains.tracking else None)
        settled_rows = {key: sid for key, sid in finished_rows.items() if chains.wanted(sid) is None}
        feed = SampleFeed(iter_samples(self.spec, plan.accelerator, settled_rows), done,
                          capacity=4 * plan.replicas + 16, follow_up=chains.follow_up)
        elastic = Elasticity(self.spec, plan, RayCluster(self.spec, plan.accelerator), self.checks,
                             self._replica_factory(plan.accelerator), self.report, self.clock, can_grow)
        scheduler = Scheduler(self.spec, self.store, feed, elastic, self.recorder, self.clock, chains, self.on_result)
        self.recorder.open_bar(requested)
        self.requested, begun, ended_by = requested, time.monotonic(), "interrupted"
        try:
            with logging_redirect_tqdm():  # the console's log lines (root handler) go above the bar, not into it
                self._loop(scheduler, elastic, feed)
            ended_by = "complete"
        except (JobFailure, EchoVideoInputError) as exc:
            ended_by = f"failed: {exc}"
            raise
        finally:
            self.checks.close()
            feed.stop()
            self.recorder.count_skipped(feed, requested)
            self.recorder.close()
            self._collect_rank_logs(elastic.replicas.values())
            elastic.release()
            if self._holds_output():  # a job whose output another took over touches nothing more there
                self.store.remove_orphan_temps()  # renders cut short by a teardown
                self.recorder.finish(self.spec, plan, feed, gate, begun, ended_by, scheduler.rows_not_needed(requested))
        return self.report

    def _say_plan(self, plan: Plan, requested: int | None) -> None:
        run_log.info("plan: %s", plan.describe(requested))
        if self.progress:
            print(f"plan: {plan.describe(requested)}", file=sys.stderr)
        ignored = unused_columns(self.spec)
        if ignored:
            logger.warning("dataset columns %s are not used (prompt, identity/image, sample_id and generation "
                           "settings are); check dataset.columns for a typo", ignored)

    def _replica_factory(self, accelerator: str):
        """Replicas placed only on nodes that passed the job's checks (`preflight`)."""
        def new_replica(index: int, now: float, allowed: set[str]) -> Replica:
            return Replica(index, self.spec, accelerator, now, self.worker, allowed=allowed)
        return new_replica

    def _loop(self, scheduler: Scheduler, elastic: Elasticity, feed: SampleFeed) -> None:
        """Until every sample is settled: hand out work, wait for any event, advance the replicas it concerns."""
        while True:
            now = self.clock.tick()
            scheduler.dispatch()
            scheduler.read_ahead()
            if not elastic.busy() and scheduler.no_work_left():
                return
            if scheduler.waiting is not None and not elastic.started:  # only once there is a sample to render
                elastic.start()
            elastic.check_replicas_left(now)
            self._advance(scheduler, elastic, now)
            for replica in list(elastic.replicas.values()):
                scheduler.settle(replica, replica.check(self.clock.tick()))
                if replica.state in (State.IDLE, State.BUSY):
                    self.recorder.replica_up(replica.index)
            scheduler.settle_awaiting_verdict()
            self.checks.poll()
            elastic.replace_failed()
            for replica, outcome in elastic.retire_draining(now):
                scheduler.settle(replica, outcome)
            elastic.grow(now, work_left=not scheduler.no_work_left())
            elastic.ask_autoscaler(scheduler.samples_left())
            elastic.say_placement(now)
            self.recorder.count_skipped(feed, self.requested)
            self.recorder.show_rate()

    def _advance(self, scheduler: Scheduler, elastic: Elasticity, now: float) -> None:
        """One `ray.wait` over every replica's outstanding references; the first completed one advances its replica
        (one event per iteration: an iteration costs little, and a second wait for the rest cost more)."""
        owners = {ref: replica for replica in elastic.replicas.values() for ref in replica.refs()}
        if not owners:  # nothing in flight: wait for the dataset, or (a sample in hand, no replica yet) for time
            if scheduler.waiting is None:
                scheduler.read_ahead(timeout=LOOP_WAIT_S)
            else:
                time.sleep(LOOP_WAIT_S)
            return
        ready, _ = ray.wait(list(owners), num_returns=1, timeout=LOOP_WAIT_S, fetch_local=False)
        for ref in ready:
            scheduler.settle(owners[ref], owners[ref].on_ready(ref, now))

    def _collect_rank_logs(self, replicas) -> None:
        """An object-store output gets every rank's last lines before the ranks go (best effort)."""
        if not self.store.destination.remote or not self._holds_output():
            return
        refs = [ref for replica in replicas for ref in replica.upload_logs()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=LOG_UPLOAD_WAIT_S)

    def _holds_output(self) -> bool:
        try:
            self.store.fence()
            return True
        except LeaseLost:
            return False


def run_job(spec: JobSpec, address: str | None = None, progress: bool = True, on_result=None,
            worker: type = RankWorker) -> JobReport:
    """Validate the dataset, hold the output folder, join or start the cluster, run the job."""
    requested = validate_dataset(spec)  # a bad table is exit 2 before any cluster starts
    driver = JobDriver(spec, progress, on_result, worker)
    with driver.store.locked():
        joined = connect(address, spec)
        return driver.run(requested, can_grow=joined)
