"""Identity preprocessing: choose the face stage a checkpoint folder provides."""

from pathlib import Path

import torch

from echovideo.errors import CheckpointError
from echovideo.face.stage import FaceIdentity, FaceStage
from echovideo.face.standin import MARKER as STANDIN_MARKER


def load_face_stage(folder: Path, device: torch.device) -> FaceStage:
    """The released insightface/facexlib stage, or the tiny preset's documented stand-in."""
    if (folder / STANDIN_MARKER).is_file():
        from echovideo.face.standin import StandInFaceStage

        return StandInFaceStage(folder)
    if not folder.is_dir():
        raise CheckpointError("face_encoder", f"{folder} does not exist",
                              "copy ckpts/face_encoder from the released checkpoint")
    from echovideo.face.insightface_stage import InsightFaceStage

    return InsightFaceStage(folder, device)


__all__ = ["FaceIdentity", "FaceStage", "load_face_stage"]
