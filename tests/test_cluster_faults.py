"""A cluster that loses a node mid-job (real raylets on one machine): the replica there cannot be rebuilt, is
dropped, and the remaining replica renders every sample."""

import os
import signal
import sys
import threading
import time
import uuid

import pytest
import ray
import shared_ray
from jobs import assert_exactly_once, job, write_jsonl
from ray import cloudpickle
from ray.cluster_utils import Cluster
from shared_ray import placements

from ray_jobs.runtime.engine import run_job
from ray_jobs.runtime.worker import RankWorker

pytestmark = pytest.mark.slow  # multi-node clusters of their own (CI runs them: -m slow)

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the slow worker travels by value


class SlowWorker(RankWorker):
    """Each clip takes 2 s more: long enough for a node to join and a replica to start mid-job."""

    def render(self, *args):
        time.sleep(2)
        return super().render(*args)


def cluster_of(nodes: int, tiny_root):
    """A real multi-node cluster on this machine: a head without CPUs and `nodes` nodes of 2 CPUs."""
    shared_ray.release()  # one driver, one cluster
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(nodes):
        cluster.add_node(num_cpus=2)
    ray.init(address=cluster.address, log_to_driver=False,
             runtime_env={"env_vars": {"ECHOVIDEO_CACHE": str(tiny_root.parent)}})
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


@pytest.fixture()
def two_nodes(tiny_root):
    yield from cluster_of(2, tiny_root)


def test_losing_a_node_mid_job_leaves_the_work_to_the_other_replica(two_nodes, face_path, tmp_path):
    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(6)])
    lost = []

    def lose_node(sample, replica):  # the node that just finished a sample goes away
        if not lost:
            node_id = placements(replica)[0]["node"]
            lost.append(next(n for n in two_nodes.worker_nodes if n.node_id == node_id))
            two_nodes.remove_node(lost[0])

    out = tmp_path / "out"
    report = run_job(job(dataset, out),
                     progress=False, on_result=lose_node)
    assert lost and report.summary["replicas_dropped"] == 1 and report.exit_code == 0
    assert_exactly_once(out, 6)


@pytest.fixture()
def one_node(tiny_root):
    yield from cluster_of(1, tiny_root)


def test_replicas_follow_the_cluster_a_joining_node_adds_one_and_a_lost_node_charges_no_attempt(
        one_node, face_path, tmp_path, caplog):
    """`replicas: auto` on one 2-CPU node: one replica. A node joins after the first clip: a second replica is
    placed while the job runs. Then the first node is removed under its busy replica: that sample renders on
    the other replica without an attempt charged, and nothing is lost or rendered twice."""
    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(20)])
    first_node, events = one_node.worker_nodes and next(iter(one_node.worker_nodes)), []

    def follow(sample, replica):
        if not events:
            events.append(("added", one_node.add_node(num_cpus=2)))
        elif replica.index == 1 and len(events) == 1:
            one_node.remove_node(first_node)
            events.append(("removed", first_node))

    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="ray_jobs"):
        report = run_job(job(dataset, out, **{"parallel.replicas": "auto"}), progress=False, on_result=follow,
                         worker=SlowWorker)
    assert [kind for kind, _ in events] == ["added", "removed"]
    assert report.summary["replicas_started"] >= 2 and "replica 1 added" in caplog.text
    rows = assert_exactly_once(out, 20)
    assert "node was lost; it renders elsewhere (no attempt charged)" in caplog.text
    # Ray reports the ranks unreachable first (the verdict is then awaited) or, when its health check is quicker
    # than our next call, dead with their node: free of charge either way
    assert "became unreachable (ActorUnavailableError)" in caplog.text or "node was lost (ActorDiedError)" in caplog.text  # it was busy there
    assert all(row["attempts"] == 1 for row in rows)  # a lost node is not the sample's fault


def test_a_node_being_drained_takes_no_new_sample_and_finishes_its_own(two_nodes, face_path, tmp_path, caplog):
    """Ray's drain API (a spot-preemption notice) on the node of the replica that just finished a clip: that
    replica takes no new sample and is retired; the other replica renders the rest; nothing is charged."""
    from ray.core.generated import autoscaler_pb2

    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(8)])
    drained, after = [], []

    def drain(sample, replica):
        if drained:
            after.append(replica.index)
            return
        node = placements(replica)[0]["node"]
        accepted, why = ray._raylet.GcsClient(address=two_nodes.address).drain_node(
            node, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"), "spot notice",
            int((time.time() + 600) * 1000))
        assert accepted, why
        drained.append(replica.index)

    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="ray_jobs"):
        report = run_job(job(dataset, out), progress=False, on_result=drain, worker=SlowWorker)
    assert f"replica {drained[0]} retired: its node is being drained" in caplog.text
    assert after.count(drained[0]) <= 1  # at most the sample it already had
    rows = assert_exactly_once(out, 8)
    assert report.exit_code == 0 and all(row["attempts"] == 1 for row in rows)


def test_a_node_whose_raylet_is_killed_mid_clip_charges_neither_the_sample_nor_the_slot(two_nodes, face_path,
                                                                                       tmp_path, caplog):
    """A busy replica's node dies half-way through a clip (its raylet and the ranks killed by pid, as a machine
    that goes away): the ranks are usually first only unreachable (ActorUnavailableError), and Ray declares the
    node dead after its health check. The driver waits for that word: the clip renders on the other node with
    attempts 1, and no rebuild is counted."""
    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(24)])
    killed = []

    def kill_raylet_mid_clip(sample, replica):
        if killed:
            return
        ranks = placements(replica)
        node = next(n for n in two_nodes.worker_nodes if n.node_id == ranks[0]["node"])
        killed.extend([node.all_processes["raylet"][0].process.pid, *(rank["pid"] for rank in ranks)])
        threading.Timer(1.0, lambda: [os.kill(pid, signal.SIGKILL) for pid in killed]).start()  # mid next clip

    out = tmp_path / "out"
    with caplog.at_level("WARNING", logger="ray_jobs"):
        report = run_job(job(dataset, out), progress=False, on_result=kill_raylet_mid_clip, worker=SlowWorker)
    assert killed and report.exit_code == 0
    assert "node was lost; it renders elsewhere (no attempt charged)" in caplog.text
    # Ray reports the ranks unreachable first (the verdict is then awaited) or, when its health check is quicker
    # than our next call, dead with their node: free of charge either way
    assert "became unreachable (ActorUnavailableError)" in caplog.text or "node was lost (ActorDiedError)" in caplog.text
    rows = assert_exactly_once(out, 24)
    assert all(row["attempts"] == 1 for row in rows)
    assert report.rebuilds == 0 and report.summary["replica_rebuilds"] == 0


def test_a_joining_node_is_checked_before_it_gets_a_replica_and_one_that_fails_gets_none(
        tiny_root, object_store, face_path, tmp_path, caplog, monkeypatch):
    """Nodes carry their own storage credentials (the driver forwards none: `resources.env: []`). A node that
    joins mid-job with a wrong secret fails its check, is named once and never gets a replica; one that joins
    with the right one passes and gets a replica while the job runs."""
    from object_store import ACCESS_KEY, BUCKET, SECRET_KEY

    from ray_jobs.store.outputs import read_manifest

    good = {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY}
    for name, value in good.items():
        monkeypatch.setenv(name, value)  # the driver's own
    shared_ray.release()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2, env_vars=good)
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"ECHOVIDEO_CACHE": str(tiny_root.parent)}})
        cluster.wait_for_nodes()
        joined = []

        def join(sample, replica):
            if not joined:
                joined.append(cluster.add_node(num_cpus=2, env_vars={**good, "AWS_SECRET_ACCESS_KEY": "wrong"}))
            elif len(joined) == 1 and "failed its checks" in caplog.text:
                joined.append(cluster.add_node(num_cpus=2, env_vars=good))

        dataset = write_jsonl(tmp_path / "prompts.jsonl",
                              [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(24)])
        output = (f"s3://{BUCKET}/joined-{uuid.uuid4().hex[:8]}?endpoint_override={object_store.endpoint}"
                  "&scheme=http&region=us-east-1")
        with caplog.at_level("WARNING", logger="ray_jobs"):
            report = run_job(job(dataset, output, **{"parallel.replicas": "auto", "resources.env": []}),
                             progress=False, on_result=join, worker=SlowWorker)
        assert len(joined) == 2, caplog.text
        bad, good_node = joined[0].node_id[:8], joined[1].node_id[:8]
        assert caplog.text.count(f"node {bad} failed its checks and gets no replica") == 1
        assert f"node {good_node} passed its checks" in caplog.text and "replica 1 added" in caplog.text
        assert report.summary["replicas_started"] == 2 and report.summary["ok"] == 24
        assert all(row["attempts"] == 1 for row in read_manifest(output, ("ok",)))
    finally:
        ray.shutdown()
        cluster.shutdown()


def test_a_cluster_with_no_room_yet_is_asked_and_waited_for_then_renders_on_the_node_that_joins(
        tiny_root, face_path, tmp_path, caplog):
    """A head with no CPUs for ranks and no worker node (a group scaled to zero): the job the driver joins asks
    the autoscaler for a replica and waits, saying so; the node that comes 15 s later is checked and renders all.
    (The job runs on a thread: Ray adds a node from the main thread only.)"""
    from test_ray_jobs import _autoscaler_request

    shared_ray.release()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, log_to_driver=False,
                 runtime_env={"env_vars": {"ECHOVIDEO_CACHE": str(tiny_root.parent)}})
        dataset = write_jsonl(tmp_path / "prompts.jsonl",
                              [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(3)])
        outcome = {}

        def run():
            try:
                outcome["report"] = run_job(job(dataset, tmp_path / "out", **{"resources.accelerator": "cpu",
                                                                                "parallel.replicas": 1}),
                                            progress=False)
            except BaseException as exc:
                outcome["error"] = exc

        driver = threading.Thread(target=run)
        with caplog.at_level("WARNING", logger="ray_jobs"):
            driver.start()
            time.sleep(15)
            asked = _autoscaler_request()
            cluster.add_node(num_cpus=2)  # what the autoscaler would start
            driver.join(timeout=600)
        assert not driver.is_alive() and "error" not in outcome, outcome
        assert "waiting for nodes: none that passed the job's checks has room for a replica" in caplog.text
        assert len(asked) == 2  # one replica's bundles (2 ranks) asked for while there was no node
        assert outcome["report"].rendered == 3 and outcome["report"].exit_code == 0
        assert_exactly_once(tmp_path / "out", 3)
    finally:
        ray.shutdown()
        cluster.shutdown()
