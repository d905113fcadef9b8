"""Placement and device visibility on a simulated multi-node cluster (logical GPUs and NPUs, real raylets).

Replicas are placed and their ranks created, but no model is loaded (`PlacedOnly`): what is checked is where
Ray puts the ranks, which device each rank is given and what its backend is told, which needs no
accelerator and no model.
"""

import os
import socket
import sys
import time

import pytest
import ray
import shared_ray
from ray import cloudpickle
from ray.cluster_utils import Cluster
from shared_ray import placements, wait_started

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.job import parse_job
from ray_jobs.runtime.placement import make_plan
from ray_jobs.runtime.replica import Replica, State
from ray_jobs.runtime.worker import RankWorker

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # PlacedOnly travels by value


class PlacedOnly(RankWorker):
    """A rank that sets its backend's environment as `setup` does, then forms no group and loads nothing."""

    def setup(self, model, parallel, accelerator, *rest) -> None:
        os.environ.update(self.group_environment(accelerator))


@pytest.fixture(scope="module")
def cluster():
    """A head with no accelerators, GPU nodes with 4 and 2 GPUs, an Ascend node with 2 NPUs."""
    shared_ray.release()  # one driver, one cluster
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    nodes.add_node(num_cpus=4, num_gpus=4)
    nodes.add_node(num_cpus=2, num_gpus=2)
    nodes.add_node(num_cpus=2, resources={"NPU": 2})
    ray.init(address=nodes.address, log_to_driver=False)
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def spec(accelerator: str, output, ulysses: int = 2, replicas="auto"):
    return parse_job({"model": {"preset": "tiny"}, "parallel": {"ulysses": ulysses, "replicas": replicas},
                      "resources": {"accelerator": accelerator, "cpus_per_rank": 1, "group_timeout_s": 60},
                      "dataset": {"prompts": "unused.jsonl"}, "job": {"output": str(output)}}, "test")


def placed(job, accelerator: str, count: int) -> list[Replica]:
    replicas = [Replica(i, job, accelerator, time.monotonic(), PlacedOnly) for i in range(count)]
    assert [wait_started(replica) for replica in replicas] == [State.IDLE] * count
    return replicas


def test_gpu_replicas_fill_the_gpu_nodes_one_device_per_rank(cluster, tmp_path):
    job = spec("auto", tmp_path)
    plan = make_plan(job)
    assert plan.accelerator == "gpu"  # auto prefers GPUs
    assert plan.replicas == 3 and sorted(plan.per_node.values(), reverse=True)[:2] == [2, 1]
    replicas = placed(job, plan.accelerator, plan.replicas)
    try:
        by_node: dict[str, list[Replica]] = {}
        for replica in replicas:
            ranks = placements(replica)
            assert len({r["node"] for r in ranks}) == 1  # STRICT_PACK: a replica never spans nodes
            for rank in ranks:
                assert rank["accelerators"]["GPU"] == [rank["CUDA_VISIBLE_DEVICES"]]  # exactly its own GPU
                assert rank["ASCEND_RT_VISIBLE_DEVICES"] is None
            by_node.setdefault(ranks[0]["node"], []).append(replica)
        shared = next(group for group in by_node.values() if len(group) == 2)
        gpus = [rank["CUDA_VISIBLE_DEVICES"] for replica in shared for rank in placements(replica)]
        assert sorted(gpus) == ["0", "1", "2", "3"]  # replicas sharing a node never share a GPU
        ports = {ray.get(replica.address)[1] for replica in shared}
        assert len(ports) == 2  # nor a group port
        for port in ports:  # rank 0 holds its port from choosing it until the group forms: no one can take it
            with socket.socket() as probe, pytest.raises(OSError):
                probe.bind(("", port))
        full = spec("gpu", tmp_path)
        full.resources["group_timeout_s"] = 2
        late = Replica(3, full, "gpu", time.monotonic(), PlacedOnly)
        assert wait_started(late) is State.FAILED  # the GPUs are taken
        assert "placement group not placed within 2 s" in late.failure.message
    finally:
        for replica in replicas:
            replica.teardown()
    assert _settles(lambda: ray.available_resources().get("GPU", 0) == 6)  # teardown frees every GPU


def _settles(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
    return True


def test_npu_replica_ranks_see_one_ascend_device_each(cluster, tmp_path):
    job = spec("npu", tmp_path)
    plan = make_plan(job)
    assert (plan.accelerator, plan.replicas, plan.bundle) == ("npu", 1, {"CPU": 1, "NPU": 1})
    (replica,) = placed(job, "npu", 1)
    try:
        ranks = placements(replica)
        assert len({r["node"] for r in ranks}) == 1
        assert sorted(r["ASCEND_RT_VISIBLE_DEVICES"] for r in ranks) == ["0", "1"]
        assert all(r["accelerators"]["NPU"] == [r["ASCEND_RT_VISIBLE_DEVICES"]] for r in ranks)
        assert all(r["CUDA_VISIBLE_DEVICES"] in (None, "") and not r["accelerators"]["GPU"] for r in ranks)
        # Both ranks see logical NPU 0; HCCL listens on base + logical id, so each gets its own port range.
        ports = sorted(int(r["HCCL_IF_BASE_PORT"]) for r in ranks)
        assert ports[1] - ports[0] >= 16 and ports[0] >= 60000
    finally:
        replica.teardown()


@pytest.mark.parametrize("accelerator, ulysses, replicas, field", [
    ("gpu", 6, "auto", "parallel"),  # no node has 6 GPUs
    ("npu", 4, "auto", "parallel"),  # the Ascend node has 2 NPUs
    ("gpu", 5, "auto", "parallel.ulysses"),  # 5 does not divide the tiny model's 12 heads: refused first
])
def test_layout_no_node_holds_is_refused_at_plan_time(cluster, tmp_path, accelerator, ulysses, replicas, field):
    with pytest.raises(EchoVideoInputError) as error:
        make_plan(spec(accelerator, tmp_path, ulysses, replicas))
    assert error.value.field == field


def test_more_replicas_than_the_cluster_holds_start_with_what_fits(cluster, tmp_path, caplog):
    """An autoscaling cluster grows: 4 replicas asked where the GPU nodes hold 3 start as 3, with a warning
    (the driver asks the autoscaler for the fourth and places it when a node joins)."""
    with caplog.at_level("WARNING", logger="ray_jobs"):
        plan = make_plan(spec("gpu", tmp_path, 2, 4))
    assert plan.replicas == 3
    assert "parallel.replicas: 4 asked, the cluster holds 3 now" in caplog.text
