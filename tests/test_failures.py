"""The runtime's one classifier and one policy: each failure a user meets sorts to the right kind, each kind
leads to the right action, and every exception we raise survives pickling (Ray, multiprocessing) as itself."""

import errno
import pickle

import pytest
import ray.exceptions
import torch

from echovideo.errors import (
    CheckpointError,
    EchoVideoInputError,
    NoFaceFoundError,
    ParallelGroupError,
    PeerFailedError,
)
from ray_jobs.data.records import Kind
from ray_jobs.runtime.failures import (
    Failure,
    SampleFailure,
    classify,
    decide,
    root_cause,
)
from ray_jobs.store.destination import UploadError
from ray_jobs.store.errors import JobFailure, OutputError


@pytest.mark.parametrize("exc, kind, secondary", [
    (NoFaceFoundError("--image", "no face found", "use a photo with a face"), Kind.INPUT, False),
    (EchoVideoInputError("--image", "degenerate keypoints"), Kind.INPUT, False),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Kind.OUT_OF_MEMORY, False),
    (RuntimeError("NPU out of memory. Tried to allocate 1.2 GiB"), Kind.OUT_OF_MEMORY, False),
    (RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"),
     Kind.OUT_OF_MEMORY, False),
    (MemoryError(), Kind.OUT_OF_MEMORY, False),
    (OSError(errno.ENOSPC, "No space left on device"), Kind.OUTPUT, False),
    (UploadError("cannot upload videos/a.mp4 to s3://b/out: Connection reset"), Kind.UPLOAD, False),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (226x64 and 32x64)"), Kind.SAMPLE, False),
    (ValueError("OpenCV(4.10.0) error: (-215:Assertion failed)"), Kind.SAMPLE, False),
    (ParallelGroupError("Ulysses all-to-all failed: Connection closed by peer"), Kind.GROUP_LOST, True),
    (PeerFailedError("rank 0 failed to prepare this sample: ValueError: x"), Kind.SAMPLE, True),
])
def test_each_failure_sorts_to_its_kind_and_survives_the_trip_through_ray(exc, kind, secondary):
    failure = classify(exc)
    assert (failure.kind, failure.secondary) == (kind, secondary)
    sent = pickle.loads(pickle.dumps(SampleFailure.of(failure)))  # what a worker raises
    assert classify(sent) == failure
    wrapped = ray.exceptions.RayTaskError("render", "traceback", sent)  # what ray.get raises in the driver
    assert classify(wrapped) == failure


def test_a_dead_rank_is_a_lost_group():
    assert classify(ray.exceptions.ActorDiedError()).kind is Kind.GROUP_LOST


@pytest.mark.parametrize("exc", [
    EchoVideoInputError("--image", "bad", "fix"), CheckpointError("ckpts", "no config.json", "point at it"),
    NoFaceFoundError("--image", "no face found", "use another photo"), ParallelGroupError("lost"),
    PeerFailedError("rank 0 failed"), SampleFailure("bad input", "no face", False), JobFailure("gone"),
    OutputError("disk full"), UploadError("cannot upload videos/a.mp4 to s3://b/out: timed out"),
])
def test_every_exception_we_raise_round_trips_through_pickle(exc):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc) and str(back) == str(exc)
    if isinstance(exc, EchoVideoInputError):
        assert (back.field, back.problem, back.fix) == (exc.field, exc.problem, exc.fix)


@pytest.mark.parametrize("kind, attempts, expected", [
    (Kind.INPUT, 1, (False, False, False)),  # fails now, the replica is fine
    (Kind.OUT_OF_MEMORY, 1, (False, True, False)),  # fails now (it would again), one rebuild
    (Kind.SAMPLE, 1, (True, True, False)),
    (Kind.SAMPLE, 3, (False, True, False)),  # the last attempt
    (Kind.GROUP_LOST, 2, (True, True, False)),
    (Kind.OUTPUT, 1, (False, False, True)),  # the job stops; a rerun resumes
    (Kind.UPLOAD, 1, (True, False, False)),  # the store's hiccup: again, on the same replica
    (Kind.UPLOAD, 3, (False, False, False)),
])
def test_what_follows_from_each_kind(kind, attempts, expected):
    decision = decide(Failure(kind, "why"), attempts, retries=3)
    assert (decision.retry, decision.rebuild, decision.stop_job) == expected


def test_the_root_cause_wins_over_its_consequences():
    consequence = Failure(Kind.GROUP_LOST, "peer closed the connection", secondary=True)
    cause = Failure(Kind.OUT_OF_MEMORY, "out of memory on rank 1")
    assert root_cause([consequence, cause]) is cause
    assert root_cause([consequence]) is consequence
