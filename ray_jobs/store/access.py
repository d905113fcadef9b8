"""Storage the ranks need, reachable from every node before any model loads.

Credentials: pyarrow reads object-store credentials from the environment, and a rank actor's environment is
its node's, not the driver's. A node with an identity of its own (an instance role, a credentials file the
user placed) needs nothing; otherwise the driver hands the storage variables it holds (`resources.env` lists
them; by default the usual AWS, GCS and Azure ones) to every rank, probe and fetcher in-process: an argument
of its constructor or call (`StorageCredentials`), set into that process's environment there. Never through
`runtime_env`: Ray writes a runtime environment in plain text to every node's runtime_env_agent.log and shows
it in `ray list actors --detail` and the dashboard. Names only are logged, here and by the argument's repr.

Access: the job then proves, with one task per node that will hold replicas (same environment as its
ranks), that each node can write the output and read back what the driver wrote there (a local output
folder must be the same folder on every node), and can list a checkpoint URI. A node that cannot stops
the job at once (exit 2) with one line naming the node, the location and the fix; no replica is built.
"""

import logging
import os
import uuid
from contextlib import contextmanager
from typing import Iterator

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.job import JobSpec
from ray_jobs.data.redact import redact

STORAGE_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION",
                     "AWS_REGION", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_CA_BUNDLE",
                     "GOOGLE_APPLICATION_CREDENTIALS", "AZURE_STORAGE_ACCOUNT_NAME", "AZURE_STORAGE_ACCOUNT_KEY",
                     "HF_TOKEN")
logger = logging.getLogger("ray_jobs.runtime.engine.run")


def forwarded_environment(spec: JobSpec) -> dict[str, str]:
    """The storage variables set in the driver's environment that the ranks get too."""
    names = spec.resources["env"] if spec.resources["env"] is not None else STORAGE_VARIABLES
    return {name: os.environ[name] for name in names if name in os.environ}


class StorageCredentials:
    """Storage variables on their way to another process of the job, shown by their names only."""

    def __init__(self, variables: dict[str, str]) -> None:
        self._variables = dict(variables)

    def __repr__(self) -> str:
        return f"StorageCredentials({sorted(self._variables)})"

    def install(self) -> None:
        """Into this process's environment, for the rest of its life (a rank or fetcher actor's process)."""
        os.environ.update(self._variables)

    @contextmanager
    def installed(self) -> Iterator[None]:
        """For one task: Ray reuses a task's worker process, which keeps nothing of this afterwards."""
        before = {name: os.environ.get(name) for name in self._variables}
        self.install()
        try:
            yield
        finally:
            for name, value in before.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def storage_credentials(spec: JobSpec) -> StorageCredentials:
    return StorageCredentials(forwarded_environment(spec))


def _probe(output: str, token: str, checkpoint: str | None, credentials: StorageCredentials) -> str | None:
    """On one node: read the driver's probe back, write this node's; list the checkpoint. -> a problem or None."""
    with credentials.installed():
        return _probe_storage(output, token, checkpoint)


def _probe_storage(output: str, token: str, checkpoint: str | None) -> str | None:
    from ray_jobs.store.destination import Destination

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


class AccessProbe:
    """The driver's half of the probe: its file in the output, which every node's probe must read back."""

    def __init__(self, spec: JobSpec) -> None:
        from ray_jobs.store.destination import Destination

        self.spec, self.token = spec, uuid.uuid4().hex[:12]
        self.output = Destination(spec.output)
        self.output.put(f"state/access-{self.token}", b"driver")
        checkpoint = spec.model["checkpoint"]
        self.checkpoint = checkpoint if checkpoint and "://" in checkpoint else None

    def send(self, node: str) -> ray.ObjectRef:
        """The probe on `node`, answering a problem line ("what|fix") or None."""
        probe = ray.remote(num_cpus=0, max_retries=0)(_probe)
        return probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
            self.spec.output, self.token, self.checkpoint, storage_credentials(self.spec))

    def close(self) -> None:
        for name in self.output.names("state"):
            if name.startswith(f"access-{self.token}"):
                self.output.delete(f"state/{name}")


def access_error(problem: str) -> EchoVideoInputError:
    what, fix = problem.split("|", 1)
    return EchoVideoInputError("job.output" if "job.output" in what else "model.checkpoint", what, fix)


def check_access(spec: JobSpec, nodes: list[str]) -> None:
    """Every node in `nodes` reaches the job's output (and checkpoint URI) as its ranks will; raises
    EchoVideoInputError naming the first node that cannot."""
    probe = AccessProbe(spec)
    logger.info("checking storage from %d node(s); forwarding %s", len(nodes),
                sorted(forwarded_environment(spec)) or "no variables")
    try:
        problems = ray.get([probe.send(node) for node in nodes])
    finally:
        probe.close()
    problem = next((p for p in problems if p), None)
    if problem:
        raise access_error(problem)
