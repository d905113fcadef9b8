"""What a job remembers between runs, without Ray: sample ids cover exactly what changes the pixels, a rerun
knows its finished rows without reading their photos, a journal torn by a crash loses nothing after it, and
the driver's deadlines count only time it was watching."""

import shutil
from itertools import islice

import pytest
from jobs import job, write_jsonl

import ray_jobs.data.identities as identities
import ray_jobs.data.samples as dataset
from ray_jobs.data.records import Rendered
from ray_jobs.store import LocalOutputs


@pytest.fixture()
def rows(tmp_path, face_path):
    photo = tmp_path / "face.jpg"
    shutil.copy(face_path, photo)
    return write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": f"person {i} smiles", "identity": str(photo)}
                                                    for i in range(4)])


def ids(spec, accelerator: str = "cpu") -> list[str]:
    return [s.sample_id for s in dataset.iter_samples(spec, accelerator)]


@pytest.mark.parametrize("key, value", [("model.scheduler", "ddim"), ("model.dtype", "bf16"), ("job.seed", 8),
                                        ("generation.steps", 3)])
def test_sample_ids_change_with_whatever_changes_the_pixels(rows, tmp_path, key, value):
    assert set(ids(job(rows, tmp_path))).isdisjoint(ids(job(rows, tmp_path, **{key: value})))


def test_sample_ids_ignore_what_does_not_change_the_pixels(rows, tmp_path):
    base = ids(job(rows, tmp_path))
    assert ids(job(rows, tmp_path, **{"model.compile": True})) == base
    assert ids(job(rows, tmp_path, **{"parallel.ulysses": 1, "parallel.replicas": 1})) == base
    # `auto` is the dtype the ranks run: fp32 on CPU (the same clip as fp32), bf16 on GPU (another clip)
    auto = job(rows, tmp_path, **{"model.dtype": "auto"})
    assert ids(auto, "cpu") == base and set(ids(auto, "gpu")).isdisjoint(base)


def test_a_row_seed_makes_the_job_seed_irrelevant(tmp_path, face_path):
    seeded = write_jsonl(tmp_path / "seeded.jsonl", [{"prompt": "a", "identity": str(face_path), "seed": 3}])
    assert ids(job(seeded, tmp_path)) == ids(job(seeded, tmp_path, **{"job.seed": 99}))


def test_a_rerun_knows_finished_rows_without_reading_their_photos(rows, tmp_path, monkeypatch):
    spec = job(rows, tmp_path)
    first = list(dataset.iter_samples(spec, "cpu"))
    finished = {s.row_key: s.sample_id for s in first[:3]}

    def no_photo_reads(*args):
        raise AssertionError("a finished row's photo was read")

    monkeypatch.setattr(identities, "read_identity", no_photo_reads)
    again = list(islice(dataset.iter_samples(spec, "cpu", finished), 3))  # the 4th row is new: it is read
    assert [s.sample_id for s in again] == [s.sample_id for s in first[:3]]


def test_a_replaced_local_photo_is_a_new_row(rows, tmp_path, face_path):
    spec = job(rows, tmp_path)
    first = list(dataset.iter_samples(spec, "cpu"))
    photo = tmp_path / "face.jpg"
    photo.write_bytes(photo.read_bytes() + b"\0")  # another file under the same path
    assert {s.row_key for s in dataset.iter_samples(spec, "cpu")}.isdisjoint(s.row_key for s in first)


def test_a_journal_line_torn_by_a_crash_does_not_swallow_the_next_record(tmp_path):
    store = LocalOutputs(tmp_path / "out")
    for sid in ("a", "b"):
        (store.videos / f"{sid}.mp4").write_bytes(b"\0")
    store.record(Rendered(**{"sample_id": "a", "row_key": "ka"}))
    with open(store.state / "completed.jsonl", "a") as journal:
        journal.write('{"sample_id": "torn", "row_ke')  # the driver died mid-append
    store.record(Rendered(**{"sample_id": "b", "row_key": "kb"}))
    assert store.resume_index() == ({"a": None, "b": None}, {"ka": "a", "kb": "b"})


def test_the_driver_clock_counts_only_time_it_was_watching():
    from ray_jobs.runtime.clock import LookClock

    clock = LookClock()
    start = clock.tick()
    clock.last -= 120  # the loop was held for two minutes (a suspended process, a stuck disk)
    assert clock.tick() - start <= LookClock.MAX_GAP_S + 0.5  # no replica's deadline moved by those two minutes


def test_every_manifest_column_comes_from_a_typed_record_a_score_or_the_final_verdict():
    """One schema: a manifest column nobody records would be null in every row."""
    from dataclasses import fields

    from ray_jobs.data.quality_gate import SCORE_COLUMNS
    from ray_jobs.data.records import FINAL_COLUMNS, MANIFEST_TYPES, Failed, Rendered

    recorded = {f.name for record in (Rendered, Failed) for f in fields(record)}
    assert set(MANIFEST_TYPES) - recorded - set(SCORE_COLUMNS) - set(FINAL_COLUMNS) == set()
