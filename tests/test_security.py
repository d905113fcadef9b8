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

import own_processes
import pytest
import torch

from echovideo.errors import CheckpointError
from echovideo.face.bisenet import BiSeNet
from echovideo.face.released_stage import load_weights

ROOT = Path(__file__).resolve().parent.parent

# Runs in a fresh process: the product's driver starts the embedded cluster and runs one clip on a replica of
# two ranks (their group's store and gloo's own sockets open); when it finishes, every TCP socket that the driver
# or any process under it listens on is read from /proc (no ss/psutil needed).
LISTENERS = r'''
import json, os, sys
sys.path.insert(0, sys.argv[3])  # tests/: own_processes reads the tree and its sockets
import own_processes
from ray_jobs.runtime.engine import run_job
from ray_jobs.data.job import parse_job

def listening_sockets():
    ours = own_processes.descendants(os.getpid())
    return {"listening": own_processes.tcp_listeners(ours), "processes": len(ours)}

face, out = sys.argv[1], sys.argv[2]
with open(f"{out}.jsonl", "w") as rows:
    rows.write(json.dumps({"prompt": "a person waves", "identity": face}) + "\n")
spec = parse_job({"model": {"preset": "tiny", "dtype": "fp32"}, "dataset": {"prompts": f"{out}.jsonl"},
                  "parallel": {"ulysses": 2, "replicas": 1}, "resources": {"accelerator": "cpu"},
                  "generation": {"height": 32, "width": 32, "frames": 5, "steps": 2}, "job": {"output": out}})
seen = []
run_job(spec, None, progress=False, on_result=lambda sample, replica: seen.append(listening_sockets()))
print(json.dumps(seen[0]))
'''


def test_embedded_cluster_and_a_replicas_group_listen_on_loopback_only_with_no_dashboard(tmp_path, face_path,
                                                                                        tiny_root):
    """Ray's processes, and the ranks' own listeners: the group's store (TCPStore alone listens on every
    interface) and gloo's pair sockets (by default on the address the host name resolves to). The cluster's
    token is written nowhere (Ray saved it to ~/.ray/auth_token, sent by every later --address run)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "GLOO_SOCKET_IFNAME", "RAY_AUTH_MODE",
                                                            "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
    home = tmp_path / "home"
    home.mkdir()
    result = subprocess.run([sys.executable, "-c", LISTENERS, str(face_path), str(tmp_path / "out"),
                             str(Path(__file__).parent)],
                            capture_output=True, text=True, timeout=300,
                            env={**env, "ECHOVIDEO_CACHE": str(tiny_root.parent), "HOME": str(home)})
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    addresses = report["listening"]
    assert len(addresses) >= 5  # GCS, raylet, workers, the store, gloo: the scan sees them
    assert [f"{ip}:{port}" for ip, port in addresses if ip not in own_processes.LOOPBACK] == []
    assert 8265 not in {port for _, port in addresses}  # no dashboard
    assert not (home / ".ray" / "auth_token").exists()


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
