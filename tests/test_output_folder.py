"""The output folder is the job's alone: one job at a time (a lock that a dead holder never leaves behind), no
write, append or delete through a symbolic link planted inside it, and only our own temp names cleaned up.
"""

import os
import subprocess
import sys
import textwrap

import pytest
from jobs import job, manifest, read_frames, write_jsonl

from echovideo.cli import main
from echovideo.errors import EchoVideoInputError
from ray_jobs.data.redact import redact
from ray_jobs.runtime.engine import run_job
from ray_jobs.store import LocalOutputs

HOLD_LOCK = textwrap.dedent("""
    import sys, time
    from ray_jobs.store import LocalOutputs
    with LocalOutputs(sys.argv[1]).locked():
        print("held", flush=True)
        time.sleep(600)
""")


def test_a_second_job_into_a_held_folder_stops_naming_the_holder_and_a_dead_holder_leaves_no_lock(
        tmp_path, face_path, capsys):
    out = tmp_path / "out"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(EchoVideoInputError, match=rf"another job is writing into .*pid {holder.pid} since"):
            with LocalOutputs(out).locked():
                pass
        prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "identity": str(face_path)}])
        job_file = tmp_path / "job.yaml"
        job_file.write_text(f"model: {{preset: tiny}}\ndataset: {{prompts: {prompts}}}\njob: {{output: {out}}}\n")
        assert main(["run", str(job_file)]) == 2
        assert "another job is writing into" in capsys.readouterr().err
    finally:
        holder.kill()  # killed, not stopped: it never releases the lock itself
        holder.wait()
    with LocalOutputs(out).locked():  # the kernel dropped the dead holder's lock
        assert f"pid {os.getpid()}" in (out / "state" / "job.lock").read_text()


def test_links_planted_in_the_output_folder_are_never_written_through(local_ray, tmp_path, face_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "victim.mp4"
    victim.write_bytes(b"precious")
    unrelated = outside / ".x.tmp.bak"
    unrelated.write_bytes(b"keep me")
    out = tmp_path / "out"
    store = LocalOutputs(out)
    (out / "videos" / "mine.mp4").symlink_to(victim)  # the final name of the sample below
    (out / "videos" / ".x.tmp.bak").symlink_to(unrelated)  # a temp-looking name that is not ours
    (out / "posters" / ".y.tmp.jpg").write_bytes(b"not ours either")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person smiles", "identity": str(face_path),
                                                  "sample_id": "mine"}])
    spec = job(prompts, out, **{"parallel.ulysses": 1, "parallel.replicas": 1})
    report = run_job(spec, progress=False)

    assert report.rendered == 1 and victim.read_bytes() == b"precious" and unrelated.read_bytes() == b"keep me"
    video = out / "videos" / "mine.mp4"
    assert not video.is_symlink() and read_frames(video) == 5  # the link was replaced, not followed
    assert (out / "videos" / ".x.tmp.bak").is_symlink() and (out / "posters" / ".y.tmp.jpg").exists()
    assert [r["status"] for r in manifest(out)] == ["ok"]
    assert store.folder == out

    journal = outside / "journal.jsonl"
    journal.write_text("")
    (out / "state" / "failed.jsonl").symlink_to(journal)  # appended to on the next failure: refused up front
    with pytest.raises(EchoVideoInputError, match="failed.jsonl is a symbolic link"):
        run_job(spec, progress=False)
    assert journal.read_text() == ""
    (out / "state" / "failed.jsonl").unlink()
    (out / "logs").rename(tmp_path / "real-logs")
    (out / "logs").symlink_to(outside, target_is_directory=True)
    with pytest.raises(EchoVideoInputError, match="logs is a symbolic link"):
        run_job(spec, progress=False)
    assert sorted(p.name for p in outside.iterdir()) == [".x.tmp.bak", "journal.jsonl", "victim.mp4"]


@pytest.mark.parametrize("text, shown", [
    ("cannot read (s3://AK:SECRET@b/x.jpg?token=SECRET).", "cannot read (s3://***@b/x.jpg?token=***)."),
    ("see s3://b/x_(1).jpg, then", "see s3://b/x_(1).jpg, then"),
    ("(gs://b/y.png?sig=SECRET&w=1)", "(gs://b/y.png?sig=***&w=1)"),
])
def test_redaction_keeps_the_text_around_a_uri(text, shown):
    assert redact(text) == shown


@pytest.mark.parametrize("typo", ["s3:/bucket/out?endpoint_override=127.0.0.1:9000", "gs:bucket/out"])
def test_a_store_uri_with_one_slash_is_refused_not_made_a_local_folder(typo, tmp_path, face_path, capsys,
                                                                       monkeypatch):
    """`s3:/bucket` once became a folder named `s3:` that the job filled, exit 0."""
    monkeypatch.chdir(tmp_path)
    rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person waves", "identity": str(face_path)}])
    job_file = tmp_path / "job.yaml"
    job_file.write_text(f"model: {{preset: tiny}}\ndataset: {{prompts: {rows}}}\njob: {{output: {tmp_path / 'x'}}}\n")
    scheme = typo.split(":", 1)[0]
    for argv in (["run", str(job_file), "--set", f"job.output={typo}"],
                 ["export", str(tmp_path / "x"), "--format", "csv", "--to", typo]):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and f"write {scheme}://bucket/out" in err and "Traceback" not in err, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "p.jsonl"]
