"""The image and the compose file say what they must (no Docker engine here to build them)."""
from __future__ import annotations

from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _runtime_stage() -> str:
    text = (DEPLOY / "Dockerfile").read_text()
    return text[text.rindex("\nFROM "):]


def test_image_checks_health_and_carries_no_embedded_broker() -> None:
    runtime = _runtime_stage()
    assert "HEALTHCHECK" in runtime and "/health" in runtime
    assert "pip install --no-cache-dir --no-index --find-links /wheels learnstream\n" in runtime  # no [embedded]
    assert "noida" not in runtime and "LEARNSTREAM_TOPICS_DIR" not in runtime  # topics ship in the wheel


def test_compose_runs_single_node_kraft_kafka_and_a_worker_on_it() -> None:
    c = yaml.safe_load((DEPLOY / "docker-compose.yaml").read_text())
    kafka = c["services"]["kafka"]["environment"]
    assert set(kafka["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert kafka["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{kafka['KAFKA_NODE_ID']}@kafka:9093"
    assert kafka["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1  # one node
    assert "PLAINTEXT://kafka:9092" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    worker = c["services"]["learnstream"]
    assert worker["environment"]["LEARNSTREAM_BROKER"] == "kafka:9092"
    assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
