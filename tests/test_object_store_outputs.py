"""Job outputs in an object store (a real SeaweedFS on 127.0.0.1): a Ray job reading its dataset and photo from
the store and writing its clips there, its driver SIGKILLed mid-job and rerun; an upload that breaks half
way; the completion markers a resume trusts; one job per prefix."""

import io
import json
import os
import signal
import sys
import time
import uuid
from pathlib import Path

import pyarrow.fs as pfs
import pyarrow.parquet as pq
import pytest
import yaml
from jobs import job, read_frames, start_run, write_jsonl
from object_store import BUCKET, HANDED_KEY, HANDED_SECRET, SECRET_KEY
from ray import cloudpickle

import ray_jobs.store.destination as destination_module
from echovideo.errors import EchoVideoInputError
from ray_jobs.runtime.engine import run_job
from ray_jobs.runtime.worker import RankWorker
from ray_jobs.store.destination import Destination, UploadError
from ray_jobs.store.ledger import Ledger

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

    def ledger():
        return Ledger(Destination(object_store.uri("jobs/run"))).read()

    first = start_run(job, tiny_root)
    try:
        deadline = time.monotonic() + 300
        while len(ledger().done) < 2:
            assert first.poll() is None and time.monotonic() < deadline, "the job ended before it could be killed"
            time.sleep(0.2)
        first.send_signal(signal.SIGKILL)  # the driver only: no finalize, its lease left behind
        first.wait()
    finally:
        os.killpg(first.pid, signal.SIGKILL)  # its embedded Ray
    done_before = len(ledger().done)
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
    assert len(ledger().done) == SAMPLES and ledger().released and ledger().epoch == 2  # taken over once
    assert not [k for k in stored if "echovideo-tmp" in k]
    for row in rows:
        (tmp_path / "clip.mp4").write_bytes(read(fs, "jobs/run", row["path"]))
        assert read_frames(tmp_path / "clip.mp4") == 5
    for name in (*LAYOUT, *(k for k in stored if k.startswith("state/"))):  # credentials reach nothing we write
        assert SECRET_KEY.encode() not in read(fs, "jobs/run", name), name
    assert b"sample " in read(fs, "jobs/run", "logs/replica-0-rank-0.log")  # the ranks' logs came back

    from echovideo.cli import (
        main,  # `eval` on the store: the table from the manifest, its files uploaded
    )

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


def test_credentials_only_in_the_drivers_environment_reach_the_ranks_and_a_node_without_them_stops_at_once(
        local_ray, object_store, face_path, tmp_path, monkeypatch):
    """The cluster was started without storage credentials; the driver has them in its environment only (no
    credentials in the URI). The ranks get them, handed over in-process: no file Ray writes holds the secret
    (every file of the session folder: runtime_env_agent.log held it while it travelled as runtime_env). Listed without the secret, the
    per-node check stops the job in seconds with one line naming the node, the location and the fix, before
    any replica exists."""
    import shared_ray

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", HANDED_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", HANDED_SECRET)
    def output(name: str) -> str:  # credentials in the environment only, not in the URI
        return f"s3://{BUCKET}/{name}?endpoint_override={object_store.endpoint}&scheme=http&region=us-east-1"

    rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person waves", "identity": str(face_path)}])
    settings = {"parallel.ulysses": 1, "parallel.replicas": 1}
    report = run_job(job(rows, output(f"env-{uuid.uuid4().hex[:8]}"), **settings), progress=False)
    assert report.rendered == 1 and report.summary["ok"] == 1 and report.rebuilds == 0
    secret = HANDED_SECRET.encode()
    session = Path(shared_ray._running["temp"])
    holding = [str(path) for path in session.rglob("*") if path.is_file() and not path.is_socket()
               and secret in path.read_bytes()]
    assert holding == [], holding
    started = time.monotonic()
    with pytest.raises(EchoVideoInputError, match=r"job.output: node [0-9.]+: cannot read and write job.output "
                                                  r"s3://echovideo/env-.*resources.env lists which"):
        run_job(job(rows, output(f"env-{uuid.uuid4().hex[:8]}"), **settings, **{"resources.env": ["AWS_ACCESS_KEY_ID"]}),
                progress=False)
    assert time.monotonic() - started < 60


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
