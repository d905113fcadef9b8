"""A replica's ranks move in lockstep whatever fails, and a slow rebuild stalls nobody (local Ray, tiny model).

Each rank's log must show its samples strictly one after another: a rank never starts a sample while it
is still in another one (a rebuilt replica's ranks start a fresh log section with their "ready" line).
"""

import os
import re
import sys
import time

import torch
from jobs import assert_exactly_once, job, manifest, write_jsonl
from ray import cloudpickle

from ray_jobs.runtime.engine import run_job
from ray_jobs.runtime.worker import RankWorker

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault-injecting workers travel by value
SLOW_START_S = 20


class PrepareFailsWorker(RankWorker):
    """Rank 0's conditioning raises a non-input error (an OpenCV assertion, say) on the "cursed" prompt."""

    def setup(self, *args) -> None:
        super().setup(*args)
        prepare = self.pipe.pipe.prepare

        def failing(prompt, *rest):
            if "cursed" in prompt:
                raise ValueError("OpenCV(4.10.0) error: (-215:Assertion failed) !ssize.empty() in function 'resize'")
            return prepare(prompt, *rest)

        self.pipe.pipe.prepare = failing


class OutOfMemoryWorker(RankWorker):
    """Rank 1 runs out of device memory in the DiT on the "huge" prompt (its peer then waits in a collective)."""

    def setup(self, *args) -> None:
        super().setup(*args)
        engine, self.prompt = self.pipe.engine, ""

        def predict(*inputs, **options):
            if self.rank == 1 and "huge" in self.prompt:
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            return engine(*inputs, **options)

        self.pipe.engine = predict

    def render(self, sample_id, prompt, *args):
        self.prompt = prompt
        return super().render(sample_id, prompt, *args)


class SlowRebuildWorker(RankWorker):
    """The first "die" sample kills its rank; every rank created after that takes SLOW_START_S to load."""

    marker = ""

    def setup(self, *args) -> None:
        if os.path.exists(self.marker):
            time.sleep(SLOW_START_S)
        super().setup(*args)

    def render(self, sample_id, prompt, *args):
        if "die" in prompt and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            os._exit(1)
        return super().render(sample_id, prompt, *args)


def prompts(tmp_path, face_path, texts: list[str]):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t, "identity": str(face_path)} for t in texts])


def assert_ranks_in_lockstep(out) -> int:
    """No rank log shows a sample starting while another is open; returns the samples started over all logs."""
    started = 0
    for log in sorted((out / "logs").glob("replica-*-rank-*.log")):
        current = None
        for line in log.read_text().splitlines():
            if re.search(r"rank \d+/\d+ ready on", line):  # a new incarnation of this rank
                current = None
            event = re.search(r"sample (\w+): (started|done|failed)", line)
            if event is None:
                continue
            sid, what = event.groups()
            if what == "started":
                assert current is None, f"{log.name}: {sid} started while {current} was still running"
                current, started = sid, started + 1
            else:
                assert current == sid, f"{log.name}: {sid} {what} but {current} was running"
                current = None
    return started


def test_any_failure_preparing_a_sample_fails_every_rank_together_and_the_retry_runs_alone(
        local_ray, face_path, tmp_path):
    out = tmp_path / "out"
    dataset = prompts(tmp_path, face_path, ["cursed photo", "person 1 smiles", "person 2 smiles"])
    report = run_job(job(dataset, out, **{"parallel.replicas": 1, "job.retries": 2}), progress=False,
                     worker=PrepareFailsWorker)
    assert assert_ranks_in_lockstep(out) == 2 * (2 + 2)  # 2 ranks x (2 attempts + 2 clips)
    assert_exactly_once(out, 2)
    (failed,) = [r for r in manifest(out) if r["status"] == "failed"]
    assert failed["prompt"] == "cursed photo" and failed["attempts"] == 2
    assert failed["error"].startswith("sample error: ValueError: OpenCV") and "after 2 attempts" in failed["error"]
    assert report.rebuilds == 2  # not a bad input: the replica is rebuilt after each failure


def test_out_of_memory_fails_its_sample_once_naming_its_size_with_one_rebuild(local_ray, face_path, tmp_path):
    out = tmp_path / "out"
    dataset = prompts(tmp_path, face_path, ["huge scene", "person 1 smiles"])
    report = run_job(job(dataset, out, **{"parallel.replicas": 1}), progress=False, worker=OutOfMemoryWorker)
    (failed,) = [r for r in manifest(out) if r["status"] == "failed"]
    assert failed["attempts"] == 1 and failed["error"].startswith("out of memory: out of memory on rank 1 of 2")
    assert "32x32, 5 frames" in failed["error"] and "parallel.ulysses" in failed["error"]
    assert report.rebuilds == 1
    assert_exactly_once(out, 1)
    assert_ranks_in_lockstep(out)


def test_a_slow_rebuild_never_tears_down_a_healthy_replica(local_ray, face_path, tmp_path):
    out = tmp_path / "out"
    worker = type("SlowRebuild", (SlowRebuildWorker,), {"marker": str(tmp_path / "died")})
    dataset = prompts(tmp_path, face_path, ["die once"] + [f"person {i} smiles" for i in range(6)])
    report = run_job(job(dataset, out, **{"parallel.ulysses": 1, "resources.step_timeout_s": 6,
                                          "generation.steps": 6}), progress=False, worker=worker)
    assert (tmp_path / "died").exists()
    assert report.rebuilds == 1  # only the replica that lost its rank: the other kept stepping meanwhile
    assert_exactly_once(out, 7)
    assert_ranks_in_lockstep(out)
