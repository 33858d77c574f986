"""The exception tree. One root, one subclass per domain; messages say what to do."""
from __future__ import annotations

__all__ = (
    "LearnstreamError",
    "ValidationError",
    "VerbError",
    "StateError",
    "CorruptStateError",
    "BrokerError",
    "ConfigError",
    "WorkerExitedError",
)


class LearnstreamError(Exception):
    """Root of every error learnstream raises on purpose."""


class ValidationError(LearnstreamError):
    """An event or request failed validation. Goes to the DLQ with ``reason``.

    ``field`` names the offending field (dotted path, ``""`` for the whole value)
    and ``rule`` the rule it broke, so the reason is actionable.
    """

    def __init__(self, field: str, rule: str) -> None:
        self.field = field
        self.rule = rule
        super().__init__(f"{field}: {rule}" if field else rule)

    @property
    def reason(self) -> str:
        return str(self)


class VerbError(LearnstreamError):
    """A verb refused its input; the message is the spec's exact error string."""


class StateError(LearnstreamError):
    """Stored state cannot be used."""


class CorruptStateError(StateError):
    """Stored bytes fail their checksum or carry an unknown version.

    Restore from a checkpoint or drop the key; never load it blindly.
    """


class BrokerError(LearnstreamError):
    """The embedded broker could not start or does not answer."""


class ConfigError(LearnstreamError):
    """A setting is missing or malformed; the message names the variable."""


class WorkerExitedError(LearnstreamError):
    """A worker subprocess (demo, ``learnstream mcp``) exited before it served; its log says why."""
