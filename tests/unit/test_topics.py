"""Topics are contracts: every example validates, every schema refuses typical bad values."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from workers.verbs.surface import REGISTRY
from workers.errors import ValidationError
from workers.kafka.topics import input_topics, topics

ALL = sorted(topics())


@pytest.mark.parametrize("role", ALL)
def test_example_is_valid(role: str) -> None:
    t = topics()[role]
    t.validate(t.example)


BAD = {
    "feedback": [{}, {"model": "m", "quality": 1.5, "embedding": [1.0]}, {"model": "m", "quality": 0.5},
                 {"model": "", "quality": 0.5, "embedding": [1.0]}, {"model": "m", "quality": "x", "embedding": [1]},
                 {"model": "m", "quality": 0.5, "embedding": ["a"]},
                 {"session_key": "s", "events": []}, {"session_key": "s", "events": [{"model": "m"}]},
                 # an event's own field beside an envelope's events (the verb refuses it too)
                 {"session_key": "s", "now_ms": 5,
                  "events": [{"model": "m", "quality": 0.5, "embedding": [1.0]}]},
                 # both forms of one embedding
                 {"model": "m", "quality": 0.5, "embedding": [1.0], "embedding_b64": "AACAPw=="}],
    "loss": [{}, {"loss": "high"}, {"loss": None}],
    "gradients": [{}, {"param_id": "p", "params": [1.0]}, {"param_id": "p", "params": ["a"], "grads": [1.0]},
                  {"param_id": " ", "params": [1.0], "grads": [1.0]},
                  {"param_id": "p" * 257, "params": [1.0], "grads": [1.0]}],
    "edges": [{}, {"op": "upsert"}, {"op": "insert"}, {"op": "insert", "edge": {"id": "a,b", "src": "x", "dst": "y",
                                                                              "valid_at": 1, "created_at": 1}},
              {"op": "insert", "edge": {"id": "e", "src": "x", "dst": "y", "created_at": 1}},
              {"op": "invalidate", "edge_id": "e"}, {"op": "contradict", "edge": {"id": "e"}},
              {"op": "insert", "edge": {"id": "e", "src": "  ", "dst": "y", "valid_at": 1, "created_at": 1}},
              {"op": "insert", "edge": {"id": "e" * 1025, "src": "x", "dst": "y", "valid_at": 1, "created_at": 1}}],
    "examples": [{}, {"features": [1.0]}, {"features": [1.0], "label": -1}, {"features": "x", "label": 1},
                 {"session_key": "s", "examples": []}],
    "commands": [{}, {"verb": ""}, {"verb": "x", "body": []}],
    "outcomes": [{}, {"id": "o", "agent": "a", "task": "t", "success": "yes", "strategy": "s"}],
    "memory": [{}, {"conversation_id": "c", "messages": [{"role": "robot", "content": "x"}]}],
    "boundaries": [{}, {"id": "", "session_key": "s"}],
    "consolidations": [{"session_key": "s"}],
    "drift": [{"id": "x"}],
    "heuristics": [{"id": "x", "session_key": "s", "confidence": 2}],
    "scores": [{"id": "x", "session_key": "s", "score": -1}],
    "finetune": [{"id": "x", "session_key": "s", "divergence": -0.5}],
    "dlq": [{}, {"id": "x", "reason": "r", "reason_code": "because", "source": {"topic": "t", "partition": 0,
                                                                              "offset": 0}, "value_b64": None}],
}


@pytest.mark.parametrize("role,bad", [(r, b) for r, bs in BAD.items() for b in bs])
def test_schema_refuses_bad_value_naming_the_rule(role: str, bad: dict) -> None:
    with pytest.raises(ValidationError) as exc:
        topics()[role].validate(bad)
    assert exc.value.rule


def test_every_topic_has_bad_value_cases() -> None:
    assert set(BAD) == set(ALL)


def test_inputs_are_co_partitioned_and_keyed_by_session() -> None:
    for t in input_topics():
        assert t.partitions is None, f"{t.name}: inputs take the app's partition count"
        assert t.key == "session_key"


def test_topic_verbs_are_registered_write_verbs() -> None:
    reg = REGISTRY
    for t in input_topics():
        for name in ([t.verb] if t.verb else []) + list(t.ops.values()):
            assert name in reg and reg[name].writes, f"{t.name} -> {name}"
            assert reg[name].topic == t.role, f"{name} travels through {reg[name].topic}, not {t.role}"


def test_every_write_verb_has_a_topic() -> None:
    for v in REGISTRY.values():
        if v.writes:
            assert v.topic in topics(), f"{v.name}: unknown topic role {v.topic}"


def test_no_topic_name_is_hard_coded_in_the_code() -> None:
    names = {t.name for t in topics().values()}
    root = Path(__file__).resolve().parents[2] / "workers"
    for path in root.rglob("*.py"):
        text = path.read_text()
        for n in names:
            assert not re.search(rf"[\"']{re.escape(n)}[\"']", text), f"{n} hard-coded in {path}"


def test_the_dlq_schema_names_every_reason_code_the_worker_writes() -> None:
    """topics/dlq.yaml's reason_code enum is the worker's list (an outside trial found too_large and
    wrong_partition in the README and the metrics but not in the schema); an entry with another code is a bug."""
    from workers.stream.processor import DLQ_REASONS, dlq_entry
    from workers.stream.records import Record

    assert topics()["dlq"].schema["properties"]["reason_code"]["enum"] == list(DLQ_REASONS)
    rec = Record("learn.loss", 0, 1, b"s", b"{}")
    for code in DLQ_REASONS:
        topics()["dlq"].validate(dlq_entry(rec, "why", code).value)
    with pytest.raises(ValueError, match="not one of"):
        dlq_entry(rec, "why", "mystery")


@pytest.mark.parametrize(("role", "value", "field", "words"), [
    ("feedback", {"session_key": "", "embedding": [0.1], "model": "m", "quality": 0.5}, "session_key", "non-empty"),
    ("feedback", {"session_key": "s", "embedding": [0.1], "quality": 0.5}, "model", "required"),
    ("outcomes", {"session_key": "s", "agent": "a", "task_type": "t", "success": True}, "id", "required"),
    ("outcomes", {"session_key": "s", "outcomes": [{"agent": "a"}]}, "outcomes.0.id", "required"),
])
def test_a_topic_with_alternative_forms_names_the_field_of_the_closest_form(role: str, value: dict, field: str,
                                                                           words: str) -> None:
    """An outside trial: feedback and outcome events (an event or an envelope: ``oneOf``) were refused with
    "... is not valid under any of the given schemas" and no field; the README says the field is named."""
    with pytest.raises(ValidationError) as e:
        topics()[role].validate(value)
    assert e.value.field == field and words in str(e.value), str(e.value)


def test_a_refused_large_value_is_described_not_repeated_in_the_error() -> None:
    """An outside trial: an envelope of 1,001 outcomes made the SDK raise an 80 kB ValidationError repeating
    the whole value before "is too long"."""
    ev = {"id": "o1", "agent": "a", "task": "t", "success": True, "strategy": "s"}
    with pytest.raises(ValidationError) as e:
        topics()["outcomes"].validate({"session_key": "s", "outcomes": [ev] * 1001})
    assert e.value.field == "outcomes" and str(e.value) == "outcomes: an array of 1001 items is too long"
    with pytest.raises(ValidationError) as e:
        topics()["outcomes"].validate({"session_key": "s", "outcomes": [dict(ev, task="x" * 100_000)]})
    assert str(e.value) == "outcomes.0.task: a string of 100000 characters is too long"


@pytest.mark.parametrize("role", ["loss", "gradients", "memory", "feedback", "examples", "outcomes"])
def test_now_ms_past_the_verbs_range_breaks_the_topic_schema(role: str) -> None:
    """An outside trial: now_ms 2^63 went to the DLQ as ``refused`` (the verb's range check) and -1 as
    ``invalid`` (the schema's): the schema now carries the verbs' range (fields.MAX_MS), so both are invalid."""
    from workers.verbs.fields import MAX_MS

    schema = topics()[role].schema
    found = []

    def walk(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("now_ms"), dict):
                found.append(node["now_ms"])
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(schema)
    assert found and all(f["maximum"] == MAX_MS and f["minimum"] == 0 for f in found), found


@pytest.mark.parametrize(("value", "field", "words"), [
    # JSON Schema counts 2.0 as an integer; the verbs do not: `learnstream produce` passed it, the worker refused it
    ({"session_key": "s", "features": [0.1], "label": 2.0}, "label", "is not of type 'integer'"),
    ({"session_key": "s", "features": [0.1], "label": 1, "now_ms": 1.0}, "now_ms", "is not of type 'integer'"),
    ({"session_key": "s", "features": [0.1], "label": 1, "task": "t" * 257}, "task", "is too long"),
    ({"session_key": "s", "features": [0.1], "label": 1, "task": ""}, "task", "should be non-empty"),
])
def test_the_examples_topic_refuses_what_the_learner_refuses(value: dict, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as e:
        topics()["examples"].validate(value)
    assert e.value.field == field and words in str(e.value), str(e.value)
    ok = {**value, "label": 1, "task": "t" * 256}
    ok.pop("now_ms", None)
    topics()["examples"].validate(ok)


def test_a_blank_name_in_an_outcome_is_refused_by_the_schema_as_by_the_verb() -> None:
    ev = {"session_key": "s", "id": "o1", "agent": "a", "task": "t", "success": True, "strategy": "x"}
    for field in ("id", "agent", "task", "strategy"):
        with pytest.raises(ValidationError) as e:
            topics()["outcomes"].validate({**ev, field: "  "})
        assert e.value.field == field and "is blank" in str(e.value), str(e.value)
    topics()["outcomes"].validate({**ev, "strategy": " x "})


def test_every_envelope_array_of_a_topic_is_its_verbs_declared_envelope() -> None:
    """The worker counts an envelope's events through ``Verb.envelope``: a topic whose schema carries
    several events in an array must name that array on its verb (and a declared one must exist)."""
    seen = set()
    for t in topics().values():
        if not t.verb:
            continue
        v = REGISTRY[t.verb]
        # the envelope form: a branch of the topic's oneOf that requires an array of the single form's $defs
        arrays = {name for branch in t.schema.get("oneOf", [])
                  for name, p in branch.get("properties", {}).items()
                  if name in branch.get("required", ()) and isinstance(p, dict) and p.get("type") == "array"
                  and str(p.get("items", {}).get("$ref", "")).startswith("#/$defs/")}
        assert len(arrays) <= 1, (t.role, arrays)
        assert v.envelope == (next(iter(arrays)) if arrays else None), (t.role, arrays)
        seen.add(v.envelope)
    assert seen >= {"events", "examples", "outcomes"}
