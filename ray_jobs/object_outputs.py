"""A job's outputs under an object-store prefix (`job.output: s3://bucket/prefix`, `gs://...`): the layout of a
local folder, with per-sample completion markers instead of a journal and a lease instead of a lock.

An object store cannot append, so each completion is one small object, `state/done/<name>.json`, put by
the driver after rank 0's video is in place (and `state/failed/<name>.json` for a failure). Resume lists
`state/done/` and `videos/` (a request per 1,000 keys each) and reads the markers; a video without its
marker is rendered again and replaces it. Reading a million markers would take a million requests, so
the end of every run folds the done markers into `state/done.parquet` (marker name -> record): the next
run reads that one object and only the markers it does not hold. Only a listed marker counts, so the fold
is never trusted for a marker that is gone; a clip rendered again after its video was deleted keeps its
earlier record's timings. Logs are written on local disk
and uploaded whole.

One job at a time per prefix: `state/job.lock` names its holder and is renewed every LEASE_RENEW_S by a
thread. A second job refuses while the lease is younger than LEASE_S; a holder on this host whose process
is gone is stale at once (the usual rerun after a crash); on another host its lease lapses. Object stores
offer no create-only write through pyarrow, so two jobs starting in the same second could both take it:
the lease is re-read after writing and a lost race stops the job.

Fencing: a driver whose renewals stalled (a paused process, a partitioned network) may find its lapsed
lease taken. Every renewal reads the lease before writing it and never overwrites another holder's; every
write of the driver (`fence`) first checks that its lease was confirmed recently, verifying it with the
store when it was not, and a driver that lost its lease raises `LeaseLost` (exit 2, naming the holder)
before that write. Markers carry their lease token and the time they were written; a driver taking over a
lapsed lease records the old token as lost from that moment (`state/lost/<token>.json`), and resume and
the fold ignore markers of a lost lease written after it (assumes hosts' clocks agree to well within
LEASE_S, as any lease does).
"""

import itertools
import json
import logging
import os
import socket
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from echovideo.errors import EchoVideoInputError
from echovideo.locations import default_cache_dir, store_hint
from ray_jobs.destination import Destination
from ray_jobs.outputs import JobOutputs, holder_description, safe_name, writing

LEASE = "state/job.lock"
LOST = "state/lost"
FOLDED = "state/done.parquet"
LEASE_S, LEASE_RENEW_S = 120.0, 30.0
READERS = 32  # markers read at once: the cost of a resume is requests in flight, not bytes
logger = logging.getLogger("ray_jobs")


class LeaseLost(EchoVideoInputError):
    """Another job holds this output prefix now: this one stops before its next write."""


class ObjectStoreOutputs(JobOutputs):
    def __init__(self, location: str) -> None:
        super().__init__(Destination(location))
        self.token: str | None = None  # this job's lease, while it holds one
        self.confirmed_at = 0.0  # monotonic time the store last confirmed the lease was ours
        self.lost_to: str | None = None  # the holder that took the lease, once known
        self.logs = default_cache_dir() / "job-logs" / f"{safe_name(self.name)}"
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.destination.put("state/writable.probe", b"ok")
        except OSError as exc:
            raise EchoVideoInputError("job.output", f"{self.name} cannot be written ({str(exc)[:300]})"
                                      f"{store_hint(str(exc))}",
                                      "check the URI, the bucket and the storage credentials in the "
                                      "environment (AWS_ACCESS_KEY_ID, ...)") from None

    # -- completion records ------------------------------------------------------------------------------------
    def record_success(self, record: dict) -> None:
        self._put_record("done", record)

    def record_failure(self, record: dict) -> None:
        self._put_record("failed", record)

    def _put_record(self, kind: str, record: dict) -> None:
        self.fence()
        with writing(self.name):
            self.destination.put(f"state/{kind}/{safe_name(record['sample_id'])}.json",
                                 json.dumps({**record, "lease": self.token, "written": time.time()},
                                            ensure_ascii=True).encode())

    def _completion_records(self) -> Iterator[dict]:
        folded, lost = self._folded(), self._lost_leases()
        names = self._marker_names("done")
        records = itertools.chain((folded[name] for name in names if name in folded),
                                  self._read_markers("done", [name for name in names if name not in folded]))
        return (record for record in records if not _after_loss(record, lost))

    def _failure_records(self) -> Iterator[dict]:
        lost = self._lost_leases()
        return (r for r in self._read_markers("failed", self._marker_names("failed")) if not _after_loss(r, lost))

    def _lost_leases(self) -> dict[str, float]:
        """Token -> when it was lost, for every lease another job took over."""
        return {name.removesuffix(".json"): float(json.loads(self.destination.read(f"{LOST}/{name}") or b"{}")
                                                  .get("lost_at", 0.0))
                for name in self.destination.names(LOST) if name.endswith(".json")}

    def _marker_names(self, kind: str) -> list[str]:
        return [name for name in self.destination.names(f"state/{kind}") if name.endswith(".json")]

    def _read_markers(self, kind: str, names: list[str]) -> Iterator[dict]:
        """Markers read READERS at a time; one that does not parse (written by hand, cut short some other way)
        is not trusted: that sample is simply done again."""
        with ThreadPoolExecutor(READERS) as pool:
            for data in pool.map(self.destination.read, [f"state/{kind}/{name}" for name in names]):
                try:
                    yield json.loads(data)
                except (TypeError, ValueError):
                    continue

    def _folded(self) -> dict[str, dict]:
        """Marker name -> record from the last run's fold; nothing if there is none or it does not read."""
        data = self.destination.read(FOLDED)
        try:
            table = pq.read_table(pa.BufferReader(data)) if data else None
        except (OSError, ValueError):
            return {}
        if table is None:
            return {}
        return dict(zip(table["marker"].to_pylist(), map(json.loads, table["record"].to_pylist())))

    def files_for(self, sample_id: str, identity_sha: str, photo: bytes) -> dict[str, str]:
        self.fence()  # handing a sample to rank 0 starts writes into the prefix
        return super().files_for(sample_id, identity_sha, photo)

    def _finalize(self, summary: dict, gate, requested: set[str] | None) -> dict:
        self.fence()
        return super()._finalize(summary, gate, requested)

    def _compact(self, done: dict[str, dict]) -> None:
        table = pa.table({"marker": [f"{safe_name(sample_id)}.json" for sample_id in done],
                          "record": [json.dumps(record, ensure_ascii=True) for record in done.values()]})
        with self.destination.output(FOLDED, ".parquet") as local:
            pq.write_table(table, str(local))

    # -- one job at a time ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the prefix for this job with a renewed lease (see the module doc)."""
        holder = self._lease()
        if holder is not None and not _stale(holder):
            raise EchoVideoInputError("job.output", f"another job is writing into {self.name} ({holder['who']})",
                                      f"wait for it to end (a lease lapses {LEASE_S:g} s after its job stops), or "
                                      "give this job another job.output")
        token = uuid.uuid4().hex
        if holder is not None and holder.get("token"):  # taken over: its later writes are not to be trusted
            self.destination.put(f"{LOST}/{holder['token']}.json", json.dumps({"lost_at": time.time()}).encode())
        self._write_lease(token)
        if (self._lease() or {}).get("token") != token:
            raise EchoVideoInputError("job.output", f"another job took {self.name} at the same moment",
                                      "run one job per output prefix")
        self.token, self.confirmed_at, self.lost_to = token, time.monotonic(), None
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop,), daemon=True, name="lease")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            if self.lost_to is None and (self._lease() or {}).get("token") == token:
                self.destination.delete(LEASE)
            self.token = None

    def _lease(self) -> dict | None:
        data = self.destination.read(LEASE)
        try:
            return json.loads(data) if data else None
        except ValueError:
            return None

    def _write_lease(self, token: str) -> None:
        self.destination.put(LEASE, json.dumps({"token": token, "who": holder_description(), "renewed": time.time(),
                                                "host": socket.gethostname(), "pid": os.getpid()}).encode())

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(LEASE_RENEW_S) and self.lost_to is None:
            try:
                self._confirm()
            except OSError as exc:  # the store is unreachable now: the job's own writes will say so
                logger.warning("could not renew the lease on %s (%s)", self.name, str(exc)[:200])

    def _confirm(self) -> bool:
        """Renew the lease if it is still ours (read first: never overwrite another holder's); -> still ours."""
        holder = self._lease() or {}
        if holder.get("token") != self.token:
            self.lost_to = holder.get("who", "a job that has since ended")
            return False
        self._write_lease(self.token)
        self.confirmed_at = time.monotonic()
        return True

    def fence(self) -> None:
        """Before each write: raise LeaseLost if another job holds the prefix. Free while the renewals keep
        the lease confirmed; a lease unconfirmed for longer than two renewals is verified with the store now."""
        if self.token is None:
            return  # not held (a tool reading or writing outside a job)
        if self.lost_to is None and time.monotonic() - self.confirmed_at > 2 * LEASE_RENEW_S:
            self._confirm()
        if self.lost_to is not None:
            raise LeaseLost("job.output", f"another job took over {self.name} while this one was not renewing its "
                            f"lease ({self.lost_to}); this job stopped before writing more",
                            "let that job finish; rerun this one afterwards to render only what is left")

    # -- logs ------------------------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        """On this machine (a node-local cache folder per output); `publish_logs` uploads them whole."""
        return self.logs / name

    def publish_logs(self) -> None:
        with writing(self.name):
            for path in self.logs.iterdir():
                self.destination.put(f"logs/{path.name}", path.read_bytes())


def _after_loss(record: dict, lost: dict[str, float]) -> bool:
    """A marker written under a lease after another job took it over (a fenced driver's last write in flight)."""
    return record.get("lease") in lost and record.get("written", 0.0) > lost[record["lease"]]


def _stale(holder: dict) -> bool:
    """A lease not renewed for LEASE_S, or held by a process of this host that no longer exists."""
    if time.time() - holder.get("renewed", 0) > LEASE_S:
        return True
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, KeyError, ValueError):
            return False
    return False
