"""The JSON verb surface ``{verb, body} -> {ok, verb, data|error}`` (spec: cores.md, Envelope).

Everything a caller of verbs needs, in one place: the registry (every verb module is imported
here, so importing this module registers every verb), request parsing, session-key checks,
:func:`run_verb` and the envelopes, and the built-in verbs (``health``, ``session_info`` and its
siblings). The worker (``workers.stream``) runs :func:`run_verb` on events from topics; HTTP
``/dispatch``, ``learnstream dispatch`` and the in-process :class:`~workers.verbs.session.LearnSession`
speak the same envelope.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import re
from collections.abc import Callable
from typing import Any

# Every module that registers verbs: imported for that side effect, so REGISTRY is complete
# once this module is.
import workers.cores.attention  # noqa: F401
import workers.cores.deep  # noqa: F401
import workers.cores.instant  # noqa: F401
import workers.cores.loop  # noqa: F401
import workers.cores.router  # noqa: F401
import workers.cores.temporal  # noqa: F401
import workers.online.verbs  # noqa: F401
import workers.protocols.verbs  # noqa: F401
import workers.scoring.verbs  # noqa: F401
from workers.errors import ValidationError, VerbError
from workers.protocols.similarity import matcher_from_spec
from workers.protocols.verbs import set_matcher
from workers.scoring import endpoints as scoring_endpoints
from workers.state import StateBlob
from workers.state.layout import digest
from workers.verbs.codec import decode_json, json_type
from workers.verbs.registry import BLOB_TABLES, HEALTH, REGISTRY, Verb, VerbContext, VerbOptions, keys_table, params, verb

__all__ = ("REGISTRY", "BLOB_TABLES", "keys_table", "Verb", "VerbContext", "VerbOptions", "DEFAULT_SESSION", "configure",
           "run_verb", "parse_request", "session_key_of", "check_session_key", "envelope_error", "envelope_ok",
           "decode_json", "shown_verb")

DEFAULT_SESSION = "default"


def configure(options: VerbOptions, scoring_api_key: Callable[[], str | None] | None = None) -> None:
    """Apply the process-wide part of ``options`` (a worker or CLI does, once, from its Settings): the
    scoring allowlist with what reads the key sent to it, and the protocols' strategy matcher.
    Until then nothing may be scored remotely and strategies match by word overlap."""
    scoring_endpoints.configure(options.scoring_endpoints, scoring_api_key)
    set_matcher(matcher_from_spec(options.protocols_embedder))


# The store separates key parts with \x1f: a session key holding it could read another session's keys.
_SESSION_KEY_MAX = 256
_CONTROL = re.compile("[\x00-\x1f]")


def check_session_key(sk: object) -> str:
    """A usable session key, or VerbError saying why not."""
    if not isinstance(sk, str) or not sk:
        raise VerbError("session_key must be a non-empty string")
    if sk.isspace():  # as a blank id, agent or task is refused (an outside trial's "   " was a session)
        raise VerbError("session_key is blank (a key needs a character other than whitespace)")
    if len(sk) > _SESSION_KEY_MAX or _CONTROL.search(sk):
        raise VerbError(f"session_key must be at most {_SESSION_KEY_MAX} characters without control characters")
    return sk


def session_key_of(body: dict, default: str = DEFAULT_SESSION) -> str:
    return check_session_key(body.get("session_key", default))


def shown_verb(name: str) -> str:
    """An unknown verb's name as an error shows it: cut after 64 characters (an outside trial's 100,000-
    character name came back twice in a 200 kB answer)."""
    return name if len(name) <= 64 else f"{name[:64]}... ({len(name)} characters)"


def envelope_error(verb_name: str, error: str) -> dict:
    return {"ok": False, "verb": verb_name, "error": error}


def run_verb(v: Verb, ctx: VerbContext, body: dict) -> dict:
    """Run one verb; errors become the envelope's ``error`` (absent fields omitted)."""
    try:
        data = v.fn(ctx, body)
    except (VerbError, ValidationError) as exc:
        return envelope_error(v.name, str(exc))
    if v.name.startswith("init_") and v.params is not None and isinstance(data, dict):
        ignored = unknown_fields(v, body)
        if ignored:
            data = {**data, "ignored_fields": ignored}
    return envelope_ok(v.name, data)


_logger = logging.getLogger(__name__)


def unknown_fields(v: Verb, body: dict) -> list[str]:
    """The body's fields that ``v``'s schema does not name (``session_key`` is every verb's).

    Bodies may carry extra fields (a host's own), so they are not refused; but a settings verb
    that silently dropped a misspelt option (``lambda`` for ``cost_weight``) would answer as if
    the default were asked for. Its reply names them (``ignored_fields``) and the log warns,
    as a Kafka client does of a config it does not know."""
    known = v.params["properties"] if v.params is not None else {}
    out = sorted(k for k in body if k not in known and k != "session_key")
    if out:
        _logger.warning("%s: ignored unknown field(s) %s (known: %s)", v.name, ", ".join(out), ", ".join(sorted(known)))
    return out


def envelope_ok(verb_name: str, data: Any) -> dict:
    out = {"ok": True, "verb": verb_name}
    if data is not None:
        out["data"] = data
    return out


def parse_request(request: Any) -> tuple[str, dict] | dict:
    """(verb, body) or an error envelope."""
    if not isinstance(request, dict):
        return envelope_error("?", "parse: request must be a JSON object")
    if "verb" not in request:
        return envelope_error("?", "parse: missing field `verb`")
    name = request["verb"]
    if not isinstance(name, str):
        return envelope_error("?", f"parse: field `verb` must be a string, got {json_type(name)}")
    body = request.get("body")
    if body is None:
        body = {}  # a missing body is null: every required field then reports "<field> required"
    elif not isinstance(body, dict):
        # as on a topic (the DLQ's "body: must be a JSON object"): a string, an array or a number is not
        # a body with no fields, and a write must not be applied to the default session as if it were
        return envelope_error(name, f"parse: body must be a JSON object, got {json_type(body)}")
    if name not in REGISTRY:
        return envelope_error(shown_verb(name), f"unknown verb: {shown_verb(name)}")
    return name, body


@verb("health", table="session", writes=False, params=params())
def _health(ctx: VerbContext, body: dict) -> dict:
    out: dict = {}
    for table, fn in HEALTH:
        state = ctx.state if table == "session" else ctx.load(table) if ctx.load else StateBlob()
        out.update(fn(dataclasses.replace(ctx, state=state)))
    return out


@verb("memory_info", table="memory", writes=False)
@verb("agent_info", table="agent", writes=False)
@verb("learner_info", table="learner", writes=False)
@verb("session_info", table="session", writes=False)
def _session_info(ctx: VerbContext, body: dict) -> dict:
    """What a session's state holds: parts with sizes and digests, the digest over all of the
    session's keys in key order, and the applied-offset watermark.

    Two workers (or a worker before and after a crash) hold the same state iff these are equal
    (``digest`` and ``parts`` leave the watermark out: an in-process session has none).
    ``session_info`` reads the learning-loop value; ``learner_info``, ``agent_info`` and ``memory_info``
    the online learner's, the agent protocols' and the memory scoring's.
    """
    blob = ctx.state
    parts = {}
    for name in blob.names():
        live = blob._live.get(name)
        b = live.to_bytes() if live is not None else blob.raw(name)  # canonical bytes, decoded or not
        parts[name] = {"bytes": len(b), "sha256": hashlib.sha256(b).hexdigest()}
    sha, n = digest(blob)
    return {"parts": parts, "digest": sha, "keys": n, "watermark": dict(sorted(blob.watermark.offsets.items()))}
