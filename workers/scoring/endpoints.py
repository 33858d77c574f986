"""The operator's allowlist of scoring endpoints: the only places a worker sends a scoring call.

A session's ``configure_scoring`` names a ``base_url`` (and maybe a ``tokenizer_url``); both must
lie at or under an endpoint the operator listed in ``LEARNSTREAM_SCORING_ENDPOINTS``
(:attr:`~workers.stream.settings.Settings.scoring_endpoints`), else the verb is refused. Every call
checks again (a configuration applied from the log before the allowlist changed is not trusted),
follows no redirect, and carries the scoring API key only to an allowlisted endpoint.

"At or under" compares scheme, host and port exactly, and the path by whole segments:
``http://vllm:8000/v1`` admits ``http://vllm:8000/v1`` and ``http://vllm:8000/v1/x``, never
``http://vllm:8000/v10``, ``http://vllm:8000.evil/v1`` or a URL with user info.
"""
from __future__ import annotations

import urllib.parse
from collections.abc import Callable, Iterable

from workers.errors import VerbError

__all__ = ("configure", "allowed", "check_url", "usable", "permits", "api_key")

# Empty until configured from Settings (``workers.verbs.surface.configure``): nothing is allowed.
_ENDPOINTS: tuple[str, ...] = ()
_API_KEY: Callable[[], str | None] | None = None


def configure(endpoints: Iterable[str], api_key: Callable[[], str | None] | None = None) -> None:
    """Set this process's allowlist and what reads the key sent to it (Settings.scoring_api_key_reader)."""
    global _ENDPOINTS, _API_KEY
    _ENDPOINTS = tuple(u.rstrip("/") for u in endpoints)
    _API_KEY = api_key


def allowed() -> tuple[str, ...]:
    return _ENDPOINTS


def _parts(url: str) -> tuple[str, str, int | None, list[str]] | None:
    try:
        u = urllib.parse.urlsplit(url)
        port = u.port
    except ValueError:
        return None
    if u.scheme not in ("http", "https") or not u.hostname or u.username or u.password:
        return None
    return u.scheme, u.hostname.lower(), port, [p for p in u.path.split("/") if p]


def usable(url: str) -> bool:
    """Whether ``url`` can be an allowlist entry at all (http or https, a host, no credentials, a valid
    port): one that cannot never permits a call."""
    return _parts(url) is not None


def permits(url: str) -> bool:
    """Whether ``url`` lies at or under an allowlisted endpoint."""
    got = _parts(url)
    if got is None:
        return False
    for e in allowed():
        want = _parts(e)
        if want is not None and got[:3] == want[:3] and got[3][: len(want[3])] == want[3]:
            return True
    return False


def check_url(url: str, field: str) -> str:
    """``url`` if the operator allows it, else VerbError naming the field (and not echoing other URLs)."""
    if not permits(url):
        raise VerbError(f"{field} is not an allowed scoring endpoint; the operator lists those in "
                        "LEARNSTREAM_SCORING_ENDPOINTS")
    return url


def api_key(url: str) -> str | None:
    """The scoring API key for a call to ``url``: only when the URL is allowlisted."""
    if not permits(url):
        return None
    return _API_KEY() if _API_KEY is not None else None
