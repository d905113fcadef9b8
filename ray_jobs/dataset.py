"""Stream the prompt and identity tables (parquet, jsonl, csv; local or any pyarrow filesystem URI) into samples.

The driver never holds a table: rows arrive in record batches, and a sample carries its identity image's
bytes only while it is queued or in flight.
"""

import hashlib
import json
import math
import unicodedata
from collections import OrderedDict
from dataclasses import dataclass, field, fields
from itertools import islice
from typing import Iterator

import numpy as np

from echovideo.checkpoint_cache import fingerprint, store_listing
from echovideo.devices import dtype_name
from echovideo.errors import EchoVideoInputError
from echovideo.images import check_identity_header
from echovideo.locations import is_uri, public_name
from echovideo.sampling import OFF_BY_DEFAULT, GenerationOptions
from ray_jobs.failures import Kind
from ray_jobs.identities import IdentityUnavailable, identity_version, read_identity
from ray_jobs.job import DEVICE_KIND, JobSpec
from ray_jobs.redact import redact
from ray_jobs.tables import BATCH_ROWS, Row, Table, open_table

OVERRIDABLE = {f.name: f for f in fields(GenerationOptions)}  # per-row columns that override the job's settings
ID_COLUMNS = ("prompt", "identity", "image", "sample_id")


@dataclass
class Sample:
    """One requested clip. `error` set means the row was rejected before rendering (it fails alone, as
    `error_kind`: bad input settles the row, an unavailable photo is tried again by a rerun)."""

    sample_id: str
    prompt: str
    identity: str  # the reference as given, by its public name (no credentials, no query), or "<bytes sha256>"
    options: dict = field(default_factory=dict)
    image: bytes | None = None
    error: str | None = None
    error_kind: str = Kind.INPUT.value
    attempts: int = 0
    row_key: str | None = None  # the request by its photo's reference and version: `request_key`
    content_key: str | None = None  # the request by its photo's content: `request_key`; its prefix is a content id
    identity_sha: str | None = None  # the photo's content hash: its file's and thumbnail's name in the output
    photo: str | None = None  # where the job keeps the photo as given (set when first handed to a replica)
    where: str = ""  # the row's place in the dataset ("prompts.jsonl line 7")
    duplicate: bool = False  # a repeat of an earlier row (same id, same content): counted, never rendered
    settled: bool = False  # known from the journal by its row key: counted as done, never rendered


class IdentityReader:
    """Image bytes and their content hash by reference; recent ones memoised (identities repeat in a job).

    Each new photo's header is checked here (format, size, structure; no pixel decoded), so an unreadable,
    empty or oversized photo fails its rows in the driver instead of occupying a replica, at a cost the
    driver can afford for any photo. The filesystem's word on each reference (`identity_version`) is
    memoised the same way: a rerun asks it once per distinct photo, not once per row.
    """

    def __init__(self, capacity: int = 64) -> None:
        self.cache: OrderedDict[str, tuple[bytes, str]] = OrderedDict()
        self.versions: OrderedDict[str, object] = OrderedDict()
        self.capacity = capacity

    def get(self, value) -> tuple[bytes, str, str]:
        """-> (bytes, sha256, display name); raises EchoVideoInputError naming the identity."""
        if isinstance(value, (bytes, bytearray)):
            data = bytes(value)
            key = hashlib.sha256(data).hexdigest()
            name = f"<bytes {key[:12]}>"
        elif isinstance(value, str) and value.strip():
            data, key, name = None, value, shown_reference(value)
        else:
            raise EchoVideoInputError("identity", f"{value!r} is not an image path, URI or bytes", "fill the column")
        if key not in self.cache:
            if data is None:
                data = read_identity(value, name)
            check_identity_header(data, name, "identity")
            _remember(self.cache, key, (data, hashlib.sha256(data).hexdigest()), self.capacity)
        self.cache.move_to_end(key)
        return (*self.cache[key], name)

    def reference(self, value) -> dict:
        """The photo as a reference: its public name and what its filesystem says of it now (a photo given as
        bytes is its content). Cheap: no photo is read."""
        if isinstance(value, (bytes, bytearray)):
            return {"bytes": hashlib.sha256(value).hexdigest()}
        if not isinstance(value, str) or not value.strip():
            return {"value": repr(value)}
        if value not in self.versions:
            _remember(self.versions, value, identity_version(value, shown_reference(value)), self.capacity)
        return {"reference": shown_reference(value), "version": self.versions[value]}


def _remember(cache: OrderedDict, key, value, capacity: int) -> None:
    cache[key] = value
    if len(cache) > capacity:
        cache.popitem(last=False)


def shown_reference(value: str) -> str:
    """How outputs name a photo reference: a URI by its public name (credentials and query such as
    `?endpoint_override=` dropped), a path as given."""
    return public_name(value) if is_uri(value) else value


def tables(spec: JobSpec) -> tuple[Table, Table | None]:
    """The prompts table, and the identities table in cross and sampled modes."""
    d, columns = spec.dataset, spec.columns()
    if spec.rows is not None:
        return spec.rows, None
    text = {columns[k] for k in ID_COLUMNS} | {"negative_prompt"}
    prompts = open_table(d["prompts"], "dataset.prompts", text)
    return prompts, open_table(d["identities"], "dataset.identities", text) if d["mode"] != "rows" else None


def _pairs(spec: JobSpec) -> Iterator[tuple[dict, object, str]]:
    """(prompt row, identity value, where) in the dataset mode's order."""
    d, columns = spec.dataset, spec.columns()
    prompts, identities = tables(spec)

    def identity_of(row: Row):  # a path/URI column, or the image bytes column
        value = row.values.get(columns["identity"])
        return value if value is not None else row.values.get(columns["image"])

    if identities is None:
        yield from ((row.values, identity_of(row), row.where) for row in prompts.rows())
        return
    if d["mode"] == "cross":
        prompt_rows = prompts.rows()
        while chunk := list(islice(prompt_rows, BATCH_ROWS)):
            for identity_row in identities.rows():
                for row in chunk:
                    yield row.values, identity_of(identity_row), f"{row.where}, {identity_row.where}"
        return
    # sampled: distinct (prompt, identity) pairs, seeded, drawn without replacement, fetched a chunk at a time
    n_identities = identities.count()
    picks = np.random.default_rng(d["seed"]).choice(prompts.count() * n_identities, size=d["count"], replace=False)
    for start in range(0, len(picks), BATCH_ROWS):
        chunk = picks[start:start + BATCH_ROWS]
        for p, i in zip(prompts.take(chunk // n_identities), identities.take(chunk % n_identities)):
            yield p.values, identity_of(i), f"{p.where}, {i.where}"


def request_key(description: dict, identity) -> str:
    """THE identity of a request: one hash over what the request asks for (`description`: prompt, generation
    settings, `id_basis`) and its photo. Given the photo's content hash it names the clip (the sample id
    is its first 24 characters); given the photo's reference and version it is the resume key a rerun
    matches without reading the photo. Both come from here, so they change together."""
    payload = json.dumps({**description, "identity": identity}, sort_keys=True, ensure_ascii=True,
                         default=_digest_or_repr)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def describe_request(prompt: str, options: dict, basis: dict) -> dict:
    """What changes the pixels besides the photo. `basis` is everything outside the row (`id_basis`);
    `options` holds the effective generation settings (and the seed only when the row sets one); options
    still off (`OFF_BY_DEFAULT`) are left out, so ids made before those options existed stay the same."""
    options = {k: v for k, v in options.items() if k not in OFF_BY_DEFAULT or v != OFF_BY_DEFAULT[k]}
    return {"prompt": prompt, "options": options, **basis}


def sample_id(prompt: str, identity_hash: str, options: dict, basis: dict) -> str:
    """Deterministic from the content: the same request is the same file, whatever the row order or rank."""
    return request_key(describe_request(prompt, options, basis), identity_hash)[:24]


def derived_seed(job_seed: int, sid: str) -> int:
    return int(hashlib.sha256(f"{job_seed}:{sid}".encode()).hexdigest()[:15], 16)


def model_name(spec: JobSpec) -> str:
    """The weights: a preset or a local folder by name; a checkpoint URI by its public name (rotating a key
    keeps every id) and the store's listing of its files now (weights replaced under the same URI are other
    weights: other ids, rendered anew)."""
    if spec.model["preset"]:
        return f"preset:{spec.model['preset']}"
    checkpoint = spec.model["checkpoint"]
    if not is_uri(checkpoint):
        return f"checkpoint:{checkpoint}"
    return f"checkpoint:{public_name(checkpoint)}@{fingerprint(store_listing(checkpoint))}"


def id_basis(spec: JobSpec, accelerator: str) -> dict:
    """What changes every clip's pixels besides its row: the weights, the scheduler, the dtype the ranks will
    really run (`auto` resolved for the accelerator) and the job seed. Not `compile` (same maths), not the
    parallel layout (every layout reproduces one device)."""
    return {"model": model_name(spec), "scheduler": spec.model["scheduler"],
            "dtype": dtype_name(spec.model["dtype"], DEVICE_KIND[accelerator]), "job_seed": spec.job["seed"]}


def _digest_or_repr(value) -> str:
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    return repr(value)


def _prompt_text(value) -> str:
    """The prompt as NFC text: the same words typed on two systems (NFC, NFD) are one request."""
    if isinstance(value, bytes):  # a binary column: text only if it is UTF-8
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError:
            raise EchoVideoInputError("prompt", "is not UTF-8 text", "re-encode the prompt column as UTF-8") from None
    if value is None:
        raise EchoVideoInputError("prompt", "is empty (null)", "write what the person does")
    if not isinstance(value, str) or not value.strip():
        raise EchoVideoInputError("prompt", f"{value!r} is empty or not text", "write what the person does")
    if "\x00" in value:
        raise EchoVideoInputError("prompt", "holds a NUL character", "remove it from the prompt")
    return unicodedata.normalize("NFC", value)


def _usable_id(value) -> str | None:
    """The dataset's own sample id (any text or integer; file names are made safe), if the row has one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None
    return str(value)


KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}


def _missing(value) -> bool:
    """An empty cell: None, or the NaN pandas writes for one."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_settings(row: dict) -> dict:
    """The row's own generation settings. An empty cell means the job's value; a whole float is an integer
    (pandas writes 64.0 for 64 in a column with gaps); a value of another kind ("64" for an integer, 64.5)
    is this row's error, naming the column."""
    settings = {}
    for name, spec_field in OVERRIDABLE.items():
        value = row.get(name)
        if _missing(value):
            continue
        kind = type(spec_field.default)
        if kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)  # 6 and 6.0 are one request (and one sample id)
        if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
            raise EchoVideoInputError(name, f"{value!r} is a {type(value).__name__}, expected {KIND_NAMES[kind]}",
                                      f"write {KIND_NAMES[kind]} in the {name} column, or leave it empty")
        settings[name] = unicodedata.normalize("NFC", value) if kind is str else value
    return settings


@dataclass
class Request:
    """A row as what it asks for, before its photo is read: `description` (`describe_request`, or the row's
    raw cells when it does not parse: `error` then says why) and the effective settings."""

    description: dict
    options: dict
    given_id: str | None
    error: EchoVideoInputError | None = None


def parse_request(spec: JobSpec, row: dict, basis: dict) -> Request:
    """The request a row makes, through the job's column mapping; a row error is kept, not raised."""
    columns = spec.columns()
    given_value = row.get(columns["sample_id"])
    given = _usable_id(given_value)
    try:
        prompt = _prompt_text(row.get(columns["prompt"]))
        if given_value is not None and given is None:
            raise EchoVideoInputError("sample_id", f"{given_value!r} is not a non-empty text or integer id",
                                      "fill the column or drop it to use content ids")
        overrides = row_settings(row)
        options = {**spec.generation, **{k: v for k, v in overrides.items() if k != "seed"}}
        seed_override = {"seed": overrides["seed"]} if "seed" in overrides else {}
        GenerationOptions(**options, **seed_override).validate()
    except EchoVideoInputError as exc:
        cells = {role: row.get(columns[role]) for role in ("prompt", "sample_id")}
        given_settings = {k: row[k] for k in OVERRIDABLE if not _missing(row.get(k))}
        return Request({"row": {**cells, **given_settings}, "generation": spec.generation, **basis},
                       given_settings, given, exc)
    row_basis = {k: v for k, v in basis.items() if not (seed_override and k == "job_seed")}
    return Request(describe_request(prompt, {**options, **seed_override}, row_basis),
                   {**options, **seed_override}, given)


def build_sample(spec: JobSpec, request: Request, identity_value, reader: IdentityReader, row_key: str,
                 where: str = "") -> Sample:
    """A renderable sample (its photo read here), or one carrying the row's error: it then fails alone, with
    that reason and place, under an id from its row key (two bad rows never share one)."""
    try:
        if request.error is not None:
            raise request.error
        data, digest, name = reader.get(identity_value)
    except EchoVideoInputError as exc:  # only a rejected row pays for redacting what it shows
        prompt = request.description.get("prompt", request.description.get("row", {}).get("prompt"))
        shown = redact(shown_reference(identity_value))[:300] if isinstance(identity_value, str) else "<bytes>"
        kind = (Kind.UNAVAILABLE if isinstance(exc, IdentityUnavailable) else Kind.INPUT).value
        reason = f"{where}: {exc}" if where else str(exc)
        shown_prompt = redact(prompt).replace("\x00", "\\x00")[:200] if isinstance(prompt, str) else ""
        return Sample(request.given_id or row_key[:24], shown_prompt,
                      shown, request.options, error=redact(reason), error_kind=kind, row_key=row_key, where=where)
    content_key = request_key(request.description, digest)
    sid = request.given_id or content_key[:24]
    seed = request.options.get("seed", derived_seed(spec.job["seed"], sid))
    return Sample(sid, request.description["prompt"], name, {**request.options, "seed": seed}, image=data,
                  row_key=row_key, content_key=content_key, identity_sha=digest, where=where)


def unused_columns(spec: JobSpec) -> list[str]:
    """Columns the job will not read (a misspelt override such as `hieght` would otherwise pass silently)."""
    columns = spec.columns()
    known = {columns[k] for k in ID_COLUMNS} | set(OVERRIDABLE)
    return sorted({name for table in tables(spec) if table is not None for name in table.columns()} - known)


def iter_samples(spec: JobSpec, accelerator: str, finished_rows: dict[str, str] | None = None) -> Iterator[Sample]:
    """Every requested sample once, in dataset order; a repeated row comes back marked `duplicate` (counted,
    not rendered), and a dataset id reused for different content fails that row under `id@where`.

    A row whose key is in `finished_rows` (row key -> sample id, from the journal) yields a bare `settled`
    sample with that id at the cost of one hash (and, for a photo reference, one memoised stat): its photo
    is neither read nor decoded.
    """
    reader, limit, id_column = IdentityReader(), spec.dataset["limit"], spec.columns()["sample_id"]
    basis, finished_rows = id_basis(spec, accelerator), finished_rows or {}
    first: dict[str, tuple[str, str] | None] = {}  # id -> (content, where) for dataset ids; None for content ids
    for row, identity_value, where in _pairs(spec):
        request = parse_request(spec, row, basis)
        key = request_key(request.description, reader.reference(identity_value))
        known = finished_rows.get(key)
        sample = Sample(known, "", "", row_key=key, where=where, settled=True) if known else \
            build_sample(spec, request, identity_value, reader, key, where)
        given = None if known or row.get(id_column) is None else (sample.error or sample.content_key, where)
        if sample.sample_id in first:
            earlier = first[sample.sample_id]
            if given is not None and earlier is not None and given[0] != earlier[0]:
                yield _reused(sample, earlier[1])
            else:
                sample.duplicate = True
                yield sample
            continue
        first[sample.sample_id] = given
        yield sample
        if limit is not None and len(first) >= limit:
            return


def _reused(sample: Sample, first_where: str) -> Sample:
    reason = (f"{sample.where}: sample_id {sample.sample_id!r} is reused for different content (first used at "
              f"{first_where}); give each row its own sample_id")
    return Sample(f"{sample.sample_id}@{sample.where}", sample.prompt, sample.identity, sample.options,
                  error=reason, row_key=sample.row_key, where=sample.where)


def validate_dataset(spec: JobSpec) -> int:
    """What can be known about the dataset before any replica starts; -> samples requested (rows before
    de-duplication). A text table is read through here (in rows mode only up to `limit`), so a malformed
    line stops the job now, naming its line, not hours into a run."""
    d = spec.dataset
    prompts, identities = tables(spec)
    _check_columns(spec, prompts, ("prompt",) if identities else ("prompt", "identity"))
    if identities is not None:
        _check_columns(spec, identities, ("identity",))
    n_prompts = prompts.count(d["limit"] if identities is None else None)
    if identities is None:
        return _has_rows(prompts, n_prompts)
    pairs = _has_rows(prompts, n_prompts) * _has_rows(identities, identities.count())
    if d["mode"] == "sampled" and d["count"] > pairs:
        raise EchoVideoInputError("dataset.count", f"{d['count']} is more than the {pairs} distinct prompt x "
                                  "identity pairs", f"use at most {pairs}, or mode: cross for all of them")
    total = d["count"] if d["mode"] == "sampled" else pairs
    return min(total, d["limit"]) if d["limit"] is not None else total


def _has_rows(table: Table, count: int) -> int:
    if count == 0:
        raise EchoVideoInputError(table.key, f"{table.name} has no rows", "add rows, or point at another table")
    return count


def _check_columns(spec: JobSpec, table: Table, roles: tuple[str, ...]) -> None:
    """The columns the job reads exist (an identity may come from its path column or its image column), and
    the prompt column holds text: a wrong mapping is one job error, not a failure per row."""
    names, columns, mapped = table.columns(), spec.columns(), spec.dataset["columns"]
    if not names:
        return  # an empty table: `_has_rows` says so
    for role in roles:
        wanted = (role, "image") if role == "identity" else (role,)
        if any(columns[r] in names for r in wanted):
            continue
        shown = f"it has {names[:12]}"
        if role in mapped:
            raise EchoVideoInputError(f"dataset.columns.{role}", f"column {columns[role]!r} is not in {table.name} "
                                      f"({shown})", "map it to one of those")
        raise EchoVideoInputError(table.key, f"{table.name} has no {' or '.join(repr(columns[r]) for r in wanted)} "
                                  f"column ({shown})", f"rename one, or map yours with dataset.columns.{role}")
    if "prompt" in roles:
        first = next(table.rows(), None)
        value = None if first is None else first.values.get(columns["prompt"])
        if value is not None and not isinstance(value, (str, bytes)):
            raise EchoVideoInputError("dataset.columns.prompt", f"column {columns['prompt']!r} of {table.name} holds "
                                      f"{type(value).__name__} values, not text", "map the prompt column to text")
