"""The Ray Data API: a lazy `ray.data.Dataset` executed once and streamed through the driver in its order (a
1,000,000-row one leaves the driver's memory flat), the manifest back as a Ray Dataset."""

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

RUN = textwrap.dedent("""
    import json, resource, sys
    import ray
    from ray_jobs.api import render_dataset

    face, out = sys.argv[1], sys.argv[2]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    def rows_of(batch):  # three requests, each asked for again and again: every row passes the driver
        return {"prompt": [f"a person waves {i % 3}" for i in batch["id"]], "identity": [face] * len(batch["id"])}
    rows = ray.data.range(1_000_000).map_batches(rows_of)
    job = {"model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"replicas": 1},
           "resources": {"accelerator": "cpu"},
           "generation": {"height": 32, "width": 32, "frames": 5, "steps": 2}, "job": {"output": out}}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manifest = render_dataset(rows, job, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    summary = json.load(open(f"{out}/summary.json"))
    print(json.dumps({"rows": manifest.take_all(), "summary": summary, "grown_mb": (after - before) / 1024,
                      "peak_mb": after / 1024}))
""")


@pytest.mark.slow  # a million rows through a cluster of its own (CI runs it: -m slow)
def test_a_lazy_million_row_dataset_streams_through_the_driver(tmp_path, face_path, tiny_root):
    done = subprocess.run([sys.executable, "-c", RUN, str(face_path), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=1200, env={**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"driver grew {result['grown_mb']:.0f} MB (peak {result['peak_mb']:.0f} MB) over 1,000,000 rows")
    assert sorted(r["prompt"] for r in result["rows"]) == [f"a person waves {i}" for i in range(3)]
    assert all(r["status"] == "ok" for r in result["rows"])
    assert result["summary"]["duplicate_rows"] == 999_997, result["summary"]
    assert result["grown_mb"] < 250, result  # 1,000,000 rows held in the driver would be ~350 MB of dicts alone


def test_the_users_dataset_is_executed_once_whatever_the_driver_asks(local_ray, tmp_path, face_path):
    """Columns, count, the first-row check and the rows: 20 rows, the UDF runs 20 times (a file line a call:
    Ray Data runs it in other processes)."""
    import ray
    from jobs import job

    from ray_jobs.data.samples import iter_samples
    from ray_jobs.data.tables import RayDataTable
    from ray_jobs.data.validation import validate_dataset

    calls = tmp_path / "calls"

    def row_of(r):
        with open(calls, "a") as log:
            log.write(f"{r['id']}\n")
        return {"prompt": f"a person waves {r['id']}", "identity": str(face_path)}

    spec = job(tmp_path / "unused.jsonl", tmp_path / "out")
    spec.rows = RayDataTable(ray.data.range(20).map(row_of))
    try:
        assert validate_dataset(spec) is None  # streamed: counted as it is read
        samples = list(iter_samples(spec, "cpu"))
        assert spec.rows.count() == 20
    finally:
        spec.rows.close()
    assert len(samples) == 20 and not any(s.error for s in samples)
    assert sorted(map(int, calls.read_text().split())) == list(range(20))
    assert not spec.rows.spill.folder.exists()  # the spill is gone with the job


def test_the_first_rows_arrive_while_later_ones_are_still_computed(local_ray, tmp_path):
    """The UDF holds every row from 20,000 on until the test has read row 1: a Dataset materialised before its
    first row is handed on would never let it."""
    import ray

    from ray_jobs.data.tables import RayDataTable

    release, gave_up = tmp_path / "release", tmp_path / "gave-up"

    def rows_of(batch):  # a Dataset run to its end before row 1 is read passes here only by giving up
        deadline = time.time() + 120
        while batch["id"].max() >= 20_000 and not release.exists():
            if time.time() > deadline:
                gave_up.touch()
                break
            time.sleep(0.05)
        return {"prompt": [f"row {i}" for i in batch["id"]]}

    table = RayDataTable(ray.data.range(40_000, override_num_blocks=40).map_batches(rows_of, batch_size=1000))
    try:
        rows = table.rows()
        first = next(rows)
        assert first.values == {"prompt": "row 0"} and first.where == "dataset row 1"
        assert not gave_up.exists()
        release.touch()
        assert [row.values["prompt"] for row in rows] == [f"row {i}" for i in range(1, 40_000)]
        assert table.count() == 40_000
    finally:
        release.touch()
        table.close()


def test_a_dataset_that_fails_part_way_is_the_jobs_error_after_the_rows_before_it(local_ray, tmp_path):
    import ray

    from echovideo.errors import EchoVideoInputError
    from ray_jobs.data.tables import RayDataTable

    def rows_of(batch):
        if batch["id"].max() >= 30_000:
            raise ValueError("caption model out of memory")
        return {"prompt": [f"row {i}" for i in batch["id"]]}

    table = RayDataTable(ray.data.range(40_000, override_num_blocks=40).map_batches(rows_of, batch_size=1000))
    seen = []
    try:
        with pytest.raises(EchoVideoInputError, match="dataset.*caption model out of memory"):
            for row in table.rows():
                seen.append(row.values["prompt"])
    finally:
        table.close()
    assert seen == [f"row {i}" for i in range(len(seen))] and len(seen) >= 16_384
