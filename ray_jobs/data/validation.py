"""What can be known about a job's dataset before any replica starts: its columns exist and hold what the
job reads, it has rows, and how many samples it asks for (a bad table is one job error, exit 2, before a
cluster starts)."""

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.job import JobSpec
from ray_jobs.data.request_identity import SETTINGS
from ray_jobs.data.samples import ID_COLUMNS, tables
from ray_jobs.data.tables import Table


def unused_columns(spec: JobSpec) -> list[str]:
    """Columns the job will not read (a misspelt override such as `hieght` would otherwise pass silently)."""
    columns = spec.columns()
    known = {columns[k] for k in ID_COLUMNS} | set(SETTINGS)
    return sorted({name for table in tables(spec) if table is not None for name in table.columns()} - known)


def validate_dataset(spec: JobSpec) -> int | None:
    """What can be known about the dataset before any replica starts; -> samples requested (rows before
    de-duplication), None for a streamed table (counted as it is read). A text table is read through here (in
    rows mode only up to `limit`), so a malformed line stops the job now, naming its line, not hours into a run."""
    d = spec.dataset
    prompts, identities = tables(spec)
    _check_columns(spec, prompts, ("prompt",) if identities else ("prompt", "identity"))
    if prompts.streamed:  # the first row shows it is not empty; reading on would wait for the whole stream
        _has_rows(prompts, prompts.count(1))
        return None
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
