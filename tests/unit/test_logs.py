"""workers.stream.logs: JSON lines through structlog (tracebacks included) and the per-line rate limit."""
from __future__ import annotations

import io
import json
import logging

import pytest

from workers.stream.logs import RepeatedWarnings, announce, configure


@pytest.fixture
def root() -> logging.Logger:
    """A private logger tree standing in for the root logger, writing to a buffer."""
    lg = logging.getLogger(f"test-logs-{id(object())}")
    lg.propagate = False
    lg.setLevel(logging.INFO)
    lg.addHandler(logging.StreamHandler(io.StringIO()))
    yield lg
    lg.handlers.clear()


def _lines(lg: logging.Logger) -> list[str]:
    return lg.handlers[0].stream.getvalue().splitlines()


def test_json_format_renders_a_traceback_on_one_line(root: logging.Logger) -> None:
    configure(root, "json")
    try:
        {}["missing"]
    except KeyError:
        root.getChild("aiokafka").exception("fetch failed for %s", "node 1")
    (line,) = _lines(root)
    rec = json.loads(line)
    assert rec["event"] == "fetch failed for node 1"
    assert rec["level"] == "error" and rec["logger"].endswith("aiokafka") and rec["timestamp"].endswith("Z")
    assert rec["exception"].startswith("Traceback (most recent call last)") and "KeyError: 'missing'" in rec["exception"]


def test_text_format_stays_text(root: logging.Logger) -> None:
    configure(root, "text")
    root.warning("plain")
    assert _lines(root) == ["plain"]


def test_repeated_warnings_from_one_line_are_let_through_once_per_period(root: logging.Logger) -> None:
    configure(root, "text")
    for _ in range(50):
        root.error("broker down")  # one source line
    for _ in range(5):
        root.info("progress")      # INFO is never limited
    lines = _lines(root)
    assert lines.count("broker down") == 1 and lines.count("progress") == 5
    assert sum(isinstance(f, RepeatedWarnings) for f in root.handlers[0].filters) == 1
    configure(root, "text")  # idempotent: no second filter
    assert sum(isinstance(f, RepeatedWarnings) for f in root.handlers[0].filters) == 1


def test_announce_prints_json_lines_in_json_mode(capsys: pytest.CaptureFixture[str]) -> None:
    announce("learnstream worker ready: http://127.0.0.1:1", "json")
    announce("learnstream worker ready: http://127.0.0.1:1", "text")
    out = capsys.readouterr().out.splitlines()
    assert json.loads(out[0])["event"] == "learnstream worker ready: http://127.0.0.1:1"
    assert out[1] == "learnstream worker ready: http://127.0.0.1:1"


def test_fausts_idle_partition_errors_are_debug_records(root: logging.Logger) -> None:
    """faust logs "has not sent fetch request" at ERROR for a partition with no input for 5 minutes (an
    idle worker); it is shown only at DEBUG, as a DEBUG line. Other errors of that logger still show."""
    configure(root, "json")
    faust_log = root.getChild("faust.transport.drivers.aiokafka")
    idle = ("[^---AIOKafkaConsumerThread]: Aiokafka has not sent fetch request for %r since start (started %s)",
            "[^---AIOKafkaConsumerThread]: Aiokafka stopped fetching from %r (last done %s)")
    for msg in idle:
        faust_log.error(msg, "TP(topic='feedback', partition=3)", "5.02 minutes ago")
    faust_log.error("real trouble")
    assert [json.loads(line)["event"] for line in _lines(root)] == ["real trouble"]
    root.setLevel(logging.DEBUG)
    faust_log.error(idle[0], "TP(topic='feedback', partition=1)", "6 minutes ago")
    rec = json.loads(_lines(root)[-1])
    assert rec["level"] == "debug" and "has not sent fetch request" in rec["event"]


@pytest.mark.parametrize("fmt", ["text", "json", "mode"])
def test_credentials_are_redacted_from_records_and_tracebacks(root: logging.Logger, fmt: str) -> None:
    """aiohttp logs a request it could not parse with the offending header line: an outside trial's
    ``Authorization: Bearer <token>\\x01`` put the whole token in the worker's ERROR log. ``mode``: the
    formatter of faust's worker, which turns a record's args None into (None,), so a redacted record
    whose args were None failed to format ("--- Logging error ---") and was lost."""
    if fmt == "mode":
        from mode.utils.logging import ExtensionFormatter

        root.handlers[0].setFormatter(ExtensionFormatter(stream=root.handlers[0].stream))
    configure(root, "text" if fmt == "mode" else fmt)
    token = "lst_" + "S3cretTokenValue0123456789abcdef"
    try:
        raise ValueError(f"Invalid header value char: b'Authorization: Bearer {token}\\x01'")
    except ValueError:
        root.getChild("aiohttp.server").exception("Error handling request from %s", None)  # as aiohttp calls it
    root.error("header %s", f"Bearer {token[4:]}")
    root.error("Authorization=Basic dXNlcjpwYXNz and {'authorization': 'tok123'}")
    root.error("Authorization failed for session x")  # no credential: left as it is
    # a second outside trial: a tab after Bearer, a control character inside the token, percent-encoded
    root.error("Bad header: %r", f"Authorization: Bearer\t{token}\x01".encode())
    root.error("Bad header: %r", f"Authorization: Bearer {token[:12]}\x01{token[12:]}\r\nHost: w".encode())
    root.error("Bad request line: %r", f"GET /dispatch?t=lst%5F{token[4:]}\x01 HTTP/1.1".encode())
    out = "\n".join(_lines(root))
    assert token[4:] not in out and "dXNlcjpwYXNz" not in out and "tok123" not in out
    assert token[12:] not in out and token[4:12] not in out  # no part of it either
    assert out.count("<redacted>") >= 4 and "Authorization failed for session x" in out
    assert "ValueError: Invalid header value char" in out  # the traceback is kept, redacted
    assert "Error handling request from None" in out


def test_a_traceback_without_credentials_is_formatted_once(root: logging.Logger,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The redaction filter searches a record's traceback; the handler's formatter then reuses that text
    (``exc_text``) instead of rendering the exception a second time."""
    configure(root, "text")
    calls = []
    original = logging.Formatter.formatException
    monkeypatch.setattr(logging.Formatter, "formatException",
                        lambda self, ei: calls.append(ei) or original(self, ei))
    try:
        raise RuntimeError("plain failure")
    except RuntimeError:
        root.exception("it failed")
    out = "\n".join(_lines(root))
    assert len(calls) == 1
    assert out.count("RuntimeError: plain failure") == 1 and "it failed" in out
