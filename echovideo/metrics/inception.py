"""Inception Distance as ConsisID computes it: per frame, the Frechet distance between ONE InceptionV3 pool
feature of the identity photo's aligned face and ONE of the frame's; with one sample each the covariances
vanish and it is the squared Euclidean distance of the two 2048-d features. Averaged over the frames that
have a face (the values the papers report, ~150-270, are on this scale).

The Inception weights are in no pip package and nothing is downloaded at run time: the user points at an
ONNX InceptionV3 (input 1x3x299x299 RGB in [0, 1], output the 2048-d pool feature; e.g. pytorch-fid's FID
Inception exported with `torch.onnx.export`), run on onnxruntime (the `face` extra).
"""

from pathlib import Path

import cv2
import numpy as np

from echovideo.errors import EchoVideoInputError
from echovideo.face.stage import FaceStage
from echovideo.metrics.quality import frame_stride
from echovideo.metrics.user_onnx import user_onnx_session

INCEPTION_SIDE, FEATURE_WIDTH = 299, 2048


class InceptionFeatures:
    def __init__(self, path: str | Path, transform_input: bool = False) -> None:
        """`transform_input`: the graph must hold torchvision's input transform (ConsisID's Inception does)."""
        self.session = user_onnx_session(path, "--inception", "export InceptionV3 to ONNX (1x3x299x299 in, 2048 out)")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if [d if isinstance(d, int) else -1 for d in inputs[0].shape][1:] != [3, INCEPTION_SIDE, INCEPTION_SIDE] \
                or outputs[0].shape[-1] != FEATURE_WIDTH:
            raise EchoVideoInputError("--inception", f"{path} takes {inputs[0].shape} and gives {outputs[0].shape}",
                                      "use an InceptionV3 with a 1x3x299x299 input and the 2048-d pool output")
        self.input = inputs[0].name
        if transform_input:
            from echovideo.metrics.inception_export import has_input_transform

            if not has_input_transform(path):
                raise EchoVideoInputError("--inception", f"{path} has no input transform (torchvision's "
                                          "transform_input, on in ConsisID's inception_v3 DEFAULT weights): its "
                                          "features are not ConsisID's", "export it with `python -m "
                                          "echovideo.metrics.inception_export inception.onnx` where torchvision is installed")

    def __call__(self, face: np.ndarray) -> np.ndarray:
        """The 2048-d feature of one aligned face (uint8 RGB)."""
        pixels = cv2.resize(face, (INCEPTION_SIDE, INCEPTION_SIDE), interpolation=cv2.INTER_LINEAR)
        return self.of_pixels((pixels.astype(np.float32) / 255.0).transpose(2, 0, 1))

    def of_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """The 2048-d feature of a prepared (3, 299, 299) float image in [0, 1]."""
        blob = np.ascontiguousarray(pixels, dtype=np.float32)[None]
        return np.asarray(self.session.run(None, {self.input: blob})[0], dtype=np.float64).reshape(-1)


def inception_distance(frames: np.ndarray, fps: int, photo: np.ndarray, face_stage: FaceStage,
                       features: InceptionFeatures) -> float | None:
    """Mean squared feature distance between the photo's face and each sampled frame's; None without faces."""
    reference = face_stage.largest_face(photo)
    if reference is None:
        return None
    anchor = features(reference[0])
    distances = []
    for frame in frames[::frame_stride(fps)]:
        found = face_stage.largest_face(np.ascontiguousarray(frame))
        if found is not None:
            distances.append(float(np.sum((features(found[0]) - anchor) ** 2)))
    return float(np.mean(distances)) if distances else None
