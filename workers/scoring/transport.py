"""The one HTTP helper of the scoring backends, and their error.

Inside a worker's pass (:mod:`workers.scoring.prefetch`) a call is answered from the pass's book
and made asynchronously between passes, never here; outside one (in-process sessions, offline jobs)
it is made at once, blocking, with the same allowlist, timeout, size cap and no redirects.
"""
from __future__ import annotations

import time
import urllib.error
import urllib.request
from typing import Any

import orjson

from workers.errors import LearnstreamError
from workers.scoring import endpoints, prefetch
from workers.scoring.prefetch import ERROR_QUOTE, MAX_ANSWER_BYTES

__all__ = ("ScoringError", "post_json", "DEFAULT_TIMEOUT_S", "ERROR_QUOTE")

# Default per-call timeout in seconds: a scoring server answers a conversation in well under a
# second; anything slower is stalling a worker's partitions.
DEFAULT_TIMEOUT_S = 10.0
_MAX_RESPONSE_BYTES = MAX_ANSWER_BYTES
_CHUNK = 1 << 16


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would carry the API key to wherever it points."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):  # noqa: ANN001, ANN201
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


class ScoringError(LearnstreamError):
    """A scoring call failed (unreachable, timed out, HTTP error, malformed answer).

    The scoring modes log it and skip the score; check the backend's ``base_url``,
    ``model`` and ``tokenizer`` settings (``configure_scoring``) and the server's log.
    """


def post_json(url: str, body: Any, *, timeout_s: float | None = None,
              headers: dict[str, str] | None = None, uses_tokens: bool = True) -> Any:
    """POST ``body`` as JSON and decode the JSON answer; every failure is a ScoringError.

    Only to an allowlisted endpoint (:mod:`workers.scoring.endpoints`), following no redirect.

    In a worker's pass the answer comes from the pass's book, or :class:`~workers.scoring.prefetch.Deferred`
    is raised (the call is noted; ``uses_tokens`` as in :meth:`~workers.scoring.prefetch.CallBook.answer`)
    and the call is made, bounded by ``timeout_s`` as a whole, before the next pass.

    Outside a pass it is made now, blocking: ``timeout_s`` bounds connecting and each read, and
    the whole answer must arrive within it as well (so a call takes at most about twice ``timeout_s``).
    """
    if not endpoints.permits(url):
        raise ScoringError(f"POST {url}: not an allowed scoring endpoint (LEARNSTREAM_SCORING_ENDPOINTS)")
    timeout = DEFAULT_TIMEOUT_S if timeout_s is None else timeout_s
    book = prefetch.current()
    if book is not None:
        ok, value = book.answer(prefetch.Call(url, orjson.dumps(body), timeout, tuple(
            {"Content-Type": "application/json", "Accept": "application/json", **(headers or {})}.items())),
            uses_tokens=uses_tokens)
        if not ok:
            raise ScoringError(value)
        return value
    req = urllib.request.Request(url, data=orjson.dumps(body), method="POST", headers={
        "Content-Type": "application/json", "Accept": "application/json", **(headers or {})})
    deadline = time.monotonic() + timeout
    try:
        with _OPENER.open(req, timeout=timeout) as r:
            chunks, size = [], 0
            while chunk := r.read(_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > _MAX_RESPONSE_BYTES:
                    raise ScoringError(f"POST {url}: answer exceeds {_MAX_RESPONSE_BYTES} bytes")
                if time.monotonic() > deadline:
                    raise ScoringError(f"POST {url}: answer not complete within {timeout:g} s")
    except urllib.error.HTTPError as e:
        detail = e.read(ERROR_QUOTE).decode(errors="replace").strip()
        raise ScoringError(f"POST {url}: HTTP {e.code} {e.reason}" + (f": {detail}" if detail else "")) from None
    except urllib.error.URLError as e:
        raise ScoringError(f"POST {url}: {e.reason}") from None
    except TimeoutError:
        raise ScoringError(f"POST {url}: timed out after {timeout:g} s") from None
    except OSError as e:  # connection reset and the like
        raise ScoringError(f"POST {url}: {e}") from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError as e:
        raise ScoringError(f"POST {url}: answer is not JSON ({e})") from None
