"""VBench's Dynamic Degree with its own flow model, RAFT, from the user's weights as ONNX (nothing is
downloaded; `eval --raft MODEL.onnx`). Without them motion uses OpenCV's Farneback (echovideo/metrics/quality.py).

The model is princeton-vl's RAFT as VBench runs it (`raft-things.pth`, 20 iterations, test mode) exported by
the user with `torch.onnx.export`: inputs two (1, 3, H, W) float RGB frames in [0, 255] (RAFT normalises
inside), outputs (flow_low, flow_up), of which the last, (1, 2, H, W), is used. As VBench does, each pair
is padded to a multiple of 8 by edge replication split evenly around the frame (RAFT's `InputPadder`,
"sintel" mode) and scored on the padded flow (`get_score` sees the padded size).
"""

from pathlib import Path

import numpy as np

from echovideo.errors import EchoVideoInputError
from echovideo.metrics.quality import top_flow
from echovideo.metrics.user_onnx import user_onnx_session

MULTIPLE = 8


def padding(height: int, width: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """((top, bottom), (left, right)) of RAFT's InputPadder in "sintel" mode."""
    pad_h, pad_w = (-height) % MULTIPLE, (-width) % MULTIPLE
    return (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)


def as_input(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 RGB -> (1, 3, H', W') float32 in [0, 255], padded by edge replication."""
    rows, columns = padding(*frame.shape[:2])
    padded = np.pad(frame, (rows, columns, (0, 0)), mode="edge")
    return np.ascontiguousarray(padded.transpose(2, 0, 1)[None], dtype=np.float32)


class RaftFlow:
    def __init__(self, path: str | Path) -> None:
        self.session = user_onnx_session(path, "--raft",
                                         "export VBench's RAFT (raft-things.pth) with torch.onnx.export")
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 2 or any(len(i.shape) != 4 or i.shape[1] != 3 for i in inputs) \
                or len(outputs[-1].shape) != 4 or outputs[-1].shape[1] != 2:
            raise EchoVideoInputError("--raft", f"{path} takes {[i.shape for i in inputs]} and gives "
                                                f"{outputs[-1].shape}",
                                      "use RAFT exported with two (1, 3, H, W) frames in and the (1, 2, H, W) "
                                      "flow as its last output")
        self.names = [i.name for i in inputs]

    def pair_score(self, first: np.ndarray, second: np.ndarray) -> float:
        """VBench's score of one pair: the top-5% flow magnitude of the padded pair, in px."""
        flow = self.session.run(None, {self.names[0]: as_input(first), self.names[1]: as_input(second)})[-1][0]
        return top_flow(flow[0], flow[1])
