"""Identity preprocessing (face detection, alignment, parsing, embeddings). Names load on first use, so the
photo checks in `echovideo.face.geometry` (used by `plan` and the job driver) never import torch."""

from echovideo.lazy import lazy_names

_PUBLIC = {"FaceIdentity": "echovideo.face.stage", "FaceStage": "echovideo.face.stage",
           "load_face_stage": "echovideo.face.choose"}
__all__ = sorted(_PUBLIC)
__getattr__ = lazy_names(globals(), _PUBLIC)
