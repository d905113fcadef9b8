from pathlib import Path

import pytest

from echovideo.presets.tiny import tiny_checkpoint

FACE = Path(__file__).resolve().parent.parent / "echovideo" / "assets" / "astronaut.jpg"


@pytest.fixture(scope="session")
def tiny_root(tmp_path_factory) -> Path:
    """The tiny checkpoint, built once per test session into a private cache."""
    return tiny_checkpoint(tmp_path_factory.mktemp("cache"))


@pytest.fixture(scope="session")
def tiny_pipe(tiny_root):
    from echovideo.pipeline import EchoVideoPipeline

    return EchoVideoPipeline.from_pretrained(tiny_root, device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def face_path() -> Path:
    return FACE
