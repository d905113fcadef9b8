"""The driver process SIGKILLed mid-job and the job started again: nothing finished is rendered again, the rest
is, and the final manifest equals that of an uninterrupted run (same ids, same seeds). Real `echovideo run`
processes, each with its embedded local Ray cluster."""

import json
import os
import signal
import subprocess
import time

import pytest
import yaml
from jobs import manifest, read_frames, start_run, write_jsonl

pytestmark = pytest.mark.slow  # three `echovideo run` processes, each with its own cluster (CI: -m slow)

SAMPLES = 8


def job_file(tmp_path, face_path, out) -> str:
    dataset = write_jsonl(tmp_path / "prompts.jsonl",
                          [{"prompt": f"person {i} turns", "identity": str(face_path)} for i in range(SAMPLES)])
    raw = {"model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"ulysses": 2, "replicas": 1},
           "resources": {"accelerator": "cpu", "group_timeout_s": 60, "step_timeout_s": 120},
           "dataset": {"prompts": str(dataset)},
           "generation": {"height": 32, "width": 32, "frames": 5, "steps": 4},
           "job": {"output": str(out), "seed": 11}}
    path = tmp_path / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


def finish(process: subprocess.Popen) -> str:
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 0, output[-2000:]
    return output


def recorded(out) -> int:
    journal = out / "state" / "completed.jsonl"
    return len(journal.read_text().splitlines()) if journal.exists() else 0


@pytest.fixture()
def reap():
    """Whatever a killed driver leaves behind (its Ray processes) is killed with its session at the end."""
    sessions = []
    yield sessions.append
    for process in sessions:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_driver_killed_mid_job_resumes_without_rerendering(tmp_path, face_path, tiny_root, reap):
    interrupted, reference = tmp_path / "interrupted", tmp_path / "reference"
    first = start_run(job_file(tmp_path, face_path, interrupted), tiny_root)
    reap(first)
    deadline = time.monotonic() + 240
    while recorded(interrupted) < 3:
        assert first.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
        time.sleep(0.1)
    first.send_signal(signal.SIGKILL)  # the driver only: no cleanup, no finalize
    first.wait()
    done_before = recorded(interrupted)
    assert 3 <= done_before < SAMPLES and not (interrupted / "manifest.parquet").exists()

    second = start_run(job_file(tmp_path, face_path, interrupted), tiny_root)
    reap(second)
    finish(second)
    summary = json.loads((interrupted / "summary.json").read_text())
    assert summary["skipped_done"] == done_before  # finished clips were not rendered again
    assert summary["rendered_this_run"] == SAMPLES - done_before

    finish(start_run(job_file(tmp_path, face_path, reference), tiny_root))

    def outcome(out):
        return sorted((r["sample_id"], r["seed"], r["status"], r["path"]) for r in manifest(out))

    assert outcome(interrupted) == outcome(reference) and len(outcome(reference)) == SAMPLES
    for row in manifest(interrupted):
        assert read_frames(interrupted / row["path"]) == 5
    assert sorted(p.name for p in (interrupted / "videos").iterdir()) == \
        sorted(p.name for p in (reference / "videos").iterdir())
