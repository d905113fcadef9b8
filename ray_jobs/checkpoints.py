"""A checkpoint given as a URI reaches every node before any replica starts.

A replica's start deadline counts model loading, not a download: a ~25 GB checkpoint on a slow link would
otherwise never finish inside it, and the replica would be rebuilt (and download again) forever. So the
driver first runs one download task per node that will hold replicas (pinned to that node), without a
deadline; each prints its progress, which Ray forwards to the driver's console, and validates the node's
cache entry against the store's listing (weights replaced under the same URI are fetched again).
"""

import logging
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from echovideo.errors import EchoVideoInputError
from echovideo.locations import public_name
from ray_jobs.access import rank_runtime_env
from ray_jobs.job import JobSpec

PROGRESS_EVERY_S = 10.0
logger = logging.getLogger("ray_jobs.driver.run")  # driver.log; progress reaches the console from the tasks


def _fetch(uri: str) -> tuple[str, float]:
    """On one node: its cache entry made current; -> (node id, seconds)."""
    from echovideo.checkpoint_cache import local_checkpoint

    node, started, shown = ray.get_runtime_context().get_node_id(), time.monotonic(), [0.0]

    def progress(done: int, total: int) -> None:
        if time.monotonic() - shown[0] >= PROGRESS_EVERY_S or done == total:
            shown[0] = time.monotonic()
            print(f"checkpoint on node {node[:8]}: {done / 2**30:.2f} of {total / 2**30:.2f} GiB", flush=True)

    local_checkpoint(uri, progress)
    return node, time.monotonic() - started


def fetch_checkpoint(spec: JobSpec, nodes: list[str]) -> None:
    """Every node in `nodes` (Ray node ids) holds the job's checkpoint URI's current weights; returns at
    once for a preset or a local folder. A checkpoint that cannot be listed or fetched is the job's error."""
    uri = spec.model.get("checkpoint")
    if not uri or "://" not in uri:
        return
    logger.info("fetching %s onto %d node(s) before the replicas start", public_name(uri), len(nodes))
    fetch = ray.remote(num_cpus=0, max_retries=0)(_fetch)
    pending = [fetch.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                             **rank_runtime_env(spec)).remote(uri) for node in nodes]
    for ref in pending:
        try:
            node, seconds = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, EchoVideoInputError):
                raise cause from None
            raise
        logger.info("checkpoint ready on node %s (%.1f s)", node[:8], seconds)
