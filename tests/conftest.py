import os
import time
import uuid
from pathlib import Path

import own_processes
import pytest
import shared_ray

from echovideo.presets.tiny import tiny_checkpoint

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"
# Every Ray cluster the suite starts (in-process, `ray start`, `echovideo run` subprocesses) runs its workers at
# niceness 0, as the embedded cluster does (ray_jobs/runtime/placement.py): at Ray's default 15 a busy CI host starves them.
os.environ["RAY_worker_niceness"] = "0"
# Everything the suite starts inherits this mark: what is still running with it at the end, a test left behind.
os.environ.setdefault(own_processes.SESSION_VARIABLE, uuid.uuid4().hex)
LEFT_BEHIND_GRACE_S = 30.0  # processes a test stopped may take a moment to go (longer on a busy CI host)


def pytest_sessionfinish(session):
    """After every fixture is torn down: any process the suite started that still runs fails the run (and is
    stopped, so it does not outlive it)."""
    deadline = time.monotonic() + LEFT_BEHIND_GRACE_S
    while (left := own_processes.session_processes()) and time.monotonic() < deadline:
        time.sleep(0.5)
    if not left:
        return
    titles = [_title(pid) for pid in left]
    own_processes.stop(left)
    session.config.get_terminal_writer().line(f"processes left running by the tests (now stopped): {titles}", red=True)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def _title(pid: int) -> str:
    try:
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        command = ""
    return f"{pid} {command[:120]}"


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


@pytest.fixture(scope="session")
def _shared_ray_session():
    yield
    shared_ray.release()


@pytest.fixture()
def local_ray(tiny_root, _shared_ray_session):
    """A real local Ray cluster (4 logical CPUs, loopback) whose workers find the session's tiny checkpoint,
    shared by the session's tests (tests/shared_ray.py)."""
    shared_ray.start({"ECHOVIDEO_CACHE": str(tiny_root.parent)})
    yield


def pytest_collection_modifyitems(items):
    """The shared cluster's tests run last, together: it starts once, after every test that starts a cluster of
    its own (the order within each group is kept)."""
    items.sort(key=lambda item: "local_ray" in getattr(item, "fixturenames", ()))


@pytest.fixture(scope="session")
def object_store(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS) on loopback for the session; skipped, with the reason, if it
    cannot start here."""
    import object_store as server

    try:
        store = server.start(tmp_path_factory.mktemp("seaweedfs"))
    except RuntimeError as exc:
        if os.environ.get("CI") == "true":  # CI installs the server: its absence there is a failure, not a skip
            raise
        pytest.skip(str(exc)[:500])
    yield store
    server.stop(store)
