"""`eval --protocol consisid` against ConsisID's published `eval/get_facesim_fid.py`, re-done here step by step
from that script (OpenCV's VideoCapture seeking 16 frames, insightface's pad-and-retry, scikit-image's
SimilarityTransform for `norm_crop`, PIL's resize to 299, the Frechet distance with torch's formula in numpy)
on synthetic frames, with the tiny preset's stand-in detector and embedder playing insightface's models."""

import json
import shutil

import cv2
import numpy as np
import onnx
import onnxruntime
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image
from released_face import glintr
from skimage.transform import SimilarityTransform

from echovideo.cli import main
from echovideo.face.geometry import align_face
from echovideo.images import load_identity_image
from echovideo.video_io import write_mp4

PHOTO = "echovideo/assets/astronaut.jpg"
ARCFACE_DST = np.array([[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
                        [70.7299, 92.2041]], dtype=np.float32)


def spatial_inception(path, transform_input: bool = True) -> None:
    """Inception's interface (1x3x299x299 -> 2048) that sees layout: torchvision's input transform (per channel
    x * std / 0.5 + (mean - 0.5) / 0.5, as `transform_input` does), 13x13 average pools, flattened, through a
    fixed matrix, so a crop or resize done differently moves the features."""
    from echovideo.metrics.inception_export import TRANSFORM_SCALE, TRANSFORM_SHIFT

    weights = np.random.default_rng(1).normal(size=(3 * 23 * 23, 2048)).astype(np.float32)
    nodes, tensors = [], [numpy_helper.from_array(weights, "w")]
    if transform_input:
        nodes.append(helper.make_node("Split", ["x"], ["c0", "c1", "c2"], axis=1, num_outputs=3))
        for channel, (scale, shift) in enumerate(zip(TRANSFORM_SCALE, TRANSFORM_SHIFT)):
            nodes += [helper.make_node("Constant", [], [f"s{channel}"], value=numpy_helper.from_array(
                          np.array(scale, np.float32), f"s{channel}v")),
                      helper.make_node("Constant", [], [f"b{channel}"], value=numpy_helper.from_array(
                          np.array(shift, np.float32), f"b{channel}v")),
                      helper.make_node("Mul", [f"c{channel}", f"s{channel}"], [f"m{channel}"]),
                      helper.make_node("Add", [f"m{channel}", f"b{channel}"], [f"t{channel}"])]
        nodes.append(helper.make_node("Concat", ["t0", "t1", "t2"], ["transformed"], axis=1))
    nodes += [helper.make_node("AveragePool", ["transformed" if transform_input else "x"], ["pooled"],
                               kernel_shape=[13, 13], strides=[13, 13]),
              helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("MatMul", ["flat", "w"], ["features"])]
    graph = helper.make_graph(nodes, "inception", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 299, 299])],
                              [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 2048])], tensors)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))


def synthetic_clip(photo: np.ndarray, count: int = 37) -> np.ndarray:
    """The face drifting and growing over a grey stage, with face-less frames (blank, and the face pushed off
    the edge) that the protocol must skip."""
    frames = []
    for i in range(count):
        canvas = np.full((256, 256, 3), 90, np.uint8)
        if i % 5 != 3:
            side = 150 + (i % 7) * 8
            face = cv2.resize(photo, (side, side), interpolation=cv2.INTER_AREA)
            x, y = (i * 3) % 60, (i * 5) % 50
            if i % 9 == 8:
                x = 256 - side // 4  # mostly off the right edge
            visible = face[:256 - y, :256 - x]
            canvas[y:y + visible.shape[0], x:x + visible.shape[1]] = visible
        frames.append(canvas)
    return np.stack(frames)


class PublishedFaceAnalysis:
    """insightface FaceAnalysis's `get` as the script uses it (bbox, kps, embedding per face), the detector and
    embedder being the stand-in's: the models are not the protocol."""

    def __init__(self, stage):
        self.stage = stage

    def get(self, image_bgr):
        rgb = cv2.cvtColor(image_bgr, cv2.COLOR_BGR2RGB)
        return [{"bbox": f.bbox, "kps": f.keypoints.copy(),
                 "embedding": np.asarray(self.stage.embed(align_face(rgb, f.keypoints)))} for f in self.stage.detect(rgb)]


def published_norm_crop(img, landmark, image_size=224):
    transform = SimilarityTransform()
    transform.estimate(landmark, ARCFACE_DST * (image_size / 112.0))
    return cv2.warpAffine(img, transform.params[0:2, :], (image_size, image_size), borderValue=0.0)


def published_process_image(face_model, np_faceid_image):
    image_bgr = cv2.cvtColor(np_faceid_image, cv2.COLOR_RGB2BGR)

    def keypoints(image):
        info = face_model.get(image)
        return sorted(info, key=lambda x: (x["bbox"][2] - x["bbox"][0]) * (x["bbox"][3] - x["bbox"][1]))[-1] if info else None

    face_info = keypoints(image_bgr)
    if face_info is None:
        h, w = image_bgr.shape[:2]
        top, left = int(h * 0.25), int(w * 0.25)
        padded = cv2.copyMakeBorder(image_bgr, top, top, left, left, cv2.BORDER_CONSTANT, value=(128, 128, 128))
        face_info = keypoints(padded)
        if face_info is None:
            return None, None
        face_kps = face_info["kps"] - np.array((left, top))
    else:
        face_kps = face_info["kps"]
    norm_face = published_norm_crop(image_bgr, face_kps, 224)
    return cv2.cvtColor(norm_face, cv2.COLOR_BGR2RGB), face_info["embedding"]


def published_activations(session, align_face_rgb):
    img = Image.fromarray(align_face_rgb).resize((299, 299), Image.BILINEAR)  # transforms.Resize((299, 299))
    tensor = (np.asarray(img, dtype=np.float32) / 255.0).transpose(2, 0, 1)[None]  # transforms.ToTensor()
    activations = session.run(None, {"x": tensor})[0]
    return np.repeat(activations, 2, axis=0)  # one row is repeated, as `get_activations` does


def published_fid(real, fake):
    mu1, mu2 = real.mean(axis=0), fake.mean(axis=0)
    sigma1, sigma2 = np.cov(real.T), np.cov(fake.T)
    eigenvalues, eigenvectors = np.linalg.eigh(sigma1 @ sigma2)
    covmean = (eigenvectors * np.sqrt(np.clip(eigenvalues, 0, None))) @ eigenvectors.T
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1 + sigma2 - 2 * covmean))


def published_inference(curricular, img):
    """The script's `inference`: the CurricularFace embedding of an aligned face, normalised."""
    img = cv2.resize(img, (112, 112))
    img = np.transpose(img, (2, 0, 1))[None].astype(np.float32)
    img = (img / 255 - 0.5) / 0.5
    embedding = curricular.run(None, {curricular.get_inputs()[0].name: img})[0][0]
    return embedding / np.linalg.norm(embedding)


def published_scores(video_path, photo_rgb, face_model, session, curricular):
    align_face_image, arcface_image_embedding = published_process_image(face_model, photo_rgb)
    real = published_activations(session, align_face_image)
    cur_image_embedding = published_inference(curricular, align_face_image)
    cap = cv2.VideoCapture(str(video_path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for idx in np.linspace(0, total - 1, 16, dtype=int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, idx)
        ok, frame = cap.read()
        if ok:
            frames.append(frame)
    cap.release()
    arc, fid, cur = [], [], []
    for frame in frames:
        align_frame, embedding = published_process_image(face_model, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
        if align_frame is None:
            continue
        a, b = np.asarray(arcface_image_embedding, np.float64), np.asarray(embedding, np.float64)
        arc.append(max(0.0, float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))))
        fid.append(published_fid(real, published_activations(session, align_frame)))
        cur.append(max(0.0, float(cur_image_embedding @ published_inference(curricular, align_frame))))
    return (np.mean(arc) if arc else 0.0), (np.mean(fid) if fid else 0.0), (np.mean(cur) if cur else 0.0), len(arc)


def test_consisid_protocol_matches_its_published_evaluation_on_synthetic_frames(tmp_path, capsys, tiny_root,
                                                                              monkeypatch):
    import torch

    from echovideo.face import load_face_stage

    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tiny_root.parent))
    stage = load_face_stage(tiny_root / "face_encoder", torch.device("cpu"))
    photo = np.array(Image.open(PHOTO).convert("RGB"))
    clips = tmp_path / "clips"
    clips.mkdir()
    write_mp4(synthetic_clip(load_identity_image(PHOTO)), clips / "drift.mp4", fps=8)
    shutil.copy(PHOTO, clips / "drift.jpg")  # the photo's own bytes
    (clips / "drift.json").write_text(json.dumps({"identity": str(clips / "drift.jpg"), "options": {},
                                                  "scores": {"identity_average": 0.5}}))  # as `generate` leaves it
    spatial_inception(tmp_path / "inception.onnx")
    onnx.save(glintr(64, seed=5), str(tmp_path / "curricularface.onnx"))  # CurricularFace's interface: 112 -> embedding
    session = onnxruntime.InferenceSession(str(tmp_path / "inception.onnx"), providers=["CPUExecutionProvider"])
    curricular = onnxruntime.InferenceSession(str(tmp_path / "curricularface.onnx"), providers=["CPUExecutionProvider"])
    arc, fid, cur, with_face = published_scores(clips / "drift.mp4", photo, PublishedFaceAnalysis(stage), session,
                                                curricular)
    assert 4 <= with_face < 16 and 0.3 < arc < 1.0 and fid > 0 and 0.0 < cur < 1.0  # frames skipped, not degenerate

    assert main(["eval", str(clips), "--preset", "tiny", "--protocol", "consisid", "--curricularface",
                 str(tmp_path / "curricularface.onnx"), "--inception", str(tmp_path / "inception.onnx"),
                 "--no-plot"]) == 0
    printed = capsys.readouterr().out
    assert "FaceSim-Arc" in printed and "FaceSim-Cur" in printed and "protocol: ConsisID's" in printed
    (row,) = json.loads((clips / "eval-consisid.json").read_text())["table"]
    assert row["facesim_arc"] == pytest.approx(arc, rel=1e-5)
    assert row["facesim_cur"] == pytest.approx(cur, rel=1e-5)
    assert row["inception_distance"] == pytest.approx(fid, rel=1e-4)
    assert json.loads((clips / "eval-consisid.json").read_text())["protocol"] == "consisid"


def test_an_inception_without_torchvisions_input_transform_is_refused_for_consisids_protocol(tmp_path, capsys,
                                                                                              tiny_root, monkeypatch):
    """A bare `inception_v3()` with the weights loaded has transform_input off: other features than ConsisID's."""
    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tiny_root.parent))
    clips = tmp_path / "clips"
    clips.mkdir()
    write_mp4(np.zeros((5, 32, 32, 3), np.uint8), clips / "a.mp4", fps=8)
    (clips / "a.json").write_text(json.dumps({"scores": {"identity_average": 0.5}, "options": {}}))
    spatial_inception(tmp_path / "bare.onnx", transform_input=False)
    assert main(["eval", str(clips), "--preset", "tiny", "--protocol", "consisid", "--inception",
                 str(tmp_path / "bare.onnx"), "--no-plot"]) == 2
    err = capsys.readouterr().err
    assert "--inception" in err and "transform_input" in err and "echovideo.metrics.inception_export" in err


def test_consisid_protocol_needs_a_face_stage(tmp_path, capsys):
    clips = tmp_path / "clips"
    clips.mkdir()
    write_mp4(np.zeros((5, 32, 32, 3), np.uint8), clips / "a.mp4", fps=8)
    (clips / "a.json").write_text(json.dumps({"scores": {"identity_average": 0.5}, "options": {}}))
    assert main(["eval", str(clips), "--protocol", "consisid"]) == 2
    assert "--protocol: needs the face stage" in capsys.readouterr().err


def test_the_inception_export_needs_the_users_torchvision_and_says_so(tmp_path, capsys, monkeypatch):
    """It exports from torchvision (never installed here: it would replace the CPU torch) and checks its ONNX
    against it; without torchvision it is one line, exit 2, nothing written."""
    import sys

    from echovideo.metrics.inception_export import main as export_main

    monkeypatch.setitem(sys.modules, "torchvision", None)  # as where it is not installed
    assert export_main([str(tmp_path / "inception.onnx")]) == 2
    assert "torchvision is not installed here" in capsys.readouterr().err
    assert not (tmp_path / "inception.onnx").exists()
