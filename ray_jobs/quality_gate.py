"""The job's quality gate: finished clips whose scores fall below `quality.min_*` are `rejected`.

Applied when the manifest is written, not when a clip is rendered: a rejected clip stays on disk and
settled (a rerun does not render it again), and a rerun with another gate re-sorts every clip without
rendering any. Exports take only `ok` clips.
"""

from dataclasses import dataclass

SCORE_COLUMNS = ("identity_average", "identity_variation", "face_share", "motion", "dynamic")


@dataclass(frozen=True)
class QualityGate:
    min_identity: float | None = None
    min_face_share: float | None = None

    @classmethod
    def of(cls, quality: dict) -> "QualityGate":
        """From the job file's `quality` section."""
        return cls(quality.get("min_identity"), quality.get("min_face_share"))

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
