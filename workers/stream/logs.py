"""Log output of a worker: text or one JSON object per line, and repeated warnings rate-limited.

``LEARNSTREAM_LOG_FORMAT=json`` renders every stdlib record (ours, faust's, aiokafka's) through
structlog's ``ProcessorFormatter`` as one JSON object per line (``timestamp``, ``level``, ``logger``,
``event``, ``exception``). A broker outage makes aiokafka log the same error many times a second;
warnings and errors from one source line are let through once per period
(``log-rate-limit``), the next one saying how many were skipped. faust's ERRORs about input partitions
that have been idle for 5 minutes are logged at DEBUG (:class:`IdleFetchNotices`).
"""
from __future__ import annotations

import logging
import re
import sys
from datetime import datetime, timezone
from typing import TextIO

import orjson
import structlog
from log_rate_limit import StreamRateLimitFilter

__all__ = ("configure", "announce", "RepeatedWarnings", "IdleFetchNotices", "Secrets")

# One line per call site per 10 s during an outage: ~6 lines a minute per source instead of thousands.
_REPEAT_PERIOD_S = 10.0


class RepeatedWarnings(logging.Filter):
    """Rate-limit WARNING and above per source line; INFO and DEBUG pass (they are off by default)."""

    def __init__(self, period_s: float = _REPEAT_PERIOD_S) -> None:
        super().__init__()
        self._limit = StreamRateLimitFilter(period_sec=period_s, default_stream_id="file_line_no")

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING or self._limit.filter(record)


# faust's "event path" check (after stream_processing_timeout, 5 min) logs these at ERROR for every input
# partition that has had no record in a while: an idle worker, not a stuck one (its maintainers call it
# normal aiokafka behaviour, faust-streaming issues 166, 503, 629). A stuck consumer shows in
# learnstream_consumer_lag and /ready instead.
_IDLE_FETCH = ("Aiokafka has not sent fetch request for", "Aiokafka stopped fetching from")


class IdleFetchNotices(logging.Filter):
    """faust's idle-partition ERRORs (``_IDLE_FETCH``) become DEBUG records, shown only when ``root`` logs DEBUG."""

    def __init__(self, root: logging.Logger) -> None:
        super().__init__()
        self._root = root

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.ERROR or not any(m in str(record.msg) for m in _IDLE_FETCH):
            return True
        record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return self._root.isEnabledFor(logging.DEBUG)


# A credential in a record: an Authorization header's value (any scheme) or what follows "Bearer", each to
# the end of its line or quote (escapes included: an outside trial's "Bearer\t<token>" and a token cut by a
# control character leaked past a value that stopped at the first backslash), or one of `learnstream
# token`'s tokens anywhere (percent-encoded too), to the next space or quote.
_SECRET = re.compile(r"(?i)(authorization['\"]?\s*[:=]\s*['\"]?|bearer(?=\s|\\[tvf])\s*)(?:[^'\"\r\n\\]|\\(?![rn]))+"
                     r"|(lst(?:_|%5f))[^\s'\"]+")


# The raw request bytes aiohttp quotes when it cannot parse a request (a header line, a folded continuation,
# a line over 8190 bytes): whatever a client put there, a token in a folded Authorization header or in
# another header included (an outside trial), so none of it is logged, only its length.
_BYTES = re.compile(r"\bb'(?:[^'\\]|\\.)*'" + r'|\bb"(?:[^"\\]|\\.)*"')


def _redact(text: str, raw_bytes: bool = False) -> str:
    if raw_bytes:
        text = _BYTES.sub(lambda m: f"b'<{len(m.group()) - 3} characters redacted>'", text)
    return _SECRET.sub(lambda m: (m.group(1) or m.group(2)) + "<redacted>", text)


class Secrets(logging.Filter):
    """Redact credentials from a record and its traceback: aiohttp logs a request it could not parse with
    the offending header line (an outside trial's ``Authorization: Bearer <token>\\x01`` reached the ERROR
    log whole), so the bytes it quotes are dropped, and anything that names a credential is redacted. Cheap
    for the usual record: only one whose text holds either is rewritten."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            # formatted once: logging's formatters reuse exc_text rather than render the exception again
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        exc = record.exc_text or ""
        raw = record.name.startswith("aiohttp") and bool(_BYTES.search(text) or _BYTES.search(exc))
        if raw or _SECRET.search(text) or _SECRET.search(exc):
            # args (), not None: faust's formatter (mode's) makes None (None,) and then fails to format
            record.msg, record.args = _redact(text, raw), ()
            if exc:  # the traceback as text, redacted (the formatter would render the exception again)
                record.msg += "\n" + _redact(exc, raw)
                record.exc_info, record.exc_text = None, None
        return True


def json_formatter() -> logging.Formatter:
    return structlog.stdlib.ProcessorFormatter(
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.format_exc_info, structlog.processors.JSONRenderer()],
        foreign_pre_chain=[
            structlog.stdlib.add_log_level,
            structlog.stdlib.add_logger_name,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
        ],
        pass_foreign_args=False,
    )


def configure(root: logging.Logger, log_format: str) -> None:
    """Give every handler of ``root`` the rate limit and, for ``json``, the JSON formatter."""
    for handler in root.handlers:
        if not any(isinstance(f, Secrets) for f in handler.filters):
            handler.addFilter(Secrets())
        if not any(isinstance(f, IdleFetchNotices) for f in handler.filters):
            handler.addFilter(IdleFetchNotices(root))   # before the rate limit: it would count them
        if not any(isinstance(f, RepeatedWarnings) for f in handler.filters):
            handler.addFilter(RepeatedWarnings())
        if log_format == "json":
            handler.setFormatter(json_formatter())


def announce(line: str, log_format: str, *, level: str = "info", logger_name: str = "workers.stream.worker",
             stream: TextIO | None = None) -> None:
    """Print one of the lines a worker always prints (its broker, "ready", why it refuses to start), whatever
    the log level: as is, or for ``json`` as a log record like every other line (to stdout by default)."""
    if log_format == "json":
        line = orjson.dumps({"event": line, "level": level, "logger": logger_name,
                             "timestamp": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z")}).decode()
    print(line, file=stream or sys.stdout, flush=True)
