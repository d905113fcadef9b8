"""The job's gallery: one page to review a synthesis run by: every clip with its prompt and identity
thumbnail, sorted and filtered by its scores or by text, stepped through with the keyboard, and marked
keep/reject with a note (marks kept in the browser, downloaded as `review.json` for `export --review` and
`quality.review`; ray_jobs/data/review.py).

`index.html` is static; `gallery-data.js` holds one compact entry per clip (read with a script tag, so the
page opens from a laptop's disk as well as from a bucket or any static server: browsers refuse `fetch`
on file://). The page lays out one screen of cards (`PAGE_CARDS`) at a time and videos load only when
played, so 100,000 clips open in about the time 200 do. Finished clips, clips the quality gate rejected and
failed samples have their own sections. The view (section, sort, filters, page) lives in the address's
`#fragment`: a filtered view is a link that can be shared.
"""

import json
from importlib import resources

from ray_jobs.data.attempts import row_of
from ray_jobs.store.destination import Destination

PAGE_CARDS = 200
DATA = "gallery-data.js"
# Per clip, short keys: at 100,000 clips the data file is what a browser reads first.
SCORE_KEYS = {"identity_average": "ia", "identity_variation": "iv", "face_share": "fs", "motion": "m",
              "dynamic": "d"}


def thumbnail_name(identity_sha: str | None) -> str:
    """The identity photo's thumbnail, relative to the output folder (one per photo, named by its hash)."""
    return f"identities/{identity_sha}.jpg"


def write_gallery(destination: Destination, done: list[dict], failed: list[dict],
                  rejected: list[dict] = (), superseded: list[dict] = ()) -> None:
    """Write the page and its data to the output's `Destination`. Clips sorted by prompt, then identity,
    then id (the page's default order, grouped under a heading per prompt). A row's attempts (quality
    retries) share one card: its kept clip's, or, for a row none of whose attempts passed, its last one's,
    listing the others with their verdict and identity score."""
    prompts: dict[str, int] = {}
    thumbnails = set(destination.names("identities"))  # a sample that failed before rank 0 wrote one has none

    def about(record: dict) -> dict:
        """What every card shows, a failed sample's too: id, prompt, identity and its thumbnail, why it failed
        or was rejected, and a reviewer's mark recorded in the manifest."""
        prompt = record.get("prompt")
        sha = record.get("identity_sha256")
        entry = {"id": record["sample_id"], "p": None if prompt is None else prompts.setdefault(prompt, len(prompts)),
                 "i": str(record.get("identity")), "t": sha if f"{sha}.jpg" in thumbnails else None}
        optional = {"r": record.get("error"), "rv": record.get("review"), "rn": record.get("review_note")}
        return {**entry, **{key: value for key, value in optional.items() if value}}

    def video(record: dict) -> str:
        return record["path"].removeprefix("videos/").removesuffix(".mp4")

    def clip(record: dict) -> dict:
        scores = record.get("scores") or {}
        return {**about(record), "n": video(record),
                "s": str(record.get("seed")),  # 64-bit: past a JS number
                **{short: scores.get(key) for key, short in SCORE_KEYS.items()}}

    def ordered(records) -> list[dict]:
        return sorted(records, key=lambda r: (r["prompt"], r.get("identity") or "", r["sample_id"]))

    rows: dict[str, list[dict]] = {}
    for record in [*done, *rejected, *superseded]:
        rows.setdefault(row_of(record), []).append(record)

    def card(record: dict) -> dict:
        """A row's card: the clip, and its row's other attempts."""
        others = [r for r in rows[row_of(record)] if r is not record]
        attempts = {"a": record.get("attempt") or 0,
                    "o": [{"a": r.get("attempt") or 0, "n": video(r), "st": r["status"],
                           "ia": (r.get("scores") or {}).get("identity_average")}
                          for r in sorted(others, key=lambda r: r.get("attempt") or 0)]} if others else {}
        return {**clip(record), **attempts}

    def shown(records) -> list[dict]:
        """One record per row none of whose attempts is kept: the row's last attempt."""
        kept, last = {row_of(r) for r in done}, {}
        for record in sorted(records, key=lambda r: r.get("attempt") or 0):
            if row_of(record) not in kept:
                last[row_of(record)] = record
        return list(last.values())

    data = {"job": destination.name, "clips": [card(r) for r in ordered(done)],
            "rejected": [card(r) for r in ordered(shown(rejected))],
            "failed": [{**about(r), "r": str(r.get("error"))} for r in failed]}
    data["prompts"] = list(prompts)
    with destination.output(DATA, ".js") as tmp:
        tmp.write_text(f"window.GALLERY={json.dumps(data, ensure_ascii=True, separators=(',', ':'))};\n")
    page = resources.files("ray_jobs.store").joinpath("gallery.html").read_text(encoding="utf-8")
    with destination.output("index.html", ".html") as tmp:
        tmp.write_text(page.replace("PAGE_CARDS", str(PAGE_CARDS)), encoding="utf-8")
