"""A row's attempts on their own (no cluster): each attempt's identity derived from the one before, which
attempts a chain still wants, which attempt a row keeps, and what the gate cost. The cluster runs are in
test_quality_retries."""

import hashlib

from ray_jobs.data.attempts import (
    Chains,
    attempt_of,
    attempt_report,
    kept_attempt,
    next_attempt,
    settle_rows,
)
from ray_jobs.data.quality_gate import QualityGate
from ray_jobs.data.review import Mark
from ray_jobs.data.samples import Sample

FIRST = Sample("a" * 24, "a woman smiles", "faces/x.jpg", {"seed": 7, "steps": 2}, image=b"photo",
               row_key="r" * 32, content_key="a" * 32, identity_sha="s" * 64)


def rehash(key: str, attempt: int) -> str:
    return hashlib.sha256(f"{key}#attempt{attempt}".encode()).hexdigest()[:32]


def test_each_attempt_is_a_request_of_its_own_derived_from_the_one_before():
    second, third = next_attempt(FIRST), attempt_of(FIRST, 2)
    assert (second.attempt, second.row_id, second.content_key) == (1, FIRST.sample_id, rehash(FIRST.content_key, 1))
    assert second.sample_id == second.content_key[:24] and second.row_key == rehash(FIRST.row_key, 1)
    assert second.options["seed"] == int(hashlib.sha256(b"7:attempt1").hexdigest()[:15], 16)
    assert third.content_key == rehash(second.content_key, 2) and third.row_id == FIRST.sample_id
    assert (second.image, second.prompt, second.options["steps"]) == (FIRST.image, FIRST.prompt, 2)
    assert attempt_of(FIRST, 0) is FIRST and FIRST.options["seed"] == 7  # attempt 0 is the row's own request


def test_a_chain_wants_the_next_attempt_until_one_passes_or_the_retries_are_spent():
    chains = Chains(retries=2, keep="first", gate=QualityGate(min_identity=0.5))
    chains.record("row", 0, "id0", {"identity_average": 0.2})
    assert chains.wanted("row") == 1
    chains.record("row", 1, "id1", {"identity_average": 0.3})
    assert chains.wanted("row") == 2
    chains.record("row", 2, "id2", {"identity_average": 0.4})
    assert chains.wanted("row") is None  # 1 + 2 retries spent
    chains.record("other", 0, "o0", {"identity_average": 0.9})
    assert chains.wanted("other") is None and chains.kept_rows == 1
    assert chains.wanted("never seen") is None  # attempt 0 is the feed's to schedule


def test_keep_best_wants_every_attempt_and_a_review_rejection_buys_one_more():
    best = Chains(retries=1, keep="best", gate=QualityGate(min_identity=0.5))
    best.record("row", 0, "id0", {"identity_average": 0.9})
    assert best.wanted("row") == 1  # passed, but keep: best renders them all
    reviewed = Chains(retries=0, gate=QualityGate(marks={"id0": Mark("reject", "eyes")}))
    reviewed.record("row", 0, "id0", {"identity_average": 0.9})
    assert reviewed.active and reviewed.wanted("row") == 1


def test_a_target_counts_passing_rows_without_retries():
    chains = Chains(retries=0, gate=QualityGate(min_identity=0.5), target=2)
    assert chains.tracking and not chains.active
    for row, score in (("a", 0.9), ("b", 0.1), ("c", 0.7)):
        assert not chains.target_reached
        chains.record(row, 0, row, {"identity_average": score})
    assert chains.target_reached and chains.kept_rows == 2


def test_a_row_keeps_its_first_or_its_best_passing_attempt_and_the_report_counts_every_attempt():
    assert kept_attempt({0: (False, 0.2), 1: (True, 0.6), 2: (True, 0.8)}, "first") == 1
    assert kept_attempt({0: (False, 0.2), 1: (True, 0.6), 2: (True, 0.8)}, "best") == 2
    assert kept_attempt({0: (True, 0.7), 1: (True, 0.7)}, "best") == 0  # a tie: the earlier one
    assert kept_attempt({0: (False, 0.9)}, "best") is None
    clips = [{"sample_id": "x0", "row_id": None, "attempt": 0, "status": "rejected", "seconds": 2.0},
             {"sample_id": "x1", "row_id": "x0", "attempt": 1, "status": "ok", "seconds": 2.0,
              "scores": {"identity_average": 0.6}},
             {"sample_id": "x2", "row_id": "x0", "attempt": 2, "status": "ok", "seconds": 2.0,
              "scores": {"identity_average": 0.8}},
             {"sample_id": "y0", "row_id": None, "attempt": 0, "status": "ok", "seconds": 2.0}]
    settle_rows(clips, "best")
    assert [(c["sample_id"], c["status"], c["kept"]) for c in clips] == [
        ("x0", "rejected", False), ("x1", "superseded", False), ("x2", "ok", True), ("y0", "ok", True)]
    report = attempt_report(clips, ranks=2)
    assert report == {"pass_rate_by_attempt": {"0": 0.5, "1": 1.0, "2": 1.0}, "gpu_seconds_per_kept_clip": 8.0}
