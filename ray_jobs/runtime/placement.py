"""Where a job runs: the accelerator, the number of replicas the cluster holds, and a readable plan."""

import json
import logging
import os
import secrets
import socket
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import ray

from echovideo.errors import EchoVideoInputError
from echovideo.locations import filesystem, is_uri, public_name
from parallel.config import ParallelConfig
from ray_jobs.data.job import JobSpec
from ray_jobs.data.redact import redact
from ray_jobs.runtime.replica import rank_bundle

RESOURCE = {"gpu": "GPU", "npu": "NPU", "cpu": "CPU"}
# Ray starts its workers at niceness 15 so its own daemons stay responsive; but here the workers (the ranks)
# are the work, and at 15 any other busy process on the machine starves them: beside two CPU-bound loops a
# replica took 4.7 min to start instead of seconds. The embedded cluster runs them at the default 0.
EMBEDDED_SYSTEM_CONFIG = {"worker_niceness": 0}
CONNECT_TIMEOUT_S = 5.0
logger = logging.getLogger("ray_jobs")


def attention_heads(spec: JobSpec) -> int | None:
    """The model's head count from its config (the tiny preset's without building it); None when the
    checkpoint is not visible from the driver (its ranks then check it as they load)."""
    if spec.model["preset"]:
        from echovideo.presets.tiny import TRANSFORMER_CONFIG

        return TRANSFORMER_CONFIG["num_attention_heads"]
    location = spec.model["checkpoint"]
    config = f"{location.rstrip('/')}/transformer/config.json"
    try:  # one small file, read where it is (the ranks download a checkpoint given as a URI)
        store, path = filesystem(location)
        with store.open_input_stream(f"{path.rstrip('/')}/transformer/config.json") as stream:
            return int(json.loads(stream.read())["num_attention_heads"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        logger.warning("cannot read the head count from %s (%s): the ranks will check the layout as they load",
                       public_name(config) if is_uri(config) else config, redact(str(exc)))
        return None


def connect(address: str | None, spec: JobSpec) -> bool:
    """Join `address` (a cluster), or start an embedded local one: loopback only, no dashboard. -> whether the
    cluster is one the job joined (its caller's, which may autoscale), not the embedded one."""
    if ray.is_initialized():
        return True
    if address:
        _check_reachable(address)
        sends_token = _use_token_if_available()
        try:
            ray.init(address=address, log_to_driver=False)
        except ConnectionError as exc:
            raise EchoVideoInputError("--address", f"cannot join the cluster at {address} ({str(exc)[:200]})",
                                      _join_fix(sends_token)) from None
        return True
    _token_of_this_process()
    with _loopback_only():
        ray.init(address="local", num_cpus=embedded_cpus(spec), include_dashboard=False,
                 _node_ip_address="127.0.0.1", log_to_driver=False, _system_config=EMBEDDED_SYSTEM_CONFIG)
    return False


def _use_token_if_available() -> bool:
    """Ray 2.5x heads require a token by default (token authentication), but a process joining one sends
    it only with RAY_AUTH_MODE=token, and otherwise retries for ~20 s and blames the address. So: an explicit
    RAY_AUTH_MODE is respected; unset, a token this machine holds (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or
    ~/.ray/auth_token) is sent, as `ray start` does for the cluster it starts. -> whether a token is sent."""
    mode = os.environ.get("RAY_AUTH_MODE")
    if mode is not None:
        return mode.lower() == "token"
    if not _token_available():
        return False
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        from ray._raylet import Config

        Config.initialize("")  # this process's cached Ray config observes the mode (Ray's own way)
    except (ImportError, AttributeError):
        pass
    logger.info("joining with token authentication (a token is on this machine)")
    return True


def _token_available() -> bool:
    try:
        from ray._raylet import AuthenticationTokenLoader

        return bool(AuthenticationTokenLoader.instance().has_token(ignore_auth_mode=True))
    except (ImportError, AttributeError):  # a Ray without token authentication
        return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH") or
                    (Path.home() / ".ray" / "auth_token").is_file())


def _token_of_this_process() -> None:
    """Ray 2.5x saves a new local cluster's token to ~/.ray/auth_token, which every later `--address` run on
    this machine then sends to whatever cluster it joins. Where the machine holds no token, the embedded
    cluster gets one of this process instead (an environment variable its servers and workers inherit),
    written nowhere."""
    if os.environ.get("RAY_AUTH_MODE", "token").lower() != "token" or _token_available():
        return
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _join_fix(sent_token: bool) -> str:
    if sent_token:
        return ("if the cluster is up, it refused this machine's token: copy the head's token (`ray get-auth-token` "
                "on the head; it is ~/.ray/auth_token there) to ~/.ray/auth_token here or set RAY_AUTH_TOKEN")
    return ("start one with `ray start --head`, or fix the address; a Ray 2.5x head requires its token by default: "
            "set RAY_AUTH_MODE=token and copy the head's token (`ray get-auth-token` on the head; ~/.ray/auth_token "
            "there) to ~/.ray/auth_token here or into RAY_AUTH_TOKEN")


def _check_reachable(address: str) -> None:
    """A host:port that nothing answers fails in seconds with our message (Ray itself retries for minutes)."""
    if address in ("auto", "local"):
        return  # Ray answers these at once
    host, _, port = address.removeprefix("ray://").rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except (OSError, ValueError) as exc:
        raise EchoVideoInputError("--address", f"nothing answers at {address} ({exc})",
                                  "start the cluster (`ray start --head`), or pass its host:port or auto") from None


def embedded_cpus(spec: JobSpec) -> int:
    """The embedded cluster's CPUs: the machine's, or room for the replicas asked for on a small machine."""
    needed = 0
    if spec.parallel["replicas"] != "auto":
        needed = spec.parallel["replicas"] * spec.ranks_per_replica * spec.resources["cpus_per_rank"]
    return max(os.cpu_count() or 1, int(needed + 0.999))


def local_nodes(spec: JobSpec) -> list[dict]:
    """The node an embedded cluster would have, without starting one (`echovideo plan` with no --address): its
    devices counted as `ray.init` counts them (Ray's accelerator managers, no torch import)."""
    from ray._private.accelerators import get_accelerator_manager_for_resource

    resources = {"CPU": float(embedded_cpus(spec))}
    for resource in ("GPU", "NPU"):
        if count := get_accelerator_manager_for_resource(resource).get_current_node_num_accelerators():
            resources[resource] = float(count)
    return [{"NodeID": "local", "Alive": True, "Resources": resources}]


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


def choose_accelerator(spec: JobSpec, nodes: list[dict], can_grow: bool = False) -> str:
    """`auto`: what the cluster has now (a real checkpoint falling back to the CPU is said, not silent). An
    explicit kind the cluster lacks is refused, unless the cluster `can_grow` (one joined with --address: an
    autoscaler may start such nodes, e.g. a GPU group scaled to zero); the job then asks for them and waits."""
    wanted = spec.resources["accelerator"]
    total: dict[str, float] = {}
    for node in nodes:
        if node.get("Alive"):
            for kind, amount in node.get("Resources", {}).items():
                total[kind] = total.get(kind, 0) + amount
    if wanted == "auto":
        chosen = "gpu" if total.get("GPU", 0) >= 1 else "npu" if total.get("NPU", 0) >= 1 else "cpu"
        if chosen == "cpu" and spec.model["checkpoint"]:
            logger.warning("resources.accelerator auto: the cluster has no GPU or NPU now, so the released model "
                           "renders on CPU (minutes per step); set resources.accelerator: gpu (or npu) to wait for "
                           "such nodes instead, e.g. a GPU group an autoscaler starts from zero")
        return chosen
    if wanted != "cpu" and total.get(RESOURCE[wanted], 0) < 1:
        if not can_grow:
            raise EchoVideoInputError("resources.accelerator", f"{wanted}: the cluster has no {RESOURCE[wanted]}",
                                      "use auto or cpu, or add such nodes")
        logger.warning("resources.accelerator %s: the cluster has no %s now; the autoscaler is asked for them and "
                       "the job waits (resources.start_timeout_s at most)", wanted, RESOURCE[wanted])
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


def replicas_per_node(spec: JobSpec, accelerator: str, nodes: list[dict] | None = None) -> dict[str, int]:
    """How many whole replicas (STRICT_PACK: one node each) every live node holds when empty (`nodes` as
    `ray.nodes()` gives them, the cluster's own by default)."""
    bundle, ranks, per_node = rank_bundle(accelerator, spec.resources["cpus_per_rank"]), spec.ranks_per_replica, {}
    for node in ray.nodes() if nodes is None else nodes:
        if node.get("Alive"):
            have = node.get("Resources", {})
            per_node[node["NodeID"]] = int(min(have.get(k, 0) // (v * ranks) for k, v in bundle.items()))
    return per_node


def _refuse_unfit_on(spec: JobSpec, nodes: list[dict]) -> None:
    """Ray labels a GPU node with `accelerator_type:<model>`: a layout that cannot fit on it stops here."""
    from ray_jobs.runtime.layout_costs import refuse_unfit

    for node in nodes:
        resources = node.get("Resources", {}) if node.get("Alive") else {}
        for key in resources:
            if key.startswith("accelerator_type:") and resources.get("GPU", 0) >= 1:
                refuse_unfit(spec, key.split(":", 1)[1], int(resources["GPU"]))


def make_plan(spec: JobSpec, nodes: list[dict] | None = None, can_grow: bool = False) -> Plan:
    """Replicas fit whole on one node each (STRICT_PACK); refuse a layout no node can hold, before any work,
    unless the cluster `can_grow` (joined with --address): then no replica may fit yet, and the job waits.
    `nodes`: the cluster's (`ray.nodes()`, the default) or `local_nodes` for a plan without a cluster."""
    heads = attention_heads(spec)
    if heads is not None:
        ParallelConfig(ulysses=spec.parallel["ulysses"]).check_heads(heads, "parallel.ulysses", "parallel.ring")
    nodes = ray.nodes() if nodes is None else nodes
    accelerator = choose_accelerator(spec, nodes, can_grow)
    bundle = rank_bundle(accelerator, spec.resources["cpus_per_rank"])
    ranks = spec.ranks_per_replica
    per_node = replicas_per_node(spec, accelerator, nodes)
    capacity = sum(per_node.values())
    if capacity == 0 and not can_grow:
        raise EchoVideoInputError("parallel", f"no node holds one replica of {ranks} ranks x {bundle}",
                                  "lower ulysses/ring/cfg or resources.cpus_per_rank, or use bigger nodes")
    if capacity == 0:
        logger.warning("no node holds one replica of %d ranks x %s now; the autoscaler is asked for them and the job "
                       "waits for nodes (resources.start_timeout_s at most)", ranks, bundle)
    if accelerator == "gpu" and spec.model["checkpoint"]:  # the released model's sizes: not the tiny preset's
        _refuse_unfit_on(spec, nodes)
    replicas = spec.parallel["replicas"]
    if replicas != "auto" and replicas > capacity:  # an autoscaling cluster grows; the driver adds them then
        logger.warning("parallel.replicas: %d asked, the cluster holds %d now; the others start as nodes join "
                       "(the autoscaler is asked for them)", replicas, capacity)
    replicas = capacity if replicas == "auto" else min(replicas, capacity)
    return Plan(accelerator, replicas, ranks, bundle, per_node)
