"""Storage the ranks need, reachable from every node before any model loads.

Credentials: pyarrow reads object-store credentials from the environment, and a rank actor's environment is
its node's, not the driver's. So the driver forwards the storage variables it holds to every rank and
every per-node task through their Ray runtime environment (`resources.env` lists them; by default the
usual AWS, GCS and Azure ones). They travel in Ray's task specification and are never written to an
output, a manifest or a log (this module logs names only).

Access: the job then proves, with one task per node that will hold replicas (same environment as its
ranks), that each node can write the output and read back what the driver wrote there (a local output
folder must be the same folder on every node), and can list a checkpoint URI. A node that cannot stops
the job at once (exit 2) with one line naming the node, the location and the fix; no replica is built.
"""

import logging
import os
import uuid

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from echovideo.errors import EchoVideoInputError
from ray_jobs.job import JobSpec
from ray_jobs.redact import redact

STORAGE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                     "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_CA_BUNDLE",
                     "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                     "HF_TOKEN")
logger = logging.getLogger("ray_jobs.driver.run")


def forwarded_environment(spec: JobSpec) -> dict[str, str]:
    """The storage variables set in the driver's environment that the ranks get too."""
    names = spec.resources["env"] if spec.resources["env"] is not None else STORAGE_VARIABLES
    return {name: os.environ[name] for name in names if name in os.environ}


def rank_runtime_env(spec: JobSpec) -> dict:
    """Actor/task options carrying the forwarded variables (Ray merges them into the job's own env_vars)."""
    env = forwarded_environment(spec)
    return {"runtime_env": {"env_vars": env}} if env else {}


def _probe(output: str, token: str, checkpoint: str | None) -> str | None:
    """On one node: read the driver's probe back, write this node's; list the checkpoint. -> a problem or None."""
    from ray_jobs.destination import Destination

    node = ray.util.get_node_ip_address()
    try:
        destination = Destination(output)
        if destination.read(f"state/access-{token}") != b"driver":
            return (f"node {node}: job.output {destination.name} is not the folder the driver writes (its probe is "
                    "not there)|use shared storage mounted at the same path on every node, or an object-store URI")
        destination.put(f"state/access-{token}-{node}", b"rank")
    except OSError as exc:
        return (f"node {node}: cannot read and write job.output {Destination(output).name} "
                f"({redact(str(exc))[:200]})|give the ranks storage credentials: set them in the driver's "
                f"environment ({_names()})")
    if checkpoint:
        from echovideo.checkpoint_cache import store_listing

        try:
            store_listing(checkpoint)
        except EchoVideoInputError as exc:
            return f"node {node}: {exc}|the ranks read the checkpoint with the credentials the driver forwards"
    return None


def _names() -> str:
    return "resources.env lists which; by default AWS_*, GOOGLE_APPLICATION_CREDENTIALS, AZURE_STORAGE_*"


def check_access(spec: JobSpec, nodes: list[str]) -> None:
    """Every node in `nodes` reaches the job's output (and checkpoint URI) as its ranks will; raises
    EchoVideoInputError naming the first node that cannot."""
    from ray_jobs.destination import Destination

    token = uuid.uuid4().hex[:12]
    output = Destination(spec.output)
    output.put(f"state/access-{token}", b"driver")
    checkpoint = spec.model["checkpoint"] if spec.model["checkpoint"] and "://" in spec.model["checkpoint"] else None
    forwarded = forwarded_environment(spec)
    logger.info("checking storage from %d node(s); forwarding %s", len(nodes), sorted(forwarded) or "no variables")
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
    try:
        problems = ray.get([probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False),
                                          **rank_runtime_env(spec)).remote(spec.output, token, checkpoint)
                            for node in nodes])
    finally:
        for name in output.names("state"):
            if name.startswith(f"access-{token}"):
                output.delete(f"state/{name}")
    problem = next((p for p in problems if p), None)
    if problem:
        what, fix = problem.split("|", 1)
        raise EchoVideoInputError("job.output" if "job.output" in what else "model.checkpoint", what, fix)
