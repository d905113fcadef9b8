"""Choose the face stage a checkpoint folder provides."""

from pathlib import Path

import torch

from echovideo.errors import CheckpointError
from echovideo.face.stage import FaceStage
from echovideo.face.standin import MARKER as STANDIN_MARKER


def load_face_stage(folder: Path, device: torch.device, embedding_width: int | None = None) -> FaceStage:
    """The released stage (antelopev2 + RetinaFace + BiSeNet), or the tiny preset's documented stand-in.
    `embedding_width`: what the transformer takes (`face_features_embed_dim`), checked at load."""
    if (folder / STANDIN_MARKER).is_file():
        from echovideo.face.standin import StandInFaceStage

        return StandInFaceStage(folder)
    if not folder.is_dir():
        raise CheckpointError("face_encoder", f"{folder} does not exist",
                              "copy ckpts/face_encoder from the released checkpoint")
    from echovideo.face.released_stage import ReleasedFaceStage

    return ReleasedFaceStage(folder, device, embedding_width)
