"""The released face stage: antelopev2 (SCRFD-10G + glintr100) on onnxruntime, the RetinaFace fallback and
BiSeNet parsing in torch, every file read from the checkpoint's `face_encoder/` folder and nowhere else.

Needs only the `face` extra (onnxruntime and onnx): no insightface, facexlib or torchvision, so installing
it never touches the user's torch (see antelope.py and retinaface.py for why each is written here).
"""

import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from echovideo.errors import CheckpointError
from echovideo.face.antelope import ArcFaceRecognizer, ScrfdDetector
from echovideo.face.bisenet import BiSeNet
from echovideo.face.retinaface import RetinaFace
from echovideo.face.stage import DetectedFace, FaceStage, largest, nearest_to_centre

ANTELOPE = Path("models") / "antelopev2"
DETECTOR, RECOGNIZER = "scrfd_10g_bnkps.onnx", "glintr100.onnx"
# All five ship with the release; the recipe runs the detector and the recogniser (the other three only
# add landmarks and age/gender that it never reads).
ANTELOPE_FILES = ("1k3d68.onnx", "2d106det.onnx", "genderage.onnx", RECOGNIZER, DETECTOR)
RETINAFACE, BISENET = "detection_Resnet50_Final.pth", "parsing_bisenet.pth"
FALLBACK_THRESHOLD = 0.97  # the released fallback's RetinaFace confidence
# BiSeNet's ImageNet normalisation.
_PARSE_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
_PARSE_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def check_released_face_encoder(folder: Path) -> None:
    """Clear errors for a missing `face` extra or missing files, before anything is loaded."""
    missing_pkgs = [m for m in ("onnxruntime", "onnx") if importlib.util.find_spec(m) is None]
    if missing_pkgs:
        raise CheckpointError("face_encoder", f"packages {missing_pkgs} are not installed",
                              "pip install 'echovideo[face]' (it never changes your torch)")
    missing = [str(ANTELOPE / f) for f in ANTELOPE_FILES if not (folder / ANTELOPE / f).is_file()]
    missing += [f for f in (RETINAFACE, BISENET) if not (folder / f).is_file()]
    if missing:
        raise CheckpointError(str(folder), f"missing face model files: {missing}",
                              "copy ckpts/face_encoder from the released checkpoint")


def load_weights(module: nn.Module, path: Path) -> nn.Module:
    """A released facexlib `.pth` into its network, strictly; only tensors are ever unpickled."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise CheckpointError(str(path), "holds more than weights (a pickle that could run code); refused "
                                  "unrun", "use the released file") from None
        raise CheckpointError(str(path), f"is not a readable weights file ({str(exc)[:120]})",
                              "the file is truncated or corrupt: copy it again") from None
    except (RuntimeError, EOFError, OSError) as exc:
        raise CheckpointError(str(path), f"is not a readable weights file ({type(exc).__name__}: "
                              f"{str(exc)[:120]})", "the file is truncated or corrupt: copy it again") from None
    if not isinstance(state, dict):
        raise CheckpointError(str(path), f"holds a {type(state).__name__}, not a state dict", "use the released file")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    missing, unexpected = module.state_dict().keys() - state.keys(), state.keys() - module.state_dict().keys()
    missing = {k for k in missing if not k.endswith("num_batches_tracked")}
    if missing or unexpected:
        raise CheckpointError(str(path), f"does not fit {type(module).__name__}: missing {sorted(missing)[:5]}, "
                              f"unexpected {sorted(unexpected)[:5]}", "use the released file")
    try:
        module.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of the wrong shape
        raise CheckpointError(str(path), f"does not fit {type(module).__name__} ({str(exc)[:200]})",
                              "use the released file") from None
    return module.eval()


def onnx_providers(device: torch.device) -> list:
    """onnxruntime providers for the requested device, its index included (cuda:1 runs on GPU 1)."""
    import onnxruntime

    available = onnxruntime.get_available_providers()
    wanted = {"cuda": "CUDAExecutionProvider", "npu": "CANNExecutionProvider"}.get(device.type)
    if wanted in available:
        return [(wanted, {"device_id": device.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class ReleasedFaceStage(FaceStage):
    def __init__(self, folder: Path, device: torch.device, embedding_width: int | None = None) -> None:
        folder = Path(folder).resolve()
        check_released_face_encoder(folder)
        providers = onnx_providers(device)
        self.detector = ScrfdDetector(folder / ANTELOPE / DETECTOR, providers)
        self.recognizer = ArcFaceRecognizer(folder / ANTELOPE / RECOGNIZER, providers)
        if embedding_width is not None and self.recognizer.width != embedding_width:
            raise CheckpointError(str(folder / ANTELOPE / RECOGNIZER), f"gives {self.recognizer.width}-d embeddings; "
                                  f"the transformer takes {embedding_width} (face_features_embed_dim)",
                                  "use the recognition model released with these transformer weights")
        self.retinaface = load_weights(RetinaFace(), folder / RETINAFACE).to(device)
        self.parser = load_weights(BiSeNet(), folder / BISENET).to(device)
        self.device = device

    def detect(self, image: np.ndarray) -> list[DetectedFace]:
        bgr = np.ascontiguousarray(image[:, :, ::-1])
        boxes, keypoints = self.detector.detect(bgr)
        faces = [DetectedFace(bbox=box[:4], keypoints=points) for box, points in zip(boxes, keypoints)]
        if faces:  # the recipe keeps the largest: only its embedding is computed
            chosen = largest(faces)
            embedding = self.recognizer.embed_keypoints(bgr, chosen.keypoints)
            return [DetectedFace(f.bbox, f.keypoints, embedding if f is chosen else None) for f in faces]
        # Released fallback: facexlib RetinaFace (threshold 0.97), only the face nearest the centre; its
        # embedding then comes from `embed` on the aligned face.
        found = [DetectedFace(bbox=row[:4], keypoints=np.asarray(row[5:15]).reshape(5, 2))
                 for row in self.retinaface.detect_faces(bgr, FALLBACK_THRESHOLD)]
        return [nearest_to_centre(found, *image.shape[:2])] if found else []

    def analysis_face(self, image: np.ndarray, det_size: int) -> DetectedFace | None:
        from echovideo.face.analysis_pack import analysis_face

        return analysis_face(self.detector, self.recognizer, image, det_size)

    def embed(self, aligned: np.ndarray) -> np.ndarray:
        # The whole aligned face in BGR, as released: `get_feat` resizes it to glintr100's 112x112 input.
        return self.recognizer.embed_crop(np.ascontiguousarray(aligned[:, :, ::-1]))

    @torch.no_grad()
    def parse(self, aligned: np.ndarray) -> np.ndarray:
        pixels = torch.from_numpy(aligned).permute(2, 0, 1)[None].float().div(255.0)
        pixels = ((pixels - _PARSE_MEAN) / _PARSE_STD).to(self.device)
        return self.parser(pixels).argmax(dim=1)[0].cpu().numpy()
