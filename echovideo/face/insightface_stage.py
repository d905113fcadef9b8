"""The released face stage: insightface antelopev2 + facexlib (RetinaFace fallback, BiSeNet parsing).

Needs the `face` extra (insightface, onnxruntime, facexlib) and the weights in ckpts/face_encoder/.
"""

import importlib.util
from pathlib import Path

import numpy as np
import torch

from echovideo.errors import CheckpointError
from echovideo.face.stage import DetectedFace, FaceStage, nearest_to_centre

ANTELOPE_FILES = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", "glintr100.onnx", "scrfd_10g_bnkps.onnx")
FACEXLIB_FILES = ("parsing_bisenet.pth", "detection_Resnet50_Final.pth")
DET_SIZE = (640, 640)
# BiSeNet's ImageNet normalisation.
_PARSE_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_PARSE_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def check_released_face_encoder(folder: Path) -> None:
    """Clear errors for a missing `face` extra or missing weights, before anything is loaded."""
    missing_pkgs = [m for m in ("insightface", "onnxruntime", "facexlib") if importlib.util.find_spec(m) is None]
    if missing_pkgs:
        raise CheckpointError("face_encoder", f"packages {missing_pkgs} are not installed",
                              "pip install 'echovideo[face]'")
    antelope = folder / "models" / "antelopev2"
    missing = [f"models/antelopev2/{f}" for f in ANTELOPE_FILES if not (antelope / f).is_file()]
    missing += [f for f in FACEXLIB_FILES if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(str(folder), f"missing face model files: {missing}",
                              "copy ckpts/face_encoder from the released checkpoint")
    for name in FACEXLIB_FILES:
        check_weights_only(folder / name)


def check_weights_only(path: Path) -> None:
    """facexlib reads its .pth files with plain `torch.load`: refuse any that holds more than tensors.

    `weights_only=True` unpickles tensors and containers only, so a tampered file raises here instead of
    running code when facexlib loads it.
    """
    import pickle

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError) as exc:
        raise CheckpointError(str(path), f"not a plain weights file, refused ({type(exc).__name__})",
                              "use the released file; pickles that run code are never loaded") from None


class InsightFaceStage(FaceStage):
    def __init__(self, folder: Path, device: torch.device) -> None:
        check_released_face_encoder(folder)
        from facexlib.detection import init_detection_model
        from facexlib.parsing import init_parsing_model
        from insightface.app import FaceAnalysis

        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else [
            "CPUExecutionProvider"]
        self.analysis = FaceAnalysis(name="antelopev2", root=str(folder), providers=providers)
        self.analysis.prepare(ctx_id=0 if device.type == "cuda" else -1, det_size=DET_SIZE)
        self.recognition = self.analysis.models["recognition"]
        # facexlib finds its weights already in model_rootpath and downloads nothing.
        self.retinaface = init_detection_model("retinaface_resnet50", half=False, device=device,
                                               model_rootpath=str(folder))
        self.parser = init_parsing_model(model_name="bisenet", device=device, model_rootpath=str(folder))
        self.device = device

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        faces = [DetectedFace(bbox=f.bbox, keypoints=f.kps, embedding=f.embedding) for f in self.analysis.get(bgr)]
        if faces:
            return faces
        # Released fallback: facexlib RetinaFace (threshold 0.97), only the face nearest the centre; its
        # embedding then comes from `embed` on the aligned face.
        with torch.no_grad():
            boxes = self.retinaface.detect_faces(bgr, 0.97)
        found = [DetectedFace(bbox=b[:4], keypoints=np.asarray(b[5:15]).reshape(5, 2)) for b in boxes]
        return [nearest_to_centre(found, *image.shape[:2])] if found else []

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        # The whole aligned face in BGR, as released: `get_feat` resizes it to glintr100's 112x112 input.
        return self.recognition.get_feat(np.ascontiguousarray(aligned[:, :, ::-1]))[0]

    @torch.no_grad()
    def parse(self, aligned: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(aligned).permute(2, 0, 1)[None].float().div(255.0)
        pixels = ((pixels - _PARSE_MEAN) / _PARSE_STD).to(self.device)
        return self.parser(pixels)[0].argmax(dim=1)[0].cpu().numpy()
