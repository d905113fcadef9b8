"""A job's outputs under an object-store prefix (`job.output: s3://bucket/prefix`, `gs://...`, `file://...`): the
layout of a local folder, with its records and its one-job-at-a-time rule kept in the ledger (`store.ledger`).

An object store cannot append, so each record (a finished or failed sample) is one entry of the ledger,
created by the driver after rank 0's video is in place, and only if the driver still holds the prefix: the
store's compare-and-set decides, so a driver that lost the prefix writes no record and stops. Resume reads the
ledger's trusted records and lists `videos/`; a video without its record is rendered again under the same key.
The end of every run folds the ledger into one object, so a rerun reads that and only the entries after it.

The lease: `Ledger.take` as the job starts, a `renew` entry every LEASE_RENEW_S from a thread, `release` at
the end. A second job refuses while the holder's last entry is younger than LEASE_S (a holder on this host
whose process is gone is stale at once); every write of the driver outside the ledger (handing a sample to a
replica, the manifest) is fenced first (`fence`). Logs are written on local disk and uploaded whole.
"""

import logging
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from echovideo.errors import EchoVideoInputError
from echovideo.locations import default_cache_dir, store_hint
from ray_jobs.store.destination import Destination
from ray_jobs.store.ledger import LEASE_RENEW_S, LEASE_S, LeaseLost, Ledger
from ray_jobs.store.outputs import Outputs, safe_name, writing

__all__ = ["LEASE_RENEW_S", "LEASE_S", "LeaseLost", "ObjectStoreOutputs"]
logger = logging.getLogger("ray_jobs")


class ObjectStoreOutputs(Outputs):
    def __init__(self, location: str) -> None:
        super().__init__(Destination(location))
        self.logs = default_cache_dir() / "job-logs" / f"{safe_name(self.name)}"
        try:
            self.logs.mkdir(parents=True, exist_ok=True)
            self.destination.put("state/writable.probe", b"ok")
            self.ledger = Ledger(self.destination)
        except OSError as exc:
            raise EchoVideoInputError("job.output", f"{self.name} cannot be written ({str(exc)[:300]})"
                                      f"{store_hint(str(exc))}",
                                      "check the URI, the bucket and the storage credentials in the "
                                      "environment (AWS_ACCESS_KEY_ID, ...)") from None

    # -- records: ledger entries -----------------------------------------------------------------------------
    def _append(self, kind: str, record: dict) -> None:
        with writing(self.name):
            self.ledger.append(kind, record)

    def _replay(self):
        """While this job holds the prefix its view is current (it is the only writer); otherwise read now."""
        return self.ledger.replay if self.ledger.epoch is not None else self.ledger.read()

    def _completion_records(self) -> Iterator[dict]:
        return iter(self._replay().done)

    def _failure_records(self) -> Iterator[dict]:
        return iter(self._replay().failed)

    def files_for(self, sample_id: str, identity_sha: str, photo: bytes) -> dict[str, str]:
        self.fence()  # handing a sample to rank 0 starts writes into the prefix
        return super().files_for(sample_id, identity_sha, photo)

    def _finalize(self, summary: dict, gate, requested: set[str] | None, keep: str) -> dict:
        self.fence()
        return super()._finalize(summary, gate, requested, keep)

    def _compact(self, done: dict[str, dict]) -> None:
        self.ledger.fold()

    # -- one job at a time ---------------------------------------------------------------------------------
    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the prefix for this job, renewed by a thread (see the module doc)."""
        with writing(self.name):
            self.ledger.take(self.name)
        stop = threading.Event()
        renewer = threading.Thread(target=self._renew, args=(stop,), daemon=True, name="lease")
        renewer.start()
        try:
            yield
        finally:
            stop.set()
            renewer.join()
            try:
                self.ledger.release()
            except OSError as exc:  # the store is unreachable: the lease lapses on its own
                logger.warning("could not release the lease on %s (%s)", self.name, str(exc)[:200])

    def _renew(self, stop: threading.Event) -> None:
        while not stop.wait(LEASE_RENEW_S) and self.ledger.lost_to is None:
            try:
                self.ledger.append("renew")
            except LeaseLost:
                return  # the driver's next write says so
            except OSError as exc:  # the store is unreachable now: the job's own writes will say so
                logger.warning("could not renew the lease on %s (%s)", self.name, str(exc)[:200])

    def fence(self) -> None:
        with writing(self.name):
            self.ledger.fence()

    # -- logs ------------------------------------------------------------------------------------------------
    def log_path(self, name: str) -> Path:
        """On this machine (a node-local cache folder per output); `publish_logs` uploads them whole."""
        return self.logs / name

    def publish_logs(self) -> None:
        with writing(self.name):
            for path in self.logs.iterdir():
                self.destination.put(f"logs/{path.name}", path.read_bytes())
