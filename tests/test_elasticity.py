"""The elasticity policy on its own: no Ray cluster, a cluster view and replicas the test drives.

What it proves is the policy (which slot holds a replica, what is charged, what the autoscaler hears);
that Ray's real events reach it is proven by the cluster tests (test_cluster_faults, test_ray_placement).
"""

import time
from dataclasses import dataclass, field

import pytest
from jobs import job

from ray_jobs.data.records import Kind
from ray_jobs.runtime.elasticity import (
    DRAIN_CHECK_S,
    GROW_EVERY_S,
    NODE_VERDICT_S,
    Elasticity,
)
from ray_jobs.runtime.failures import Failure
from ray_jobs.runtime.placement import Plan
from ray_jobs.runtime.recorder import JobReport
from ray_jobs.runtime.replica import Outcome, State
from ray_jobs.store.errors import JobFailure


@dataclass
class Clock:
    now: float = 0.0

    def tick(self) -> float:
        return self.now


@dataclass
class Cluster:
    per_node: dict = field(default_factory=lambda: {"a": 1, "b": 1})
    dead: set = field(default_factory=set)
    draining: dict = field(default_factory=dict)
    asked: list = field(default_factory=list)

    def replicas_per_node(self) -> dict[str, int]:
        return {n: fits for n, fits in self.per_node.items() if n not in self.dead}

    def alive_nodes(self) -> set[str]:
        return set(self.per_node) - self.dead

    def draining_nodes(self) -> dict[str, int]:
        return dict(self.draining)

    def ask_autoscaler(self, replicas: int, say: bool) -> None:
        self.asked.append(replicas)

    def free_resources(self) -> dict[str, float]:
        return {}


@dataclass
class Checks:
    passed: set = field(default_factory=lambda: {"a", "b"})
    joined: list = field(default_factory=list)

    def check_now(self, nodes) -> None:
        self.passed |= set(nodes)

    def check_joined(self, nodes) -> None:
        nodes = list(nodes)
        self.joined.append(sorted(nodes))
        self.passed |= set(nodes)


@dataclass
class Slot:
    """A replica as the policy sees one: its state, nodes, failure; the test moves it."""

    index: int
    allowed: set
    state: State = State.IDLE
    nodes: set = field(default_factory=set)
    failure: Failure | None = None
    torn_down: bool = False

    def teardown(self) -> None:
        self.torn_down = True

    def hand_back(self, reason: str) -> Outcome:
        self.state = State.FAILED
        self.failure = Failure(Kind.NODE_LOST, reason)
        return Outcome("the sample", None, self.failure)


def policy(tmp_path, replicas=2, can_grow=False, **overrides):
    spec = job(tmp_path / "rows.jsonl", tmp_path / "out", **{"parallel.replicas": replicas, **overrides})
    cluster, checks, clock, built = Cluster(), Checks(), Clock(), []

    def new_replica(index, now, allowed):
        built.append(Slot(index, allowed, nodes={"ab"[index % 2]}))
        return built[-1]

    plan = Plan("cpu", 2 if replicas == "auto" else replicas, 1, {"CPU": 1}, {"a": 1, "b": 1})
    elastic = Elasticity(spec, plan, cluster, checks, new_replica, JobReport(), clock, can_grow)
    return elastic, cluster, checks, clock, built


def test_start_places_every_slot_on_checked_nodes(tmp_path):
    elastic, _, checks, _, built = policy(tmp_path)
    elastic.start()
    assert sorted(elastic.replicas) == [0, 1] and all(s.allowed == {"a", "b"} for s in built)
    assert elastic.report.replicas_started == 2


def test_a_failed_replica_is_rebuilt_until_max_rebuilds_in_a_row_then_given_up(tmp_path):
    elastic, _, _, _, built = policy(tmp_path, **{"job.max_rebuilds": 1})
    elastic.start()
    built[0].state, built[0].failure = State.FAILED, Failure(Kind.SAMPLE, "boom")
    elastic.replace_failed()
    assert elastic.replicas[0] is built[-1] and elastic.report.rebuilds == 1
    elastic.sample_finished(0)  # a finished sample resets the count
    for attempt in range(2):
        built[-1].state, built[-1].failure = State.FAILED, Failure(Kind.SAMPLE, "boom")
        elastic.replace_failed()
    assert 0 not in elastic.replicas and elastic.given_up == {0} and elastic.report.dropped_replicas == 1
    assert "max_rebuilds" in elastic.last_loss


def test_a_node_loss_is_charged_neither_to_the_sample_nor_to_the_slot(tmp_path):
    elastic, cluster, _, clock, built = policy(tmp_path, **{"job.max_rebuilds": 0})
    elastic.start()
    cluster.per_node["c"] = 1  # room elsewhere for the rebuilt replica
    elastic.checks.passed.add("c")
    cluster.dead.add("a")
    lost = Failure(Kind.GROUP_LOST, "a rank died")
    assert elastic.node_verdict(lost, built[0]) is True  # its node is gone
    built[0].state, built[0].failure = State.FAILED, lost
    elastic.replace_failed()
    assert 0 in elastic.replicas and not elastic.given_up and elastic.report.rebuilds == 0


def test_an_unreachable_rank_waits_for_the_node_verdict(tmp_path):
    elastic, cluster, _, clock, built = policy(tmp_path)
    elastic.start()
    suspect = Failure(Kind.GROUP_LOST, "a rank became unreachable", node_suspect=True)
    assert elastic.node_verdict(suspect, built[1]) is None
    clock.now += NODE_VERDICT_S / 2
    assert elastic.node_verdict(suspect, built[1]) is None
    cluster.dead.add("b")  # Ray declares the node dead in time: the node's failure
    assert elastic.node_verdict(suspect, built[1]) is True
    cluster.dead.clear()
    clock.now += NODE_VERDICT_S  # no word from Ray: the failure is the replica's own
    assert elastic.node_verdict(suspect, built[1]) is False
    assert elastic.node_verdict(Failure(Kind.SAMPLE, "x"), built[1]) is False


def test_a_draining_node_takes_no_sample_and_its_replicas_retire_or_hand_back(tmp_path):
    elastic, cluster, _, clock, built = policy(tmp_path, replicas=3)
    elastic.start()
    idle_a, busy_b, idle_c = built[0], built[1], built[2]  # nodes a, b, a
    busy_b.state = State.BUSY
    cluster.draining = {"a": 0, "b": int((time.time() + 3600) * 1000)}  # b's deadline is an hour away
    clock.now = DRAIN_CHECK_S
    assert elastic.retire_draining(clock.now) == []
    assert idle_a.torn_down and idle_c.torn_down and sorted(elastic.replicas) == [1]
    assert elastic.idle_replicas() == []  # busy_b finishes, but takes nothing new
    cluster.draining["b"] = int((time.time() + 1) * 1000)  # now too near to finish: the sample goes back
    clock.now += DRAIN_CHECK_S
    [(replica, outcome)] = elastic.retire_draining(clock.now)
    assert replica is busy_b and outcome.failure.kind is Kind.NODE_LOST


def test_grow_fills_slots_a_joined_node_has_room_for_while_work_is_left(tmp_path):
    elastic, cluster, checks, clock, built = policy(tmp_path, replicas="auto")
    elastic.start()
    cluster.per_node["c"] = 2
    clock.now = GROW_EVERY_S / 2
    elastic.grow(clock.now, work_left=True)
    assert len(elastic.replicas) == 2  # not yet: it looks every GROW_EVERY_S
    clock.now = GROW_EVERY_S
    elastic.grow(clock.now, work_left=False)
    assert len(elastic.replicas) == 2  # no work left: nothing to grow for
    clock.now = 2 * GROW_EVERY_S
    elastic.grow(clock.now, work_left=True)
    assert sorted(elastic.replicas) == [0, 1, 2, 3] and checks.joined[-1] == ["a", "b", "c"]
    assert elastic.report.replicas_started == 4


def test_the_autoscaler_hears_what_is_wanted_again_and_again_and_zero_at_the_end(tmp_path):
    elastic, cluster, _, clock, _ = policy(tmp_path, replicas=2)
    elastic.ask_autoscaler(None)
    assert cluster.asked == []  # nothing before the replicas start
    elastic.start()
    elastic.ask_autoscaler(None)
    elastic.ask_autoscaler(None)
    assert cluster.asked == [2]
    clock.now = GROW_EVERY_S  # said again: another workload may have replaced the cluster's one request
    elastic.ask_autoscaler(None)
    elastic.ask_autoscaler(1)  # the dataset is read and one sample is left
    assert cluster.asked == [2, 2, 1]
    elastic.release()
    assert cluster.asked[-1] == 0 and all(slot.torn_down for slot in elastic.replicas.values())


def test_no_replica_left_stops_a_fixed_cluster_and_waits_on_one_that_can_grow(tmp_path):
    fixed, _, _, _, _ = policy(tmp_path)
    fixed.start()
    fixed.replicas.clear()
    with pytest.raises(JobFailure, match="every replica was lost"):
        fixed.check_replicas_left(0.0)
    growing, _, _, clock, _ = policy(tmp_path, can_grow=True, **{"resources.start_timeout_s": 100})
    growing.start()
    growing.replicas.clear()
    growing.check_replicas_left(0.0)
    growing.check_replicas_left(99.0)  # still waiting for nodes
    with pytest.raises(JobFailure, match="start_timeout_s"):
        growing.check_replicas_left(101.0)
