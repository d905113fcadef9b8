"""`torchrun -m echovideo generate --ulysses 2`: rank 0 alone writes the mp4; latents equal one process."""

import json
import os
import subprocess
import sys

import av
import pytest
from safetensors.torch import load_file

ARGS = ["--preset", "tiny", "--prompt", "a woman smiles", "--height", "32", "--width", "48", "--frames", "9",
        "--steps", "3", "--seed", "4"]


def generate(launcher: list[str], out, extra: list[str], tiny_root, face_path) -> subprocess.CompletedProcess:
    env = dict(os.environ, ECHOVIDEO_CACHE=str(tiny_root.parent), OMP_NUM_THREADS="1")
    cmd = launcher + ["-m", "echovideo", "generate", *ARGS, "--image", str(face_path), "--out", str(out / "clip.mp4"),
                      "--save-latents", str(out / "latents.safetensors"), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, cwd=out)


@pytest.mark.slow  # torchrun and a second `generate` process (CI runs it: -m slow)
def test_torchrun_generate_equals_one_process(tiny_root, face_path, tmp_path):
    single, parallel = tmp_path / "single", tmp_path / "parallel"
    single.mkdir(), parallel.mkdir()
    done = generate([sys.executable], single, [], tiny_root, face_path)
    assert done.returncode == 0, done.stderr
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "4"]
    done = generate(torchrun, parallel, ["--ulysses", "2", "--cfg-parallel"], tiny_root, face_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("wrote ") == 1  # rank 0 alone writes
    expected = load_file(str(single / "latents.safetensors"))["latents"]
    got = load_file(str(parallel / "latents.safetensors"))["latents"]
    assert float((got - expected).norm() / expected.norm()) <= 1e-4
    with av.open(str(parallel / "clip.mp4")) as container:
        assert sum(1 for _ in container.decode(video=0)) == 9
    assert sorted(p.name for p in parallel.iterdir()) == ["clip.json", "clip.mp4", "latents.safetensors"]
    scores = [json.loads((folder / "clip.json").read_text())["scores"] for folder in (single, parallel)]
    assert scores[0]["frames_scored"] == scores[1]["frames_scored"] and scores[0]["face_share"] == scores[1]["face_share"]
    assert abs(scores[0]["motion"] - scores[1]["motion"]) <= 0.05 * max(scores[0]["motion"], 0.1)


def test_parallel_flags_without_torchrun_say_how_to_launch(tiny_root, face_path, tmp_path):
    done = generate([sys.executable], tmp_path, ["--ulysses", "2"], tiny_root, face_path)
    assert done.returncode == 2
    assert "torchrun --nproc-per-node" in done.stderr and "Traceback" not in done.stderr
    assert list(tmp_path.iterdir()) == []
