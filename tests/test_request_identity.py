"""One description of a request names its clip and keys its resume: changing any field of a job or a row
changes the sample id exactly when the pixels would change, and the resume key with it; failed rows keep
their own ids; a photo that could not be read now is never settled; every filesystem call on an identity runs
under the deadline; outputs name photos by their public name. No Ray: what the driver's feed sees."""

import os
import shutil
import threading
import time

import pytest
from jobs import job, write_jsonl

import ray_jobs.data.identities as identities
import ray_jobs.data.samples as dataset
from ray_jobs.data.records import Failed, Kind
from ray_jobs.store import LocalOutputs


@pytest.fixture()
def photo(tmp_path, face_path):
    target = tmp_path / "face.jpg"
    shutil.copy(face_path, target)
    return target


def one(spec):
    samples = list(dataset.iter_samples(spec, "cpu"))
    assert len(samples) == 1, samples
    return samples[0]


def rows_file(tmp_path, name="prompts.jsonl", **row):
    return write_jsonl(tmp_path / name, [row])


# (section.key or row column, new value, whether the clip's pixels change)
JOB_CHANGES = [
    ("generation.steps", 3, True), ("generation.width", 48, True), ("generation.height", 48, True),
    ("generation.frames", 9, True), ("generation.guidance", 4.0, True), ("generation.cache", 0.1, True),
    ("generation.riflex", True, True), ("generation.negative_prompt", "blurry", True),
    ("model.scheduler", "ddim", True), ("model.dtype", "bf16", True), ("job.seed", 8, True),
    ("model.compile", True, False), ("parallel.ulysses", 1, False), ("parallel.replicas", 1, False),
    ("job.retries", 5, False),
]


@pytest.mark.parametrize("key, value, pixels", JOB_CHANGES)
def test_a_job_setting_changes_the_id_and_the_resume_key_exactly_when_it_changes_the_pixels(
        tmp_path, photo, key, value, pixels):
    rows = rows_file(tmp_path, prompt="a person smiles", identity=str(photo))
    before, after = one(job(rows, tmp_path)), one(job(rows, tmp_path, **{key: value}))
    assert (before.sample_id != after.sample_id) is pixels
    assert (before.row_key != after.row_key) is pixels  # a rerun with the new setting renders it anew
    assert (before.content_key != after.content_key) is pixels


ROW_CHANGES = [
    ({"prompt": "a person frowns"}, True), ({"steps": 3}, True), ({"seed": 5}, True), ({"guidance": 7.0}, True),
    ({"width": 48}, True), ({"cache": 0.0}, False), ({"riflex": False}, False),  # off is the default: same clip
    ({"guidance": 6}, False),  # 6 and 6.0 are one request
    ({"notes": "reviewed"}, False),  # a column the job does not read
]


@pytest.mark.parametrize("change, pixels", ROW_CHANGES)
def test_a_row_field_changes_the_id_and_the_resume_key_exactly_when_it_changes_the_pixels(
        tmp_path, photo, change, pixels):
    base = {"prompt": "a person smiles", "identity": str(photo), "guidance": 6.0}
    before = one(job(rows_file(tmp_path, "a.jsonl", **base), tmp_path))
    after = one(job(rows_file(tmp_path, "b.jsonl", **{**base, **change}), tmp_path))
    assert (before.sample_id != after.sample_id) is pixels
    assert (before.row_key != after.row_key) is pixels


def test_remapped_columns_change_the_request_only_when_the_mapped_text_differs(tmp_path, photo):
    rows = rows_file(tmp_path, prompt="a person smiles", caption="a person dances", same="a person smiles",
                     identity=str(photo))
    base = one(job(rows, tmp_path))
    other = one(job(rows, tmp_path, **{"dataset.columns": {"prompt": "caption"}}))
    same = one(job(rows, tmp_path, **{"dataset.columns": {"prompt": "same"}}))
    assert other.sample_id != base.sample_id and other.row_key != base.row_key and other.prompt == "a person dances"
    assert same.sample_id == base.sample_id and same.row_key == base.row_key


def test_the_photo_names_the_clip_by_content_and_the_resume_key_by_reference_and_version(tmp_path, photo):
    copy = tmp_path / "copy.jpg"
    shutil.copy(photo, copy)
    base = one(job(rows_file(tmp_path, "a.jsonl", prompt="p", identity=str(photo)), tmp_path))
    renamed = one(job(rows_file(tmp_path, "b.jsonl", prompt="p", identity=str(copy)), tmp_path))
    assert renamed.sample_id == base.sample_id and renamed.row_key != base.row_key  # same bytes: same clip
    os.utime(photo, ns=(1, 1))  # replaced in place (a new modification time): known again only by reading it
    touched = one(job(rows_file(tmp_path, "a.jsonl", prompt="p", identity=str(photo)), tmp_path))
    assert touched.row_key != base.row_key and touched.sample_id == base.sample_id


def test_the_sample_id_and_both_keys_come_from_one_function(tmp_path, photo, monkeypatch):
    calls = []
    real = dataset.request_key
    monkeypatch.setattr(dataset, "request_key", lambda d, i: calls.append((d, i)) or real(d, i))
    sample = one(job(rows_file(tmp_path, prompt="p", identity=str(photo)), tmp_path))
    (row_description, reference), (content_description, digest) = calls
    assert row_description == content_description and digest == sample.identity_sha
    assert reference["reference"] == str(photo) and sample.row_key == real(row_description, reference)
    assert sample.sample_id == sample.content_key[:24] == real(content_description, digest)[:24]


def test_failed_rows_sharing_a_prompt_stay_distinct(tmp_path, photo):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a person waves"}])
    people = write_jsonl(tmp_path / "people.jsonl", [{"identity": str(p)} for p in (photo, "/dev/zero", fifo)])
    spec = job(prompts, tmp_path, **{"dataset.mode": "cross", "dataset.identities": str(people)})
    samples = list(dataset.iter_samples(spec, "cpu"))
    assert len({s.sample_id for s in samples}) == 3 and not any(s.duplicate for s in samples)
    assert [bool(s.error) for s in samples] == [False, True, True]
    assert "a device" in samples[1].error and "a FIFO" in samples[2].error
    assert {s.error_kind for s in samples[1:]} == {Kind.INPUT.value}  # properties of what is there: settled


def test_a_missing_photo_is_unavailable_retried_and_renders_once_it_is_there(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(identities, "RETRY_WAIT_S", 0.01)
    late = tmp_path / "late.jpg"
    spec = job(rows_file(tmp_path, prompt="p", identity=str(late)), tmp_path)
    attempts = []
    real = identities._read_local
    monkeypatch.setattr(identities, "_read_local", lambda *a: attempts.append(a) or real(*a))
    missing = one(spec)
    assert missing.error and missing.error_kind == Kind.UNAVAILABLE.value and len(attempts) == identities.READ_ATTEMPTS
    store = LocalOutputs(tmp_path / "out")
    store.record(Failed(**{"sample_id": missing.sample_id, "row_key": missing.row_key, "kind": missing.error_kind}))
    done, rows = store.resume_index()
    assert missing.row_key not in rows and missing.sample_id not in done  # not settled: a rerun reads it again
    shutil.copy(photo, late)
    found = one(spec)
    assert found.error is None and found.row_key != missing.row_key


def test_a_stat_on_a_hung_mount_is_abandoned_at_the_deadline(tmp_path, photo, monkeypatch):
    monkeypatch.setattr(identities, "READ_TIMEOUT_S", 0.5)
    release = threading.Event()

    class HungMount:  # identities' view of `os`: every call on the photo's path is stuck in the kernel
        def __getattr__(self, name):
            return getattr(os, name)

        def stat(self, path, *args, **kwargs):
            release.wait(60)
            return os.stat(path, *args, **kwargs)

        def open(self, path, *args, **kwargs):
            release.wait(60)
            return os.open(path, *args, **kwargs)

    monkeypatch.setattr(identities, "os", HungMount())
    spec = job(rows_file(tmp_path, prompt="p", identity=str(tmp_path / "hung.jpg")), tmp_path)
    started = time.monotonic()
    try:
        sample = one(spec)
    finally:
        release.set()
    assert time.monotonic() - started < 30
    assert "did not finish" in sample.error and sample.error_kind == Kind.UNAVAILABLE.value


@pytest.mark.parametrize("prompt, says", [(None, "null"), ("a person\x00 waves", "NUL")])
def test_a_null_or_nul_prompt_is_the_rows_error(tmp_path, photo, prompt, says):
    sample = one(job(rows_file(tmp_path, prompt=prompt, identity=str(photo)), tmp_path))
    assert sample.error and says in sample.error and sample.prompt == ("" if prompt is None else sample.prompt)
    assert "None" not in sample.prompt and "\x00" not in sample.prompt


def test_outputs_name_a_uri_photo_without_its_query_or_credentials(tmp_path):
    uri = "s3://KEY:SECRET@bucket/faces/a.jpg?endpoint_override=127.0.0.1:1&scheme=http"
    assert dataset.shown_reference(uri) == "s3://bucket/faces/a.jpg"
    reader = identities.IdentityReader()
    assert reader.reference(uri)["reference"] == "s3://bucket/faces/a.jpg"


def test_a_photo_uri_uploaded_late_or_replaced_is_new_work_and_its_outputs_name_have_no_query(
        tmp_path, photo, object_store, monkeypatch):
    monkeypatch.setattr(identities, "RETRY_WAIT_S", 0.01)
    uri = object_store.uri(f"faces/{tmp_path.name}.jpg")
    spec = job(rows_file(tmp_path, prompt="p", identity=uri), tmp_path)
    missing = one(spec)
    assert missing.error_kind == Kind.UNAVAILABLE.value and "does not exist" in missing.error
    assert missing.identity == f"s3://echovideo/faces/{tmp_path.name}.jpg"  # no credentials, no query
    with object_store.filesystem().open_output_stream(f"echovideo/faces/{tmp_path.name}.jpg") as out:
        out.write(photo.read_bytes())
    uploaded = one(spec)
    assert uploaded.error is None and uploaded.row_key != missing.row_key
    assert uploaded.identity == missing.identity
    time.sleep(1.1)  # the store's modification times have one-second resolution
    with object_store.filesystem().open_output_stream(f"echovideo/faces/{tmp_path.name}.jpg") as out:
        out.write(photo.read_bytes() + b"\0")  # replaced under the same name
    assert one(spec).row_key != uploaded.row_key


# -- the description is the request the ranks receive ----------------------------------------------------------
DESCRIBED = {"prompt", "settings", "seed", "name", "weights", "scheduler", "dtype"}


def _leaves(value, path=()):
    if isinstance(value, dict):
        for key, inner in value.items():
            yield from _leaves(inner, (*path, key))
    else:
        yield path, value


def _changed(value):
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    return f"{value}-changed" if isinstance(value, str) else "set"


def _replace(tree: dict, path: tuple, new) -> dict:
    head, *rest = path
    return {**tree, head: _replace(tree[head], tuple(rest), new) if rest else new}


@pytest.mark.parametrize("row", [{}, {"sample_id": "take-1"}, {"seed": 5}])
def test_every_field_of_the_description_changes_the_id_and_the_resume_key(tmp_path, photo, row):
    from ray_jobs.data.request_identity import SETTINGS, request_key

    sample = one(job(rows_file(tmp_path, prompt="a person smiles", identity=str(photo), **row), tmp_path))
    spec = job(rows_file(tmp_path, prompt="a person smiles", identity=str(photo), **row), tmp_path)
    request = dataset.parse_request(spec, {"prompt": "a person smiles", **row}, spec.columns(),
                                    dataset.id_basis(spec, "cpu"))
    description = request.description
    assert set(description) == DESCRIBED and set(description["settings"]) == set(SETTINGS) - {"seed"}
    # what the ranks receive is the description: its prompt, its settings and the seed it says where from
    assert sample.prompt == description["prompt"]
    assert {k: v for k, v in sample.options.items() if k != "seed"} == description["settings"]
    assert sample.options["seed"] == row.get("seed", dataset.resolved_seed(description["seed"], sample.sample_id))
    assert sample.content_key == request_key(description, sample.identity_sha)
    leaves = list(_leaves(description))
    assert {path[0] for path, _ in leaves} == DESCRIBED
    for path, value in leaves:
        other = _replace(description, path, _changed(value))
        assert request_key(other, sample.identity_sha) != sample.content_key, path
        assert request_key(other, {"reference": "x"}) != request_key(description, {"reference": "x"}), path


def test_two_named_takes_of_one_prompt_and_photo_are_two_requests_with_two_seeds(tmp_path, photo):
    rows = write_jsonl(tmp_path / "takes.jsonl", [
        {"sample_id": name, "prompt": "a person smiles", "identity": str(photo)} for name in ("take-1", "take-2")])
    first, second = list(dataset.iter_samples(job(rows, tmp_path), "cpu"))
    assert (first.sample_id, second.sample_id) == ("take-1", "take-2") and not second.duplicate
    assert first.row_key != second.row_key and first.content_key != second.content_key
    assert first.options["seed"] != second.options["seed"]
    finished = {first.row_key: first.sample_id}  # take-1 done: take-2 is still work, and take-1 settled
    again = list(dataset.iter_samples(job(rows, tmp_path), "cpu", finished))
    assert [s.settled for s in again] == [True, False] and again[1].sample_id == "take-2"


@pytest.mark.parametrize("one_way, other_way", [
    ({"generation.guidance": 6}, {"generation.guidance": 6.0}),
    ({"generation.cache": 0}, {"generation.cache": 0.0}),
    ({"generation.steps": 2}, {}),  # the job's default spelled out
    ({"generation.negative_prompt": "cafe\u0301"}, {"generation.negative_prompt": "caf\u00e9"}),
])
def test_equivalent_spellings_in_the_job_are_one_request(tmp_path, photo, one_way, other_way):
    rows = rows_file(tmp_path, prompt="a person smiles", identity=str(photo))
    a, b = one(job(rows, tmp_path, **one_way)), one(job(rows, tmp_path, **other_way))
    assert (a.sample_id, a.row_key, a.options) == (b.sample_id, b.row_key, b.options)


@pytest.mark.parametrize("one_way, other_way", [
    ({"frames": 5.0}, {"frames": 5}), ({"seed": 5.0}, {"seed": 5}), ({"guidance": 6}, {"guidance": 6.0}),
    ({"prompt": "cafe\u0301 scene"}, {"prompt": "caf\u00e9 scene"}),
    ({"sample_id": "cafe\u0301"}, {"sample_id": "caf\u00e9"}), ({"steps": None}, {}),
])
def test_equivalent_spellings_in_a_row_are_one_request(tmp_path, photo, one_way, other_way):
    base = {"prompt": "a person smiles", "identity": str(photo)}
    a = one(job(rows_file(tmp_path, "a.jsonl", **{**base, **one_way}), tmp_path))
    b = one(job(rows_file(tmp_path, "b.jsonl", **{**base, **other_way}), tmp_path))
    assert (a.sample_id, a.row_key, a.options) == (b.sample_id, b.row_key, b.options)


def test_a_local_checkpoint_is_named_by_the_weights_the_loader_reads(tmp_path, photo, tiny_root):
    ckpts = tmp_path / "ckpts"
    shutil.copytree(tiny_root, ckpts)
    rows = rows_file(tmp_path, prompt="a person smiles", identity=str(photo))

    def sample():
        return one(job(rows, tmp_path, **{"model.preset": None, "model.checkpoint": str(ckpts)}))

    before = sample()
    (ckpts / "NOTES.txt").write_text("copied from the release\n")  # not read by the loader: the same weights
    (ckpts / "transformer" / "README.md").write_text("notes\n")
    assert sample().sample_id == before.sample_id
    moved = tmp_path / "elsewhere"
    shutil.copytree(ckpts, moved, copy_function=shutil.copy2)  # the same files at another path, times kept
    assert one(job(rows, tmp_path, **{"model.preset": None, "model.checkpoint": str(moved)})).sample_id \
        == before.sample_id
    weights = next((ckpts / "transformer").glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes())  # replaced in place (the usual NFS ckpts/): other weights
    assert sample().sample_id != before.sample_id and sample().row_key != before.row_key


@pytest.mark.parametrize("path, says", [("/data/a\x00b.jpg", "NUL byte"), ("/data/" + "n" * 300 + ".jpg", "file name"),
                                        ("/d/" * 1500 + "a.jpg", "path may be")])
def test_an_impossible_photo_path_is_a_definite_input_error_shown_escaped(tmp_path, path, says):
    spec = job(rows_file(tmp_path, prompt="p", identity=path), tmp_path)
    sample = one(spec)
    assert sample.error_kind == Kind.INPUT.value and says in sample.error  # settled: a rerun does not retry it
    assert "\x00" not in sample.error and "\x00" not in sample.identity
    if "\x00" in path:
        assert "a\\x00b.jpg" in sample.identity and "a\\x00b.jpg" in sample.error
    assert one(spec).row_key == sample.row_key  # the same request next run: its failure stays settled


def test_an_unavailable_photo_costs_one_deadline_per_run_not_one_per_row(tmp_path, monkeypatch):
    monkeypatch.setattr(identities, "RETRY_WAIT_S", 0.01)
    reads = []
    monkeypatch.setattr(identities, "_read_local", lambda path, name: reads.append(path) or open(path, "rb").read())
    rows = write_jsonl(tmp_path / "p.jsonl", [{"prompt": f"p{i}", "identity": str(tmp_path / "gone.jpg")}
                                              for i in range(5)])
    samples = list(dataset.iter_samples(job(rows, tmp_path), "cpu"))
    assert [s.error_kind for s in samples] == [Kind.UNAVAILABLE.value] * 5
    assert len(reads) == identities.READ_ATTEMPTS  # tried (with its retries) once, for the first row only


def test_reader_threads_stuck_on_storage_are_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(identities, "READ_TIMEOUT_S", 0.2)
    release = threading.Event()
    before = threading.active_count()
    try:
        for i in range(identities.MAX_STUCK_READS + 5):
            with pytest.raises(identities.IdentityUnavailable):
                identities.under_deadline(lambda: release.wait(60), f"photo-{i}")
        assert threading.active_count() - before <= identities.MAX_STUCK_READS
    finally:
        release.set()
