"""Credentials never reach logs, manifests or the gallery: URIs lose their user:password@ and secret parameters.

Users put signed URLs and keyed URIs (s3://KEY:SECRET@bucket/..., ?X-Amz-Signature=..., ?token=...) in their
identity columns; every place that shows a reference or an error about it goes through `redact`.
"""

import re
from urllib.parse import urlsplit, urlunsplit

URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")
SECRET_PARAMETER = re.compile(r"(?i)(key|secret|token|password|passwd|signature|sig|credential|auth)")


def redact(text: str) -> str:
    """`text` with every URI in it stripped of credentials."""
    return URI.sub(lambda match: _redact_uri_in_text(match.group(0)), text)


def _redact_uri_in_text(found: str) -> str:
    """Punctuation that ends a sentence or closes a bracket around a URI stays outside it: "(s3://b/x.jpg?token=t)"
    keeps its ")" instead of losing it with the secret."""
    uri = found.rstrip(".,;:!?")
    while uri.endswith(")") and uri.count(")") > uri.count("("):
        uri = uri[:-1].rstrip(".,;:!?")
    return _redact_uri(uri) + found[len(uri):]


def _redact_uri(uri: str) -> str:
    try:
        parts = urlsplit(uri)
    except ValueError:  # not parseable as a URI: show only its scheme
        return uri.split("://", 1)[0] + "://***"
    netloc = f"***@{parts.netloc.rsplit('@', 1)[1]}" if "@" in parts.netloc else parts.netloc
    query = "&".join(_redact_parameter(pair) for pair in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _redact_parameter(pair: str) -> str:
    name = pair.split("=", 1)[0]
    return f"{name}=***" if SECRET_PARAMETER.search(name) else pair
