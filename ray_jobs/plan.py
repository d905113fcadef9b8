"""Where a job runs: the accelerator, the number of replicas the cluster holds, and a readable plan."""

import json
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray

from echovideo.errors import EchoVideoInputError
from parallel.config import ParallelConfig
from ray_jobs.job import JobSpec
from ray_jobs.replica import rank_bundle

RESOURCE = {"gpu": "GPU", "npu": "NPU", "cpu": "CPU"}
logger = logging.getLogger("ray_jobs")


def attention_heads(spec: JobSpec) -> int | None:
    """The model's head count from its config (the tiny preset's without building it); None when the
    checkpoint is not visible from the driver (its ranks then check it as they load)."""
    if spec.model["preset"]:
        from echovideo.presets.tiny import TRANSFORMER_CONFIG

        return TRANSFORMER_CONFIG["num_attention_heads"]
    config = Path(spec.model["checkpoint"]) / "transformer" / "config.json"
    try:
        return int(json.loads(config.read_text())["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read the head count from %s (%s): the ranks will check the layout as they load",
                       config, exc)
        return None


def connect(address: str | None, spec: JobSpec) -> None:
    """Join `address` (a cluster), or start an embedded local one: loopback only, no dashboard."""
    if ray.is_initialized():
        return
    if address:
        ray.init(address=address, log_to_driver=False)
        return
    needed = 0
    if spec.parallel["replicas"] != "auto":  # room for the replicas asked for, even on a small machine
        needed = spec.parallel["replicas"] * spec.ranks_per_replica * spec.resources["cpus_per_rank"]
    with _loopback_only():
        ray.init(address="local", num_cpus=max(os.cpu_count() or 1, int(needed + 0.999)), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False)


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Keep an embedded cluster's servers on 127.0.0.1.

    Ray 2.60's `ray.init` turns a 127.0.0.1 node address into the machine's external IP
    (`services.resolve_ip_for_localhost`), and its GCS, raylet and workers then listen on every interface.
    With `ENABLE_RAY_CLUSTER` off (Ray's own switch for single-machine platforms) the node IP stays loopback
    and every server binds 127.0.0.1 only; the switch is restored once the cluster is up.
    """
    from ray._private import ray_constants

    saved = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved


def choose_accelerator(spec: JobSpec) -> str:
    wanted = spec.resources["accelerator"]
    total = ray.cluster_resources()
    if wanted == "auto":
        return "gpu" if total.get("GPU", 0) >= 1 else "npu" if total.get("NPU", 0) >= 1 else "cpu"
    if wanted != "cpu" and total.get(RESOURCE[wanted], 0) < 1:
        raise EchoVideoInputError("resources.accelerator", f"{wanted}: the cluster has no {RESOURCE[wanted]}",
                                  "use auto or cpu, or add such nodes")
    return wanted


@dataclass
class Plan:
    accelerator: str
    replicas: int
    ranks: int
    bundle: dict
    per_node: dict  # node id -> replicas that fit on it

    def describe(self, samples: int | None) -> str:
        layout = ", ".join(f"{k}={v}" for k, v in self.bundle.items())
        return (f"accelerator {self.accelerator}; {self.replicas} replica(s) x {self.ranks} rank(s) "
                f"(one STRICT_PACK placement group each, bundle per rank {{{layout}}}); "
                f"replicas per node {sorted(self.per_node.values(), reverse=True)}; "
                f"samples requested: {samples if samples is not None else 'unknown'}")


def replicas_per_node(spec: JobSpec, accelerator: str) -> dict[str, int]:
    """How many whole replicas (STRICT_PACK: one node each) every live node holds when empty."""
    bundle, ranks, per_node = rank_bundle(accelerator, spec.resources["cpus_per_rank"]), spec.ranks_per_replica, {}
    for node in ray.nodes():
        if node.get("Alive"):
            have = node.get("Resources", {})
            per_node[node["NodeID"]] = int(min(have.get(k, 0) // (v * ranks) for k, v in bundle.items()))
    return per_node


def make_plan(spec: JobSpec) -> Plan:
    """Replicas fit whole on one node each (STRICT_PACK); refuse a layout no node can hold, before any work."""
    heads = attention_heads(spec)
    if heads is not None:
        ParallelConfig(ulysses=spec.parallel["ulysses"]).check_heads(heads, "parallel.ulysses", "parallel.ring")
    accelerator = choose_accelerator(spec)
    bundle = rank_bundle(accelerator, spec.resources["cpus_per_rank"])
    ranks = spec.ranks_per_replica
    per_node = replicas_per_node(spec, accelerator)
    capacity = sum(per_node.values())
    if capacity == 0:
        raise EchoVideoInputError("parallel", f"no node holds one replica of {ranks} ranks x {bundle}",
                                  "lower ulysses/ring/cfg or resources.cpus_per_rank, or use bigger nodes")
    replicas = spec.parallel["replicas"]
    replicas = capacity if replicas == "auto" else replicas
    if replicas > capacity:
        raise EchoVideoInputError("parallel.replicas", f"{replicas} replicas do not fit; the cluster holds {capacity}",
                                  f"use auto or at most {capacity}")
    return Plan(accelerator, replicas, ranks, bundle, per_node)
