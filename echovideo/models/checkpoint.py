"""Strict checkpoint checks: a folder must hold exactly the tensors the model expects.

diffusers only warns about unexpected keys and can leave missing ones randomly initialised; for a
model whose output users compare across runs and layouts, either is a silent wrong answer. The check
reads only safetensors headers, so it costs nothing even for the 11 GB released transformer.
"""

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from echovideo.errors import CheckpointError

WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
INDEX_NAME = "diffusion_pytorch_model.safetensors.index.json"
_MAX_LISTED = 8


def safetensors_files(folder: Path) -> list[Path]:
    """The weight files of a diffusers model folder: sharded (via the index) or single."""
    index = folder / INDEX_NAME
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        files = sorted({folder / name for name in weight_map.values()})
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise CheckpointError(str(folder), f"shard(s) listed in {INDEX_NAME} are missing: {missing}",
                                  "copy the complete checkpoint folder")
        return files
    single = folder / WEIGHTS_NAME
    if single.is_file():
        return [single]
    pickles = sorted(p.name for p in folder.glob("*.bin")) + sorted(p.name for p in folder.glob("*.pth"))
    hint = f"found only pickle files {pickles}, which are not loaded" if pickles else "no weights found"
    raise CheckpointError(str(folder), f"{hint}; expected {INDEX_NAME} or {WEIGHTS_NAME}",
                          "point at the released transformer folder")


def read_tensor_shapes(folder: Path) -> dict[str, tuple[int, ...]]:
    """Key -> shape of every tensor in the folder's safetensors files, from their headers only."""
    shapes: dict[str, tuple[int, ...]] = {}
    for path in safetensors_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                shapes[key] = tuple(handle.get_slice(key).get_shape())
    return shapes


def _listed(keys: list[str]) -> str:
    more = f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def compare_state_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], where: str
) -> None:
    """Raise a CheckpointError naming missing, unexpected and mis-shaped tensors."""
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if tuple(expected[k]) != tuple(found[k]))
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if wrong:
        problems.append("wrong shapes: " + _listed([f"{k} {found[k]} != {expected[k]}" for k in wrong]))
    if problems:
        raise CheckpointError(where, "; ".join(problems),
                              "the weights do not match config.json; use the released checkpoint unchanged")


class StrictCheckpointMixin:
    """Adds a key/shape check before diffusers' `from_pretrained` (safetensors only, never pickle)."""

    @classmethod
    def expected_state_shapes(cls, config: dict[str, Any]) -> dict[str, tuple[int, ...]]:
        """Key -> shape for a config, built on the meta device (no memory, any model size)."""
        with torch.device("meta"):
            model = cls.from_config(config)
        return {k: tuple(v.shape) for k, v in model.state_dict().items()}

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | Path, **kwargs: Any):  # type: ignore[override]
        folder = Path(pretrained_model_name_or_path)
        config_file = folder / "config.json"
        if not config_file.is_file():
            raise CheckpointError(str(folder), "no config.json", "point at the model's folder, e.g. ckpts/transformer")
        config = json.loads(config_file.read_text())
        compare_state_shapes(cls.expected_state_shapes(config), read_tensor_shapes(folder), str(folder))
        kwargs.setdefault("use_safetensors", True)
        return super().from_pretrained(str(folder), **kwargs)  # type: ignore[misc]
