"""Mass generation on a real local Ray cluster with the tiny model: outputs, bad rows, resume, job-file errors."""

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from jobs import FRAMES, gallery_data, job, manifest, read_frames, write_jsonl
from PIL import Image

from echovideo.errors import EchoVideoInputError
from ray_jobs.runtime.engine import run_job


@pytest.fixture()
def dataset(tmp_path, face_path):
    blank = tmp_path / "blank.png"
    Image.new("RGB", (128, 128), (90, 140, 200)).save(blank)
    rows = [{"prompt": "a woman smiles", "identity": str(face_path)},
            {"prompt": "a woman laughs", "identity": str(face_path)},
            {"prompt": "a woman waves", "identity": str(face_path)},
            {"prompt": "a woman smiles", "identity": str(face_path)},  # duplicate: rendered once
            {"prompt": "a woman nods", "identity": str(tmp_path / "missing.jpg")},
            {"prompt": "a woman nods", "identity": str(blank)},  # no face
            {"prompt": "a woman sings", "identity": str(face_path), "height": 50}]  # not a multiple of 16
    return write_jsonl(tmp_path / "prompts.jsonl", rows)


def test_job_renders_each_sample_once_bad_rows_fail_alone_and_resume_skips_done(
        local_ray, dataset, tmp_path):
    out = tmp_path / "out"
    first = run_job(job(dataset, out, **{"dataset.limit": 2}), progress=False)
    assert first.rendered == 2 and first.summary["failed"] == 0

    report = run_job(job(dataset, out), progress=False)
    assert report.skipped == 2 and report.rendered == 1  # only the rest is rendered
    assert report.exit_code == 3
    rows = manifest(out)
    assert len(rows) == 6  # 7 rows, one duplicate
    ok = [r for r in rows if r["status"] == "ok"]
    assert len(ok) == 3 and len({r["sample_id"] for r in rows}) == 6
    for row in ok:
        assert read_frames(out / row["path"]) == FRAMES
    reasons = sorted(r["error"] for r in pq.read_table(out / "failures.parquet").to_pylist())
    assert any("missing.jpg" in r for r in reasons)
    assert any("face" in r.lower() for r in reasons)
    assert any("--height" in r and "multiple of 16" in r for r in reasons)
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(f"{r['sample_id']}.mp4" for r in ok)
    shown = gallery_data(out)
    assert len(shown["clips"]) == 3 and len(shown["failed"]) == 3
    (thumbnail,) = (out / "identities").glob("*.jpg")  # one photo: one thumbnail, on every card
    assert max(Image.open(thumbnail).size) == 160
    assert {clip["t"] for clip in shown["clips"]} == {thumbnail.stem}
    for row in ok:  # every clip is scored by default: motion always, identity against its photo
        scores = json.loads(row["scores"])
        assert row["motion"] == scores["motion"] >= 0 and row["face_share"] == scores["face_share"]
        assert len(scores["similarities"]) == scores["frames_scored"] == len(range(0, FRAMES, 2))
        clip = json.loads((out / "metadata" / f"{row['sample_id']}.json").read_text())  # the clip's own json
        assert (clip["scores"], clip["prompt"], clip["video"]) == (scores, row["prompt"], Path(row["path"]).name)
    assert json.loads((out / "summary.json").read_text())["ok"] == 3

    # Per-replica logs: each rank records its samples; the no-face sample failed on the replica that took it.
    rank_logs = {p.name: p.read_text() for p in (out / "logs").glob("replica-*-rank-*.log")}
    assert set(rank_logs) == {f"replica-{i}-rank-{k}.log" for i in (0, 1) for k in (0, 1)}
    rank0 = "".join(text for name, text in rank_logs.items() if name.endswith("rank-0.log"))
    assert all(f"sample {r['sample_id']}: done" in rank0 for r in ok)
    assert "NoFaceFoundError" in rank0 or "no face" in rank0.lower()
    assert "ready on cpu, group at" in rank0  # no empty accelerator dict on a CPU rank
    driver_log = (out / "logs" / "driver.log").read_text()
    assert "plan: accelerator cpu; 2 replica(s)" in driver_log and "finished: 1 rendered, 2 skipped" in driver_log

    again = run_job(job(dataset, out), progress=False)  # all settled: answered without building a replica
    assert again.rendered == 0 and again.summary["replicas_started"] == 0 and again.summary["ok"] == 3


def test_job_file_errors_name_the_key(dataset, tmp_path):
    with pytest.raises(EchoVideoInputError, match="parallel.replicaz: unknown key"):
        job(dataset, tmp_path, **{"parallel.replicaz": 2})
    with pytest.raises(EchoVideoInputError, match="generation.steps: 'four' is a str"):
        job(dataset, tmp_path, **{"generation.steps": "four"})
    with pytest.raises(EchoVideoInputError, match="--frames"):
        job(dataset, tmp_path, **{"generation.frames": 8})
    with pytest.raises(EchoVideoInputError, match="parallel.cfg: CFG parallelism needs CFG.*guidance > 1"):
        job(dataset, tmp_path, **{"parallel.cfg": 2, "generation.guidance": 1.0})


def test_relative_paths_are_resolved_in_the_driver(tmp_path, monkeypatch, face_path):
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a", "identity": str(face_path)}])
    spec = job("prompts.jsonl", "out/relative", **{"model.preset": None, "model.checkpoint": "ckpts"})
    assert spec.output == str(tmp_path / "out" / "relative")  # a rank anywhere writes where the driver looks
    assert spec.model["checkpoint"] == str(tmp_path / "ckpts")
    assert spec.dataset["prompts"] == str(tmp_path / "prompts.jsonl")
    assert job("s3://bucket/prompts.jsonl", tmp_path).dataset["prompts"] == "s3://bucket/prompts.jsonl"


def test_run_with_a_bad_job_file_exits_2_before_any_work(tmp_path):
    from echovideo.cli import main

    bad = tmp_path / "job.yaml"
    bad.write_text("model: {preset: tiny}\nparallel: {ulysses: two}\n")
    assert main(["run", str(bad)]) == 2
    shutil.rmtree(tmp_path / "out", ignore_errors=True)


def test_ctrl_c_ends_the_job_in_one_line_with_the_manifest_of_what_finished(tmp_path, face_path, tiny_root):
    # Far more rows than render between the first clip and Ctrl-C (a tiny clip takes ~0.2 s): the job is
    # always interrupted mid-way, never finished before the signal lands.
    rows = [{"prompt": f"a woman waves {i}", "identity": str(face_path)} for i in range(400)]
    prompts = write_jsonl(tmp_path / "prompts.jsonl", rows)
    out = tmp_path / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"model: {{preset: tiny, dtype: fp32}}\nparallel: {{replicas: 1}}\n"
                        f"resources: {{accelerator: cpu}}\ndataset: {{prompts: {prompts}}}\n"
                        f"generation: {{height: 32, width: 32, frames: 5, steps: 8}}\njob: {{output: {out}}}\n")
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent)}
    # SIGINT as a terminal's Ctrl-C finds it: a suite started in the background (`... &` in a script, nohup)
    # runs with SIGINT ignored, and a child inherits that; the job would then rightly never see the signal.
    run = subprocess.Popen([sys.executable, "-m", "echovideo", "run", str(job_file)], env=env,
                           stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                           preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    journal = out / "state" / "completed.jsonl"
    deadline = time.monotonic() + 240
    while not (journal.exists() and journal.read_text().strip()) and run.poll() is None:
        assert time.monotonic() < deadline, "no clip finished"
        time.sleep(0.5)
    run.send_signal(signal.SIGINT)
    _, err = run.communicate(timeout=180)
    assert run.returncode == 130, err
    assert "Traceback" not in err and "interrupted; finished clips and the manifest are in" in err
    summary = json.loads((out / "summary.json").read_text())
    finished = [r for r in manifest(out) if r["status"] == "ok"]
    assert summary["ended"] == "interrupted" and summary["ok"] == len(finished) >= 1
    assert all(read_frames(out / r["path"]) == FRAMES for r in finished)


def test_a_rerun_renders_what_changed_and_the_manifest_holds_each_requested_clip_once(local_ray, tmp_path, face_path):
    """Issue 24's reproductions in one job: failed rows sharing a prompt stay apart (a photo, /dev/zero, a
    FIFO, a photo uploaded late), a late photo is retried by the rerun, and a rerun with another job-level
    setting renders every clip anew; the manifest lists the job as it stands, each request once."""
    fifo, late = tmp_path / "fifo", tmp_path / "late.jpg"
    os.mkfifo(fifo)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a person waves"}])
    people = write_jsonl(tmp_path / "people.jsonl", [{"identity": str(p)} for p in (face_path, "/dev/zero", fifo, late)])
    out = tmp_path / "out"
    settings = {"dataset.mode": "cross", "dataset.identities": str(people), "parallel.ulysses": 1,
                "parallel.replicas": 1}
    first = run_job(job(prompts, out, **settings), progress=False)
    rows = manifest(out)
    assert (first.rendered, first.summary["ok"], first.summary["failed"], len(rows)) == (1, 1, 3, 4)
    assert {r["identity"] for r in rows} == {str(face_path), "/dev/zero", str(fifo), str(late)}
    kinds = {r["identity"]: r["error"] for r in rows if r["status"] == "failed"}
    assert "does not exist" in kinds[str(late)] or "No such file" in kinds[str(late)]

    Image.open(face_path).save(late, quality=80)  # uploaded late (another photo of her): the rerun reads it
    again = run_job(job(prompts, out, **settings), progress=False)
    assert (again.rendered, again.skipped, again.summary["ok"], again.summary["failed"]) == (1, 3, 2, 2)

    changed = run_job(job(prompts, out, **settings, **{"generation.steps": 3}), progress=False)
    assert changed.rendered == 2 and changed.summary["not_requested_now"] == 2
    rows = manifest(out)
    assert len(rows) == 4 and sorted(r["status"] for r in rows) == ["failed", "failed", "ok", "ok"]
    assert all(json.loads(r["options"])["steps"] == 3 for r in rows if r["status"] == "ok")
    photos = {hashlib.sha256(p.read_bytes()).hexdigest(): p for p in (face_path, late)}
    assert {r["identity_sha256"] for r in rows if r["status"] == "ok"} == set(photos)
    for row in (r for r in rows if r["status"] == "ok"):  # the photo as given travels with its clip
        assert (out / row["photo"]).read_bytes() == photos[row["identity_sha256"]].read_bytes()
        clip = json.loads((out / "metadata" / f"{row['sample_id']}.json").read_text())
        assert clip["identity_sha256"] == row["identity_sha256"] and clip["photo"] == row["photo"]


def test_a_job_on_a_busy_cluster_says_it_waits_for_resources(local_ray, tmp_path, face_path, caplog):
    """Another workload holds 2 of the cluster's 4 CPUs: one replica of 2 ranks is placed, the other waits,
    and the job says so (with what is free) instead of sitting silent; the placed one renders everything."""
    import ray

    holder = ray.remote(num_cpus=2)(type("Holder", (), {"ready": lambda self: True})).remote()
    ray.get(holder.ready.remote())
    try:
        rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"a person waves {i}", "identity": str(face_path)}
                                                  for i in range(3)])
        with caplog.at_level("WARNING", logger="ray_jobs"):
            report = run_job(job(rows, tmp_path / "out", **{"parallel.replicas": 2}), progress=False)
        assert report.rendered == 3
        said = [r.getMessage() for r in caplog.records if "waiting for resources" in r.getMessage()]
        assert said and said[0].startswith("waiting for resources: 1 of 2 replicas placed (free on the cluster now:")
    finally:
        ray.kill(holder)


def _autoscaler_request() -> list:
    """What the cluster's autoscaler is asked for now (Ray keeps it in the GCS key-value store)."""
    from ray._private.ray_constants import AUTOSCALER_RESOURCE_REQUEST_CHANNEL
    from ray.experimental.internal_kv import _internal_kv_get

    value = _internal_kv_get(AUTOSCALER_RESOURCE_REQUEST_CHANNEL)
    return json.loads(value) if value else []


def test_the_autoscaler_request_shrinks_with_the_work_and_is_cleared_however_the_job_ends(local_ray, tmp_path,
                                                                                        face_path):
    """Two replicas' bundles while the dataset has work for both; as the last clips are in flight no more than
    they need; nothing once the job ends, whether it finished or its loop raised (a request left behind keeps a
    cloud cluster's nodes up after the driver exited). Read from the driver's log: Ray keeps one request per
    cluster, and another workload on it (Ray Data's requester, from earlier tests) rewrites it at will."""
    dataset = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"person {i} waves", "identity": str(face_path)}
                                                 for i in range(6)])
    settings = {"parallel.ulysses": 1, "parallel.replicas": 2}

    def asked(out) -> list[int]:
        return [int(n) for n in re.findall(r"asked the autoscaler for (\d+) replica", (out / "logs" / "driver.log").read_text())]

    report = run_job(job(dataset, tmp_path / "out", **settings), progress=False)
    assert report.rendered == 6
    said = asked(tmp_path / "out")
    assert said[0] == 2 and said[-1] == 0 and 1 in said and said == sorted(said, reverse=True), said

    def crash(sample, replica):
        raise RuntimeError("the driver's loop broke")

    with pytest.raises(RuntimeError, match="loop broke"):
        run_job(job(dataset, tmp_path / "crashed", **settings), progress=False, on_result=crash)
    said = asked(tmp_path / "crashed")
    assert said[0] == 2 and said[-1] == 0, said
