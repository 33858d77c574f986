"""Text rules of the protocols: normalized words, task types, error signatures, token estimates.

Everything here is a pure function of its input, so replaying the same outcomes
gives the same keys, matches and signatures on every worker.

>>> normalize_words("Fill the fields, then SUBMIT!")
('fill', 'fields', 'submit')
>>> infer_task_type("Validate the login form")
'testing'
>>> error_signature("TimeoutError: waited 30000 ms for /app/tests/login.py line 88")
'TimeoutError: waited <n> ms for <path> line <n>'
"""
from __future__ import annotations

import functools
import math
import re

__all__ = ("STOP_WORDS", "tokens", "normalize_words", "strategy_key", "infer_task_type", "error_signature",
           "estimate_tokens", "error_line", "TASK_TYPES", "GENERAL")

# Function words that carry no strategy: "fill the fields then submit" and "fill fields, submit"
# are the same strategy. Kept short on purpose: content words ("not", "first", "again") stay.
STOP_WORDS = frozenset("""
a an the and or but if then than so as of in on at to from by for with without into onto over under
about after before while when where which who whom whose what that this these those it its it's is are
was were be been being am do does did done has have had having i me my we our you your he she they them
their his her there here via per just also too very can could should would will shall may might must
""".split())

# Words are maximal runs of letters and digits, in any script ("_" separates, as punctuation does).
_WORD = re.compile(r"[^\W_]+")

GENERAL = "general"
# The spec's inference order: the first rule whose keyword appears wins ("test the api" -> testing).
# Matching whole words (or a stem's start) fixes the reference's substring test, where "latest"
# was a test and "information" a form.
TASK_TYPES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("testing", re.compile(r"test\w*|validat\w*")),
    ("api_testing", re.compile(r"apis?|endpoints?")),
    ("form_testing", re.compile(r"forms?|inputs?")),
    ("database_validation", re.compile(r"databases?|quer(?:y|ies)")),
)

# An error signature keeps the exception type and the shape of the message; the parts that differ
# between two occurrences of the same failure (numbers, ids, paths, URLs) are masked.
_EXC_LINE = re.compile(r"^\s*(?:[A-Za-z_][\w$]*\.)*([A-Za-z_][\w$]*(?:Error|Exception|Exit|Interrupt|Warning|"
                       r"Timeout|Fault|Failure)|Error|Exception)\b\s*:?\s*(.*)$")
_MASKS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[A-Za-z][\w+.\-]*://\S+"), "<url>"),
    (re.compile(r"(?<![\w/<])(?:~|\.{1,2})?/(?:[\w.\-@+]+/)*[\w.\-@+]+/?"), "<path>"),
    (re.compile(r"\b[A-Za-z]:\\(?:[^\\\s'\"]+\\)*[^\\\s'\"]*"), "<path>"),
    (re.compile(r"\b[\w.\-]+(?:/[\w.\-]+)+\.\w{1,8}\b"), "<path>"),
    (re.compile(r"\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"), "<id>"),
    (re.compile(r"\b0x[0-9a-fA-F]+\b"), "<id>"),
    (re.compile(r"\b(?=[0-9a-fA-F]*\d)(?=[0-9a-fA-F]*[a-fA-F])[0-9a-fA-F]{8,}\b"), "<id>"),
    (re.compile(r"\d+(?:\.\d+)?"), "<n>"),
)
_SPACES = re.compile(r"\s+")
_SIGNATURE_MAX = 200  # characters: enough for a type and a message's shape, bounded in state
_CHARS_PER_TOKEN = 4  # the usual estimate for English text with BPE tokenizers


@functools.lru_cache(maxsize=8192)
def tokens(text: str) -> tuple[str, ...]:
    """Lower-cased words of ``text`` (letters and digits; punctuation separates)."""
    return tuple(_WORD.findall(text.lower()))


@functools.lru_cache(maxsize=8192)
def normalize_words(text: str) -> tuple[str, ...]:
    """The words of a strategy that matter: lower case, no punctuation, no stop words, first occurrence order.

    A text of stop words only keeps them (``"do it"`` is still a strategy), and a text without any
    word at all is itself, stripped and lower-cased.
    """
    toks = tokens(text)
    words = [t for t in toks if t not in STOP_WORDS] or list(toks)
    if not words:
        stripped = _SPACES.sub(" ", text.strip().lower())
        return (stripped,) if stripped else ()
    return tuple(dict.fromkeys(words))


def strategy_key(text: str) -> str:
    """The normalized form of a strategy: one heuristic per (agent, project, task type, this)."""
    return " ".join(normalize_words(text))


def infer_task_type(task: str) -> str:
    """The spec's keyword rules over the task's words, else ``"general"``."""
    toks = tokens(task)
    for name, pattern in TASK_TYPES:
        if any(pattern.fullmatch(t) for t in toks):
            return name
    return GENERAL


def error_line(error: str) -> str:
    """The line of an error text that names the failure (a traceback's last, else the first)."""
    lines = [ln for ln in error.splitlines() if ln.strip()]
    if not lines:
        return ""
    # A Python traceback names the exception on its last line; other runtimes lead with it.
    return lines[-1] if lines[0].lstrip().startswith("Traceback") else lines[0]


def error_signature(error: str) -> str:
    """Exception type + message with numbers, ids, paths and URLs masked (``""`` for a blank error).

    Two failures are similar when their signatures are equal: ``"KeyError: 'user_17'"`` and
    ``"KeyError: 'user_42'"`` are; ``"Timeout"`` and ``"Timeout while parsing a form"`` are not
    (the reference library's substring containment said they were).
    """
    line = error_line(error)
    m = _EXC_LINE.match(line)
    etype, msg = (m.group(1), m.group(2)) if m else ("", line)
    for pattern, repl in _MASKS:
        msg = pattern.sub(repl, msg)
    msg = _SPACES.sub(" ", msg).strip().strip(".:;, ").lower()
    sig = f"{etype}: {msg}" if etype and msg else (etype or msg)
    return sig[:_SIGNATURE_MAX]


def estimate_tokens(text: str) -> int:
    """Tokens ``text`` costs in a prompt, estimated at four characters per token (at least 1)."""
    return max(1, math.ceil(len(text) / _CHARS_PER_TOKEN))
