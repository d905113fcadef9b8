"""A released `face_encoder/` folder made at test time: the released file names and formats, synthetic weights.

- `models/antelopev2/scrfd_10g_bnkps.onnx`: SCRFD's signature (input 1x3x640x640; 9 outputs: scores,
  box distances and keypoint offsets at strides 8/16/32, 2 anchors per cell), built with the `onnx`
  package. Its outputs are constants laid out so that it reports the faces we choose at the places we
  choose (in the 640x640 letterboxed canvas), whatever the photo: detection is deterministic.
- `glintr100.onnx`: 112x112 -> an embedding of a chosen width (a strided conv and a matrix, seeded).
- the other three antelopev2 files: small valid ONNX graphs (the recipe never runs them).
- `detection_Resnet50_Final.pth`, `parsing_bisenet.pth`: state dicts with the released keys (our networks'
  keys are facexlib's), random but fixed; RetinaFace's heads are set so it finds a grid of 256-px faces
  with five distinct landmarks (or none), to exercise the fallback.
"""

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from echovideo.face.antelope import ARCFACE_DST, DET_SIZE, STRIDES
from echovideo.face.bisenet import BiSeNet
from echovideo.face.released_stage import (
    ANTELOPE,
    BISENET,
    DETECTOR,
    RECOGNIZER,
    RETINAFACE,
)
from echovideo.face.retinaface import RetinaFace

OPSET = [helper.make_opsetid("", 17)]


def template_face(x1: float, y1: float, size: float) -> tuple[np.ndarray, np.ndarray]:
    """A face box and its 5 keypoints: the ArcFace template placed in a size x size box."""
    box = np.array([x1, y1, x1 + size, y1 + size], np.float32)
    return box, (ARCFACE_DST / 112.0 * size + np.array([x1, y1])).astype(np.float32)


def det_scale(height: int, width: int) -> float:
    """insightface's letterbox scale for an image of this size."""
    if height / width > DET_SIZE[1] / DET_SIZE[0]:
        return DET_SIZE[1] / height
    return int(DET_SIZE[0] * height / width) / height


def scrfd(faces_in_canvas: list[tuple[np.ndarray, np.ndarray]], score: float = 0.9,
          batched: bool = False, canvas: tuple[int, int] = DET_SIZE) -> onnx.ModelProto:
    """Constant outputs that decode to `faces_in_canvas` (box, keypoints in canvas pixels, 640x640 unless
    `canvas` says: evaluations detect at 320x320); `batched`: each output with a leading batch dimension of 1,
    as some SCRFD exports have."""
    outputs = {}
    for stride in STRIDES:
        cells = (canvas[1] // stride) * (canvas[0] // stride) * 2
        outputs[stride] = [np.zeros((cells, 1), np.float32), np.zeros((cells, 4), np.float32),
                           np.zeros((cells, 10), np.float32)]
    for box, points in faces_in_canvas:
        stride = 8
        centre = (box[:2] + box[2:]) / 2
        col, row = int(centre[0] // stride), int(centre[1] // stride)
        anchor = (row * (canvas[0] // stride) + col) * 2
        cx, cy = col * stride, row * stride
        scores, distances, offsets = outputs[stride]
        scores[anchor] = score
        distances[anchor] = np.array([cx - box[0], cy - box[1], box[2] - cx, box[3] - cy]) / stride
        offsets[anchor] = ((points - np.array([cx, cy])) / stride).reshape(-1)
    names = [f"{kind}_{stride}" for kind in ("score", "bbox", "kps") for stride in STRIDES]
    values = [outputs[stride][k][None] if batched else outputs[stride][k] for k in range(3) for stride in STRIDES]
    nodes = [helper.make_node("Constant", [], [name], value=numpy_helper.from_array(value, f"{name}_value"))
             for name, value in zip(names, values)]
    graph = helper.make_graph(
        nodes, "scrfd", [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, *canvas[::-1]])],
        [helper.make_tensor_value_info(name, TensorProto.FLOAT, list(value.shape)) for name, value in zip(names, values)])
    return helper.make_model(graph, opset_imports=OPSET)


def glintr(width: int, seed: int = 0) -> onnx.ModelProto:
    """112x112 BGR->RGB blob -> `width`-d embedding: Conv(3->8, 8x8, stride 8) -> flatten -> MatMul."""
    rng = np.random.default_rng(seed)
    kernel = numpy_helper.from_array(rng.normal(0, 0.1, (8, 3, 8, 8)).astype(np.float32), "conv_w")
    matrix = numpy_helper.from_array(rng.normal(0, 0.05, (8 * 14 * 14, width)).astype(np.float32), "fc_w")
    nodes = [helper.make_node("Conv", ["input.1", "conv_w"], ["features"], strides=[8, 8], name="Conv_0"),
             helper.make_node("Flatten", ["features"], ["flat"], name="Flatten_1"),
             helper.make_node("MatMul", ["flat", "fc_w"], ["683"], name="Gemm_2")]
    graph = helper.make_graph(nodes, "glintr100",
                              [helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, 112, 112])],
                              [helper.make_tensor_value_info("683", TensorProto.FLOAT, [1, width])],
                              initializer=[kernel, matrix])
    return helper.make_model(graph, opset_imports=OPSET)


def identity_model(size: int) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("Identity", ["data"], ["out"])], "unused",
                              [helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, size, size])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 3, size, size])])
    return helper.make_model(graph, opset_imports=OPSET)


def retinaface_state(finds_faces: bool, seed: int = 0) -> dict:
    """Random weights; heads zeroed with biases so that (if `finds_faces`) every cell of the stride-32 level
    reports a 256-px face (score ~1) with the template's landmarks, and nothing else scores."""
    torch.manual_seed(seed)
    model = RetinaFace()
    for heads in (model.ClassHead, model.BboxHead, model.LandmarkHead):
        for head in heads:
            torch.nn.init.zeros_(head.conv1x1.weight)
            torch.nn.init.zeros_(head.conv1x1.bias)
    for level, head in enumerate(model.ClassHead):
        head.conv1x1.bias.data = torch.tensor([10.0, -10.0] * 2)  # background everywhere...
        if finds_faces and level == 2:
            head.conv1x1.bias.data[:2] = torch.tensor([-10.0, 10.0])  # ...but anchor 0 of the coarsest level
    size = 256.0  # MIN_SIZES[2][0]: anchor 0's prior box
    _, points = template_face(-size / 2, -size / 2, size)
    model.LandmarkHead[2].conv1x1.bias.data[:10] = torch.from_numpy(points.reshape(-1) / (0.1 * size))
    return model.state_dict()


def write_face_encoder(folder: Path, faces_in_canvas: list, embedding_width: int, retinaface_finds: bool = True,
                       batched: bool = False) -> Path:
    antelope = folder / ANTELOPE
    antelope.mkdir(parents=True, exist_ok=True)
    onnx.save(scrfd(faces_in_canvas, batched=batched), str(antelope / DETECTOR))
    onnx.save(glintr(embedding_width), str(antelope / RECOGNIZER))
    for name, size in (("1k3d68.onnx", 192), ("2d106det.onnx", 192), ("genderage.onnx", 96)):
        onnx.save(identity_model(size), str(antelope / name))
    torch.save(retinaface_state(retinaface_finds), folder / RETINAFACE)
    torch.manual_seed(1)
    torch.save(BiSeNet().state_dict(), folder / BISENET)
    return folder
