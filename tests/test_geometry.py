"""Face geometry with known inputs: template, similarity alignment, aspect padding, parsing mask."""

import cv2
import numpy as np
import pytest

from echovideo.face.geometry import (
    ARCFACE_TEMPLATE_96x112,
    align_face,
    apply_parsing_mask,
    face_latent_image,
    limit_long_side,
    pad_to_aspect,
    scaled_template,
    similarity_transform,
)


def test_template_is_scaled_per_axis():
    t = scaled_template(512)
    assert np.allclose(t[0], [30.2946 * 512 / 96, 51.6963 * 512 / 112])
    assert np.allclose(t[4], [62.7299 * 512 / 96, 92.2041 * 512 / 112])


def _known_similarity(angle_deg=25.0, scale=0.6, shift=(140.0, 75.0)) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    return np.array([[scale * np.cos(a), -scale * np.sin(a), shift[0]],
                     [scale * np.sin(a), scale * np.cos(a), shift[1]]])


def test_similarity_transform_inverts_a_known_pose():
    pose = _known_similarity()
    keypoints = scaled_template() @ pose[:, :2].T + pose[:, 2]  # the template, rotated/scaled/moved
    matrix = similarity_transform(keypoints)
    mapped = keypoints @ matrix[:, :2].T + matrix[:, 2]
    assert np.abs(mapped - scaled_template()).max() < 1e-3
    # a similarity: equal scale on both axes, no shear
    (a, b), (c, d) = matrix[:, :2]
    assert np.isclose(a, d, atol=1e-6) and np.isclose(b, -c, atol=1e-6)


def test_align_face_moves_marked_points_onto_the_template():
    pose = _known_similarity(angle_deg=-15, scale=0.8, shift=(60, 90))
    keypoints = scaled_template() @ pose[:, :2].T + pose[:, 2]
    image = np.zeros((700, 700, 3), np.uint8)
    for x, y in keypoints:
        cv2.circle(image, (int(round(x)), int(round(y))), 6, (255, 255, 255), -1)
    aligned = align_face(image, keypoints)
    assert aligned.shape == (512, 512, 3)
    for x, y in scaled_template():
        assert aligned[int(round(y)), int(round(x))].min() > 200  # the dot landed on the template point
    assert aligned[5, 5].max() == 0  # border is black


@pytest.mark.parametrize("height, width, shape, offset", [
    (480, 848, (512, 904), (0, 196)),   # wide: keep height, pad left/right (int(512 * 848/480) = 904)
    (848, 480, (904, 512), (196, 0)),   # tall: keep width, pad top/bottom
    (480, 480, (512, 512), (0, 0)),
])
def test_pad_to_aspect(height, width, shape, offset):
    face = np.full((512, 512, 3), 200, np.uint8)
    padded = pad_to_aspect(face, height, width)
    assert padded.shape[:2] == shape
    top, left = offset
    assert (padded[top:top + 512, left:left + 512] == 200).all()
    assert padded.sum() == face.sum()  # everything else is black


def test_parsing_mask_blacks_out_listed_labels_only():
    face = np.full((4, 5, 3), 77, np.uint8)
    labels = np.array([[0, 1, 16, 18, 2], [7, 8, 9, 14, 15], [1, 2, 3, 4, 5], [10, 11, 12, 13, 17]])
    masked = apply_parsing_mask(face, labels)
    blacked = np.isin(labels, [0, 16, 18, 7, 8, 9, 14, 15])
    assert (masked[blacked] == 0).all() and (masked[~blacked] == 77).all()


def test_long_side_limit_and_face_latent_range():
    assert limit_long_side(np.zeros((1000, 2048, 3), np.uint8)).shape == (500, 1024, 3)
    assert limit_long_side(np.zeros((480, 640, 3), np.uint8)).shape == (480, 640, 3)
    pixels = face_latent_image(np.full((512, 512, 3), 255, np.uint8), 48, 80)
    assert pixels.shape == (48, 80, 3) and pixels.max() == pytest.approx(1.0) and pixels.min() == -1.0
    assert ARCFACE_TEMPLATE_96x112.shape == (5, 2)
