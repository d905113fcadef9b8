"""Which nodes may hold replicas: those that passed the job's checks (storage as their ranks will see it,
`access`; the checkpoint URI fetched onto them, `checkpoints`).

The nodes present when the first replicas start are checked before them, all at once (nothing else can run
yet). A node that joins later (an autoscaler's, a spot replacement) is checked inside the driver's loop without
blocking it: its probe and fetch are started, their answers collected as they come. Replicas are placed only on
nodes that passed (`allowed`: a label selector on their placement group), so a node still being checked, or one
that failed (reported once, with its reason), never gets a replica.
"""

import logging

import ray

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.job import JobSpec
from ray_jobs.store.access import AccessProbe, access_error, check_access
from ray_jobs.store.checkpoints import fetch_checkpoint, fetch_result, start_fetch

logger = logging.getLogger("ray_jobs")


class NodeChecks:
    def __init__(self, spec: JobSpec, progress: bool) -> None:
        self.spec, self.progress = spec, progress
        self.passed: set[str] = set()
        self.failed: dict[str, str] = {}  # node -> why
        self.running: dict[str, list] = {}  # node -> [probe ref, (fetcher, fetch ref) or None]
        self.probe: AccessProbe | None = None
        self.fetches = "://" in (spec.model.get("checkpoint") or "")

    def check_now(self, nodes: list[str]) -> None:
        """Before the first replicas: every node, blocking; any failure is the job's (exit 2)."""
        check_access(self.spec, nodes)
        fetch_checkpoint(self.spec, nodes, self.progress)
        self.passed.update(nodes)

    def check_joined(self, nodes) -> None:
        """Start the checks of nodes not seen before (returns at once)."""
        for node in nodes:
            if node in self.passed or node in self.failed or node in self.running:
                continue
            if self.probe is None:
                self.probe = AccessProbe(self.spec)
            logger.warning("node %s joined: checking storage%s before a replica is placed on it", node[:8],
                           " and fetching the checkpoint" if self.fetches else "")
            self.running[node] = [self.probe.send(node), start_fetch(self.spec, node) if self.fetches else None]

    def poll(self) -> None:
        """Collect the answers that are in (never waits)."""
        for node, (probe, fetch) in list(self.running.items()):
            refs = [probe] + ([fetch[1]] if fetch else [])
            ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
            if len(ready) < len(refs):
                continue
            del self.running[node]
            if fetch:
                ray.kill(fetch[0])
            why = self._problem(probe, fetch)
            if why is None:
                self.passed.add(node)
                logger.warning("node %s passed its checks: replicas may be placed on it", node[:8])
            else:
                self.failed[node] = why
                logger.warning("node %s failed its checks and gets no replica: %s", node[:8], why)

    @staticmethod
    def _problem(probe: ray.ObjectRef, fetch) -> str | None:
        try:
            problem = ray.get(probe)
            if problem:
                return str(access_error(problem))
            if fetch:
                fetch_result(fetch[1])
        except EchoVideoInputError as exc:
            return str(exc)
        except Exception as exc:  # the node died or Ray could not run the check there
            return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''}"
        return None

    def close(self) -> None:
        for _, fetch in self.running.values():
            if fetch:
                ray.kill(fetch[0])
        self.running.clear()
        if self.probe is not None:
            self.probe.close()
