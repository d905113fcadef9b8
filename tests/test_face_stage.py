"""Identity preprocessing: the stand-in stage on a real photo, largest face, clear errors."""

import numpy as np
import pytest
from PIL import Image

from echovideo.errors import CheckpointError, NoFaceFoundError
from echovideo.face import load_face_stage
from echovideo.images import load_identity_image


@pytest.fixture(scope="module")
def stage(tiny_root):
    return load_face_stage(tiny_root / "face_encoder", device=None)


def test_standin_aligns_parses_and_embeds_a_real_face(stage, face_path):
    identity = stage.analyze(load_identity_image(face_path))
    assert identity.aligned_face.shape == (512, 512, 3) and identity.aligned_face.dtype == np.uint8
    assert identity.aligned_face[0, 0].max() == 0  # background blacked out by the parsing mask
    assert identity.aligned_face[280, 256].max() > 0  # the face itself is kept
    assert identity.embedding.shape == (64,)
    again = stage.analyze(load_identity_image(face_path))
    assert np.array_equal(identity.embedding, again.embedding)


def test_largest_face_wins(stage, face_path):
    photo = Image.open(face_path).convert("RGB")
    canvas = Image.new("RGB", (1000, 600), (128, 128, 128))
    canvas.paste(photo.resize((240, 240)), (20, 20))
    canvas.paste(photo, (470, 40))
    faces = stage.detect(np.asarray(canvas))
    assert len(faces) >= 2
    from echovideo.face.stage import largest
    assert largest(faces).bbox[0] > 470


def test_no_face_is_a_clear_error(stage):
    with pytest.raises(NoFaceFoundError, match="no face found"):
        stage.analyze(np.full((300, 300, 3), 90, np.uint8))


def test_missing_released_face_models_are_named(tmp_path):
    (tmp_path / "face_encoder").mkdir()
    with pytest.raises(CheckpointError) as err:
        load_face_stage(tmp_path / "face_encoder", device=None)
    message = str(err.value)
    assert "echovideo[face]" in message or "glintr100.onnx" in message
