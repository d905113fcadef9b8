"""The job's quality gate: finished clips whose scores fall below `quality.min_*` are `rejected`, unless a
reviewer's marks (`quality.review`, ray_jobs/data/review.py) say otherwise.

Applied when the manifest is written, not when a clip is rendered: a rejected clip stays on disk and
settled (a rerun does not render it again), and a rerun with another gate re-sorts every clip without
rendering any. Exports take only `ok` clips.
"""

from dataclasses import dataclass, field

from ray_jobs.data.review import Mark, read_review, verdict

SCORE_COLUMNS = ("identity_average", "identity_variation", "face_share", "motion", "dynamic")


@dataclass(frozen=True)
class QualityGate:
    min_identity: float | None = None
    min_face_share: float | None = None
    marks: dict[str, Mark] = field(default_factory=dict)  # a reviewer's, by sample id: they outrank the scores

    @classmethod
    def of(cls, quality: dict) -> "QualityGate":
        """From the job file's `quality` section (its review file read now: a bad one stops the job first)."""
        review = quality.get("review")
        return cls(quality.get("min_identity"), quality.get("min_face_share"),
                   read_review(review, "quality.review") if review else {})

    def verdict(self, sample_id: str, scores: dict | None) -> tuple[str, str | None]:
        """(status, reason) of a finished clip: ok, or rejected with why."""
        return verdict(sample_id, self.reason(scores), self.marks)

    def reason(self, scores: dict | None) -> str | None:
        """Why a finished clip is rejected, or None when it passes (or no gate is set)."""
        gates = [(key, name, limit) for key, name, limit in (
            ("identity_average", "min_identity", self.min_identity),
            ("face_share", "min_face_share", self.min_face_share)) if limit is not None]
        for key, name, limit in gates:
            value = (scores or {}).get(key)
            if value is None:  # an unverified clip does not pass a gate set to keep only verified ones
                return f"{key} was not scored (rendered with quality.scores off); quality.{name} is {limit}"
            if value < limit:
                return f"{key} {value:.3f} < quality.{name} {limit}"
        return None
