"""Stop what a test started, and only that, even when the test run itself is killed.

`processes_under(path)`: the processes whose command line names `path`, or that hold a file open under it: a
Ray cluster started with its own `--temp-dir`/`_temp_dir` names it in the command line of the processes it runs
(GCS, raylet, workers), and its agents, which rewrite their titles (`ray::DashboardAgent`), keep their logs
open there; so that folder identifies exactly our cluster and no other on the machine. `stop(pids)` sends
SIGTERM, then SIGKILL to any left after a grace period.

`session_processes()`: every process still running that carries this test session's mark in its environment
(SESSION_VARIABLE, set once by conftest and inherited by everything the suite starts, and everything those
start): what a test failed to stop.

`guard(...)` starts a watchdog process that outlives nothing: it polls the test process and, when that is
gone (a pytest killed by its timeout, Ctrl-C twice), stops the given process group and the processes under
the given path, then exits. Run as a script, it is that watchdog.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

SESSION_VARIABLE = "ECHOVIDEO_TEST_SESSION"


def _others() -> list[Path]:
    return [entry for entry in Path("/proc").iterdir() if entry.name.isdigit() and int(entry.name) != os.getpid()]


def processes_under(path: str | Path) -> list[int]:
    marker, found = str(path).encode(), []
    for entry in _others():
        try:
            if marker in (entry / "cmdline").read_bytes() or _holds_file_under(entry, str(path)):
                found.append(int(entry.name))
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found


def _holds_file_under(process: Path, folder: str) -> bool:
    for fd in (process / "fd").iterdir():
        try:
            if os.readlink(fd).startswith(folder):
                return True
        except OSError:
            continue
    return False


def descendants(root: int) -> set[int]:
    """`root` and every process under it, by their parent ids in /proc."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    ours, grew = {root}, True
    while grew:
        grew = False
        for pid, parent in parents.items():
            if parent in ours and pid not in ours:
                ours.add(pid)
                grew = True
    return ours


LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # as /proc shows


def tcp_listeners(pids) -> list[tuple[str, int]]:
    """(address as /proc/net shows it, port) of every TCP socket these processes listen on."""
    inodes = set()
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
                if link.startswith("socket:["):
                    inodes.add(link[8:-1])
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
                address, port = fields[1].split(":")
                found.append((address, int(port, 16)))
    return found


# multiprocessing's fork server and resource tracker (tests/distributed.py) serve this process to its end and
# leave with it (each watches a pipe from it): not left behind
PROCESS_HELPERS = (b"from multiprocessing.forkserver import", b"from multiprocessing.resource_tracker import")


def session_processes() -> list[int]:
    """Live processes marked with this session's SESSION_VARIABLE (never this process or its helpers)."""
    mark = f"{SESSION_VARIABLE}={os.environ[SESSION_VARIABLE]}".encode()
    found = []
    for entry in _others():
        try:
            if mark not in (entry / "environ").read_bytes().split(b"\0") or not _alive(int(entry.name)):
                continue
            if any(helper in (entry / "cmdline").read_bytes() for helper in PROCESS_HELPERS):
                continue
            found.append(int(entry.name))
        except OSError:
            continue
    return found


GRACE_S = 5.0  # SIGTERM's grace before SIGKILL: test servers only (Ray, SeaweedFS); some take 20 s to go quietly


def stop(pids: list[int], grace_s: float = GRACE_S) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue
        deadline = time.monotonic() + grace_s
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if _alive(pid)]
            time.sleep(0.2)
        if not pids:
            return


def stop_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def killed_at(argv: list[str], line: str, env: dict[str, str] | None = None) -> None:
    """Run `argv` in a process group of its own until it prints `line`, then SIGKILL the group (a crash at a
    known point: nothing it would do on a clean exit runs)."""
    victim = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        said = victim.stdout.readline().strip()
        assert said == line, f"expected {line!r}, the process said {said!r}"
    finally:
        os.killpg(victim.pid, signal.SIGKILL)
        victim.wait()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return False


def guard(pgid: int | None = None, path: str | Path | None = None) -> subprocess.Popen:
    """A watchdog of this process for a process group and/or the processes under a path. Kill it (its own
    process group) when the test stopped them itself."""
    args = [sys.executable, __file__, str(os.getpid()), str(pgid or 0), str(path or "")]
    return subprocess.Popen(args, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def dismiss(watchdog: subprocess.Popen) -> None:
    watchdog.kill()
    watchdog.wait()


if __name__ == "__main__":
    parent, group, folder = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    while _alive(parent):
        time.sleep(1.0)
    if group:
        stop_group(group)
    if folder:
        stop(processes_under(folder))
