"""insightface's antelopev2 models (SCRFD-10G detector with keypoints, glintr100 ArcFace) run on onnxruntime,
with insightface 0.7's pre- and post-processing written here.

Why not the insightface package: it pulls `opencv-python` 5 next to our `opencv-python-headless` (two
OpenCV builds fighting over `cv2`; OpenCV 5 lacks the Haar cascades the tiny stand-in uses), builds from a
C extension source, uses a scikit-image API deprecated for removal, and resolves model names against the
working directory. What the released recipe needs from it is small and exact: SCRFD's letterbox, anchor
decode and NMS (`SCRFD.detect`), and ArcFace's `norm_crop` (skimage's Umeyama similarity) and blob
normalisation (`ArcFaceONNX.get_feat`). Each is reproduced below with insightface's arithmetic.
"""

from pathlib import Path

import cv2
import numpy as np

from echovideo.errors import CheckpointError

DET_SIZE = (640, 640)
DET_THRESHOLD = 0.5  # FaceAnalysis.prepare's det_thresh
NMS_THRESHOLD = 0.4
STRIDES = (8, 16, 32)
ANCHORS = 2
SCRFD_MEAN, SCRFD_STD = 127.5, 128.0
# insightface's `arcface_dst`: the 5-point template on the 112x112 ArcFace crop.
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)


def _session(path: Path, providers: list):
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(str(path), providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph types
        raise CheckpointError(str(path), f"not a loadable ONNX model ({type(exc).__name__}: {str(exc)[:200]})",
                              "use the released antelopev2 file") from None


def norm_crop(bgr: np.ndarray, keypoints: np.ndarray, size: int = 112) -> np.ndarray:
    """insightface's `face_align.norm_crop` (mode "arcface", a size divisible by 112): the 5 keypoints onto
    `ARCFACE_DST` x size/112 by Umeyama's similarity, bilinear warp, black border."""
    matrix = umeyama(np.asarray(keypoints), ARCFACE_DST * (size / 112.0))[:2]
    return cv2.warpAffine(bgr, matrix, (size, size), borderValue=0.0)


class ScrfdDetector:
    """`insightface.model_zoo.SCRFD` as FaceAnalysis uses it: a `det_size` letterbox (640x640 as EchoVideo
    prepares it), threshold 0.5, NMS 0.4.

    SCRFD graphs come exported two ways: outputs (anchors, k) or with a batch dimension (1, anchors, k).
    insightface tells them apart by the first output's rank (`SCRFD._init_vars`: `self.batched`) and reads
    the first batch item of the batched kind; so do we."""

    def __init__(self, path: Path, providers: list) -> None:
        self.session = _session(path, providers)
        outputs = self.session.get_outputs()
        if len(outputs) != 3 * len(STRIDES):
            raise CheckpointError(str(path), f"has {len(outputs)} outputs; SCRFD with keypoints has 9 (scores, boxes "
                                  "and keypoints at strides 8, 16, 32)", "use the released scrfd_10g_bnkps.onnx")
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in outputs]
        self.batched = len(outputs[0].shape) == 3

    def detect(self, bgr: np.ndarray, det_size: tuple[int, int] = DET_SIZE) -> tuple[np.ndarray, np.ndarray]:
        """-> (N, 5) boxes with scores and (N, 5, 2) keypoints in image pixels, best first after NMS."""
        ratio = bgr.shape[0] / bgr.shape[1]
        if ratio > det_size[1] / det_size[0]:
            new_height, new_width = det_size[1], int(det_size[1] / ratio)
        else:
            new_width, new_height = det_size[0], int(det_size[0] * ratio)
        det_scale = float(new_height) / bgr.shape[0]
        canvas = np.zeros((det_size[1], det_size[0], 3), dtype=np.uint8)
        canvas[:new_height, :new_width] = cv2.resize(bgr, (new_width, new_height))
        scores, boxes, points = self._forward(canvas)
        order = scores.ravel().argsort()[::-1]
        dets = np.hstack((boxes / det_scale, scores)).astype(np.float32, copy=False)[order]
        keep = _nms(dets)
        return dets[keep], (points / det_scale)[order][keep]

    def _forward(self, canvas: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        blob = cv2.dnn.blobFromImage(canvas, 1.0 / SCRFD_STD, canvas.shape[1::-1], (SCRFD_MEAN,) * 3, swapRB=True)
        outs = self.session.run(self.output_names, {self.input_name: blob})
        if self.batched:
            outs = [out[0] for out in outs]
        scores, boxes, points = [], [], []
        for index, stride in enumerate(STRIDES):
            height, width = blob.shape[2] // stride, blob.shape[3] // stride
            centers = (np.stack(np.mgrid[:height, :width][::-1], axis=-1).astype(np.float32) * stride).reshape(-1, 2)
            centers = np.stack([centers] * ANCHORS, axis=1).reshape(-1, 2)
            score = outs[index]
            positive = np.where(score >= DET_THRESHOLD)[0]
            distance = outs[index + 3] * stride
            box = np.stack([centers[:, 0] - distance[:, 0], centers[:, 1] - distance[:, 1],
                            centers[:, 0] + distance[:, 2], centers[:, 1] + distance[:, 3]], axis=-1)
            offsets = outs[index + 6] * stride
            kps = np.stack([centers[:, k % 2] + offsets[:, k] for k in range(10)], axis=-1).reshape(-1, 5, 2)
            scores.append(score[positive])
            boxes.append(box[positive])
            points.append(kps[positive])
        return np.vstack(scores), np.vstack(boxes), np.vstack(points)


def _nms(dets: np.ndarray) -> list[int]:
    """SCRFD.nms: areas with the +1 pixel convention, drop IoU above the threshold."""
    x1, y1, x2, y2, scores = (dets[:, k] for k in range(5))
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        best, rest = order[0], order[1:]
        keep.append(int(best))
        width = np.maximum(0.0, np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]) + 1)
        height = np.maximum(0.0, np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]) + 1)
        inter = width * height
        order = rest[np.where(inter / (areas[best] + areas[rest] - inter) <= NMS_THRESHOLD)[0]]
    return keep


class ArcFaceRecognizer:
    """`insightface.model_zoo.ArcFaceONNX`: the raw embedding of a face, from its keypoints or a given crop."""

    def __init__(self, path: Path, providers: list) -> None:
        self.session = _session(path, providers)
        model_input = self.session.get_inputs()[0]
        self.input_name, self.input_size = model_input.name, tuple(model_input.shape[2:4][::-1])
        self.output_name = self.session.get_outputs()[0].name
        self.width = self.session.get_outputs()[0].shape[-1]
        # insightface reads the normalisation from the graph: mxnet exports subtract and scale inside it.
        self.mean, self.std = (0.0, 1.0) if _normalises_inside(path) else (127.5, 127.5)

    def embed_keypoints(self, bgr: np.ndarray, keypoints: np.ndarray) -> np.ndarray:
        """`ArcFaceONNX.get`: `norm_crop` to 112x112 on the template, then the network."""
        return self.embed_crop(norm_crop(bgr, keypoints, self.input_size[0]))

    def embed_crop(self, bgr: np.ndarray) -> np.ndarray:
        """`ArcFaceONNX.get_feat`: any crop resized to the input by the blob, normalised, embedded."""
        blob = cv2.dnn.blobFromImage(bgr, 1.0 / self.std, self.input_size, (self.mean,) * 3, swapRB=True)
        return self.session.run([self.output_name], {self.input_name: blob})[0][0]


def _normalises_inside(path: Path) -> bool:
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node[:8]
    names = [node.name for node in nodes]
    return any(n.startswith(("Sub", "_minus")) for n in names) and any(n.startswith(("Mul", "_mul")) for n in names)


def umeyama(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """3x3 similarity taking `src` points onto `dst` (least squares with scale): scikit-image's `_umeyama`
    behind `SimilarityTransform.estimate`, which insightface's `norm_crop` calls, with its dtypes and its
    rank tolerance (float64 epsilon)."""
    num, dim = src.shape
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_demean, dst_demean = src - src_mean, dst - dst_mean
    a = dst_demean.T @ src_demean / num
    d = np.ones((dim,), dtype=np.float64)
    if np.linalg.det(a) < 0:
        d[dim - 1] = -1
    transform = np.eye(dim + 1, dtype=np.float64)
    u, s, v = np.linalg.svd(a)
    rank = np.count_nonzero(s > s.max() * max(a.shape) * np.finfo(float).eps)
    if rank == 0:
        return np.nan * transform
    if rank == dim - 1 and np.linalg.det(u) * np.linalg.det(v) <= 0:
        flipped = d.copy()
        flipped[dim - 1] = -1
        transform[:dim, :dim] = u @ np.diag(flipped) @ v
    elif rank == dim - 1:
        transform[:dim, :dim] = u @ v
    else:
        transform[:dim, :dim] = u @ np.diag(d) @ v
    scale = 1.0 / src_demean.var(axis=0).sum() * (s @ d)
    transform[:dim, dim] = dst_mean - scale * (transform[:dim, :dim] @ src_mean.T)
    transform[:dim, :dim] *= scale
    return transform
