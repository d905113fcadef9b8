"""Faults injected into real jobs (local Ray, tiny model, 2 ranks per replica): ranks SIGKILLed at random
points, a poison sample, a hung rank, a full disk, an unwritable output folder. Each test counts what it
injected and checks that no sample is lost, none is rendered twice and no partial file is left."""

import os
import random
import signal
import subprocess
import sys
import threading
import time

import pytest
import ray
from jobs import assert_exactly_once, job, manifest, write_jsonl
from ray import cloudpickle
from shared_ray import placements

from echovideo.errors import EchoVideoInputError
from ray_jobs.runtime.engine import run_job
from ray_jobs.runtime.worker import RankWorker
from ray_jobs.store.errors import OutputError

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the fault-injecting workers travel by value


class PoisonWorker(RankWorker):
    """Rank 0's process dies whenever it is given the poison prompt (a crash in native code, say)."""

    def render(self, sample_id, prompt, *args):
        if self.rank == 0 and "poison" in prompt:
            os._exit(1)
        return super().render(sample_id, prompt, *args)


class HangOnceWorker(RankWorker):
    """Rank 1 stops answering the first time it gets the "hang" prompt (rank 0 then waits in a collective)."""

    marker = ""

    def render(self, sample_id, prompt, *args):
        if self.rank == 1 and "hang" in prompt and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            time.sleep(3600)
        return super().render(sample_id, prompt, *args)


class SlowBusyStart(RankWorker):
    """Start-up that takes several times group_timeout_s but keeps working (a busy node, a cold cache)."""

    def setup(self, *args):
        self._enter("warming a cold compile cache")
        until = time.monotonic() + 12
        while time.monotonic() < until:
            sum(range(10_000))
        return super().setup(*args)


class SilentStart(RankWorker):
    """Start-up stuck without using CPU (weights on a hung mount)."""

    def setup(self, *args):
        self._enter("reading weights from a hung mount")
        threading.Event().wait(3600)


def prompts(tmp_path, face_path, texts: list[str]):
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": t, "identity": str(face_path)} for t in texts])


@pytest.mark.slow  # random kills and rebuilds of two replicas (CI runs it: -m slow)
def test_ranks_sigkilled_at_random_points_lose_and_duplicate_nothing(local_ray, face_path, tmp_path):
    dataset = prompts(tmp_path, face_path, [f"person {i} smiles" for i in range(8)])
    rng, landed, results = random.Random(5), [], []

    def sigkill(pid: int) -> None:
        try:
            os.kill(pid, signal.SIGKILL)
            landed.append(pid)
        except ProcessLookupError:  # already gone with its replica
            pass

    def inject(sample, replica):  # after results 1, 3, 5: a random rank of this replica dies 0-1 s later
        results.append(sample.sample_id)
        if len(results) % 2 == 1 and len(results) < 7:
            try:
                victim = rng.choice(placements(replica))["pid"]
            except ray.exceptions.RayActorError:  # an earlier kill already took this replica down
                return
            threading.Timer(rng.uniform(0.0, 1.0), sigkill, (victim,)).start()

    out = tmp_path / "out"
    report = run_job(job(dataset, out, **{"job.retries": 5, "generation.steps": 12}), progress=False, on_result=inject)
    time.sleep(1.1)  # the last timer has fired
    assert len(landed) >= 2 and report.rebuilds >= 1  # a kill after a replica's last sample needs no rebuild
    assert report.failed == 0
    assert_exactly_once(out, 8)
    print(f"SIGKILLs injected: {len(landed)}; replica rebuilds: {report.rebuilds}; samples lost: 0")


def test_a_poison_sample_is_capped_recorded_and_the_replica_keeps_working(local_ray, face_path, tmp_path):
    dataset = prompts(tmp_path, face_path, ["poison pill", "person 1 smiles", "person 2 smiles"])
    out = tmp_path / "out"
    report = run_job(job(dataset, out, **{"parallel.replicas": 1}), progress=False, worker=PoisonWorker)
    assert report.rebuilds == 3 and report.summary["replicas_dropped"] == 0
    (failed,) = [r for r in manifest(out) if r["status"] == "failed"]
    assert failed["prompt"] == "poison pill" and failed["attempts"] == 3
    assert "group lost: a rank died" in failed["error"] and "after 3 attempts" in failed["error"]
    assert_exactly_once(out, 2)  # rendered by the rebuilt replica after the poison


def test_a_hung_rank_is_caught_by_the_step_timeout_and_its_sample_retried(local_ray, face_path, tmp_path):
    dataset = prompts(tmp_path, face_path, ["hang on", "person 1 smiles"])
    worker = type("HangOnce", (HangOnceWorker,), {"marker": str(tmp_path / "hung")})
    out, started = tmp_path / "out", time.monotonic()
    report = run_job(job(dataset, out, **{"parallel.replicas": 1, "resources.step_timeout_s": 6,
                                          "resources.group_timeout_s": 90}), progress=False, worker=worker)
    assert (tmp_path / "hung").exists() and report.rebuilds == 1
    assert time.monotonic() - started < 90  # the step clock, not the 90 s collective timeout, caught it
    rows = assert_exactly_once(out, 2)
    assert {r["prompt"]: r["attempts"] for r in rows} == {"hang on": 2, "person 1 smiles": 1}


def fill_with_a_full_disk(folder) -> None:
    """Mount a tiny tmpfs over `folder` and fill it: a real full disk (ENOSPC), nothing simulated."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small filesystem here ({done.stderr.decode()[:200]})")
    try:
        with open(folder / "filler", "wb", buffering=0) as filler:
            while True:
                filler.write(b"\0" * 4096)
    except OSError:  # ENOSPC: full
        pass


def test_a_full_disk_stops_the_job_cleanly_and_a_rerun_finishes_it(local_ray, face_path, tmp_path):
    dataset = prompts(tmp_path, face_path, [f"person {i} smiles" for i in range(4)])
    out = tmp_path / "out"
    state = out / "state"

    def fill_disk(sample, replica):  # after the 1st record, the journal's disk is full
        if not os.path.ismount(state):
            fill_with_a_full_disk(state)

    try:
        with pytest.raises(OutputError, match="No space left on device.*rerun the same job"):
            run_job(job(dataset, out), progress=False, on_result=fill_disk)
    finally:
        if os.path.ismount(state):
            subprocess.run(["umount", "-l", str(state)], check=True)  # space freed: the first record is back
    assert not [p for p in out.rglob("*") if ".tmp" in p.name]
    report = run_job(job(dataset, out), progress=False)
    assert report.exit_code == 0 and report.skipped == 1 and report.rendered == 3
    assert_exactly_once(out, 4)


def test_an_unwritable_output_folder_is_a_job_error_before_any_work(local_ray, face_path, tmp_path):
    (tmp_path / "a-file").write_text("not a folder")
    dataset = prompts(tmp_path, face_path, ["person 1 smiles"])
    with pytest.raises(EchoVideoInputError) as error:
        run_job(job(dataset, tmp_path / "a-file" / "out"), progress=False)
    assert error.value.field == "job.output" and "writable" in error.value.fix



def test_a_start_counts_silence_not_time_and_a_silent_one_stops_the_job_naming_its_phase(local_ray, face_path,
                                                                                       tmp_path):
    """group_timeout_s 4: a start taking 12 s of work renders (once, no rebuild); a start silent for 4 s is
    torn down, rebuilt max_rebuilds times, and the job then stops with one line naming the phase and the
    setting that extends it. Under a start_timeout_s of 6 the same 12 s of work is a failed start: moving
    is not arriving."""
    settings = {"parallel.ulysses": 1, "parallel.replicas": 1, "resources.group_timeout_s": 4, "job.max_rebuilds": 1}
    dataset = prompts(tmp_path, face_path, ["a person smiles"])
    report = run_job(job(dataset, tmp_path / "slow", **settings), progress=False, worker=SlowBusyStart)
    assert report.rendered == 1 and report.rebuilds == 0
    with pytest.raises(Exception, match=r"every replica was lost \(last: .*no start-up progress for \d+ s \(rank 0 "
                                        r"reading weights from a hung mount; resources.group_timeout_s 4 extends it\)"):
        run_job(job(dataset, tmp_path / "silent", **settings), progress=False, worker=SilentStart)
    with pytest.raises(Exception, match=r"every replica was lost \(last: .*not started within 6 s \(rank 0 warming "
                                        r"a cold compile cache; resources.start_timeout_s extends it\)"):
        run_job(job(dataset, tmp_path / "ceiling", **settings, **{"resources.start_timeout_s": 6}), progress=False,
                worker=SlowBusyStart)
