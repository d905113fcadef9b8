"""Bad input, table-driven, through one real job (local Ray, tiny model): each bad row fails alone with a reason
that names the problem, every odd-but-valid row renders, and nothing lands outside the output folder.

Each case is one dataset row keyed by its own `sample_id`; the expected outcome is "ok" or words of the reason.
"""

import io
import logging
import math
import os
import struct
import zlib

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jobs import FRAMES, job, manifest, read_frames
from PIL import Image

from ray_jobs.runtime.engine import run_job
from ray_jobs.store.outputs import safe_name

SECRET = "s3cr3tV4lue"
HOSTILE_IDS = ["../../escape", "/etc/absolute", "nul\x00byte", "x" * 300]


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` (decoders read the size before any pixel)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b""))


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture()
def cases(tmp_path, face_path):
    """sample_id -> (row, expected outcome)."""
    face = Image.open(face_path).convert("RGB")
    two_faces = Image.new("RGB", (1000, 600), (128, 128, 128))
    two_faces.paste(face.resize((240, 240)), (20, 20))
    two_faces.paste(face, (470, 40))
    files = {"empty.jpg": b"", "notes.jpg": b"shopping list: eggs, milk", "huge.png": png_header_only(20000, 20000),
             "tiny.png": encoded(Image.new("RGB", (1, 1)), "PNG"),
             "rgba.png": encoded(face.convert("RGBA"), "PNG"), "gray.png": encoded(face.convert("L"), "PNG"),
             "cmyk.jpg": encoded(face.convert("CMYK"), "JPEG"), "two-faces.jpg": encoded(two_faces, "JPEG")}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    photo = str(face_path)
    fifo = tmp_path / "photo.fifo"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    unreachable = f"s3://AKIDEXAMPLE:{SECRET}@bucket/face.jpg?endpoint_override=127.0.0.1:1&scheme=http"
    misspelt = f"s3://AKIDEXAMPLE:{SECRET}@bucket/face.jpg?endpoint_overide=127.0.0.1:1&token={SECRET}"

    def row(prompt="a person smiles", identity=photo, **extra):
        return {"prompt": prompt.encode("utf-8") if isinstance(prompt, str) else prompt, "identity": identity, **extra}

    table = {
        "missing-path": (row(identity=str(tmp_path / "missing.jpg")), "cannot read"),
        "unreachable-uri": (row(identity=unreachable), "cannot read"),
        "misspelt-uri": (row(identity=misspelt), "Unexpected query parameter in S3 URI"),
        "corrupt-bytes": (row(identity=None, image=encoded(face, "JPEG")[:300] + b"\xff" * 64), "not a readable image"),
        "not-an-image": (row(identity=str(tmp_path / "notes.jpg")), "not a readable image"),
        "zero-bytes": (row(identity=str(tmp_path / "empty.jpg")), "empty (0 bytes)"),
        "no-face": (row(identity=str(tmp_path / "tiny.png")), "no face"),  # 1x1: found nothing to align
        "huge": (row(identity=str(tmp_path / "huge.png")), "too large (over 179 megapixels)"),
        "dev-zero": (row(identity="/dev/zero"), "not a regular file (a device)"),
        "fifo": (row(identity=str(fifo)), "not a regular file (a FIFO)"),
        "directory": (row(identity=str(tmp_path)), "not a regular file (a directory)"),
        "Case": (row(prompt="a person smiles broadly"), "ok"),  # ids differing only in case: two files
        "case": (row(prompt="a person smiles widely"), "ok"),
        "several-faces": (row(identity=str(tmp_path / "two-faces.jpg")), "ok"),  # the largest wins, as released
        "rgba": (row(identity=str(tmp_path / "rgba.png")), "ok"),
        "grayscale": (row(identity=str(tmp_path / "gray.png")), "ok"),
        "cmyk": (row(identity=str(tmp_path / "cmyk.jpg")), "ok"),
        "empty-prompt": (row(prompt="   "), "prompt"),
        "long-prompt": (row(prompt="a person smiles " * 6250), "ok"),  # 100,000 characters: T5 reads the first 226 tokens
        "non-utf8-prompt": (row(prompt=b"caf\xe9 \xff"), "not UTF-8"),
        "emoji-prompt": (row(prompt="a person laughs 😂🎉 — naïve café"), "ok"),
        "height-50": (row(height=50), "--height"),
        "width-0": (row(width=0), "--width"),
        "frames-8": (row(frames=8), "4k+1"),
        "steps-0": (row(steps=0), "--steps"),
        "guidance-negative": (row(guidance=-1.0), "--guidance"),
        "guidance-nan": (row(guidance=math.nan), "ok"),  # an empty cell (pandas writes NaN): the job's value
        "guidance-inf": (row(guidance=math.inf), "--guidance"),
        "seed-negative": (row(seed=-1), "--seed"),
        "unknown-column": (row(hieght=480), "ok"),  # ignored, with a warning naming it
        **{hostile: (row(), "ok") for hostile in HOSTILE_IDS},
    }
    return table


def write_table(path, cases: dict) -> None:
    rows = [{"sample_id": sid, **row} for sid, (row, _) in cases.items()]
    rows.append({"sample_id": "rgba", **cases["rgba"][0]})  # a duplicate row: rendered once
    rows.append({"sample_id": "grayscale", **cases["rgba"][0]})  # an id reused for other content: fails alone
    columns = sorted({key for r in rows for key in r})
    types = {"prompt": pa.binary(), "image": pa.binary(), "identity": pa.string(), "sample_id": pa.string(),
             "guidance": pa.float64()}
    pq.write_table(pa.table({c: pa.array([r.get(c) for r in rows], types.get(c, pa.int64())) for c in columns}),
                   str(path))


def test_each_bad_row_fails_alone_with_its_reason_and_the_rest_render(local_ray, cases, tmp_path, caplog):
    dataset = tmp_path / "rows.parquet"
    write_table(dataset, cases)
    out = tmp_path / "out"
    inputs = {p for p in tmp_path.rglob("*")}
    with caplog.at_level(logging.WARNING, logger="ray_jobs"):
        report = run_job(job(dataset, out, **{"parallel.ulysses": 1}), progress=False)
    assert "hieght" in caplog.text  # the unused column is named

    outcome = {r["sample_id"]: r for r in manifest(out)}
    first_row, reused_row = list(cases).index("grayscale") + 1, len(cases) + 2
    reused = outcome.pop(f"grayscale@rows.parquet row {reused_row}")
    assert reused["status"] == "failed" and \
        f"reused for different content (first used at rows.parquet row {first_row})" in reused["error"]
    assert sorted(outcome) == sorted(cases)  # one row per case: the duplicate collapsed
    for sid, (_, expected) in cases.items():
        row = outcome[sid]
        if expected == "ok":
            assert row["status"] == "ok", f"{sid!r}: {row['error']}"
            assert read_frames(out / row["path"]) == FRAMES
        else:
            assert row["status"] == "failed" and expected in row["error"], f"{sid!r}: {row['error']}"
    assert report.exit_code == 3

    # Hostile ids land inside the output folder under safe, distinct names; nothing is written elsewhere.
    assert len({outcome[sid]["path"].lower() for sid in ("Case", "case")}) == 2  # apart on case-blind storage
    for hostile in HOSTILE_IDS:
        assert (out / "videos" / f"{safe_name(hostile)}.mp4").resolve().parent == (out / "videos").resolve()
    created = {p for p in tmp_path.rglob("*")} - inputs
    assert all(p == out or out in p.parents for p in created)

    # Credentials in a URI appear nowhere: journal, manifest, failures, summary, gallery, logs.
    for path in out.rglob("*"):
        if path.is_file() and path.suffix != ".mp4" and path.suffix != ".jpg":
            assert SECRET.encode() not in path.read_bytes(), path
    assert SECRET not in caplog.text
    assert "AKIDEXAMPLE" not in (out / "failures.parquet").read_bytes().decode("latin-1")
