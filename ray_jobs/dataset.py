"""Stream the prompt and identity tables (parquet, jsonl, csv; local or any pyarrow filesystem URI) into samples.

The driver never holds a table: rows arrive in record batches, and a sample carries its identity image's
bytes only while it is queued or in flight.
"""

import hashlib
import json
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import pyarrow.dataset as pds
import pyarrow.fs as pfs
import torch

from echovideo.devices import resolve_dtype
from echovideo.errors import EchoVideoInputError
from echovideo.images import decode_identity_image
from echovideo.sampling import GenerationOptions
from ray_jobs.job import JobSpec
from ray_jobs.redact import redact
from ray_jobs.worker import DEVICE_KIND

FORMATS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv"}
BATCH_ROWS = 1024
OVERRIDABLE = {f for f in GenerationOptions.__dataclass_fields__}  # per-row columns that override the job


@dataclass
class Sample:
    """One requested clip. `error` set means the row was rejected before rendering (it fails alone)."""

    sample_id: str
    prompt: str
    identity: str  # the reference as given (path, URI without credentials) or "<bytes sha256>"
    options: dict = field(default_factory=dict)
    image: bytes | None = None
    error: str | None = None
    attempts: int = 0
    row_key: str | None = None  # the row as given (see `row_key`): how a rerun knows it without reading the photo


def open_table(uri: str, key: str) -> pds.Dataset:
    suffix = next((s for s in FORMATS if uri.lower().endswith(s)), None)
    if suffix is None:
        raise EchoVideoInputError(key, f"{uri!r} is not .parquet, .jsonl or .csv", "convert or rename the table")
    try:
        return pds.dataset(uri, format=FORMATS[suffix])
    except (OSError, ValueError) as exc:
        raise EchoVideoInputError(key, f"cannot open {uri!r} ({exc})", "check the path or URI") from None


def iter_rows(table: pds.Dataset) -> Iterator[dict]:
    for batch in table.to_batches(batch_size=BATCH_ROWS):
        yield from batch.to_pylist()


def read_bytes(reference: str) -> bytes:
    """A local path or a pyarrow filesystem URI (s3://, gs://, hdfs://, file://)."""
    filesystem, path = pfs.FileSystem.from_uri(reference) if "://" in reference else (pfs.LocalFileSystem(), reference)
    with filesystem.open_input_stream(path) as stream:
        return stream.read()


class IdentityReader:
    """Image bytes and their content hash by reference; recent ones memoised (identities repeat in a job).

    Each new image is decoded once here, so an unreadable, empty or oversized photo fails its rows in the
    driver instead of occupying a replica.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.capacity = capacity

    def get(self, value) -> tuple[bytes, str, str]:
        """-> (bytes, sha256, display name); raises EchoVideoInputError naming the identity."""
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            key = hashlib.sha256(data).hexdigest()
            name = f"<bytes {key[:12]}>"
        elif isinstance(value, str) and value.strip():
            data, key, name = None, value, redact(value)
        else:
            raise EchoVideoInputError("identity", f"{value!r} is not an image path, URI or bytes", "fill the column")
        if key not in self.cache:
            if data is None:
                data = self._read(value, name)
            decode_identity_image(data, name, "identity")
            self.cache[key] = (data, hashlib.sha256(data).hexdigest())
            if len(self.cache) > self.capacity:
                self.cache.popitem(last=False)
        self.cache.move_to_end(key)
        return (*self.cache[key], name)

    @staticmethod
    def _read(reference: str, name: str) -> bytes:
        try:
            return read_bytes(reference)
        except (OSError, ValueError) as exc:
            raise EchoVideoInputError("identity", f"cannot read {name} ({type(exc).__name__}: {redact(str(exc))})",
                                      "check the path or URI") from None


def _pairs(spec: JobSpec) -> Iterator[tuple[dict, object]]:
    """(prompt row, identity value) in the dataset mode's order."""
    d, columns = spec.dataset, spec.columns()
    prompts = open_table(d["prompts"], "dataset.prompts")

    def identity_of(row: dict):  # a path/URI column, or the image bytes column
        value = row.get(columns["identity"])
        return value if value is not None else row.get(columns["image"])

    if d["mode"] == "rows":
        yield from ((row, identity_of(row)) for row in iter_rows(prompts))
        return
    identities = open_table(d["identities"], "dataset.identities")

    if d["mode"] == "cross":
        for prompt_batch in prompts.to_batches(batch_size=BATCH_ROWS):
            for identity_row in iter_rows(identities):
                for row in prompt_batch.to_pylist():
                    yield row, identity_of(identity_row)
        return
    rng = np.random.default_rng(d["seed"])  # sampled: seeded pairs of row indices, fetched a chunk at a time
    n_prompts, n_identities = prompts.count_rows(), identities.count_rows()
    for start in range(0, d["count"], BATCH_ROWS):
        size = min(BATCH_ROWS, d["count"] - start)
        p_index, i_index = rng.integers(0, n_prompts, size), rng.integers(0, n_identities, size)
        prompt_rows, identity_rows = prompts.take(p_index).to_pylist(), identities.take(i_index).to_pylist()
        yield from ((p, identity_of(i)) for p, i in zip(prompt_rows, identity_rows))


def sample_id(prompt: str, identity_hash: str, options: dict, basis: dict) -> str:
    """Deterministic from the content: the same request is the same file, whatever the row order or rank.

    `basis` is everything outside the row that changes the pixels (`id_basis`); `options` holds the row's
    generation settings (and its seed only when the row sets one).
    """
    payload = json.dumps({"prompt": prompt, "identity": identity_hash, "options": options, **basis},
                         sort_keys=True, ensure_ascii=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:24]


def derived_seed(job_seed: int, sid: str) -> int:
    return int(hashlib.sha256(f"{job_seed}:{sid}".encode()).hexdigest()[:15], 16)


def model_name(spec: JobSpec) -> str:
    return f"preset:{spec.model['preset']}" if spec.model["preset"] else f"checkpoint:{spec.model['checkpoint']}"


def id_basis(spec: JobSpec, accelerator: str) -> dict:
    """What changes every clip's pixels besides its row: the weights, the scheduler, the dtype the ranks will
    really run (`auto` resolved for the accelerator) and the job seed. Not `compile` (same maths), not the
    parallel layout (every layout reproduces one device)."""
    dtype = resolve_dtype(spec.model["dtype"], torch.device(DEVICE_KIND[accelerator]))
    return {"model": model_name(spec), "scheduler": spec.model["scheduler"],
            "dtype": str(dtype).removeprefix("torch."), "job_seed": spec.job["seed"]}


def row_key(row: dict, identity_value, basis: dict) -> str:
    """The row as given, cheaply: its columns, the identity reference (for a local file also its size and
    modification time, one stat) and the id basis. Reading the photo is what resume must not do per row;
    a photo replaced under the same URI is not noticed (give it a new name to render it again)."""
    stat = None
    if isinstance(identity_value, str) and "://" not in identity_value:
        try:
            info = os.stat(identity_value)
            stat = [info.st_size, info.st_mtime_ns]
        except OSError:
            stat = None
    payload = json.dumps({"row": row, "identity": identity_value, "stat": stat, **basis}, sort_keys=True,
                         default=_digest_or_repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _digest_or_repr(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    return repr(value)


def _prompt_text(value) -> str:
    if isinstance(value, bytes):  # a binary column: text only if it is UTF-8
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EchoVideoInputError("prompt", "is not UTF-8 text", "re-encode the prompt column as UTF-8") from None
    if not isinstance(value, str) or not value.strip():
        raise EchoVideoInputError("prompt", f"{value!r} is empty or not text", "write what the person does")
    return value


def _usable_id(value) -> str | None:
    """The dataset's own sample id (any text or integer; file names are made safe), if the row has one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None
    return str(value)


def build_sample(spec: JobSpec, row: dict, identity_value, reader: IdentityReader, basis: dict) -> Sample:
    """A renderable sample, or one carrying the row's error (it then fails alone, with that reason)."""
    columns = spec.columns()
    overrides = {k: row[k] for k in OVERRIDABLE if row.get(k) is not None}
    given_value = row.get(columns["sample_id"])
    given = _usable_id(given_value)
    fallback_id = given or hashlib.sha256(repr(sorted(row.items(), key=str)).encode()).hexdigest()[:24]
    try:
        prompt = _prompt_text(row.get(columns["prompt"]))
        if given_value is not None and given is None:
            raise EchoVideoInputError("sample_id", f"{given_value!r} is not a non-empty text or integer id",
                                      "fill the column or drop it to use content ids")
        options = {**spec.generation, **{k: v for k, v in overrides.items() if k != "seed"}}
        seed_override = {"seed": overrides["seed"]} if "seed" in overrides else {}
        GenerationOptions(**options, **seed_override).validate()
        data, digest, name = reader.get(identity_value)
        row_basis = {k: v for k, v in basis.items() if not (seed_override and k == "job_seed")}
        sid = given or sample_id(prompt, digest, {**options, **seed_override}, row_basis)
        seed = overrides.get("seed", derived_seed(spec.job["seed"], sid))
        return Sample(sid, prompt, name, {**options, "seed": seed}, image=data)
    except EchoVideoInputError as exc:  # only a rejected row pays for redacting what it shows
        prompt = row.get(columns["prompt"])
        shown = redact(identity_value)[:300] if isinstance(identity_value, str) else "<bytes>"
        return Sample(fallback_id, redact(str(prompt))[:200], shown, overrides, error=redact(str(exc)))


def unused_columns(spec: JobSpec) -> list[str]:
    """Columns the job will not read (a misspelt override such as `hieght` would otherwise pass silently)."""
    columns, d = spec.columns(), spec.dataset
    known = {columns[k] for k in ("prompt", "identity", "image", "sample_id")} | OVERRIDABLE
    names = set(open_table(d["prompts"], "dataset.prompts").schema.names)
    if d["identities"] is not None and d["mode"] != "rows":
        names |= set(open_table(d["identities"], "dataset.identities").schema.names)
    return sorted(names - known)


def iter_samples(spec: JobSpec, accelerator: str, finished_rows: dict[str, str] | None = None) -> Iterator[Sample]:
    """Every requested sample once (duplicates in the data collapse by id), in dataset order.

    A row whose key is in `finished_rows` (row key -> sample id, from the journal) yields a bare sample with
    that id at the cost of one hash: its photo is neither read nor decoded.
    """
    reader, seen, limit = IdentityReader(), set(), spec.dataset["limit"]
    basis, finished_rows = id_basis(spec, accelerator), finished_rows or {}
    for row, identity_value in _pairs(spec):
        key = row_key(row, identity_value, basis)
        known = finished_rows.get(key)
        sample = Sample(known, "", "") if known else build_sample(spec, row, identity_value, reader, basis)
        sample.row_key = key
        if sample.sample_id in seen:
            continue
        seen.add(sample.sample_id)
        yield sample
        if limit is not None and len(seen) >= limit:
            return


def count_requested(spec: JobSpec) -> int | None:
    """Rows the job asks for before de-duplication (metadata for parquet; a streamed scan otherwise)."""
    d = spec.dataset
    if d["mode"] == "sampled":
        total = d["count"]
    else:
        total = open_table(d["prompts"], "dataset.prompts").count_rows()
        if d["mode"] == "cross":
            total *= open_table(d["identities"], "dataset.identities").count_rows()
    return min(total, d["limit"]) if d["limit"] is not None else total
