"""The Ray Data API: a lazy 1,000,000-row `ray.data.Dataset` rendered with a `limit`, streamed through the
driver (its memory stays flat) in the Dataset's order, the manifest back as a Ray Dataset."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

RUN = textwrap.dedent("""
    import json, resource, sys, time
    import ray
    from ray_jobs.api import render_dataset

    face, out = sys.argv[1], sys.argv[2]
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    def row_of(r):  # the first block finishes last: Ray Data yields finished blocks first unless ordered
        if r["id"] == 0:
            time.sleep(3)
        return {"prompt": f"a person waves {r['id']}", "identity": face}
    rows = ray.data.range(1_000_000).map(row_of)
    job = {"model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"replicas": 1},
           "resources": {"accelerator": "cpu"}, "dataset": {"limit": 3},
           "generation": {"height": 32, "width": 32, "frames": 5, "steps": 2}, "job": {"output": out}}
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    manifest = render_dataset(rows, job, progress=False)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"rows": manifest.take_all(), "grown_mb": (after - before) / 1024, "peak_mb": after / 1024}))
""")


@pytest.mark.slow  # a million rows through a cluster of its own (CI runs it: -m slow)
def test_a_lazy_million_row_dataset_streams_through_the_driver(tmp_path, face_path, tiny_root):
    done = subprocess.run([sys.executable, "-c", RUN, str(face_path), str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent)})
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert sorted(r["prompt"] for r in result["rows"]) == [f"a person waves {i}" for i in range(3)]
    assert all(r["status"] == "ok" for r in result["rows"])
    assert result["grown_mb"] < 250, result  # 1,000,000 rows held in the driver would be ~350 MB of dicts alone


def test_the_users_dataset_is_executed_once_whatever_the_driver_asks(local_ray, tmp_path, face_path):
    """Columns, count, the first-row check and the rows: 20 rows, the UDF runs 20 times (a file line a call:
    Ray Data runs it in other processes)."""
    import ray

    from jobs import job
    from ray_jobs.dataset import iter_samples, validate_dataset
    from ray_jobs.tables import RayDataTable

    calls = tmp_path / "calls"

    def row_of(r):
        with open(calls, "a") as log:
            log.write(f"{r['id']}\n")
        return {"prompt": f"a person waves {r['id']}", "identity": str(face_path)}

    spec = job(tmp_path / "unused.jsonl", tmp_path / "out")
    spec.rows = RayDataTable(ray.data.range(20).map(row_of))
    assert validate_dataset(spec) == 20
    samples = list(iter_samples(spec, "cpu"))
    assert len(samples) == 20 and not any(s.error for s in samples)
    assert sorted(map(int, calls.read_text().split())) == list(range(20))
