"""Replica: one placement group (a bundle per rank, STRICT_PACK by default), one rank actor per bundle, and its
lifecycle, advanced by the driver's event loop without ever blocking it.

    PLACING --bundles ready--> STARTING --every rank loaded--> IDLE --submit--> BUSY --every rank returned--> IDLE
       \\______________________________________________/ any failure but a bad input, a deadline, a stall: FAILED
    (the driver tears a FAILED replica down and may build a fresh one in its slot; STOPPED when torn down)

Each transition happens in one method here; the driver only reads `state`, feeds `on_ready` the references
that completed (from one `ray.wait` over every replica's `refs()`) and calls `check` with its clock. A
sample is over only when every rank has returned, so no rank can be handed the next sample while another
is still in the last one; a failure that leaves the group unusable fails the replica at once.
"""

from dataclasses import dataclass, field
from enum import Enum

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_jobs.data.job import JobSpec
from ray_jobs.data.records import Kind
from ray_jobs.runtime.failures import Failure, classify, root_cause
from ray_jobs.runtime.worker import CONCURRENCY_GROUPS, RankWorker
from ray_jobs.store.access import storage_credentials

PROBE_EVERY_S = 5.0
START_CPU_S = 0.2  # CPU seconds a starting rank must use between two probes to count as progressing
# A rank process that has not answered yet is still being started by Ray (a busy node starts Python slowly);
# Ray itself gives up on a worker that does not register within 60 s, so we wait at least twice that.
UNHEARD_FLOOR_S = 120.0
ROOT_CAUSE_GRACE_S = 5.0  # after a rank fails because of another, how long to wait for that one's own report


class State(Enum):
    PLACING = "placing"
    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    FAILED = "failed"
    STOPPED = "stopped"


@dataclass
class Outcome:
    """A settled sample: rank 0's timings, or the failure (the root cause among the ranks')."""

    sample: object
    result: dict | None = None
    failure: Failure | None = None


@dataclass
class Probe:
    sent_at: float  # driver clock when it was asked
    ref: ray.ObjectRef | None  # None once answered (asked again PROBE_EVERY_S after sent_at)


@dataclass
class StartWatch:
    """STARTING's clock: what each rank last said of its start-up, and when any rank last progressed."""

    began: float  # driver clock when the ranks were created
    quiet_since: float = 0.0  # driver clock of the last progress of any rank (once every rank answered)
    probes: dict = field(default_factory=dict)  # rank -> Probe
    seen: dict = field(default_factory=dict)  # rank -> (phase, CPU seconds) at its last answer

    def heard(self, rank: int, phase: str, cpu_s: float, now: float) -> None:
        """Silence counts from the moment every rank's process answered (starting one is Ray's, not ours)."""
        last = self.seen.get(rank)
        if last is None or last[0] != phase or cpu_s - last[1] >= START_CPU_S:
            self.quiet_since = now
        self.seen[rank] = (phase, cpu_s)

    def phases(self, ranks) -> str:
        return ", ".join(f"rank {r} {self.seen.get(r, ('not answering',))[0]}" for r in sorted(ranks))


@dataclass
class Work:
    """The sample in flight and what is still outstanding for it, per rank."""

    sample: object
    renders: dict  # ObjectRef -> rank, for ranks that have not returned
    result: dict | None = None
    failures: list = field(default_factory=list)
    failed_at: float | None = None  # driver clock of the first failure
    probes: dict = field(default_factory=dict)  # rank -> Probe, for ranks that have not returned


def rank_bundle(accelerator: str, cpus: float) -> dict:
    bundle = {"CPU": cpus}
    if accelerator == "gpu":
        bundle["GPU"] = 1
    elif accelerator == "npu":
        bundle["NPU"] = 1
    return bundle


def actor_resources(accelerator: str, cpus: float) -> dict:
    """The bundle as actor options: Ray then sets CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES per actor."""
    options = {"num_cpus": cpus}
    if accelerator == "gpu":
        options["num_gpus"] = 1
    elif accelerator == "npu":
        options["resources"] = {"NPU": 1}
    return options


class Replica:
    def __init__(self, index: int, spec: JobSpec, accelerator: str, now: float, worker: type = RankWorker,
                 strategy: str = "STRICT_PACK", allowed: set[str] | None = None) -> None:
        """Ask for the placement group (returns at once; the loop sees it ready through `refs()`), on one of the
        `allowed` nodes (node ids; None: any)."""
        self.index, self.spec, self.accelerator, self.worker = index, spec, accelerator, worker
        self.world, self.cpus = spec.ranks_per_replica, spec.resources["cpus_per_rank"]
        self.timeout = spec.resources["group_timeout_s"]
        self.step_timeout = spec.resources["step_timeout_s"]
        where = None if allowed is None else [{"ray.io/node-id": f"in({','.join(sorted(allowed))})"}] * self.world
        self.group = placement_group([rank_bundle(accelerator, self.cpus)] * self.world, strategy=strategy,
                                     bundle_label_selector=where)
        self.actors: list = []
        self.address: ray.ObjectRef | None = None  # rank 0's (node IP, port) once started
        self.waiting: dict = {self.group.ready(): -1}  # PLACING/STARTING: ref -> rank (-1: the group)
        self.work: Work | None = None
        self.failure: Failure | None = None
        self.state, self.deadline = State.PLACING, now + self.timeout
        self.start = StartWatch(now)
        self.nodes: set[str] = set()  # where its ranks run, once started

    # -- what the loop waits on ------------------------------------------------------------------------------
    def refs(self) -> list[ray.ObjectRef]:
        if self.state is State.BUSY:
            return [*self.work.renders, *(p.ref for p in self.work.probes.values() if p.ref is not None)]
        if self.state is State.STARTING:
            return [*self.waiting, *(p.ref for p in self.start.probes.values() if p.ref is not None)]
        return list(self.waiting) if self.state is State.PLACING else []

    def on_ready(self, ref: ray.ObjectRef, now: float) -> Outcome | None:
        """Advance on one completed reference; returns the sample's outcome once it is settled."""
        if self.state is State.PLACING:
            self.waiting.clear()
            self._start(now)
        elif self.state is State.STARTING and ref in self.waiting:
            self._started_one(ref)
        elif self.state is State.STARTING:
            self._read_start_probe(ref, now)
        elif self.state is State.BUSY:
            return self._rank_returned(ref, now)
        else:  # a rank's answer after the replica failed: read, so Ray does not report it as unhandled
            _discard(ref)
        return None

    def check(self, now: float) -> Outcome | None:
        """Deadlines and the no-progress clocks; returns the sample's outcome if the replica failed with it.

        Placing has a deadline (resources do not come); starting has none: it fails only after
        `group_timeout_s` in which no rank progressed (no new phase, no CPU used), whatever the time taken,
        so a busy node, slow storage or a cold compile cache slows a start without failing it."""
        if self.state is State.PLACING and now > self.deadline:
            self._fail(Failure(Kind.GROUP_LOST, f"replica {self.index}: placement group not placed within "
                                                f"{self.timeout:g} s"))
        elif self.state is State.STARTING:
            self._check_start(now)
        elif self.state is State.BUSY:
            return self._check_progress(now)
        return None

    def _check_start(self, now: float) -> None:
        starting = set(self.waiting.values())
        unheard = sorted(set(range(self.world)) - set(self.start.seen))
        allowed = max(2 * self.timeout, UNHEARD_FLOOR_S)
        if unheard and now - self.start.began > allowed:  # a process that never came up to answer
            self._fail(Failure(Kind.GROUP_LOST, f"replica {self.index}: rank {unheard[0]}'s process did not start "
                                                f"within {allowed:g} s (2 x resources.group_timeout_s, at least "
                                                f"{UNHEARD_FLOOR_S:g} s)"))
            return
        ceiling = self.spec.resources["start_timeout_s"]
        if now - self.start.began > ceiling:  # moving, but never arriving (a rank spinning in start-up)
            self._fail(Failure(Kind.GROUP_LOST, f"replica {self.index}: not started within {ceiling:g} s "
                                                f"({self.start.phases(starting)}; resources.start_timeout_s "
                                                "extends it)"))
            return
        if not unheard and now - self.start.quiet_since > self.timeout:
            self._fail(Failure(Kind.GROUP_LOST, f"replica {self.index}: no start-up progress for "
                                                f"{now - self.start.quiet_since:.0f} s ({self.start.phases(starting)}; "
                                                f"resources.group_timeout_s {self.timeout:g} extends it)"))
            return
        every = min(PROBE_EVERY_S, self.timeout / 3)
        for rank in starting:
            probe = self.start.probes.get(rank)
            if probe is None or (probe.ref is None and now - probe.sent_at >= every):
                self.start.probes[rank] = Probe(now, self.actors[rank].start_progress.remote())

    def _read_start_probe(self, ref: ray.ObjectRef, now: float) -> None:
        rank = next((r for r, p in self.start.probes.items() if p.ref == ref), None)
        if rank is None:
            return _discard(ref)
        self.start.probes[rank].ref = None
        try:
            phase, cpu_s = ray.get(ref)
        except Exception:  # the rank died: its setup reference reports why
            return
        self.start.heard(rank, phase, cpu_s, now)

    # -- transitions -----------------------------------------------------------------------------------------
    def _start(self, now: float) -> None:
        """PLACING -> STARTING: one actor per bundle; rank 0 opens the group's store, every rank joins and loads."""
        actor_class = ray.remote(concurrency_groups=CONCURRENCY_GROUPS)(self.worker)
        self.actors = [actor_class.options(
            **actor_resources(self.accelerator, self.cpus), max_restarts=0, max_concurrency=1,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank),
        ).remote(rank, self.world, self.spec.job["output"], f"replica-{self.index}-rank-{rank}.log",
                 storage_credentials(self.spec))
            for rank in range(self.world)]
        self.address = self.actors[0].rendezvous.remote(self.timeout)  # resolved by Ray before setup runs
        self.waiting = {actor.setup.remote(self.spec.model, self.spec.parallel, self.accelerator, self.address,
                                           self.timeout): rank for rank, actor in enumerate(self.actors)}
        self.state, self.start = State.STARTING, StartWatch(now)

    def _started_one(self, ref: ray.ObjectRef) -> None:
        rank = self.waiting.pop(ref)
        try:
            node = ray.get(ref)
            if isinstance(node, str):  # a stand-in worker may return nothing
                self.nodes.add(node)
        except Exception as exc:  # classified: a bad checkpoint is a bad input, a lost node a lost group
            failure = classify(exc)
            self._fail(Failure(failure.kind, f"replica {self.index} rank {rank} did not start: {failure.message}"))
            return
        if not self.waiting:
            self.state = State.IDLE

    def submit(self, sample, files: dict[str, str], now: float) -> None:
        """IDLE -> BUSY: every rank gets the sample (only rank 0 the image and where to write); the first probe
        follows later."""
        assert self.state is State.IDLE, self.state
        about = {"identity": sample.identity, "identity_sha256": sample.identity_sha, "photo": files.get("photo")}
        renders = {actor.render.remote(sample.sample_id, sample.prompt, sample.image if rank == 0 else None,
                                       sample.options, files if rank == 0 else {}, self.spec.quality["scores"],
                                       about if rank == 0 else None): rank
                   for rank, actor in enumerate(self.actors)}
        self.work = Work(sample, renders, probes={rank: Probe(now, None) for rank in range(self.world)})
        self.state = State.BUSY

    def _rank_returned(self, ref: ray.ObjectRef, now: float) -> Outcome | None:
        work = self.work
        if ref not in work.renders:  # a probe answered
            return self._read_probe(ref)
        rank = work.renders.pop(ref)
        work.probes.pop(rank, None)
        try:
            value = ray.get(ref)
            if rank == 0:
                work.result = value
        except Exception as exc:  # classified; the group decides below whether the others can be awaited
            work.failures.append(classify(exc))
            work.failed_at = now if work.failed_at is None else work.failed_at
        failure = root_cause(work.failures) if work.failures else None
        if failure is not None and not failure.kind.keeps_replica and not (failure.secondary and work.renders):
            return self._fail(failure)
        if work.renders:  # a secondary failure waits (ROOT_CAUSE_GRACE_S at most) for the rank that caused it
            return None
        self.work, self.state = None, State.IDLE  # every rank has returned: the group is between samples
        return Outcome(work.sample, None if failure else work.result, failure)

    def _read_probe(self, ref: ray.ObjectRef) -> Outcome | None:
        rank = next((r for r, p in self.work.probes.items() if p.ref == ref), None)
        if rank is None:  # the rank returned meanwhile
            return None
        self.work.probes[rank].ref = None
        try:
            idle_s = ray.get(ref)
        except Exception:  # the rank died: its render reference reports why
            return None
        if idle_s <= self.step_timeout:
            return None
        return self._fail(Failure(Kind.GROUP_LOST, f"no progress: rank {rank} finished no step for {idle_s:.0f} s "
                                                f"(resources.step_timeout_s {self.step_timeout:g})"))

    def _check_progress(self, now: float) -> Outcome | None:
        """Ask every rank still rendering for its own clock (at most every PROBE_EVERY_S); a rank that cannot
        answer within step_timeout_s of the driver's clock counts as stalled too."""
        if self.work.failures and now - self.work.failed_at > ROOT_CAUSE_GRACE_S:
            failure = root_cause(self.work.failures)
            if not failure.kind.keeps_replica:
                return self._fail(failure)
        every = min(PROBE_EVERY_S, self.step_timeout / 3)
        for rank in set(self.work.renders.values()):
            probe = self.work.probes[rank]
            if probe.ref is None and now - probe.sent_at >= every:
                self.work.probes[rank] = Probe(now, self.actors[rank].seconds_since_progress.remote())
            elif probe.ref is not None and now - probe.sent_at > self.step_timeout:
                return self._fail(Failure(Kind.GROUP_LOST, f"no progress: rank {rank} has not answered its "
                                                           f"progress probe for {now - probe.sent_at:.0f} s"))
        return None

    def _fail(self, failure: Failure) -> Outcome | None:
        """Any state -> FAILED: the ranks are killed at once, so none can go on into another sample."""
        work, self.work, self.failure = self.work, None, failure
        self.teardown()
        self.state = State.FAILED
        return Outcome(work.sample, None, failure) if work is not None else None

    def hand_back(self, reason: str) -> Outcome | None:
        """BUSY -> FAILED for a reason that is the node's, not the sample's (it renders elsewhere, uncharged)."""
        return self._fail(Failure(Kind.NODE_LOST, f"replica {self.index}: {reason}"))

    def upload_logs(self) -> list[ray.ObjectRef]:
        """Each rank's log to an object-store output (they run beside a render: read-only probes' group)."""
        return [actor.upload_log.remote() for actor in self.actors]

    def teardown(self) -> None:
        """Kill the ranks and free the bundles (non-blocking; safe to call again)."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors, self.waiting = [], {}
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
        if self.state is not State.FAILED:
            self.state = State.STOPPED


def _discard(ref: ray.ObjectRef) -> None:
    try:
        ray.get(ref, timeout=0)
    except Exception:  # whatever it says, the replica has already failed
        pass
