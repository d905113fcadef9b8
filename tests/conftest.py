import shutil
import tempfile
from pathlib import Path

import pytest
import ray

import own_processes

from echovideo.presets.tiny import tiny_checkpoint

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny checkpoint, built once per test session into a private cache."""
    return tiny_checkpoint(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_root):
    from echovideo.pipeline import EchoVideoPipeline

    return EchoVideoPipeline.from_pretrained(tiny_root, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def face_path() -> Path:
    return FACE


@pytest.fixture(scope="module")
def local_ray(tiny_root):
    """A real local Ray cluster (4 logical CPUs, loopback) whose workers find the session's tiny checkpoint; in
    a temp folder of its own, by which a watchdog stops exactly it if the test run is killed."""
    temp = tempfile.mkdtemp(prefix="ev-ray-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    keeper = own_processes.guard(path=temp)
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1", _temp_dir=temp,
             log_to_driver=False, runtime_env={"env_vars": {"ECHOVIDEO_CACHE": str(tiny_root.parent)}})
    yield
    ray.shutdown()
    own_processes.stop(own_processes.processes_under(temp))  # whatever ray.shutdown left running
    own_processes.dismiss(keeper)
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the session; skipped, with the reason, if it
    cannot start here."""
    import object_store as server

    try:
        store = server.start(tmp_path_factory.mktemp("seaweedfs"))
    except RuntimeError as exc:
        pytest.skip(str(exc)[:500])
    yield store
    server.stop(store)
