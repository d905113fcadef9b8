"""Python API: render the rows of a Ray Dataset with the job driver (replicas, exactly-once, retries, resume)
and get the manifest back as a Ray Dataset.

    import ray
    from ray_jobs.api import render_dataset

    rows = ray.data.read_parquet("s3://bucket/prompts/")        # prompt, identity (or image), ...
    manifest = render_dataset(rows, "configs/jobs/demo.yaml", ["job.output=s3://bucket/out"])
    manifest.filter(lambda r: r["status"] == "ok").show(5)
"""

import logging
from pathlib import Path

import ray

from echovideo.yaml_files import read_yaml_file
from ray_jobs.data.job import IN_PROCESS, apply_override, parse_job
from ray_jobs.data.tables import RayDataTable
from ray_jobs.runtime.engine import run_job
from ray_jobs.store.destination import Destination

logger = logging.getLogger("ray_jobs")


def render_dataset(rows: "ray.data.Dataset", job: str | Path | dict, overrides: list[str] = (),
                   address: str | None = None, progress: bool = True) -> "ray.data.Dataset":
    """Every row of `rows` (columns as in a dataset table: prompt, identity or image, optional sample_id and
    per-row settings) rendered by the job's model and layout. Of the job file's `dataset` only `limit` and
    `columns` apply: its tables, and with them `mode` (cross, sampled: how to combine those tables), are
    replaced by the rows, which are the requests as given.
    The Dataset is executed once (up to the job's `limit` rows), streamed through a spill on the driver's disk
    (`ray_jobs.data.spill`), so its UDFs run once per row whatever the driver asks of it, and the first clips render
    while later rows are still computed."""
    raw = dict(job) if isinstance(job, dict) else read_yaml_file(job, "job", "configs/jobs/demo.yaml")
    for assignment in overrides:
        apply_override(raw, assignment)
    dataset = dict(raw.get("dataset") or {})
    if dataset.get("mode", "rows") != "rows":
        logger.warning("dataset.mode %s of %s is not used: a Ray Dataset's rows are rendered as given",
                       dataset["mode"], job if not isinstance(job, dict) else "the job")
    dataset = {key: value for key, value in dataset.items() if key in ("limit", "columns")}
    dataset.update(prompts=IN_PROCESS, identities=None, mode="rows")
    spec = parse_job({**raw, "dataset": dataset}, str(job) if not isinstance(job, dict) else "python")
    spec.rows = RayDataTable(rows, limit=spec.dataset["limit"])
    try:
        run_job(spec, address, progress)
    finally:
        spec.rows.close()
    outputs = Destination(spec.output)
    return ray.data.read_parquet(outputs.path("manifest.parquet"), filesystem=outputs.fs)
