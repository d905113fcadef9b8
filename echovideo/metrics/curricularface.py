"""FaceSim-Cur as ConsisID's `eval/get_facesim_fid.py` computes it: the CurricularFace IR-101 embedding of the
224x224 `norm_crop`ped face (RGB), resized by OpenCV to 112x112, scaled `(x / 255 - 0.5) / 0.5`, L2-normalised;
per frame max(0, cosine) with the photo's. The weights are the user's, as ONNX (1x3x112x112 in, the embedding
out; e.g. the released `glint360k_curricular_face_r101_backbone.bin` loaded into CurricularFace's own IR_101 and
exported with `torch.onnx.export`): nothing is downloaded.
"""

from pathlib import Path

import cv2
import numpy as np

from echovideo.errors import EchoVideoInputError
from echovideo.metrics.user_onnx import user_onnx_session

SIDE = 112


class CurricularFace:
    def __init__(self, path: str | Path) -> None:
        self.session = user_onnx_session(path, "--curricularface", "export CurricularFace IR-101 to ONNX "
                                                                   "(1x3x112x112 in, the embedding out)")
        model_input = self.session.get_inputs()[0]
        if [d if isinstance(d, int) else -1 for d in model_input.shape][1:] != [3, SIDE, SIDE]:
            raise EchoVideoInputError("--curricularface", f"{path} takes {model_input.shape}",
                                      "use CurricularFace IR-101 with a 1x3x112x112 input")
        self.input = model_input.name

    def __call__(self, aligned_rgb: np.ndarray) -> np.ndarray:
        """The unit embedding of a 224x224 aligned face (uint8 RGB), as the script's `inference`."""
        pixels = cv2.resize(aligned_rgb, (SIDE, SIDE)).transpose(2, 0, 1).astype(np.float32)
        blob = ((pixels / 255.0 - 0.5) / 0.5)[None]
        embedding = np.asarray(self.session.run(None, {self.input: blob})[0][0], dtype=np.float64)
        return embedding / np.linalg.norm(embedding)
