"""Elastic replicas: which slots hold a replica, and what follows when the cluster changes.

`Elasticity` decides; the cluster it looks at is a `ClusterView` (`runtime.cluster.RayCluster` on Ray) and
its replicas are built by a factory, so every rule here is tested without Ray (tests/test_elasticity.py):
- start: every slot placed at once, on nodes that passed the job's checks (`preflight`);
- grow: every GROW_EVERY_S, while work remains, replicas are placed in slots the cluster has room for again;
- drain: a node being drained takes no new sample; an idle replica there retires, a busy one finishes its
  sample, or hands it back when the drain deadline is too near;
- node loss: a failure that was its node's is charged neither to the sample nor to the slot (`node_verdict`);
- replace: a FAILED replica is rebuilt in its slot, or the slot is dropped (`job.max_rebuilds` in a row, or
  no room left on the cluster);
- autoscaler: the replicas the job wants, said again every GROW_EVERY_S (Ray keeps one request per cluster);
- none left: on a cluster that can grow, wait for nodes up to `resources.start_timeout_s`; else stop.
"""

import time
from typing import Callable, Iterable, Protocol

from ray_jobs.data.job import JobSpec
from ray_jobs.data.records import Kind
from ray_jobs.runtime.clock import LookClock
from ray_jobs.runtime.failures import Failure
from ray_jobs.runtime.logs import logger
from ray_jobs.runtime.placement import Plan
from ray_jobs.runtime.recorder import JobReport
from ray_jobs.runtime.replica import Outcome, Replica, State
from ray_jobs.store.errors import JobFailure

GROW_EVERY_S = 10.0  # how often the driver looks for room for replicas it lacks (and repeats its autoscaler request)
DRAIN_CHECK_S = 2.0  # how often it asks which nodes are being drained
NODE_VERDICT_S = 60.0  # how long an unreachable rank's node has to be declared dead before the failure is charged
HAND_BACK_S = 15.0  # a replica on a node drained within this hands its sample back instead of finishing it
PLACEMENT_QUIET_S, PLACEMENT_REPEAT_S = 5.0, 60.0  # waiting for resources: said after 5 s, again every minute


class ClusterView(Protocol):
    """What the policy asks of the cluster."""

    def replicas_per_node(self) -> dict[str, int]:
        """Node id -> replicas it holds when empty."""

    def alive_nodes(self) -> set[str]: ...

    def draining_nodes(self) -> dict[str, int]:
        """Node id -> drain deadline (ms since the epoch; 0: none) for the nodes being drained."""

    def ask_autoscaler(self, replicas: int, say: bool) -> None: ...

    def free_resources(self) -> dict[str, float]: ...


class NodeGate(Protocol):
    """Which nodes may hold replicas (`preflight.NodeChecks`)."""

    passed: set[str]

    def check_now(self, nodes: list[str]) -> None: ...

    def check_joined(self, nodes: Iterable[str]) -> None: ...


ReplicaFactory = Callable[[int, float, set[str]], Replica]  # (slot, now, allowed node ids) -> a placing replica


class Elasticity:
    def __init__(self, spec: JobSpec, plan: Plan, cluster: ClusterView, checks: NodeGate, new_replica: ReplicaFactory,
                 report: JobReport, clock: LookClock, can_grow: bool) -> None:
        self.spec, self.plan, self.cluster, self.checks = spec, plan, cluster, checks
        self.new_replica, self.report, self.clock, self.can_grow = new_replica, report, clock, can_grow
        self.replicas: dict[int, Replica] = {}  # the replica per slot: all torn down however the run ends
        self.started = False
        self.rebuilds_in_a_row: dict[int, int] = {}
        self.given_up: set[int] = set()  # slots dropped for failing max_rebuilds times in a row
        self.last_loss = ""  # why the last slot was dropped: the job's error if none is left
        self.started_at = self.grown_at = 0.0
        self.draining: set[str] = set()  # node ids Ray is draining, as last asked
        self.drain_checked_at = 0.0
        self.asked_replicas, self.asked_at = 0, 0.0  # what the autoscaler was last asked for, and when
        self.empty_since: float | None = None  # since when no replica is left
        self.suspected_at: dict[int, float] = {}  # id(replica) -> when a rank of it first became unreachable
        self.said_placed, self.said_at = -1, 0.0  # placement last said

    # -- slots ----------------------------------------------------------------------------------------------
    def start(self) -> None:
        """Every slot placed and started at once; called once there is a sample to render."""
        nodes = [node for node, fits in self.cluster.replicas_per_node().items() if fits]
        self.checks.check_now(nodes)  # storage and the checkpoint as every node's ranks will see them
        now = self.started_at = self.grown_at = self.clock.tick()
        for index in range(self.plan.replicas):
            self._place(index, now)
        self.started = True
        self.report.replicas_started += self.plan.replicas

    def _place(self, index: int, now: float) -> None:
        self.replicas[index] = self.new_replica(index, now, set(self.checks.passed))

    def sample_finished(self, index: int) -> None:
        self.rebuilds_in_a_row[index] = 0

    def idle_replicas(self) -> list[Replica]:
        """Replicas that may take a sample now (none on a draining node)."""
        return [r for r in self.replicas.values() if r.state is State.IDLE and not r.nodes & self.draining]

    def busy(self) -> int:
        return sum(r.state is State.BUSY for r in self.replicas.values())

    def capacity(self, per_node: dict[str, int]) -> int:
        """Replicas the nodes that passed their checks hold when empty (draining ones left out)."""
        return sum(fits for node, fits in per_node.items() if node in self.checks.passed and node not in self.draining)

    def grow(self, now: float, work_left: bool) -> None:
        """Every GROW_EVERY_S, while work remains, place replicas in slots the cluster has room for again (a node
        joined, or came back), up to what the job asks (`auto`: all that fit)."""
        if not self.started or now - self.grown_at < GROW_EVERY_S or not work_left:
            return
        self.grown_at = now
        per_node = self.cluster.replicas_per_node()
        self.checks.check_joined(node for node, fits in per_node.items() if fits and node not in self.draining)
        capacity = self.capacity(per_node)
        asked = self.spec.parallel["replicas"]
        wanted = (capacity if asked == "auto" else min(asked, capacity)) - len(self.given_up)
        free = (index for index in range(wanted + len(self.replicas) + len(self.given_up))
                if index not in self.replicas and index not in self.given_up)
        while len(self.replicas) < wanted:
            index = next(free)
            logger.warning("replica %d added: the cluster has room for %d replica(s) now", index, wanted)
            self._place(index, now)
            self.rebuilds_in_a_row[index] = 0
            self.report.replicas_started += 1

    def retire_draining(self, now: float) -> list[tuple[Replica, Outcome | None]]:
        """A node being drained (Ray's drain API: a spot-preemption notice, an idle scale-down) takes no new
        sample; each replica there finishes the one it has, then is torn down without counting as a failure.
        Returns the samples handed back because the deadline is too near to finish (they render elsewhere)."""
        if now - self.drain_checked_at < DRAIN_CHECK_S:
            return []
        self.drain_checked_at = now
        deadlines = self.cluster.draining_nodes()
        self.draining = set(deadlines)
        handed_back = []
        for index, replica in list(self.replicas.items()):
            on = replica.nodes & self.draining
            if on and replica.state is State.IDLE:
                logger.warning("replica %d retired: its node is being drained", index)
                replica.teardown()
                del self.replicas[index]
            elif on and replica.state is State.BUSY and _due(deadlines, on):
                handed_back.append((replica, replica.hand_back("its node is being drained and its deadline is near")))
        return handed_back

    def replace_failed(self) -> None:
        """Every FAILED replica: a fresh one in its slot, or the slot dropped. A failure that was its node's does
        not count toward the slot's max_rebuilds."""
        for index, replica in list(self.replicas.items()):
            if replica.state is not State.FAILED:
                continue
            failure: Failure = replica.failure
            if failure.kind is Kind.INPUT:  # a replica that cannot start for a reason of the job's own
                raise JobFailure(failure.message)
            node_lost = self.node_verdict(failure, replica)
            if node_lost is None:
                continue  # Ray has not said yet whether its node is gone
            logger.warning("replica %d torn down: %s", index, failure.message)
            del self.replicas[index]
            self.suspected_at.pop(id(replica), None)
            if len(self.replicas) >= self.capacity(self.cluster.replicas_per_node()):
                self._drop(index, f"the cluster has no room left for it (a node is gone?); cause: {failure.message}")
                continue
            if not node_lost:
                self.rebuilds_in_a_row[index] = self.rebuilds_in_a_row.get(index, 0) + 1
                if self.rebuilds_in_a_row[index] > self.spec.job["max_rebuilds"]:
                    self._drop(index, f"rebuilt {self.rebuilds_in_a_row[index] - 1} times in a row without "
                                      f"finishing a sample (job.max_rebuilds); last cause: {failure.message}")
                    self.given_up.add(index)  # never placed again by `grow`: its failures are its own
                    continue
                self.report.rebuilds += 1
            self.report.replicas_started += 1
            self._place(index, self.clock.tick())

    def _drop(self, index: int, reason: str) -> None:
        logger.warning("replica %d dropped, the others go on: %s", index, reason)
        self.last_loss = reason
        self.report.dropped_replicas += 1

    def check_replicas_left(self, now: float) -> None:
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

    # -- node loss --------------------------------------------------------------------------------------------
    def node_verdict(self, failure: Failure, replica: Replica) -> bool | None:
        """Whether the failure is its node's, not the sample's or our code's (neither is charged then): Ray said
        the node died or was drained, or a rank's node is no longer alive. A rank that became unreachable on a
        node still listed alive gets NODE_VERDICT_S for Ray to declare the node dead (its health check takes
        seconds): None until then."""
        if failure.kind is Kind.NODE_LOST:
            return True
        if failure.kind is not Kind.GROUP_LOST or not replica.nodes:
            return False
        if replica.nodes - self.cluster.alive_nodes():
            return True
        if not failure.node_suspect:
            return False
        first = self.suspected_at.setdefault(id(replica), self.clock.tick())
        return None if self.clock.tick() - first < NODE_VERDICT_S else False

    # -- what the cluster is told and what the user is told -----------------------------------------------------
    def ask_autoscaler(self, samples_left: int | None) -> None:
        """The replicas the job wants (those asked for; `auto`: what fits now); once the dataset is read to its
        end (`samples_left` known) no more than the samples left need."""
        if not self.started:
            return
        asked = self.spec.parallel["replicas"]
        wanted = max(self.plan.replicas, 1) if asked == "auto" else asked  # scaled to zero: ask for one at least
        if samples_left is not None:
            wanted = min(wanted, samples_left)
        now = self.clock.tick()
        # Ray keeps one request per cluster, the last one written: another workload's (Ray Data asks for its
        # own) replaces ours, so it is said again every GROW_EVERY_S, not only when it changes
        if wanted != self.asked_replicas or now - self.asked_at >= GROW_EVERY_S:
            self.cluster.ask_autoscaler(wanted, say=wanted != self.asked_replicas)
            self.asked_replicas, self.asked_at = wanted, now

    def say_placement(self, now: float) -> None:
        """While fewer replicas are placed than asked, say so above the bar (when the count changes, and once a
        minute), with what the cluster has free: a busy or scaling cluster is not a stuck job."""
        placed = sum(r.state is not State.PLACING for r in self.replicas.values())
        waiting = (placed < len(self.replicas) or not self.replicas) and now - self.started_at > PLACEMENT_QUIET_S
        if not self.started or not waiting or (placed == self.said_placed and now - self.said_at < PLACEMENT_REPEAT_S):
            return
        free = {k: round(v, 1) for k, v in self.cluster.free_resources().items() if k in ("CPU", "GPU", "NPU")}
        if self.replicas:
            logger.warning("waiting for resources: %d of %d replicas placed (free on the cluster now: %s)", placed,
                           len(self.replicas), free or "nothing")
        else:
            logger.warning("waiting for nodes: none that passed the job's checks has room for a replica of %s; the "
                           "autoscaler is asked for %d (free on the cluster now: %s)", self.plan.bundle,
                           self.asked_replicas, free or "nothing")
        self.said_placed, self.said_at = placed, now

    def release(self) -> None:
        """However the run ends: the autoscaler request cleared (Ray keeps it after the driver exits), every
        replica torn down."""
        if self.asked_replicas:
            self.cluster.ask_autoscaler(0, say=True)
        for replica in self.replicas.values():
            replica.teardown()


def _due(deadlines: dict[str, int], nodes: set[str]) -> bool:
    """A drain deadline closer than HAND_BACK_S: an in-flight sample could not finish before the node goes."""
    soonest = min((deadlines[n] for n in nodes if deadlines.get(n)), default=0)
    return bool(soonest) and soonest / 1000 - time.time() < HAND_BACK_S
