"""Job files and dataset tables as users write them, table-driven and without a cluster: every case that can be
known before rendering is exit 2 with one line naming the file, line and field, and no cluster starts;
per-row settings from pandas-made files mean what they say; repeats, reused ids and Unicode forms resolve.
"""

import json
import math
import socket
import time
import unicodedata

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import ray
from jobs import job, write_jsonl

from echovideo.cli import main
from echovideo.errors import EchoVideoInputError
from ray_jobs.data import samples as dataset
from ray_jobs.data import validation
from ray_jobs.runtime.feed import SampleFeed
from ray_jobs.store.outputs import safe_name

GOOD_JOB = """model: {preset: tiny, dtype: fp32}
parallel: {replicas: 1}
resources: {accelerator: cpu}
dataset: {prompts: PROMPTS}
generation: {height: 32, width: 32, frames: 5, steps: 2}
job: {output: OUT}
"""

ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{b}: &{b} [{','.join(['*' + a] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi"))


@pytest.mark.parametrize("name, text, message", [
    ("duplicate-section", GOOD_JOB + "generation: {height: 480, width: 640, frames: 49, steps: 50}\n",
     "line 7: key 'generation' is given twice (first at line 5)"),
    ("duplicate-key", GOOD_JOB.replace("steps: 2}", "steps: 2, steps: 50}"), "key 'steps' is given twice"),
    ("alias-bomb", ALIAS_BOMB, "expands to over 10000 values through aliases"),
    ("not-utf8", GOOD_JOB.encode() + "# caf\xe9\n".encode("latin-1"), "line 7: byte 0xe9 is not UTF-8"),
    ("bad-syntax", "model: {preset: tiny\njob: [\n", "line 2, column 4"),
    ("tab-indent", "model:\n\tpreset: tiny\n", "line 2, column 1"),
    ("limit-zero", GOOD_JOB.replace("{prompts: PROMPTS}", "{prompts: PROMPTS, limit: 0}"), "dataset.limit: 0 must be >= 1"),
    ("limit-negative", GOOD_JOB.replace("{prompts: PROMPTS}", "{prompts: PROMPTS, limit: -1}"), "dataset.limit: -1"),
    ("unknown-column-role", GOOD_JOB.replace("{prompts: PROMPTS}", "{prompts: PROMPTS, columns: {text: t}}"),
     "dataset.columns.text"),
])
def test_job_file_mistakes_are_exit_2_with_file_line_and_key(tmp_path, capsys, name, text, message):
    prompts = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": "a", "identity": "face.jpg"}])
    text = text.replace("PROMPTS", str(prompts)).replace("OUT", str(tmp_path / "out")) if isinstance(text, str) \
        else text.replace(b"PROMPTS", str(prompts).encode()).replace(b"OUT", str(tmp_path / "out").encode())
    path = tmp_path / f"{name}.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    assert main(["run", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1 and len(err) < 400, err
    assert not ray.is_initialized()


def _rows(n: int, face: str) -> list[dict]:
    return [{"prompt": f"a person waves {i}", "identity": face} for i in range(n)]


def _jsonl_with_bad_line_at(path, line: int, face: str, bad: str):
    with open(path, "w") as handle:
        for row in _rows(line - 1, face):
            handle.write(json.dumps(row) + "\n")
        handle.write(bad + "\n")
        handle.write(json.dumps(_rows(1, face)[0]) + "\n")
    return path


def _table(tmp_path, face_path, kind: str):
    """A dataset file for each dataset-level mistake; -> (path, extra job settings)."""
    face = str(face_path)
    if kind == "malformed-line":
        return _jsonl_with_bad_line_at(tmp_path / "p.jsonl", 40005, face, '{"prompt": "a", "identity": '), {}
    if kind == "array-line":
        return _jsonl_with_bad_line_at(tmp_path / "p.jsonl", 3, face, '["a", "b"]'), {}
    if kind == "latin1-line":
        path = _jsonl_with_bad_line_at(tmp_path / "p.jsonl", 4, face, "{}")
        path.write_bytes(path.read_bytes().replace(b"{}\n", '{"prompt": "caf\xe9"}\n'.encode("latin-1")))
        return path, {}
    if kind == "csv-fields":
        path = tmp_path / "p.csv"
        path.write_text(f"prompt,identity\na,{face}\nb,{face},extra\n")
        return path, {}
    if kind == "csv-header-only":
        path = tmp_path / "p.csv"
        path.write_text("prompt,identity\n")
        return path, {}
    if kind == "empty-jsonl":
        path = tmp_path / "p.jsonl"
        path.write_text("")
        return path, {}
    if kind == "mapped-column-missing":
        return write_jsonl(tmp_path / "p.jsonl", _rows(2, face)), {"dataset.columns": {"prompt": "text"}}
    if kind == "no-prompt-column":
        return write_jsonl(tmp_path / "p.jsonl", [{"caption": "a", "identity": face}]), {}
    if kind == "no-identity-column":
        return write_jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "photo": face}]), {}
    if kind == "prompt-not-text":
        path = tmp_path / "p.parquet"
        pq.write_table(pa.table({"prompt": [1, 2], "identity": [face, face]}), str(path))
        return path, {}
    if kind == "sampled-too-many":
        prompts = write_jsonl(tmp_path / "p.jsonl", _rows(3, face))
        identities = write_jsonl(tmp_path / "i.jsonl", [{"identity": face}, {"identity": face + "?"}])
        return prompts, {"dataset.mode": "sampled", "dataset.identities": str(identities), "dataset.count": 7}
    raise AssertionError(kind)


@pytest.mark.parametrize("kind, message", [
    ("malformed-line", "dataset.prompts: p.jsonl line 40005: is not valid JSON"),
    ("array-line", "p.jsonl line 3: is a JSON list, not an object"),
    ("latin1-line", "p.jsonl line 4: is not UTF-8 (byte 0xe9"),
    ("csv-fields", "p.csv line 3: has 3 fields, the header has 2"),
    ("csv-header-only", "dataset.prompts: p.csv has no rows"),
    ("empty-jsonl", "dataset.prompts: p.jsonl has no rows"),
    ("mapped-column-missing", "dataset.columns.prompt: column 'text' is not in p.jsonl"),
    ("no-prompt-column", "p.jsonl has no 'prompt' column (it has ['caption', 'identity'])"),
    ("no-identity-column", "p.jsonl has no 'identity' or 'image' column"),
    ("prompt-not-text", "dataset.columns.prompt: column 'prompt' of p.parquet holds int values, not text"),
    ("sampled-too-many", "dataset.count: 7 is more than the 6 distinct prompt x identity pairs"),
])
def test_dataset_mistakes_stop_the_job_before_any_cluster_with_their_line(tmp_path, face_path, capsys, kind,
                                                                        message):
    table, settings = _table(tmp_path, face_path, kind)
    spec = job(table, tmp_path / "out", **settings)
    with pytest.raises(EchoVideoInputError) as error:
        validation.validate_dataset(spec)
    assert message in str(error.value)
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_JOB.replace("PROMPTS", str(table)).replace("OUT", str(tmp_path / "out")))
    sets = [f"{key}={json.dumps(value)}" for key, value in settings.items()]
    assert main(["run", str(path), *(a for s in sets for a in ("--set", s))]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.splitlines()) == 1, err
    assert not ray.is_initialized()


def test_a_limit_reads_only_the_rows_it_needs(tmp_path, face_path):
    table = _jsonl_with_bad_line_at(tmp_path / "p.jsonl", 40005, str(face_path), "{not json")
    spec = job(table, tmp_path / "out", **{"dataset.limit": 20})
    assert validation.validate_dataset(spec) == 20
    assert len(list(dataset.iter_samples(spec, "cpu"))) == 20


SETTINGS = [  # (cell as the file holds it, how it is written, expected height or words of the row's error)
    (64, "jsonl", 64), (64.0, "jsonl", 64), (math.nan, "jsonl", 32), (None, "jsonl", 32),
    ("64", "jsonl", "height: '64' is a str, expected an integer"), (64.5, "jsonl", "64.5 is a float, expected an integer"),
    (True, "jsonl", "True is a bool, expected an integer"),
    ("64", "csv", 64), ("64.0", "csv", 64), ("", "csv", 32), ("NaN", "csv", 32),
    ("sixty", "csv", "'sixty' is a str, expected an integer"),
]


@pytest.mark.parametrize("cell, form, expected", SETTINGS)
def test_per_row_settings_from_pandas_made_files(tmp_path, face_path, cell, form, expected):
    if form == "jsonl":
        table = tmp_path / "p.jsonl"
        row = {"prompt": "a person nods", "identity": str(face_path)} | ({} if cell is None else {"height": cell})
        table.write_text(json.dumps(row) + "\n")  # json writes NaN as NaN, as pandas does
    else:
        table = tmp_path / "p.csv"
        table.write_text(f"prompt,identity,height\na person nods,{face_path},{cell}\n")
    (sample,) = dataset.iter_samples(job(table, tmp_path / "out"), "cpu")
    if isinstance(expected, int):
        assert sample.error is None and sample.options["height"] == expected, sample.error
    else:
        assert expected in sample.error and f"{table.name} line" in sample.error, sample.error


def test_a_type_change_deep_in_a_file_fails_that_row_alone_with_its_line(tmp_path, face_path):
    rows = [{"prompt": f"a person waves {i}", "identity": str(face_path), "steps": 2} for i in range(2010)]
    rows[2004]["steps"] = "two"
    spec = job(write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "out")
    assert validation.validate_dataset(spec) == 2010
    samples = list(dataset.iter_samples(spec, "cpu"))
    failed = [s for s in samples if s.error]
    assert len(samples) == 2010 and len(failed) == 1
    assert failed[0].error.startswith("p.jsonl line 2005: steps: 'two' is a str, expected an integer")


def test_repeats_collapse_reused_ids_fail_and_unicode_forms_are_one_prompt(tmp_path, face_path):
    face = str(face_path)
    nfc = "a naïve café owner smiles"
    rows = [{"prompt": nfc, "identity": face},
            {"prompt": unicodedata.normalize("NFD", nfc), "identity": face},  # the same words: one clip
            {"prompt": "waves", "identity": face, "sample_id": "mine"},
            {"prompt": "waves", "identity": face, "sample_id": "mine"},  # a repeat
            {"prompt": "jumps", "identity": face, "sample_id": "mine"}]  # the id reused for other content
    samples = list(dataset.iter_samples(job(write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "out"), "cpu"))
    assert [s.duplicate for s in samples] == [False, True, False, True, False]
    assert samples[0].sample_id == samples[1].sample_id and samples[0].prompt == nfc
    reused = samples[4]
    assert reused.sample_id == "mine@p.jsonl line 5"
    assert "sample_id 'mine' is reused for different content (first used at p.jsonl line 3)" in reused.error


def test_ids_differing_only_in_case_get_names_that_differ_without_case():
    names = {safe_name(sid) for sid in ("Case", "case", "CASE")}
    assert len({name.lower() for name in names}) == 3
    assert safe_name("0a1b2c") == "0a1b2c"  # content ids (lower-case hex) keep their names


def test_plan_reads_the_file_and_this_machine_without_starting_a_cluster(tmp_path, face_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", _rows(3, str(face_path)))
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_JOB.replace("PROMPTS", str(prompts)).replace("OUT", str(tmp_path / "out")))
    assert main(["plan", str(path)]) == 0
    printed = capsys.readouterr().out
    assert "accelerator cpu; 1 replica(s)" in printed and "samples requested: 3" in printed
    assert not ray.is_initialized() and not (tmp_path / "out").exists()


def test_an_address_nothing_answers_at_fails_in_seconds_with_our_message(tmp_path, face_path, capsys):
    prompts = write_jsonl(tmp_path / "p.jsonl", _rows(1, str(face_path)))
    path = tmp_path / "job.yaml"
    path.write_text(GOOD_JOB.replace("PROMPTS", str(prompts)).replace("OUT", str(tmp_path / "out")))
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    started = time.monotonic()
    assert main(["run", str(path), "--address", f"127.0.0.1:{port}"]) == 2
    assert f"--address: nothing answers at 127.0.0.1:{port}" in capsys.readouterr().err
    assert time.monotonic() - started < 30 and not ray.is_initialized()


def test_repeated_rows_come_off_the_progress_total(tmp_path, face_path):
    rows = [{"prompt": "the same clip", "identity": str(face_path)}] * 1000 + _rows(1, str(face_path))
    spec = job(write_jsonl(tmp_path / "p.jsonl", rows), tmp_path / "out")
    feed = SampleFeed(dataset.iter_samples(spec, "cpu"), set(), capacity=4)
    taken = []
    while not feed.exhausted:
        if (sample := feed.take(timeout=5)) is not None:
            taken.append(sample)
    assert len(taken) == 2 and validation.validate_dataset(spec) - feed.duplicates == 2  # the bar's total
