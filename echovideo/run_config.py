"""Preset files (`configs/presets/*.yaml`): which model to load and the generation defaults.

The same `model` / `generation` sections are what job files use; unknown keys and wrong types are
errors that name the key, so a typo never silently falls back to a default.
"""

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from echovideo.errors import EchoVideoInputError
from echovideo.sampling import GenerationOptions
from echovideo.yaml_files import read_yaml_file


@dataclass(frozen=True)
class ModelSpec:
    preset: str | None = None
    checkpoint: str | None = None
    dtype: str = "auto"
    device: str = "auto"
    scheduler: str = "dpm"


@dataclass(frozen=True)
class RunConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    generation: dict[str, Any] = field(default_factory=dict)


def _check_keys(values: Any, allowed: set[str], where: str) -> dict[str, Any]:
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise EchoVideoInputError(where, f"expected a mapping, got {type(values).__name__}", "see configs/presets/")
    unknown = sorted(set(values) - allowed)
    if unknown:
        raise EchoVideoInputError(where, f"unknown keys {unknown}", f"allowed: {sorted(allowed)}")
    return values


def load_run_config(path: str | Path) -> RunConfig:
    data = read_yaml_file(path, "--config", "configs/presets/tiny.yaml")
    data = _check_keys(data, {"model", "generation"}, f"{path}")
    model = _check_keys(data.get("model"), {f.name for f in fields(ModelSpec)}, f"{path}: model")
    for key, value in model.items():
        if value is not None and not isinstance(value, str):
            raise EchoVideoInputError(f"{path}: model.{key}", f"expected a string, got {value!r}", "quote it")
    generation = _check_keys(data.get("generation"), {f.name for f in fields(GenerationOptions)},
                             f"{path}: generation")
    return RunConfig(model=ModelSpec(**model), generation=generation)
