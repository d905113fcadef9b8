"""THE identity of a request: one canonical, typed description of everything that reaches the ranks for a
sample, from which its sample id, its resume key, its duplicate check and its seed all derive.

The description (`describe_request`) holds
- `prompt`: the text the job's column mapping read, NFC;
- `settings`: every generation setting but the seed, each of its declared type (`guidance: 6` is 6.0, a
  pandas `64.0` in an integer column is 64, text NFC), the job's values overridden by the row's;
- `seed`: where the seed comes from: the row's own (`{"row": N}`) or the job seed (`{"job": S}`), which is
  then mixed with the sample id (`derived_seed`);
- `name`: the dataset's own `sample_id` (two named takes of one prompt and photo are two requests, with two
  seeds), or None for a content id;
- `weights`, `scheduler`, `dtype` (`id_basis`): the weights by the fingerprint of the files the loader reads,
  pinned by the driver and checked by every rank; the scheduler; the dtype the ranks really run.
Not in it: `compile` and the parallel layout (every layout reproduces one device), retries, the column names
the job maps (only what they read), columns the job does not read.

`request_key(description, photo)` hashes it with the photo: by its content digest it is the content key (the
sample id is its first 24 hex digits unless the row names one); by its reference and the filesystem's word
on it (size, time, inode) it is the resume key, matched without reading the photo.
"""

import hashlib
import json
import math
import unicodedata
from dataclasses import dataclass, fields

from echovideo.devices import dtype_name
from echovideo.errors import EchoVideoInputError
from echovideo.sampling import GenerationOptions
from ray_jobs.data.job import DEVICE_KIND, JobSpec

SETTINGS = {f.name: f for f in fields(GenerationOptions)}  # the per-row columns that override the job's settings
KIND_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "text"}
ID_LENGTH = 24


def request_key(description: dict, photo) -> str:
    """One hash over the description and the photo (a content digest, or a reference with its version)."""
    payload = json.dumps({**description, "photo": photo}, sort_keys=True, ensure_ascii=True, default=_stable)
    return hashlib.sha256(payload.encode()).hexdigest()[:32]


def _stable(value) -> str:
    """A rejected row's raw cells (bytes, odd types) by a stable spelling: its key tells it from other rows."""
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(value).hexdigest()
    return repr(value)


def describe_request(prompt: str, settings: dict, seed_from: dict, name: str | None, basis: dict) -> dict:
    """The canonical description (see the module doc); `settings` already typed (`typed_settings`)."""
    return {"prompt": prompt, "settings": {k: v for k, v in settings.items() if k != "seed"}, "seed": seed_from,
            "name": name, **basis}


def sample_id(content_key: str, name: str | None) -> str:
    return name if name is not None else content_key[:ID_LENGTH]


def resolved_seed(seed_from: dict, sid: str) -> int:
    """The seed the ranks use: the row's own, or one derived from the job seed and the sample id (the same
    request gets the same seed whatever the order or the replica)."""
    return seed_from["row"] if "row" in seed_from else derived_seed(seed_from["job"], sid)


def derived_seed(job_seed: int, sid: str) -> int:
    return int(hashlib.sha256(f"{job_seed}:{sid}".encode()).hexdigest()[:15], 16)


def typed_setting(name: str, value):
    """A setting as its declared type: 6 -> 6.0 for a float, 64.0 -> 64 for an integer, text NFC. A value of
    another kind raises, naming the setting."""
    kind = type(SETTINGS[name].default)
    if kind is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    elif kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is not bool and isinstance(value, bool)):
        raise EchoVideoInputError(name, f"{value!r} is a {type(value).__name__}, expected {KIND_NAMES[kind]}",
                                  f"write {KIND_NAMES[kind]} for {name}, or leave it out")
    return unicodedata.normalize("NFC", value) if kind is str else value


def typed_settings(settings: dict) -> dict:
    """Every generation setting (defaults filled in), each typed: one spelling per value."""
    return {name: typed_setting(name, settings.get(name, field.default)) for name, field in SETTINGS.items()}


def missing(value) -> bool:
    """An empty cell: None, or the NaN pandas writes for one."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def row_settings(row: dict) -> dict:
    """The row's own generation settings (an empty cell means the job's value), typed; another kind ("64" for
    an integer, 64.5) is this row's error, naming the column."""
    return {name: typed_setting(name, row[name]) for name in SETTINGS if not missing(row.get(name))}


def prompt_text(value) -> str:
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


def given_name(value) -> str | None:
    """The dataset's own sample id (any text or integer; file names are made safe), if the row has one."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        return None
    return unicodedata.normalize("NFC", str(value))


def pin_weights(spec: JobSpec) -> str:
    """The job's weights by fingerprint, computed once per job and kept in `spec.model` (`pinned`): every rank
    checks what it loads against it."""
    if spec.model.get("pinned") is None:
        if spec.model["preset"]:
            spec.model["pinned"] = f"preset:{spec.model['preset']}"  # built offline, deterministically, per version
        else:
            from echovideo.checkpoint_cache import weights_fingerprint

            spec.model["pinned"] = weights_fingerprint(spec.model["checkpoint"])
    return spec.model["pinned"]


def id_basis(spec: JobSpec, accelerator: str) -> dict:
    """What changes every clip's pixels besides its row: the pinned weights, the scheduler, the dtype the ranks
    will really run (`auto` resolved for the accelerator)."""
    return {"weights": pin_weights(spec), "scheduler": spec.model["scheduler"],
            "dtype": dtype_name(spec.model["dtype"], DEVICE_KIND[accelerator])}


@dataclass
class Request:
    """A row as what it asks for, before its photo is read: its `description`, the settings the ranks get
    (seed not yet resolved), and where the seed comes from; or the row's raw cells and `error` when it does
    not parse."""

    description: dict
    settings: dict
    seed_from: dict
    name: str | None
    error: EchoVideoInputError | None = None


def parse_request(spec: JobSpec, row: dict, columns: dict, basis: dict) -> Request:
    """The request a row makes, through the job's column mapping; a row error is kept, not raised."""
    given = row.get(columns["sample_id"])
    name = given_name(given)
    try:
        prompt = prompt_text(row.get(columns["prompt"]))
        if given is not None and name is None:
            raise EchoVideoInputError("sample_id", f"{given!r} is not a non-empty text or integer id",
                                      "fill the column or drop it to use content ids")
        overrides = row_settings(row)
        settings = typed_settings({**spec.generation, **overrides})
        seed_from = {"row": overrides["seed"]} if "seed" in overrides else {"job": spec.job["seed"]}
        GenerationOptions(**{**settings, "seed": seed_from.get("row", 0)}).validate()
    except EchoVideoInputError as exc:
        cells = {role: row.get(columns[role]) for role in ("prompt", "sample_id")}
        given_settings = {k: row[k] for k in SETTINGS if not missing(row.get(k))}
        raw = {"row": {**cells, **given_settings}, "generation": spec.generation, "job_seed": spec.job["seed"]}
        return Request({**raw, **basis}, given_settings, {}, name, exc)
    return Request(describe_request(prompt, settings, seed_from, name, basis), settings, seed_from, name)
