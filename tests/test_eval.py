"""`echovideo eval`: the paper's table from a job's manifest grouped by a setting, from a folder of clips (with
`generate`'s json beside them, or scored from the mp4 against photos), and Inception Distance on an ONNX
Inception written here with the `onnx` package."""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from PIL import Image

from echovideo.cli import main
from echovideo.images import load_identity_image
from echovideo.video_io import write_mp4
from ray_jobs.data.records import Rendered
from ray_jobs.store import LocalOutputs

PHOTO = "echovideo/assets/astronaut.jpg"
OTHER = "configs/jobs/demo/astronaut-mirrored.jpg"


def scored_job(folder, clips: list[tuple[float, float, bool]]) -> None:
    """A finished job whose clip i ran with cache = clips[i][0] and scored identity clips[i][1]."""
    store = LocalOutputs(folder)
    for i, (cache, identity, dynamic) in enumerate(clips):
        sid = f"{i:024x}"
        write_mp4(np.zeros((5, 16, 16, 3), np.uint8), (store.folder / store.video_name(sid)), fps=8)
        store.record(Rendered(**{"sample_id": sid, "prompt": "p", "identity": "x.jpg", "seed": i, "attempts": 1,
                              "options": {"cache": cache, "steps": 2}, "seconds": 1.0, "replica": "0",
                              "path": f"videos/{sid}.mp4",
                              "scores": {"identity_average": identity, "identity_variation": identity / 10,
                                         "face_share": 1.0, "motion": 5.0 if dynamic else 0.5, "dynamic": dynamic}}))
    store.finalize({})


def test_eval_groups_a_job_by_a_setting_and_writes_json_and_a_plot(tmp_path, capsys):
    scored_job(tmp_path / "out", [(0.0, 0.6, True), (0.0, 0.4, False), (0.1, 0.3, True), (0.1, 0.5, True),
                                  (0.1, 0.4, False)])
    assert main(["eval", str(tmp_path / "out"), "--by", "cache"]) == 0
    printed = capsys.readouterr().out
    lines = [line.split() for line in printed.splitlines() if line.strip().startswith(("0.0 ", "0.1 "))]
    assert [line[:3] for line in lines] == [["0.0", "2", "0.500"], ["0.1", "3", "0.400"]]
    assert "Inception Distance: not computed" in printed  # no weights: said, not downloaded
    table = json.loads((tmp_path / "out" / "eval-by-cache.json").read_text())["table"]
    assert [(r["group"], r["dynamic"]) for r in table] == [("0.0", 0.5), ("0.1", pytest.approx(2 / 3))]
    assert table[1]["identity_variation"] == pytest.approx(0.04)
    assert Image.open(tmp_path / "out" / "eval-by-cache.png").size == (1000, 300)
    assert main(["eval", str(tmp_path / "out")]) == 0  # ungrouped: its own files, the grouped ones kept
    assert json.loads((tmp_path / "out" / "eval.json").read_text())["table"][0]["clips"] == 5
    assert json.loads((tmp_path / "out" / "eval-by-cache.json").read_text())["by"] == "cache"

    assert main(["eval", str(tmp_path / "out"), "--by", "colour"]) == 2  # names what can be grouped by
    assert "--by: 'colour' is neither" in capsys.readouterr().err


def test_eval_on_a_folder_uses_generates_json_or_scores_the_mp4_against_its_photo(tmp_path, capsys):
    clips = tmp_path / "clips"
    assert main(["generate", "--preset", "tiny", "--image", PHOTO, "--prompt", "a wave", "--out",
                 str(clips / "made.mp4"), "--height", "32", "--width", "32", "--frames", "5", "--steps", "2"]) == 0
    written = json.loads((clips / "made.json").read_text())
    photo = load_identity_image(PHOTO)
    write_mp4(np.stack([photo] * 9), clips / "still.mp4", fps=8)  # the identity photo itself, through H.264
    Image.fromarray(photo).save(clips / "still.png")
    capsys.readouterr()
    assert main(["eval", str(clips)]) == 2  # still.mp4 has no json: it needs a face stage
    assert "pass --ckpt CKPT or --preset tiny" in capsys.readouterr().err
    assert main(["eval", str(clips), "--preset", "tiny", "--by", "sample_id", "--no-plot"]) == 0
    table = {r["group"]: r for r in json.loads((clips / "eval-by-sample_id.json").read_text())["table"]}
    assert table["made"]["identity_average"] == written["scores"]["identity_average"]
    assert table["still"]["identity_average"] > 0.95 and table["still"]["face_share"] == 1.0
    assert table["still"]["dynamic"] == 0.0 and not (clips / "eval-by-sample_id.png").exists()


def inception_model(path) -> None:
    """A stand-in with Inception's interface: 1x3x299x299 in, 2048 out (channel means through a fixed matrix)."""
    weights = np.random.default_rng(0).normal(size=(3, 2048)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["features"])], "inception",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 299, 299])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, [1, 2048])],
        [numpy_helper.from_array(weights, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def test_inception_distance_is_zero_for_the_photo_itself_and_positive_for_another_face(tmp_path):
    import torch

    from echovideo.face import load_face_stage
    from echovideo.metrics.inception import InceptionFeatures, inception_distance
    from echovideo.presets.tiny import tiny_checkpoint

    inception_model(tmp_path / "inception.onnx")
    features = InceptionFeatures(tmp_path / "inception.onnx")
    stage = load_face_stage(tiny_checkpoint() / "face_encoder", torch.device("cpu"))
    photo, other = load_identity_image(PHOTO), load_identity_image(OTHER)
    assert inception_distance(np.stack([photo] * 5), 8, photo, stage, features) == 0.0
    expected = float(np.sum((features(stage.largest_face(other)[0]) - features(stage.largest_face(photo)[0])) ** 2))
    assert expected > 0
    assert inception_distance(np.stack([other] * 5), 8, photo, stage, features) == pytest.approx(expected)
    assert inception_distance(np.full((5, 64, 64, 3), 128, np.uint8), 8, photo, stage, features) is None


def test_inception_weights_that_are_not_an_inception_are_refused_clearly(tmp_path, capsys):
    scored_job(tmp_path / "out", [(0.0, 0.5, True)])
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    assert main(["eval", str(tmp_path / "out"), "--preset", "tiny", "--inception", str(tmp_path / "bad.onnx")]) == 2
    err = capsys.readouterr().err
    assert "--inception:" in err and "not a readable ONNX model" in err


def test_eval_of_a_store_it_cannot_reach_is_one_clear_line_without_credentials(capsys):
    assert main(["eval", "s3://KEY:SECRET@bucket/out?endpoint_override=127.0.0.1:9&scheme=http"]) == 2
    err = capsys.readouterr().err
    assert "OUTPUT: cannot read s3://bucket/out" in err and "SECRET" not in err and "Traceback" not in err


def test_eval_works_after_the_quickstart_install_without_matplotlib(tmp_path, capsys, monkeypatch):
    """The plot is optional (the `eval` extra): without matplotlib the table and eval.json are the result."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    scored_job(tmp_path / "out", [(0.0, 0.6, True), (0.0, 0.4, False)])
    assert main(["eval", str(tmp_path / "out")]) == 0
    printed = capsys.readouterr().out
    assert "plot: not drawn (matplotlib is not installed" in printed
    assert (tmp_path / "out" / "eval.json").is_file() and not (tmp_path / "out" / "eval.png").exists()


def test_a_plot_of_a_hundred_groups_shows_the_best_apart_and_pools_the_rest(tmp_path, capsys):
    """100 prompts: the legend holds the 7 best groups by Identity Average and one pooled "93 other groups"
    series (every clip still counted), not 100 overlaid histograms."""
    from ray_jobs.tools.eval_table import PLOTTED_GROUPS, grouped, plotted_series

    scored_job(tmp_path / "out", [(i / 1000, i / 100, i % 2 == 0) for i in range(100)])  # cache i/1000: 100 groups
    assert main(["eval", str(tmp_path / "out"), "--by", "cache"]) == 0
    clips = [{"options": {"cache": i / 1000}, "scores": {"identity_average": i / 100}} for i in range(100)]
    series = plotted_series(grouped(clips, "cache"), "cache")
    assert len(series) == PLOTTED_GROUPS == 8
    assert [label for label, _ in series[:3]] == ["cache=0.099", "cache=0.098", "cache=0.097"]
    assert series[-1][0] == "93 other groups" and sum(len(members) for _, members in series) == 100
    assert Image.open(tmp_path / "out" / "eval-by-cache.png").size == (1000, 300)


def raft_stand_in(path) -> None:
    """RAFT's interface (two 1x3xHxW frames in 0-255 in; flow_low, flow_up out, the last (1, 2, H, W)) with a
    flow a test can compute: u = the channel mean of (second - first) / 8, v = the second frame's channel mean
    / 64."""
    nodes = [helper.make_node("Sub", ["image2", "image1"], ["diff"]),
             helper.make_node("ReduceMean", ["diff"], ["du"], axes=[1], keepdims=1),
             helper.make_node("Div", ["du", "eight"], ["u"]),
             helper.make_node("ReduceMean", ["image2"], ["mean2"], axes=[1], keepdims=1),
             helper.make_node("Div", ["mean2", "sixtyfour"], ["v"]),
             helper.make_node("Concat", ["u", "v"], ["flow_up"], axis=1),
             helper.make_node("Identity", ["flow_up"], ["flow_low"])]
    frame = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, "h", "w"])  # noqa: E731
    flow = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 2, "h", "w"])  # noqa: E731
    graph = helper.make_graph(nodes, "raft", [frame("image1"), frame("image2")], [flow("flow_low"), flow("flow_up")],
                              [numpy_helper.from_array(np.array(8, np.float32), "eight"),
                               numpy_helper.from_array(np.array(64, np.float32), "sixtyfour")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))


def vbench_dynamic_degree(frames: np.ndarray, fps: int) -> tuple[float, bool]:
    """VBench's dynamic_degree.py with the stand-in's flow, written from its code: every round(fps/8)-th frame,
    each pair padded by RAFT's InputPadder (sintel: replicate, split evenly) and scored on the padded flow."""
    picked = [f.astype(np.float32) for f in frames[::max(1, round(fps / 8))]]
    ht, wd = picked[0].shape[:2]
    pad_ht, pad_wd = (((ht // 8) + 1) * 8 - ht) % 8, (((wd // 8) + 1) * 8 - wd) % 8
    pad = ((pad_ht // 2, pad_ht - pad_ht // 2), (pad_wd // 2, pad_wd - pad_wd // 2), (0, 0))
    scores = []
    for first, second in zip(picked[:-1], picked[1:]):
        a, b = np.pad(first, pad, mode="edge"), np.pad(second, pad, mode="edge")
        u, v = (b - a).mean(axis=2) / 8, b.mean(axis=2) / 64
        rad = np.sqrt(u ** 2 + v ** 2)
        h, w = rad.shape
        scores.append(float(np.mean(np.abs(np.sort(-rad.flatten()))[:int(h * w * 0.05)])))
    thres = max(1.0, 8.0 / fps) * 6.0 * (min(ht, wd) / 256.0)
    return float(np.mean(scores)), sum(s > thres for s in scores) >= round(4 * (len(picked) / 16.0))


def test_dynamic_degree_with_the_users_raft_weights_is_vbenchs_computation(tmp_path, capsys):
    from echovideo.video_io import read_mp4

    clips = tmp_path / "clips"
    clips.mkdir()
    rng = np.random.default_rng(3)
    frames = np.stack([np.full((30, 44, 3), 40 + 50 * (i % 3), np.uint8) + rng.integers(0, 30, (30, 44, 3), np.uint8)
                       for i in range(17)])  # 30x44: RAFT's padder adds rows and columns
    write_mp4(frames, clips / "moving.mp4", fps=16)
    (clips / "moving.json").write_text(json.dumps({"identity": PHOTO, "options": {},
                                                   "scores": {"identity_average": 0.5, "motion": 0.0, "dynamic": False}}))
    raft_stand_in(tmp_path / "raft.onnx")
    assert main(["eval", str(clips), "--raft", str(tmp_path / "raft.onnx"), "--no-plot"]) == 0
    assert "motion: RAFT" in capsys.readouterr().out
    (row,) = json.loads((clips / "eval.json").read_text())["table"]
    motion, dynamic = vbench_dynamic_degree(*read_mp4(clips / "moving.mp4"))
    assert row["motion"] == pytest.approx(motion, abs=1e-4) and row["dynamic"] == float(dynamic) == 1.0

    (tmp_path / "not-raft.onnx").write_bytes(b"nope")
    assert main(["eval", str(clips), "--raft", str(tmp_path / "not-raft.onnx")]) == 2
    assert "--raft:" in capsys.readouterr().err
