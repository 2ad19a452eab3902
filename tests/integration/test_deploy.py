"""What can be checked here of deploy/: the Kubernetes manifests against the Kubernetes JSON
schemas (kubernetes-validate, offline), KEDA's objects against their documented shape, the
Compose file against the Compose specification's JSON schema (the copy check-jsonschema ships),
the Dockerfile as Docker's own parser reads it (the `dockerfile` package), and everything
against the worker itself: settings that exist and are valid, the drain time, the health port
and paths, the queue KEDA watches. No Docker engine or cluster is needed (or used).
"""

from __future__ import annotations

import copy
import json
import math
import re
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dockerfile  # type: ignore[import-not-found]
import jsonschema
import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from schemas.referral_request import (
    MAX_ATTACHMENT_BYTES,
    MAX_ATTACHMENTS,
    MAX_MESSAGE_BYTES,
    Priority,
)
from worker.messaging.topology import Names, definitions
from worker.ops.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
ENV_EXAMPLE = DEPLOY / "worker.env.example"
DEFINITIONS = DEPLOY / "rabbitmq" / "definitions.json"

# The oldest Kubernetes still commonly run, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.28.0", kubernetes_validate.utils.latest_version())
METRICS_PORT = 9102
SECRET_KEYS = {"AMQP_URL", "POSTGRES_DSN", "PATIENT_KEY_SECRET", "RATE_LIMIT_REDIS_URL"}
PLACEHOLDER = "REPLACE_ME"
ERS_REQUESTS_PER_SECOND = 10.0  # e-RS' limit per application


# --- loading -----------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p.name != "kustomization.yaml")


@cache
def manifests() -> tuple[dict[str, Any], ...]:
    documents: list[dict[str, Any]] = []
    for path in manifest_files():
        documents += [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return tuple(documents)


def one(kind: str) -> dict[str, Any]:
    found = [m for m in manifests() if m["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def configmap() -> dict[str, str]:
    data: dict[str, str] = one("ConfigMap")["data"]
    return data


def secret() -> dict[str, str]:
    data: dict[str, str] = one("Secret")["stringData"]
    return data


def container() -> dict[str, Any]:
    containers: list[dict[str, Any]] = one("Deployment")["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


@cache
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def service(name: str) -> dict[str, Any]:
    services: dict[str, dict[str, Any]] = compose()["services"]
    return services[name]


_INTERPOLATION = re.compile(r"\$\{(?P<name>[A-Z0-9_]+)(?::-(?P<default>[^}]*))?\}")


def interpolated(value: str) -> str:
    """A Compose value as it is with no variable set: ``${NAME:-default}`` → default."""
    return _INTERPOLATION.sub(lambda m: m.group("default") or "", value)


def compose_worker_env() -> dict[str, str]:
    environment: dict[str, Any] = service("worker")["environment"]
    return {name: interpolated(str(value)) for name, value in environment.items()}


def env_example_names() -> set[str]:
    return {
        line.split("=", 1)[0]
        for line in ENV_EXAMPLE.read_text().splitlines()
        if line and not line.startswith("#")
    }


def settings_names() -> set[str]:
    names = set()
    for field in Settings.model_fields.values():
        alias = field.validation_alias
        choices = getattr(alias, "choices", [alias])
        names |= {c for c in choices if isinstance(c, str)}
    return names


def settings_from(values: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings these variables give, whatever this process's environment holds."""
    for name in settings_names():
        monkeypatch.delenv(name, raising=False)
    return Settings.model_validate(values)


def seconds(duration: str) -> float:
    """A Compose duration (``210s``, ``3m30s``, ``1h``) in seconds."""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


@cache
def dockerfile_instructions() -> tuple[Any, ...]:
    return tuple(dockerfile.parse_file(str(DOCKERFILE)))


def instructions(cmd: str) -> list[Any]:
    return [i for i in dockerfile_instructions() if i.cmd.upper() == cmd.upper()]


# --- Kubernetes ----------------------------------------------------------------------------


def test_kustomization_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == [p.name for p in manifest_files()]
    namespace = one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for manifest in manifests():
        if manifest["kind"] != "Namespace":
            assert manifest["metadata"]["namespace"] == namespace, manifest["metadata"]["name"]


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_kubernetes_manifests_validate_against_the_schemas(version: str) -> None:
    checked = set()
    for manifest in manifests():
        if manifest["apiVersion"].startswith("keda.sh/"):
            continue  # a CRD: test_keda_* check it
        kubernetes_validate.validate(manifest, version, strict=True)
        checked.add(manifest["kind"])
    assert checked == {
        "Namespace",
        "PersistentVolumeClaim",
        "ConfigMap",
        "Secret",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
    }


def test_the_validator_refuses_a_mistake() -> None:
    deployment = copy.deepcopy(one("Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessprobe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSIONS[0], strict=True)


def test_deployment_runs_several_replicas_on_postgres(monkeypatch: pytest.MonkeyPatch) -> None:
    assert one("Deployment")["spec"]["replicas"] >= 2
    settings = settings_from({**configmap(), **secret()}, monkeypatch)
    assert settings.saga_store == "postgres", "several replicas need the PostgreSQL saga store"


def test_termination_grace_outlasts_the_drain() -> None:
    grace = one("Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > Settings().shutdown_grace_seconds
    assert grace > float(configmap().get("SHUTDOWN_GRACE_SECONDS", "0"))


def test_probes_hit_the_health_endpoints_on_the_metrics_port() -> None:
    worker = container()
    ports = {p["name"]: p["containerPort"] for p in worker["ports"]}
    default_port = Settings.model_fields["metrics_port"].default
    assert default_port == METRICS_PORT
    assert "METRICS_PORT" not in configmap()
    assert ports["metrics"] == METRICS_PORT

    def target(probe: str) -> tuple[str, int]:
        get = worker[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target("readinessProbe") == ("/readyz", METRICS_PORT)
    assert target("livenessProbe") == ("/healthz", METRICS_PORT)
    if "startupProbe" in worker:
        assert target("startupProbe") == ("/healthz", METRICS_PORT)


def test_pod_is_locked_down() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    worker = container()
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert worker["securityContext"]["readOnlyRootFilesystem"] is True
    assert worker["securityContext"]["allowPrivilegeEscalation"] is False
    assert worker["securityContext"]["capabilities"]["drop"] == ["ALL"]
    (user,) = instructions("USER")
    assert user.value[0].split(":")[0] == str(pod["securityContext"]["runAsUser"])
    for kind in ("requests", "limits"):
        assert set(worker["resources"][kind]) >= {"cpu", "memory"}


def test_scratch_is_an_empty_dir_and_letters_outlive_the_pod() -> None:
    pod = one("Deployment")["spec"]["template"]["spec"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container()["volumeMounts"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]
    # Letter-ready events point at the files: an emptyDir would lose them with the pod.
    letters = volumes[mounts[configmap()["LETTERS_DIR"]]]
    claim = one("PersistentVolumeClaim")
    assert letters["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]  # every replica writes there
    assert pod["securityContext"]["fsGroup"]  # the volume is the pod user's: 0700 works


def test_deployment_takes_its_settings_from_the_configmap_and_secret() -> None:
    refs = container()["envFrom"]
    assert {r["configMapRef"]["name"] for r in refs if "configMapRef" in r} == {
        one("ConfigMap")["metadata"]["name"]
    }
    assert {r["secretRef"]["name"] for r in refs if "secretRef" in r} == {
        one("Secret")["metadata"]["name"]
    }
    # Besides those, only the pod's own name, from the downward API: the stable replica name.
    assert container()["env"] == [
        {"name": "REPLICA_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
    ]


def test_secret_holds_placeholders_only() -> None:
    manifest = one("Secret")
    assert "data" not in manifest
    assert set(secret()) == SECRET_KEYS
    for name, value in secret().items():
        assert PLACEHOLDER in value, f"{name} must be a placeholder"
    assert not SECRET_KEYS & set(configmap()), "secrets belong in the Secret"


def test_configmap_and_secret_are_valid_settings_matching_the_broker(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = settings_from({**configmap(), **secret()}, monkeypatch)
    expected = definitions(
        Names(settings.topology_prefix),
        delivery_limit=settings.delivery_limit,
        delays=settings.retry_delays,
    )
    assert json.loads(DEFINITIONS.read_text()) == expected


def test_service_and_budget_select_the_pods() -> None:
    labels = one("Deployment")["spec"]["template"]["metadata"]["labels"]
    selector = one("Deployment")["spec"]["selector"]["matchLabels"]
    assert selector.items() <= labels.items()
    metrics = one("Service")["spec"]
    assert metrics["selector"].items() <= labels.items()
    (port,) = metrics["ports"]
    assert port["port"] == METRICS_PORT and port["targetPort"] == "metrics"
    budget = one("PodDisruptionBudget")["spec"]
    assert budget["selector"]["matchLabels"].items() <= labels.items()
    assert budget.get("maxUnavailable", 1) < one("Deployment")["spec"]["replicas"]


# KEDA's custom resources, as far as this test relies on them (keda.sh/v1alpha1, KEDA 2.x).
_KEDA_METADATA = {
    "type": "object",
    "required": ["name", "namespace"],
    "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}},
}
SCALED_OBJECT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "ScaledObject"},
        "metadata": _KEDA_METADATA,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["scaleTargetRef", "triggers"],
            "properties": {
                "scaleTargetRef": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name"],
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "name": {"type": "string"},
                        "envSourceContainerName": {"type": "string"},
                    },
                },
                "pollingInterval": {"type": "integer", "minimum": 1},
                "cooldownPeriod": {"type": "integer", "minimum": 0},
                "initialCooldownPeriod": {"type": "integer", "minimum": 0},
                "idleReplicaCount": {"type": "integer", "minimum": 0},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "fallback": {"type": "object"},
                "advanced": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "restoreToOriginalReplicaCount": {"type": "boolean"},
                        "horizontalPodAutoscalerConfig": {
                            "type": "object",
                            "additionalProperties": False,
                            "properties": {
                                "name": {"type": "string"},
                                "behavior": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "scaleUp": {"type": "object"},
                                        "scaleDown": {"type": "object"},
                                    },
                                },
                            },
                        },
                        "scalingModifiers": {"type": "object"},
                    },
                },
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"type": "string"},
                            "name": {"type": "string"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "useCachedMetrics": {"type": "boolean"},
                            # KEDA reads trigger metadata as map[string]string.
                            "metadata": {
                                "type": "object",
                                "additionalProperties": {"type": "string"},
                            },
                            "authenticationRef": {
                                "type": "object",
                                "additionalProperties": False,
                                "required": ["name"],
                                "properties": {
                                    "name": {"type": "string"},
                                    "kind": {
                                        "enum": [
                                            "TriggerAuthentication",
                                            "ClusterTriggerAuthentication",
                                        ]
                                    },
                                },
                            },
                        },
                    },
                },
            },
        },
    },
}
TRIGGER_AUTHENTICATION_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "kind": {"const": "TriggerAuthentication"},
        "metadata": _KEDA_METADATA,
        "spec": {
            "type": "object",
            "minProperties": 1,
            "additionalProperties": False,
            "properties": {
                "secretTargetRef": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["parameter", "name", "key"],
                        "properties": {
                            "parameter": {"type": "string"},
                            "name": {"type": "string"},
                            "key": {"type": "string"},
                        },
                    },
                },
                "configMapTargetRef": {"type": "array"},
                "env": {"type": "array"},
                "podIdentity": {"type": "object"},
                "hashiCorpVault": {"type": "object"},
                "azureKeyVault": {"type": "object"},
                "awsSecretManager": {"type": "object"},
                "gcpSecretManager": {"type": "object"},
            },
        },
    },
}


def test_keda_objects_have_keda_shape() -> None:
    jsonschema.validate(one("ScaledObject"), SCALED_OBJECT_SCHEMA)
    jsonschema.validate(one("TriggerAuthentication"), TRIGGER_AUTHENTICATION_SCHEMA)


def test_keda_scales_the_deployment_on_the_request_queue() -> None:
    spec = one("ScaledObject")["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == one("Deployment")["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    assert target.get("apiVersion", "apps/v1") == "apps/v1"
    names = Names(Settings.model_fields["topology_prefix"].default)
    # The backlog waits in the work queues, one per priority; the intake queue is sorted
    # at once and stays near empty.
    queues = [trigger["metadata"]["queueName"] for trigger in spec["triggers"]]
    assert sorted(queues) == sorted(names.work_queue(p) for p in Priority)
    for trigger in spec["triggers"]:
        assert trigger["type"] == "rabbitmq"
        metadata = trigger["metadata"]
        assert metadata["mode"] == "QueueLength"
        assert float(metadata["value"]) > 0
        assert "host" not in metadata, "the broker URL holds a password: TriggerAuthentication"
        authentication = one("TriggerAuthentication")["metadata"]["name"]
        assert trigger["authenticationRef"]["name"] == authentication


def test_keda_reads_the_broker_url_from_the_worker_secret() -> None:
    (ref,) = one("TriggerAuthentication")["spec"]["secretTargetRef"]
    assert ref["parameter"] == "host"
    assert ref["name"] == one("Secret")["metadata"]["name"]
    assert ref["key"] == "AMQP_URL"
    # KEDA takes the vhost from the URL's path; with none, the trailing slash is required.
    assert urlsplit(secret()["AMQP_URL"]).path.startswith("/")


def test_keda_keeps_two_replicas_and_e_rs_rate_limit() -> None:
    spec = one("ScaledObject")["spec"]
    assert spec["minReplicaCount"] >= 2
    assert spec["minReplicaCount"] == one("Deployment")["spec"]["replicas"]
    assert spec["maxReplicaCount"] >= spec["minReplicaCount"]
    assert "idleReplicaCount" not in spec, "scaling to zero leaves nobody to drain or take over"
    # One budget for the whole application, shared by the pods through Redis; without it
    # each pod spends 1/ERS_RATE_LIMIT_MAX_REPLICAS of it, so the most pods KEDA may run
    # must not exceed that.
    assert float(configmap()["ERS_RATE_LIMIT_PER_SECOND"]) <= ERS_REQUESTS_PER_SECOND
    assert spec["maxReplicaCount"] <= int(configmap()["ERS_RATE_LIMIT_MAX_REPLICAS"])
    assert secret()["RATE_LIMIT_REDIS_URL"].startswith("redis")


# --- settings named anywhere ---------------------------------------------------------------


def test_every_variable_set_is_a_real_setting() -> None:
    known = env_example_names() & settings_names()
    assert known, "no settings found in deploy/worker.env.example"
    for where, names in {
        "ConfigMap": set(configmap()),
        "Secret": set(secret()),
        "Compose worker": set(compose_worker_env()),
    }.items():
        assert names <= known, f"{where} sets unknown settings: {sorted(names - known)}"


# --- Compose -------------------------------------------------------------------------------


def compose_spec() -> dict[str, Any]:
    source = files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema: dict[str, Any] = json.loads(source.read_text())
    return schema


def test_compose_file_validates_against_the_compose_specification() -> None:
    schema = compose_spec()
    validator = jsonschema.validators.validator_for(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(compose()), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)


def test_the_compose_schema_refuses_a_mistake() -> None:
    broken = copy.deepcopy(compose())
    broken["services"]["worker"]["depends_on"]["postgres"]["condition"] = "service_ready"
    schema = compose_spec()
    assert not jsonschema.validators.validator_for(schema)(schema).is_valid(broken)


def test_compose_runs_the_whole_stack() -> None:
    assert set(compose()["services"]) >= {
        "rabbitmq",
        "postgres",
        "redis",
        "worker",
        "sandbox",
        "prometheus",
        "grafana",
    }
    for name in ("rabbitmq", "postgres", "redis", "sandbox", "prometheus", "grafana"):
        assert service(name)["healthcheck"]["test"], name
    # The worker's healthcheck is the image's (HEALTHCHECK in the Dockerfile).
    assert "healthcheck" not in service("worker")
    (healthcheck,) = instructions("HEALTHCHECK")
    assert "/healthz" in " ".join(healthcheck.value)


def test_compose_worker_is_built_from_the_dockerfile_and_waits_for_its_dependencies() -> None:
    worker = service("worker")
    build = worker["build"]
    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    conditions = {name: dep["condition"] for name, dep in worker["depends_on"].items()}
    assert conditions == {
        "rabbitmq-definitions": "service_completed_successfully",
        "postgres": "service_healthy",
        "redis": "service_healthy",
        "sandbox": "service_healthy",
    }
    assert service("rabbitmq-definitions")["depends_on"]["rabbitmq"]["condition"] == (
        "service_healthy"
    )


def test_compose_sandbox_is_the_same_image() -> None:
    sandbox = service("sandbox")
    assert sandbox["image"] == service("worker")["image"]
    assert sandbox["build"] == service("worker")["build"]
    assert sandbox["build"]["args"]["EXTRAS"] == "sandbox"
    assert sandbox["entrypoint"] == ["ers-sandbox", "--host", "0.0.0.0", "--port", "8765"]


def test_compose_worker_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    env = compose_worker_env()
    settings = settings_from(env, monkeypatch)
    assert settings.saga_store == "postgres"
    assert settings.ers_base_url == "http://sandbox:8765/referrals/FHIR"
    assert urlsplit(settings.amqp_url.get_secret_value()).hostname == "rabbitmq"
    assert urlsplit(settings.postgres_dsn.get_secret_value()).hostname == "postgres"
    postgres = service("postgres")["environment"]
    dsn = urlsplit(settings.postgres_dsn.get_secret_value())
    assert dsn.username == postgres["POSTGRES_USER"]
    assert dsn.password == interpolated(postgres["POSTGRES_PASSWORD"])
    assert dsn.path == "/" + postgres["POSTGRES_DB"]
    amqp = urlsplit(settings.amqp_url.get_secret_value())
    rabbitmq = service("rabbitmq")["environment"]
    assert amqp.username == rabbitmq["RABBITMQ_DEFAULT_USER"]
    assert amqp.password == interpolated(rabbitmq["RABBITMQ_DEFAULT_PASS"])
    assert seconds(service("worker")["stop_grace_period"]) > max(
        settings.shutdown_grace_seconds, Settings().shutdown_grace_seconds
    )
    mounts = {v.split(":")[1] for v in service("worker")["volumes"]}
    assert str(settings.letters_dir) in mounts


def test_inline_python_compiles() -> None:
    """The Python that Compose and the image run inline (no engine here to run it)."""
    scripts = [service("rabbitmq-definitions")["command"][0]]
    assert service("rabbitmq-definitions")["entrypoint"] == ["python", "-c"]
    sandbox_check = service("sandbox")["healthcheck"]["test"]
    assert sandbox_check[:3] == ["CMD", "python", "-c"]
    scripts.append(sandbox_check[3])
    (healthcheck,) = instructions("HEALTHCHECK")
    scripts.append(healthcheck.value[-1])
    for script in scripts:
        compile(script, "<inline>", "exec")
    assert "/api/definitions" in scripts[0] and "/_sandbox/health" in scripts[1]


def bind_mounts() -> list[tuple[str, Path, str]]:
    """(service, host path, container path) of every bind mount in the Compose file."""
    found = []
    for name, spec in compose()["services"].items():
        for volume in spec.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                found.append((name, (COMPOSE.parent / source).resolve(), target))
    return found


def test_compose_bind_mounts_exist() -> None:
    mounts = bind_mounts()
    assert mounts
    for name, source, _ in mounts:
        assert source.exists(), f"{name} mounts {source}, which does not exist"
    sources = {(name, source.relative_to(ROOT).as_posix()) for name, source, _ in mounts}
    assert sources >= {
        ("rabbitmq-definitions", "deploy/rabbitmq/definitions.json"),
        ("rabbitmq", "deploy/rabbitmq/enabled_plugins"),
        ("prometheus", "deploy/prometheus/prometheus.yml"),
        ("prometheus", "deploy/prometheus/alerts.yml"),
        ("grafana", "deploy/grafana/provisioning"),
        ("grafana", "deploy/grafana/dashboards"),
    }


def test_compose_monitoring_finds_what_it_is_configured_for() -> None:
    """Prometheus scrapes Compose services, Grafana's dashboard provider reads where the
    dashboards are mounted, and the rules file is beside the configuration."""
    services = set(compose()["services"])
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    hosts = set()
    for job in config["scrape_configs"]:
        for static in job.get("static_configs", []):
            hosts |= {target.split(":")[0] for target in static["targets"]}
        for dns in job.get("dns_sd_configs", []):
            hosts |= set(dns["names"])
    assert hosts and hosts <= services
    targets = {(name, target) for name, _, target in bind_mounts()}
    for rule_file in config.get("rule_files", []):
        assert ("prometheus", str(Path("/etc/prometheus") / rule_file)) in targets
    dashboards = {t for n, _, t in bind_mounts() if n == "grafana" and t.endswith("dashboards")}
    for provider_file in (DEPLOY / "grafana" / "provisioning" / "dashboards").glob("*.y*ml"):
        for provider in yaml.safe_load(provider_file.read_text())["providers"]:
            assert provider["options"]["path"] in dashboards


def test_rabbitmq_plugins_and_config() -> None:
    plugins = (DEPLOY / "rabbitmq" / "enabled_plugins").read_text().strip()
    match = re.fullmatch(r"\[([a-z_]+(?:,[a-z_]+)*)\]\.", plugins)
    assert match, "enabled_plugins is an Erlang list of atoms ending with a full stop"
    assert set(match.group(1).split(",")) >= {"rabbitmq_management", "rabbitmq_prometheus"}
    conf = {}
    for line in (DEPLOY / "rabbitmq" / "rabbitmq.conf").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            key, value = (part.strip() for part in line.split("=", 1))
            conf[key] = value
    # The broker refuses what the worker would: one number, the contract's largest body, which
    # holds every attachment at its largest, base64-encoded.
    assert int(conf["max_message_size"]) == MAX_MESSAGE_BYTES
    assert MAX_ATTACHMENTS * math.ceil(MAX_ATTACHMENT_BYTES / 3) * 4 < MAX_MESSAGE_BYTES
    port = conf.get("prometheus.tcp.port", "15692")
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    targets = {
        target
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    }
    assert f"rabbitmq:{port}" in targets


# --- Dockerfile ----------------------------------------------------------------------------


def test_dockerfile_exposes_the_metrics_port() -> None:
    (expose,) = instructions("EXPOSE")
    assert expose.value == (str(METRICS_PORT),)


def test_dockerfile_is_multi_stage_on_python_311_slim() -> None:
    args = dict(a.value[0].split("=", 1) for a in instructions("ARG") if "=" in a.value[0])
    stages = [i.value for i in instructions("FROM")]
    assert len(stages) >= 2
    for stage in stages:
        image = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], stage[0])
        assert image == "python:3.11-slim"
    (copy_from,) = [
        c for c in instructions("COPY") if any(f.startswith("--from=") for f in c.flags)
    ]
    assert copy_from.flags == (f"--from={stages[0][2]}",)


def test_dockerfile_runs_the_worker_as_a_non_root_user() -> None:
    (user,) = instructions("USER")
    uid = user.value[0].split(":")[0]
    assert uid.isdigit() and int(uid) != 0, "a numeric uid lets Kubernetes check runAsNonRoot"
    (entrypoint,) = instructions("ENTRYPOINT")
    (cmd,) = instructions("CMD")
    assert entrypoint.json and cmd.json, "exec form, so the worker itself gets SIGTERM"
    assert entrypoint.value + cmd.value == ("ers-worker", "run")
    (healthcheck,) = instructions("HEALTHCHECK")
    assert healthcheck.value[:2] == ("CMD", "python")
    assert f"'{METRICS_PORT}'" in healthcheck.value[-1] and "/healthz" in healthcheck.value[-1]


def test_dockerfile_copies_what_exists() -> None:
    for instruction in instructions("COPY"):
        if instruction.flags:
            continue
        for source in instruction.value[:-1]:
            assert (ROOT / source).exists(), source
