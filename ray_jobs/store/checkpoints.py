"""A checkpoint given as a URI reaches every node before any replica starts.

A replica's start deadline counts model loading, not a download: a ~25 GB checkpoint on a slow link would
otherwise never finish inside it, and the replica would be rebuilt (and download again) forever. So the
driver first runs one fetcher per node that will hold replicas (an actor pinned to that node, with the
ranks' storage credentials), without a deadline, and prints each node's progress to the console every
PROGRESS_EVERY_S; each fetcher validates its node's cache entry against the store's listing (weights
replaced under the same URI are fetched again).
"""

import logging
import sys
import time

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from echovideo.errors import EchoVideoInputError
from echovideo.locations import public_name
from ray_jobs.data.job import JobSpec
from ray_jobs.store.access import StorageCredentials, storage_credentials

PROGRESS_EVERY_S = 10.0
logger = logging.getLogger("ray_jobs.runtime.engine.run")  # driver.log; the console gets the progress lines too


class CheckpointFetcher:
    """On one node: its cache entry made current, with the bytes done so far readable while it runs."""

    def __init__(self, credentials: StorageCredentials) -> None:
        credentials.install()  # this actor's process is the job's alone, and ends with the fetch
        self.done, self.total = 0, 0

    def fetch(self, uri: str) -> float:
        from echovideo.checkpoint_cache import local_checkpoint

        started = time.monotonic()
        local_checkpoint(uri, self._progress)
        return time.monotonic() - started

    def _progress(self, done: int, total: int) -> None:
        self.done, self.total = done, total

    def progress(self) -> tuple[int, int]:
        return self.done, self.total


def fetch_checkpoint(spec: JobSpec, nodes: list[str], progress: bool = True) -> None:
    """Every node in `nodes` (Ray node ids) holds the job's checkpoint URI's current weights; returns at
    once for a preset or a local folder. A checkpoint that cannot be listed or fetched is the job's error."""
    uri = spec.model.get("checkpoint")
    if not uri or "://" not in uri:
        return
    say(f"fetching {public_name(uri)} onto {len(nodes)} node(s) before the replicas start", progress)
    fetchers = {node: start_fetch(spec, node) for node in nodes}
    pending = {ref: node for node, (_, ref) in fetchers.items()}
    try:
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=PROGRESS_EVERY_S)
            for ref in ready:
                node = pending.pop(ref)
                say(f"checkpoint ready on node {node[:8]} ({fetch_result(ref):.1f} s)", progress)
            if not ready:
                for node in pending.values():
                    done, total = ray.get(fetchers[node][0].progress.remote())
                    say(f"checkpoint on node {node[:8]}: {done / 2**30:.2f} of {total / 2**30:.2f} GiB", progress)
    finally:
        for fetcher, _ in fetchers.values():
            ray.kill(fetcher)


def start_fetch(spec: JobSpec, node: str) -> tuple[ray.actor.ActorHandle, ray.ObjectRef]:
    """A fetcher pinned to `node` and its fetch of the job's checkpoint URI (kill the actor when it answered)."""
    actor = ray.remote(num_cpus=0, max_concurrency=2, max_restarts=0)(CheckpointFetcher)
    fetcher = actor.options(scheduling_strategy=NodeAffinitySchedulingStrategy(node, soft=False)).remote(
        storage_credentials(spec))
    return fetcher, fetcher.fetch.remote(spec.model["checkpoint"])


def fetch_result(ref: ray.ObjectRef) -> float:
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, EchoVideoInputError):
            raise cause from None
        raise


def say(line: str, console: bool) -> None:
    logger.info(line)
    if console:
        print(line, file=sys.stderr, flush=True)
