"""A small blocking JSON-over-HTTP call (demo, benchmarks, tests) on the standard library."""
from __future__ import annotations

import urllib.error
import urllib.request
from typing import Any

import orjson

__all__ = ("http_json",)


def http_json(url: str, body: Any = None, timeout: float = 30.0, token: str | None = None,
              context: Any = None) -> tuple[int, Any]:
    """POST ``body`` as JSON (GET when None); return (status, decoded JSON, or the text if not JSON).

    ``token`` is sent as ``Authorization: Bearer``; ``context`` is the ssl.SSLContext for https.

    HTTP error statuses are returned, not raised; connection errors raise OSError.
    """
    data = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY) if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    req = urllib.request.Request(url, data=data, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=timeout, context=context) as r:
            status, raw = r.status, r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    try:
        return status, orjson.loads(raw or b"null")
    except orjson.JSONDecodeError:
        return status, raw.decode(errors="replace")
