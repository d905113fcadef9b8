"""The ledger of an object-store output against real stores (SeaweedFS on 127.0.0.1, and a local disk through a
file:// prefix): the store's create-only write is a real compare-and-set, and under every interleaving of two
drivers (takes, reads taken a moment before, renewals, pauses past the lease, records, resumes) at most one
holder's records are trusted, a stale holder's never, and every requested sample is recorded exactly once with
the clip its request describes."""

import json
import subprocess
import sys
import threading
import uuid

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.records import Failed, Rendered
from ray_jobs.store.create_only import create_only
from ray_jobs.store.destination import Destination
from ray_jobs.store.ledger import JOURNAL, LEASE_S, LeaseLost, Ledger, entry_name
from ray_jobs.store.object_store import ObjectStoreOutputs


@pytest.fixture(params=["seaweedfs", "file"])
def new_prefix(request, tmp_path):
    """A function giving a fresh output prefix on the real S3 server, or a file:// URI on the local disk."""
    if request.param == "file":
        return lambda: f"file://{tmp_path}/{uuid.uuid4().hex[:8]}"
    store = request.getfixturevalue("object_store")
    return lambda: store.uri(f"ledger-{uuid.uuid4().hex[:8]}")


def test_the_store_lets_exactly_one_of_many_racing_writers_create_a_name(new_prefix):
    store = create_only(Destination(new_prefix()))
    assert store.fenced
    for trial in range(10):
        winners, start = [], threading.Barrier(8)

        def write(i, name=f"race/{trial}.json"):
            start.wait()
            if store.create(name, str(i).encode()):
                winners.append(i)

        threads = [threading.Thread(target=write, args=(i,)) for i in range(8)]
        [t.start() for t in threads]
        [t.join() for t in threads]
        assert len(winners) == 1, winners
        assert store.destination.read(f"race/{trial}.json") == str(winners[0]).encode()


def record(sample_id: str, content: str = "") -> dict:
    return {"sample_id": sample_id, "row_key": f"k-{sample_id}", "content_key": content or f"c-{sample_id}",
            "prompt": "p", "identity": "i", "seed": 1, "options": {}, "path": f"videos/{sample_id}.mp4",
            "attempts": 1, "seconds": 1.0, "replica": "0"}


def test_resume_trusts_a_clip_only_with_its_record_and_reads_the_fold(new_prefix):
    outputs = ObjectStoreOutputs(new_prefix())
    with outputs.locked():
        for sample_id, video, recorded in (("both", True, True), ("video-only", True, False),
                                           ("record-only", False, True)):
            if video:
                outputs.destination.put(outputs.video_name(sample_id), b"mp4")
            if recorded:
                outputs.record(Rendered(**record(sample_id)))
        outputs.record(Failed(**{"sample_id": "bad", "row_key": "k-bad", "kind": "bad input", "error": "no face"}))
        outputs.record(Failed(**{"sample_id": "flaky", "row_key": "k-flaky", "kind": "group lost", "error": "gone"}))
        outputs.finalize({})  # folds the ledger
    outputs.destination.put(f"{JOURNAL}/{entry_name(10**9)}", b'{"kind": "done", "epoch": 1, "record": {"sample')
    rerun = ObjectStoreOutputs(outputs.destination.location)
    assert rerun.resume_index() == ({"both": "c-both"}, {"k-both": "both", "k-bad": "bad"})
    with rerun.locked():
        rerun.destination.put(rerun.video_name("late"), b"mp4")
        rerun.record(Rendered(**record("late")))  # after the fold: read as an entry
    assert ObjectStoreOutputs(outputs.destination.location).resume_index()[0] == {"both": "c-both", "late": "c-late"}


def test_one_job_per_prefix_and_a_dead_holder_on_this_host_is_stale_at_once(new_prefix):
    location = new_prefix()
    first, second = ObjectStoreOutputs(location), ObjectStoreOutputs(location)
    with first.locked():
        with pytest.raises(EchoVideoInputError, match="another job is writing into"):
            with second.locked():
                pass
    with second.locked():  # released at the end of the first
        pass
    taken = subprocess.run([sys.executable, "-c", (  # a driver that took the prefix and was killed
        "import sys; from ray_jobs.store.object_store import ObjectStoreOutputs\n"
        "ObjectStoreOutputs(sys.argv[1]).ledger.take('x')"), location], capture_output=True, text=True)
    assert taken.returncode == 0, taken.stderr
    with second.locked():  # its holder's process is gone from this host: stale at once
        pass


def test_a_renewer_paused_past_the_lease_cannot_write_after_the_takeover(new_prefix):
    """The issue's reproduction: the stale driver's renewal and records fail; the successor keeps the prefix."""
    location, now = new_prefix(), [1000.0]
    first, second = Ledger(Destination(location), lambda: now[0]), Ledger(Destination(location), lambda: now[0])
    first.take("out")
    first.append("done", record("before"))
    seen_by_first = first.replay.tail
    now[0] += LEASE_S + 1  # the first is paused (GC, a partition) past its lease
    second.take("out")
    second.append("done", record("second"))
    assert first.replay.tail == seen_by_first  # it wakes up knowing nothing of the takeover
    for write in (lambda: first.append("renew"), lambda: first.append("done", record("stale")), first.fence):
        with pytest.raises(LeaseLost, match="another job took over"):
            write()
    second.append("renew")  # the successor was never disturbed
    assert [r["sample_id"] for r in Ledger(Destination(location)).read().done] == ["before", "second"]


class TwoDrivers(RuleBasedStateMachine):
    """Two drivers on one prefix; a shared clock that only the test moves (a pause is the clock jumping)."""

    prefix_factory = None

    @initialize()
    def start(self):
        self.location, self.now = self.prefix_factory(), [1000.0]
        self.drivers = [Ledger(Destination(self.location), lambda: self.now[0]) for _ in range(2)]
        self.seen = [None, None]  # a chain view a driver read earlier, to take with later (read A, read B, ...)
        self.written: list[dict] = []  # every record whose append returned: each must be trusted
        self.refused: list[dict] = []  # every record whose append raised LeaseLost: none may be trusted
        self.requested = [f"s{i}" for i in range(5)]

    @rule(d=st.integers(0, 1))
    def read_ahead(self, d):
        self.seen[d] = self.drivers[d].read()

    @rule(d=st.integers(0, 1), with_view=st.booleans())
    def take(self, d, with_view):
        seen, self.seen[d] = (self.seen[d] if with_view else None), None
        driver = self.drivers[d]
        if driver.epoch is not None and driver.lost_to is None:
            return
        driver.epoch = None
        try:
            driver.take("out", seen)
        except EchoVideoInputError:
            pass

    @rule(d=st.integers(0, 1))
    def render_next(self, d):
        """The holder records the next sample its view says is not done (what a resume would hand out)."""
        driver = self.drivers[d]
        if driver.epoch is None:
            return
        done = {r["sample_id"] for r in driver.replay.done}
        todo = [s for s in self.requested if s not in done]  # (rogue records are not requested samples)
        if not todo:
            return
        entry = record(todo[0], content=f"clip of {todo[0]}")
        try:
            driver.append("done", entry)
            self.written.append(entry)
        except LeaseLost:
            self.refused.append(entry)

    @rule(d=st.integers(0, 1))
    def write_without_the_protocol(self, d):
        """An entry put at the chain's real tail + 1 under this driver's epoch, by a writer that did not follow
        the chain (an older program, a hand edit): trusted only if that epoch holds the prefix."""
        driver = self.drivers[d]
        if driver.epoch is None:
            return
        now = Ledger(Destination(self.location)).read()
        entry = record(f"rogue-{len(self.written) + len(self.refused)}", content="clip of rogue")
        body = {"kind": "done", "epoch": driver.epoch, "record": entry, "at": self.now[0]}
        assert driver.store.create(f"{JOURNAL}/{entry_name(now.tail + 1)}", json.dumps(body).encode())
        (self.written if driver.epoch == now.epoch and not now.released else self.refused).append(entry)

    @rule(d=st.integers(0, 1))
    def renew(self, d):
        if self.drivers[d].epoch is not None:
            try:
                self.drivers[d].append("renew")
            except LeaseLost:
                pass

    @rule()
    def pause_past_the_lease(self):
        self.now[0] += LEASE_S + 1

    @rule(d=st.integers(0, 1))
    def release(self, d):
        self.drivers[d].release()

    @invariant()
    def only_the_holders_records_are_trusted(self):
        if not hasattr(self, "drivers"):
            return
        replay = Ledger(Destination(self.location)).read()
        trusted = [{k: v for k, v in r.items() if k != "lease"} for r in replay.done]
        assert trusted == self.written  # every acknowledged record, in order, and nothing else
        assert not [r for r in self.refused if r in trusted]
        assert len({r["sample_id"] for r in trusted}) == len(trusted)  # exactly once
        assert all(r["content_key"] in (f"clip of {r['sample_id']}", "clip of rogue") for r in trusted)
        holders = [d for d in self.drivers if d.epoch is not None and d.lost_to is None and d.epoch == replay.epoch]
        assert len(holders) <= 1 or replay.released

    def teardown(self):
        if not hasattr(self, "drivers"):
            return
        self.now[0] += LEASE_S + 1  # a last driver resumes and finishes the job: every sample exactly once
        last = Ledger(Destination(self.location), lambda: self.now[0])
        last.take("out")
        for sample in [s for s in self.requested if s not in {r["sample_id"] for r in last.replay.done}]:
            last.append("done", record(sample, content=f"clip of {sample}"))
        final = Ledger(Destination(self.location)).read().done
        assert sorted(r["sample_id"] for r in final if not r["sample_id"].startswith("rogue")) == self.requested


def test_two_drivers_under_every_interleaving(new_prefix, request):
    TwoDrivers.prefix_factory = staticmethod(new_prefix)
    examples = 400 if "file" in request.node.name else 30  # the store's own race is the test above
    TwoDrivers.TestCase.settings = settings(max_examples=examples, stateful_step_count=20, deadline=None,
                                            suppress_health_check=list(HealthCheck), derandomize=True)
    TwoDrivers.TestCase().runTest()
