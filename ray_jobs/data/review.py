"""A reviewer's marks: the gallery's `review.json` (keep or reject a clip by hand, with a note).

The gallery keeps marks in the browser and downloads them as `review.json`; `echovideo export --review FILE`
and a job's `quality.review: FILE` (recorded in the manifest's `review` and `review_note` columns) honour them
on top of the quality gate. A person who watched a clip outranks a threshold on its scores: `reject` takes
out a clip the gate passed, `keep` brings back one the gate rejected. Marks name clips by sample id, so a
review stays valid across reruns (an id is the request's content).
"""

import json
from dataclasses import dataclass

from echovideo.errors import EchoVideoInputError
from echovideo.locations import filesystem, public_name
from ray_jobs.data.redact import redact

FORMAT = "echovideo-review/1"  # what the gallery writes; checked so another JSON file is not taken for marks
MARKS = ("keep", "reject")
MAX_BYTES = 256 * 2**20


@dataclass(frozen=True)
class Mark:
    mark: str  # keep | reject
    note: str = ""


def read_review(location: str, field: str) -> dict[str, Mark]:
    """Sample id -> mark, from a review.json path or URI; any problem is one line naming `field`."""
    shown = public_name(location)
    try:
        fs, path = filesystem(location)
        with fs.open_input_stream(path) as stream:
            raw = stream.read(MAX_BYTES + 1)
    except (OSError, ValueError, EchoVideoInputError) as exc:
        raise EchoVideoInputError(field, f"cannot read {shown} ({redact(str(exc))[:200]})",
                                  "pass the review.json the gallery downloaded") from None
    if len(raw) > MAX_BYTES:
        raise EchoVideoInputError(field, f"{shown} is over {MAX_BYTES // 2**20} MB", "pass the gallery's review.json")
    try:
        review = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise EchoVideoInputError(field, f"{shown} is not JSON ({exc})", "pass the gallery's review.json") from None
    if not isinstance(review, dict) or review.get("format") != FORMAT or not isinstance(review.get("marks"), dict):
        raise EchoVideoInputError(field, f"{shown} is not a gallery review (no \"format\": \"{FORMAT}\" with "
                                         "\"marks\")", "download it with the gallery's \"download review.json\"")
    marks = {}
    for sample_id, entry in review["marks"].items():
        if not isinstance(entry, dict) or entry.get("mark") not in MARKS or not isinstance(entry.get("note", ""), str):
            raise EchoVideoInputError(field, f"{shown}: the mark of {sample_id[:80]!r} is {str(entry)[:80]}",
                                      'each mark is {"mark": "keep" or "reject", "note": text}')
        marks[sample_id] = Mark(entry["mark"], entry.get("note", ""))
    return marks


def verdict(sample_id: str, gate_reason: str | None, marks: dict[str, Mark]) -> tuple[str, str | None]:
    """(status, reason) of a finished clip: the reviewer's mark where there is one, else the gate's."""
    mark = marks.get(sample_id)
    if mark is None:
        return ("ok", None) if gate_reason is None else ("rejected", gate_reason)
    if mark.mark == "keep":
        return "ok", None
    return "rejected", "rejected in review" + (f": {mark.note}" if mark.note else "")
