"""Quality retries on a real local Ray cluster with the tiny model: a clip the gate rejects is rendered again
with the next derived seed; the first (or the best) passing attempt is the row's clip; a dataset target stops
taking rows; a rerun goes on mid-chain; a review's rejection buys a row one more attempt.

The renders are real; only the identity score is the seed's (`SeedScored`): the tiny model draws no face
the scorer could match, and a score the test can compute from the seed decides pass and fail exactly.
"""

import hashlib
import json
import sys

import pytest
from jobs import FRAMES, gallery_data, job, manifest, write_jsonl
from ray import cloudpickle

from ray_jobs.runtime.engine import run_job
from ray_jobs.runtime.worker import RankWorker

cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the seed-scored worker travels by value
GATE = 0.5


def score_of(seed: int) -> float:
    return (seed % 1000) / 1000


class SeedScored(RankWorker):
    """A real render whose identity score is the seed's: pass or fail is known from the seed alone."""

    def render(self, sample_id, prompt, image, options, files, scores=True, about=None):
        result = super().render(sample_id, prompt, image, options, files, scores, about)
        if result:  # rank 0
            result["scores"] = {"identity_average": score_of(options["seed"]), "identity_variation": 0.0,
                                "face_share": 1.0, "motion": 1.0, "dynamic": False}
        return result


def next_seed(seed: int, attempt: int) -> int:
    """The next attempt's seed, written out: sha256 of "<seed>:attempt<k>", first 15 hex digits."""
    return int(hashlib.sha256(f"{seed}:attempt{attempt}".encode()).hexdigest()[:15], 16)


def chain(seed: int, attempts: int) -> list[tuple[int, float]]:
    """(seed, score) of a row's attempts 0..attempts-1."""
    seeds = [seed]
    for k in range(1, attempts):
        seeds.append(next_seed(seeds[-1], k))
    return [(s, score_of(s)) for s in seeds]


@pytest.fixture()
def rows(tmp_path, face_path):
    prompts = ["a woman smiles", "a woman laughs", "a woman waves", "a woman nods", "a man sings", "a man bows"]
    return write_jsonl(tmp_path / "rows.jsonl", [{"prompt": p, "identity": str(face_path)} for p in prompts])


def retry_job(rows, out, **overrides):
    return job(rows, out, **{"parallel.ulysses": 1, "parallel.replicas": 2, "quality.min_identity": GATE,
                             "quality.retries": 2, **overrides})


def by_row(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = {}
    for record in records:
        grouped.setdefault(record["row_id"] or record["sample_id"], []).append(record)
    return {row: sorted(attempts, key=lambda r: r["attempt"]) for row, attempts in grouped.items()}


def assert_first_passing_chains(rows: dict[str, list[dict]], retries: int) -> None:
    """Each row: attempts until the first that passes (at most retries + 1), seeds derived one from the other,
    the passing one kept, the rest rejected."""
    for attempts in rows.values():
        expected = chain(attempts[0]["seed"], retries + 1)
        passing = next((k for k, (_, score) in enumerate(expected) if score >= GATE), None)
        rendered = retries + 1 if passing is None else passing + 1
        assert [r["attempt"] for r in attempts] == list(range(rendered))
        assert [r["seed"] for r in attempts] == [seed for seed, _ in expected[:rendered]]
        assert [r["kept"] for r in attempts] == [k == passing for k in range(rendered)]
        assert [r["status"] for r in attempts] == ["ok" if k == passing else "rejected" for k in range(rendered)]


def test_a_rejected_clip_is_rendered_again_until_one_passes_and_only_that_one_is_exported(local_ray, rows,
                                                                                          tmp_path):
    out = tmp_path / "out"
    report = run_job(retry_job(rows, out), progress=False, worker=SeedScored)
    records = manifest(out)
    assert len({r["sample_id"] for r in records}) == len(records) == report.rendered  # every attempt once
    grouped = by_row(records)
    assert len(grouped) == 6 and any(len(a) > 1 for a in grouped.values())  # some rows needed another seed
    assert_first_passing_chains(grouped, retries=2)
    summary = report.summary
    assert summary["ok"] == sum(r["kept"] for r in records)
    for attempt, rate in summary["pass_rate_by_attempt"].items():
        tried = [r for r in records if r["attempt"] == int(attempt)]
        assert rate == pytest.approx(sum(r["status"] == "ok" for r in tried) / len(tried), abs=1e-4)
    assert summary["gpu_seconds_per_kept_clip"] == pytest.approx(
        sum(r["seconds"] for r in records) / summary["ok"], rel=0.01)
    from echovideo.cli import main

    assert main(["eval", str(out)]) == 0
    evaluated = json.loads((out / "eval.json").read_text())
    assert evaluated["retries"] == {k: summary[k] for k in ("pass_rate_by_attempt", "gpu_seconds_per_kept_clip")}
    assert evaluated["clips"] == len(records)  # every attempt measured: eval measures the model, not the gate
    assert main(["export", str(out), "--format", "csv", "--to", str(tmp_path / "csv")]) == 0
    exported = (tmp_path / "csv" / "clips.csv").read_text()
    assert all((r["sample_id"] in exported) == r["kept"] for r in records)
    cards = gallery_data(out)
    assert len(cards["clips"]) + len(cards["rejected"]) == 6  # one card per row, its other attempts on it
    row_of = {r["sample_id"]: r["row_id"] or r["sample_id"] for r in records}
    for card in cards["clips"] + cards["rejected"]:
        assert len(card.get("o", [])) == len(grouped[row_of[card["id"]]]) - 1


@pytest.mark.slow  # the choice itself is tested without a cluster (test_attempts); this is the whole run
def test_keep_best_renders_every_attempt_and_keeps_the_highest_passing_score(local_ray, rows, tmp_path):
    out = tmp_path / "out"
    run_job(retry_job(rows, out, **{"quality.keep": "best", "dataset.limit": 3}), progress=False, worker=SeedScored)
    for attempts in by_row(manifest(out)).values():
        assert [r["attempt"] for r in attempts] == [0, 1, 2]
        passing = [r for r in attempts if r["identity_average"] >= GATE]
        kept = [r for r in attempts if r["kept"]]
        assert kept == ([max(passing, key=lambda r: r["identity_average"])] if passing else [])
        assert all(r["status"] == "superseded" for r in passing if not r["kept"])


def test_a_target_stops_taking_rows_and_says_how_many_were_not_needed(local_ray, rows, tmp_path):
    out = tmp_path / "out"
    report = run_job(retry_job(rows, out, **{"dataset.target": 1, "parallel.replicas": 1}), progress=False,
                     worker=SeedScored)
    assert report.summary["ok"] >= 1
    taken = len(by_row(manifest(out)))
    assert taken < 6 and report.summary["rows_not_needed"] == 6 - taken


def test_a_rerun_after_an_interrupted_run_goes_on_mid_chain_rendering_each_attempt_once(local_ray, rows, tmp_path):
    out = tmp_path / "out"

    def interrupt_after_a_rejection(sample, replica):
        if score_of(sample.options["seed"]) < GATE:
            raise KeyboardInterrupt  # as Ctrl-C would, right after a clip the gate rejects

    spec = retry_job(rows, out, **{"parallel.replicas": 1})
    with pytest.raises(KeyboardInterrupt):
        run_job(spec, progress=False, worker=SeedScored, on_result=interrupt_after_a_rejection)
    done = [json.loads(line) for line in (out / "state" / "completed.jsonl").read_text().splitlines()]
    first = {record["sample_id"] for record in done}
    chains = by_row([{**r, "identity_average": r["scores"]["identity_average"]} for r in done])
    assert any(all(r["identity_average"] < GATE for r in attempts) and len(attempts) < 3
               for attempts in chains.values())  # the interruption left a row mid-chain
    report = run_job(retry_job(rows, out, **{"parallel.replicas": 1}), progress=False, worker=SeedScored)
    journal = [json.loads(line)["sample_id"] for line in (out / "state" / "completed.jsonl").read_text().splitlines()]
    assert len(journal) == len(set(journal))  # no attempt rendered twice across the two runs
    assert first <= set(journal) and report.rendered == len(journal) - len(first)
    assert_first_passing_chains(by_row(manifest(out)), retries=2)


@pytest.mark.slow  # `echovideo run` twice; the review budget itself is tested without a cluster (test_attempts)
def test_a_review_rejection_renders_the_rows_next_attempt(local_ray, rows, tmp_path):
    """`echovideo run JOB --review FILE`: a clip the reviewer rejected gets its row's next attempt, though the
    job asks for no automatic retries; nothing else renders again."""
    out = tmp_path / "out"
    job_file = tmp_path / "job.yaml"
    job_file.write_text(json.dumps({  # JSON is YAML
        "model": {"preset": "tiny", "dtype": "fp32"}, "parallel": {"ulysses": 1, "replicas": 2},
        "resources": {"accelerator": "cpu", "cpus_per_rank": 1},
        "dataset": {"prompts": str(rows), "limit": 2},
        "generation": {"height": 32, "width": 32, "frames": FRAMES, "steps": 2},
        "job": {"output": str(out), "seed": 7}, "quality": {"min_identity": 0.0}}))
    from echovideo.cli import main

    assert main(["run", str(job_file)]) == 0
    first = {r["sample_id"]: r for r in manifest(out)}
    rejected = sorted(first)[0]
    review = tmp_path / "review.json"
    review.write_text(json.dumps({"format": "echovideo-review/1",
                                  "marks": {rejected: {"mark": "reject", "note": "eyes wrong"}}}))
    assert main(["run", str(job_file), "--review", str(review)]) == 0
    rows_now = by_row(manifest(out))
    assert sorted(rows_now) == sorted(first) and len(rows_now[sorted(first)[1]]) == 1  # the other row: as it was
    assert [r["attempt"] for r in rows_now[rejected]] == [0, 1]
    assert [r["kept"] for r in rows_now[rejected]] == [False, True]
    assert rows_now[rejected][0]["review"] == "reject" and rows_now[rejected][0]["status"] == "rejected"
    assert rows_now[rejected][1]["seed"] == next_seed(first[rejected]["seed"], 1)
