"""Stream the prompt and identity tables (parquet, jsonl, csv; local or any pyarrow filesystem URI) into samples.

The driver never holds a table: rows arrive in record batches, and a sample carries its identity image's
bytes only while it is queued or in flight.
"""

from dataclasses import dataclass, field
from itertools import islice
from typing import Iterator

import numpy as np

from echovideo.errors import EchoVideoInputError
from echovideo.locations import shown_location as shown_reference
from ray_jobs.data.identities import (
    IdentityReader,
    IdentityUnavailable,
    printable,
)
from ray_jobs.data.job import JobSpec
from ray_jobs.data.records import Kind
from ray_jobs.data.redact import redact
from ray_jobs.data.request_identity import (
    ID_LENGTH,
    Request,
    id_basis,
    parse_request,
    request_key,
    resolved_seed,
    sample_id,
)
from ray_jobs.data.tables import BATCH_ROWS, Row, Table, open_table

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
    attempt: int = 0  # quality retries: 0 is the row's own request, k > 0 its k-th re-render (`attempts`)
    row_id: str | None = None  # an attempt's row: the sample id of its attempt 0 (None: this is attempt 0)


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
        shown = printable(redact(shown_reference(identity_value)))[:300] if isinstance(identity_value, str) else "<bytes>"
        kind = (Kind.UNAVAILABLE if isinstance(exc, IdentityUnavailable) else Kind.INPUT).value
        reason = f"{where}: {exc}" if where else str(exc)
        shown_prompt = redact(prompt).replace("\x00", "\\x00")[:200] if isinstance(prompt, str) else ""
        return Sample(request.name or row_key[:ID_LENGTH], shown_prompt,
                      shown, request.settings, error=redact(reason), error_kind=kind, row_key=row_key, where=where)
    content_key = request_key(request.description, digest)
    sid = sample_id(content_key, request.name)
    options = {**request.settings, "seed": resolved_seed(request.seed_from, sid)}
    return Sample(sid, request.description["prompt"], name, options, image=data,
                  row_key=row_key, content_key=content_key, identity_sha=digest, where=where)


def iter_samples(spec: JobSpec, accelerator: str, finished_rows: dict[str, str] | None = None) -> Iterator[Sample]:
    """Every requested sample once, in dataset order; a repeated row comes back marked `duplicate` (counted,
    not rendered), and a dataset id reused for different content fails that row under `id@where`.

    A row whose key is in `finished_rows` (row key -> sample id, from the journal) yields a bare `settled`
    sample with that id at the cost of one hash (and, for a photo reference, one memoised stat): its photo
    is neither read nor decoded.
    """
    reader, limit, columns = IdentityReader(), spec.dataset["limit"], spec.columns()
    basis, finished_rows = id_basis(spec, accelerator), finished_rows or {}
    first: dict[str, tuple[str, str] | None] = {}  # id -> (content, where) for dataset ids; None for content ids
    for row, identity_value, where in _pairs(spec):
        request = parse_request(spec, row, columns, basis)
        key = request_key(request.description, reader.reference(identity_value))
        known = finished_rows.get(key)
        sample = Sample(known, "", "", row_key=key, where=where, settled=True) if known else \
            build_sample(spec, request, identity_value, reader, key, where)
        given = None if known or request.name is None else (sample.error or sample.content_key, where)
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
