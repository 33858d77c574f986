"""Event decoding rules: every rule names the field and what is wrong."""
from __future__ import annotations

import base64

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from workers.verbs.codec import (MAX_EVENT_BYTES, decode_json, embedding_field, encode_embedding_b64, finite_number,
                                 numbers_only)
from workers.errors import ValidationError


def test_b64_and_array_embeddings_decode_to_the_same_vector() -> None:
    x = np.random.default_rng(0).standard_normal(384).astype(np.float32)
    a = embedding_field({"embedding": x.tolist()}, dim=384)
    b = embedding_field({"embedding_b64": encode_embedding_b64(x)}, dim=384)
    assert a.dtype == np.float32 and np.array_equal(a, x) and np.array_equal(b, x)


@pytest.mark.parametrize("body,field,words", [
    ({}, "embedding", "required"),
    ({"embedding": "abc"}, "embedding", "array of numbers"),
    ({"embedding": [1, "a"]}, "embedding", "array of numbers"),
    ({"embedding": [True, 1.0]}, "embedding", "array of numbers"),
    ({"embedding": []}, "embedding", "empty"),
    ({"embedding": [1.0, float("nan")]}, "embedding", "finite"),
    ({"embedding": [1.0, 2.0]}, "embedding", "wrong dimension: expected 3, got 2"),
    ({"embedding_b64": "!!notb64"}, "embedding_b64", "not valid base64"),
    ({"embedding_b64": base64.b64encode(b"abc").decode()}, "embedding_b64", "multiple of 4"),
    ({"embedding_b64": 5}, "embedding_b64", "base64 string"),
    ({"embedding_b64": encode_embedding_b64(np.array([np.inf, 1, 1], np.float32))}, "embedding", "finite"),
])
def test_embedding_rules(body: dict, field: str, words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        embedding_field(body, dim=3)
    assert exc.value.field == field and words in exc.value.rule


def test_optional_embedding_may_be_absent() -> None:
    assert embedding_field({}, required=False) is None


def test_decode_json_rules() -> None:
    assert decode_json(b'{"a": 1}') == {"a": 1}
    with pytest.raises(ValidationError, match="not valid JSON"):
        decode_json(b"{")
    with pytest.raises(ValidationError, match="exceeds"):
        decode_json(b" " * (MAX_EVENT_BYTES + 1))
    with pytest.raises(ValidationError, match="tombstone"):
        decode_json(None)


@pytest.mark.parametrize("v,words", [("1", "a number"), (True, "a number"), (float("inf"), "finite"),
                                     (float("nan"), "finite"), (2.0, "within")])
def test_finite_number_rules(v: object, words: str) -> None:
    with pytest.raises(ValidationError) as exc:
        finite_number(v, "q", lo=0, hi=1)
    assert exc.value.field == "q" and words in exc.value.rule


_ELEMENTS = st.one_of(st.integers(), st.floats(allow_nan=True), st.booleans(), st.text(max_size=3), st.none(),
                      st.floats(width=32).map(np.float32), st.floats().map(np.float64), st.lists(st.integers(), max_size=2))


@given(st.lists(_ELEMENTS, max_size=12))
def test_numbers_only_answers_as_the_per_element_rule(v: list) -> None:
    """The fast type-set check and its fallback accept exactly what ``isinstance`` per element does:
    ints and floats (subclasses such as np.float64 included), never a bool, a string or np.float32."""
    assert numbers_only(v) == all(isinstance(e, (int, float)) and not isinstance(e, bool) for e in v)


def test_an_array_of_float64_scalars_is_still_an_array_of_numbers() -> None:
    x = embedding_field({"embedding": [np.float64(0.5), 1, 2.5]}, dim=3)
    assert x.dtype == np.float32 and x.tolist() == [0.5, 1.0, 2.5]
    with pytest.raises(ValidationError, match="array of numbers"):
        embedding_field({"embedding": [np.float32(0.5), 1.0, 2.0]}, dim=3)


def test_encode_json_writes_what_json_carries_and_says_why_not() -> None:
    """orjson where it can (NumPy values as JSON arrays and numbers); integers beyond 64 bits, which
    orjson refuses, through the standard library, read back by the worker's parser as floats; a value
    that is not JSON is refused with the reason."""
    import orjson
    from workers.verbs.codec import encode_json

    body = {"dim": np.int64(8), "embedding": np.arange(3, dtype=np.float32), "q": 0.5}
    assert orjson.loads(encode_json(body)) == {"dim": 8, "embedding": [0.0, 1.0, 2.0], "q": 0.5}
    huge = {"n": 10**30, "embedding": np.ones(2, np.float32), "s": "é"}
    assert orjson.loads(encode_json(huge)) == {"n": 1e30, "embedding": [1.0, 1.0], "s": "é"}
    for bad, why in (({"a": {1, 2}}, "not JSON serializable"), ({"n": 10**30, "x": float("nan")}, "not JSON"),
                     ({"s": "\udce9"}, "surrogate")):
        with pytest.raises(ValueError, match=why):
            encode_json(bad)
