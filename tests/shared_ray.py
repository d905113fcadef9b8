"""One local Ray cluster shared by every test that can use it (`local_ray`), started on first use and stopped
at the end of the session; a test that needs a cluster of its own calls `release()` first (one driver
connects to one cluster at a time), and the next `local_ray` test starts the shared one again. The suite
orders the shared cluster's tests last (conftest.py), so it starts once.

The cluster lives in a temp folder of its own, by which a watchdog stops exactly it if the run is killed."""

import shutil
import tempfile
import time

import own_processes
import ray

_running: dict = {}


def start(env_vars: dict[str, str]) -> None:
    """Connect this process to the shared cluster, starting it if it is not running."""
    if _running and ray.is_initialized():
        return
    release()  # a test shut Ray down itself: what is left of the old cluster goes first
    temp = tempfile.mkdtemp(prefix="ev-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    keeper = own_processes.guard(path=temp)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp,
             log_to_driver=False, runtime_env={"env_vars": env_vars})
    _running.update(temp=temp, keeper=keeper)


def release() -> None:
    """Stop the shared cluster (no-op when none runs) and everything it left running."""
    if not _running:
        return
    ray.shutdown()
    own_processes.stop(own_processes.processes_under(_running["temp"]))
    own_processes.dismiss(_running["keeper"])
    shutil.rmtree(_running["temp"], ignore_errors=True)
    _running.clear()


def wait_started(replica):
    """Advance one replica alone, outside a driver's loop, until it is IDLE or FAILED (on the real clock)."""
    from ray_jobs.runtime.replica import State

    while replica.state in (State.PLACING, State.STARTING):
        ready, _ = ray.wait(replica.refs(), num_returns=1, timeout=0.5)
        for ref in ready:
            replica.on_ready(ref, time.monotonic())
        replica.check(time.monotonic())
    return replica.state


def placements(replica) -> list[dict]:
    """Where each rank of a started replica runs (node, pid, devices), as its actors report it."""
    return ray.get([actor.placement.remote() for actor in replica.actors], timeout=replica.timeout)
