"""The face models an insightface `FaceAnalysis(root=FOLDER, name=NAME)` loads, as published evaluations call it.

ConsisID's `eval/get_facesim_fid.py` calls `FaceAnalysis(root=face_encoder)` without a name, so insightface
0.7.3 takes its default pack, `buffalo_l` (det_10g + w600k_r50), from `face_encoder/models/buffalo_l/`; our
render-time stage uses the release's `antelopev2` (SCRFD-10G + glintr100). This resolves a pack the way
insightface does, without insightface (it would pull its own onnxruntime and never download here): every
`*.onnx` in `root/models/NAME/`, in sorted order, routed by its graph's signature as `model_zoo.get_model`
routes it (5+ outputs: detection; a 192x192 input: landmarks; 96x96: gender/age; a square input of 112 or
more, a multiple of 16: recognition), the first of each task kept.
"""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from echovideo.errors import CheckpointError
from echovideo.face.antelope import ArcFaceRecognizer, ScrfdDetector
from echovideo.face.stage import DetectedFace, largest

DEFAULT_PACK = "buffalo_l"  # insightface 0.7.3's DEFAULT_MP_NAME


def task_of(path: Path) -> str | None:
    """insightface's routing of one ONNX file by its inputs and outputs."""
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    initializers = {tensor.name for tensor in graph.initializer}
    inputs = [i for i in graph.input if i.name not in initializers]
    if len(graph.output) >= 5:
        return "detection"
    dims = [d.dim_value for d in inputs[0].type.tensor_type.shape.dim] if inputs else []
    if len(dims) != 4:
        return None
    height, width = dims[2], dims[3]
    if (height, width) == (192, 192):
        return "landmark"
    if (height, width) == (96, 96):
        return "genderage"
    if len(inputs) == 2 and height == 128:
        return "inswapper"
    if height == width and height >= 112 and height % 16 == 0:
        return "recognition"
    return None


@dataclass(frozen=True)
class PackFiles:
    name: str
    detector: Path
    recognizer: Path

    def digests(self) -> dict[str, str]:
        """Each file's sha256: what an evaluation records so two tables say whether they used the same models."""
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in (self.detector, self.recognizer)}


def resolve_pack(face_encoder: Path, name: str = DEFAULT_PACK) -> PackFiles:
    folder = Path(face_encoder) / "models" / name
    if not folder.is_dir():
        raise CheckpointError("--face-pack", f"no face pack {name!r} in {folder.parent}",
                              f"copy insightface's {name} pack there (insightface keeps it in ~/.insightface/models/"
                              f"{name}), or name one the folder has with --face-pack (e.g. antelopev2)")
    tasks: dict[str, Path] = {}
    for path in sorted(folder.glob("*.onnx")):
        task = task_of(path)
        if task is not None:
            tasks.setdefault(task, path)
    missing = [task for task in ("detection", "recognition") if task not in tasks]
    if missing:
        raise CheckpointError("--face-pack", f"{folder} has no {' or '.join(missing)} model",
                              "use a complete insightface pack")
    return PackFiles(name, tasks["detection"], tasks["recognition"])


class AnalysisPack:
    """`FaceAnalysis(...).get(image)` reduced to what evaluations read: the largest face and its embedding."""

    def __init__(self, files: PackFiles, device: torch.device) -> None:
        from echovideo.face.released_stage import onnx_providers

        providers = onnx_providers(device)
        self.files = files
        self.detector = ScrfdDetector(files.detector, providers)
        self.recognizer = ArcFaceRecognizer(files.recognizer, providers)

    def analysis_face(self, image: np.ndarray, det_size: int) -> DetectedFace | None:
        return analysis_face(self.detector, self.recognizer, image, det_size)


def analysis_face(detector: ScrfdDetector, recognizer: ArcFaceRecognizer, image: np.ndarray,
                  det_size: int) -> DetectedFace | None:
    """The largest face of an RGB image at `det_size` and its embedding, as `FaceAnalysis.get` gives them."""
    bgr = np.ascontiguousarray(image[:, :, ::-1])
    boxes, keypoints = detector.detect(bgr, (det_size, det_size))
    if not len(boxes):
        return None
    face = largest([DetectedFace(bbox=box[:4], keypoints=points) for box, points in zip(boxes, keypoints)])
    return DetectedFace(face.bbox, face.keypoints, recognizer.embed_keypoints(bgr, face.keypoints))
