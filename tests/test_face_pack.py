"""`eval --protocol consisid` finds and embeds faces with the pack ConsisID's script loads: insightface's
default name (buffalo_l) resolved in the checkpoint's `face_encoder/models/`, each file routed by its graph's
signature as insightface routes it; `--face-pack` names another; the eval's json records the pack and the
digests of its files, so two tables say whether they came from the same models."""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from released_face import (
    glintr,
    identity_model,
    scrfd,
    template_face,
    write_face_encoder,
)

from echovideo.cli import main
from echovideo.errors import CheckpointError
from echovideo.face.analysis_pack import AnalysisPack, resolve_pack
from echovideo.images import load_identity_image
from echovideo.metrics.consisid_eval import consisid_scores, decode_photo
from echovideo.video_io import read_mp4, write_mp4

PHOTO = "echovideo/assets/astronaut.jpg"
EVAL_CANVAS = (320, 320)  # ConsisID's det_size


def checkpoint_with_two_packs(root):
    """antelopev2 (ours) and buffalo_l (insightface's default) side by side, with different recognisers."""
    face_encoder = write_face_encoder(root / "face_encoder", [template_face(200, 150, 240)], 512)
    antelope = face_encoder / "models" / "antelopev2"
    onnx.save(scrfd([template_face(90, 70, 130)], canvas=EVAL_CANVAS), str(antelope / "scrfd_10g_bnkps.onnx"))
    buffalo = face_encoder / "models" / "buffalo_l"
    buffalo.mkdir(parents=True)
    onnx.save(scrfd([template_face(100, 80, 120)], canvas=EVAL_CANVAS), str(buffalo / "det_10g.onnx"))
    onnx.save(glintr(512, seed=7), str(buffalo / "w600k_r50.onnx"))
    for name, size in (("1k3d68.onnx", 192), ("2d106det.onnx", 192), ("genderage.onnx", 96)):
        onnx.save(identity_model(size), str(buffalo / name))
    return root


def test_the_default_pack_is_insightfaces_default_name_with_each_file_routed_by_its_signature(tmp_path):
    face_encoder = checkpoint_with_two_packs(tmp_path / "ckpt") / "face_encoder"
    default = resolve_pack(face_encoder)
    assert (default.name, default.detector.name, default.recognizer.name) == ("buffalo_l", "det_10g.onnx",
                                                                                "w600k_r50.onnx")
    ours = resolve_pack(face_encoder, "antelopev2")
    assert (ours.detector.name, ours.recognizer.name) == ("scrfd_10g_bnkps.onnx", "glintr100.onnx")
    with pytest.raises(CheckpointError, match="--face-pack: no face pack 'buffalo_s'"):
        resolve_pack(face_encoder, "buffalo_s")


def test_eval_consisid_measures_with_the_pack_it_names_and_records_it(tmp_path, capsys):
    ckpt = checkpoint_with_two_packs(tmp_path / "ckpt")
    clips = tmp_path / "clips"
    clips.mkdir()
    moved = np.roll(load_identity_image(PHOTO), 12, axis=1)  # the person moved: each recogniser sees it its way
    frames = np.repeat(moved[None], 17, axis=0)
    write_mp4(frames, clips / "still.mp4", fps=8)
    shutil.copy(PHOTO, clips / "still.jpg")
    (clips / "still.json").write_text(json.dumps({"identity": str(clips / "still.jpg"), "options": {},
                                                  "scores": {"identity_average": 0.5}}))
    decoded, photo = read_mp4(clips / "still.mp4")[0], decode_photo((clips / "still.jpg").read_bytes())
    measured = {}
    for pack in ("buffalo_l", "antelopev2"):
        flag = ["--face-pack", pack] if pack != "buffalo_l" else []  # buffalo_l: the default, unnamed
        assert main(["eval", str(clips), "--ckpt", str(ckpt), "--protocol", "consisid", "--no-plot", *flag]) == 0
        assert f"face pack: {pack}" in capsys.readouterr().out
        saved = json.loads((clips / "eval-consisid.json").read_text())
        files = resolve_pack(ckpt / "face_encoder", pack)
        assert saved["models"]["face_pack"] == {"name": pack, "files": files.digests()}
        expected = consisid_scores(decoded, photo, AnalysisPack(files, torch.device("cpu")))
        (row,) = saved["table"]
        assert expected["frames_with_face"] == 16 and row["facesim_arc"] == pytest.approx(expected["facesim_arc"])
        assert 0.0 < row["facesim_arc"] < 1.0
        measured[pack] = row["facesim_arc"]
    assert measured["buffalo_l"] != pytest.approx(measured["antelopev2"])  # the pack is not a detail


def test_face_pack_without_the_consisid_protocol_and_a_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--face-pack", "buffalo_l"]) == 2
    err = capsys.readouterr().err
    assert "--face-pack" in err and len(err.strip().splitlines()) == 1
