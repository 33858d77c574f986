"""Worker settings: ``LEARNSTREAM_*`` environment variables, overridable by CLI flags."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from workers.errors import ConfigError
from workers.state.limits import MAX_SESSION_BYTES, MAX_VALUE_BYTES, Limits
from workers.state.sessions import CACHE_BYTES

__all__ = ("Settings",)

# faust's default block cache is 2 GiB *per partition database*; 16 MiB per table
# partition keeps a laptop worker with 8 partitions x 3 tables under ~400 MiB.
_BLOCK_CACHE_BYTES = 16 * 1024 * 1024
# A dead member is noticed after the session timeout (on Kafka); 10 s bounds failover.
_SESSION_TIMEOUT_S = 10.0

# Per partition of every delete-policy topic on the embedded broker, which keeps its log in memory
# (workers/broker_compat.py): 16 MiB x 8 partitions x 15 topics bounds the worst case near 2 GiB,
# a steady local run far below (bench/README.md, "broker_soak").
_EMBEDDED_RETENTION_BYTES = 16 * 1024 * 1024
# /ready turns 503 once the broker has been unreachable this long (a rebalance or a slow
# Metadata answer must not flap it).
_BROKER_UNREACHABLE_S = 10.0
# An HTTP write answers 503/504 within this: producing it and waiting for it to be applied.
_WRITE_TIMEOUT_S = 30.0

# Kafka client security settings passed through to aiokafka as-is.
_KAFKA_PASSTHROUGH = ("security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
                      "ssl_cafile", "ssl_certfile", "ssl_keyfile")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get("LEARNSTREAM_" + name, default)


def _int(name: str, default: int) -> int:
    raw = _env(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not an integer") from None


def _bool(name: str, default: bool) -> bool:
    raw = _env(name)
    if raw is None or raw == "":
        return default
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not a boolean (true/false)")


def _path(name: str) -> Path | None:
    raw = _env(name)
    return Path(raw) if raw else None


def _float(name: str, default: float) -> float:
    raw = _env(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"LEARNSTREAM_{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs to know. ``Settings.from_env(**overrides)``."""

    broker: str | None = None            # host:port[,host:port]; None = start the embedded broker
    broker_kind: str = "embedded"        # "embedded" (workers/broker_compat.py topic configs on) or "kafka"
    app_id: str = "learnstream"
    data_dir: Path = Path("./learnstream-data")
    web_host: str = "127.0.0.1"           # advertised to other workers (owner forwarding)
    web_bind: str | None = None           # listen address; None = web_host (0.0.0.0 in a pod)
    web_port: int = 6066
    partitions: int = 8
    replication: int = 1
    standby_replicas: int = 1
    block_cache_bytes: int = _BLOCK_CACHE_BYTES
    session_timeout_s: float = _SESSION_TIMEOUT_S
    commit_interval_s: float = 1.0
    # one Kafka transaction per batch and partition: downstream events exactly once for read_committed
    # consumers (workers/stream/transactions.py); false: at-least-once with deterministic ids
    transactions: bool = True
    cache_bytes: int = CACHE_BYTES       # decoded sessions kept in memory (LRU, by bytes)
    max_session_bytes: int = MAX_SESSION_BYTES  # one session's state in one table (workers/state/limits.py)
    max_value_bytes: int = MAX_VALUE_BYTES      # one key's value: under Kafka's default 1 MiB message limit
    batch_max: int = 1000                # events per batch at most
    batch_within_s: float = 0.1          # a batch closes this long after its first event at the latest
    batch_linger_s: float = 0.005        # ... or once no event arrived for this long (see batching.py)
    fetch_max_wait_ms: int = 50          # consumer long-poll (faust hard-codes 1500; see faust_tuning)
    worker_id: str | None = None         # static group membership (the pod name on Kubernetes)
    log_level: str = "warning"
    log_format: str = "text"             # "text" or "json" (one JSON object per line)
    embedded_retention_bytes: int = _EMBEDDED_RETENTION_BYTES
    broker_unreachable_s: float = _BROKER_UNREACHABLE_S
    write_timeout_s: float = _WRITE_TIMEOUT_S
    kafka: dict[str, str] = field(default_factory=dict)
    # agents' side (MCP server, SDK write-and-wait): which worker to talk to and with which token
    worker_url: str | None = None         # base URL of a worker's HTTP API; None = start an embedded one
    api_token: str | None = None          # sent as `Authorization: Bearer` to the worker
    mcp_token: str | None = None          # bearer token remote agents must present to `learnstream mcp --http`
    mcp_session: str = "default"          # session_key of MCP tools and resources when a call names none
    apply_deadline_s: float = 60.0        # how long a write is retried (same idempotency key) while no worker answers
    # Kafka settings read from files (LEARNSTREAM_KAFKA_<NAME>_FILE: a mounted Secret rather than env)
    kafka_files: dict[str, Path] = field(default_factory=dict)
    # -- security (README "Security"; workers/stream/auth.py, workers/stream/limits.py) --
    auth: str = "auto"                   # "tokens", "off", or "auto" (tokens if a file is set, else loopback only)
    auth_tokens_file: Path | None = None  # YAML of token hashes and scopes (a mounted Secret; reloaded on change)
    peer_token_file: Path | None = None   # this worker's own token, sent when forwarding to the owner
    metrics_public: bool = True          # /metrics without a token (Prometheus scrapes; NetworkPolicy guards it)
    tls_certfile: Path | None = None     # serve HTTPS with this certificate chain ...
    tls_keyfile: Path | None = None      # ... and key
    tls_cafile: Path | None = None       # CA that forwarding verifies the owner's certificate against
    http_max_body_bytes: int = 1024 * 1024
    http_max_json_depth: int = 32
    http_max_concurrency: int = 64       # requests in flight per worker; more get 429
    http_header_timeout_s: float = 10.0  # a connection must send a complete request head within this
    http_body_timeout_s: float = 10.0    # ... and its body within this
    forward_timeout_s: float = 35.0      # a forwarded request (owner's write wait is 30 s)
    scoring_endpoints: tuple[str, ...] = ()  # the only URLs scoring backends may call (operator allowlist)
    scoring_api_key_file: Path | None = None  # bearer key sent to scoring_endpoints only

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        broker = _env("BROKER") or None
        kind = _env("BROKER_KIND") or ("kafka" if broker else "embedded")
        if kind not in ("embedded", "kafka"):
            raise ConfigError("LEARNSTREAM_BROKER_KIND must be 'embedded' or 'kafka'")
        kafka = {k: v for k in _KAFKA_PASSTHROUGH if (v := _env("KAFKA_" + k.upper()))}
        s = cls(
            broker=broker, broker_kind=kind, app_id=_env("APP_ID", "learnstream"),
            data_dir=Path(_env("DATA_DIR", "./learnstream-data")),
            web_host=_env("WEB_HOST", "127.0.0.1"), web_bind=_env("WEB_BIND") or None,
            web_port=_int("WEB_PORT", 6066),
            partitions=_int("PARTITIONS", 8), replication=_int("REPLICATION", 1),
            standby_replicas=_int("STANDBY_REPLICAS", 1), block_cache_bytes=_int("BLOCK_CACHE_BYTES", _BLOCK_CACHE_BYTES),
            session_timeout_s=_float("SESSION_TIMEOUT_S", _SESSION_TIMEOUT_S),
            commit_interval_s=_float("COMMIT_INTERVAL_S", 1.0), batch_max=_int("BATCH_MAX", 1000),
            transactions=_bool("TRANSACTIONS", True),
            cache_bytes=_int("CACHE_BYTES", CACHE_BYTES),
            max_session_bytes=_int("MAX_SESSION_BYTES", MAX_SESSION_BYTES),
            max_value_bytes=_int("MAX_VALUE_BYTES", MAX_VALUE_BYTES),
            batch_within_s=_float("BATCH_WITHIN_S", 0.1), batch_linger_s=_float("BATCH_LINGER_S", 0.005),
            fetch_max_wait_ms=_int("FETCH_MAX_WAIT_MS", 50),
            worker_id=_env("WORKER_ID") or None,
            log_level=_env("LOG_LEVEL", "warning"), log_format=_env("LOG_FORMAT", "text"),
            embedded_retention_bytes=_int("EMBEDDED_RETENTION_BYTES", _EMBEDDED_RETENTION_BYTES),
            broker_unreachable_s=_float("BROKER_UNREACHABLE_S", _BROKER_UNREACHABLE_S),
            write_timeout_s=_float("WRITE_TIMEOUT_S", _WRITE_TIMEOUT_S), kafka=kafka,
            worker_url=_env("WORKER_URL") or None, api_token=_env("API_TOKEN") or None,
            mcp_token=_env("MCP_TOKEN") or None, mcp_session=_env("MCP_SESSION") or "default",
            apply_deadline_s=_float("APPLY_DEADLINE_S", 60.0),
            kafka_files={k: Path(v) for k in ("sasl_plain_username", "sasl_plain_password")
                         if (v := _env("KAFKA_" + k.upper() + "_FILE"))},
            auth=_env("AUTH", "auto"), auth_tokens_file=_path("AUTH_TOKENS_FILE"),
            peer_token_file=_path("PEER_TOKEN_FILE"), metrics_public=_bool("METRICS_PUBLIC", True),
            tls_certfile=_path("TLS_CERTFILE"), tls_keyfile=_path("TLS_KEYFILE"), tls_cafile=_path("TLS_CAFILE"),
            http_max_body_bytes=_int("HTTP_MAX_BODY_BYTES", 1024 * 1024),
            http_max_json_depth=_int("HTTP_MAX_JSON_DEPTH", 32),
            http_max_concurrency=_int("HTTP_MAX_CONCURRENCY", 64),
            http_header_timeout_s=_float("HTTP_HEADER_TIMEOUT_S", 10.0),
            http_body_timeout_s=_float("HTTP_BODY_TIMEOUT_S", 10.0),
            forward_timeout_s=_float("FORWARD_TIMEOUT_S", 35.0),
            scoring_endpoints=tuple(u.strip().rstrip("/") for u in (_env("SCORING_ENDPOINTS") or "").split(",")
                                    if u.strip()),
            scoring_api_key_file=_path("SCORING_API_KEY_FILE"),
        )
        overrides = {k: v for k, v in overrides.items() if v is not None}
        if "data_dir" in overrides:
            overrides["data_dir"] = Path(str(overrides["data_dir"]))
        s = dataclasses.replace(s, **overrides)
        if s.partitions < 1:
            raise ConfigError("partitions must be >= 1")
        if s.log_format not in ("text", "json"):
            raise ConfigError(f"LEARNSTREAM_LOG_FORMAT must be 'text' or 'json', got {s.log_format!r}")
        if s.broker_unreachable_s <= 0 or s.write_timeout_s <= 0:
            raise ConfigError("LEARNSTREAM_BROKER_UNREACHABLE_S and LEARNSTREAM_WRITE_TIMEOUT_S must be > 0")
        if s.auth not in ("auto", "tokens", "off"):
            raise ConfigError("LEARNSTREAM_AUTH must be 'auto', 'tokens' or 'off'")
        if (s.tls_certfile is None) != (s.tls_keyfile is None):
            raise ConfigError("LEARNSTREAM_TLS_CERTFILE and LEARNSTREAM_TLS_KEYFILE go together")
        for name in ("http_max_body_bytes", "http_max_json_depth", "http_max_concurrency"):
            if getattr(s, name) < 1:
                raise ConfigError(f"LEARNSTREAM_{name.upper()} must be >= 1")
        return s

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
        out = {
            "LEARNSTREAM_BROKER_KIND": self.broker_kind, "LEARNSTREAM_APP_ID": self.app_id,
            "LEARNSTREAM_DATA_DIR": str(self.data_dir), "LEARNSTREAM_WEB_HOST": self.web_host,
            "LEARNSTREAM_WEB_PORT": str(self.web_port), "LEARNSTREAM_PARTITIONS": str(self.partitions),
            "LEARNSTREAM_REPLICATION": str(self.replication),
            "LEARNSTREAM_STANDBY_REPLICAS": str(self.standby_replicas),
            "LEARNSTREAM_BLOCK_CACHE_BYTES": str(self.block_cache_bytes),
            "LEARNSTREAM_SESSION_TIMEOUT_S": str(self.session_timeout_s),
            "LEARNSTREAM_COMMIT_INTERVAL_S": str(self.commit_interval_s),
            "LEARNSTREAM_TRANSACTIONS": "true" if self.transactions else "false",
            "LEARNSTREAM_BATCH_MAX": str(self.batch_max), "LEARNSTREAM_BATCH_WITHIN_S": str(self.batch_within_s),
            "LEARNSTREAM_BATCH_LINGER_S": str(self.batch_linger_s),
            "LEARNSTREAM_CACHE_BYTES": str(self.cache_bytes),
            "LEARNSTREAM_MAX_SESSION_BYTES": str(self.max_session_bytes),
            "LEARNSTREAM_MAX_VALUE_BYTES": str(self.max_value_bytes),
            "LEARNSTREAM_FETCH_MAX_WAIT_MS": str(self.fetch_max_wait_ms),
            "LEARNSTREAM_LOG_LEVEL": self.log_level, "LEARNSTREAM_LOG_FORMAT": self.log_format,
            "LEARNSTREAM_EMBEDDED_RETENTION_BYTES": str(self.embedded_retention_bytes),
            "LEARNSTREAM_BROKER_UNREACHABLE_S": str(self.broker_unreachable_s),
            "LEARNSTREAM_WRITE_TIMEOUT_S": str(self.write_timeout_s),
        }
        if self.broker:
            out["LEARNSTREAM_BROKER"] = self.broker
        if self.worker_id:
            out["LEARNSTREAM_WORKER_ID"] = self.worker_id
        if self.web_bind:
            out["LEARNSTREAM_WEB_BIND"] = self.web_bind
        out.update({"LEARNSTREAM_KAFKA_" + k.upper(): v for k, v in self.kafka.items()})
        out.update({f"LEARNSTREAM_KAFKA_{k.upper()}_FILE": str(v) for k, v in self.kafka_files.items()})
        out["LEARNSTREAM_AUTH"] = self.auth
        out["LEARNSTREAM_METRICS_PUBLIC"] = "true" if self.metrics_public else "false"
        for name in ("auth_tokens_file", "peer_token_file", "tls_certfile", "tls_keyfile", "tls_cafile",
                     "scoring_api_key_file"):
            if getattr(self, name) is not None:
                out["LEARNSTREAM_" + name.upper()] = str(getattr(self, name))
        for name in ("http_max_body_bytes", "http_max_json_depth", "http_max_concurrency", "http_header_timeout_s",
                     "http_body_timeout_s", "forward_timeout_s"):
            out["LEARNSTREAM_" + name.upper()] = str(getattr(self, name))
        if self.scoring_endpoints:
            out["LEARNSTREAM_SCORING_ENDPOINTS"] = ",".join(self.scoring_endpoints)
        return out
