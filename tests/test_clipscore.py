"""`eval --protocol consisid --clip FOLDER`: CLIPScore as ConsisID's `eval/get_clipscore.py` computes it, checked
against that script re-done here (OpenCV's VideoCapture seeking `int(i * n / 16)`, its BGR frames handed to
CLIPProcessor, logits_per_image averaged) with a tiny random CLIP saved the way transformers saves one."""

import json
import shutil

import cv2
import numpy as np
import pytest
import torch

from echovideo.cli import main
from echovideo.images import load_identity_image
from echovideo.video_io import write_mp4

PHOTO = "echovideo/assets/astronaut.jpg"
PROMPT = "a woman in a white space suit smiles at the camera"


def byte_characters() -> list[str]:
    """GPT-2's printable stand-in for each byte, which CLIP's BPE vocabulary is written in."""
    kept = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in kept]
    return [chr(b) for b in kept] + [chr(256 + i) for i in range(len(extra))]


def tiny_clip(folder):
    """A CLIP of two layers a side, its tokenizer a byte-level BPE without merges (every character a token)."""
    from transformers import (
        CLIPConfig,
        CLIPImageProcessor,
        CLIPModel,
        CLIPProcessor,
        CLIPTokenizer,
    )

    folder.mkdir()
    vocab = {token: i for i, token in enumerate(
        [c for ch in byte_characters() for c in (ch, ch + "</w>")] + ["<|startoftext|>", "<|endoftext|>"])}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    torch.manual_seed(0)
    layers = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 2, "num_attention_heads": 4}
    config = CLIPConfig(text_config={**layers, "vocab_size": len(vocab), "max_position_embeddings": 77,
                                     "eos_token_id": vocab["<|endoftext|>"], "bos_token_id": vocab["<|startoftext|>"],
                                     "pad_token_id": vocab["<|endoftext|>"]},
                        vision_config={**layers, "image_size": 32, "patch_size": 8}, projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(folder)
    return folder


def published_clip_score(video_path, folder, prompt):
    from transformers import CLIPModel, CLIPProcessor

    model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    cap = cv2.VideoCapture(str(video_path))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    frames = []
    for i in range(16):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i * total / 16))
        ok, frame = cap.read()
        if ok:
            frames.append(frame)
    cap.release()
    inputs = processor(text=prompt, images=frames, return_tensors="pt", padding=True, truncation=True)
    with torch.no_grad():
        return model(**inputs).logits_per_image.mean().item(), frames


def test_clip_score_is_the_published_scripts_bgr_frames_and_all(tmp_path, capsys, tiny_root, monkeypatch):
    monkeypatch.setenv("ECHOVIDEO_CACHE", str(tiny_root.parent))
    clip = tiny_clip(tmp_path / "clip")
    clips = tmp_path / "clips"
    clips.mkdir()
    photo = load_identity_image(PHOTO)
    frames = np.stack([np.roll(photo, 8 * i, axis=1)[:256, :256] for i in range(37)])  # 37: int(i*n/16) != linspace
    write_mp4(frames, clips / "pan.mp4", fps=8)
    shutil.copy(PHOTO, clips / "pan.jpg")
    (clips / "pan.json").write_text(json.dumps({"identity": str(clips / "pan.jpg"), "prompt": PROMPT, "options": {},
                                                "scores": {"identity_average": 0.5}}))
    expected, bgr = published_clip_score(clips / "pan.mp4", clip, PROMPT)
    assert main(["eval", str(clips), "--preset", "tiny", "--protocol", "consisid", "--clip", str(clip),
                 "--no-plot"]) == 0
    assert "CLIPScore" in capsys.readouterr().out
    saved = json.loads((clips / "eval-consisid.json").read_text())
    (row,) = saved["table"]
    assert row["clip_score"] == pytest.approx(expected, rel=1e-5)
    assert set(saved["models"]["clip"]) >= {"config.json", "model.safetensors"}

    from echovideo.metrics.clipscore import (
        ClipScore,  # the quirk is not a detail: frames fed as RGB give another number
    )

    as_rgb = ClipScore(clip)(np.stack(bgr), PROMPT)  # it flips what it is given: the processor then gets RGB
    assert as_rgb != pytest.approx(expected, rel=1e-3)
