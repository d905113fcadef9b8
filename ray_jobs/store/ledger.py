"""The job ledger of an object-store output: one holder at a time, and only its records trusted, by the
store's compare-and-set, not by clocks.

The ledger is a chain of small entries, `state/journal/<seq>.json` (seq zero-padded), each created only if
its name is free (`create_only`: S3 If-None-Match, link() on a local disk). An entry says who wrote it (the
holder's epoch) and what: `take` (a job takes the prefix, epoch = every earlier epoch + 1), `renew`, `done`
and `failed` (a sample's record), `release`. A writer appends at the tail it knows + 1, so:
- two jobs taking the prefix at once race for one name: the store lets exactly one create it;
- a holder paused past its lease (GC, a stalled thread, a partition) whose successor appended a `take` finds
  its next name taken: its append fails, it reads the take and stops (`LeaseLost`) before any other write;
- a record is trusted only if its epoch is that of the last `take` before it in the chain (`replay`): no
  record of a superseded holder can be trusted, whatever the clocks say.
Clocks only decide liveness: a holder whose last entry is older than LEASE_S (by the taker's clock; or whose
process on this host is gone) may be taken over. Skewed clocks can make a takeover early, never unsafe.

`fold` packs the entries up to the tail into `state/journal-folds/<seq>.parquet` (created only once): a
rerun reads the newest fold and only the entries after it. Entries never change once created, so a fold is
the same whoever writes it.
"""

import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.parquet as pq

from echovideo.errors import EchoVideoInputError
from ray_jobs.store.create_only import create_only
from ray_jobs.store.destination import Destination
from ray_jobs.store.outputs import holder_description

JOURNAL, FOLDS = "state/journal", "state/journal-folds"
LEASE_S, LEASE_RENEW_S = 120.0, 30.0
READERS = 32  # entries read at once: a resume's cost is requests in flight, not bytes
SEQ_DIGITS = 12


class LeaseLost(EchoVideoInputError):
    """Another job holds this output prefix now: this one stops before its next write."""


@dataclass
class Replay:
    """The chain read in order: who holds it, what it trusts."""

    tail: int = 0  # the last seq (0: empty)
    epoch: int = 0  # the holding epoch (of the last take), 0 if none
    top_epoch: int = 0  # the largest epoch ever taken
    holder: dict = field(default_factory=dict)  # the holder's description (host, pid, who) from its take
    last_at: float = 0.0  # when the holder last wrote (its own clock)
    released: bool = True
    done: list = field(default_factory=list)  # trusted `done` records, in order
    failed: list = field(default_factory=list)

    def apply(self, entry: dict) -> None:
        self.tail = entry["seq"]
        kind, epoch = entry.get("kind"), entry.get("epoch")
        if kind == "take" and isinstance(epoch, int) and epoch > self.top_epoch:
            self.epoch = self.top_epoch = epoch
            self.holder, self.released = entry.get("holder") or {}, False
        if epoch != self.epoch or self.released:
            return  # a superseded holder's entry (or a malformed one): never trusted
        self.last_at = float(entry.get("at", 0.0))
        if kind == "release":
            self.released = True
        elif kind in ("done", "failed") and isinstance(entry.get("record"), dict):
            getattr(self, kind).append({**entry["record"], "lease": str(epoch)})  # the manifest says whose


def entry_name(seq: int) -> str:
    return f"{seq:0{SEQ_DIGITS}d}.json"


class Ledger:
    def __init__(self, destination: Destination, clock=time.time) -> None:
        """`clock`: wall-clock seconds, for liveness only (tests pass their own to model pauses)."""
        self.destination, self.clock = destination, clock
        self.store = create_only(destination)
        self.replay = Replay()
        self.epoch: int | None = None  # ours, while we hold the prefix
        self.lost_to: str | None = None
        self.written_at = 0.0  # monotonic time of our last successful append
        self.lock = threading.Lock()  # the driver and its renewer append one at a time

    # -- reading ---------------------------------------------------------------------------------------------
    def read(self) -> Replay:
        """The chain as the store holds it now: the newest fold, then every entry after it."""
        replay, fold_tail = Replay(), 0
        for entry in self._fold_entries():
            replay.apply(entry)
            fold_tail = entry["seq"]
        for seq, data in self._entries_after(fold_tail):
            try:
                entry = {**json.loads(data), "seq": seq}
            except (TypeError, ValueError):
                entry = {"seq": seq}  # unreadable: takes its place in the chain, trusted for nothing
            replay.apply(entry)
        self.replay = replay
        return replay

    def _entries_after(self, seq: int) -> list[tuple[int, bytes | None]]:
        """(seq, bytes) of every entry past `seq`, in order, read READERS at a time."""
        names = sorted(n for n in self.destination.names(JOURNAL) if n.endswith(".json") and n[:-5].isdigit())
        later = [n for n in names if int(n[:-5]) > seq]
        with ThreadPoolExecutor(READERS) as pool:
            return list(zip((int(n[:-5]) for n in later),
                            pool.map(lambda n: self.destination.read(f"{JOURNAL}/{n}"), later)))

    def _fold_entries(self) -> list[dict]:
        folds = sorted(n for n in self.destination.names(FOLDS) if n.endswith(".parquet"))
        for name in reversed(folds):  # the newest that reads
            data = self.destination.read(f"{FOLDS}/{name}")
            try:
                table = pq.read_table(pa.BufferReader(data))
                return [{**json.loads(text), "seq": seq} for seq, text in
                        zip(table["seq"].to_pylist(), table["entry"].to_pylist())]
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return []

    # -- holding ---------------------------------------------------------------------------------------------
    def take(self, name: str, seen: Replay | None = None) -> None:
        """Take the prefix for this job, or raise naming the live holder. `seen`: the chain as read a moment
        ago (tests interleave two takers with it); read now if not given."""
        while True:
            replay, seen = seen or self.read(), None
            if not replay.released and not stale(replay, self.clock()):
                raise EchoVideoInputError("job.output", f"another job is writing into {name} "
                                          f"({replay.holder.get('who', 'unknown')})",
                                          f"wait for it to end (a lease lapses {LEASE_S:g} s after its job stops), "
                                          "or give this job another job.output")
            epoch = replay.top_epoch + 1
            holder = {"who": holder_description(), "host": socket.gethostname(), "pid": os.getpid()}
            if self._create(replay.tail + 1, {"kind": "take", "epoch": epoch, "holder": holder}):
                self.epoch, self.lost_to = epoch, None
                return
            # another writer appended first (a renewal, or a job taking it at the same moment): look again

    def append(self, kind: str, record: dict | None = None) -> None:
        """One entry at the tail, as this epoch; raises LeaseLost if another job has appended since."""
        with self.lock:
            if self.epoch is None:
                raise LeaseLost("job.output", "this job does not hold the output", "run it as a job")
            if self.lost_to is not None:
                raise self._lost()
            entry = {"kind": kind, "epoch": self.epoch, **({"record": record} if record is not None else {})}
            while not self._create(self.replay.tail + 1, entry):
                replay = self.read()  # someone else appended: only a takeover can have
                if replay.epoch != self.epoch or replay.released:
                    self.lost_to = replay.holder.get("who", "a job that has since ended")
                    raise self._lost()

    def _create(self, seq: int, entry: dict) -> bool:
        entry = {**entry, "at": self.clock()}
        if not self.store.create(f"{JOURNAL}/{entry_name(seq)}", json.dumps(entry, ensure_ascii=True).encode()):
            return False
        self.replay.apply({**entry, "seq": seq})
        self.written_at = time.monotonic()
        return True

    def fence(self) -> None:
        """Before a write outside the chain (a sample handed to a replica, the manifest): LeaseLost if another
        job took over. Free while renewals succeed; after two missed renewals, a renewal is appended now."""
        if self.epoch is None:
            return
        if self.lost_to is None and time.monotonic() - self.written_at > 2 * LEASE_RENEW_S:
            self.append("renew")
        if self.lost_to is not None:
            raise self._lost()

    def _lost(self) -> LeaseLost:
        return LeaseLost("job.output", f"another job took over {self.destination.name} while this one was not "
                         f"renewing its lease ({self.lost_to}); this job stopped before writing more",
                         "let that job finish; rerun this one afterwards to render only what is left")

    def release(self) -> None:
        if self.epoch is not None and self.lost_to is None:
            try:
                self.append("release")
            except LeaseLost:
                pass
        self.epoch = None

    def fold(self) -> None:
        """Pack the entries up to the tail into one object (created once per tail; see the module doc)."""
        entries = self._fold_entries()
        later = self._entries_after(entries[-1]["seq"] if entries else 0)
        if not later:
            return
        kept = [(e["seq"], json.dumps({k: v for k, v in e.items() if k != "seq"})) for e in entries]
        kept += [(seq, (data or b"{}").decode("utf-8", "replace")) for seq, data in later]
        table = pa.table({"seq": [s for s, _ in kept], "entry": [t for _, t in kept]})
        sink = pa.BufferOutputStream()
        pq.write_table(table, sink)
        self.store.create(f"{FOLDS}/{kept[-1][0]:0{SEQ_DIGITS}d}.parquet", sink.getvalue().to_pybytes())


def stale(replay: Replay, now: float) -> bool:
    """A holder silent for LEASE_S at `now`, or whose process on this host no longer exists."""
    if now - replay.last_at > LEASE_S:
        return True
    if replay.holder.get("host") == socket.gethostname():
        try:
            os.kill(int(replay.holder["pid"]), 0)
        except ProcessLookupError:
            return True
        except (OSError, KeyError, ValueError, TypeError):
            return False
    return False
