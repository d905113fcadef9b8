"""Training-ready exports of a job's finished clips: WebDataset tar shards, a CSV, or CogVideoX's
`prompt.txt` + `videos.txt` pair, to a local folder or any pyarrow filesystem URI.

Identity-preserving training data is (reference photo, prompt, video): every export carries the identity
photo as given (kept by the job under `photos/<sha256>.<ext>`): in each WebDataset sample (`.jpg`/`.png`
beside `.mp4`, `.json`, `.txt`), as a column of the CSV, as `photos/` + `photos.txt` in the CogVideoX pair.

Shard membership is deterministic from the manifest (finished clips sorted by sample id, `shard_size` per
shard), each shard is built in a local temp folder and uploaded whole, and `shards.json` records each
member's content digest (its video's sha256, its json's, its caption's and its photo's): a rerun skips a shard
only when every member's digest is the one recorded and the shard is still there. The copied files of the
CogVideoX pair are reused the same way (`files.json`: relative path -> sha256). Never by size or name: a clip
re-rendered with other settings (same size, same id) is a different digest.
An export's output is always what a fresh export into an empty folder would write: shards, index entries,
videos and photos that the current manifest no longer lists (a quality gate rejected their clips since) are
removed.
"""

import csv
import hashlib
import io
import json
import re
import tarfile
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow.fs as pfs

from echovideo.errors import EchoVideoInputError
from ray_jobs.data.quality_gate import SCORE_COLUMNS
from ray_jobs.data.review import Mark, read_review, verdict
from ray_jobs.store.destination import Destination
from ray_jobs.store.outputs import read_manifest

FORMATS = ("webdataset", "csv", "prompts-videos")
KEY_SAFE = re.compile(r"[^A-Za-z0-9_-]")
SHARD = re.compile(r"shard-\d{6}\.tar")
SHARD_LAYOUT = 3  # what a sample holds (3: with its identity photo, by digest); a shard of another layout is rewritten


def finished_clips(output: str, marks: dict[str, Mark] | None = None) -> tuple[list[dict], dict[str, int]]:
    """The manifest's finished clips that passed the quality gate (`rejected` ones stay out) or, given a
    reviewer's marks, that the review kept (a mark outranks the gate), sorted by sample id (what makes shard
    membership deterministic); and how many samples were left out, by why."""
    passed, left_out = [], Counter()
    for row in read_manifest(output, ("ok", "rejected", "failed")):
        if row["status"] == "failed":
            left_out["failed"] += 1
            continue
        status, reason = verdict(row["sample_id"], row["error"] if row["status"] == "rejected" else None, marks or {})
        if status == "ok":
            passed.append(row)
        else:
            left_out["rejected in review" if reason.startswith("rejected in review") else
                     "rejected by the quality gate"] += 1
    return sorted(passed, key=lambda r: r["sample_id"]), dict(left_out)


def sample_key(sample_id: str) -> str:
    """A WebDataset key: no dots (the format splits a member name at its first dot), distinct per id."""
    key = KEY_SAFE.sub("_", sample_id)[:80]
    if key == sample_id:
        return key
    return f"{key}-{hashlib.sha256(sample_id.encode('utf-8', 'surrogatepass')).hexdigest()[:16]}"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def caption(prompt: str) -> str:
    return " ".join(prompt.split())  # one line: the list formats hold one caption per line


def _metadata(clip: dict) -> dict:
    return {"sample_id": clip["sample_id"], "prompt": clip["prompt"], "seed": clip["seed"],
            "identity": clip["identity"], "identity_sha256": clip.get("identity_sha256"),
            "settings": clip["options"], "scores": clip.get("scores") or {}}


class Exporter:
    def __init__(self, output: str, destination: str, marks: dict[str, Mark] | None = None) -> None:
        self.output, self.destination = output, destination
        self.source = Destination(output)
        self.clips, self.left_out = finished_clips(output, marks)
        self.target = Destination(destination)
        self.target.fs.create_dir(self.target.root, recursive=True)

    def _read(self, relative: str) -> bytes:
        with self.source.fs.open_input_stream(self.source.path(relative)) as stream:
            return stream.read()

    def _members(self, clip: dict) -> list[tuple[str, bytes]]:
        """A WebDataset sample's files by suffix: the video, its json, its caption and its identity photo (an
        output written before photos were kept has none)."""
        members = [(".mp4", self._read(clip["path"])), (".json", json.dumps(_metadata(clip), sort_keys=True).encode()),
                   (".txt", caption(clip["prompt"]).encode())]
        if clip.get("photo"):
            members.append((Path(clip["photo"]).suffix, self._read(clip["photo"])))
        return members

    def _remove_unlisted(self, folder: str, keep: set[str], ours: "re.Pattern | None" = None) -> int:
        """Delete what an earlier export wrote into `folder` that this one does not list (only our names)."""
        stale = [n for n in self.target.names(folder) if n not in keep and (ours is None or ours.fullmatch(n))]
        for name in stale:
            self.target.delete(f"{folder}/{name}" if folder else name)
        return len(stale)

    def _video_sha256(self, clip: dict) -> str:
        """From the manifest (rank 0 hashed the clip it wrote), or the video read here for an older output."""
        return clip.get("video_sha256") or hashlib.sha256(self._read(clip["path"])).hexdigest()

    def _member_digest(self, clip: dict) -> str:
        """What a sample of a shard holds, by content."""
        parts = {"key": sample_key(clip["sample_id"]), "video": self._video_sha256(clip),
                 "json": _sha256(json.dumps(_metadata(clip), sort_keys=True).encode()),
                 "txt": _sha256(caption(clip["prompt"]).encode()), "photo": clip.get("photo")}
        return _sha256(json.dumps(parts, sort_keys=True).encode())

    def _size(self, name: str) -> int | None:
        info = self.target.fs.get_file_info(self.target.path(name))
        return info.size if info.type == pfs.FileType.File else None

    def webdataset(self, shard_size: int) -> dict:
        """-> {"shards": written now, "skipped": already there}."""
        if shard_size < 1:
            raise EchoVideoInputError("--shard-size", f"{shard_size} must be >= 1", "e.g. --shard-size 1000")
        index, wanted = self._index(), {}
        written = skipped = 0
        for number, start in enumerate(range(0, len(self.clips), shard_size)):
            members = [[clip["sample_id"], self._member_digest(clip)] for clip in self.clips[start:start + shard_size]]
            name = f"shard-{number:06d}.tar"
            recorded = index.get(name)
            if recorded and recorded["members"] == members and recorded.get("layout") == SHARD_LAYOUT and \
                    self._size(name) == recorded["size"]:  # the size only checks the file is still whole
                wanted[name] = recorded
                skipped += 1
                continue
            size = self._write_shard(name, self.clips[start:start + shard_size])
            wanted[name] = index[name] = {"members": members, "size": size, "layout": SHARD_LAYOUT}
            self._write_text("shards.json", json.dumps(index, indent=1, sort_keys=True))
            written += 1
        self._write_text("shards.json", json.dumps(wanted, indent=1, sort_keys=True))  # the index first: a
        removed = self._remove_unlisted("", set(wanted), SHARD)  # crash between the two leaves only orphans
        return {"shards": written, "skipped": skipped, "removed": removed}

    def _index(self, name: str = "shards.json") -> dict:
        if self._size(name) is None:
            return {}
        with self.target.fs.open_input_stream(self.target.path(name)) as stream:
            return json.loads(stream.read())

    def _write_shard(self, name: str, clips: list[dict]) -> int:
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / name
            with tarfile.open(local, "w", format=tarfile.PAX_FORMAT) as tar:
                for clip in clips:
                    key = sample_key(clip["sample_id"])
                    for suffix, data in self._members(clip):
                        member = tarfile.TarInfo(key + suffix)
                        member.size, member.mtime = len(data), 0  # same bytes for the same clips
                        tar.addfile(member, io.BytesIO(data))
            self.target.upload(local, name)
            return local.stat().st_size

    def _write_text(self, name: str, text: str) -> None:
        self._write_bytes(name, text.encode("utf-8"))

    def _write_bytes(self, name: str, data: bytes) -> None:
        """Through a local file, uploaded whole (never streamed from a source that could fail half way)."""
        with tempfile.TemporaryDirectory() as folder:
            local = Path(folder) / Path(name).name
            local.write_bytes(data)
            self.target.upload(local, name)

    def csv(self) -> dict:
        """`clips.csv`: video and photo (their locations in the output), caption, seed, identity, settings,
        scores."""
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        writer.writerow(["video", "photo", "caption", "seed", "identity", "identity_sha256", "settings", "sample_id",
                         *SCORE_COLUMNS])
        for clip in self.clips:
            scores = clip["scores"] or {}
            photo = f"{self.source.name}/{clip['photo']}" if clip.get("photo") else None
            writer.writerow([f"{self.source.name}/{clip['path']}", photo, caption(clip["prompt"]), clip["seed"],
                             clip["identity"], clip.get("identity_sha256"), json.dumps(clip["options"], sort_keys=True),
                             clip["sample_id"], *(scores.get(column) for column in SCORE_COLUMNS)])
        self._write_text("clips.csv", buffer.getvalue())
        return {"rows": len(self.clips)}

    def prompts_videos(self) -> dict:
        """CogVideoX fine-tuning's pair: `prompt.txt` and `videos.txt` (line i of each is clip i), videos copied
        under `videos/`, and each clip's identity photo in `photos.txt` (copied once per photo under `photos/`);
        a file already there with the content digest `files.json` recorded for it is not copied again, and one
        no longer listed is removed."""
        copied, recorded = 0, self._index("files.json")
        digests = {c["path"]: self._video_sha256(c) for c in self.clips}
        digests.update({c["photo"]: Path(c["photo"]).stem for c in self.clips if c.get("photo")})  # named by sha256
        files = [c["path"] for c in self.clips] + sorted({c["photo"] for c in self.clips if c.get("photo")})
        for relative in files:
            if recorded.get(relative) != digests[relative] or self._size(relative) is None:
                self._write_bytes(relative, self._read(relative))
                copied += 1
        self._write_text("files.json", json.dumps({f: digests[f] for f in files}, indent=1, sort_keys=True))
        self._write_text("prompt.txt", "".join(caption(c["prompt"]) + "\n" for c in self.clips))
        self._write_text("videos.txt", "".join(c["path"] + "\n" for c in self.clips))
        self._write_text("photos.txt", "".join((c.get("photo") or "") + "\n" for c in self.clips))
        removed = sum(self._remove_unlisted(folder, {Path(f).name for f in files if f.startswith(f"{folder}/")})
                      for folder in ("videos", "photos"))
        return {"files_copied": copied, "rows": len(self.clips), "removed": removed}


def export(output: str, destination: str, fmt: str, shard_size: int = 1000, review: str | None = None) -> dict:
    """`review`: a gallery review.json whose marks outrank the quality gate (see ray_jobs/data/review.py)."""
    if fmt not in FORMATS:
        raise EchoVideoInputError("--format", f"{fmt!r} is unknown", f"use one of {FORMATS}")
    exporter = Exporter(output, destination, read_review(review, "--review") if review else None)
    done = exporter.webdataset(shard_size) if fmt == "webdataset" else \
        exporter.csv() if fmt == "csv" else exporter.prompts_videos()
    return {**done, "clips": len(exporter.clips), "left_out": exporter.left_out}
