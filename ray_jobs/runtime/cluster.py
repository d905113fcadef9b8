"""The cluster as the elasticity policy sees it (`elasticity.ClusterView`), answered by Ray."""

import ray

from ray_jobs.data.job import JobSpec
from ray_jobs.runtime.logs import logger, run_log
from ray_jobs.runtime.placement import replicas_per_node
from ray_jobs.runtime.replica import rank_bundle


class RayCluster:
    def __init__(self, spec: JobSpec, accelerator: str) -> None:
        self.spec, self.accelerator = spec, accelerator

    def replicas_per_node(self) -> dict[str, int]:
        return replicas_per_node(self.spec, self.accelerator)

    def alive_nodes(self) -> set[str]:
        return {node["NodeID"] for node in ray.nodes() if node.get("Alive")}

    def draining_nodes(self) -> dict[str, int]:
        """Node id -> drain deadline (ms since the epoch, 0: none), from Ray's GCS; nothing on a Ray without the
        drain API."""
        try:
            from ray._private.state import state

            return dict(state.get_draining_nodes())
        except Exception as exc:  # an older Ray, or a GCS that cannot be asked now: nothing is draining
            logger.debug("cannot ask for draining nodes: %s", exc)
            return {}

    def ask_autoscaler(self, replicas: int, say: bool = True) -> None:
        """Tell an autoscaling cluster how many replicas' bundles the job wants now (0 clears the request, which
        Ray otherwise keeps after the driver exits); a fixed cluster ignores it."""
        from ray.autoscaler.sdk import request_resources

        bundle = rank_bundle(self.accelerator, self.spec.resources["cpus_per_rank"])
        try:
            request_resources(bundles=[bundle] * (self.spec.ranks_per_replica * replicas))
            if say:
                run_log.info("asked the autoscaler for %d replica(s) of %d x %s", replicas,
                             self.spec.ranks_per_replica, bundle)
        except Exception as exc:  # a cluster without an autoscaler endpoint: nothing to ask
            logger.debug("no autoscaler request: %s", exc)

    def free_resources(self) -> dict[str, float]:
        return ray.available_resources()
