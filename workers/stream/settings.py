"""Worker settings: ``LEARNSTREAM_*`` environment variables, overridable by CLI flags."""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from workers.errors import ConfigError
from workers.state.limits import MAX_SESSION_BYTES, MAX_VALUE_BYTES, Limits
from workers.state.sessions import CACHE_BYTES
from workers.stream.auth import SecretFile
from workers.verbs.registry import VerbOptions

__all__ = ("Settings", "LOG_LEVELS")

# faust's default block cache is 2 GiB *per partition database*; a worker's databases (every
# table and partition) share one cache of this size, and memtables of _MEMTABLE_BYTES in all,
# charged to the same cache (workers/stream/store.py).
_BLOCK_CACHE_BYTES = 64 * 1024 * 1024
_MEMTABLE_BYTES = 64 * 1024 * 1024
# A dead member is noticed after the session timeout (on Kafka); 10 s bounds failover.
_SESSION_TIMEOUT_S = 10.0

# Per partition of every delete-policy topic on the embedded broker but the inputs (downstream events,
# DLQ), which keeps its log in memory (workers/kafka/broker_compat.py) and re-serialises it to JSON about
# once a second: a bounded local history, as Kafka's retention gives.
_EMBEDDED_RETENTION_BYTES = 4 * 1024 * 1024
# The input topics: what a worker applied is deleted every _EMBEDDED_INPUT_PURGE_S seconds
# (workers/kafka/input_purge.py), so this caps only a backlog of unread input (a bulk load, a stopped
# worker) before any is lost: 64 MiB per partition, ~240,000 384-d b64 feedback events over 8 partitions.
_EMBEDDED_INPUT_RETENTION_BYTES = 64 * 1024 * 1024
_EMBEDDED_INPUT_PURGE_S = 10.0
# /ready turns 503 once the broker has been unreachable this long (a rebalance or a slow
# Metadata answer must not flap it).
_BROKER_UNREACHABLE_S = 10.0
# An HTTP write answers 503/504 within this: producing it and waiting for it to be applied.
_WRITE_TIMEOUT_S = 30.0

# Kafka client security settings passed through to aiokafka as-is.
_KAFKA_PASSTHROUGH = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                      "ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _env(name: str) -> str | None:
    return os.environ.get("LEARNSTREAM_" + name)


# Parsers of one variable's raw text (``name`` without the prefix, for the message).
def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not an integer") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not a number") from None


def _nonnegative(name: str, raw: str) -> float:
    v = _float(name, raw)
    if not math.isfinite(v) or v < 0:
        raise ConfigError(f"LEARNSTREAM_{name}={raw!r} must be a finite number >= 0")
    return v


def _bool(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not a boolean (true/false)")


def _str(name: str, raw: str) -> str:
    return raw


def _urls(name: str, raw: str) -> tuple[str, ...]:
    from workers.scoring.endpoints import usable

    urls = tuple(u.strip().rstrip("/") for u in raw.split(",") if u.strip())
    for u in urls:  # an allowlist entry that can never match a call is a typo, not a policy
        if not usable(u):
            raise ConfigError(f"LEARNSTREAM_{name}: {u!r} is not an http:// or https:// URL")
    return urls


def _path(name: str, raw: str) -> Path:
    return Path(raw)


def _var(default: Any, name: str, parse: Callable[[str, str], Any] = _str, *, empty: str = "default",
         export: bool = True) -> Any:
    """A setting read from ``LEARNSTREAM_<name>``. ``empty``: what an empty value means ("default", or
    "keep" for text taken as written). ``export``: whether :meth:`Settings.env` passes it to a worker
    subprocess (never the agents' own tokens)."""
    return field(default=default, metadata={"env": name, "parse": parse, "empty": empty, "export": export})


def _export(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, tuple):
        return ",".join(v)
    return str(v)


# Each integer setting's accepted range, checked once by Settings.from_env (a value out of it used to
# reach faust as a traceback, or run: a negative batch size, a port past 65535)
_RANGES: dict[str, tuple[float, float]] = {
    "web_port": (1, 65535), "partitions": (1, math.inf), "replication": (1, math.inf),
    "standby_replicas": (0, math.inf), "block_cache_bytes": (1, math.inf), "memtable_bytes": (1, math.inf),
    "cache_bytes": (0, math.inf), "max_session_bytes": (1, math.inf), "max_value_bytes": (1, math.inf),
    "batch_max": (1, math.inf), "fetch_max_wait_ms": (0, math.inf), "embedded_retention_bytes": (1, math.inf),
    "embedded_input_retention_bytes": (1, math.inf),
    "changelog_rewrite_floor": (0, math.inf), "http_max_body_bytes": (1, math.inf),
    "http_max_json_depth": (1, math.inf), "http_max_concurrency": (1, math.inf),
    "batch_linger_s": (0, math.inf)}
# durations that must be > 0 (NaN fails too)
_POSITIVE_SECONDS = ("session_timeout_s", "commit_interval_s", "batch_within_s", "broker_unreachable_s",
                     "write_timeout_s", "apply_deadline_s", "http_header_timeout_s",
                     "http_body_timeout_s", "forward_timeout_s")
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to know, each ``LEARNSTREAM_*`` variable declared once (its field).
    ``Settings.from_env(**overrides)`` reads them; flags override; the result is passed down."""

    broker: str | None = _var(None, "BROKER")  # host:port[,host:port]; None = start the embedded broker
    # "embedded" (workers/kafka/broker_compat.py topic configs on) or "kafka"; unset: kafka if a broker is set
    broker_kind: str = _var("embedded", "BROKER_KIND")
    app_id: str = _var("learnstream", "APP_ID", empty="keep")
    data_dir: Path = _var(Path("./learnstream-data"), "DATA_DIR", _path, empty="keep")
    web_host: str = _var("127.0.0.1", "WEB_HOST", empty="keep")  # advertised to other workers (forwarding)
    web_bind: str | None = _var(None, "WEB_BIND")  # listen address; None = web_host (0.0.0.0 in a pod)
    web_port: int = _var(6066, "WEB_PORT", _int)
    partitions: int = _var(8, "PARTITIONS", _int)
    replication: int = _var(1, "REPLICATION", _int)
    standby_replicas: int = _var(1, "STANDBY_REPLICAS", _int)
    # RocksDB block cache shared by every table partition, and their memtables together (charged to it)
    block_cache_bytes: int = _var(_BLOCK_CACHE_BYTES, "BLOCK_CACHE_BYTES", _int)
    memtable_bytes: int = _var(_MEMTABLE_BYTES, "MEMTABLE_BYTES", _int)
    session_timeout_s: float = _var(_SESSION_TIMEOUT_S, "SESSION_TIMEOUT_S", _float)
    commit_interval_s: float = _var(1.0, "COMMIT_INTERVAL_S", _float)
    # one Kafka transaction per batch and partition: downstream events exactly once for read_committed
    # consumers (workers/stream/transactions.py); false: at-least-once with deterministic ids
    transactions: bool = _var(True, "TRANSACTIONS", _bool)
    cache_bytes: int = _var(CACHE_BYTES, "CACHE_BYTES", _int)  # decoded sessions kept in memory (LRU, by bytes)
    # one session's state in one table (workers/state/limits.py)
    max_session_bytes: int = _var(MAX_SESSION_BYTES, "MAX_SESSION_BYTES", _int)
    # one key's value: under Kafka's default 1 MiB message limit
    max_value_bytes: int = _var(MAX_VALUE_BYTES, "MAX_VALUE_BYTES", _int)
    batch_max: int = _var(1000, "BATCH_MAX", _int)  # events per batch at most
    batch_within_s: float = _var(0.1, "BATCH_WITHIN_S", _float)  # a batch closes this long after its first event
    batch_linger_s: float = _var(0.005, "BATCH_LINGER_S", _float)  # ... or once no event arrived for this long
    # consumer long-poll (faust hard-codes 1500; see faust_internals.set_fetch_max_wait)
    fetch_max_wait_ms: int = _var(50, "FETCH_MAX_WAIT_MS", _int)
    worker_id: str | None = _var(None, "WORKER_ID")  # static group membership (the pod name on Kubernetes)
    log_level: str = _var("warning", "LOG_LEVEL", empty="keep")
    log_format: str = _var("text", "LOG_FORMAT", empty="keep")  # "text" or "json" (one JSON object per line)
    embedded_retention_bytes: int = _var(_EMBEDDED_RETENTION_BYTES, "EMBEDDED_RETENTION_BYTES", _int)
    embedded_input_retention_bytes: int = _var(_EMBEDDED_INPUT_RETENTION_BYTES, "EMBEDDED_INPUT_RETENTION_BYTES", _int)
    # how often applied input is deleted from the embedded broker (workers/kafka/input_purge.py); 0 = never
    embedded_input_purge_s: float = _var(_EMBEDDED_INPUT_PURGE_S, "EMBEDDED_INPUT_PURGE_S", _nonnegative)
    # worker-side changelog compaction (workers/kafka/changelog_rewrite.py): "auto" = on for the embedded
    # broker with transactions (it never compacts transactional batches), "true"/"false" force it
    changelog_rewrite: str = _var("auto", "CHANGELOG_REWRITE", empty="keep")
    # rewrite a changelog partition once its log holds more than ratio x its live keys + floor offsets
    changelog_rewrite_ratio: float = _var(2.0, "CHANGELOG_REWRITE_RATIO", _nonnegative)
    changelog_rewrite_floor: int = _var(1_000, "CHANGELOG_REWRITE_FLOOR", _int)
    broker_unreachable_s: float = _var(_BROKER_UNREACHABLE_S, "BROKER_UNREACHABLE_S", _float)
    write_timeout_s: float = _var(_WRITE_TIMEOUT_S, "WRITE_TIMEOUT_S", _float)
    # LEARNSTREAM_KAFKA_<NAME> for each of _KAFKA_PASSTHROUGH, passed to aiokafka as-is
    kafka: dict[str, str] = field(default_factory=dict)
    # agents' side (MCP server, SDK write-and-wait): which worker to talk to and with which token
    worker_url: str | None = _var(None, "WORKER_URL", export=False)  # a worker's base URL; None = start one
    api_token: str | None = _var(None, "API_TOKEN", export=False)  # sent as `Authorization: Bearer` to the worker
    mcp_token: str | None = _var(None, "MCP_TOKEN", export=False)  # remote agents' token for `learnstream mcp --http`
    mcp_session: str = _var("default", "MCP_SESSION", export=False)  # session_key of MCP calls that name none
    # how long a write is retried (same idempotency key) while no worker answers
    apply_deadline_s: float = _var(60.0, "APPLY_DEADLINE_S", _float, export=False)
    # Kafka settings read from files (LEARNSTREAM_KAFKA_<NAME>_FILE: a mounted Secret rather than env)
    kafka_files: dict[str, Path] = field(default_factory=dict)
    # -- security (README "Security"; workers/stream/auth.py, workers/state/limits.py) --
    auth: str = _var("auto", "AUTH", empty="keep")  # "tokens", "off", or "auto" (tokens if a file is set)
    # YAML of token hashes and scopes (a mounted Secret; reloaded on change)
    auth_tokens_file: Path | None = _var(None, "AUTH_TOKENS_FILE", _path)
    peer_token_file: Path | None = _var(None, "PEER_TOKEN_FILE", _path)  # sent when forwarding to the owner
    # /metrics without a token (Prometheus scrapes; NetworkPolicy guards it)
    metrics_public: bool = _var(True, "METRICS_PUBLIC", _bool)
    tls_certfile: Path | None = _var(None, "TLS_CERTFILE", _path)  # serve HTTPS with this certificate chain ...
    tls_keyfile: Path | None = _var(None, "TLS_KEYFILE", _path)  # ... and key
    tls_cafile: Path | None = _var(None, "TLS_CAFILE", _path)  # CA forwarding verifies the owner's certificate with
    http_max_body_bytes: int = _var(1024 * 1024, "HTTP_MAX_BODY_BYTES", _int)
    http_max_json_depth: int = _var(32, "HTTP_MAX_JSON_DEPTH", _int)
    http_max_concurrency: int = _var(64, "HTTP_MAX_CONCURRENCY", _int)  # requests in flight; more get 429
    # a connection must send a complete request head within this, and its body within the next
    http_header_timeout_s: float = _var(10.0, "HTTP_HEADER_TIMEOUT_S", _float)
    http_body_timeout_s: float = _var(10.0, "HTTP_BODY_TIMEOUT_S", _float)
    forward_timeout_s: float = _var(35.0, "FORWARD_TIMEOUT_S", _float)  # a forwarded request (owner waits 30 s)
    # the only URLs scoring backends may call (operator allowlist), and the key sent to them only
    scoring_endpoints: tuple[str, ...] = _var((), "SCORING_ENDPOINTS", _urls)
    scoring_api_key_file: Path | None = _var(None, "SCORING_API_KEY_FILE", _path)
    scoring_api_key: str | None = _var(None, "SCORING_API_KEY", export=False)  # the older way: the key itself
    # -- the verbs (VerbOptions): None = the spec's value --
    lr_min: float | None = _var(None, "LR_MIN", _nonnegative)  # instant core's lr floor (capped at its lr0)
    ewc_lambda: float | None = _var(None, "EWC_LAMBDA", _nonnegative)  # deep core's λ
    protocols_embedder: str = _var("", "PROTOCOLS_EMBEDDER")  # "package.module:factory" for strategy similarity
    topics_dir: Path | None = _var(None, "TOPICS_DIR", _path)  # topics/*.yaml elsewhere than the package's

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            name = f.metadata.get("env")
            raw = _env(name) if name else None
            if raw is None or (raw == "" and f.metadata["empty"] == "default"):
                continue
            values[f.name] = f.metadata["parse"](name, raw)
        kind = values.get("broker_kind") or ("kafka" if values.get("broker") else "embedded")
        if kind not in ("embedded", "kafka"):
            raise ConfigError("LEARNSTREAM_BROKER_KIND must be 'embedded' or 'kafka'")
        values["broker_kind"] = kind
        values["kafka"] = {k: v for k in _KAFKA_PASSTHROUGH if (v := _env("KAFKA_" + k.upper()))}
        values["kafka_files"] = {k: Path(v) for k in ("sasl_plain_username", "sasl_plain_password")
                                 if (v := _env("KAFKA_" + k.upper() + "_FILE"))}
        s = cls(**values)
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in overrides:
            overrides["data_dir"] = Path(str(overrides["data_dir"]))
        s = dataclasses.replace(s, **overrides)
        for name, (lo, hi) in _RANGES.items():
            v = getattr(s, name)
            if not lo <= v <= hi:
                limit = f"at least {lo}" if hi == math.inf else f"{lo}..{hi}"
                raise ConfigError(f"LEARNSTREAM_{name.upper()} must be {limit}, got {v}")
        for name in _POSITIVE_SECONDS:
            if not getattr(s, name) > 0:
                raise ConfigError(f"LEARNSTREAM_{name.upper()} must be > 0, got {getattr(s, name)}")
        if s.log_level.lower() not in LOG_LEVELS:
            raise ConfigError(f"LEARNSTREAM_LOG_LEVEL must be one of {', '.join(LOG_LEVELS)}, got {s.log_level!r}")
        if s.log_format not in ("text", "json"):
            raise ConfigError(f"LEARNSTREAM_LOG_FORMAT must be 'text' or 'json', got {s.log_format!r}")
        if s.auth not in ("auto", "tokens", "off"):
            raise ConfigError("LEARNSTREAM_AUTH must be 'auto', 'tokens' or 'off'")
        if s.changelog_rewrite not in ("auto", "true", "false"):
            raise ConfigError("LEARNSTREAM_CHANGELOG_REWRITE must be 'auto', 'true' or 'false'")
        if (s.tls_certfile is None) != (s.tls_keyfile is None):
            raise ConfigError("LEARNSTREAM_TLS_CERTFILE and LEARNSTREAM_TLS_KEYFILE go together")
        return s

    def verb_options(self) -> VerbOptions:
        """What the verbs take from these settings (``workers.verbs.surface.configure``, ``ctx.options``)."""
        return VerbOptions(lr_min=self.lr_min, ewc_lambda=self.ewc_lambda, protocols_embedder=self.protocols_embedder,
                           scoring_endpoints=self.scoring_endpoints)

    def scoring_api_key_reader(self) -> Callable[[], str | None]:
        """What reads the key sent to scoring endpoints: the file (re-read when it changes), else the value."""
        secret = SecretFile(self.scoring_api_key_file)
        secret.require("LEARNSTREAM_SCORING_API_KEY_FILE")
        return lambda: secret.get() or self.scoring_api_key

    @property
    def rewrites_changelogs(self) -> bool:
        """Whether the worker compacts its transactional changelogs itself (LEARNSTREAM_CHANGELOG_REWRITE)."""
        if self.changelog_rewrite == "auto":
            return self.broker_kind == "embedded" and self.transactions
        return self.changelog_rewrite == "true" and self.transactions

    def limits(self) -> Limits:
        return Limits(max_value_bytes=self.max_value_bytes, max_session_bytes=self.max_session_bytes)

    @property
    def scheme(self) -> str:
        """``https`` when the listener serves TLS."""
        return "https" if self.tls_certfile else "http"

    def kafka_kwargs(self) -> dict:
        """Security settings as aiokafka client keyword arguments (an SSL context built from the files)."""
        k = dict(self.kafka)
        for name, path in self.kafka_files.items():
            try:
                k[name] = path.read_text().strip()
            except OSError as exc:
                raise ConfigError(f"LEARNSTREAM_KAFKA_{name.upper()}_FILE: {exc.strerror}") from None
        files = {name: k.pop(f"ssl_{name}", None) for name in ("cafile", "certfile", "keyfile")}
        if any(files.values()) or k.get("security_protocol", "").endswith("SSL"):
            from aiokafka.helpers import create_ssl_context

            k["ssl_context"] = create_ssl_context(**files)
        return k

    def env(self) -> dict[str, str]:
        """These settings as LEARNSTREAM_* variables (to start a worker subprocess)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if f.metadata.get("export") and v is not None and v != () and v != "":
                out["LEARNSTREAM_" + f.metadata["env"]] = _export(v)
        out.update({"LEARNSTREAM_KAFKA_" + k.upper(): v for k, v in self.kafka.items()})
        out.update({f"LEARNSTREAM_KAFKA_{k.upper()}_FILE": str(v) for k, v in self.kafka_files.items()})
        return out
