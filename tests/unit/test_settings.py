from __future__ import annotations

import pytest

from workers.errors import ConfigError
from workers.stream.settings import Settings


def test_defaults_pick_the_embedded_broker(monkeypatch) -> None:
    monkeypatch.delenv("LEARNSTREAM_BROKER", raising=False)
    s = Settings.from_env()
    assert s.broker is None and s.broker_kind == "embedded" and s.partitions == 8


def test_env_and_overrides(monkeypatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_BROKER", "kafka:9092")
    monkeypatch.setenv("LEARNSTREAM_PARTITIONS", "12")
    monkeypatch.setenv("LEARNSTREAM_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    s = Settings.from_env(web_port=7000)
    assert (s.broker, s.broker_kind, s.partitions, s.web_port) == ("kafka:9092", "kafka", 12, 7000)
    assert s.kafka == {"sasl_mechanism": "SCRAM-SHA-512"}
    assert Settings.from_env(**{k: None for k in ("web_port",)}).web_port == 6066  # None = not given
    env = s.env()
    assert env["LEARNSTREAM_PARTITIONS"] == "12" and env["LEARNSTREAM_KAFKA_SASL_MECHANISM"] == "SCRAM-SHA-512"


@pytest.mark.parametrize("var,value,words", [("PARTITIONS", "many", "LEARNSTREAM_PARTITIONS"),
                                             ("SESSION_TIMEOUT_S", "soon", "LEARNSTREAM_SESSION_TIMEOUT_S"),
                                             ("BROKER_KIND", "redpanda", "LEARNSTREAM_BROKER_KIND"),
                                             ("PARTITIONS", "0", "LEARNSTREAM_PARTITIONS must be at least 1, got 0"),
                                             ("WEB_PORT", "99999", "LEARNSTREAM_WEB_PORT must be 1..65535"),
                                             ("BATCH_MAX", "-1", "LEARNSTREAM_BATCH_MAX must be at least 1"),
                                             ("STANDBY_REPLICAS", "-1", "LEARNSTREAM_STANDBY_REPLICAS must be at least 0"),
                                             ("BATCH_WITHIN_S", "0", "LEARNSTREAM_BATCH_WITHIN_S must be > 0"),
                                             ("BATCH_LINGER_S", "nan", "LEARNSTREAM_BATCH_LINGER_S must be at least 0"),
                                             ("WRITE_TIMEOUT_S", "-3", "LEARNSTREAM_WRITE_TIMEOUT_S must be > 0"),
                                             ("HTTP_MAX_CONCURRENCY", "0", "LEARNSTREAM_HTTP_MAX_CONCURRENCY"),
                                             ("LOG_LEVEL", "loud", "LEARNSTREAM_LOG_LEVEL must be one of debug"),
                                             ("SCORING_ENDPOINTS", "https://a.example/score,notaurl",
                                              "LEARNSTREAM_SCORING_ENDPOINTS: 'notaurl' is not an http"),
                                             ("CHANGELOG_REWRITE", "sometimes", "LEARNSTREAM_CHANGELOG_REWRITE"),
                                             ("CHANGELOG_REWRITE_FLOOR", "-1", "LEARNSTREAM_CHANGELOG_REWRITE_FLOOR")])
def test_bad_settings_name_the_variable(monkeypatch, var: str, value: str, words: str) -> None:
    monkeypatch.setenv("LEARNSTREAM_" + var, value)
    with pytest.raises(ConfigError, match=words):
        Settings.from_env()


def test_tls_files_become_an_ssl_context_for_every_client(monkeypatch, tmp_path) -> None:
    import ssl

    from aiokafka.admin import AIOKafkaAdminClient

    monkeypatch.setenv("LEARNSTREAM_BROKER", "kafka:9093")
    monkeypatch.setenv("LEARNSTREAM_KAFKA_SECURITY_PROTOCOL", "SSL")
    kw = Settings.from_env().kafka_kwargs()
    assert isinstance(kw["ssl_context"], ssl.SSLContext) and "ssl_cafile" not in kw

    async def build() -> None:  # accepted as-is (it refused ssl_cafile); built, never started
        AIOKafkaAdminClient(bootstrap_servers="kafka:9093", **kw)

    import asyncio

    asyncio.run(build())


def test_web_bind_defaults_to_the_advertised_host(monkeypatch) -> None:
    monkeypatch.setenv("LEARNSTREAM_WEB_BIND", "0.0.0.0")
    s = Settings.from_env()
    assert s.web_bind == "0.0.0.0" and s.web_host == "127.0.0.1" and s.env()["LEARNSTREAM_WEB_BIND"] == "0.0.0.0"


def test_fetch_max_wait_reaches_the_worker_consumer(monkeypatch) -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    from workers.stream import faust_internals

    class Made:
        _fetch_max_wait_ms = 1500  # what faust hard-codes

    monkeypatch.setattr(AIOKafkaConsumerThread, "_create_worker_consumer", lambda self, transport: Made())
    monkeypatch.setattr(faust_internals, "_wait_ms", None)
    faust_internals.set_fetch_max_wait(Settings.from_env().fetch_max_wait_ms)
    assert AIOKafkaConsumerThread._create_worker_consumer(object(), None)._fetch_max_wait_ms == 50


@pytest.mark.parametrize("env,on", [({}, True),  # the embedded default with transactions
                                    ({"LEARNSTREAM_BROKER": "kafka:9092"}, False),  # Kafka compacts them itself
                                    ({"LEARNSTREAM_TRANSACTIONS": "false"}, False),  # the broker compacts them
                                    ({"LEARNSTREAM_CHANGELOG_REWRITE": "false"}, False),
                                    ({"LEARNSTREAM_BROKER": "kafka:9092", "LEARNSTREAM_CHANGELOG_REWRITE": "true"}, True),
                                    ({"LEARNSTREAM_CHANGELOG_REWRITE": "true", "LEARNSTREAM_TRANSACTIONS": "false"},
                                     False)])
def test_changelog_rewrite_is_on_for_the_embedded_broker_with_transactions(monkeypatch, env, on) -> None:
    for k in ("LEARNSTREAM_BROKER", "LEARNSTREAM_BROKER_KIND", "LEARNSTREAM_TRANSACTIONS",
              "LEARNSTREAM_CHANGELOG_REWRITE"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings.from_env().rewrites_changelogs is on


def test_tls_files_that_cannot_be_read_name_the_variables(tmp_path) -> None:
    """ssl's own error for a missing certificate names no file; the worker's start says which setting."""
    from workers.stream.http_guard import server_ssl_context

    s = Settings.from_env(tls_certfile=tmp_path / "cert.pem", tls_keyfile=tmp_path / "key.pem")
    with pytest.raises(ConfigError, match="LEARNSTREAM_TLS_CERTFILE=.*cert.pem, LEARNSTREAM_TLS_KEYFILE=.*key.pem"):
        server_ssl_context(s)
    (tmp_path / "cert.pem").write_text("not a certificate")
    (tmp_path / "key.pem").write_text("not a key")
    with pytest.raises(ConfigError, match="not a readable certificate chain"):
        server_ssl_context(s)
