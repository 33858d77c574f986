"""Event decoding rules: every rule names the field and what is wrong."""
from __future__ import annotations

import base64
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from workers.verbs.codec import (MAX_EVENT_BYTES, decode_json, embedding_field, encode_embedding_b64, encode_json,
                                 finite_number, loads, numbers_only)
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
    ({"embedding": [1.0], "embedding_b64": "AACAPw=="}, "embedding", "not both"),  # the schemas: one of them
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


def test_a_number_beyond_a_doubles_range_reads_as_an_infinity_not_a_parse_error() -> None:
    """An MCP client (and the SDK's encode_json) writes 10**400 out; the worker answered it with a parse
    error, where the README says it counts as an infinity for the verb to refuse or clamp (an outside trial)."""
    big = "1" + "0" * 400
    assert loads(b'{"q": %s, "r": -%s, "s": 1e400, "t": [18446744073709551616, 5]}' % (big.encode(), big.encode())) \
        == {"q": math.inf, "r": -math.inf, "s": math.inf, "t": [1.8446744073709552e+19, 5]}
    assert loads(encode_json({"q": 10**400})) == {"q": math.inf}
    assert decode_json(b'{"q": 1e400}') == {"q": math.inf}
    for bad in (b'{"q": 1e400, "n": NaN}', b'{"q": 1e400, "n": Infinity}', b'{"q": 1e400,}', b"[1e400" + b"[" * 2000):
        with pytest.raises(ValueError):
            loads(bad)
    with pytest.raises(ValueError, match="depth"):
        loads(b"[1e400, " + b"[" * 5000 + b"]" * 5000 + b"]")


def test_the_log_keeps_an_infinity_as_one() -> None:
    """A write over HTTP whose 1e400 the worker read as an infinity was produced with orjson (null) and applied
    as an absent field (an outside trial's importance: 1e400 stored the default); the log now says 1e999."""
    from workers.verbs.codec import dumps_wide

    value = {"a": math.inf, "b": [-math.inf, 1.0, None, "\x00+inf"], "c": np.array([1.0, np.inf])}
    raw = dumps_wide(value)
    assert b"1e999" in raw and b"-1e999" in raw
    assert loads(raw) == {"a": math.inf, "b": [-math.inf, 1.0, None, "\x00+inf"], "c": [1.0, math.inf]}
    assert dumps_wide({"a": 1.0, "b": None}) == b'{"a":1.0,"b":null}'  # nothing to mark: orjson's bytes
    with pytest.raises(ValueError, match="NaN"):
        dumps_wide({"a": math.nan})


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


def _numpy_float32(v: list) -> np.ndarray:
    """The reference: NumPy's conversion (each value to a double, then to float32), with an int beyond a
    double's an infinity of its sign (NumPy raises OverflowError there, and ``float32_array`` then converts
    element by element)."""
    def double(e: float | int) -> float:
        try:
            return float(e)
        except OverflowError:
            return math.inf if e > 0 else -math.inf

    with np.errstate(over="ignore"):
        return np.asarray([double(e) for e in v], dtype=np.float32)


_F32_MAX = float(np.finfo(np.float32).max)
_F32_MID = 2.0 ** 128 - 2.0 ** 103   # FLT_MAX plus half its ulp: IEEE rounding gives an infinity from here
_EDGES = [_F32_MAX, -_F32_MAX, float(np.nextafter(_F32_MAX, np.inf)), float(np.nextafter(_F32_MID, 0.0)), _F32_MID,
          -_F32_MID, float(np.nextafter(-_F32_MID, 0.0)), 1e-46, -1e-46, 1.4e-45, 0.0, -0.0, 2 ** 24 + 1, 2 ** 53 + 1,
          2 ** 200, -(2 ** 200), 2 ** 1100, -(2 ** 1100), 1e300, -1e300]
_JSON_NUMBERS = st.one_of(st.floats(allow_nan=False), st.integers(), st.sampled_from(_EDGES),
                          st.floats(min_value=-4e38, max_value=4e38))


@given(st.lists(_JSON_NUMBERS, max_size=40))
@example(_EDGES)  # every edge, every run
def test_the_kernel_converts_json_numbers_as_numpy_does(v: list) -> None:
    """``_kernels.float32_from_numbers`` against NumPy, bit for bit (rounding, signed zeros, float32's
    range and just past it, integers beyond a double's), NaN aside; an empty list is an empty array."""
    from workers import _kernels

    got = _kernels.float32_from_numbers(v)
    want = _numpy_float32(v)
    assert got.dtype == np.float32 and got.shape == want.shape
    assert got.tobytes() == want.tobytes()


def test_the_kernel_hands_anything_but_exact_floats_and_ints_back() -> None:
    """A bool, a string, None, a nested list, a NumPy scalar, a tuple or a list subclass: None, and the
    Python path decides (it refuses the first four and takes np.float64, as before); NaN converts."""
    from workers import _kernels

    for v in ([1.0, True], [1.0, "2"], [None], [[1.0]], [np.float64(1.0)], [np.float32(1.0)], (1.0, 2.0),
              type("L", (list,), {})([1.0])):
        assert _kernels.float32_from_numbers(v) is None
    assert np.isnan(_kernels.float32_from_numbers([float("nan")])[0])
    from workers.verbs.codec import numbers_as_float32
    assert numbers_as_float32([np.float64(0.5), 2]).tolist() == [0.5, 2.0]
    assert numbers_as_float32([True, 1.0]) is None and numbers_as_float32("1.0") is None


_B64_TEXT = st.text(st.sampled_from(list("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=")
                                    + [" ", "\n", "-", "_", "é", "\x00", "\udc80"]), max_size=40)


@given(st.one_of(_B64_TEXT, st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode())))
@example("QQ==QQ==")   # padding inside: the standard library takes it, pybase64 does not
@example("00000000=")  # one padding character too many: the same
@example("QQ=")
@example("=")
@example("QUJD\n")
@example("é")
def test_b64_embeddings_accept_what_the_standard_library_accepts(text: str) -> None:
    """The fast decoder (pybase64) with its fallback accepts exactly the texts ``base64.b64decode(validate=True)``
    accepts, with the same bytes; what it refuses is 'not valid base64'. Without the fallback the two
    padding examples are refused."""
    import binascii

    from workers.verbs.codec import _b64decode

    try:
        want = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        want = None
    assert _b64decode(text) == want


def test_b64_embeddings_the_standard_library_takes_keep_their_value() -> None:
    x = np.array([1.5, -2.0, 0.25], np.float32)
    padded = encode_embedding_b64(x) + "="  # 16 characters, no padding needed; one more "=" is taken
    assert base64.b64decode(padded, validate=True) == x.tobytes()
    assert embedding_field({"embedding_b64": padded}).tolist() == [1.5, -2.0, 0.25]


_ORJSON_INTS = st.one_of(st.integers(), st.sampled_from([2 ** 63 - 1, -(2 ** 63), 2 ** 63, 2 ** 64 - 1, 2 ** 64,
                                                         -(2 ** 63) - 1, 2 ** 200, -(2 ** 200)]))


@given(st.lists(st.one_of(st.floats(), _ORJSON_INTS), max_size=30))
@example([2 ** 64 - 1, -(2 ** 63)])   # orjson's edges: written
@example([1.0, 2 ** 64])              # one past them: refused
@example([-(2 ** 63) - 1])
@example([float("nan"), float("inf")])
def test_json_number_list_is_what_orjson_writes(v: list) -> None:
    """``_kernels.json_number_list`` is true for a list of exact floats and ints exactly when orjson writes it
    (``LearnSession``'s JSON check skips writing such arrays out)."""
    import orjson

    from workers import _kernels

    try:
        orjson.dumps(v)
        writes = True
    except orjson.JSONEncodeError:
        writes = False
    assert _kernels.json_number_list(v) is writes


def test_json_number_list_is_false_for_anything_but_exact_floats_and_ints() -> None:
    from workers import _kernels

    for v in ([1.0, True], [1.0, "2"], [None], [[1.0]], [np.float64(1.0)], [np.int64(1)], (1.0, 2.0),
              type("L", (list,), {})([1.0]), {"a": 1.0}, 1.0, np.zeros(3)):
        assert _kernels.json_number_list(v) is False, v
    assert _kernels.json_number_list([]) is True
