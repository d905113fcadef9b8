"""Security: loopback-only embedded cluster without dashboard, no code-running weight files, no remote code.

(Nothing written outside the output folder and no credentials in outputs or logs: tests/test_bad_input.py.)
"""

import ast
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from echovideo.errors import CheckpointError
from echovideo.face.bisenet import BiSeNet
from echovideo.face.released_stage import load_weights

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process: the product's `connect` starts the embedded cluster, then every TCP socket that
# the driver or any process under it listens on is read from /proc (no ss/psutil needed).
LISTENERS = r'''
import json, os
from ray_jobs.job import parse_job
from ray_jobs.plan import connect
import ray

connect(None, parse_job({"model": {"preset": "tiny"}, "dataset": {"prompts": "p.jsonl"}, "job": {"output": "o"}}))
ray.get(ray.remote(lambda: 1).remote())
parents = {}
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        parents[int(pid)] = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except OSError:
        pass
ours, grew = {os.getpid()}, True
while grew:
    grew = False
    for pid, parent in parents.items():
        if parent in ours and pid not in ours:
            ours.add(pid)
            grew = True
inodes = set()
for pid in ours:
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        pass
listening = []
for table in ("/proc/net/tcp", "/proc/net/tcp6"):
    for line in open(table).read().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "0A" and fields[9] in inodes:  # LISTEN
            listening.append(fields[1])
print(json.dumps({"listening": listening, "processes": len(ours)}))
ray.shutdown()
'''
LOOPBACK = {"0100007F", "00000000000000000000000001000000", "0000000000000000FFFF00000100007F"}  # 127.0.0.1, ::1


def test_embedded_cluster_listens_on_loopback_only_with_no_dashboard():
    result = subprocess.run([sys.executable, "-c", LISTENERS], capture_output=True, text=True, timeout=180,
                            env={k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    addresses = [a.split(":") for a in report["listening"]]
    assert len(addresses) >= 3  # GCS, raylet, workers: the scan sees them
    assert [f"{ip}:{int(port, 16)}" for ip, port in addresses if ip not in LOOPBACK] == []
    assert 8265 not in {int(port, 16) for _, port in addresses}  # no dashboard


class RunsCode:
    """A pickle that, when unpickled by plain torch.load, would create a file (any code could run)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_weights_file_that_would_run_code_is_refused_unrun(tmp_path):
    marker = tmp_path / "ran"
    tampered = tmp_path / "parsing_bisenet.pth"
    with open(tampered, "wb") as handle:
        pickle.dump({"weight": RunsCode(marker)}, handle)
    with pytest.raises(CheckpointError, match="a pickle that could run code"):
        load_weights(BiSeNet(), tampered)
    assert not marker.exists()
    plain = tmp_path / "plain.pth"
    torch.save(BiSeNet().state_dict(), plain)
    load_weights(BiSeNet(), plain)  # real weights pass


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call):
            yield node, ast.unparse(node.func)


@pytest.mark.parametrize("package", ["echovideo", "parallel", "ray_jobs"])
def test_no_remote_code_and_no_unsafe_unpickling_in_the_source(package):
    offenders = []
    for path in (ROOT / package).rglob("*.py"):
        for call, name in _calls(path):
            keywords = {k.arg: k.value for k in call.keywords}
            if "trust_remote_code" in keywords:
                offenders.append(f"{path.name}: {name}(trust_remote_code=...)")
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler"):
                offenders.append(f"{path.name}: {name}")
            if name == "torch.load" and not (isinstance(keywords.get("weights_only"), ast.Constant)
                                              and keywords["weights_only"].value is True):
                offenders.append(f"{path.name}: torch.load without weights_only=True")
    assert offenders == []
