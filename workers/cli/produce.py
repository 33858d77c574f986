"""Checking one line of ``learnstream produce`` input before anything is sent.

A line is sent only when it is a JSON object that passes its topic's schema; otherwise
the caller reports the reason with the line number and sends nothing for it.
"""
from __future__ import annotations

from workers.verbs.codec import has_non_finite, json_type, loads
from workers.verbs.surface import DEFAULT_SESSION, REGISTRY, check_session_key, shown_verb
from workers.errors import ValidationError, VerbError
from workers.kafka.topics import body_schema, check, topics

__all__ = ("check_line",)


def check_line(role: str, line: str | bytes, *, key: str | None = None,
               validate: bool = True) -> tuple[str, dict] | str:
    """(session_key, value to send) of one input line, or the reason it must not be sent.

    ``key`` overrides the session key (else the value's ``session_key``, or its body's for
    commands, else ``"default"``). ``validate=False`` skips the schema (to exercise the DLQ)
    but still needs a JSON object, since the message key is read from it.
    """
    try:
        value = loads(line)  # 1e400 is an infinity, as a worker reads it ...
    except ValueError as exc:
        return f"not JSON: {exc}"
    if has_non_finite(value):  # ... but the SDK, which sends the line, writes no infinity (README)
        return "a number beyond a double's range (as 1e400): write the finite value the field should take"
    if not isinstance(value, dict):
        return f"a value must be a JSON object, got {json_type(value)}"
    body = value.get("body") if role == "commands" else None
    own = value.get("session_key") if role != "commands" else (body.get("session_key") if isinstance(body, dict)
                                                                else None)
    if key and own is not None and own != key:
        return f"session_key {own!r} differs from --key {key!r}"
    sk = key or (DEFAULT_SESSION if own is None else own)  # "" is refused below, as over HTTP: not "default"
    try:
        sk = check_session_key(sk)
    except VerbError as exc:
        return str(exc)
    if role == "commands":
        if not isinstance(body, dict):
            body = {} if body is None else body
        if isinstance(body, dict):
            value = {**value, "body": {**body, "session_key": sk}}
    else:
        value = {**value, "session_key": sk}
    if validate:
        try:
            topics()[role].validate(value)
        except ValidationError as exc:
            return f"schema of {topics()[role].name}: {exc}"
        if role == "commands":  # the topic takes any body: the verb's own schema says what it needs
            v = REGISTRY.get(value["verb"])
            if v is None:
                return f"unknown verb: {shown_verb(value['verb'])}"
            if not v.writes:
                return f"verb {v.name} is a read; send reads to HTTP /dispatch (learnstream dispatch)"
            try:  # a null field is an absent one to the verbs (the schemas name no nulls)
                check(body_schema(v), {k: x for k, x in value["body"].items() if x is not None})
            except ValidationError as exc:
                return f"schema of {v.name}'s body: {exc}"
    return sk, value
