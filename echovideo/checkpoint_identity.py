"""Which weights a checkpoint folder holds, named by the files the loader reads (not by its path or URI).

A job names every clip by this fingerprint and every rank checks the weights it is about to load against the
one the driver pinned, so weights replaced in place (an NFS `ckpts/`, a re-uploaded prefix) are other weights:
other ids, and never rendered under the old ones. A NOTES.txt or README.md beside the weights is not read by
the loader and changes nothing.
"""

import hashlib
import json
import os
from pathlib import Path

from echovideo.errors import CheckpointError
from echovideo.loading import PARTS

# What `loading.load_components` opens inside the parts: configs, safetensors weights, the T5 sentencepiece
# model, the face stage's ONNX graphs and `.pth` state dicts.
LOADED_SUFFIXES = (".json", ".safetensors", ".model", ".onnx", ".pth")


def is_loaded(relative: str) -> bool:
    """A file (relative to the checkpoint root, '/'-separated) that the loader reads, or one of the released
    folder's top-level configs (model_index.json: kept so a node's copy is still the released layout)."""
    parts = relative.split("/")
    if len(parts) == 1:
        return relative.endswith(".json")
    return parts[0] in PARTS and relative.endswith(LOADED_SUFFIXES)


def fingerprint(listing: dict[str, list]) -> str:
    """The weights' identity from their listing (relative path -> [size, modification time]): files the
    loader does not read are left out."""
    loaded = {rel: value for rel, value in listing.items() if is_loaded(rel)}
    return hashlib.sha256(json.dumps(loaded, sort_keys=True).encode()).hexdigest()[:16]


def folder_listing(root: Path) -> dict[str, list]:
    """What a local folder holds of the loader's files: relative path -> [size, mtime in ns] (one stat each;
    a replaced file has a new size or time)."""
    listing = {entry.name: _stat(Path(entry.path)) for entry in os.scandir(root)
               if entry.is_file() and is_loaded(entry.name)}
    for part in PARTS:
        for folder, _, names in os.walk(root / part):
            for name in names:
                path = Path(folder) / name
                relative = path.relative_to(root).as_posix()
                if is_loaded(relative):
                    listing[relative] = _stat(path)
    return listing


def _stat(path: Path) -> list[int]:
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def folder_fingerprint(root: Path) -> str:
    return fingerprint(folder_listing(root))


def check_pinned(now: str, pinned: str | None, name: str) -> None:
    """Raise unless the weights about to be loaded (`now`) are those the job pinned when it started (None: not
    pinned, e.g. `echovideo generate`)."""
    if pinned is not None and now != pinned:
        raise CheckpointError("model.checkpoint", f"the weights in {name} changed while the job ran (fingerprint "
                              f"{now}, the job's clips are named by {pinned})",
                              "rerun the job: it names its clips by the new weights and renders them anew")
