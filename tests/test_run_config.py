"""Preset files: bundled presets parse, flags override them, typos are errors that name the key."""

from pathlib import Path

import pytest

from echovideo.cli import _resolve, build_parser
from echovideo.errors import EchoVideoInputError
from echovideo.run_config import load_run_config

PRESETS = Path(__file__).resolve().parent.parent / "configs" / "presets"


def _args(*extra):
    return build_parser().parse_args(["generate", "--prompt", "p", "--image", "i.jpg", "--out", "o.mp4", *extra])


@pytest.mark.parametrize("name", sorted(p.name for p in PRESETS.glob("*.yaml")))
def test_bundled_presets_are_valid(name):
    model, options = _resolve(_args("--config", str(PRESETS / name)))
    assert (model.preset is None) != (model.checkpoint is None)
    assert options.frames % 4 == 1


def test_flags_override_the_preset_file():
    model, options = _resolve(_args("--config", str(PRESETS / "tiny.yaml"), "--steps", "2", "--no-dynamic-cfg",
                                    "--device", "cpu"))
    assert (options.height, options.steps, options.dynamic_cfg) == (64, 2, False)
    assert (model.preset, model.device) == ("tiny", "cpu")
    model, _ = _resolve(_args("--config", str(PRESETS / "released-480x848.yaml"), "--preset", "tiny"))
    assert model.preset == "tiny" and model.checkpoint is None


@pytest.mark.parametrize("text, named", [
    ("generation:\n  hieght: 64\n", "unknown keys ['hieght']"),
    ("model:\n  preset: tiny\n  weights: x\n", "unknown keys ['weights']"),
    ("extra: 1\n", "unknown keys ['extra']"),
    ("generation:\n  steps: four\n", "--steps"),
    ("generation:\n  dynamic_cfg: maybe\n", "dynamic_cfg"),
    ("generation: [1, 2]\n", "expected a mapping"),
    ("model: {preset: tiny\n", "not valid YAML"),
])
def test_bad_preset_files_name_the_key(tmp_path, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(EchoVideoInputError, match=named.replace("[", r"\[").replace("]", r"\]")):
        _resolve(_args("--config", str(path)))


def test_missing_preset_file():
    with pytest.raises(EchoVideoInputError, match="does not exist"):
        load_run_config("nowhere.yaml")
