"""Job outputs in an object store (a real SeaweedFS on 127.0.0.1): a Ray job reading its dataset and photo from
the store and writing its clips there, its driver SIGKILLed mid-job and rerun; an upload that breaks half
way; the completion markers a resume trusts; one job per prefix."""

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pyarrow.fs as pfs
import pyarrow.parquet as pq
import pytest
import yaml
from ray import cloudpickle

import ray_jobs.destination as destination_module
from echovideo.errors import EchoVideoInputError
from jobs import job, read_frames, start_run, write_jsonl
from object_store import ACCESS_KEY, BUCKET, SECRET_KEY
from ray_jobs.destination import Destination, UploadError
from ray_jobs.driver import run_job
from ray_jobs.object_outputs import ObjectStoreOutputs
from ray_jobs.worker import RankWorker

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # DroppedUploadWorker travels by value

SAMPLES = 6
LAYOUT = ("manifest.parquet", "failures.parquet", "summary.json", "index.html", "gallery-data.js",
          "logs/driver.log", "logs/replica-0-rank-0.log", "logs/replica-0-rank-1.log")


def keys(fs, prefix: str) -> dict[str, int]:
    """Every object under `prefix` in the test bucket: relative key -> size."""
    root = f"{BUCKET}/{prefix}"
    return {info.path[len(root) + 1:]: info.size
            for info in fs.get_file_info(pfs.FileSelector(root, recursive=True, allow_not_found=True))
            if info.type == pfs.FileType.File}


def read(fs, prefix: str, name: str) -> bytes:
    with fs.open_input_stream(f"{BUCKET}/{prefix}/{name}") as stream:
        return stream.read()


def job_file(tmp_path, face_path, object_store) -> str:
    """Dataset and photo in the store too, named by URIs that carry the credentials as users write them."""
    fs = object_store.filesystem()
    with fs.open_output_stream(f"{BUCKET}/inputs/face.jpg") as stream:
        stream.write(face_path.read_bytes())
    rows = [{"prompt": f"person {i} turns", "identity": object_store.uri("inputs/face.jpg")} for i in range(SAMPLES)]
    with fs.open_output_stream(f"{BUCKET}/inputs/prompts.jsonl") as stream:
        stream.write("".join(json.dumps(row) + "\n" for row in rows).encode())
    raw = {"model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"ulysses": 2, "replicas": 1},
           "resources": {"accelerator": "cpu", "group_timeout_s": 60, "step_timeout_s": 120},
           "dataset": {"prompts": object_store.uri("inputs/prompts.jsonl")},
           "generation": {"height": 32, "width": 32, "frames": 5, "steps": 4},
           "job": {"output": object_store.uri("jobs/run"), "seed": 11}}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


@pytest.mark.slow  # `echovideo run` processes with clusters of their own (CI: -m slow)
def test_a_job_into_an_object_store_killed_mid_job_resumes_exactly_once(tmp_path, face_path, tiny_root,
                                                                          object_store):
    fs, job = object_store.filesystem(), job_file(tmp_path, face_path, object_store)
    first = start_run(job, tiny_root)
    try:
        deadline = time.monotonic() + 300
        while len(keys(fs, "jobs/run/state/done")) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # the driver only: no finalize, its lease left behind
        first.wait()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # its embedded Ray
    done_before = len(keys(fs, "jobs/run/state/done"))
    assert 2 <= done_before < SAMPLES and "manifest.parquet" not in keys(fs, "jobs/run")
    for name in keys(fs, "jobs/run/videos"):  # whatever is under a final key is a whole clip
        (tmp_path / name).write_bytes(read(fs, "jobs/run/videos", name))
        assert read_frames(tmp_path / name) == 5

    second = start_run(job, tiny_root)  # same host, its holder's process gone: the lease is taken over
    output, _ = second.communicate(timeout=400)
    assert second.returncode == 0, output[-3000:]
    assert "s3://echovideo/jobs/run" in output and SECRET_KEY not in output

    summary = json.loads(read(fs, "jobs/run", "summary.json"))
    assert summary["skipped_done"] == done_before and summary["rendered_this_run"] == SAMPLES - done_before
    rows = pq.read_table(io.BytesIO(read(fs, "jobs/run", "manifest.parquet"))).to_pylist()
    assert len(rows) == len({r["sample_id"] for r in rows}) == SAMPLES and {r["status"] for r in rows} == {"ok"}
    stored = keys(fs, "jobs/run")
    assert set(LAYOUT) <= set(stored), set(LAYOUT) - set(stored)
    assert sorted(k for k in stored if k.startswith("videos/")) == sorted(r["path"] for r in rows)
    assert len([k for k in stored if k.startswith("posters/")]) == SAMPLES
    assert len([k for k in stored if k.startswith("metadata/")]) == SAMPLES
    assert len([k for k in stored if k.startswith("state/done/")]) == SAMPLES
    assert not [k for k in stored if "echovideo-tmp" in k] and "state/job.lock" not in stored
    for row in rows:
        (tmp_path / "clip.mp4").write_bytes(read(fs, "jobs/run", row["path"]))
        assert read_frames(tmp_path / "clip.mp4") == 5
    for name in (*LAYOUT, *(k for k in stored if k.startswith("state/"))):  # credentials reach nothing we write
        assert SECRET_KEY.encode() not in read(fs, "jobs/run", name), name
    assert b"sample " in read(fs, "jobs/run", "logs/replica-0-rank-0.log")  # the ranks' logs came back

    from echovideo.cli import main  # `eval` on the store: the table from the manifest, its files uploaded

    assert main(["eval", object_store.uri("jobs/run"), "--by", "seed"]) == 0
    evaluated = json.loads(read(fs, "jobs/run", "eval-by-seed.json"))
    assert sum(row["clips"] for row in evaluated["table"]) == SAMPLES
    assert read(fs, "jobs/run", "eval-by-seed.png").startswith(b"\x89PNG")


class DroppedUploadWorker(RankWorker):
    """The store drops rank 0's first upload of the "flaky" clip (after the whole group has rendered it)."""

    marker = ""

    def _deliver(self, frames, fps, image, files, record) -> None:
        if "flaky" in files["video"] and not os.path.exists(self.marker):
            open(self.marker, "w").close()
            raise UploadError(f"cannot upload {files['video']} to s3://echovideo/dropped: connection reset")
        super()._deliver(frames, fps, image, files, record)


def test_an_upload_the_store_drops_is_retried_on_the_same_replica(local_ray, face_path, tmp_path, object_store):
    dataset = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"person {i}", "identity": str(face_path),
                                                        "sample_id": sid} for i, sid in enumerate(("flaky", "b"))])
    worker = type("Dropped", (DroppedUploadWorker,), {"marker": str(tmp_path / "dropped")})
    spec = job(dataset, object_store.uri("dropped"), **{"parallel.replicas": 1})
    report = run_job(spec, progress=False, worker=worker)
    assert (report.failed, report.rebuilds, report.replicas_started) == (0, 0, 1)  # no model loaded twice
    rows = pq.read_table(io.BytesIO(read(object_store.filesystem(), "dropped", "manifest.parquet"))).to_pylist()
    assert {r["sample_id"]: (r["status"], r["attempts"]) for r in rows} == {"flaky": ("ok", 2), "b": ("ok", 1)}


def test_an_upload_that_breaks_half_way_leaves_nothing_under_its_final_key(tmp_path, object_store, monkeypatch):
    fs, local = object_store.filesystem(), tmp_path / "clip.mp4"
    local.write_bytes(os.urandom(3 * destination_module.CHUNK_BYTES))
    chunks = destination_module._chunks

    def breaking(source):  # the connection drops after the first chunk went out
        for number, chunk in enumerate(chunks(source)):
            if number == 1:
                raise OSError("connection reset by peer")
            yield chunk

    monkeypatch.setattr(destination_module, "_chunks", breaking)
    with pytest.raises(OSError), fs.open_output_stream(f"{BUCKET}/naive/clip.mp4") as stream:
        for chunk in breaking(open(local, "rb")):  # what a plain upload would do
            stream.write(chunk)
    assert keys(fs, "naive") == {"clip.mp4": destination_module.CHUNK_BYTES}  # the pitfall is real on this server

    outputs = Destination(object_store.uri("broken"))
    with pytest.raises(OSError):
        outputs.upload(local, "videos/clip.mp4")
    assert keys(fs, "broken") == {}  # no final key, and the temp key is gone too
    monkeypatch.setattr(destination_module, "_chunks", chunks)
    outputs.upload(local, "videos/clip.mp4")
    assert keys(fs, "broken") == {"videos/clip.mp4": local.stat().st_size}


def record(sample_id: str) -> dict:
    return {"sample_id": sample_id, "row_key": f"k-{sample_id}", "prompt": "p", "identity": "i", "seed": 1,
            "options": {}, "path": f"videos/{sample_id}.mp4", "attempts": 1, "seconds": 1.0, "replica": "0"}


def test_resume_trusts_a_clip_only_with_its_marker(object_store):
    outputs = ObjectStoreOutputs(object_store.uri("markers"))
    for sample_id, video, marker in (("both", True, True), ("video-only", True, False),
                                     ("marker-only", False, True), ("torn-marker", True, False)):
        if video:
            outputs.destination.put(outputs.video_name(sample_id), b"mp4")
        if marker:
            outputs.record_success(record(sample_id))
    outputs.destination.put("state/done/torn-marker.json", b'{"sample_id": "torn-')
    outputs.record_failure({"sample_id": "bad", "row_key": "k-bad", "kind": "bad input", "error": "no face"})
    outputs.record_failure({"sample_id": "flaky", "row_key": "k-flaky", "kind": "group lost", "error": "gone"})
    assert outputs.resume_index() == ({"both": None}, {"k-both": "both", "k-bad": "bad"})
    outputs.finalize({})  # folds the done markers into state/done.parquet
    assert outputs.destination.exists("state/done.parquet")
    outputs.destination.put(outputs.video_name("late"), b"mp4")
    outputs.record_success(record("late"))  # after the fold: read as a marker
    outputs.destination.delete("state/done/both.json")  # gone from the listing: the fold's record is not trusted
    assert outputs.resume_index() == ({"late": None}, {"k-late": "late", "k-bad": "bad"})


def test_one_job_per_prefix(object_store):
    first, second = ObjectStoreOutputs(object_store.uri("held")), ObjectStoreOutputs(object_store.uri("held"))
    with first.locked():
        with pytest.raises(EchoVideoInputError, match="another job is writing into s3://echovideo/held"):
            with second.locked():
                pass
    with second.locked():  # released at the end of the first
        pass
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    second.destination.put("state/job.lock", json.dumps({
        "token": "x", "who": "a crashed job", "renewed": time.time(), "host": os.uname().nodename,
        "pid": int(dead.stdout)}).encode())
    with second.locked():  # its holder's process is gone from this host: stale at once
        pass


@pytest.fixture(params=["seaweedfs", "file"])
def prefix(request, tmp_path):
    """An output prefix on the real S3 server, or a file:// URI (the same object-store code on a local disk)."""
    if request.param == "file":
        return f"file://{tmp_path}/out"
    return request.getfixturevalue("object_store").uri(f"race-{uuid.uuid4().hex[:8]}")


def test_a_driver_whose_renewal_stalled_past_the_lease_age_is_fenced_by_the_one_that_took_over(prefix, monkeypatch):
    import ray_jobs.object_outputs as object_outputs

    monkeypatch.setattr(object_outputs, "LEASE_S", 1.0)
    monkeypatch.setattr(object_outputs, "LEASE_RENEW_S", 0.2)
    first, second = ObjectStoreOutputs(prefix), ObjectStoreOutputs(prefix)
    stalled = threading.Event()
    real_confirm = ObjectStoreOutputs._confirm

    def confirm(self):  # the first driver's renewals stall (a paused process, a partitioned link)
        if self is first and stalled.is_set():
            return True
        return real_confirm(self)

    monkeypatch.setattr(ObjectStoreOutputs, "_confirm", confirm)
    with first.locked():
        first.record_success(record("before"))  # written while the lease was its own: kept
        with pytest.raises(EchoVideoInputError, match="another job is writing"):
            with second.locked():
                pass
        stalled.set()
        deadline = time.monotonic() + 60
        while True:  # the lease lapses LEASE_S after its last renewal; the second job takes it over
            try:
                with second.locked():
                    second.record_success(record("second"))
                    stalled.clear()  # the first wakes up: its next write must not happen
                    first.confirmed_at = 0.0
                    with pytest.raises(object_outputs.LeaseLost, match="another job took over"):
                        first.record_success(record("after"))
                    assert "pid" in first.lost_to
                    # a write already in flight when the lease was lost lands, and is ignored by resume
                    first.destination.put("state/done/inflight.json", json.dumps(
                        {**record("inflight"), "lease": first.token, "written": time.time() + 1}).encode())
                    for name in ("before", "second", "inflight"):
                        second.destination.put(f"videos/{name}.mp4", b"\0")
                    assert set(second.resume_index()[0]) == {"before", "second"}
                    assert (second._lease() or {}).get("token") == second.token  # never overwritten by the first
                break
            except EchoVideoInputError as exc:
                if "another job is writing" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
    assert not second.destination.exists("state/done/after.json")


def test_credentials_only_in_the_drivers_environment_reach_the_ranks_and_a_node_without_them_stops_at_once(
        local_ray, object_store, face_path, tmp_path, monkeypatch):
    """The cluster was started without storage credentials; the driver has them in its environment only (no
    credentials in the URI). The ranks get them; listed without the secret, the per-node check stops the job
    in seconds with one line naming the node, the location and the fix, before any replica exists."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    def output(name: str) -> str:  # credentials in the environment only, not in the URI
        return f"s3://{BUCKET}/{name}?endpoint_override={object_store.endpoint}&scheme=http&region=us-east-1"

    rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person waves", "identity": str(face_path)}])
    settings = {"parallel.ulysses": 1, "parallel.replicas": 1}
    report = run_job(job(rows, output(f"env-{uuid.uuid4().hex[:8]}"), **settings), progress=False)
    assert report.rendered == 1 and report.summary["ok"] == 1 and report.rebuilds == 0
    started = time.monotonic()
    with pytest.raises(EchoVideoInputError, match=r"job.output: node [0-9.]+: cannot read and write job.output "
                                                  r"s3://echovideo/env-.*resources.env lists which"):
        run_job(job(rows, output(f"env-{uuid.uuid4().hex[:8]}"), **settings, **{"resources.env": ["AWS_ACCESS_KEY_ID"]}),
                progress=False)
    assert time.monotonic() - started < 60
    assert SECRET_KEY not in open(os.path.join(tmp_path, "p.jsonl")).read()


@pytest.mark.parametrize("command", ["run", "export", "eval"])
def test_a_misspelt_or_plain_http_store_uri_is_one_line_naming_the_fix(command, object_store, tmp_path, face_path,
                                                                        capsys):
    """`?endpoint_overide=` and a plain-HTTP store reached without `scheme=http`: exit 2, one line, the fix."""
    from echovideo.cli import main

    good = object_store.uri(f"bad-{command}-{uuid.uuid4().hex[:6]}")
    misspelt = good.replace("endpoint_override", "endpoint_overide")
    tls = good.replace("&scheme=http", "")
    for uri, says in ((misspelt, "endpoint_overide"), (tls, "scheme=http")):
        if command == "run":
            rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person waves", "identity": str(face_path)}])
            job_file = tmp_path / "job.yaml"
            job_file.write_text(yaml.safe_dump({"model": {"preset": "tiny"}, "dataset": {"prompts": str(rows)},
                                                "job": {"output": uri}}))
            argv = ["run", str(job_file)]
        else:
            argv = ["export", uri, "--format", "csv", "--to", str(tmp_path / "x")] if command == "export" else \
                ["eval", uri]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert says in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert SECRET_KEY not in err
