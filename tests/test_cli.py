"""`echovideo generate`: a real H.264 mp4 read back, saved latents, and one-line errors with exit 2."""

import os
import shutil
import subprocess
import sys

import av
import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from echovideo.cli import main
from echovideo.sampling import GenerationOptions


@pytest.fixture()
def tiny_env(tiny_root, monkeypatch):
    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tiny_root.parent))
    return tiny_root


def test_generate_writes_a_readable_h264_mp4_and_latents(tiny_env, tiny_pipe, face_path, tmp_path):
    out, latents = tmp_path / "clip.mp4", tmp_path / "latents.safetensors"
    cmd = [sys.executable, "-m", "echovideo.cli", "generate", "--preset", "tiny", "--prompt", "a woman smiles",
           "--image", str(face_path), "--out", str(out), "--height", "64", "--width", "64", "--frames", "49",
           "--steps", "4", "--seed", "3", "--save-latents", str(latents)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=os.environ.copy(), timeout=300)
    assert done.returncode == 0, done.stderr
    with av.open(str(out)) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264" and stream.average_rate == 16
    assert len(frames) == 49 and frames[0].shape == (64, 64, 3)
    saved = load_file(str(latents))["latents"]
    expected = tiny_pipe("a woman smiles", face_path, GenerationOptions(height=64, width=64, steps=4, seed=3),
                         decode=False, progress=False).latents
    assert torch.equal(saved, expected)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file the user writes, not 0600


def _broken_ckpt(tiny_root, tmp_path):
    broken = tmp_path / "ckpt"
    shutil.copytree(tiny_root, broken)
    shutil.rmtree(broken / "vae")
    return ["--ckpt", str(broken)]


def _non_image(tmp_path):
    (tmp_path / "notes.jpg").write_text("hello")
    return ["--image", str(tmp_path / "notes.jpg")]


def _no_face(tmp_path):
    from PIL import Image
    Image.new("RGB", (200, 200), (120, 120, 120)).save(tmp_path / "wall.png")
    return ["--image", str(tmp_path / "wall.png")]


@pytest.mark.parametrize("make_args, field", [
    (lambda root, tmp: ["--height", "50"], "--height"),
    (lambda root, tmp: ["--frames", "48"], "--frames"),
    (lambda root, tmp: ["--steps", "0"], "--steps"),
    (lambda root, tmp: ["--prompt", "   "], "--prompt"),
    (lambda root, tmp: ["--image", str(tmp / "missing.jpg")], "--image"),
    (lambda root, tmp: _non_image(tmp), "--image"),
    (lambda root, tmp: _no_face(tmp), "--image"),
    (lambda root, tmp: ["--device", "tpu"], "--device"),
    (lambda root, tmp: _broken_ckpt(root, tmp), "--ckpt"),
])
def test_bad_input_is_one_line_exit_2_and_no_output(tiny_env, face_path, tmp_path, capsys, make_args, field):
    out = tmp_path / "clip.mp4"
    base = {"--prompt": "a man", "--image": str(face_path), "--out": str(out), "--height": "32", "--width": "32",
            "--frames": "5", "--steps": "1"}
    extra = make_args(tiny_env, tmp_path)
    base.update(dict(zip(extra[::2], extra[1::2])))
    argv = ["generate"] + [x for kv in base.items() for x in kv]
    if "--ckpt" not in base:
        argv += ["--preset", "tiny"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"echovideo: error: {field}"), err
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.suffix == ".mp4" or ".tmp" in p.name]


def test_frames_from_latents_are_uint8_video(tiny_pipe, face_path):
    frames = tiny_pipe("a woman smiles", face_path, GenerationOptions(height=32, width=32, frames=5, steps=1),
                       progress=False).frames
    assert frames.shape == (5, 32, 32, 3) and frames.dtype == np.uint8 and frames.std() > 0
