"""Dataset tables (parquet, jsonl, csv; a local path or any pyarrow filesystem URI) as rows with their real place.

Parquet is read by pyarrow, typed and in record batches. JSON Lines and CSV are read a line at a time here,
not by pyarrow's readers: those infer one type per column from the first block and fail the whole job on a
later row that differs (a number that becomes text at line 40,005), reporting a row number relative to the
block. Reading lines ourselves gives every row its real line number, lets one odd row fail alone, and
makes a malformed line an error that names its line.
"""

import csv
import io
import json
import math
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Iterator

from echovideo.errors import EchoVideoInputError
from echovideo.locations import filesystem
from ray_jobs.data.redact import redact
from ray_jobs.data.spill import Spill

BATCH_ROWS = 1024


@dataclass
class Row:
    values: dict
    where: str  # "prompts.jsonl line 40005": what a user looks up


class Table:
    """A table's rows, streamed; `count` validates every row it passes (a text table is parsed to count)."""

    streamed = False  # True: rows arrive while the table is produced; its size is known only at its end

    def __init__(self, uri: str, key: str) -> None:
        self.uri, self.key = uri, key
        self.name = PurePosixPath(redact(uri).split("?", 1)[0]).name or redact(uri)

    def rows(self) -> Iterator[Row]:
        raise NotImplementedError

    def columns(self) -> list[str]:
        """Column names (for a text table: the keys of its first BATCH_ROWS rows)."""
        raise NotImplementedError

    def count(self, stop_at: int | None = None) -> int:
        """Rows in the table (at most `stop_at`), every one of them read and checked on the way."""
        total = 0
        for _ in self.rows():
            total += 1
            if stop_at is not None and total >= stop_at:
                break
        return total

    def take(self, indices) -> list[Row]:
        """Rows by 0-based index (sampled mode). A text table is held in memory for this: use parquet for
        very large sampled tables."""
        if not hasattr(self, "_all"):
            self._all = list(self.rows())
        return [self._all[i] for i in indices]

    def error(self, where: str, problem: str, fix: str) -> EchoVideoInputError:
        return EchoVideoInputError(self.key, f"{where}: {problem}", fix)


class ParquetTable(Table):
    def __init__(self, uri: str, key: str) -> None:
        import pyarrow.dataset as pds  # here, not at the top: it costs 0.23 s that `plan` of a jsonl job need not pay

        super().__init__(uri, key)
        try:
            self.dataset = pds.dataset(uri, format="parquet")
        except (OSError, ValueError) as exc:
            raise EchoVideoInputError(key, f"cannot open {redact(uri)} ({redact(str(exc))})",
                                      "check the path or URI") from None

    def rows(self) -> Iterator[Row]:
        number = 0
        for batch in self.dataset.to_batches(batch_size=BATCH_ROWS):
            for values in batch.to_pylist():
                number += 1
                yield Row(values, f"{self.name} row {number}")

    def columns(self) -> list[str]:
        return self.dataset.schema.names

    def count(self, stop_at: int | None = None) -> int:
        total = self.dataset.count_rows()  # from the files' metadata
        return min(total, stop_at) if stop_at is not None else total

    def take(self, indices) -> list[Row]:
        taken = self.dataset.take(list(indices)).to_pylist()
        return [Row(values, f"{self.name} row {i + 1}") for i, values in zip(indices, taken)]


class TextTable(Table):
    """JSON Lines or CSV, decoded line by line (UTF-8; a BOM at the start is allowed)."""

    def _lines(self) -> Iterator[tuple[int, str]]:
        try:
            store, path = filesystem(self.uri)
            stream = io.BufferedReader(store.open_input_stream(path, compression=None))
        except (OSError, ValueError) as exc:
            raise EchoVideoInputError(self.key, f"cannot open {redact(self.uri)} ({redact(str(exc))})",
                                      "check the path or URI") from None
        with stream:
            for number, raw in enumerate(stream, 1):
                try:
                    yield number, raw.decode("utf-8-sig" if number == 1 else "utf-8")
                except UnicodeDecodeError as exc:
                    raise self.error(f"{self.name} line {number}", f"is not UTF-8 (byte {raw[exc.start]:#04x} at "
                                     f"column {exc.start + 1})", "save the file as UTF-8") from None

    def columns(self) -> list[str]:
        names: dict[str, None] = {}
        for index, row in enumerate(self.rows()):
            names.update(dict.fromkeys(row.values))
            if index + 1 >= BATCH_ROWS:
                break
        return list(names)


class JsonLinesTable(TextTable):
    def rows(self) -> Iterator[Row]:
        for number, line in self._lines():
            if not line.strip():
                continue
            where = f"{self.name} line {number}"
            try:
                values = json.loads(line)
            except json.JSONDecodeError as exc:
                raise self.error(where, f"is not valid JSON ({exc.msg} at column {exc.colno})",
                                 "fix or remove that line") from None
            if not isinstance(values, dict):
                raise self.error(where, f"is a JSON {type(values).__name__}, not an object",
                                 'write one {"prompt": ..., ...} object per line')
            yield Row(values, where)


class CsvTable(TextTable):
    """Every cell is text; a setting column's cell is read as the number or true/false it spells, an empty
    cell as missing (what pandas writes for NaN), so `64`, `64.0` and `` mean 64, 64 and the default."""

    def __init__(self, uri: str, key: str, text_columns: set[str]) -> None:
        super().__init__(uri, key)
        self.text_columns = text_columns

    def rows(self) -> Iterator[Row]:
        lines = self._lines()
        numbers: list[int] = []

        def text() -> Iterator[str]:
            for number, line in lines:
                numbers.append(number)
                yield line

        reader = csv.reader(text())
        header = next(reader, None)
        if header is None:
            return
        for cells in reader:
            where = f"{self.name} line {numbers[-1]}"
            if not any(cell.strip() for cell in cells):
                continue
            if len(cells) != len(header):
                raise self.error(where, f"has {len(cells)} fields, the header has {len(header)}",
                                 "quote fields that contain commas, or fix the line")
            yield Row({name: cell if name in self.text_columns else _scalar(cell)
                       for name, cell in zip(header, cells)}, where)

    def columns(self) -> list[str]:
        return next(csv.reader(line for _, line in self._lines()), [])


class RayDataTable(Table):
    """Rows of a `ray.data.Dataset`, executed once and streamed (`ray_jobs.data.spill`): the job's questions (columns,
    the first row, every row) read the parts that execution writes, in the Dataset's order. With the job's
    `limit`, only the first `limit` rows are executed (a lazy 10-million-row Dataset rendered with a limit costs
    only those rows). The size is known only once the Dataset is read to its end."""

    streamed = True

    def __init__(self, dataset, key: str = "dataset", limit: int | None = None) -> None:
        # Rows are named and limited by position, so a rerun must see them in the same order: Ray Data
        # yields blocks as they finish unless told otherwise. The order is set on a copy of the Dataset's
        # context (derived Datasets share one), leaving the caller's Dataset as it was.
        ordered = type(dataset).copy(dataset, _deep_copy=True)
        ordered.context.execution_options.preserve_order = True
        self.uri, self.key, self.name = "ray.data.Dataset", key, "dataset"
        self.lazy = ordered.limit(limit) if limit is not None else ordered
        self.spilled: Spill | None = None

    @property
    def spill(self) -> Spill:
        if self.spilled is None:
            self.spilled = Spill(self.lazy, BATCH_ROWS)
        return self.spilled

    def rows(self) -> Iterator[Row]:
        number = 0
        for batch in self.spill.batches():
            for values in batch:
                number += 1
                yield Row(values, f"dataset row {number}")

    def columns(self) -> list[str]:
        return self.spill.column_names()

    def count(self, stop_at: int | None = None) -> int:
        return self.spill.count(stop_at)

    def take(self, indices) -> list[Row]:
        raise EchoVideoInputError("dataset.mode", "a Ray Dataset is read in rows mode only",
                                  "pair prompts and identities in the Dataset itself (e.g. with a join)")

    def close(self) -> None:
        if self.spilled is not None:
            self.spilled.close()


def _scalar(cell: str):
    """A CSV cell as the value it spells: None, an int, a float, a bool, or the text itself."""
    if not cell.strip():
        return None
    lowered = cell.strip().lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            value = kind(cell)
            return None if isinstance(value, float) and math.isnan(value) else value
        except ValueError:
            continue
    return cell


def open_table(uri: str, key: str, text_columns: set[str]) -> Table:
    """`text_columns`: CSV columns kept as text whatever they spell (prompts, paths, ids)."""
    lowered = uri.lower().split("?", 1)[0]
    if lowered.endswith(".parquet"):
        return ParquetTable(uri, key)
    if lowered.endswith((".jsonl", ".json")):
        return JsonLinesTable(uri, key)
    if lowered.endswith(".csv"):
        return CsvTable(uri, key, text_columns)
    raise EchoVideoInputError(key, f"{redact(uri)!r} is not .parquet, .jsonl or .csv", "convert or rename the table")
