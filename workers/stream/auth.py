"""Who may call a worker's HTTP API, and which sessions they may touch.

Tokens are bearer tokens. The worker never holds them raw: it reads a YAML file (mounted from a
Kubernetes Secret) of their SHA-256 hashes, each with scopes::

    tokens:
      - name: tenant-a-agent          # shown in logs and 403 reasons; the token itself never is
        sha256: 5e884898da28...       # hex SHA-256 of the token (``learnstream token`` prints both)
        read: ["tenant-a/*"]          # session_keys it may read: exact names, or prefixes ending in *
        write: ["tenant-a/*"]         # ... and write (a write scope also allows reading)
      - name: workers
        sha256: 9f86d081884c...
        peer: true                    # the workers' own credential, for forwarded requests only

A token is a random secret with 256 bits of entropy, so a plain SHA-256 is the right hash (a slow
password hash would only cost time per request). Every presented hash is compared against every
stored one with :func:`hmac.compare_digest`, so neither a match nor its position shows in the
timing. The file is re-read when it changes (checked at most once a second), so rotating a Secret
needs no restart; a file that does not parse keeps the previous tokens and logs why.

Scopes are enforced once, at the edge: the worker a client called checks the client's scopes and,
if another worker owns the session, forwards with its own (peer) credential, which the owner
accepts only on forwarded requests.
"""
from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from workers.errors import ConfigError

__all__ = ("Principal", "TokenStore", "Authenticator", "SecretFile", "hash_token", "new_token", "is_loopback",
           "ANONYMOUS")

logger = logging.getLogger(__name__)

# How often a request may stat the token file to notice a rotated Secret.
_RELOAD_CHECK_S = 1.0
_HEX64 = frozenset("0123456789abcdef")


def hash_token(token: str) -> str:
    """The hex SHA-256 that the tokens file stores for ``token``."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_token() -> str:
    """A fresh random token (256 bits, URL-safe)."""
    return "lst_" + secrets.token_urlsafe(32)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _match(patterns: tuple[str, ...], session_key: str) -> bool:
    for p in patterns:
        if p.endswith("*"):
            if session_key.startswith(p[:-1]):
                return True
        elif p == session_key:
            return True
    return False


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: its name and scopes."""

    name: str
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    peer: bool = False
    everything: bool = False  # tokenless mode: no scopes to check

    def may(self, session_key: str, *, writes: bool) -> bool:
        if self.everything:
            return True
        if _match(self.write, session_key):
            return True
        return not writes and _match(self.read, session_key)


ANONYMOUS = Principal("anonymous (authentication off)", everything=True)


def _patterns(entry: dict, key: str, where: str) -> tuple[str, ...]:
    v = entry.get(key, [])
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(p, str) and p for p in v):
        raise ConfigError(f"{where}: {key} must be a list of session_key patterns")
    for p in v:
        if "*" in p[:-1]:
            raise ConfigError(f"{where}: pattern {p!r} may hold * only at its end (a prefix)")
    return tuple(v)


_ENTRY_KEYS = frozenset({"name", "sha256", "read", "write", "peer"})


def parse_tokens(text: str, source: str = "tokens file") -> list[tuple[str, Principal]]:
    """(hash, principal) pairs of a tokens file; ConfigError naming the entry that is wrong."""
    doc = yaml.safe_load(text) or {}
    entries = doc.get("tokens") if isinstance(doc, dict) else None
    if not isinstance(entries, list):
        raise ConfigError(f"{source}: expected a mapping with a `tokens` list")
    if set(doc) != {"tokens"}:  # `peers:` beside it, say: entries that would never count
        raise ConfigError(f"{source}: unknown key {', '.join(repr(str(k)) for k in doc if k != 'tokens')} beside "
                          "`tokens` (the file holds only the `tokens` list)")
    out: list[tuple[str, Principal]] = []
    for i, e in enumerate(entries):
        where = f"{source}: tokens[{i}]"
        if not isinstance(e, dict):
            raise ConfigError(f"{where} must be a mapping")
        h = str(e.get("sha256", "")).lower()
        if len(h) != 64 or not set(h) <= _HEX64:
            raise ConfigError(f"{where}: sha256 must be 64 hex digits (the hash, never the token)")
        unknown = sorted(map(str, set(e) - _ENTRY_KEYS))
        if unknown:  # a typo (`wirte:`) or a wish (`admin: true`) would otherwise pass as a token without it
            raise ConfigError(f"{where}: unknown key {', '.join(map(repr, unknown))} (an entry has "
                              f"{', '.join(sorted(_ENTRY_KEYS))})")
        name = e.get("name") or f"token-{i}"
        if not isinstance(name, str):
            raise ConfigError(f"{where}: name must be a string")
        peer = e.get("peer", False)
        if not isinstance(peer, bool):
            raise ConfigError(f"{where}: peer must be true or false")
        out.append((h, Principal(name, _patterns(e, "read", where), _patterns(e, "write", where), peer=peer)))
    return out


class SecretFile:
    """A small secret file (a token, an API key), re-read when it changes."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._value: str | None = None
        self._checked = 0.0

    def require(self, variable: str) -> None:
        """ConfigError naming ``variable`` when the file is set but cannot be read (at start: a typo in its
        path was an ERROR at the first call that needed it, and every call went without)."""
        if self.path is None:
            return
        try:
            self.path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            why = exc.strerror if isinstance(exc, OSError) else "not text"
            raise ConfigError(f"{variable}={self.path}: cannot be read ({why})") from None

    def get(self) -> str | None:
        if self.path is None:
            return None
        now = time.monotonic()
        if self._value is not None and now - self._checked < _RELOAD_CHECK_S:
            return self._value
        self._checked = now
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if sig != self._sig:
                self._value = self.path.read_text().strip() or None
                self._sig = sig
        except OSError as exc:
            logger.error("cannot read secret file %s: %s", self.path, exc.strerror)
        return self._value


class TokenStore:
    """The tokens file, loaded at start (errors are fatal then) and re-read when it changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._sig: tuple[int, int, int] | None = None
        self._checked = 0.0
        self._entries: list[tuple[bytes, Principal]] = []
        self._load(strict=True)

    def _load(self, strict: bool) -> None:
        try:
            st = os.stat(self.path)
            sig = (st.st_ino, st.st_mtime_ns, st.st_size)
            if sig == self._sig:
                return
            entries = parse_tokens(self.path.read_text(), str(self.path))
        except (OSError, ConfigError, yaml.YAMLError) as exc:
            if strict:
                raise ConfigError(f"LEARNSTREAM_AUTH_TOKENS_FILE: {exc}") from None
            logger.error("tokens file not reloaded, keeping the previous %d tokens: %s", len(self._entries), exc)
            return
        self._entries = [(h.encode(), p) for h, p in entries]
        self._sig = sig
        if entries or strict:  # at start, an empty file is the Authenticator's warning
            logger.info("tokens file %s: %d tokens", self.path, len(entries))
        else:
            logger.warning("tokens file %s now lists no tokens: every request that needs one is answered 401",
                           self.path)

    def __len__(self) -> int:
        return len(self._entries)

    def lookup(self, token: str) -> Principal | None:
        now = time.monotonic()
        if now - self._checked >= _RELOAD_CHECK_S:
            self._checked = now
            self._load(strict=False)
        h = hash_token(token).encode()
        found = None
        for stored, principal in self._entries:  # no early exit: the time does not depend on which matched
            if hmac.compare_digest(h, stored):
                found = principal
        return found


class Authenticator:
    """The worker's authentication mode, decided once at start from the settings."""

    def __init__(self, settings: Any, *, quiet: bool = False) -> None:
        """``quiet``: the mode's warnings are kept in ``notices`` for :meth:`warn` (a worker checks its settings
        before it starts the embedded broker, whose address must stay its first line)."""
        bind = settings.web_bind or settings.web_host
        self.store: TokenStore | None = None
        self.peer_token = SecretFile(settings.peer_token_file)
        self.notices: list[str] = []
        mode = settings.auth
        if mode == "tokens" or (mode == "auto" and settings.auth_tokens_file is not None):
            if settings.auth_tokens_file is None:
                raise ConfigError("LEARNSTREAM_AUTH=tokens needs LEARNSTREAM_AUTH_TOKENS_FILE")
            self.store = TokenStore(settings.auth_tokens_file)
            if not len(self.store):
                self.notices.append(f"LEARNSTREAM_AUTH_TOKENS_FILE={settings.auth_tokens_file} lists no tokens: "
                                    "every request that needs a token is answered 401 until it does")
            try:  # a warning, not a refusal: one worker alone never forwards (a chart secret without the key)
                self.peer_token.require("LEARNSTREAM_PEER_TOKEN_FILE")
            except ConfigError as exc:
                self.notices.append(f"{exc}: requests for sessions another worker owns cannot be forwarded (they "
                                    "answer 503) until it can")
            else:
                token = self.peer_token.get()
                found = self.store.lookup(token) if token else None
                if settings.peer_token_file is not None and not token:
                    self.notices.append(f"LEARNSTREAM_PEER_TOKEN_FILE={settings.peer_token_file} is empty: requests "
                                        "for sessions another worker owns cannot be forwarded (they answer 503)")
                elif token and (found is None or not found.peer):
                    # pods went Ready and ~(N-1)/N of requests answered 503, with an ERROR per forward only
                    self.notices.append(
                        f"the token in LEARNSTREAM_PEER_TOKEN_FILE={settings.peer_token_file} is "
                        f"{'not in' if found is None else 'not a peer: true entry of'} the tokens file: other workers "
                        "refuse this worker's forwards (they answer 503); add its entry with `learnstream token "
                        "--name workers --peer --add-to` (README, Security)")
            if settings.peer_token_file is None:
                self.notices.append("no LEARNSTREAM_PEER_TOKEN_FILE: requests for sessions another worker owns "
                                    "cannot be forwarded (they answer 503)")
        elif mode == "off":
            self.notices.append(f"authentication is OFF (LEARNSTREAM_AUTH=off): anyone who reaches {bind} may read "
                                "and write every session")
        elif is_loopback(bind):
            self.notices.append(f"authentication is off: no LEARNSTREAM_AUTH_TOKENS_FILE; listening on loopback "
                                f"{bind} only")
        else:
            raise ConfigError(f"refusing to listen on {bind} without tokens: set LEARNSTREAM_AUTH_TOKENS_FILE "
                              "(README, Security), or LEARNSTREAM_AUTH=off to run without authentication")
        if not quiet:
            self.warn()

    def warn(self) -> None:
        """Log the mode's warnings (authentication off, no tokens, no peer credential) as one record: WARNINGs
        of one call site are rate-limited (workers/stream/logs.py), which dropped a second one."""
        if self.notices:
            logger.warning("%s", "; and ".join(self.notices))

    @property
    def enabled(self) -> bool:
        return self.store is not None

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The caller of a request with this ``Authorization`` header, or None (answer 401)."""
        if self.store is None:
            return ANONYMOUS
        if not authorization:
            return None
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None
        return self.store.lookup(token.strip())

    def peer_headers(self) -> dict[str, str]:
        """What a forwarding worker sends to prove it is one (empty when authentication is off)."""
        if self.store is None:
            return {}
        token = self.peer_token.get()
        return {"Authorization": f"Bearer {token}"} if token else {}
