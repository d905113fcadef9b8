"""Replica: one placement group (a bundle per rank, STRICT_PACK by default) and one rank actor per bundle.

Placing and starting are two steps: `Replica(...)` reserves the bundles and creates the actors (each
sees only its own device), `start()` forms their torch.distributed group at rank 0's node IP and a port
free there (so replicas sharing a node never collide) and loads the model. Both are bounded by the
group timeout; a replica that loses a rank is torn down whole (a process group cannot lose a member)
and rebuilt by the driver.
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


def actor_resources(accelerator: str, cpus: float) -> dict:
    """The bundle as actor options: Ray then sets CUDA_VISIBLE_DEVICES / ASCEND_RT_VISIBLE_DEVICES per actor."""
    options = {"num_cpus": cpus}
    if accelerator == "gpu":
        options["num_gpus"] = 1
    elif accelerator == "npu":
        options["resources"] = {"NPU": 1}
    return options


class Replica:
    def __init__(self, index: int, spec: JobSpec, accelerator: str, worker: type = RankWorker,
                 strategy: str = "STRICT_PACK") -> None:
        self.index, self.spec, self.accelerator = index, spec, accelerator
        world, cpus = spec.ranks_per_replica, spec.resources["cpus_per_rank"]
        self.timeout = spec.resources["group_timeout_s"]
        self.group = placement_group([rank_bundle(accelerator, cpus)] * world, strategy=strategy)
        self.actors = []
        try:
            ray.get(self.group.ready(), timeout=self.timeout)
        except ray.exceptions.GetTimeoutError:
            self.teardown()
            raise ReplicaStartError(f"replica {index}: placement group of {world} x {rank_bundle(accelerator, cpus)} "
                                    f"not placed within {self.timeout} s") from None
        actor_class = ray.remote(worker)
        self.actors = [actor_class.options(
            **actor_resources(accelerator, cpus), max_restarts=0, max_concurrency=2,
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.group, placement_group_bundle_index=rank),
        ).remote(rank, world, str(spec.output / "logs" / f"replica-{index}-rank-{rank}.log")) for rank in range(world)]

    def start(self) -> "Replica":
        """Form the replica's process group and load the pipeline on every rank."""
        try:
            address = self.rendezvous()
            ray.get([a.setup.remote(self.spec.model, self.spec.parallel, self.accelerator, address, self.timeout)
                     for a in self.actors], timeout=2 * self.timeout)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            self.teardown()
            raise ReplicaStartError(f"replica {self.index}: group did not form: {exc}") from exc
        return self

    def submit(self, sample, video: str, poster: str) -> ray.ObjectRef:
        """Start rendering on every rank; the returned reference is rank 0's (a failing peer fails rank 0)."""
        refs = [actor.render.remote(sample.sample_id, sample.prompt, sample.image if rank == 0 else None,
                                    sample.options, video, poster) for rank, actor in enumerate(self.actors)]
        return refs[0]

    def placements(self) -> list[dict]:
        return ray.get([a.placement.remote() for a in self.actors], timeout=self.timeout)

    def probe_progress(self) -> ray.ObjectRef:
        """Rank 0's seconds since its last step; a hung peer stalls rank 0 in a collective, so one clock suffices."""
        return self.actors[0].seconds_since_progress.remote()

    def rendezvous(self) -> tuple[str, int]:
        return ray.get(self.actors[0].rendezvous.remote(), timeout=self.timeout)

    def teardown(self) -> None:
        """Kill the ranks and free the bundles; safe to call again."""
        for actor in self.actors:
            ray.kill(actor, no_restart=True)
        self.actors = []
        if self.group is not None:
            remove_placement_group(self.group)
            self.group = None
