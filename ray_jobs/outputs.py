"""The output folder: videos, posters, a completion journal, and at the end manifest, failures, summary, gallery.

Exactly-once: a worker renames the finished mp4 into place, then the driver appends the completion to
`state/completed.jsonl` (flushed and fsynced). Resume skips ids that are recorded AND whose file exists;
everything else is rendered again (at-least-once execution, idempotent keyed outputs).
"""

import hashlib
import html
import json
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from echovideo.errors import EchoVideoInputError
from echovideo.video_io import atomic_output
from ray_jobs.failures import OutputError

SAFE = re.compile(r"[^A-Za-z0-9._-]")


def safe_name(sample_id: str) -> str:
    """A file name that stays inside its folder whatever the id holds (../, /, NUL, 300 characters).

    Ids that are already safe keep their name; any other gets a readable prefix and a hash of the whole
    id, so two different ids never share a file ("a/b" and "a_b").
    """
    name = SAFE.sub("_", sample_id).lstrip(".")[:80]
    if name == sample_id:
        return name
    return f"{name or 'sample'}-{hashlib.sha256(sample_id.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


@contextmanager
def writing(what: Path) -> Iterator[None]:
    """OS errors while writing the output become one clear job-level error (disk full, read-only, gone)."""
    try:
        yield
    except OSError as exc:
        raise OutputError(f"job.output: cannot write {what} ({exc.strerror or exc}); free space or fix the folder, "
                          "then rerun the same job: finished clips are kept and only the rest is rendered") from exc


class OutputStore:
    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.videos, self.posters, self.state = self.folder / "videos", self.folder / "posters", self.folder / "state"
        try:
            for path in (self.videos, self.posters, self.state, self.folder / "logs"):
                path.mkdir(parents=True, exist_ok=True)
            with atomic_output(self.state / "writable", ".probe") as probe:
                probe.write_text("ok")
        except OSError as exc:
            raise EchoVideoInputError("job.output", f"{self.folder} cannot be written ({exc.strerror or exc})",
                                      "choose a writable folder with free space") from None

    def video_path(self, sample_id: str) -> Path:
        return self.videos / f"{safe_name(sample_id)}.mp4"

    def poster_path(self, sample_id: str) -> Path:
        return self.posters / f"{safe_name(sample_id)}.jpg"

    def remove_orphan_temps(self) -> int:
        """Temp files of renders that died mid-write (never under a final name)."""
        orphans = [p for folder in (self.videos, self.posters) for p in folder.glob(".*.tmp*")]
        for path in orphans:
            path.unlink(missing_ok=True)
        return len(orphans)

    def _journal(self, name: str) -> Iterator[dict]:
        """The journal's records, streamed (a million-line journal is never one string in memory)."""
        path = self.state / name
        if not path.exists():
            return
        with open(path) as handle:
            for line in handle:
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:  # a line torn by a crash mid-append: that sample is simply redone
                    continue

    def _present_videos(self) -> set[str]:
        """File names in videos/, listed once (one directory read, not a stat per record)."""
        return {entry.name for entry in os.scandir(self.videos)}

    def completed(self) -> dict[str, dict]:
        present = self._present_videos()
        return {r["sample_id"]: r for r in self._journal("completed.jsonl")
                if self.video_path(r["sample_id"]).name in present}

    def resume_index(self) -> tuple[set[str], dict[str, str]]:
        """What a rerun skips: finished sample ids, and row key -> sample id for the rows they came from.

        Only ids and keys are kept (tens of bytes per finished row); a record counts only if its video exists.
        """
        present, done, rows = self._present_videos(), set(), {}
        for record in self._journal("completed.jsonl"):
            sid = record["sample_id"]
            if self.video_path(sid).name in present:
                done.add(sid)
                if record.get("row_key"):
                    rows[record["row_key"]] = sid
        return done, rows

    def _append(self, name: str, record: dict) -> None:
        path = self.state / name
        with writing(path), open(path, "a+b") as handle:
            line = (json.dumps(record, ensure_ascii=True) + "\n").encode()
            size = handle.seek(0, os.SEEK_END)
            if size:  # a crash mid-append leaves a line without its newline: end it, or this record joins it
                handle.seek(size - 1)
                if handle.read(1) != b"\n":
                    line = b"\n" + line
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def record_success(self, record: dict) -> None:
        self._append("completed.jsonl", record)

    def record_failure(self, record: dict) -> None:
        self._append("failed.jsonl", record)

    def finalize(self, summary: dict) -> dict:
        """manifest.parquet (one row per sample, latest outcome), failures.parquet, summary.json, index.html."""
        with writing(self.folder):
            return self._finalize(summary)

    def _finalize(self, summary: dict) -> dict:
        done = self.completed()
        failed = {r["sample_id"]: r for r in self._journal("failed.jsonl") if r["sample_id"] not in done}
        rows = [{**r, "status": "ok", "error": None} for r in done.values()] + \
               [{**r, "status": "failed", "path": None} for r in failed.values()]
        columns = ["sample_id", "status", "prompt", "identity", "seed", "options", "path", "error", "attempts",
                   "seconds", "replica"]
        table = pa.table({c: [_cell(r.get(c)) for r in rows] for c in columns},
                         schema=pa.schema([(c, pa.int64() if c in ("seed", "attempts") else
                                            pa.float64() if c == "seconds" else pa.string()) for c in columns]))
        self._write_parquet(table, "manifest.parquet")
        self._write_parquet(table.filter(pc.equal(table["status"], "failed")), "failures.parquet")
        summary = {**summary, "ok": len(done), "failed": len(failed)}
        with atomic_output(self.folder / "summary.json", ".json") as tmp:
            tmp.write_text(json.dumps(summary, indent=2))
        self._write_gallery(list(done.values()), list(failed.values()))
        return summary

    def _write_parquet(self, table: pa.Table, name: str) -> None:
        with atomic_output(self.folder / name, ".parquet") as tmp:
            pq.write_table(table, str(tmp))

    def _write_gallery(self, done: list[dict], failed: list[dict]) -> None:
        cards = [f'<figure><video controls preload="none" src="videos/{safe_name(r["sample_id"])}.mp4" '
                 f'poster="posters/{safe_name(r["sample_id"])}.jpg" width="256"></video>'
                 f'<figcaption>{html.escape(r["prompt"][:200])}<br><small>{html.escape(r["sample_id"])} · '
                 f'seed {r["seed"]}</small></figcaption></figure>' for r in sorted(done, key=lambda r: r["sample_id"])]
        failures = [f'<li>{html.escape(r["sample_id"])}: {html.escape(str(r.get("error"))[:300])}</li>' for r in failed]
        page = ("<!doctype html><meta charset=utf-8><title>echovideo gallery</title><style>body{font-family:sans-serif}"
                "figure{display:inline-block;width:256px;margin:8px;vertical-align:top}</style>"
                f"<h1>{len(done)} clips, {len(failed)} failed</h1>{''.join(cards)}"
                + (f"<h2>Failures</h2><ul>{''.join(failures)}</ul>" if failures else ""))
        with atomic_output(self.folder / "index.html", ".html") as tmp:
            tmp.write_text(page)


def _cell(value):
    return json.dumps(value, sort_keys=True) if isinstance(value, dict) else value
