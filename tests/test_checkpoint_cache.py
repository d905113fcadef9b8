"""`model.checkpoint` as an object-store URI: each node downloads it once (concurrent ranks wait for that one
download), a half download is never used, and a job with two replicas on one node renders from it."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import own_processes
import pyarrow.fs as pfs
import pytest
from jobs import job, manifest, write_jsonl
from object_store import SECRET_KEY

from echovideo.checkpoint_cache import (
    DOWNLOADS_LOG,
    LISTING,
    PARTIAL,
    cache_root,
    loaded_weights,
    local_checkpoint,
)
from echovideo.checkpoint_identity import check_pinned
from echovideo.errors import CheckpointError
from ray_jobs.runtime.engine import run_job

LOAD = textwrap.dedent("""
    import sys
    from echovideo.checkpoint_cache import local_checkpoint
    print(local_checkpoint(sys.argv[1]))
""")


def upload(object_store, folder, key: str) -> str:
    pfs.copy_files(str(folder.resolve()), f"echovideo/{key}", source_filesystem=pfs.LocalFileSystem(),
                   destination_filesystem=object_store.filesystem())
    return object_store.uri(key)


def downloads(cache, key: str) -> list[str]:
    log = cache / "checkpoints" / DOWNLOADS_LOG
    return [line for line in log.read_text().splitlines() if f"/{key} " in line] if log.exists() else []


def test_concurrent_ranks_on_a_node_download_once_and_a_half_download_is_never_used(object_store, tiny_root,
                                                                                     tmp_path, monkeypatch):
    uri = upload(object_store, tiny_root, "ckpts/concurrent")
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tmp_path)}
    ranks = [subprocess.Popen([sys.executable, "-c", LOAD, uri], env=env, stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    folders = {rank.communicate(timeout=300)[0].strip() for rank in ranks}
    assert all(rank.returncode == 0 for rank in ranks) and len(folders) == 1
    assert len(downloads(tmp_path, "ckpts/concurrent")) == 1
    (folder,) = folders
    sizes = {p.relative_to(tiny_root): p.stat().st_size for p in tiny_root.rglob("*") if p.is_file()}
    assert {p.relative_to(folder): p.stat().st_size for p in Path(folder).rglob("*")
            if p.is_file() and p.name != LISTING} == sizes

    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tmp_path))
    (cache_root() / folder / "transformer" / "config.json").write_text("{")  # damaged after the download
    assert str(local_checkpoint(uri)) == folder and len(downloads(tmp_path, "ckpts/concurrent")) == 2
    assert not [p for p in cache_root().iterdir() if ".partial-" in p.name]
    assert SECRET_KEY not in (cache_root() / DOWNLOADS_LOG).read_text()


def test_a_job_with_two_replicas_on_one_node_loads_the_checkpoint_from_the_store(object_store, tiny_root, local_ray,
                                                                                 tmp_path, face_path):
    uri = upload(object_store, tiny_root, "ckpts/job")
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"a person waves {i}", "identity": str(face_path)}
                                                 for i in range(2)])
    spec = job(prompts, tmp_path / "out", **{"model.preset": None, "model.checkpoint": uri, "parallel.ulysses": 1,
                                             "parallel.replicas": 2})
    report = run_job(spec, progress=False)
    assert report.rendered == 2 and report.summary["replicas_started"] == 2
    assert len(downloads(tiny_root.parent, "ckpts/job")) == 1  # the workers' cache (ECHOVIDEO_CACHE)
    assert all(row["status"] == "ok" for row in manifest(tmp_path / "out"))
    driver_log = (tmp_path / "out" / "logs" / "driver.log").read_text()
    assert "checkpoint ready on node" in driver_log  # fetched per node before any replica's start deadline
    for path in (tmp_path / "out").rglob("*"):
        if path.is_file() and path.suffix not in (".mp4", ".jpg"):
            assert SECRET_KEY.encode() not in path.read_bytes(), path


STALL = textwrap.dedent("""
    import sys, time
    from echovideo.checkpoint_cache import local_checkpoint

    def stall(done, total):  # killed here, mid-download, with part of the files in its staging folder
        print("stalled", flush=True)
        time.sleep(600)

    local_checkpoint(sys.argv[1], stall)
""")


def test_replaced_weights_are_fetched_again_and_change_the_ids_and_a_killed_download_leaves_nothing(
        object_store, tiny_root, tmp_path, monkeypatch, face_path):
    from ray_jobs.data.samples import iter_samples

    uri = upload(object_store, tiny_root, "ckpts/replaced")
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tmp_path)}
    own_processes.killed_at([sys.executable, "-c", STALL, uri], "stalled", env)
    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tmp_path))
    assert [p for p in cache_root().iterdir() if PARTIAL in p.name]  # what a SIGKILLed download leaves
    prompts = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a person waves", "identity": str(face_path)}])
    spec = job(prompts, tmp_path / "out", **{"model.preset": None, "model.checkpoint": uri})
    before = next(iter_samples(spec, "cpu")).sample_id
    folder = local_checkpoint(uri)
    assert not [p for p in cache_root().iterdir() if PARTIAL in p.name]
    assert local_checkpoint(uri) == folder and len(downloads(tmp_path, "ckpts/replaced")) == 1  # current: kept

    time.sleep(1.1)  # a store's modification times have one-second resolution
    config = folder / "scheduler" / "scheduler_config.json"
    with object_store.filesystem().open_output_stream("echovideo/ckpts/replaced/scheduler/scheduler_config.json") as out:
        out.write(config.read_bytes())  # the same name re-uploaded: other weights as far as anyone can tell
    assert next(iter_samples(spec, "cpu")).sample_id == before  # a running job keeps the weights it pinned
    rerun = job(prompts, tmp_path / "out", **{"model.preset": None, "model.checkpoint": uri})
    assert next(iter_samples(rerun, "cpu")).sample_id != before  # the next run names the new weights
    folder_now, weights_now = loaded_weights(uri)  # a rank started later by the old job loads the new weights...
    assert folder_now == folder and len(downloads(tmp_path, "ckpts/replaced")) == 2
    with pytest.raises(CheckpointError, match="changed while the job ran"):  # ...and refuses them
        check_pinned(weights_now, spec.model["pinned"], "ckpts/replaced")
    check_pinned(weights_now, rerun.model["pinned"], "ckpts/replaced")


def test_a_download_that_cannot_fit_is_refused_before_it_starts_naming_the_sizes(object_store, tiny_root, tmp_path,
                                                                                monkeypatch):
    """The real disk's free space, with more to keep free than the disk has (other tests write meanwhile: a
    margin of bytes would race them)."""
    import shutil

    uri = upload(object_store, tiny_root, "ckpts/too-big")
    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tmp_path))
    monkeypatch.setenv("ECHOVIDEO_CACHE_KEEP_FREE_GB", str(shutil.disk_usage(tmp_path).free / 2**30 + 100))
    with pytest.raises(CheckpointError, match=r"model.checkpoint.*GiB free.*ECHOVIDEO_CACHE_KEEP_FREE_GB"):
        local_checkpoint(uri)
    assert not [p for p in cache_root().iterdir() if PARTIAL in p.name] and not downloads(tmp_path, "ckpts/too-big")
    monkeypatch.setenv("ECHOVIDEO_CACHE_KEEP_FREE_GB", "0")
    assert (local_checkpoint(uri) / LISTING).is_file()
