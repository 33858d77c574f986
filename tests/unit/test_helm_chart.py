"""The Helm chart deploy/helm/learnstream, rendered by the real Helm engine (helm-python-sdk's libhelm_c).

Checks what the chart promises: the resources per values set, the schema refusing bad values, the
optional resources behind their switches, static group membership, settings that the worker really
reads, and a dashboard whose every metric exists.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import re
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

helm = pytest.importorskip("helm_python", reason="helm-python-sdk (dev extra) renders the chart")
from helm_python import _native  # noqa: E402 - after the importorskip

from workers.stream import metrics  # noqa: E402
from workers.stream.settings import Settings  # noqa: E402
from workers.kafka.topics import topics  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "learnstream"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RELEASE, NAMESPACE = "rel", "ls"
MONITORING_API = "monitoring.coreos.com/v1"
# Labels Prometheus adds from the scrape target, not from the worker's own exposition.
TARGET_LABELS = {"namespace", "pod", "job", "instance", "service", "container", "endpoint"}


def _load_values_schema_module() -> Any:
    spec = importlib.util.spec_from_file_location("values_schema", CHART.parent / "values_schema.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    sys.modules[spec.name] = mod  # dataclasses and get_type_hints look the module up by name
    spec.loader.exec_module(mod)
    return mod


values_schema = _load_values_schema_module()


@pytest.fixture(scope="module")
def chart() -> Any:
    with helm.Chart.load(CHART) as c:
        yield c


def render(chart: Any, values: dict | None = None, *, api_versions: tuple[str, ...] = ()) -> dict[str, list[dict]]:
    """Rendered manifests by template file name, each parsed into its YAML documents.

    ``Chart.render`` of helm-python-sdk 0.2.2 does not pass ``api_versions`` (the
    ``.Capabilities.APIVersions`` of ``helm template --api-versions``), although libhelm_c's
    render options decode it; so this calls the same native ``helm_render`` with it.
    """
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    raw = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    out: dict[str, list[dict]] = {}
    for path, text in raw.items():
        if path.endswith("NOTES.txt"):
            continue
        docs = [d for d in yaml.safe_load_all(text) if d]
        if docs:  # a template switched off renders nothing
            out[path.rsplit("/", 1)[-1]] = docs
    return out


def docs_of(rendered: dict[str, list[dict]]) -> list[dict]:
    return [d for docs in rendered.values() for d in docs]


def kinds(rendered: dict[str, list[dict]]) -> list[str]:
    return sorted(d["kind"] for d in docs_of(rendered))


def one(rendered: dict[str, list[dict]], kind: str) -> dict:
    found = [d for d in docs_of(rendered) if d["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def container(rendered: dict[str, list[dict]]) -> dict:
    (c,) = one(rendered, "StatefulSet")["spec"]["template"]["spec"]["containers"]
    return c


def ci_values(name: str) -> dict:
    return yaml.safe_load((CHART / "ci" / name).read_text()) or {}


def notes(chart: Any, values: dict | None = None, api_versions: tuple[str, ...] = ()) -> str:
    opts = {"name": RELEASE, "namespace": NAMESPACE, "api_versions": list(api_versions)}
    raw = json.loads(_native.call_string("helm_render", chart._raw(), json.dumps(values or {}), json.dumps(opts)))
    return raw["learnstream/templates/NOTES.txt"]


BASE_KINDS = ["ConfigMap", "ConfigMap", "NetworkPolicy", "PodDisruptionBudget", "Service", "Service",
              "ServiceAccount", "StatefulSet"]
CI_EXPECTED = {
    "default-values.yaml": BASE_KINDS,
    "hpa-values.yaml": sorted(BASE_KINDS + ["HorizontalPodAutoscaler"]),
    "keda-values.yaml": sorted(BASE_KINDS + ["ScaledObject", "TriggerAuthentication"]),
    "minimal-values.yaml": ["ConfigMap", "NetworkPolicy", "Service", "Service", "ServiceAccount", "StatefulSet"],
    "monitoring-values.yaml": sorted(BASE_KINDS + ["ServiceMonitor"]),
    "mtls-values.yaml": BASE_KINDS,
    "sasl-plain-values.yaml": sorted(BASE_KINDS + ["Secret"]),
}


# -- rendering ------------------------------------------------------------------------------------------
def test_default_values_render_the_worker_set(chart: Any) -> None:
    r = render(chart)
    assert kinds(r) == BASE_KINDS
    assert one(r, "StatefulSet")["spec"]["replicas"] == chart.values["replicas"]


def test_every_ci_values_file_is_covered() -> None:
    assert sorted(p.name for p in CI_VALUES) == sorted(CI_EXPECTED)


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_ci_values_render(chart: Any, path: Path) -> None:
    r = render(chart, ci_values(path.name), api_versions=(MONITORING_API,))
    assert kinds(r) == CI_EXPECTED[path.name]
    for d in docs_of(r):
        assert len(d["metadata"]["name"]) <= 63, d["metadata"]["name"]
        assert d["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"


def test_lint_strict_passes() -> None:
    report = helm.lint(CHART, strict=True, kube_version="v1.30.0")
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


# -- schema ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("values", "where"), [
    ({"replicaCount": 3}, "replicaCount"),                            # unknown top-level key
    ({"image": {"registry": "x"}}, "registry"),                       # unknown nested key
    ({"replicas": "3"}, "/replicas"),                                 # a string, not an integer
    ({"replicas": 0}, "/replicas"),
    ({"autoscaling": {"mode": "vpa"}}, "/autoscaling/mode"),          # enum of modes
    ({"podManagementPolicy": "Serial"}, "/podManagementPolicy"),
    ({"learnstream": {"logLevel": "verbose"}}, "/learnstream/logLevel"),
    ({"learnstream": {"advertise": "nodeIP"}}, "/learnstream/advertise"),
    ({"kafka": {"securityProtocol": "TLS"}}, "/kafka/securityProtocol"),
    ({"kafka": {"sasl": {"mechanism": "GSSAPI"}}}, "/kafka/sasl/mechanism"),
    ({"kafka": {"bootstrap": "kafka"}}, "/kafka/bootstrap"),          # no port
    ({"image": {"digest": "latest"}}, "/image/digest"),
    ({"image": {"pullPolicy": "Sometimes"}}, "/image/pullPolicy"),
    ({"persistence": {"size": "ten gigs"}}, "/persistence/size"),
    ({"podDisruptionBudget": {"maxUnavailable": "half"}}, "/podDisruptionBudget/maxUnavailable"),
    ({"serviceMonitor": {"interval": 30}}, "/serviceMonitor/interval"),
    ({"podDisruptionBudget": {"maxUnavailable": "150%"}}, "/podDisruptionBudget/maxUnavailable"),
    ({"learnstream": {"partitions": None}}, "partitions"),            # null deletes a default: refused
    # an outside review: each rendered, and only the API server or Kafka refused the result
    ({"image": {"tag": "0.1.0@sha256:" + "0" * 64}}, "/image/tag"),   # "@" in the version label
    ({"nameOverride": "LearnStream"}, "/nameOverride"),               # not a DNS-1123 name
    ({"fullnameOverride": "Learn_Stream"}, "/fullnameOverride"),
    ({"persistence": {"accessModes": []}}, "/persistence/accessModes"),
    ({"learnstream": {"partitions": 10**12}}, "/learnstream/partitions"),
    ({"learnstream": {"sessionTimeoutSeconds": 100000}}, "/learnstream/sessionTimeoutSeconds"),  # > Kafka's max
])
def test_schema_rejects_bad_values(chart: Any, values: dict, where: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(where)):
        chart.render(values=values, name=RELEASE)


def test_schema_accepts_defaults_and_ci_values(chart: Any) -> None:
    chart.validate_schema({})
    for path in CI_VALUES:
        chart.validate_schema(ci_values(path.name))


def test_schema_is_generated_and_current() -> None:
    assert values_schema.main(["--check"]) == 0, "run: python deploy/helm/values_schema.py"
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["additionalProperties"] is False
    assert "DO NOT EDIT" in schema["$comment"]
    assert schema["properties"]["autoscaling"]["properties"]["mode"]["enum"] == ["keda", "hpa"]


def test_every_key_has_a_helm_docs_comment() -> None:
    docs = values_schema.parse_doc_comments((CHART / "values.yaml").read_text())
    missing = [p for p in values_schema.schema_paths() if not docs.get(p)]
    assert missing == []


def test_values_keys_are_exactly_the_schema() -> None:
    """values.yaml defines every schema key (the schema requires them all) and no other."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = json.loads((CHART / "values.schema.json").read_text())

    def walk(node: dict, sch: dict, path: str) -> None:
        if sch.get("additionalProperties") is not False:
            return
        assert set(node) == set(sch["properties"]), path
        for k, v in node.items():
            if isinstance(v, dict):
                walk(v, sch["properties"][k], f"{path}.{k}")

    walk(values, schema, "")


# -- relations the schema cannot express ---------------------------------------------------------------
@pytest.mark.parametrize(("values", "message"), [
    ({"replicas": 9}, "replicas (9) must be <= learnstream.partitions (8)"),
    ({"autoscaling": {"enabled": True, "maxReplicas": 16}}, "autoscaling.maxReplicas (16) must be <="),
    ({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 4}}, "minReplicas (5) must be <="),
    ({"autoscaling": {"enabled": True, "mode": "hpa", "hpa": {"targetCPUUtilizationPercentage": 0}}},
     "needs autoscaling.hpa.targetCPUUtilizationPercentage"),
    ({"kafka": {"securityProtocol": "SASL_SSL"}}, "needs kafka.sasl.mechanism"),
    ({"kafka": {"sasl": {"mechanism": "PLAIN", "username": "u", "password": "p"}}}, "needs kafka.securityProtocol"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN", "username": "u"}}},
     "kafka.sasl needs a password"),
    ({"kafka": {"securityProtocol": "SASL_SSL", "sasl": {"mechanism": "PLAIN", "existingSecret": "s"}}},
     "kafka.sasl needs a username"),
    ({"kafka": {"tls": {"caSecret": "ca"}}}, "kafka.tls secrets need kafka.securityProtocol SSL"),
    ({"podDisruptionBudget": {"maxUnavailable": ""}}, "podDisruptionBudget needs minAvailable or maxUnavailable"),
    ({"tls": {"secret": "web-tls"}, "learnstream": {"advertise": "podIP"}}, "tls.secret needs learnstream.advertise podDNS"),
    ({"serviceMonitor": {"enabled": True}, "auth": {"metricsPublic": False}},
     "serviceMonitor with auth.metricsPublic false needs serviceMonitor.bearerTokenSecret"),
])
def test_inconsistent_values_fail_with_a_clear_message(chart: Any, values: dict, message: str) -> None:
    with pytest.raises(helm.HelmError, match=re.escape(message)):
        render(chart, values)


def test_replicas_equal_to_partitions_is_fine(chart: Any) -> None:
    r = render(chart, {"replicas": 4, "learnstream": {"partitions": 4}})
    assert one(r, "StatefulSet")["spec"]["replicas"] == 4


# -- StatefulSet and pod ---------------------------------------------------------------------------------
def test_static_group_membership_from_the_pod_name(chart: Any) -> None:
    env = {e["name"]: e for e in container(render(chart))["env"]}
    assert env["LEARNSTREAM_WORKER_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}


def test_statefulset_volume_service_and_policy(chart: Any) -> None:
    r = render(chart, {"podManagementPolicy": "OrderedReady", "persistence": {"size": "50Gi",
                                                                              "storageClassName": "fast"}})
    sts = one(r, "StatefulSet")["spec"]
    headless = next(d for d in r["service-headless.yaml"])
    assert sts["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert sts["podManagementPolicy"] == "OrderedReady"
    (claim,) = sts["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data"
    assert claim["spec"]["resources"]["requests"]["storage"] == "50Gi"
    assert claim["spec"]["storageClassName"] == "fast"
    config = r["configmap.yaml"][0]
    mounts = {m["name"]: m["mountPath"] for m in container(r)["volumeMounts"]}
    assert mounts["data"] == config["data"]["LEARNSTREAM_DATA_DIR"]  # RocksDB on the volume
    assert sts["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


def test_no_persistence_uses_an_empty_dir(chart: Any) -> None:
    r = render(chart, {"persistence": {"enabled": False}})
    sts = one(r, "StatefulSet")["spec"]
    assert "volumeClaimTemplates" not in sts
    vols = {v["name"]: v for v in sts["template"]["spec"]["volumes"]}
    assert vols["data"] == {"name": "data", "emptyDir": {}}


def test_probes(chart: Any) -> None:
    c = container(render(chart))
    assert c["readinessProbe"]["httpGet"]["path"] == "/ready"
    assert c["livenessProbe"]["httpGet"]["path"] == "/health"
    assert c["startupProbe"]["httpGet"]["path"] == "/health"
    startup = c["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600  # generous: Kafka, topics, join


def test_checksum_annotation_follows_the_config(chart: Any) -> None:
    raw = json.loads(_native.call_string("helm_render", chart._raw(), "{}",
                                         json.dumps({"name": RELEASE, "namespace": NAMESPACE})))
    cm_text = raw["learnstream/templates/configmap.yaml"]
    sts = one(render(chart), "StatefulSet")
    annotation = sts["spec"]["template"]["metadata"]["annotations"]["checksum/config"]
    assert annotation == hashlib.sha256(cm_text.encode()).hexdigest()
    changed = one(render(chart, {"learnstream": {"logLevel": "info"}}), "StatefulSet")
    assert changed["spec"]["template"]["metadata"]["annotations"]["checksum/config"] != annotation


def test_selector_labels_are_stable_and_separate(chart: Any) -> None:
    sts = one(render(chart, {"commonLabels": {"team": "ml"}}), "StatefulSet")
    selector = sts["spec"]["selector"]["matchLabels"]
    assert selector == {"app.kubernetes.io/name": "learnstream", "app.kubernetes.io/instance": RELEASE}
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= pod_labels.items()
    assert pod_labels["app.kubernetes.io/version"] == chart.metadata["appVersion"]
    assert sts["metadata"]["labels"]["team"] == "ml"


def test_image_tag_defaults_to_app_version_and_digest_wins(chart: Any) -> None:
    repo = chart.values["image"]["repository"]
    assert container(render(chart))["image"] == f"{repo}:{chart.metadata['appVersion']}"
    assert container(render(chart, {"image": {"tag": "1.2.3"}}))["image"] == f"{repo}:1.2.3"
    digest = "sha256:" + "ab" * 32
    assert container(render(chart, {"image": {"tag": "1.2.3", "digest": digest}}))["image"] == f"{repo}@{digest}"


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_no_anti_pattern_defaults(chart: Any, path: Path) -> None:
    """Every image pinned (tag or digest, never latest), no Always pull policy or debug logging by default."""
    assert chart.values["image"]["pullPolicy"] != "Always"
    assert chart.values["learnstream"]["logLevel"] != "debug"
    r = render(chart, ci_values(path.name))
    spec = one(r, "StatefulSet")["spec"]["template"]["spec"]
    for c in spec["containers"] + spec.get("initContainers", []):
        assert re.search(r"(:[\w.-]+|@sha256:[0-9a-f]{64})$", c["image"]), c["image"]
        assert not c["image"].endswith(":latest")
    text = json.dumps(docs_of({k: v for k, v in r.items() if k != "grafana-dashboard.yaml"}))
    assert not re.search(r"(?i)\bdebug\b", text)


def test_pod_ip_advertise(chart: Any) -> None:
    env = {e["name"]: e for e in container(render(chart, {"learnstream": {"advertise": "podIP"}}))["env"]}
    assert env["LEARNSTREAM_WEB_HOST"]["valueFrom"] == {"fieldRef": {"fieldPath": "status.podIP"}}


def test_long_release_names_are_truncated(chart: Any) -> None:
    opts = {"name": "a-very-long-release-name-that-goes-on-and-on-abcdef", "namespace": NAMESPACE}
    raw = json.loads(_native.call_string("helm_render", chart._raw(), "{}", json.dumps(opts)))
    names = [d["metadata"]["name"] for path, text in raw.items() if not path.endswith("NOTES.txt")
             for d in yaml.safe_load_all(text) if d]
    assert names and all(len(n) <= 63 and not n.endswith("-") for n in names)
    # 52, not 63: a pod's controller-revision-hash label is <StatefulSet name>-<10 characters>, at most 63
    # (an outside review's 44-character release name made a 56-character StatefulSet whose pods could not exist)
    r = render(chart, {"fullnameOverride": "x" * 80})
    assert len(one(r, "StatefulSet")["metadata"]["name"]) == 52
    headless = r["service-headless.yaml"][0]["metadata"]["name"]
    assert len(headless) <= 63 and headless.endswith("-headless")
    opts = {"name": "payments-agents-continual-learning-prod-euw1", "namespace": NAMESPACE}
    raw = json.loads(_native.call_string("helm_render", chart._raw(), "{}", json.dumps(opts)))
    (sts,) = [d for d in yaml.safe_load_all(raw["learnstream/templates/statefulset.yaml"]) if d]
    assert len(sts["metadata"]["name"]) + len("-") + 10 <= 63


@pytest.mark.parametrize("values,words", [
    ({"podLabels": {"app.kubernetes.io/instance": "other"}}, "label app.kubernetes.io/instance is the chart's own"),
    ({"commonLabels": {"app.kubernetes.io/name": "x"}}, "label app.kubernetes.io/name is the chart's own"),
    ({"commonLabels": {"helm.sh/chart": "x"}}, "label helm.sh/chart is the chart's own"),
    ({"learnstream": {"dataDir": "/tmp"}}, "learnstream.dataDir /tmp"),
    ({"learnstream": {"dataDir": "/tmp/"}}, "learnstream.dataDir /tmp"),
    ({"replicas": 2, "podDisruptionBudget": {"minAvailable": 3, "maxUnavailable": ""}}, "never allow an eviction"),
    ({"replicas": 2, "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": ""}}, "never allow an eviction"),
    ({"podDisruptionBudget": {"minAvailable": "100%", "maxUnavailable": ""}}, "never allow an eviction"),
    ({"podDisruptionBudget": {"minAvailable": "", "maxUnavailable": 0}}, "never allow an eviction"),
    # Kubernetes rounds a percentage up: 67% of 3 is 3, 1% of 1 is 1 (an outside review)
    ({"replicas": 3, "podDisruptionBudget": {"minAvailable": "67%", "maxUnavailable": ""}}, "never allow an eviction"),
    ({"replicas": 1, "podDisruptionBudget": {"minAvailable": "1%", "maxUnavailable": ""}}, "never allow an eviction"),
    ({"autoscaling": {"enabled": True, "minReplicas": 1},
      "podDisruptionBudget": {"minAvailable": "50%", "maxUnavailable": ""}}, "never allow an eviction"),
])
def test_values_that_render_a_manifest_kubernetes_would_refuse_or_that_blocks_drains_fail(
        chart: Any, values: dict, words: str) -> None:
    """An outside review: these rendered without a word, then failed on apply (a duplicate label key, a
    selector the pods do not match, two mounts at /tmp) or made a budget no drain could ever satisfy."""
    with pytest.raises(Exception, match=re.escape(words)):
        render(chart, values)


def test_a_budget_that_allows_one_pod_down_renders(chart: Any) -> None:
    pdb = one(render(chart, {"replicas": 3, "podDisruptionBudget": {"minAvailable": 2, "maxUnavailable": ""}}),
              "PodDisruptionBudget")
    assert pdb["spec"]["minAvailable"] == 2
    for pct in ("66%", "1%"):  # 2 of 3, 1 of 3: one pod may go
        assert one(render(chart, {"replicas": 3, "podDisruptionBudget": {"minAvailable": pct, "maxUnavailable": ""}}),
                   "PodDisruptionBudget")["spec"]["minAvailable"] == pct
    assert "team" in one(render(chart, {"podLabels": {"team": "ml"}}), "StatefulSet")["spec"]["template"][
        "metadata"]["labels"]


# -- the settings the worker reads ------------------------------------------------------------------------
def _pod_env(r: dict[str, list[dict]], pod: str = "rel-learnstream-0", pod_ip: str = "10.0.0.7") -> dict[str, str]:
    """The environment a pod of this StatefulSet gets (ConfigMap + env, fieldRefs and $(VAR) resolved)."""
    env = dict(r["configmap.yaml"][0]["data"])
    field = {"metadata.name": pod, "metadata.namespace": NAMESPACE, "status.podIP": pod_ip}
    for e in container(r)["env"]:
        if "value" in e:
            env[e["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env[m[1]], e["value"])
        elif "fieldRef" in e["valueFrom"]:
            env[e["name"]] = field[e["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            ref = e["valueFrom"]["secretKeyRef"]
            env[e["name"]] = f"<secret {ref['name']}/{ref['key']}>"
    return env


def _names_settings_reads() -> set[str]:
    full = Settings(broker="b:1", worker_id="w", kafka={k: "x" for k in (
        "security_protocol", "sasl_mechanism", "sasl_plain_username", "sasl_plain_password",
        "ssl_cafile", "ssl_certfile", "ssl_keyfile")},
        kafka_files={k: Path("/f") for k in ("sasl_plain_username", "sasl_plain_password")},
        auth_tokens_file=Path("/t"), peer_token_file=Path("/p"), tls_certfile=Path("/c"), tls_keyfile=Path("/k"),
        tls_cafile=Path("/ca"), scoring_endpoints=("http://s/v1",), scoring_api_key_file=Path("/s"), web_bind="0.0.0.0")
    return set(full.env())


@pytest.mark.parametrize("path", CI_VALUES, ids=lambda p: p.name)
def test_every_chart_setting_is_read_by_the_worker(chart: Any, path: Path) -> None:
    env = _pod_env(render(chart, ci_values(path.name)))
    ours = {k for k in env if k.startswith("LEARNSTREAM_")}
    assert ours <= _names_settings_reads()


def test_worker_settings_from_the_chart_env(chart: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    values = ci_values("keda-values.yaml")
    r = render(chart, values)
    env = _pod_env(r)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    s = Settings.from_env()
    ls = chart.merge_values(values)["learnstream"]
    assert s.broker == values["kafka"]["bootstrap"] and s.broker_kind == "kafka"
    assert s.worker_id == "rel-learnstream-0"
    assert s.web_host == f"rel-learnstream-0.rel-learnstream-headless.{NAMESPACE}.svc.cluster.local"
    assert s.web_port == ls["webPort"] and str(s.data_dir) == ls["dataDir"]
    assert (s.partitions, s.replication, s.standby_replicas) == (ls["partitions"], ls["replication"],
                                                                  ls["standbyReplicas"])
    assert (s.block_cache_bytes, s.memtable_bytes, s.cache_bytes) == (ls["blockCacheBytes"], ls["memtableBytes"],
                                                                      ls["sessionCacheBytes"])
    assert s.session_timeout_s == ls["sessionTimeoutSeconds"]
    assert s.commit_interval_s == ls["commitIntervalSeconds"]
    assert (s.batch_max, s.batch_within_s, s.batch_linger_s) == (ls["batchMax"], ls["batchWithinSeconds"],
                                                                  ls["batchLingerSeconds"])
    assert s.log_level == ls["logLevel"] and s.app_id == ls["appId"]
    assert s.kafka == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                       "sasl_plain_username": "learnstream", "ssl_cafile": "/etc/learnstream/kafka-ca/ca.crt"}
    # the password is a file from the Secret, never an environment variable
    assert s.kafka_files == {"sasl_plain_password": Path("/etc/learnstream/kafka-sasl/password")}
    assert s.auth == "tokens" and s.auth_tokens_file == Path("/etc/learnstream/api/tokens.yaml")
    assert s.peer_token_file == Path("/etc/learnstream/api/peer-token") and s.metrics_public


def test_large_integer_values_render_as_integers(chart: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """An outside review: a million from a values file rendered "1e+06" (Helm reads YAML numbers as floats),
    which the worker refused (LEARNSTREAM_BATCH_MAX is not an integer) and KEDA cannot parse."""
    values = ci_values("keda-values.yaml")
    values["learnstream"]["batchMax"] = 1_000_000
    values["autoscaling"]["keda"].update(lagThreshold=1_000_000, activationLagThreshold=2_000_000)
    r = render(chart, values)
    env = _pod_env(r)
    assert env["LEARNSTREAM_BATCH_MAX"] == "1000000"
    meta = one(r, "ScaledObject")["spec"]["triggers"][0]["metadata"]
    assert (meta["lagThreshold"], meta["activationLagThreshold"]) == ("1000000", "2000000")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert Settings.from_env().batch_max == 1_000_000
    with pytest.raises(Exception, match="batchWithinSeconds"):  # the worker refuses 0 (must be > 0)
        render(chart, {"learnstream": {"batchWithinSeconds": 0}})


def test_tls_secrets_are_mounted_where_the_settings_point(chart: Any) -> None:
    r = render(chart, ci_values("mtls-values.yaml"))
    env = _pod_env(r)
    mounts = {m["name"]: m["mountPath"] for m in container(r)["volumeMounts"]}
    volumes = {v["name"]: v for v in one(r, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}
    for var, vol in (("LEARNSTREAM_KAFKA_SSL_CAFILE", "kafka-ca"), ("LEARNSTREAM_KAFKA_SSL_CERTFILE", "kafka-client"),
                     ("LEARNSTREAM_KAFKA_SSL_KEYFILE", "kafka-client")):
        directory, name = env[var].rsplit("/", 1)
        assert mounts[vol] == directory
        assert name in {i["path"] for i in volumes[vol]["secret"]["items"]}


def _mounted_file(r: dict[str, list[dict]], path: str) -> tuple[str, str]:
    """(Secret name, key) that the container sees at ``path``."""
    directory, name = path.rsplit("/", 1)
    (mount,) = [m for m in container(r)["volumeMounts"] if m["mountPath"] == directory]
    assert mount.get("readOnly") and "subPath" not in mount  # whole-volume mounts follow Secret updates
    (vol,) = [v for v in one(r, "StatefulSet")["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    items = {i["path"]: i["key"] for i in vol["secret"].get("items", [])}
    return vol["secret"]["secretName"], items.get(name, name)


def test_chart_managed_sasl_secret(chart: Any) -> None:
    r = render(chart, ci_values("sasl-plain-values.yaml"))
    secret = one(r, "Secret")
    env = _pod_env(r)
    name, key = _mounted_file(r, env["LEARNSTREAM_KAFKA_SASL_PLAIN_PASSWORD_FILE"])
    assert name == secret["metadata"]["name"] and key in secret["data"]
    assert "checksum/secret" in one(r, "StatefulSet")["spec"]["template"]["metadata"]["annotations"]


# -- optional resources ----------------------------------------------------------------------------------
def test_service_monitor_only_with_the_api_and_enabled(chart: Any) -> None:
    on = {"serviceMonitor": {"enabled": True}}
    assert "ServiceMonitor" not in kinds(render(chart))
    assert "ServiceMonitor" not in kinds(render(chart, api_versions=(MONITORING_API,)))
    assert "ServiceMonitor" not in kinds(render(chart, on))
    warning = "monitoring.coreos.com/v1 API is not installed"
    assert warning in notes(chart, on) and warning not in notes(chart, on, (MONITORING_API,))
    r = render(chart, on, api_versions=(MONITORING_API,))
    sm = one(r, "ServiceMonitor")
    headless = r["service-headless.yaml"][0]
    assert sm["spec"]["selector"]["matchLabels"].items() <= headless["metadata"]["labels"].items()
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics" and endpoint["port"] == headless["spec"]["ports"][0]["name"]


def test_service_monitor_scrapes_https_with_the_pods_certificate_and_a_token_when_asked(chart: Any) -> None:
    """An outside review: with `tls.secret` the ServiceMonitor scraped plain HTTP on the HTTPS port, and with
    `auth.metricsPublic: false` it sent no token (every scrape 401), both rendered without a word. The
    certificate names the pods as they advertise themselves (`*.<headless>.<ns>.svc.<clusterDomain>`): the
    scrape verifies it as a name under that wildcard."""
    values = {"serviceMonitor": {"enabled": True, "bearerTokenSecret": "prom-token"}, "tls": {"secret": "web-tls"},
              "auth": {"metricsPublic": False}}
    r = render(chart, values, api_versions=(MONITORING_API,))
    (endpoint,) = one(r, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["tlsConfig"]["ca"] == {"secret": {"name": "web-tls", "key": "ca.crt"}}
    advertised = {e["name"]: e.get("value") for e in container(r)["env"]}["LEARNSTREAM_WEB_HOST"]
    wildcard = advertised.split(".", 1)[1]  # the certificate's *.<headless>.<ns>.svc.<clusterDomain>
    assert endpoint["tlsConfig"]["serverName"].split(".", 1)[1].replace(NAMESPACE, "$(POD_NAMESPACE)") == wildcard
    assert endpoint["authorization"] == {"type": "Bearer", "credentials": {"name": "prom-token", "key": "token"}}
    (plain,) = one(render(chart, {"serviceMonitor": {"enabled": True}}, api_versions=(MONITORING_API,)),
                   "ServiceMonitor")["spec"]["endpoints"]
    assert "scheme" not in plain and "tlsConfig" not in plain and "authorization" not in plain


def test_pdb_only_when_enabled(chart: Any) -> None:
    assert one(render(chart), "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert "PodDisruptionBudget" not in kinds(render(chart, {"podDisruptionBudget": {"enabled": False}}))
    pdb = one(render(chart, {"podDisruptionBudget": {"minAvailable": "50%"}}), "PodDisruptionBudget")
    assert pdb["spec"] == {"minAvailable": "50%", "selector": pdb["spec"]["selector"]}


def test_keda_scaled_object_when_enabled(chart: Any) -> None:
    feedback = topics()["feedback"].name
    values = ci_values("keda-values.yaml")
    values["autoscaling"]["keda"]["topic"] = feedback
    r = render(chart, values)
    assert "HorizontalPodAutoscaler" not in kinds(r)
    sts = one(r, "StatefulSet")
    assert "replicas" not in sts["spec"]  # the autoscaler owns it
    so = one(r, "ScaledObject")["spec"]
    assert so["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet", "name": sts["metadata"]["name"]}
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (2, 12)
    (trigger,) = so["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "kafka"
    assert meta["consumerGroup"] == "learnstream" and meta["topic"] == feedback
    assert meta["lagThreshold"] == "5000" and meta["allowIdleConsumers"] == "false"
    assert (meta["sasl"], meta["tls"]) == ("scram_sha512", "enable")
    auth = one(r, "TriggerAuthentication")
    assert trigger["authenticationRef"]["name"] == auth["metadata"]["name"]
    params = {p["parameter"] for p in auth["spec"]["secretTargetRef"]} | {p["parameter"] for p in auth["spec"]["env"]}
    assert params == {"username", "password", "ca"}
    assert "ScaledObject" not in kinds(render(chart))
    plain = one(render(chart, {"autoscaling": {"enabled": True}}), "ScaledObject")["spec"]["triggers"][0]
    assert "authenticationRef" not in plain and "topic" not in plain["metadata"]


def test_hpa_alternative(chart: Any) -> None:
    r = render(chart, ci_values("hpa-values.yaml"))
    assert "ScaledObject" not in kinds(r)
    hpa = one(r, "HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"]["kind"] == "StatefulSet"
    assert {m["resource"]["name"]: m["resource"]["target"]["averageUtilization"] for m in hpa["metrics"]} == \
        {"cpu": 70, "memory": 85}
    assert hpa["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


# -- dashboard ------------------------------------------------------------------------------------------------
def _exposed_names(families: list[tuple[str, str, list[str]]]) -> dict[str, set[str]]:
    """Sample names a Prometheus scrape shows for (name, type, labelnames) families -> their labels."""
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    out: dict[str, set[str]] = {}
    for name, kind, labels in families:
        for s in suffixes[kind]:
            out[name + s] = set(labels) | ({"le"} if s == "_bucket" else set())
    return out


def _domain_metrics() -> dict[str, set[str]]:
    fams = []
    for name in metrics.__all__:
        m = getattr(metrics, name)
        if hasattr(m, "_type"):
            fams.append((m._name, m._type, list(m._labelnames)))
    return _exposed_names(fams)


def _faust_metrics() -> dict[str, set[str]]:
    from faust.sensors.prometheus import FaustMetrics
    from prometheus_client import CollectorRegistry

    from workers.stream.monitoring import SILENCED_FAUST_SERIES as _SILENCED_FAUST_SERIES

    fm = FaustMetrics.create(CollectorRegistry(), "faust")  # the prefix app.py gives the faust sensor
    silenced = {getattr(fm, n)._name for n in _SILENCED_FAUST_SERIES}  # not exported by a worker
    return _exposed_names([(m._name, m._type, list(m._labelnames)) for m in fm if m._name not in silenced])


def _exprs(dashboard: dict) -> list[str]:
    out = []
    for p in dashboard["panels"]:
        out += [t["expr"] for t in p.get("targets", [])]
    for v in dashboard["templating"]["list"]:
        if isinstance(v.get("query"), dict):
            out.append(v["query"]["query"])
    return out


def test_dashboard_plots_real_metrics() -> None:
    dashboard = json.loads((CHART / "dashboards" / "learnstream.json").read_text())
    known = {**_domain_metrics(), **_faust_metrics()}
    exprs = _exprs(dashboard)
    used: set[str] = set()
    for expr in exprs:
        names = set(re.findall(r"\b((?:learnstream|faust)_[a-z0-9_]+)\b", expr))
        assert names, expr
        for n in names:
            assert n in known, f"{n} (in {expr}) is not a metric of workers/stream/metrics.py or faust"
        labels = set(re.findall(r"(\w+)\s*=~?\s*\"", expr))
        for group in re.findall(r"by \(([^)]*)\)", expr):
            labels |= {g.strip() for g in group.split(",")}
        allowed = set().union(*(known[n] for n in names)) | TARGET_LABELS
        assert labels <= allowed, f"labels {labels - allowed} in {expr}"
        used |= names
    # every domain metric has a panel
    plotted = {n.removesuffix("_bucket").removesuffix("_sum").removesuffix("_count").removesuffix("_total")
               for n in used}
    domain = {m._name for m in (getattr(metrics, n) for n in metrics.__all__) if hasattr(m, "_type")}
    assert domain <= plotted, f"not plotted: {domain - plotted}"
    titles = " / ".join(p["title"] for p in dashboard["panels"]).lower()
    for word in ("events/s", "dlq", "lag", "latency", "kernel", "adapter norm", "boundaries", "readiness"):
        assert word in titles
    assert any("histogram_quantile(0.99" in e for e in exprs) and any("histogram_quantile(0.5" in e for e in exprs)


def test_dashboard_config_map(chart: Any) -> None:
    r = render(chart)
    cm = r["grafana-dashboard.yaml"][0]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["learnstream.json"]) == json.loads((CHART / "dashboards" / "learnstream.json").read_text())
    moved = render(chart, ci_values("monitoring-values.yaml"))["grafana-dashboard.yaml"][0]
    assert moved["metadata"]["namespace"] == "monitoring"
    assert "grafana-dashboard.yaml" not in render(chart, {"grafanaDashboard": {"enabled": False}})


# -- security (README "Security") ------------------------------------------------------------------------
def test_no_secret_travels_as_an_environment_variable(chart: Any) -> None:
    for path in CI_VALUES:
        r = render(chart, ci_values(path.name))
        c = container(r)
        assert not [e for e in c.get("env", []) if "secretKeyRef" in e.get("valueFrom", {})], path.name
        assert not [e for e in c.get("envFrom", []) if "secretRef" in e], path.name
        assert not any(("PASSWORD" in k or "TOKEN" in k) and not k.endswith("_FILE") for k in _pod_env(r)), path.name


def test_api_tokens_are_mounted_where_the_settings_point(chart: Any) -> None:
    r = render(chart)
    env = _pod_env(r)
    assert env["LEARNSTREAM_AUTH"] == "tokens"
    assert _mounted_file(r, env["LEARNSTREAM_AUTH_TOKENS_FILE"]) == ("rel-learnstream-api", "tokens.yaml")
    assert _mounted_file(r, env["LEARNSTREAM_PEER_TOKEN_FILE"]) == ("rel-learnstream-api", "peer-token")
    r = render(chart, {"auth": {"secret": "my-tokens", "tokensKey": "t.yaml", "metricsPublic": False}})
    env = _pod_env(r)
    assert _mounted_file(r, env["LEARNSTREAM_AUTH_TOKENS_FILE"]) == ("my-tokens", "t.yaml")
    assert env["LEARNSTREAM_METRICS_PUBLIC"] == "false"
    r = render(chart, {"auth": {"mode": "off"}})
    env = _pod_env(r)
    assert env["LEARNSTREAM_AUTH"] == "off" and "LEARNSTREAM_AUTH_TOKENS_FILE" not in env
    assert "api" not in {v["name"] for v in one(r, "StatefulSet")["spec"]["template"]["spec"]["volumes"]}


def test_the_chart_env_makes_a_worker_that_starts(chart: Any, monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    """The pod's settings pass the worker's start checks: tokens on a public bind, or explicitly off."""
    from workers.stream.auth import Authenticator

    for values, enabled in (({}, True), ({"auth": {"mode": "off"}}, False)):
        env = _pod_env(render(chart, values))
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        s = Settings.from_env()
        tokens = tmp_path / "tokens.yaml"
        tokens.write_text("tokens: []")
        if s.auth_tokens_file is not None:
            s = __import__("dataclasses").replace(s, auth_tokens_file=tokens)
            assert str(s.peer_token_file).startswith("/etc/learnstream/")  # mounted in a pod, absent here: a warning
        assert s.web_bind == "0.0.0.0" and Authenticator(s).enabled is enabled


def test_tls_listener_and_scoring_endpoints(chart: Any) -> None:
    r = render(chart, {"tls": {"secret": "learnstream-tls"}, "scoring": {
        "endpoints": ["http://vllm.models.svc:8000/v1", "https://scorer/v1"], "apiKeySecret": "scoring-key"}})
    env = _pod_env(r)
    assert _mounted_file(r, env["LEARNSTREAM_TLS_CERTFILE"]) == ("learnstream-tls", "tls.crt")
    assert _mounted_file(r, env["LEARNSTREAM_TLS_KEYFILE"]) == ("learnstream-tls", "tls.key")
    assert _mounted_file(r, env["LEARNSTREAM_TLS_CAFILE"]) == ("learnstream-tls", "ca.crt")
    assert _mounted_file(r, env["LEARNSTREAM_SCORING_API_KEY_FILE"]) == ("scoring-key", "api-key")
    c = container(r)
    assert {c[p]["httpGet"]["scheme"] for p in ("startupProbe", "livenessProbe", "readinessProbe")} == {"HTTPS"}
    assert {container(render(chart))["readinessProbe"]["httpGet"]["scheme"]} == {"HTTP"}
    import os

    for k, v in env.items():
        os.environ[k] = v
    try:
        s = Settings.from_env()
    finally:
        for k in env:
            os.environ.pop(k, None)
    assert s.scheme == "https" and s.scoring_endpoints == ("http://vllm.models.svc:8000/v1", "https://scorer/v1")


@pytest.mark.parametrize("values,where", [
    ({"scoring": {"endpoints": ["ftp://x"]}}, "scoring.endpoints"),
    ({"scoring": {"endpoints": ["http://user@x/v1"]}}, "scoring.endpoints"),
    ({"auth": {"mode": "maybe"}}, "auth.mode"),
    ({"networkPolicy": {"kafkaPorts": [0]}}, "networkPolicy.kafkaPorts"),
])
def test_schema_rejects_bad_security_values(chart: Any, values: dict, where: str) -> None:
    with pytest.raises(Exception, match=re.escape(where.split(".")[0])):
        render(chart, values)


def test_network_policy(chart: Any) -> None:
    r = render(chart)
    np_ = one(r, "NetworkPolicy")
    sts = one(r, "StatefulSet")
    spec = np_["spec"]
    assert spec["podSelector"]["matchLabels"] == sts["spec"]["selector"]["matchLabels"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["ports"] == [{"port": "http", "protocol": "TCP"}]  # nothing but the HTTP port
    peers = ingress["from"]
    assert peers[0] == {"podSelector": {"matchLabels": sts["spec"]["selector"]["matchLabels"]}}  # forwarding
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}} in peers
    assert len(peers) == 2  # no API callers until apiFrom names them
    dns, kafka, workers = spec["egress"]
    assert {p["port"] for p in dns["ports"]} == {53} and dns["to"][0]["podSelector"]["matchLabels"]["k8s-app"]
    assert [p["port"] for p in kafka["ports"]] == [9092, 9093] and "to" not in kafka
    assert workers["ports"] == [{"port": 6066, "protocol": "TCP"}]
    agents = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agents"}}}
    strimzi = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kafka"}}}
    extra = {"to": [{"ipBlock": {"cidr": "10.1.0.0/16"}}], "ports": [{"port": 8000, "protocol": "TCP"}]}
    spec = one(render(chart, {"networkPolicy": {"apiFrom": [agents], "kafkaTo": [strimzi], "kafkaPorts": [9094],
                                                "extraEgress": [extra]}}), "NetworkPolicy")["spec"]
    assert agents in spec["ingress"][0]["from"]
    # kafkaPorts, then the bootstrap's own port (my-cluster-kafka-bootstrap:9092)
    assert spec["egress"][1] == {"to": [strimzi], "ports": [{"port": 9094, "protocol": "TCP"},
                                                            {"port": 9092, "protocol": "TCP"}]}
    assert spec["egress"][-1] == extra
    # an outside review: a bootstrap on MSK's 9096 was not in kafkaPorts, and the workers lost Kafka silently
    msk = one(render(chart, {"kafka": {"bootstrap": "b-1.msk.example.com:9096,b-2.msk.example.com:9096"}}),
              "NetworkPolicy")["spec"]
    assert [p["port"] for p in msk["egress"][1]["ports"]] == [9092, 9093, 9096]
    assert "NetworkPolicy" not in kinds(render(chart, {"networkPolicy": {"enabled": False}}))


def test_pod_and_container_security_context(chart: Any) -> None:
    for path in CI_VALUES:
        pod = one(render(chart, ci_values(path.name)), "StatefulSet")["spec"]["template"]["spec"]
        c = pod["containers"][0]["securityContext"]
        assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert c["readOnlyRootFilesystem"] is True and c["allowPrivilegeEscalation"] is False
        assert c["capabilities"] == {"drop": ["ALL"]} and pod["automountServiceAccountToken"] is False


# checkov's Kubernetes checks the chart fails on purpose, with the reason. The test fails on any other
# finding, and on a listed one that no longer fires (so this list stays true).
CHECKOV_JUSTIFIED = {
    "CKV_K8S_11": "no CPU limit on purpose: CFS throttling stalls the event loop (heartbeats, request/reply); "
                  "requests reserve CPU, `resources` lets an operator set a limit",
    "CKV_K8S_15": "pullPolicy IfNotPresent by default (STYLE.md: `Always` as a default is an anti-pattern); "
                  "pin `image.digest` for immutability",
    "CKV_K8S_43": "the default image is the chart's appVersion tag; `image.digest` pins a digest "
                  "(ci/minimal-values.yaml), which this scan also covers",
}


def test_checkov_kubernetes_best_practices(chart: Any, tmp_path: Path) -> None:
    """checkov (PyPI, offline) over the manifests of every CI values set plus TLS, scoring and monitoring."""
    import subprocess

    sets = [ci_values(p.name) for p in CI_VALUES] + [
        {"tls": {"secret": "t"}, "scoring": {"endpoints": ["http://s/v1"], "apiKeySecret": "k"},
         "serviceMonitor": {"enabled": True}}]
    files = []
    for i, values in enumerate(sets):
        f = tmp_path / f"set{i}.yaml"
        f.write_text(yaml.safe_dump_all(docs_of(render(chart, values, api_versions=(MONITORING_API,)))))
        files.append(f)
    checkov = Path(sys.executable).with_name("checkov")
    args = [str(checkov), "--framework", "kubernetes", "--skip-download", "--quiet", "--compact", "-o", "json"]
    for f in files:
        args += ["-f", str(f)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=240,
                       env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "BC_SKIP_MAPPING": "TRUE",
                            "CHECKOV_RUN_SCA_PACKAGE_SCAN_V2": "false", "LOG_LEVEL": "ERROR"})
    reports = json.loads(p.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = {(c["check_id"], c["resource"]) for r in reports for c in r["results"]["failed_checks"]}
    passed = sum(r["summary"]["passed"] for r in reports)
    assert passed > 50, p.stderr[-2000:]  # it really ran the Kubernetes checks
    unexplained = sorted((cid, res) for cid, res in failed if cid not in CHECKOV_JUSTIFIED)
    assert not unexplained, unexplained
    assert {cid for cid, _ in failed} == set(CHECKOV_JUSTIFIED)


def test_notes_name_the_api_secret_or_warn(chart: Any) -> None:
    assert "Secret rel-learnstream-api exists" in notes(chart)
    off = notes(chart, {"auth": {"mode": "off"}})
    assert "WARNING: auth.mode is off" in off and "rel-learnstream-api" not in off


def test_the_notes_call_a_tls_worker_by_a_name_its_certificate_holds(chart: Any) -> None:
    """An outside review: with TLS on, the notes' `curl https://127.0.0.1` failed hostname verification (the
    certificate names the pods' DNS names)."""
    text = notes(chart, {"tls": {"secret": "web-tls"}})
    host = f"scrape.{RELEASE}-learnstream-headless.ls.svc.cluster.local"
    assert f"--resolve {host}:6066:127.0.0.1 https://{host}:6066/health" in text, text
    assert "jsonpath='{.data.ca\\.crt}'" in text and "https://127.0.0.1" not in text
    assert "curl -s http://127.0.0.1:6066/health" in notes(chart)
