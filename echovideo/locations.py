"""Locations a user gives (a local path, or a URI of any pyarrow filesystem) and how to show them safely."""

import os
from urllib.parse import urlsplit


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def public_name(uri: str) -> str:
    """The URI without credentials or query (endpoint, tokens): safe to log, to store in data, to key by."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}".rstrip("/")
