"""Replica: one placement group (a bundle per rank, STRICT_PACK by default) and one RankWorker actor per bundle.

The actors form their own torch.distributed group at rank 0's node IP and a port free there, so
replicas sharing a node never collide. Formation is bounded by a timeout; a replica that loses a rank
is torn down whole (a process group cannot lose a member) and rebuilt by the driver.
"""

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from ray_jobs.job import JobSpec
from ray_jobs.worker import RankWorker


class ReplicaStartError(RuntimeError):
    """A replica's placement group or process group did not form in time."""


def rank_bundle(accelerator: str, cpus: float) -> dict:
    bundle = {"CPU": cpus}
    if accelerator == "gpu":
        bundle["GPU"] = 1
    elif accelerator == "npu":
        bundle["NPU"] = 1
    return bundle


class Replica:
    def __init__(self, index: int, spec: JobSpec, accelerator: str, strategy: str = "STRICT_PACK") -> None:
        self.index, self.spec, self.accelerator = index, spec, accelerator
        world, cpus = spec.ranks_per_replica, spec.resources["cpus_per_rank"]
        timeout = spec.resources["group_timeout_s"]
        self.group = placement_group([rank_bundle(accelerator, cpus)] * world, strategy=strategy)
        self.actors = []
        try:
            ray.get(self.group.ready(), timeout=timeout)
        except ray.exceptions.GetTimeoutError:
            self.teardown()
            raise ReplicaStartError(f"replica {index}: placement group of {world} x {rank_bundle(accelerator, cpus)} "
                                    f"not placed within {timeout} s") from None
        actor_class = ray.remote(RankWorker)
        for rank in range(world):
            options = {"num_cpus": cpus, "max_restarts": 0,
                       "scheduling_strategy": PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank)}
            if accelerator == "gpu":
                options["num_gpus"] = 1
            elif accelerator == "npu":
                options["resources"] = {"NPU": 1}
            self.actors.append(actor_class.options(**options).remote(rank, world))
        try:
            address = ray.get(self.actors[0].rendezvous.remote(), timeout=timeout)
            ray.get([a.setup.remote(spec.model, spec.parallel, accelerator, address, timeout) for a in self.actors],
                    timeout=2 * timeout)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            self.teardown()
            raise ReplicaStartError(f"replica {index}: group did not form: {exc}") from exc

    def submit(self, sample, video: str, poster: str) -> ray.ObjectRef:
        """Start rendering on every rank; the returned reference is rank 0's (a failing peer fails rank 0)."""
        refs = [actor.render.remote(sample.sample_id, sample.prompt, sample.image if rank == 0 else None,
                                    sample.options, video, poster) for rank, actor in enumerate(self.actors)]
        return refs[0]

    def visible_devices(self) -> list[dict]:
        return ray.get([a.visible_devices.remote() for a in self.actors])

    def teardown(self) -> None:
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        remove_placement_group(self.group)
