"""The README's cluster recipe, run as written on a real `ray start --head` cluster bound to 127.0.0.1:
`ray job submit --working-dir . -- echovideo run JOB.yaml --address auto --set job.output=ABSOLUTE`
puts the clips where the README says; a relative output (which would land in Ray's temporary package
folder and vanish) is refused with our message.
"""

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import own_processes
import pytest
from jobs import manifest, read_frames, write_jsonl

pytestmark = pytest.mark.slow  # `ray start` heads of their own (CI runs them: -m slow)

RAY = shutil.which("ray") or str(Path(sys.executable).parent / "ray")
JOB = """model: {preset: tiny, dtype: fp32}
parallel: {replicas: 1}
resources: {accelerator: cpu}
dataset: {prompts: prompts.jsonl}
generation: {height: 32, width: 32, frames: 5, steps: 2}
job: {output: out/demo}
"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture()
def head(tiny_root):
    """A real head node on loopback with the job server (ray[default]); stopped however the test ends.
    -> (job server address, environment, Ray's temp folder: short, as its socket paths must be, GCS address)."""
    temp = Path(tempfile.mkdtemp(prefix="ev-ray-", dir="/tmp"))
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent), "RAY_USAGE_STATS_ENABLED": "0",
           "RAY_AUTH_MODE": "token",  # Ray 2.5x clusters require a token; the CLI sends ~/.ray/auth_token with this
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}  # the README's loopback recipe: else Ray binds the host's IP
    dashboard, gcs = free_port(), free_port()
    keeper = own_processes.guard(path=temp)  # a killed test run still stops this cluster, and only it
    try:
        started = subprocess.run([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                                  "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=2",
                                  "--include-dashboard=true", f"--temp-dir={temp}"],
                                 env=env, capture_output=True, text=True, timeout=180)
        assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        listening = own_processes.tcp_listeners(own_processes.processes_under(temp))
        assert listening and [a for a in listening if a[0] not in own_processes.LOOPBACK] == []
        yield f"http://127.0.0.1:{dashboard}", env, temp, f"127.0.0.1:{gcs}"
    finally:  # not `ray stop`: that stops every Ray cluster on the machine
        own_processes.stop(own_processes.processes_under(temp))
        own_processes.dismiss(keeper)
        shutil.rmtree(temp, ignore_errors=True)


def submit(address: str, env: dict, folder: Path, *args: str) -> subprocess.CompletedProcess:
    """`ray job submit` as the README writes it; while the head's job agent is still starting (a busy
    machine), Ray answers "No available agent": asked again until a generous deadline."""
    deadline = time.monotonic() + 180
    while True:
        done = subprocess.run([RAY, "job", "submit", "--address", address, "--working-dir", ".", "--",
                               "echovideo", "run", "job.yaml", "--address", "auto", *args],
                              cwd=folder, env=env, capture_output=True, text=True, timeout=420)
        if "No available agent" not in done.stdout + done.stderr or time.monotonic() > deadline:
            return done
        time.sleep(2)


def test_the_readme_submit_recipe_writes_where_the_readme_says(head, tmp_path, face_path):
    address, env, ray_temp, _ = head
    project = tmp_path / "project"
    project.mkdir()
    (project / "job.yaml").write_text(JOB)
    write_jsonl(project / "prompts.jsonl", [{"prompt": f"a person waves {i}", "identity": str(face_path)}
                                            for i in range(2)])
    durable = tmp_path / "shared" / "demo"

    run = submit(address, env, project, "--set", f"job.output={durable}")
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 ok, 0 failed" in run.stdout and f"outputs in {durable}" in run.stdout
    rows = manifest(durable)
    assert [r["status"] for r in rows] == ["ok", "ok"]
    assert all(read_frames(durable / r["path"]) == 5 for r in rows)
    assert json.loads((durable / "summary.json").read_text())["ok"] == 2

    again = submit(address, env, project, "--set", f"job.output={durable}")  # a second upload: resumes
    assert again.returncode == 0 and "0 rendered now, 2 settled before" in again.stdout, again.stdout[-3000:]

    relative = submit(address, env, project)  # job.output: out/demo, inside the unpacked package
    assert relative.returncode != 0
    assert "job.output" in relative.stdout and "deleted with the Ray session" in relative.stdout, \
        relative.stdout[-3000:]
    assert not list(ray_temp.rglob("manifest.parquet"))  # nothing was rendered into the package


def test_joining_a_token_auth_head_sends_the_token_or_says_how(head, tmp_path):
    """A default Ray 2.5x head requires its token. With one on this machine and RAY_AUTH_MODE unset, `plan
    --address` joins (Ray itself would retry for 20 s and blame the address); without one, the error says
    what to set."""
    _, env, _, gcs = head
    job = tmp_path / "job.yaml"
    job.write_text(JOB.replace("prompts.jsonl", str(tmp_path / "prompts.jsonl")))
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a person waves", "identity": "x.jpg"}])
    plain = {k: v for k, v in env.items() if k != "RAY_AUTH_MODE"}
    joined = subprocess.run(["echovideo", "plan", str(job), "--address", gcs], env=plain, capture_output=True,
                            text=True, timeout=300)
    assert joined.returncode == 0 and "1 replica(s)" in joined.stdout, joined.stderr[-2000:]
    assert "cluster free now: {'CPU': 2.0}" in joined.stdout  # what it planned with
    home = tmp_path / "elsewhere"  # a machine without the head's token
    home.mkdir()
    refused = subprocess.run(["echovideo", "plan", str(job), "--address", gcs], env={**plain, "HOME": str(home)},
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2
    assert "RAY_AUTH_MODE=token" in refused.stderr and "ray get-auth-token" in refused.stderr
