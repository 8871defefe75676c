"""The Helm chart (deploy/helm/secondpass), checked with the real tools, offline.

``helm lint`` and ``helm template`` run with several value sets (defaults, GPU,
an external Redis, the proxy alone); every rendered object is validated against
the Kubernetes JSON schemas of two minor versions (``kubernetes-validate``,
strict: an unknown field is an error), and the parts a cluster cannot check for
us are asserted here: the probes point at endpoints the apps really serve, the
grace period covers preStop plus the drain, every ``SECONDPASS_*`` variable
names a real setting, and the PDB/HPA select what they should.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from secondpass.config import CacheSettings, ConnectionSettings, RerankSettings
from secondpass.proxy.settings import ProxySettings
from secondpass.servers.tools import ensure_helm
from secondpass.service.settings import ServiceSettings

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "secondpass"
# The chart's kubeVersion floor and the newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.27.0", "1.37.0")
VALUE_SETS: dict[str, list[str]] = {
    "defaults": [],
    "gpu": ["ci/gpu-values.yaml"],
    "redis-external": ["ci/redis-external-values.yaml"],
    "proxy-only": ["ci/proxy-only-values.yaml"],
}
# Custom resources: no Kubernetes schema; checked by hand below.
CUSTOM_KINDS = {"ServiceMonitor"}
SETTINGS_AREAS: dict[str, Any] = {
    "SECONDPASS_SERVICE_": ServiceSettings,
    "SECONDPASS_PROXY_": ProxySettings,
    "SECONDPASS_ENGINE_": ConnectionSettings,
    "SECONDPASS_RERANK_": RerankSettings,
    "SECONDPASS_CACHE_": CacheSettings,
}


@pytest.fixture(scope="session")
def helm() -> Path:
    """The cached helm binary (built with ``go install`` on first use)."""
    return ensure_helm()


def _run(helm: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(helm), *args], capture_output=True, text=True, timeout=120, check=False
    )


def _values_args(files: list[str]) -> list[str]:
    return [arg for name in files for arg in ("-f", str(CHART / name))]


def render(helm: Path, files: list[str], *sets: str, kube: str = K8S_VERSIONS[-1]) -> list[dict]:
    """``helm template`` with the value files and ``--set`` pairs; the parsed objects."""
    set_args = [arg for pair in sets for arg in ("--set", pair)]
    done = _run(
        helm, "template", "rel", str(CHART), "--kube-version", kube,
        *_values_args(files), *set_args,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def by_kind(objects: list[dict], kind: str) -> list[dict]:
    return [o for o in objects if o["kind"] == kind]


def containers(objects: list[dict]) -> Iterator[tuple[dict, dict]]:
    for deployment in by_kind(objects, "Deployment"):
        for container in deployment["spec"]["template"]["spec"]["containers"]:
            yield deployment, container


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_is_clean(helm: Path, value_set: str) -> None:
    done = _run(helm, "lint", "--strict", str(CHART), *_values_args(VALUE_SETS[value_set]))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout


@pytest.mark.parametrize("kube", K8S_VERSIONS)
@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_rendered_manifests_match_the_kubernetes_schemas(
    helm: Path, value_set: str, kube: str
) -> None:
    objects = render(helm, VALUE_SETS[value_set], kube=kube)
    checked = 0
    for obj in objects:
        if obj["kind"] in CUSTOM_KINDS:
            continue
        try:
            kubernetes_validate.validate(obj, kube, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} invalid on {kube}: {exc}")
        checked += 1
    assert checked >= 5


def test_each_value_set_renders_the_objects_it_promises(helm: Path) -> None:
    defaults = {o["kind"] + "/" + o["metadata"]["name"] for o in render(helm, [])}
    assert {
        "Deployment/rel-secondpass-serve",
        "Service/rel-secondpass-serve",
        "PodDisruptionBudget/rel-secondpass-serve",
        "HorizontalPodAutoscaler/rel-secondpass-serve",
        "Deployment/rel-secondpass-redis",
        "Service/rel-secondpass-redis",
        "ConfigMap/rel-secondpass",
        "Secret/rel-secondpass-credentials",
    } <= defaults
    assert not any("proxy" in name or "ServiceMonitor" in name for name in defaults)

    proxy_only = {
        o["kind"] + "/" + o["metadata"]["name"] for o in render(helm, VALUE_SETS["proxy-only"])
    }
    assert "Deployment/rel-secondpass-proxy" in proxy_only
    assert "ServiceMonitor/rel-secondpass-proxy" in proxy_only
    assert not any(name.endswith("-serve") for name in proxy_only)

    external = render(helm, VALUE_SETS["redis-external"])
    assert not any(o["metadata"]["name"].endswith("-redis") for o in external)
    (secret,) = by_kind(external, "Secret")
    assert secret["stringData"]["redis-url"] == "rediss://cache.example.internal:6380/0"
    assert secret["stringData"]["redis-password"] == "not-a-real-password"  # noqa: S105


def _service_routes() -> set[str]:
    from tests.fixtures.service import FakeScorer

    from secondpass.service.app import create_app

    app = create_app(ServiceSettings(), scorer=FakeScorer())
    return {getattr(route, "path", "") for route in app.routes}


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_probes_point_at_the_real_health_endpoints(helm: Path, value_set: str) -> None:
    service_paths = _service_routes()
    expected = {
        "serve": ("/livez", "/readyz"),
        "proxy": ("/_secondpass/livez", "/_secondpass/readyz"),
    }
    seen = set()
    for _, container in containers(render(helm, VALUE_SETS[value_set])):
        if container["name"] not in expected:
            continue
        seen.add(container["name"])
        live, ready = expected[container["name"]]
        assert container["livenessProbe"]["httpGet"]["path"] == live
        assert container["startupProbe"]["httpGet"]["path"] == live
        assert container["readinessProbe"]["httpGet"]["path"] == ready
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
            assert container[probe]["httpGet"]["port"] in ports
        if container["name"] == "serve":
            assert {live, ready} <= service_paths
            assert str(ports["http"]) in container["args"]
        else:
            assert f"0.0.0.0:{ports['http']}" in container["args"]
    assert seen


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_grace_period_outlasts_prestop_and_drain(helm: Path, value_set: str) -> None:
    for deployment, container in containers(render(helm, VALUE_SETS[value_set])):
        if container["name"] not in ("serve", "proxy"):
            continue
        spec = deployment["spec"]["template"]["spec"]
        command = container["lifecycle"]["preStop"]["exec"]["command"]
        assert command[0] == "sleep"
        env = {e["name"]: e.get("value") for e in container["env"]}
        drain = float(env.get("SECONDPASS_SERVICE_SHUTDOWN_DELAY_S") or 0) + float(
            env.get("SECONDPASS_SERVICE_SHUTDOWN_TIMEOUT_S") or 30
        )
        assert spec["terminationGracePeriodSeconds"] > float(command[1]) + drain


def test_a_grace_period_shorter_than_the_drain_is_refused(helm: Path) -> None:
    done = _run(
        helm, "template", "rel", str(CHART), "--kube-version", K8S_VERSIONS[-1],
        "--set", "serve.terminationGracePeriodSeconds=20",
    )  # fmt: skip
    assert done.returncode != 0
    assert "serve.terminationGracePeriodSeconds (20) must be longer" in done.stderr


def _container_env(objects: list[dict], container: dict) -> dict[str, str]:
    """The variables a container starts with: its ConfigMap, then its env (Secrets resolved)."""
    (config_map,) = by_kind(objects, "ConfigMap")
    secrets = {s["metadata"]["name"]: s.get("stringData", {}) for s in by_kind(objects, "Secret")}
    env = dict(config_map["data"])
    for entry in container.get("env", []):
        if "value" in entry:
            env[entry["name"]] = entry["value"]
            continue
        ref = entry["valueFrom"]["secretKeyRef"]
        if ref["key"] in secrets.get(ref["name"], {}):
            env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    return env


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_every_setting_variable_names_a_real_setting(helm: Path, value_set: str) -> None:
    """A misspelt SECONDPASS_* name is silently ignored by pydantic-settings; catch it here.

    Then each front-end's settings are built from exactly the variables its pod
    gets, so a value of the wrong type or a half-given credential fails here.
    """
    objects = render(helm, VALUE_SETS[value_set])
    settings_class = {"serve": ServiceSettings, "proxy": ProxySettings}
    for _, container in containers(objects):
        if container["name"] not in settings_class:
            continue
        env = _container_env(objects, container)
        for name in sorted(n for n in env if n.startswith("SECONDPASS_")):
            prefix = next(p for p in SETTINGS_AREAS if name.startswith(p))
            field = name[len(prefix) :].lower().split("__")[0]
            assert field in SETTINGS_AREAS[prefix].model_fields, name
        with pytest.MonkeyPatch.context() as patch:
            for name in [n for n in os.environ if n.startswith("SECONDPASS_")]:
                patch.delenv(name)
            for name, value in env.items():
                patch.setenv(name, value)
            settings = settings_class[container["name"]]()
        assert settings.rerank.model == "BAAI/bge-reranker-v2-m3"
        assert settings.cache.backend == "redis"
        assert settings.cache.redis_url
        if isinstance(settings, ServiceSettings):
            assert settings.engine.hosts == ["http://opensearch:9200"]
            assert settings.shutdown_delay_s == 5 and settings.shutdown_timeout_s == 30


def test_pdb_and_hpa_select_their_deployment(helm: Path) -> None:
    objects = render(helm, [])
    (deployment,) = [
        o for o in by_kind(objects, "Deployment") if o["metadata"]["name"].endswith("-serve")
    ]
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert "replicas" not in deployment["spec"]  # the HPA owns the count
    (pdb,) = by_kind(objects, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]

    fixed = render(helm, [], "serve.autoscaling.enabled=false", "serve.replicas=3")
    (deployment,) = [
        o for o in by_kind(fixed, "Deployment") if o["metadata"]["name"].endswith("-serve")
    ]
    assert deployment["spec"]["replicas"] == 3
    assert not by_kind(fixed, "HorizontalPodAutoscaler")


def test_gpu_values_request_a_gpu_and_scale_on_queue_depth(helm: Path) -> None:
    objects = render(helm, VALUE_SETS["gpu"])
    ((_, container),) = [(d, c) for d, c in containers(objects) if c["name"] == "serve"]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":0.1.0-cu124")
    spec = next(d for d, c in containers(objects) if c["name"] == "serve")["spec"]["template"][
        "spec"
    ]
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert spec["tolerations"][0]["key"] == "nvidia.com/gpu"
    (config_map,) = by_kind(objects, "ConfigMap")
    assert config_map["data"]["SECONDPASS_RERANK_DEVICE"] == "cuda"
    (hpa,) = by_kind(objects, "HorizontalPodAutoscaler")
    pods = [m["pods"] for m in hpa["spec"]["metrics"] if m["type"] == "Pods"]
    assert pods[0]["metric"]["name"] == "secondpass_queue_depth_pairs"
    (monitor,) = by_kind(objects, "ServiceMonitor")
    (service,) = [
        s for s in by_kind(objects, "Service") if s["metadata"]["name"].endswith("-serve")
    ]
    assert (
        monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    )
    assert monitor["spec"]["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"


def test_default_pods_run_unprivileged_on_a_read_only_root(helm: Path) -> None:
    for deployment, container in containers(
        render(helm, VALUE_SETS["proxy-only"]) + render(helm, [])
    ):
        spec = deployment["spec"]["template"]["spec"]
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        if container["name"] in ("serve", "proxy"):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/models"} <= mounts


def test_the_schema_check_would_catch_a_misspelt_field(helm: Path) -> None:
    """The validation above is not vacuous: a typo in a rendered Deployment fails it."""
    (deployment,) = [
        o
        for o in render(helm, [])
        if o["kind"] == "Deployment" and "serve" in o["metadata"]["name"]
    ]
    deployment["spec"]["template"]["spec"]["terminationGracePeriodSecond"] = 60
    for kube in K8S_VERSIONS:
        with pytest.raises(kubernetes_validate.ValidationError):
            kubernetes_validate.validate(deployment, kube, strict=True)
