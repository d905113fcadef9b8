"""The job file (YAML): validated against a schema with errors that name the key, overridable with `--set`."""

import reprlib
from dataclasses import dataclass, fields
from pathlib import Path

import yaml

from echovideo.errors import EchoVideoInputError
from echovideo.locations import check_location, is_uri, public_name
from echovideo.sampling import GenerationOptions
from echovideo.yaml_files import read_yaml_file
from parallel.config import ParallelConfig

# section -> key -> (accepted types, default). `None` default with no type check means "optional".
SCHEMA: dict[str, dict[str, tuple[tuple[type, ...], object]]] = {
    "model": {"preset": ((str,), None), "checkpoint": ((str,), None), "dtype": ((str,), "auto"),
              "scheduler": ((str,), "dpm"), "compile": ((bool,), False)},
    "parallel": {"ulysses": ((int,), 1), "ring": ((int,), 1), "cfg": ((int,), 1), "replicas": ((int, str), "auto")},
    "resources": {"accelerator": ((str,), "auto"), "cpus_per_rank": ((int, float), 1),
                  "group_timeout_s": ((int, float), 300), "step_timeout_s": ((int, float), 600),
                  "start_timeout_s": ((int, float), 1800),
                  "env": ((list,), None)},  # variables the ranks get from the driver (see ray_jobs.store.access)
    "dataset": {"prompts": ((str,), None), "identities": ((str,), None), "mode": ((str,), "rows"),
                "count": ((int,), None), "seed": ((int,), 0), "columns": ((dict,), {}), "limit": ((int,), None),
                "target": ((int,), None)},  # stop taking new rows once this many clips passed the gate
    "generation": {f.name: ((type(f.default),) if not isinstance(f.default, float) else (int, float), f.default)
                   for f in fields(GenerationOptions) if f.name != "seed"},
    "job": {"output": ((str,), None), "retries": ((int,), 3), "seed": ((int,), 0), "max_rebuilds": ((int,), 4)},
    # Per-clip scores (echovideo.metrics.quality) and the gate that marks clips below it `rejected`; a rejected
    # clip rendered again with fresh seeds up to `retries` more times, the first or the best kept (data.attempts).
    "quality": {"scores": ((bool,), True), "min_identity": ((int, float), None),
                "min_face_share": ((int, float), None), "review": ((str,), None),
                "retries": ((int,), 0), "keep": ((str,), "first")},
}
MODES = ("rows", "cross", "sampled")
KEEPS = ("first", "best")  # quality.keep: which passing attempt of a row is its clip (data.attempts)
ACCELERATORS = ("auto", "gpu", "npu", "cpu")
DEVICE_KIND = {"gpu": "cuda", "npu": "npu", "cpu": "cpu"}  # an accelerator's torch device type
IN_PROCESS = "<in-process dataset>"  # dataset.prompts when the rows come from the Python API
DEFAULT_COLUMNS = {"prompt": "prompt", "identity": "identity", "image": "image", "sample_id": "sample_id"}


def _check_type(path: str, value, types: tuple[type, ...]) -> None:
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):  # YAML true is no int
        names = " or ".join(t.__name__ for t in types)
        raise EchoVideoInputError(path, f"{reprlib.repr(value)} is a {type(value).__name__}, expected {names}",
                                  "fix the job file")


@dataclass
class JobSpec:
    model: dict
    parallel: dict
    resources: dict
    dataset: dict
    generation: dict
    job: dict
    quality: dict
    source: str = ""
    rows: object = None  # a `tables.Table` given in-process (the Ray Data API) instead of dataset.prompts

    @property
    def output(self) -> str:
        """A local folder (made absolute by the driver) or an object-store URI."""
        return self.job["output"]

    @property
    def output_name(self) -> str:
        """The output as shown to people and logs: a URI without credentials or query."""
        return public_name(self.output) if is_uri(self.output) else self.output

    @property
    def ranks_per_replica(self) -> int:
        return self.parallel["ulysses"] * self.parallel["ring"] * self.parallel["cfg"]

    def columns(self) -> dict:
        return {**DEFAULT_COLUMNS, **self.dataset["columns"]}

    def base_options(self) -> GenerationOptions:
        return GenerationOptions(**self.generation)


def apply_override(raw: dict, assignment: str) -> None:
    """`section.key=value` (value parsed as YAML) into the raw job mapping."""
    if "=" not in assignment or "." not in assignment.split("=", 1)[0]:
        raise EchoVideoInputError("--set", f"{assignment!r} is not section.key=value", "e.g. --set parallel.replicas=2")
    key, value = assignment.split("=", 1)
    section, name = key.split(".", 1)
    raw.setdefault(section, {})[name] = yaml.safe_load(value)


def parse_job(raw: dict, source: str = "") -> JobSpec:
    """Relative paths in the job are relative to the driver's working directory (what `ray job submit
    --working-dir` ships), not to the job file, and are made absolute before anything reaches a rank."""
    if not isinstance(raw, dict):
        raise EchoVideoInputError(source or "job", "the job file is not a YAML mapping", "see configs/jobs/demo.yaml")
    unknown = sorted(set(raw) - set(SCHEMA), key=str)
    if unknown:
        raise EchoVideoInputError(str(unknown[0])[:60], "unknown section", f"use only {sorted(SCHEMA)}")
    sections = {}
    for section, keys in SCHEMA.items():
        given = raw.get(section) or {}
        if not isinstance(given, dict):
            raise EchoVideoInputError(section, f"{reprlib.repr(given)} is not a mapping", "indent its keys under it")
        extra = sorted(set(given) - set(keys), key=str)
        if extra:
            raise EchoVideoInputError(f"{section}.{str(extra[0])[:60]}", "unknown key", f"{section} takes {sorted(keys)}")
        values = {}
        for key, (types, default) in keys.items():
            value = given.get(key, default)
            if value is not None:
                _check_type(f"{section}.{key}", value, types)
            values[key] = value
        sections[section] = values
    spec = JobSpec(**sections, source=source)
    _check_meaning(spec)
    _make_paths_absolute(spec)
    return spec


def _make_paths_absolute(spec: JobSpec) -> None:
    """Local paths resolved here, in the driver: a rank actor's working directory is not the driver's (on a
    running cluster it is a Ray session folder), so a relative output or checkpoint would land elsewhere."""
    for section, key in (("job", "output"), ("model", "checkpoint"), ("dataset", "prompts"),
                         ("dataset", "identities"), ("quality", "review")):
        value = getattr(spec, section)[key]
        if value is not None:
            check_location(value, f"{section}.{key}")
        if value is not None and "://" not in value and value != IN_PROCESS:
            getattr(spec, section)[key] = str(Path(value).expanduser().absolute())
    if not is_uri(spec.job["output"]) and in_ray_package(spec.job["output"]):
        raise EchoVideoInputError(
            "job.output", f"{spec.job['output']} is inside the folder Ray unpacked `--working-dir` into, which is "
            "deleted with the Ray session and is a new folder for every submission (outputs lost, no resume)",
            "give an absolute path on durable shared storage or an object-store URI, e.g. "
            "--set job.output=/mnt/shared/out or s3://bucket/out")


def in_ray_package(path: str) -> bool:
    """Inside a runtime-env package Ray unpacked (`.../runtime_resources/<kind>_files/_ray_pkg_<hash>/...`)."""
    parts = Path(path).parts
    return "runtime_resources" in parts and any(part.startswith("_ray_pkg_") for part in parts)


def _check_meaning(spec: JobSpec) -> None:
    m, p, d, r = spec.model, spec.parallel, spec.dataset, spec.resources
    if (m["preset"] is None) == (m["checkpoint"] is None):
        raise EchoVideoInputError("model", "give exactly one of preset or checkpoint", "e.g. preset: tiny")
    if m["preset"] not in (None, "tiny"):
        raise EchoVideoInputError("model.preset", f"unknown preset {reprlib.repr(m['preset'])}", "use tiny or a checkpoint")
    for key in ("ulysses", "ring"):
        if p[key] < 1:
            raise EchoVideoInputError(f"parallel.{key}", f"{p[key]} must be >= 1", "use 1 to disable")
    if p["cfg"] not in (1, 2):
        raise EchoVideoInputError("parallel.cfg", f"{p['cfg']} must be 1 or 2", "CFG has two branches")
    if p["replicas"] != "auto" and (isinstance(p["replicas"], str) or p["replicas"] < 1):
        raise EchoVideoInputError("parallel.replicas", f"{reprlib.repr(p['replicas'])} is not auto or >= 1", "e.g. auto")
    if r["env"] is not None and not all(isinstance(n, str) and n for n in r["env"]):
        raise EchoVideoInputError("resources.env", "must list environment variable names",
                                  "e.g. env: [AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY]")
    if r["accelerator"] not in ACCELERATORS:
        raise EchoVideoInputError("resources.accelerator", f"{reprlib.repr(r['accelerator'])} is unknown", f"use {ACCELERATORS}")
    if d["prompts"] is None:
        raise EchoVideoInputError("dataset.prompts", "missing", "a parquet, jsonl or csv path or URI")
    if d["mode"] not in MODES:
        raise EchoVideoInputError("dataset.mode", f"{reprlib.repr(d['mode'])} is unknown", f"use one of {MODES}")
    if d["mode"] in ("cross", "sampled") and d["identities"] is None:
        raise EchoVideoInputError("dataset.identities", f"mode {d['mode']} pairs prompts with identities",
                                  "give an identities table")
    for role, column in d["columns"].items():
        if role not in DEFAULT_COLUMNS or not isinstance(column, str):
            raise EchoVideoInputError(f"dataset.columns.{str(role)[:60]}", f"{reprlib.repr(column)} is not a column "
                                      "name for a known role", f"map {sorted(DEFAULT_COLUMNS)} to column names")
    if d["limit"] is not None and d["limit"] < 1:
        raise EchoVideoInputError("dataset.limit", f"{d['limit']} must be >= 1", "leave it out to render every row")
    if d["target"] is not None and d["target"] < 1:
        raise EchoVideoInputError("dataset.target", f"{d['target']} must be >= 1", "leave it out to render every row")
    if d["mode"] == "sampled" and (d["count"] is None or d["count"] < 1):
        raise EchoVideoInputError("dataset.count", "sampled mode needs a positive count", "e.g. count: 1000")
    if spec.job["output"] is None:
        raise EchoVideoInputError("job.output", "missing", "an output folder, e.g. out/demo")
    if spec.job["retries"] < 1:
        raise EchoVideoInputError("job.retries", "must be >= 1 (attempts per sample)", "e.g. 3")
    _check_quality(spec.quality)
    ParallelConfig(cfg=p["cfg"]).check_guidance(spec.base_options().validate().use_cfg, "parallel.cfg",
                                                "use parallel.cfg: 1, or generation.guidance > 1")


def _check_quality(quality: dict) -> None:
    if quality["retries"] < 0:
        raise EchoVideoInputError("quality.retries", f"{quality['retries']} is negative",
                                  "0 keeps every first render; e.g. 2 renders a rejected clip up to twice more")
    if quality["keep"] not in KEEPS:
        raise EchoVideoInputError("quality.keep", f"{quality['keep']!r} is not first or best",
                                  "first: the first attempt that passes; best: the best of all attempts")
    gated = quality["min_identity"] is not None or quality["min_face_share"] is not None or quality["review"]
    if quality["retries"] and not gated:
        raise EchoVideoInputError("quality.retries", "retries without a gate: every clip passes, none is retried",
                                  "set quality.min_identity or quality.min_face_share (or a review)")
    for key in ("min_identity", "min_face_share"):
        value = quality[key]
        if value is not None and not 0 <= value <= 1:
            raise EchoVideoInputError(f"quality.{key}", f"{value} is outside 0..1", "e.g. 0.3, or leave it out")
        if value is not None and not quality["scores"]:
            raise EchoVideoInputError(f"quality.{key}", "a gate on scores that quality.scores: false turns off",
                                      "keep quality.scores: true, or drop the gate")


def load_job(path: str | Path, overrides: list[str] = ()) -> JobSpec:
    raw = read_yaml_file(path, "JOB", "configs/jobs/demo.yaml")
    for assignment in overrides:
        apply_override(raw, assignment)
    return parse_job(raw, str(path))
