"""Topics are contracts: ``topics/*.yaml`` is the only place a topic name is written.

Each file gives a topic's role (how code refers to it), name, key, partitions,
cleanup policy, retention, the JSON Schema of its value and one valid example.
Code asks for ``topics()["feedback"].name``; ``learnstream topics create`` provisions them.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import best_match
from referencing import Registry
from referencing.exceptions import Unresolvable
from referencing.jsonschema import DRAFT202012

from workers.errors import ConfigError, ValidationError

__all__ = ("Topic", "topics", "topics_dir", "use_folder", "input_topics", "by_name", "body_schema", "check")

KINDS = ("input", "downstream", "dlq")

# "integer" as the verbs read it: a JSON integer, not a float with no fraction. JSON Schema counts 2.0 as
# an integer, so `learnstream produce` and the SDK passed `label: 2.0` that the worker then refused (an
# outside trial); now both refuse it, with the schema's own words.
_StrictIntegers = validators.extend(Draft202012Validator, type_checker=Draft202012Validator.TYPE_CHECKER.redefine(
    "integer", lambda _checker, v: isinstance(v, int) and not isinstance(v, bool)))


def _closest_branch(err: Any, root: dict) -> Any:
    """For a ``oneOf`` / ``anyOf`` that no branch matched ("... is not valid under any of the given
    schemas", naming no field), the error of the branch that came closest: the one that requires or
    declares the most of the event's fields, then the one with the fewest errors (an outcome without ``strategy`` is
    a single outcome missing a field, not an envelope missing ``outcomes``)."""
    resolver = Registry().with_resource("", DRAFT202012.create_resource(root)).resolver()
    while err.validator in ("oneOf", "anyOf") and err.context:
        branches = err.schema.get(err.validator, []) if isinstance(err.schema, dict) else []
        given = set(err.instance) if isinstance(err.instance, dict) else set()
        by_branch: dict[Any, list] = {}
        for e in err.context:
            by_branch.setdefault(e.relative_schema_path[0] if e.relative_schema_path else None, []).append(e)

        def fit(item: tuple[Any, list]) -> tuple[int, int]:
            i, errors = item
            b = branches[i] if isinstance(i, int) and i < len(branches) and isinstance(branches[i], dict) else {}
            ref = b.get("$ref")
            if isinstance(ref, str):  # a definition ("#/$defs/event"), resolved as the validator does
                try:
                    node = resolver.lookup(ref)
                    b = node.contents if isinstance(node.contents, dict) else {}
                except Unresolvable:
                    b = {}
            return -len(given & set(b.get("required", ())) | given & set(b.get("properties", {}))), len(errors)

        closest = min(by_branch.items(), key=fit)[1]
        nxt = best_match(closest)
        if nxt is None:
            break
        err = nxt
    return err


def check(schema: dict, value: Any, validator: Draft202012Validator | None = None) -> None:
    """Raise ValidationError naming the field and the rule of ``schema`` that ``value`` breaks (integers
    typed strictly, as the verbs read them); ``validator``: one already built for ``schema``."""
    if validator is None:
        validator = _StrictIntegers(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)
    err = best_match(validator.iter_errors(value))
    if err is not None:
        err = _closest_branch(err, schema)
        parts = [str(p) for p in err.absolute_path]
        if err.validator == "required" and isinstance(err.instance, dict):  # name the missing field itself
            parts += [f for f in err.validator_value if f not in err.instance][:1]
        message = err.message
        if err.validator == "pattern" and err.validator_value == r"\S":  # the schemas' "not blank"
            message = f"{err.instance!r} is blank (a name needs a character other than whitespace)"
        raise ValidationError(".".join(parts), _short_message(message, err.instance))


@dataclass(frozen=True)
class Topic:
    role: str
    name: str
    kind: str
    key: str
    partitions: int | None          # None: the app's partition count (co-partitioned inputs)
    cleanup_policy: str
    retention_ms: int
    description: str
    schema: dict
    example: Any
    verb: str | None = None         # the verb that applies an event of this topic
    ops: dict[str, str] = field(default_factory=dict)  # op field -> verb (graph.edges)

    @functools.cached_property
    def validator(self) -> Draft202012Validator:
        return _StrictIntegers(self.schema, format_checker=Draft202012Validator.FORMAT_CHECKER)

    def validate(self, value: Any) -> None:
        """Raise ValidationError naming the field and the broken rule."""
        check(self.schema, value, self.validator)

    # -- the topic <-> verb mapping (the only place it is written) --------------------------------
    def request(self, value: dict) -> tuple[Any, Any]:
        """(verb name, body) an event of this topic asks for: the topic's verb with the event as body,
        the verb of the event's ``op`` (``ops``), or the event's own ``{verb, body}`` (``commands``).

        ValueError names what is missing; the caller still checks that the verb exists.
        """
        if self.verb:
            return self.verb, value
        if self.ops:
            op = value.get("op")
            if op not in self.ops:
                raise ValueError(f"op: must be one of {sorted(self.ops)}, got {op!r}")
            return self.ops[op], {k: v for k, v in value.items() if k != "op"}
        name, body = value.get("verb"), value.get("body")
        if not isinstance(name, str):
            raise ValueError("verb: required, a string")
        if body is None:
            body = {}
        if not isinstance(body, dict):
            raise ValueError("body: must be a JSON object")
        return name, body

    def event(self, verb_name: str, body: dict) -> dict:
        """The event of this topic that :meth:`request` reads back as (``verb_name``, ``body``)."""
        if self.verb == verb_name:
            return body
        for op, name in self.ops.items():
            if name == verb_name:
                return {"op": op, **body}
        return {"verb": verb_name, "body": body}

    def config(self) -> dict[str, str]:
        """Kafka topic configs for creation."""
        return {"cleanup.policy": self.cleanup_policy, "retention.ms": str(self.retention_ms)}


# Set from Settings.topics_dir (LEARNSTREAM_TOPICS_DIR) by the CLI and the worker; None: the package's.
_FOLDER: Path | None = None


def use_folder(folder: Path | None) -> None:
    """Load topics from ``folder`` (None: the ones shipped in the package, or a checkout's topics/).
    ConfigError when it holds none: a folder set and not found was silently the package's."""
    global _FOLDER
    if folder is not None and not (folder.is_dir() and any(folder.glob("*.yaml"))):
        raise ConfigError(f"LEARNSTREAM_TOPICS_DIR={folder}: no topics/*.yaml there")
    _FOLDER = folder


def topics_dir() -> Path:
    candidates = [_FOLDER] if _FOLDER is not None else []
    package = Path(__file__).resolve().parent.parent  # workers/: a wheel holds workers/topics, a checkout topics/
    candidates += [package / "topics", package.parent / "topics"]
    for c in candidates:
        if c.is_dir() and any(c.glob("*.yaml")):
            return c
    raise ConfigError("topics/*.yaml not found; set LEARNSTREAM_TOPICS_DIR to the folder holding them")


# libyaml's parser when PyYAML has it: the pure-Python one took ~1.7 s of a loaded worker's start-up
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load(path: Path) -> Topic:
    d = yaml.load(path.read_text(), Loader=_LOADER)  # noqa: S506 - a safe loader (C or Python)
    missing = {"role", "name", "kind", "key", "cleanup_policy", "retention_ms", "schema", "example"} - set(d)
    if missing:
        raise ConfigError(f"{path.name}: missing {sorted(missing)}")
    if d["kind"] not in KINDS:
        raise ConfigError(f"{path.name}: kind must be one of {KINDS}")
    return Topic(role=d["role"], name=d["name"], kind=d["kind"], key=d["key"], partitions=d.get("partitions"),
                 cleanup_policy=d["cleanup_policy"], retention_ms=int(d["retention_ms"]),
                 description=str(d.get("description", "")).strip(), schema=d["schema"], example=d["example"],
                 verb=d.get("verb"), ops=dict(d.get("ops") or {}))


@functools.lru_cache(maxsize=None)
def _topics(folder: str) -> dict[str, Topic]:
    out: dict[str, Topic] = {}
    for p in sorted(Path(folder).glob("*.yaml")):
        t = _load(p)
        if t.role in out:
            raise ConfigError(f"topic role {t.role!r} defined twice")
        out[t.role] = t
    return out


def topics() -> dict[str, Topic]:
    """All topics by role."""
    return _topics(str(topics_dir()))


def input_topics() -> list[Topic]:
    return [t for t in topics().values() if t.kind == "input"]


def by_name(name: str) -> Topic:
    for t in topics().values():
        if t.name == name:
            return t
    raise KeyError(name)


def body_schema(v: Any) -> dict:
    """The JSON Schema of verb ``v``'s body (a ``workers.verbs.registry.Verb``): its topic's schema when the
    verb is applied from its own topic, the topic's branch for the verb's ``op``, else its ``params``."""
    t = topics()[v.topic] if v.topic else None
    if t is not None and t.verb == v.name:
        return {"type": "object", **{k: val for k, val in t.schema.items() if k != "$schema"}}
    if t is not None and v.name in t.ops.values():
        op = next(o for o, name in t.ops.items() if name == v.name)
        for branch in t.schema.get("allOf", []):
            if branch.get("if", {}).get("properties", {}).get("op", {}).get("const") == op:
                return {"type": "object", "$defs": t.schema.get("$defs", {}), **branch["then"]}
        raise LookupError(f"{t.name}: no schema branch for op {op!r}")
    if v.params is not None:
        return v.params
    return {"type": "object"}


# jsonschema's messages repeat the offending value ("[...] is too long"): an envelope of 1,001 events made an
# 80 kB error. Past this length the value is described instead.
_MESSAGE_MAX = 200


def _short_message(message: str, instance: Any) -> str:
    if len(message) <= _MESSAGE_MAX:
        return message
    if isinstance(instance, list):
        what = f"an array of {len(instance)} items"
    elif isinstance(instance, dict):
        what = f"an object of {len(instance)} fields"
    elif isinstance(instance, str):
        what = f"a string of {len(instance)} characters"
    else:
        what = repr(instance)[:60]
    text = repr(instance)
    message = message.replace(text, what) if text in message else message
    return message if len(message) <= _MESSAGE_MAX else message[:_MESSAGE_MAX] + "..."
