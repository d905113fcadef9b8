"""Helpers for tests that run real jobs: a job spec with small defaults, dataset files, reading outputs back."""

import json
import os
import subprocess
import sys
from pathlib import Path

import av
import pyarrow.parquet as pq

from ray_jobs.data.job import parse_job

FRAMES = 5


def job(dataset: Path, out: Path, **overrides):
    """A tiny-model job on CPU; `overrides` as section.key=value keyword pairs ({"parallel.ulysses": 1})."""
    raw = {"model": {"preset": "tiny", "dtype": "fp32"},
           "parallel": {"ulysses": 2, "replicas": 2},
           "resources": {"accelerator": "cpu", "cpus_per_rank": 1, "group_timeout_s": 60, "step_timeout_s": 120},
           "dataset": {"prompts": str(dataset), "mode": "rows"},
           "generation": {"height": 32, "width": 32, "frames": FRAMES, "steps": 2},
           "job": {"output": str(out), "seed": 7}}
    for key, value in overrides.items():
        section, name = key.split(".")
        raw.setdefault(section, {})[name] = value
    return parse_job(raw, "test")


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def read_frames(path) -> int:
    with av.open(str(path)) as container:
        return sum(1 for _ in container.decode(video=0))


def manifest(out: Path) -> list[dict]:
    return pq.read_table(out / "manifest.parquet").to_pylist()


def gallery_data(out: Path) -> dict:
    """What the gallery page shows: its data file, read as the page's script reads it."""
    text = (out / "gallery-data.js").read_text()
    assert text.startswith("window.GALLERY=") and text.endswith(";\n")
    return json.loads(text.removeprefix("window.GALLERY=").removesuffix(";\n"))


def assert_exactly_once(out: Path, expected_ok: int) -> list[dict]:
    """Every ok sample once in the manifest, its mp4 whole, no other file and no temp file left behind."""
    rows = [r for r in manifest(out) if r["status"] == "ok"]
    assert len(rows) == len({r["sample_id"] for r in rows}) == expected_ok
    for row in rows:
        assert read_frames(out / row["path"]) == FRAMES
    assert sorted(p.name for p in (out / "videos").iterdir()) == sorted(Path(r["path"]).name for r in rows)
    assert not [p for folder in ("videos", "posters") for p in (out / folder).iterdir() if ".tmp" in p.name]
    return rows


def start_run(job: str, tiny_root: Path) -> subprocess.Popen:
    """`echovideo run JOB` as a user starts it, in a session of its own (killing the group takes its embedded
    Ray too), on the session's tiny checkpoint."""
    env = {**os.environ, "ECHOVIDEO_CACHE": str(tiny_root.parent)}
    env.pop("RAY_ADDRESS", None)
    return subprocess.Popen([sys.executable, "-m", "echovideo", "run", job], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
