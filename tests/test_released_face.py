"""The released face stage end to end on synthetic weights in the released file names and formats (see
released_face.py): detection, the largest-face rule, the RetinaFace fallback, every bad file, and the same
identity inputs through the CLI, a Ray job and the Python API.

Expected values are computed from the recipe's facts: the ArcFace crop with scikit-image's similarity (what
insightface's `norm_crop` calls), the blob normalisation written out, the 512 alignment of the 5 points.
"""

import json
import shutil

import cv2
import numpy as np
import onnxruntime
import pytest
import torch
from released_face import det_scale, template_face, write_face_encoder
from safetensors.torch import load_file

from echovideo.errors import CheckpointError, NoFaceFoundError
from echovideo.face import load_face_stage
from echovideo.face.antelope import ARCFACE_DST
from echovideo.face.geometry import align_face
from echovideo.face.released_stage import (
    ANTELOPE,
    BISENET,
    DETECTOR,
    RECOGNIZER,
    RETINAFACE,
    onnx_providers,
)
from echovideo.images import load_identity_image

WIDTH = 64  # the tiny transformer's face_features_embed_dim
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def photo(face_path):
    return load_identity_image(face_path)


def in_canvas(photo, *faces):
    scale = det_scale(*photo.shape[:2])
    return [(box * scale, points * scale) for box, points in faces]


def glintr_of(folder, bgr_112: np.ndarray) -> np.ndarray:
    """The recogniser on a 112x112 BGR crop, normalised as insightface does ((x - 127.5) / 127.5, RGB)."""
    blob = ((bgr_112[:, :, ::-1].astype(np.float32) - 127.5) / 127.5).transpose(2, 0, 1)[None]
    session = onnxruntime.InferenceSession(str(folder / ANTELOPE / RECOGNIZER), providers=["CPUExecutionProvider"])
    return session.run(None, {"input.1": np.ascontiguousarray(blob)})[0][0]


def arcface_crop(photo, points) -> np.ndarray:
    transform = pytest.importorskip("skimage.transform")
    similarity = transform.SimilarityTransform()
    with pytest.warns(FutureWarning):  # scikit-image 0.26 deprecates `estimate`; insightface 0.7 still calls it
        similarity.estimate(points, ARCFACE_DST)
    return cv2.warpAffine(np.ascontiguousarray(photo[:, :, ::-1]), similarity.params[:2], (112, 112), borderValue=0.0)


@pytest.mark.parametrize("batched", [False, True], ids=["unbatched-scrfd", "batched-scrfd"])
def test_one_face_is_found_where_it_is_and_embedded_from_its_arcface_crop(photo, tmp_path, batched):
    """Both SCRFD export kinds (outputs with and without a batch dimension, insightface's `batched`) find the
    same face."""
    box, points = template_face(150, 100, 200)
    folder = write_face_encoder(tmp_path, in_canvas(photo, (box, points)), WIDTH, batched=batched)
    session = onnxruntime.InferenceSession(str(folder / ANTELOPE / DETECTOR), providers=["CPUExecutionProvider"])
    assert len(session.get_outputs()[0].shape) == (3 if batched else 2)
    stage = load_face_stage(folder, CPU, WIDTH)
    (face,) = stage.detect(photo)
    np.testing.assert_allclose(face.bbox, box, atol=1e-3)
    np.testing.assert_allclose(face.keypoints, points, atol=1e-3)
    np.testing.assert_allclose(face.embedding, glintr_of(folder, arcface_crop(photo, face.keypoints)), rtol=1e-5,
                               atol=1e-5)
    identity = stage.analyze(photo)
    assert np.array_equal(identity.embedding, face.embedding)
    unmasked = align_face(photo, face.keypoints)
    kept = identity.aligned_face.any(axis=-1)
    assert np.array_equal(identity.aligned_face[kept], unmasked[kept])  # parsing only blacks pixels out


def test_of_two_faces_the_largest_wins(photo, tmp_path):
    small, large = template_face(20, 20, 120), template_face(250, 200, 220)
    folder = write_face_encoder(tmp_path, in_canvas(photo, small, large), WIDTH)
    stage = load_face_stage(folder, CPU, WIDTH)
    identity = stage.analyze(photo)
    expected = glintr_of(folder, arcface_crop(photo, large[1]))
    np.testing.assert_allclose(identity.embedding, expected, rtol=1e-5, atol=1e-5)


def test_the_retinaface_fallback_takes_the_face_nearest_the_centre(photo, tmp_path):
    folder = write_face_encoder(tmp_path, [], WIDTH, retinaface_finds=True)
    stage = load_face_stage(folder, CPU, WIDTH)
    (face,) = stage.detect(photo)
    assert face.embedding is None and face.bbox[2] - face.bbox[0] == pytest.approx(256)  # a stride-32 prior
    identity = stage.analyze(photo)
    aligned = align_face(photo, face.keypoints)
    resized = cv2.resize(np.ascontiguousarray(aligned[:, :, ::-1]), (112, 112))  # get_feat's blob resize
    np.testing.assert_allclose(identity.embedding, glintr_of(folder, resized), rtol=1e-5, atol=1e-5)


def test_no_face_is_a_clear_error(photo, tmp_path):
    stage = load_face_stage(write_face_encoder(tmp_path, [], WIDTH, retinaface_finds=False), CPU, WIDTH)
    with pytest.raises(NoFaceFoundError, match="no face found"):
        stage.analyze(photo)


@pytest.mark.parametrize("damage, message", [
    (lambda f: (f / RETINAFACE).write_bytes((f / RETINAFACE).read_bytes()[:5000]), "truncated or corrupt"),
    (lambda f: (f / BISENET).unlink(), "missing face model files: ['parsing_bisenet.pth']"),
    (lambda f: (f / ANTELOPE / RECOGNIZER).unlink(), "models/antelopev2/glintr100.onnx"),
    (lambda f: torch.save({"conv.weight": torch.zeros(1)}, f / BISENET), "does not fit BiSeNet: missing"),
    (lambda f: (f / ANTELOPE / RECOGNIZER).write_bytes(b"not onnx"), "not a loadable ONNX model"),
])
def test_each_bad_file_is_named_with_its_problem(photo, tmp_path, damage, message):
    folder = write_face_encoder(tmp_path, [], WIDTH)
    damage(folder)
    with pytest.raises(CheckpointError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_face_stage(folder, CPU, WIDTH)


def test_an_embedding_width_the_transformer_cannot_take_fails_at_load(tmp_path):
    folder = write_face_encoder(tmp_path, [], 96)
    with pytest.raises(CheckpointError, match="gives 96-d embeddings; the transformer takes 64"):
        load_face_stage(folder, CPU, WIDTH)


def test_model_files_come_from_the_checkpoint_not_the_working_directory(photo, tmp_path, monkeypatch):
    box, points = template_face(150, 100, 200)
    folder = write_face_encoder(tmp_path / "ckpt", in_canvas(photo, (box, points)), WIDTH)
    write_face_encoder(tmp_path / "cwd", [], WIDTH, retinaface_finds=False)  # a decoy that finds nothing
    monkeypatch.chdir(tmp_path / "cwd")
    (face,) = load_face_stage(folder, CPU, WIDTH).detect(photo)
    np.testing.assert_allclose(face.bbox, box, atol=1e-3)


def test_onnx_runs_on_the_requested_device():
    assert onnx_providers(CPU) == ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
        assert onnx_providers(torch.device("cuda:1"))[0] == ("CUDAExecutionProvider", {"device_id": 1})


def test_facexlib_networks_give_facexlib_outputs_on_the_same_weights(tmp_path):
    """Where facexlib imports (it needs torchvision): our RetinaFace and BiSeNet against its own."""
    detection = pytest.importorskip("facexlib.detection")
    parsing = pytest.importorskip("facexlib.parsing")
    folder = write_face_encoder(tmp_path, [], WIDTH)
    from echovideo.face.bisenet import BiSeNet
    from echovideo.face.released_stage import load_weights
    from echovideo.face.retinaface import RetinaFace

    theirs = detection.init_detection_model("retinaface_resnet50", device="cpu", model_rootpath=str(folder))
    ours = load_weights(RetinaFace(), folder / RETINAFACE)
    image = np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8)
    np.testing.assert_allclose(ours.detect_faces(image, 0.5), theirs.detect_faces(image, 0.5), rtol=1e-5, atol=1e-4)
    their_parser = parsing.init_parsing_model("bisenet", device="cpu", model_rootpath=str(folder))
    pixels = torch.rand(1, 3, 128, 128)
    torch.testing.assert_close(load_weights(BiSeNet(), folder / BISENET)(pixels), their_parser(pixels)[0])


@pytest.fixture(scope="module")
def released_checkpoint(tiny_root, tmp_path_factory, face_path):
    """The tiny checkpoint with the released face stage (synthetic weights) in place of the stand-in."""
    root = tmp_path_factory.mktemp("released") / "ckpt"
    root.mkdir()
    for part in tiny_root.iterdir():
        if part.name != "face_encoder":
            (root / part.name).symlink_to(part)
    photo = load_identity_image(face_path)
    write_face_encoder(root / "face_encoder", in_canvas(photo, template_face(150, 100, 200)), WIDTH)
    return root


def test_cli_ray_job_and_python_api_give_the_same_identity_and_clip(released_checkpoint, face_path, tmp_path,
                                                                    local_ray):
    import av
    from jobs import job, manifest, read_frames, write_jsonl

    from echovideo.cli import main
    from echovideo.pipeline import EchoVideoPipeline
    from echovideo.sampling import GenerationOptions
    from ray_jobs.runtime.engine import run_job

    settings = {"height": 32, "width": 32, "frames": 5, "steps": 2, "seed": 42}
    flags = [a for k, v in settings.items() for a in (f"--{k}", str(v))]
    assert main(["generate", "--ckpt", str(released_checkpoint), "--image", str(face_path), "--prompt", "a smile",
                 "--out", str(tmp_path / "cli.mp4"), "--save-latents", str(tmp_path / "cli.safetensors"),
                 "--dtype", "fp32", "--device", "cpu", *flags]) == 0
    pipe = EchoVideoPipeline.from_pretrained(released_checkpoint, device="cpu", dtype="fp32")
    api = pipe("a smile", str(face_path), GenerationOptions(**settings))
    assert torch.equal(api.latents, load_file(tmp_path / "cli.safetensors")["latents"])

    rows = write_jsonl(tmp_path / "rows.jsonl", [{"prompt": "a smile", "identity": str(face_path), "seed": 42}])
    spec = job(rows, tmp_path / "out", **{"model.preset": None, "model.checkpoint": str(released_checkpoint),
                                          "parallel.ulysses": 1, "parallel.replicas": 1})
    assert run_job(spec, progress=False).rendered == 1
    (row,) = manifest(tmp_path / "out")

    def frames(path):
        with av.open(str(path)) as container:
            return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])

    assert read_frames(tmp_path / "out" / row["path"]) == 5
    assert np.array_equal(frames(tmp_path / "out" / row["path"]), frames(tmp_path / "cli.mp4"))
    # The same scores three ways: the CLI's json beside its clip, the API's result, the job's manifest.
    cli_scores = json.loads((tmp_path / "cli.json").read_text())["scores"]
    assert cli_scores == api.scores.as_dict() == json.loads(row["scores"])
    assert cli_scores["face_share"] == 1.0 and len(set(cli_scores["similarities"])) > 1  # a face in every frame
    shutil.rmtree(tmp_path / "out")
