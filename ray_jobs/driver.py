"""The job driver: one non-blocking event loop that schedules streamed samples over replicas.

Each idle replica pulls the next sample, so a fast replica takes more work and a slow one never holds
the tail. Replicas are placed, started, rebuilt and torn down inside the loop (all of them at once at
start-up), so a replica loading its model never holds up the others' results or their stall clocks.
What follows from a failure is `failures.decide`: bad input fails the sample at once and keeps the
replica; out of memory fails it at once and rebuilds the replica; anything else rebuilds the replica and
retries the sample up to `job.retries` attempts. A replica whose node is gone, or that keeps failing
without finishing a sample (`job.max_rebuilds` in a row), is dropped and the others finish the work. An
unwritable output folder stops the job cleanly; rerunning it resumes.
"""

import logging
import sys
import time
from collections import deque
from dataclasses import dataclass, field

import ray
from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from echovideo.errors import EchoVideoInputError
from ray_jobs.dataset import Sample, iter_samples, unused_columns, validate_dataset
from ray_jobs.failures import Failure, JobFailure, Kind, OutputError, decide
from ray_jobs.feed import SampleFeed
from ray_jobs.job import JobSpec
from ray_jobs.object_outputs import LeaseLost
from ray_jobs.outputs import open_outputs
from ray_jobs.quality_gate import QualityGate
from ray_jobs.plan import connect, make_plan, replicas_per_node
from ray_jobs.preflight import NodeChecks
from ray_jobs.replica import Outcome, Replica, State, rank_bundle
from ray_jobs.request_identity import pin_weights
from ray_jobs.worker import RankWorker

EXIT_OK, EXIT_FAILED_JOB, EXIT_BAD_INPUT, EXIT_SOME_FAILED = 0, 1, 2, 3
LOOP_WAIT_S = 0.5  # the longest the loop waits for an event before reading its clocks again
LOG_UPLOAD_WAIT_S = 30.0  # at the end, how long the ranks get to upload their logs to an object store
PLACEMENT_QUIET_S, PLACEMENT_REPEAT_S = 5.0, 60.0  # waiting for resources: said after 5 s, again every minute
GROW_EVERY_S = 10.0  # how often the driver looks for room for replicas it lacks
DRAIN_CHECK_S = 2.0  # how often it asks which nodes are being drained
NODE_VERDICT_S = 60.0  # how long an unreachable rank's node has to be declared dead before the failure is charged
HAND_BACK_S = 15.0  # a replica on a node drained within this hands its sample back instead of finishing it
logger = logging.getLogger("ray_jobs")
run_log = logging.getLogger("ray_jobs.driver.run")  # the driver's own record of the run: file only
run_log.setLevel(logging.INFO)
run_log.propagate = False

__all__ = ["JobDriver", "JobFailure", "JobReport", "OutputError", "run_job"]


class LookClock:
    """Seconds during which the driver was able to look: deadlines and stall clocks run on this.

    The loop ticks at least every LOOP_WAIT_S; a longer gap (the process was suspended, a slow disk held a
    journal write) counts as at most MAX_GAP_S, so no replica is torn down for time nobody watched it.
    """

    MAX_GAP_S = 2.0

    def __init__(self) -> None:
        self.last, self.looked = time.monotonic(), 0.0

    def tick(self) -> float:
        now = time.monotonic()
        self.looked += min(now - self.last, self.MAX_GAP_S)
        self.last = now
        return self.looked


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


class JobDriver:
    def __init__(self, spec: JobSpec, progress: bool = True, on_result=None, worker: type = RankWorker) -> None:
        self.spec, self.progress, self.on_result, self.worker = spec, progress, on_result, worker
        self.store = open_outputs(spec.output)
        self.report = JobReport()
        self.retry: deque[Sample] = deque()
        self.rebuilds_in_a_row: dict[int, int] = {}
        self.replicas: dict[int, Replica] = {}  # the replica per slot: all torn down however the run ends
        self.clock = LookClock()
        self.feed: SampleFeed | None = None
        self.waiting_sample: Sample | None = None  # taken from the feed while no replica was idle
        self.up_at: dict[int, float] = {}  # when each slot's first replica was ready: start-up and render time
        self.bar = None
        self.plan, self.accelerator, self.requested, self.started = None, "cpu", 0, False
        self.last_loss = ""  # why the last replica slot was dropped: the job's error if none is left
        self.started_at, self.said_placed, self.said_at = 0.0, -1, 0.0  # replicas asked for; placement last said
        self.grown_at, self.given_up = 0.0, set()  # slots dropped for failing max_rebuilds times in a row
        self.draining, self.drain_checked_at = set(), 0.0  # node ids Ray is draining, as last asked
        self.gate = QualityGate()  # the job's, read as the run starts
        self.asked_replicas, self.asked_at = 0, 0.0  # what the autoscaler was last asked for, and when
        self.can_grow, self.empty_since = False, None  # a joined cluster; since when no replica is left
        self.checks = NodeChecks(spec, progress)  # which nodes may hold replicas
        self.awaiting_verdict: list[tuple[Replica, Outcome]] = []  # failures that may be their node's (`_settle`)
        self.suspected_at: dict[int, float] = {}  # id(replica) -> when a rank of it first became unreachable

    def run(self, requested: int | None = None, can_grow: bool = False) -> JobReport:
        """The job, with the driver's log in `logs/driver.log` next to each rank's; `requested` as
        `validate_dataset` answered (asked here if not given). `can_grow`: the cluster is one the job joined
        (an autoscaler may add nodes): no node with room is then a wait, not an error."""
        self.can_grow = can_grow
        handler = logging.FileHandler(self.store.log_path("driver.log"))
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s: %(message)s"))
        for target in (logger, run_log):  # warnings also reach the console; run-log lines only the file
            target.addHandler(handler)
        try:
            return self._run(validate_dataset(self.spec) if requested is None else requested)
        finally:
            for target in (logger, run_log):
                target.removeHandler(handler)
            handler.close()

    def _run(self, requested: int | None) -> JobReport:
        self.gate = QualityGate.of(self.spec.quality)  # a review file that cannot be read stops the job before work
        plan = make_plan(self.spec, can_grow=self.can_grow)
        self.plan, self.accelerator = plan, plan.accelerator
        run_log.info("plan: %s", plan.describe(requested))
        if self.progress:
            print(f"plan: {plan.describe(requested)}", file=sys.stderr)
        ignored = unused_columns(self.spec)
        if ignored:
            logger.warning("dataset columns %s are not used (prompt, identity/image, sample_id and generation "
                           "settings are); check dataset.columns for a typo", ignored)
        self.store.remove_orphan_temps()
        pin_weights(self.spec)  # the weights every id names and every rank checks before it loads
        done, finished_rows = self.store.resume_index()
        self.feed = SampleFeed(iter_samples(self.spec, plan.accelerator, finished_rows), done,
                               capacity=4 * plan.replicas + 16)
        self.bar = tqdm(total=requested, disable=not self.progress, desc="clips", unit="clip")
        self.requested, begun, ended_by = requested, time.monotonic(), "interrupted"
        try:
            with logging_redirect_tqdm():  # the console's log lines (root handler) go above the bar, not into it
                self._loop()
            ended_by = "complete"
        except (JobFailure, EchoVideoInputError) as exc:
            ended_by = f"failed: {exc}"
            raise
        finally:
            if self.asked_replicas:  # whatever ended the run: a request left behind keeps nodes up
                ask_autoscaler(self.spec, self.accelerator, 0)
            self.checks.close()
            self.feed.stop()
            self._count_skipped()
            self.bar.close()
            self._collect_rank_logs()
            for replica in self.replicas.values():
                replica.teardown()
            self._finish(begun, ended_by)
        return self.report

    def _collect_rank_logs(self) -> None:
        """An object-store output gets every rank's last lines before the ranks go (best effort)."""
        if not self.store.destination.remote or not self._holds_output():
            return
        refs = [ref for replica in self.replicas.values() for ref in replica.upload_logs()]
        if refs:
            ray.wait(refs, num_returns=len(refs), timeout=LOG_UPLOAD_WAIT_S)

    def _holds_output(self) -> bool:
        try:
            self.store.fence()
            return True
        except LeaseLost:
            return False

    def _finish(self, begun: float, ended_by: str) -> None:
        """However the run ended (done, a job error, Ctrl-C), what finished is in the manifest, summary and gallery.

        Finalising after a failure is best effort: the disk that stopped the job may refuse this too, and the
        journal, which a rerun reads, already holds every finished clip. A job whose output another job took
        over touches nothing more there (not even temp files: they may be the other job's uploads in flight).
        """
        if not self._holds_output():
            return
        self.store.remove_orphan_temps()  # renders cut short by a teardown
        run_log.info("finished: %d rendered, %d skipped (done before), %d failed, %d rebuilds; %s", self.report.rendered,
                     self.report.skipped, self.report.failed, self.report.rebuilds, ended_by)
        ended = time.monotonic()
        first_up = min(self.up_at.values(), default=ended)
        summary = {
            "job": self.spec.source, "ended": ended_by, "rendered_this_run": self.report.rendered,
            "skipped_done": self.report.skipped, "duplicate_rows": self.feed.duplicates, "replicas": self.plan.replicas,
            "ranks_per_replica": self.plan.ranks, "accelerator": self.plan.accelerator,
            "replicas_started": self.report.replicas_started, "replica_rebuilds": self.report.rebuilds,
            "replicas_dropped": self.report.dropped_replicas,
            "startup_seconds": round(max(self.up_at.values(), default=begun) - begun, 2),
            "render_seconds": round(ended - first_up, 2),
            "replica_seconds": round(sum(ended - up for up in self.up_at.values()), 2)}
        try:
            requested = self.feed.requested if self.feed.walked else None  # the whole job is known
            self.report.summary = self.store.finalize(summary, self.gate, requested)
            self.store.publish_logs()
        except OutputError as exc:
            if ended_by == "complete":
                raise
            logger.warning("could not write the manifest after the job ended (%s); rerunning the job writes it", exc)
        except LeaseLost:
            if ended_by == "complete":
                raise
            # the other job owns the output now: its manifest, not this one's

    def _start_replicas(self) -> None:
        """All placed and started at once, inside the loop; only once there is a sample to render (a dataset
        that is all done, or all bad, never builds one)."""
        nodes = [node for node, fits in replicas_per_node(self.spec, self.accelerator).items() if fits]
        self.checks.check_now(nodes)  # storage and the checkpoint as every node's ranks will see them
        now = self.started_at = self.grown_at = self.clock.tick()
        for index in range(self.plan.replicas):
            self.replicas[index] = self._new_replica(index, now)
        self.started = True
        self._ask_autoscaler()
        self.report.replicas_started += self.plan.replicas

    def _loop(self) -> None:
        """Until every sample is settled: hand out work, wait for any event, advance the replicas it concerns."""
        while True:
            now = self.clock.tick()
            self._dispatch()
            if self.waiting_sample is None:  # read ahead: a dataset with nothing left ends the job at once,
                self.waiting_sample = self._from_feed()  # without waiting for replicas still loading
            busy = [r for r in self.replicas.values() if r.state is State.BUSY]
            if not busy and self._no_work_left():
                return
            if self.waiting_sample is not None and not self.started:
                self._start_replicas()
            self._check_replicas_left(now)
            self._advance(now)
            for replica in list(self.replicas.values()):
                self._settle(replica, replica.check(self.clock.tick()))
                if replica.state in (State.IDLE, State.BUSY):
                    self.up_at.setdefault(replica.index, time.monotonic())
            self._settle_awaiting_verdict()
            self.checks.poll()
            self._replace_failed()
            self._retire_draining(now)
            self._grow(now)
            self._ask_autoscaler()
            self._say_placement(now)
            self._count_skipped()
            elapsed = max(time.monotonic() - min(self.up_at.values(), default=time.monotonic()), 1e-9)
            self.bar.set_postfix(ok=self.report.rendered, failed=self.report.failed, refresh=False,
                                 clips_per_min=f"{60 * self.report.rendered / elapsed:.1f}")

    def _say_placement(self, now: float) -> None:
        """While fewer replicas are placed than asked, say so above the bar (when the count changes, and once a
        minute), with what the cluster has free: a busy or scaling cluster is not a stuck job."""
        placed = sum(r.state is not State.PLACING for r in self.replicas.values())
        waiting = (placed < len(self.replicas) or not self.replicas) and now - self.started_at > PLACEMENT_QUIET_S
        if not self.started or not waiting or (placed == self.said_placed and now - self.said_at < PLACEMENT_REPEAT_S):
            return
        free = {k: round(v, 1) for k, v in ray.available_resources().items() if k in ("CPU", "GPU", "NPU")}
        if self.replicas:
            logger.warning("waiting for resources: %d of %d replicas placed (free on the cluster now: %s)", placed,
                           len(self.replicas), free or "nothing")
        else:
            logger.warning("waiting for nodes: none that passed the job's checks has room for a replica of %s; the "
                           "autoscaler is asked for %d (free on the cluster now: %s)", self.plan.bundle,
                           self.asked_replicas, free or "nothing")
        self.said_placed, self.said_at = placed, now

    def _check_replicas_left(self, now: float) -> None:
        """No replica left: on a cluster that can grow (joined with --address), wait for nodes up to
        resources.start_timeout_s, unless every slot was given up for failures of its own; else the job stops."""
        if not self.started or self.replicas:
            self.empty_since = None
            return
        asked = self.spec.parallel["replicas"]
        all_given_up = bool(self.given_up) and (asked == "auto" or len(self.given_up) >= asked)
        if not self.can_grow or all_given_up:
            raise JobFailure(f"every replica was lost (last: {self.last_loss}); rerun the job to resume the rest")
        self.empty_since = self.empty_since if self.empty_since is not None else now
        ceiling = self.spec.resources["start_timeout_s"]
        if now - self.empty_since > ceiling:
            last = f"; last loss: {self.last_loss}" if self.last_loss else ""
            raise JobFailure(f"no node with room for a replica joined the cluster (and passed the job's checks) "
                             f"within {ceiling:g} s (resources.start_timeout_s){last}; rerun the job once there "
                             "are nodes: finished clips are kept")

    def _advance(self, now: float) -> None:
        """One `ray.wait` over every replica's outstanding references; the first completed one advances its replica
        (one event per iteration: an iteration costs little, and a second wait for the rest cost more)."""
        owners = {ref: replica for replica in self.replicas.values() for ref in replica.refs()}
        if not owners:  # nothing in flight: only the dataset can move things on
            self._wait_for_feed()
            return
        ready, _ = ray.wait(list(owners), num_returns=1, timeout=LOOP_WAIT_S, fetch_local=False)
        for ref in ready:
            self._settle(owners[ref], owners[ref].on_ready(ref, now))

    def _wait_for_feed(self) -> None:
        """Nothing in flight: wait for the dataset, or (a sample in hand, no replica to take it yet) for time."""
        if self.waiting_sample is None:
            self.waiting_sample = self._from_feed(timeout=LOOP_WAIT_S)
        else:
            time.sleep(LOOP_WAIT_S)

    def _dispatch(self) -> None:
        """Each idle replica pulls the next sample: a retry first, then the dataset's next one."""
        for replica in self.replicas.values():
            if replica.state is not State.IDLE or replica.nodes & self.draining:
                continue
            sample = self._next()
            if sample is None:
                return
            files = self.store.files_for(sample.sample_id, sample.identity_sha, sample.image)
            sample.photo = files["photo"]  # named once (a header read): the completion record repeats it
            replica.submit(sample, files, self.clock.tick())

    def _next(self) -> Sample | None:
        """A retry first, else the dataset's next sample."""
        if self.retry:
            return self.retry.popleft()
        sample, self.waiting_sample = self.waiting_sample or self._from_feed(), None
        return sample

    def _from_feed(self, timeout: float = 0.0) -> Sample | None:
        """The next renderable sample if one is ready; rows rejected while reading fail on the way."""
        while (sample := self.feed.take(timeout)) is not None and sample.error:
            self._fail(sample, sample.error, Kind(sample.error_kind))
        return sample

    def _settle(self, replica: Replica, outcome: Outcome | None) -> None:
        """Record a settled sample: done, failed for good, or queued again, as `decide` says; a failure that may
        be its node's waits for Ray's word on the node (`_node_verdict`)."""
        if outcome is None:
            return
        sample = outcome.sample
        if outcome.failure is not None:
            lost = self._node_verdict(outcome.failure, replica)
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
            self._succeeded(sample, replica, outcome.result)
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
        self._fail(sample, f"{failure.kind.value}: {failure.message}{attempts}", failure.kind)

    def _settle_awaiting_verdict(self) -> None:
        waiting, self.awaiting_verdict = self.awaiting_verdict, []
        for replica, outcome in waiting:
            self._settle(replica, outcome)

    def _node_verdict(self, failure: Failure, replica: Replica) -> bool | None:
        """Whether the failure is its node's, not the sample's or our code's (neither is charged then): Ray said
        the node died or was drained, or a rank's node is no longer alive. A rank that became unreachable on a
        node still listed alive gets NODE_VERDICT_S for Ray to declare the node dead (its health check takes
        seconds): None until then."""
        if failure.kind is Kind.NODE_LOST:
            return True
        if failure.kind is not Kind.GROUP_LOST or not replica.nodes:
            return False
        alive = {node["NodeID"] for node in ray.nodes() if node.get("Alive")}
        if replica.nodes - alive:
            return True
        if not failure.node_suspect:
            return False
        first = self.suspected_at.setdefault(id(replica), self.clock.tick())
        return None if self.clock.tick() - first < NODE_VERDICT_S else False

    def _grow(self, now: float) -> None:
        """Elastic replicas: every GROW_EVERY_S, while work remains, place replicas in slots the cluster has
        room for again (a node joined, or came back), up to what the job asks (`auto`: all that fit)."""
        if not self.started or now - self.grown_at < GROW_EVERY_S or self._no_work_left():
            return
        self.grown_at = now
        per_node = replicas_per_node(self.spec, self.accelerator)
        self.checks.check_joined(node for node, fits in per_node.items() if fits and node not in self.draining)
        capacity = self._capacity(per_node)
        asked = self.spec.parallel["replicas"]
        wanted = (capacity if asked == "auto" else min(asked, capacity)) - len(self.given_up)
        free = (index for index in range(wanted + len(self.replicas) + len(self.given_up))
                if index not in self.replicas and index not in self.given_up)
        while len(self.replicas) < wanted:
            index = next(free)
            logger.warning("replica %d added: the cluster has room for %d replica(s) now", index, wanted)
            self.replicas[index] = self._new_replica(index, now)
            self.rebuilds_in_a_row[index] = 0
            self.report.replicas_started += 1

    def _retire_draining(self, now: float) -> None:
        """A node being drained (Ray's drain API: a spot-preemption notice, an idle scale-down) takes no new
        sample; each replica there finishes the one it has, then is torn down without counting as a failure
        (were the node gone first, its sample renders elsewhere uncharged: `_node_verdict`)."""
        if now - self.drain_checked_at < DRAIN_CHECK_S:
            return
        self.drain_checked_at = now
        deadlines = _draining_nodes()
        self.draining = set(deadlines)
        for index, replica in list(self.replicas.items()):
            on = replica.nodes & self.draining
            if on and replica.state is State.IDLE:
                logger.warning("replica %d retired: its node is being drained", index)
                replica.teardown()
                del self.replicas[index]
            elif on and replica.state is State.BUSY and _due(deadlines, on):  # no time to finish: hand it back
                self._settle(replica, replica.hand_back("its node is being drained and its deadline is near"))

    def _ask_autoscaler(self) -> None:
        """The replicas the job wants (those asked for; `auto`: what fits now), and once the dataset is read to
        its end no more than the samples left need."""
        if not self.started:
            return
        asked = self.spec.parallel["replicas"]
        wanted = max(self.plan.replicas, 1) if asked == "auto" else asked  # scaled to zero: ask for one at least
        if self.feed.exhausted:
            busy = sum(r.state is State.BUSY for r in self.replicas.values())
            wanted = min(wanted, busy + len(self.retry) + len(self.awaiting_verdict) + (self.waiting_sample is not None))
        now = self.clock.tick()
        # Ray keeps one request per cluster, the last one written: another workload's (Ray Data asks for its
        # own) replaces ours, so it is said again every GROW_EVERY_S, not only when it changes
        if wanted != self.asked_replicas or now - self.asked_at >= GROW_EVERY_S:
            ask_autoscaler(self.spec, self.accelerator, wanted, say=wanted != self.asked_replicas)
            self.asked_replicas, self.asked_at = wanted, now

    def _no_work_left(self) -> bool:
        return self.feed.exhausted and not self.retry and self.waiting_sample is None and not self.awaiting_verdict

    def _succeeded(self, sample: Sample, replica: Replica, timing: dict) -> None:
        self.store.record_success({
            "sample_id": sample.sample_id, "row_key": sample.row_key, "content_key": sample.content_key,
            "prompt": sample.prompt, "identity": sample.identity, "identity_sha256": sample.identity_sha,
            "photo": sample.photo, "seed": sample.options["seed"],
            "options": sample.options, "attempts": sample.attempts,
            "path": self.store.video_name(sample.sample_id),
            "seconds": round(timing["seconds"], 3), "replica": str(replica.index), "scores": timing.get("scores"),
            "video_sha256": timing.get("video_sha256")})
        self.report.rendered += 1
        self.rebuilds_in_a_row[replica.index] = 0
        self.bar.update(1)
        if self.on_result:  # tests inject faults here
            self.on_result(sample, replica)

    def _replace_failed(self) -> None:
        """Every FAILED replica: build a fresh one in its slot (placed and started by the loop), or drop the slot.
        A failure that was its node's does not count toward the slot's max_rebuilds."""
        for index, replica in list(self.replicas.items()):
            if replica.state is not State.FAILED:
                continue
            failure: Failure = replica.failure
            if failure.kind is Kind.INPUT:  # a replica that cannot start for a reason of the job's own
                raise JobFailure(failure.message)
            node_lost = self._node_verdict(failure, replica)
            if node_lost is None:
                continue  # Ray has not said yet whether its node is gone
            logger.warning("replica %d torn down: %s", index, failure.message)
            del self.replicas[index]
            self.suspected_at.pop(id(replica), None)
            if len(self.replicas) >= self._capacity(replicas_per_node(self.spec, self.accelerator)):
                self._drop(index, f"the cluster has no room left for it (a node is gone?); cause: {failure.message}")
                continue
            if not node_lost:
                self.rebuilds_in_a_row[index] = self.rebuilds_in_a_row.get(index, 0) + 1
                if self.rebuilds_in_a_row[index] > self.spec.job["max_rebuilds"]:
                    self._drop(index, f"rebuilt {self.rebuilds_in_a_row[index] - 1} times in a row without "
                                      f"finishing a sample (job.max_rebuilds); last cause: {failure.message}")
                    self.given_up.add(index)  # never placed again by `_grow`: its failures are its own
                    continue
                self.report.rebuilds += 1
            self.report.replicas_started += 1
            self.replicas[index] = self._new_replica(index, self.clock.tick())

    def _capacity(self, per_node: dict[str, int]) -> int:
        """Replicas the nodes that passed their checks hold when empty (draining ones left out)."""
        return sum(fits for node, fits in per_node.items() if node in self.checks.passed and node not in self.draining)

    def _new_replica(self, index: int, now: float) -> Replica:
        """A replica placed only on nodes that passed the job's checks (`preflight`)."""
        return Replica(index, self.spec, self.accelerator, now, self.worker, allowed=set(self.checks.passed))

    def _drop(self, index: int, reason: str) -> None:
        logger.warning("replica %d dropped, the others go on: %s", index, reason)
        self.last_loss = reason
        self.report.dropped_replicas += 1

    def _fail(self, sample: Sample, reason: str, kind: Kind) -> None:
        """Recorded with its kind and row key: a rerun skips an unchanged row that was bad input (it would fail
        the same way) and retries every other failure."""
        self.store.record_failure({"sample_id": sample.sample_id, "row_key": sample.row_key, "kind": kind.value,
                                   "prompt": sample.prompt, "identity": sample.identity,
                                   "identity_sha256": sample.identity_sha, "seed": sample.options.get("seed"),
                                   "options": sample.options,
                                   "attempts": sample.attempts, "error": reason})
        self.report.failed += 1
        self.bar.update(1)

    def _count_skipped(self) -> None:
        """Rows done before advance the bar; repeated rows come off its total (they are no work)."""
        new = self.feed.skipped - self.report.skipped
        if new:
            self.report.skipped += new
            self.bar.update(new)
        if self.requested is not None:
            wanted = self.requested - self.feed.duplicates
        else:  # a streamed dataset: known once it is read to its end
            wanted = len(self.feed.requested) if self.feed.walked else None
        if wanted is not None and wanted != self.bar.total:
            self.bar.total = wanted
            self.bar.refresh()


def _draining_nodes() -> dict[str, int]:
    """Node id -> drain deadline (ms since the epoch, 0: none) for the nodes the cluster is draining (Ray's
    GCS; nothing on a Ray without the drain API)."""
    try:
        from ray._private.state import state

        return dict(state.get_draining_nodes())
    except Exception as exc:  # an older Ray, or a GCS that cannot be asked now: nothing is draining
        logger.debug("cannot ask for draining nodes: %s", exc)
        return {}


def _due(deadlines: dict[str, int], nodes: set[str]) -> bool:
    """A drain deadline closer than HAND_BACK_S: an in-flight sample could not finish before the node goes."""
    soonest = min((deadlines[n] for n in nodes if deadlines.get(n)), default=0)
    return bool(soonest) and soonest / 1000 - time.time() < HAND_BACK_S


def ask_autoscaler(spec: JobSpec, accelerator: str, replicas: int, say: bool = True) -> None:
    """Tell an autoscaling cluster how many replicas' bundles the job wants now (0 clears the request, which
    Ray otherwise keeps after the driver exits); a fixed cluster ignores it."""
    from ray.autoscaler.sdk import request_resources

    bundle = rank_bundle(accelerator, spec.resources["cpus_per_rank"])
    try:
        request_resources(bundles=[bundle] * (spec.ranks_per_replica * replicas))
        if say:
            run_log.info("asked the autoscaler for %d replica(s) of %d x %s", replicas, spec.ranks_per_replica, bundle)
    except Exception as exc:  # a cluster without an autoscaler endpoint: nothing to ask
        logger.debug("no autoscaler request: %s", exc)


def run_job(spec: JobSpec, address: str | None = None, progress: bool = True, on_result=None,
            worker: type = RankWorker) -> JobReport:
    """Validate the dataset, hold the output folder, join or start the cluster, run the job."""
    requested = validate_dataset(spec)  # a bad table is exit 2 before any cluster starts
    driver = JobDriver(spec, progress, on_result, worker)
    with driver.store.locked():
        joined = connect(address, spec)
        return driver.run(requested, can_grow=joined)
