"""A rank that dies or hangs mid-generation, or rank 0 rejecting the input: every rank stops with a clear error."""

import os
import time
from datetime import timedelta

from distributed import run_ranks_outcomes
from echovideo.sampling import GenerationOptions

OPTS = GenerationOptions(height=32, width=32, frames=5, steps=4, guidance=6.0)
GROUP_TIMEOUT_S = 6


class FaultyEngine:
    """Wraps the rank's DiT engine; at step `at` the rank exits (dies) or sleeps (hangs)."""

    def __init__(self, engine, at: int, fault: str) -> None:
        self.engine, self.at, self.fault, self.calls = engine, at, fault, 0

    def __call__(self, *args):
        self.calls += 1
        if self.calls == self.at:
            if self.fault == "die":
                os._exit(17)
            time.sleep(2 * GROUP_TIMEOUT_S)  # then it finds its peer gone
        return self.engine(*args)


def generate_with_fault(rank: int, root: str, image: str, fault: str) -> None:
    from parallel import ParallelConfig
    from parallel.pipeline import ParallelEchoVideoPipeline

    pipe = ParallelEchoVideoPipeline.from_pretrained(root, ParallelConfig(ulysses=2), device="cpu", dtype="fp32",
                                                     timeout=timedelta(seconds=GROUP_TIMEOUT_S))
    faulty = rank == 1 and fault in ("die", "hang")
    if faulty:
        pipe.engine = FaultyEngine(pipe.engine, at=2, fault=fault)
    started = time.monotonic()
    try:
        pipe("a woman smiles", image, OPTS)
    finally:
        elapsed = time.monotonic() - started
        assert faulty or elapsed < 2 * GROUP_TIMEOUT_S, f"rank {rank} took {elapsed:.0f} s to notice"


def outcomes(tiny_root, image, fault):
    return run_ranks_outcomes(2, generate_with_fault, str(tiny_root), str(image), fault,
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
    assert result[0][0] == "NoFaceFoundError"
    assert result[1][0] == "EchoVideoInputError" and "rank 0 rejected" in result[1][1]
