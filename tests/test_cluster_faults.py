"""A cluster that loses a node mid-job (real raylets on one machine): the replica there cannot be rebuilt, is
dropped, and the remaining replica renders every sample."""

import pytest
import ray
from ray.cluster_utils import Cluster

from jobs import assert_exactly_once, job, write_jsonl
from ray_jobs.driver import run_job


@pytest.fixture()
def two_nodes(tiny_root):
    nodes = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        nodes.add_node(num_cpus=2)
    ray.init(address=nodes.address, log_to_driver=False,
             runtime_env={"env_vars": {"ECHOVIDEO_CACHE": str(tiny_root.parent)}})
    nodes.wait_for_nodes()
    yield nodes
    ray.shutdown()
    nodes.shutdown()


def test_losing_a_node_mid_job_leaves_the_work_to_the_other_replica(two_nodes, face_path, tmp_path):
    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} waves", "identity": str(face_path)} for i in range(6)])
    lost = []

    def lose_node(sample, replica):  # the node that just finished a sample goes away
        if not lost:
            node_id = replica.placements()[0]["node"]
            lost.append(next(n for n in two_nodes.worker_nodes if n.node_id == node_id))
            two_nodes.remove_node(lost[0])

    out = tmp_path / "out"
    report = run_job(job(dataset, out),
                     progress=False, on_result=lose_node)
    assert lost and report.summary["replicas_dropped"] == 1 and report.exit_code == 0
    assert_exactly_once(out, 6)
