"""Why a sample or a replica failed, and what follows from it: one classifier and one policy for the whole runtime.

A worker classifies what it raised (it alone sees the real exception: an out-of-memory error, an OpenCV
error) and sends the result as a `SampleFailure`, which always survives pickling; the driver classifies
what Ray tells it (a rank died) with the same function and acts on `decide`.
"""

import errno
import sys
from dataclasses import dataclass

from echovideo.errors import EchoVideoInputError, ParallelGroupError, PeerFailedError
from ray_jobs.data.records import Kind
from ray_jobs.store.destination import UploadError

OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EFBIG}  # the clip cannot be written
OUT_OF_MEMORY_MARKERS = ("out of memory", "can't allocate memory", "cannot allocate memory")
# A store refusing the credentials: no retry or rebuild can fix it, so the job stops (resumable once fixed).
DENIED_MARKERS = ("access denied", "accessdenied", "access_denied", "forbidden", "invalidaccesskeyid",
                  "signaturedoesnotmatch", "permission denied")


@dataclass(frozen=True)
class Failure:
    kind: Kind
    message: str
    secondary: bool = False  # this rank failed because another one did (that one reports the cause)
    node_suspect: bool = False  # a rank became unreachable: its node may be gone, which Ray says only later


class SampleFailure(Exception):
    """What a worker raises for any failure: the classification, and a one-line reason for the manifest."""

    def __init__(self, kind: str, message: str, secondary: bool = False) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind, self.message, self.secondary = kind, message, secondary

    def __reduce__(self):
        return SampleFailure, (self.kind, self.message, self.secondary)

    @classmethod
    def of(cls, failure: Failure) -> "SampleFailure":
        return cls(failure.kind.value, failure.message, failure.secondary)


@dataclass(frozen=True)
class Decision:
    retry: bool  # requeue the sample (otherwise it is recorded as failed, unless the job stops)
    rebuild: bool  # tear the replica down and build a fresh one in its slot
    stop_job: bool


def classify(exc: BaseException) -> Failure:
    """The one place that sorts a failure, whether a worker raised it or Ray reports it."""
    import ray.exceptions

    if isinstance(exc, ray.exceptions.RayTaskError):  # first: Ray makes it an instance of its cause's class too
        cause = exc.cause if isinstance(getattr(exc, "cause", None), BaseException) else None
        return classify(cause) if cause is not None else Failure(Kind.SAMPLE, _first_line(exc))
    if isinstance(exc, SampleFailure):
        return Failure(Kind(exc.kind), exc.message, exc.secondary)
    if isinstance(exc, ray.exceptions.RayActorError):
        if getattr(exc, "preempted", False) or "node has died" in str(exc).lower():
            return Failure(Kind.NODE_LOST, f"a rank's node was lost ({type(exc).__name__})")
        unreachable = isinstance(exc, ray.exceptions.ActorUnavailableError)
        return Failure(Kind.GROUP_LOST, f"a rank {'became unreachable' if unreachable else 'died'} "
                                        f"({type(exc).__name__})", node_suspect=unreachable)
    if isinstance(exc, ray.exceptions.RayError):
        return Failure(Kind.GROUP_LOST, f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, EchoVideoInputError):
        return Failure(Kind.INPUT, str(exc))
    if isinstance(exc, _out_of_memory_types()) or \
            any(marker in str(exc).lower() for marker in OUT_OF_MEMORY_MARKERS):
        return Failure(Kind.OUT_OF_MEMORY, f"{type(exc).__name__}: {_first_line(exc)}")
    if isinstance(exc, UploadError) and any(marker in str(exc).lower() for marker in DENIED_MARKERS):
        return Failure(Kind.OUTPUT, f"the store refused this rank's credentials ({_first_line(exc)[:300]})")
    if isinstance(exc, UploadError):
        return Failure(Kind.UPLOAD, str(exc))
    if isinstance(exc, OSError) and exc.errno in OUTPUT_ERRNOS:
        return Failure(Kind.OUTPUT, f"cannot write the clip ({exc.strerror})")
    if isinstance(exc, ParallelGroupError):
        return Failure(Kind.GROUP_LOST, _first_line(exc), secondary=True)
    if isinstance(exc, PeerFailedError):
        return Failure(Kind.SAMPLE, _first_line(exc), secondary=True)
    return Failure(Kind.SAMPLE, f"{type(exc).__name__}: {_first_line(exc)}")


def decide(failure: Failure, attempts: int, retries: int) -> Decision:
    """The one place that says what follows from a failure of a sample's `attempts`-th try."""
    if failure.kind is Kind.OUTPUT:
        return Decision(retry=False, rebuild=False, stop_job=True)
    if failure.kind in (Kind.INPUT, Kind.UNAVAILABLE):  # the reader already retried what could pass now
        return Decision(retry=False, rebuild=False, stop_job=False)
    if failure.kind is Kind.NODE_LOST:  # not the sample's fault: its retry budget is not charged (driver)
        return Decision(retry=True, rebuild=True, stop_job=False)
    if failure.kind is Kind.OUT_OF_MEMORY:
        return Decision(retry=False, rebuild=True, stop_job=False)
    if failure.kind is Kind.UPLOAD:  # a store's hiccup: loading the model again would not help
        return Decision(retry=attempts < retries, rebuild=False, stop_job=False)
    return Decision(retry=attempts < retries, rebuild=True, stop_job=False)


def root_cause(failures: list[Failure]) -> Failure:
    """Of several ranks' failures, the one that caused the others."""
    return next((f for f in failures if not f.secondary), failures[0])


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _out_of_memory_types() -> tuple[type, ...]:
    """MemoryError, and torch's OOM when torch is loaded (only a process that ran the model can raise it, so the
    driver never imports torch to classify)."""
    torch = sys.modules.get("torch")
    return (MemoryError,) if torch is None else (MemoryError, torch.OutOfMemoryError)
