"""Locations: a local path or a URI of any pyarrow filesystem (how to open and how to show them safely), and
the node-local cache folder."""

import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import pyarrow.fs as pfs


def default_cache_dir() -> Path:
    """`$ECHOVIDEO_CACHE`, else ~/.cache/echovideo: the tiny preset and downloaded checkpoints live here."""
    return Path(os.environ.get("ECHOVIDEO_CACHE", Path.home() / ".cache" / "echovideo"))


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


STORE_SCHEMES = ("s3", "gs", "gcs", "hdfs", "viewfs", "file", "abfs", "abfss", "az", "http", "https", "hf")
_SCHEME_WITHOUT_SLASHES = re.compile(rf"^({'|'.join(STORE_SCHEMES)}):(?!//)", re.IGNORECASE)


def check_location(location: str | os.PathLike, field: str = "URI") -> None:
    """A store's scheme without its `//` (`s3:/bucket/out`, `gs:bucket`) is a typo, refused here: as a path it
    would be a local folder named `s3:` that a job fills without a word."""
    match = _SCHEME_WITHOUT_SLASHES.match(str(location))
    if match:
        from echovideo.errors import EchoVideoInputError

        scheme, given = match.group(1), str(location)[match.end():].split("?", 1)[0]
        given = given.split("@", 1)[-1]  # credentials written before the bucket are never shown
        rest = given.lstrip("/")
        raise EchoVideoInputError(field, f"{scheme}:{given} is not a URI (a URI has '://' after its scheme)",
                                  f"write {scheme}://{rest}, or ./{scheme}:{given} for a local folder of that name")


def public_name(uri: str) -> str:
    """The URI without credentials or query (endpoint, tokens): safe to log, to store in data, to key by."""
    parts = urlsplit(uri)
    return f"{parts.scheme}://{parts.hostname or ''}{parts.path}".rstrip("/")


def shown_location(location: str) -> str:
    """A path as given, a URI by its public name: how messages and outputs name a location."""
    return public_name(location) if is_uri(location) else location


def filesystem(location: str | os.PathLike) -> tuple[pfs.FileSystem, str]:
    """(filesystem, path in it): a URI's own filesystem, or the local one with the path made absolute."""
    if is_uri(location):
        return open_uri(str(location))
    check_location(location)
    return pfs.LocalFileSystem(), str(Path(location).absolute())


def open_uri(uri: str) -> tuple[pfs.FileSystem, str]:
    """`pyarrow.fs.FileSystem.from_uri`, with a URI pyarrow refuses (a misspelt query key, an unknown scheme)
    made one line that names the problem and the fix instead of pyarrow's traceback."""
    try:
        return pfs.FileSystem.from_uri(uri)
    except (ValueError, TypeError, OSError) as exc:  # pyarrow's ArrowInvalid is a ValueError
        from echovideo.errors import EchoVideoInputError

        fix = ("S3 query keys are e.g. endpoint_override=HOST:PORT, scheme=http, region=..., "
               "allow_bucket_creation=true" if uri.startswith("s3") else "check the URI's scheme and query")
        raise EchoVideoInputError("URI", f"{public_name(uri)}: {_without_secrets(str(exc), uri)}", fix) from None


def _without_secrets(message: str, uri: str) -> str:
    """pyarrow's message with the URI's credentials and query values taken out (they may hold keys)."""
    parts = urlsplit(uri)
    message = message.splitlines()[0].replace(uri, public_name(uri))[:200]
    for secret in [parts.password, parts.username, *(value for _, value in parse_qsl(parts.query))]:
        if secret:
            message = message.replace(secret, "***")
    return message


def store_hint(message: str) -> str:
    """A fix for what a store's error text shows: TLS spoken to a plain-HTTP endpoint fails as 'wrong version
    number' (OpenSSL), which does not point at the URI's missing `scheme=http`."""
    if "wrong version number" in message.lower():
        return " (the store speaks plain HTTP: add &scheme=http to the URI's query)"
    return ""
