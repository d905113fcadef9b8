"""Bad identity photos and bad sampling options: clear errors naming the field and the fix."""

import logging

import numpy as np
import pytest
from PIL import Image

from echovideo.errors import EchoVideoInputError
from echovideo.images import load_identity_image
from echovideo.sampling import GenerationOptions, dynamic_cfg_scales


def test_released_dynamic_cfg_scales():
    timesteps = list(range(999, 0, -20))  # 50 trailing steps
    scales = dynamic_cfg_scales(6.0, timesteps, 50)
    assert [round(s, 3) for s in scales[:5]] == [2.291, 2.544, 6.974, 6.420, 2.788]
    assert all(1.0 <= s <= 7.0 for s in scales)


@pytest.mark.parametrize("field, kwargs, message", [
    ("--height", dict(height=50), "multiple of 16"),
    ("--width", dict(width=0), "multiple of 16"),
    ("--frames", dict(frames=50), r"4k\+1"),
    ("--steps", dict(steps=0), "at least 1"),
    ("--steps", dict(steps=True), "at least 1"),  # YAML `true` is not 1 step
    ("--frames", dict(frames=True), r"4k\+1"),
    ("--guidance", dict(guidance=float("nan")), "finite"),
    ("--guidance", dict(guidance=-1.0), "finite"),
    ("--seed", dict(seed=-3), "seed"),
])
def test_bad_options_name_the_field(field, kwargs, message):
    with pytest.raises(EchoVideoInputError, match=message) as err:
        GenerationOptions(**kwargs).validate()
    assert err.value.field == field and err.value.fix


def test_frames_beyond_training_length_warn_once(caplog):
    """Once per process and length: the CLI, the pipeline and every job row validate the same options."""
    with caplog.at_level(logging.WARNING):
        GenerationOptions(frames=113).validate()
        GenerationOptions(frames=113).validate()
    assert caplog.text.count("113 frames: the released model was trained on 49") == 1


def _save(img: Image.Image, path, **kw):
    img.save(path, **kw)
    return path


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P"])
def test_any_image_mode_becomes_rgb(tmp_path, mode):
    path = _save(Image.new(mode, (64, 48)), tmp_path / ("x.png" if mode != "CMYK" else "x.jpg"))
    pixels = load_identity_image(path)
    assert pixels.shape == (48, 64, 3) and pixels.dtype == np.uint8


def test_alpha_is_dropped_as_released(tmp_path):
    path = _save(Image.new("RGBA", (8, 8), (10, 20, 30, 0)), tmp_path / "t.png")
    assert (load_identity_image(path) == (10, 20, 30)).all()  # `.convert("RGB")`: no compositing


def test_huge_photo_is_downscaled_to_1024(tmp_path):
    path = _save(Image.new("RGB", (4000, 3000), (10, 20, 30)), tmp_path / "big.jpg")
    assert load_identity_image(path).shape == (768, 1024, 3)


@pytest.mark.parametrize("make, message", [
    (lambda p: p, "does not exist"),
    (lambda p: (p.write_bytes(b""), p)[1], "empty"),
    (lambda p: (p.write_text("not an image at all"), p)[1], "not a readable image"),
    (lambda p: (p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40), p)[1], "not a readable image"),
])
def test_unusable_files_are_clear_errors(tmp_path, make, message):
    path = make(tmp_path / "face.png")
    with pytest.raises(EchoVideoInputError, match=message) as err:
        load_identity_image(path)
    assert err.value.field == "--image"
