"""A Ray Dataset executed once, on a thread, into numbered Arrow files on the driver's disk that readers follow
while they are written.

The job asks a table for its columns, its first row and then every row; on a lazy Dataset each question would
run the user's pipeline again (their UDFs: often model inference, not always deterministic). Materialising it
in Ray's object store runs it once but holds every block before the first clip renders, so a large Dataset
fills the driver's node first. Here it runs once and streams: the feed reads part N while Ray computes the
parts after it; memory holds a batch per reader; the disk (TMPDIR) holds the rows until the job ends.
"""

import re
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Iterator

import pyarrow as pa

from echovideo.errors import EchoVideoInputError

PART_ROWS = 16_384  # rows per sealed part: a reader waits for at most this many rows of the Dataset


class Spill:
    """Parts are written whole under a temporary name and renamed, so a reader sees only sealed parts."""

    def __init__(self, dataset, batch_rows: int, part_rows: int = PART_ROWS) -> None:
        self.folder = Path(tempfile.mkdtemp(prefix="echovideo-rows-"))
        self.batch_rows, self.part_rows = batch_rows, part_rows
        self.parts, self.rows, self.finished, self.error = 0, 0, False, None
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.writer = threading.Thread(target=self._write, args=(dataset,), name="ray-data-spill", daemon=True)
        self.writer.start()

    def _write(self, dataset) -> None:
        pending: list[pa.Table] = []
        try:
            for batch in dataset.iter_batches(batch_format="pyarrow", batch_size=self.batch_rows):
                if self.stopping.is_set():
                    return
                pending.append(batch)
                if sum(t.num_rows for t in pending) >= self.part_rows:
                    self._seal(pending)
                    pending = []
            if pending:
                self._seal(pending)
        except BaseException as exc:  # raised to the reader that meets it, as the Dataset's failure
            self.error = exc
        finally:
            with self.changed:
                self.finished = True
                self.changed.notify_all()

    def _seal(self, tables: list[pa.Table]) -> None:
        # blocks of one Dataset may differ in type (a column all null in one block): one schema per part
        table = pa.concat_tables(tables, promote_options="permissive")
        temporary = self.folder / f"{self.parts:08d}.arrow.partial"
        with pa.OSFile(str(temporary), "wb") as sink, pa.ipc.new_file(sink, table.schema) as out:
            out.write_table(table)
        temporary.rename(self._path(self.parts))
        with self.changed:
            self.parts += 1
            self.rows += table.num_rows
            self.changed.notify_all()

    def _path(self, index: int) -> Path:
        return self.folder / f"{index:08d}.arrow"

    def _wait(self, ready) -> None:
        with self.changed:
            self.changed.wait_for(lambda: ready() or self.finished)
        if self.error is not None:
            raise EchoVideoInputError("dataset", f"the Ray Dataset failed while it was read ({_reason(self.error)})",
                                      "fix the Dataset's pipeline (the rows before it were handed on)") from self.error

    def batches(self) -> Iterator[list[dict]]:
        """Every row in the Dataset's order, a batch at a time, as each part is sealed."""
        index = 0
        while True:
            self._wait(lambda: self.parts > index)
            if index >= self.parts:
                return
            table = pa.ipc.open_file(pa.memory_map(str(self._path(index)))).read_all()  # mapped, not read
            for batch in table.to_batches(max_chunksize=self.batch_rows):
                yield batch.to_pylist()
            index += 1

    def column_names(self) -> list[str]:
        """The first part's columns ([] for an empty Dataset)."""
        self._wait(lambda: self.parts > 0)
        return pa.ipc.open_file(pa.memory_map(str(self._path(0)))).schema.names if self.parts else []

    def count(self, stop_at: int | None = None) -> int:
        """Rows, waiting only until `stop_at` of them are known."""
        self._wait(lambda: stop_at is not None and self.rows >= stop_at)
        return min(self.rows, stop_at) if stop_at is not None else self.rows

    def close(self) -> None:
        """Stop executing the Dataset (after the batch in hand) and delete the parts."""
        self.stopping.set()
        self.writer.join(timeout=5)
        shutil.rmtree(self.folder, ignore_errors=True)


def _reason(error: BaseException) -> str:
    """The user's own error line: a Ray task error's text is the UDF's traceback, then Ray's wrappers."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).split("\n\nThe above exception", 1)[0]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:500] if len(lines) > 1 else f"{type(error).__name__}: {text}"[:500]
