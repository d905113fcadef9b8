"""Fidelity to the released EchoVideo code (bytedance/EchoVideo + the diffusers 0.31 it pins), at every
released resolution: RoPE tables, face padding, photo loading, the fallback face, precision details.

Every expected value comes from the released formulas (tests/released_reference.py, numpy), or from the
plain library call the released code makes (PIL, OpenCV), never from the diffusers function that drifted.
"""

import copy

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from echovideo.face.geometry import align_face, face_latent_image, pad_to_aspect
from echovideo.face.stage import DetectedFace, largest, nearest_to_centre
from echovideo.images import decode_identity_image, load_identity_image
from echovideo.loading import decode_in_fp16_under_bf16, load_vae
from echovideo.models.rope import crop_region, released_grid, rotary_table
from echovideo.pipeline import EchoVideoPipeline
from echovideo.sampling import GenerationOptions
from tests.released_reference import (
    BASE_SIZE,
    RELEASED_SIZES,
    released_crop,
    released_padded_shape,
    released_positions,
    rope_table,
)

ALL_SIZES = RELEASED_SIZES + [BASE_SIZE]
# The crops on the 45x30 base grid, worked by hand from the released formula: a fixed fact, not a computation.
KNOWN_CROPS = {(480, 640): ((0, 2), (30, 42)), (480, 848): ((2, 0), (27, 45)), (480, 480): ((0, 8), (30, 38)),
               (848, 480): ((0, 14), (30, 31)), (640, 480): ((0, 12), (30, 34)), (480, 720): ((0, 0), (30, 45))}
# numpy's and torch's float32 pow/cos differ by an ulp or two; angles reach 45 rad (ulp 3.8e-6). The drift this
# guards against moves the tables by ~0.05-0.5 rad.
TABLE_ATOL = 1e-5


# ------------------------------------------------------------------ 3D RoPE
@pytest.mark.parametrize("height, width", ALL_SIZES)
def test_rope_table_is_the_released_one(height, width):
    rows, cols = height // 16, width // 16
    assert crop_region(rows, cols, 30, 45) == released_crop(rows, cols) == KNOWN_CROPS[(height, width)]
    (top, left), (bottom, right) = KNOWN_CROPS[(height, width)]
    assert torch.equal(released_grid(top, bottom, rows), torch.from_numpy(released_positions(top, bottom, rows)))
    assert torch.equal(released_grid(left, right, cols), torch.from_numpy(released_positions(left, right, cols)))
    cos, sin = rotary_table(64, 13, rows, cols, 30, 45)  # the released head_dim and 49 frames
    ref_cos, ref_sin = rope_table(64, 13, rows, cols)
    assert cos.shape == (13 * rows * cols, 64)
    assert torch.allclose(cos, ref_cos, rtol=0, atol=TABLE_ATOL) and torch.allclose(sin, ref_sin, rtol=0, atol=TABLE_ATOL)


@pytest.mark.parametrize("height, width", ALL_SIZES)
def test_newer_diffusers_grid_differs_except_at_the_base_size(height, width):
    """Why the table is ours: diffusers >= 0.32's linspace(start, stop*(n-1)/n, n) moves every crop that does
    not start at 0 (up to 0.47 of a patch at 480x848)."""
    rows = height // 16
    (top, _), (bottom, _) = KNOWN_CROPS[(height, width)]
    cols = width // 16
    (_, left), (_, right) = KNOWN_CROPS[(height, width)]
    shift = max(
        np.abs(np.linspace(top, bottom * (rows - 1) / rows, rows) - released_positions(top, bottom, rows)).max(),
        np.abs(np.linspace(left, right * (cols - 1) / cols, cols) - released_positions(left, right, cols)).max())
    if (height, width) == BASE_SIZE:
        assert shift < 1e-5
    else:
        assert shift > 0.04
    if (height, width) == (848, 480):
        assert shift == pytest.approx(0.4667, abs=1e-3)


def test_the_model_uses_the_released_table(tiny_pipe):
    transformer = tiny_pipe.transformer  # head_dim 16, base grid 45x30 as released
    cos, sin = transformer.rotary_embedding(13, 60, 106)  # 480x848 latents
    ref_cos, ref_sin = rope_table(transformer.config.attention_head_dim, 13, 30, 53)
    assert torch.allclose(cos, ref_cos, rtol=0, atol=TABLE_ATOL) and torch.allclose(sin, ref_sin, rtol=0, atol=TABLE_ATOL)


# ------------------------------------------------------------------ shallow face latent
@pytest.mark.parametrize("height, width", ALL_SIZES)
def test_face_padding_truncates_as_released(height, width):
    face = np.random.default_rng(0).integers(1, 256, (512, 512, 3), dtype=np.uint8)
    padded = pad_to_aspect(face, height, width)
    new_h, new_w = released_padded_shape(height, width)
    assert padded.shape == (new_h, new_w, 3)
    top, left = (new_h - 512) // 2, (new_w - 512) // 2
    assert np.array_equal(padded[top:top + 512, left:left + 512], face)
    assert padded.astype(np.int64).sum() == face.astype(np.int64).sum()  # the rest is black


def test_known_padded_widths():
    assert released_padded_shape(480, 640) == (512, 682) and released_padded_shape(480, 848) == (512, 904)
    assert pad_to_aspect(np.zeros((512, 512, 3), np.uint8), 480, 848).shape[:2] == (512, 904)


@pytest.mark.parametrize("height, width", RELEASED_SIZES)
def test_face_latent_image_is_diffusers_preprocess_bit_for_bit(height, width):
    """VaeImageProcessor.preprocess on the padded PIL image: Lanczos resize, x/255 (numpy), 2x-1 (torch)."""
    face = np.random.default_rng(1).integers(0, 256, (512, 512, 3), dtype=np.uint8)
    resized = Image.fromarray(pad_to_aspect(face, height, width)).resize((width, height), Image.LANCZOS)
    expected = 2.0 * torch.from_numpy(np.array(resized).astype(np.float32) / 255.0) - 1.0
    assert torch.equal(torch.from_numpy(face_latent_image(face, height, width)), expected)


# ------------------------------------------------------------------ photo loading
def _pattern(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Detail at every scale (a smooth gradient plus noise), so any resampling difference shows."""
    y, x = np.mgrid[0:height, 0:width]
    noise = np.random.default_rng(seed).integers(0, 64, (height, width, 3))
    base = np.stack([x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 192], axis=-1)
    return ((base + noise) % 256).astype(np.uint8)


@pytest.mark.parametrize("orientation, quarter_turns", [(3, 2), (6, -1), (8, 1)])
def test_exif_rotated_phone_photo_is_seen_upright(tmp_path, orientation, quarter_turns):
    path = tmp_path / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation: 3 = upside down, 6 = rotate 90 CW to view, 8 = 90 CCW
    Image.fromarray(_pattern(60, 80)).save(path, quality=95, exif=exif.tobytes())
    with Image.open(path) as stored:
        raw = np.asarray(stored.convert("RGB"))
    assert np.array_equal(load_identity_image(path), np.rot90(raw, k=quarter_turns))


@pytest.mark.parametrize("suffix, height, width", [(".png", 2003, 3000), (".jpg", 3000, 2003), (".jpg", 1100, 1100)])
def test_large_photo_is_fully_decoded_and_lanczos4_downsized_to_truncated_sizes(tmp_path, suffix, height, width):
    path = tmp_path / f"big{suffix}"
    Image.fromarray(_pattern(height, width)).save(path, **({"quality": 90} if suffix == ".jpg" else {}))
    k = 1024 / max(height, width)
    size = (int(width * k), int(height * k))  # 2003 -> 683 (round() would give 684)
    with Image.open(path) as full:
        expected = cv2.resize(np.asarray(full.convert("RGB")), size, interpolation=cv2.INTER_LANCZOS4)
    loaded = load_identity_image(path)
    assert loaded.shape == (size[1], size[0], 3)
    assert np.array_equal(loaded, expected)
    assert np.array_equal(decode_identity_image(path.read_bytes(), "bytes"), expected)  # dataset bytes: same


def test_photo_at_the_limit_is_untouched(tmp_path):
    path = tmp_path / "ok.png"
    pixels = _pattern(1024, 700)
    Image.fromarray(pixels).save(path)
    assert np.array_equal(load_identity_image(path), pixels)


def test_rgba_drops_alpha_without_compositing(tmp_path):
    path = tmp_path / "rgba.png"
    rgb = _pattern(40, 50)
    alpha = np.linspace(0, 255, 40 * 50).astype(np.uint8).reshape(40, 50, 1)
    Image.fromarray(np.concatenate([rgb, alpha], axis=-1), "RGBA").save(path)
    assert np.array_equal(load_identity_image(path), rgb)


def test_decompression_bomb_guard_stays(tmp_path):
    path = tmp_path / "bomb.png"
    Image.new("1", (20001, 20000)).save(path)  # 1-bit: a small file that would decode to 1.2 GB of RGB
    from echovideo.errors import EchoVideoInputError

    with pytest.raises(EchoVideoInputError, match="too"):
        load_identity_image(path)


# ------------------------------------------------------------------ fallback face
def _face(x1, y1, x2, y2) -> DetectedFace:
    return DetectedFace(bbox=np.array([x1, y1, x2, y2], np.float32), keypoints=np.zeros((5, 2), np.float32))


def test_fallback_takes_the_face_nearest_the_centre_not_the_largest():
    big_corner, small_centre = _face(0, 0, 400, 400), _face(450, 280, 550, 380)
    assert nearest_to_centre([big_corner, small_centre], height=640, width=1000) is small_centre
    assert largest([big_corner, small_centre]) is big_corner
    twins = [_face(100, 100, 200, 200), _face(800, 100, 900, 200)]  # equally far: facexlib keeps the first
    assert nearest_to_centre(twins, height=300, width=1000) is twins[0]
    assert largest(twins) is twins[1]  # insightface's sorted(...)[-1] keeps the last of equal areas


def test_a_face_without_detector_embedding_is_embedded_whole_and_aligned(tiny_root, face_path):
    """The released fallback embeds the whole 512x512 aligned face (before parsing), not a 112 ArcFace crop."""
    from echovideo.face import load_face_stage

    stage = load_face_stage(tiny_root / "face_encoder", device=None)  # its detector gives no embeddings
    image = load_identity_image(face_path)
    face = largest(stage.detect(image))
    identity = stage.analyze(image)
    assert np.array_equal(identity.embedding, stage.embed(align_face(image, face.keypoints)))


# ------------------------------------------------------------------ precision and defaults
def test_token_axis_linears_run_on_contiguous_inputs_as_released(tiny_pipe):
    """bf16 IITF bit-equal to the released order of operations (`.transpose(1, 2).contiguous()` everywhere)."""
    model = copy.deepcopy(tiny_pipe.transformer).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    config = model.config
    text = torch.randn(2, config.max_text_seq_length, config.text_embed_dim, generator=generator).bfloat16()
    arcface = torch.randn(2, config.face_features_embed_dim, generator=generator).bfloat16()
    vit = torch.randn(2, config.face_seq_length, config.face_embed_dim, generator=generator).bfloat16()
    with torch.no_grad():
        ours = model.fuse_identity_text(text, arcface, vit)
        face = model.face_prj_wofc(arcface.unsqueeze(1).expand(-1, config.face_features_seq_length, -1))
        face = torch.cat([face, vit], dim=1).transpose(1, 2).contiguous()
        face = model.face_info_proj(face).transpose(1, 2).contiguous()
        joint = torch.cat([model.face_proj(face), text], dim=1).transpose(1, 2).contiguous()
        released = model.text_proj(joint).transpose(1, 2).contiguous()
    assert torch.equal(ours, released) and ours.is_contiguous()


def test_arcface_embedding_reaches_the_model_rounded_to_fp16(tiny_pipe, face_path):
    pixels = load_identity_image(face_path)
    raw = torch.from_numpy(tiny_pipe.face_stage.analyze(pixels).embedding)
    features = tiny_pipe._analyze_identity(pixels)
    assert torch.equal(features.id_embeds[1], raw.half().float())
    assert torch.equal(features.id_embeds[0], torch.zeros_like(raw))


@pytest.fixture(scope="module")
def bf16_pipe(tiny_root):
    return EchoVideoPipeline.from_pretrained(tiny_root, device="cpu", dtype="bf16")


def test_bf16_pipeline_draws_noise_and_decodes_as_released(bf16_pipe, tiny_root):
    opts = GenerationOptions(height=32, width=48, frames=9)
    noise = bf16_pipe.initial_noise(opts, torch.Generator().manual_seed(5))
    released = torch.randn(bf16_pipe.latent_shape(opts), generator=torch.Generator().manual_seed(5),
                           dtype=torch.bfloat16)  # randn_tensor(..., dtype=prompt_embeds.dtype)
    assert noise.dtype == torch.float32 and torch.equal(noise, released.float())

    vae = bf16_pipe.vae  # encoder bf16 (the face latent), decoder fp16 as the released decode
    assert next(vae.encoder.parameters()).dtype == torch.bfloat16
    assert next(vae.decoder.parameters()).dtype == torch.float16
    released_vae = load_vae(tiny_root / "vae", torch.bfloat16).to(torch.float16)  # `self.vae.to(torch.float16)`
    latents = torch.randn(1, 3, 16, 4, 6, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        video = released_vae.decode(1 / 0.7 * latents.permute(0, 2, 1, 3, 4).half()).sample[0]
    expected = ((video / 2 + 0.5).clamp(0, 1).float().numpy() * 255).round().astype(np.uint8)
    assert np.array_equal(bf16_pipe.decode(latents), expected.transpose(1, 2, 3, 0))
    assert decode_in_fp16_under_bf16(load_vae(tiny_root / "vae")).dtype == torch.float32  # fp32 stays fp32


def test_default_size_is_the_released_demo():
    opts = GenerationOptions()
    assert (opts.height, opts.width, opts.frames, opts.steps, opts.guidance) == (480, 848, 49, 50, 6.0)
