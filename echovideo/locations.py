"""Locations: a local path or a URI of any pyarrow filesystem (how to open and how to show them safely), and
the node-local cache folder."""

import os
from pathlib import Path
from urllib.parse import urlsplit

import pyarrow.fs as pfs


def default_cache_dir() -> Path:
    """`$ECHOVIDEO_CACHE`, else ~/.cache/echovideo: the tiny preset and downloaded checkpoints live here."""
    return Path(os.environ.get("ECHOVIDEO_CACHE", Path.home() / ".cache" / "echovideo"))


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def public_name(uri: str) -> str:
    """The URI without credentials or query (endpoint, tokens): safe to log, to store in data, to key by."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}".rstrip("/")


def filesystem(location: str | os.PathLike) -> tuple[pfs.FileSystem, str]:
    """(filesystem, path in it): a URI's own filesystem, or the local one with the path made absolute."""
    if is_uri(location):
        return pfs.FileSystem.from_uri(str(location))
    return pfs.LocalFileSystem(), str(Path(location).absolute())
