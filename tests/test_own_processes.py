"""The suite stops what it started and nothing else, also when the test run itself is killed: a watchdog
that outlives its test process stops the processes under that test's folder, and a process of another
folder beside them (another cluster, another suite) is never touched."""

import os
import signal
import subprocess
import sys
import textwrap
import time

import own_processes

HERE = os.path.dirname(os.path.abspath(__file__))
TEST_RUN = textwrap.dedent("""
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[2])
    import own_processes
    ours = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", sys.argv[1]])
    own_processes.guard(path=sys.argv[1])
    print(ours.pid, flush=True)
    time.sleep(600)
""")


def test_a_killed_test_run_still_stops_what_it_started_and_only_that(tmp_path):
    ours, theirs = tmp_path / "our-cluster", tmp_path / "their-cluster"
    bystander = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)", str(theirs)])
    run = subprocess.Popen([sys.executable, "-c", TEST_RUN, str(ours), HERE], stdout=subprocess.PIPE, text=True,
                           start_new_session=True)
    try:
        started = int(run.stdout.readline())
        assert started in own_processes.processes_under(ours)
        os.killpg(run.pid, signal.SIGKILL)  # the test run dies without any teardown
        run.wait()
        deadline = time.monotonic() + 60
        while own_processes.processes_under(ours) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert own_processes.processes_under(ours) == []
        assert bystander.poll() is None and own_processes.processes_under(theirs) == [bystander.pid]
    finally:
        bystander.kill()
        bystander.wait()
        own_processes.stop(own_processes.processes_under(ours))


def test_nothing_in_the_suite_stops_processes_by_name():
    sources = [os.path.join(HERE, name) for name in os.listdir(HERE) if name.endswith(".py")]
    offending = [path for path in sources if any(pattern in open(path).read() for pattern in
                                                  ('"ray", "stop"', "RAY, \"stop\"", "pkill", "killall"))]
    assert offending == [os.path.join(HERE, "test_own_processes.py")]
