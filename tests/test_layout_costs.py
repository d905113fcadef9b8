"""`echovideo plan --nodes`: the released model's work sizes (computed from the facts), per-rank memory within
the spec's predictions, the three cluster questions answered with their numbers, and a layout that cannot fit
refused before any placement, naming the number."""

import re

import pytest

from echovideo.cli import main
from echovideo.errors import EchoVideoInputError
from parallel.config import ParallelConfig as Layout
from parallel.costs import (
    DIT_PARAMS,
    HIDDEN,
    LAYERS,
    Clip,
    fixed_clip_seconds,
    layout_cost,
    load_devices,
)
from ray_jobs.data.job import load_job
from ray_jobs.runtime.placement import make_plan

FULL = ["--set", "model.dtype=bf16", "--set", "generation.steps=50", "--set", "generation.guidance=6"]
H100 = load_devices()["devices"]["H100"]


def size(height, width, frames):
    return ["--set", f"generation.height={height}", "--set", f"generation.width={width}", "--set",
            f"generation.frames={frames}"]


@pytest.mark.parametrize("frames, tokens, dense, attention", [(49, 20_896, 397.6, 450.7), (97, 39_976, 760.6, 1649.5)])
def test_work_sizes_are_the_released_models(frames, tokens, dense, attention):
    clip = Clip(480, 848, frames, 50)
    n = clip.video_tokens + 226
    assert n == tokens
    assert round(2 * LAYERS * 24 * n * HIDDEN**2 / 1e12, 1) == dense  # per CFG forward (two branches)
    assert round(2 * LAYERS * 4 * n * n * HIDDEN / 1e12, 1) == attention
    assert round(DIT_PARAMS * 2 / 2**30, 2) == 10.47


def test_one_device_peak_memory_is_within_the_specs_prediction():
    """gpu-check.md predicts ~13.5-15 GiB allocated at 480x848x49 and ~16-19 GiB at 97 frames (the step)."""
    for frames, low, high in ((49, 13.5, 15.0), (97, 16.0, 19.0)):
        cost = layout_cost(Clip(480, 848, frames, 50), Layout(), H100)
        step_peak = cost.memory_gib["weights"] + cost.memory_gib["activations"] + 1.0
        assert low <= step_peak <= high, (frames, cost.memory_gib)
    split = layout_cost(Clip(480, 848, 97, 50), Layout(ulysses=4, ring=1, cfg=2), H100)
    whole = layout_cost(Clip(480, 848, 97, 50), Layout(), H100)
    assert split.tokens_per_rank == -(-39_750 // 4) + 226 and split.memory_gib["activations"] < whole.memory_gib["activations"] / 7
    assert split.step_s < whole.step_s / 6  # 8 ranks, little communication over NVLink


def test_a_tiny_clip_pays_the_fixed_per_clip_work_and_a_long_one_pays_more_of_it():
    """The clip time has a floor (prompt encode, face stage, output files, ...): a 2-step 32x32 clip is not
    planned at a million clips an hour, and the pixel-bound terms grow with the clip."""
    h100 = load_devices()["devices"]["H100"]
    tiny, full = Clip(32, 32, 9, 2), Clip(480, 848, 49, 50)
    tiny_cost = layout_cost(tiny, Layout(), h100)
    assert tiny_cost.clip_s >= sum(fixed_clip_seconds(tiny, h100).values()) >= 0.3
    assert 3600 / tiny_cost.clip_s < 20_000  # clips an hour on one GPU
    small, large = fixed_clip_seconds(tiny, h100), fixed_clip_seconds(full, h100)
    assert large["mp4 encode"] > 100 * small["mp4 encode"] and large["face stage"] == small["face stage"]


def test_plan_answers_for_three_clusters_with_the_numbers_it_used(capsys):
    job = "configs/jobs/demo.yaml"
    assert main(["plan", job, "--nodes", "1x1:H100", *FULL, *size(480, 848, 49), "--set", "parallel.ulysses=1"]) == 0
    out = capsys.readouterr().out
    assert "20,670 video + 226 text tokens" in out and "matmul 798 TFLOP/s" in out and "device table v1" in out
    assert re.search(r"\*u1 r1 c1 +1 +20,896 +10\.5 +8\.9 +3\.4 .* yes", out)

    assert main(["plan", job, "--nodes", "1x8:H100", *FULL, *size(480, 848, 97), "--set", "parallel.ulysses=4",
                 "--set", "parallel.cfg=2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"\*u4 r1 c2 +8 +10,164 .* yes", out)

    assert main(["plan", job, "--nodes", "4x8:H100", *FULL, *size(720, 1280, 97), "--set", "parallel.ulysses=8"]) == 0
    out = capsys.readouterr().out
    assert "90,000 video" in out and re.search(r"\*u8 r1 c1 +8 .* yes", out)
    assert "no: a replica is placed on one node: 16 ranks > 8 GPUs per node" in out  # what does not fit, and why
    assert re.search(r" u1 r1 c1 +1 +90,226 .* yes", out)  # one H100 holds the whole clip, slowly


def test_a_layout_that_cannot_fit_is_refused_with_the_number(capsys):
    args = ["plan", "configs/jobs/demo.yaml", "--nodes", "1x1:H100", "--set", "model.dtype=fp32",
            *size(720, 1280, 193), "--set", "parallel.ulysses=1", "--set", "generation.steps=50"]
    assert main(args) == 2
    assert re.search(r"no: peak \d+\.\d GiB per rank \(denoise\) > 77\.6 GiB usable on NVIDIA H100", capsys.readouterr().out)
    spec = load_job("configs/jobs/demo.yaml", ["model.dtype=fp32", "generation.height=720", "generation.width=1280",
                                               "generation.frames=193", "parallel.ulysses=1", "parallel.replicas=1",
                                               "resources.accelerator=gpu", "model.preset=", "model.checkpoint=ckpts"])
    node = {"NodeID": "n1", "Alive": True, "Resources": {"CPU": 16.0, "GPU": 1.0, "accelerator_type:H100": 1.0}}
    with pytest.raises(EchoVideoInputError, match=r"parallel: layout u1 r1 c1 does not fit: peak .* GiB per rank"):
        make_plan(spec, [node])  # before any placement


@pytest.mark.parametrize("nodes, says", [("4x8", "NODESxGPUS:DEVICE"), ("1x8:TPU", "not in the device table")])
def test_a_bad_cluster_description_names_the_flag(nodes, says, capsys):
    assert main(["plan", "configs/jobs/demo.yaml", "--nodes", nodes]) == 2
    assert "--nodes" in capsys.readouterr().err and says


def test_a_cluster_scaled_to_zero_is_waited_for_when_joined_and_auto_says_it_falls_back_to_cpu(caplog):
    """A head with no GPU node yet (an autoscaler's GPU group at min 0): `gpu` is refused on a cluster that cannot
    grow (the embedded one, a plan without --address), planned at zero replicas with a warning on one the job
    joined; `auto` with a real checkpoint says it renders on CPU instead of doing so silently."""
    head = {"NodeID": "head", "Alive": True, "Resources": {"CPU": 4.0}}
    gpu = load_job("configs/jobs/demo.yaml", ["resources.accelerator=gpu", "parallel.replicas=2"])
    with pytest.raises(EchoVideoInputError, match="resources.accelerator: gpu: the cluster has no GPU"):
        make_plan(gpu, [head])
    with caplog.at_level("WARNING", logger="ray_jobs"):
        plan = make_plan(gpu, [head], can_grow=True)
    assert (plan.accelerator, plan.replicas) == ("gpu", 0)
    assert "the cluster has no GPU now; the autoscaler is asked for them and the job waits" in caplog.text
    auto = load_job("configs/jobs/demo.yaml", ["resources.accelerator=auto", "model.preset=",
                                               "model.checkpoint=ckpts"])
    caplog.clear()
    with caplog.at_level("WARNING", logger="ray_jobs"):
        assert make_plan(auto, [head]).accelerator == "cpu"
    assert "the released model renders on CPU" in caplog.text
