"""A rank that dies, hangs or fails mid-generation, or rank 0 failing to prepare the sample: every rank stops
with a clear error, promptly, and only a failure of the group itself is reported as one."""

import os
import time
from datetime import timedelta

import torch
from distributed import run_ranks_outcomes

from echovideo.sampling import GenerationOptions

OPTS = GenerationOptions(height=32, width=32, frames=5, steps=4, guidance=6.0)
GROUP_TIMEOUT_S = 6


class FaultyEngine:
    """Wraps the rank's DiT engine; at step `at` the rank exits (dies), sleeps (hangs) or raises."""

    def __init__(self, engine, at: int, fault: str) -> None:
        self.engine, self.at, self.fault, self.calls = engine, at, fault, 0

    def __call__(self, *args, **options):
        self.calls += 1
        if self.calls == self.at:
            if self.fault == "die":
                os._exit(17)
            if self.fault == "oom":
                raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
            if self.fault == "shape":
                raise RuntimeError("mat1 and mat2 shapes cannot be multiplied (226x64 and 32x64)")
            time.sleep(2 * GROUP_TIMEOUT_S)  # then it finds its peer gone
        return self.engine(*args, **options)


def failing_prepare(*args):
    raise ValueError("OpenCV(4.10.0) error: (-215:Assertion failed) !ssize.empty() in function 'resize'")


def generate_with_fault(rank: int, root: str, image: str, fault: str, faulty_rank: int = 1) -> None:
    from parallel import ParallelConfig
    from parallel.pipeline import ParallelEchoVideoPipeline

    pipe = ParallelEchoVideoPipeline.from_pretrained(root, ParallelConfig(ulysses=2), device="cpu", dtype="fp32",
                                                     timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    faulty = rank == faulty_rank and fault in ("die", "hang", "oom", "shape")
    if faulty:
        pipe.engine = FaultyEngine(pipe.engine, at=2, fault=fault)
    if rank == 0 and fault == "prepare":
        pipe.pipe.prepare = failing_prepare
    started = time.monotonic()
    try:
        pipe("a woman smiles", image, OPTS)
    finally:
        elapsed = time.monotonic() - started
        assert faulty or elapsed < 2 * GROUP_TIMEOUT_S, f"rank {rank} took {elapsed:.0f} s to notice"


def outcomes(tiny_root, image, fault, faulty_rank: int = 1):
    return run_ranks_outcomes(2, generate_with_fault, str(tiny_root), str(image), fault, faulty_rank,
                              timeout_s=GROUP_TIMEOUT_S, wall_s=6 * GROUP_TIMEOUT_S)


def test_a_rank_dying_mid_step_fails_its_peer_with_a_clear_error(tiny_root, face_path):
    result = outcomes(tiny_root, face_path, "die")
    assert result[1] == "died"
    name, message = result[0]
    assert name == "ParallelGroupError" and "peer rank died or stopped answering" in message


def test_a_hung_rank_fails_its_peer_within_the_group_timeout(tiny_root, face_path):
    result = outcomes(tiny_root, face_path, "hang")
    name, message = result[0]
    assert name == "ParallelGroupError" and "Timed out" in message, result


def test_input_rejected_on_rank_0_stops_every_rank(tiny_root, tmp_path):
    from PIL import Image

    blank = tmp_path / "blank.png"  # no face anywhere
    Image.new("RGB", (256, 256), (120, 160, 200)).save(blank)
    result = outcomes(tiny_root, blank, "none")
    assert result[0] == result[1] and result[0][0] == "NoFaceFoundError"  # the same reason, on every rank


def test_any_failure_preparing_on_rank_0_reaches_every_rank_before_the_sample(tiny_root, face_path):
    result = outcomes(tiny_root, face_path, "prepare")  # each rank also asserts it stopped within the timeout
    assert result[0][0] == "ValueError" and "ssize.empty()" in result[0][1]
    assert result[1][0] == "PeerFailedError" and "rank 0 failed to prepare" in result[1][1]
    assert "ValueError" in result[1][1] and "ssize.empty()" in result[1][1]


def test_a_bug_or_out_of_memory_is_reported_as_itself_not_as_a_lost_group(tiny_root, face_path):
    result = outcomes(tiny_root, face_path, "shape", faulty_rank=0)
    assert result[0] == ["RuntimeError", "mat1 and mat2 shapes cannot be multiplied (226x64 and 32x64)"]
    assert result[1][0] == "ParallelGroupError"  # its peer exited: the peer's group is what failed
    result = outcomes(tiny_root, face_path, "oom", faulty_rank=1)
    assert result[1][0] == "OutOfMemoryError" and "Tried to allocate" in result[1][1]
    assert result[0][0] == "ParallelGroupError"
