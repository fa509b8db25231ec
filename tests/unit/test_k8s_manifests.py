"""The Kubernetes manifests: the example overlay renders with kubectl's kustomize, every object
validates offline against the Kubernetes 1.30 schemas, and the pieces agree with each other
(probes on the health port, named gRPC ports, Envoy's DNS names and JWKS path, drain times)."""

from __future__ import annotations

import base64
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from services.live.client import CLUSTER_PARTITIONS, is_cluster_url, partitions_in
from services.ops.mesh import deploy
from services.ops.mesh.binaries import find_binary
from services.server.urls import database_url, redis_url

K8S = deploy.ROOT / "k8s"
OVERLAY = K8S / "overlays" / "example"
SERVICES = ("location", "ride", "geo")
KUBERNETES_VERSION = "1.30"
# Kustomization fields kustomize v2.0.3 (kubectl 1.20, Debian's kubernetes-client) understands.
KUSTOMIZE_V2_FIELDS = {
    "apiVersion", "kind", "bases", "resources", "namespace", "namePrefix", "nameSuffix",
    "commonLabels", "commonAnnotations", "images", "configMapGenerator", "secretGenerator",
    "generatorOptions", "patchesStrategicMerge", "patchesJson6902", "vars", "crds",
}  # fmt: skip
# What a service gets from SIGTERM to exit: its streams drain in up to ~10 s.
SERVICE_DRAIN_S = 10

Object = dict[str, Any]


def _kustomize(path: Path) -> list[Object]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("no kubectl on PATH: `make install` (kubernetes-client) renders kustomize")
    result = subprocess.run(
        [kubectl, "kustomize", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> list[Object]:
    return _kustomize(OVERLAY)


def _one(rendered: list[Object], kind: str, name: str) -> Object:
    (found,) = [
        o for o in rendered if o["kind"] == kind and re.fullmatch(rf"{name}(-\w+)?", _name(o))
    ]
    return found


def _name(obj: Object) -> str:
    name: str = obj["metadata"]["name"]
    return name


def _pod(deployment: Object) -> Object:
    spec: Object = deployment["spec"]["template"]["spec"]
    return spec


def _containers(rendered: list[Object]) -> Iterator[tuple[str, Object, Object]]:
    for obj in rendered:
        if obj["kind"] in ("Deployment", "Job"):
            pod = _pod(obj)
            for container in pod["containers"]:
                yield _name(obj), pod, container


def _env(container: Object, rendered: list[Object]) -> dict[str, str]:
    """The container's plain environment: its ConfigMaps' literals and its own values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        configmap = next(
            o
            for o in rendered
            if o["kind"] == "ConfigMap" and _name(o) == source["configMapRef"]["name"]
        )
        env.update(configmap["data"])
    env.update({e["name"]: e.get("value", "<from a reference>") for e in container.get("env", [])})
    return env


def test_kustomizations_use_only_what_kustomize_v2_understands() -> None:
    for path in K8S.rglob("kustomization.yaml"):
        fields = set(yaml.safe_load(path.read_text()))
        assert fields <= KUSTOMIZE_V2_FIELDS, f"{path}: {fields - KUSTOMIZE_V2_FIELDS}"


def test_the_base_renders_on_its_own() -> None:
    kinds = {o["kind"] for o in _kustomize(K8S / "base")}
    assert {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


def test_every_object_validates_against_the_kubernetes_schemas(rendered: list[Object]) -> None:
    failures = []
    for obj in rendered:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            failures.append(f"{obj['kind']}/{_name(obj)}: {exc.message} at {list(exc.path)}")
    assert not failures, "\n".join(failures)


def test_the_overlay_has_every_part(rendered: list[Object]) -> None:
    kinds = {(o["kind"], re.sub(r"-[a-z0-9]{10}$", "", _name(o))) for o in rendered}
    for service in SERVICES:
        for kind in ("Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"):
            assert (kind, service) in kinds
    assert {
        ("Deployment", "envoy"),
        ("Service", "envoy"),
        ("ConfigMap", "envoy-config"),
        ("Deployment", "web"),
        ("Service", "web"),
        ("Job", "ridemesh-migrate"),
        ("Secret", "ridemesh-stores"),
        ("Secret", "ridemesh-service-token"),
        ("ConfigMap", "ridemesh-jwks"),
        ("Namespace", "ridemesh"),
    } <= kinds
    # Redis and PostgreSQL are external services, not toy StatefulSets.
    assert not any(kind == "StatefulSet" for kind, _ in kinds)
    assert all(
        o["metadata"].get("namespace") == "ridemesh" for o in rendered if o["kind"] != "Namespace"
    )


@pytest.mark.parametrize("service", SERVICES)
def test_services_are_headless_with_named_grpc_ports(rendered: list[Object], service: str) -> None:
    spec = _one(rendered, "Service", service)["spec"]
    assert spec["clusterIP"] == "None"  # Envoy's STRICT_DNS sees every ready pod
    ports = {p["name"]: p for p in spec["ports"]}
    assert ports["grpc"]["port"] == deploy.SERVICE_PORT
    assert ports["grpc"]["appProtocol"] == "grpc"
    assert "metrics" in ports
    pod_labels = _one(rendered, "Deployment", service)["spec"]["template"]["metadata"]["labels"]
    assert spec["selector"].items() <= pod_labels.items()


@pytest.mark.parametrize("service", SERVICES)
def test_grpc_probes_on_the_serving_port(rendered: list[Object], service: str) -> None:
    (container,) = _pod(_one(rendered, "Deployment", service))["containers"]
    assert container["args"] == [
        "serve", service, "--host", "0.0.0.0", "--port", str(deploy.SERVICE_PORT),
    ]  # fmt: skip
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["grpc"] == {"port": deploy.SERVICE_PORT}
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"grpc": deploy.SERVICE_PORT, "metrics": 9090}


@pytest.mark.parametrize("service", SERVICES)
def test_metrics_are_served_and_scraped(rendered: list[Object], service: str) -> None:
    deployment = _one(rendered, "Deployment", service)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == "9090"
    (container,) = _pod(deployment)["containers"]
    assert _env(container, rendered)["RIDEMESH_METRICS_PORT"] == "9090"


@pytest.mark.parametrize("service", SERVICES)
def test_autoscaled_and_disruption_budgeted(rendered: list[Object], service: str) -> None:
    deployment = _one(rendered, "Deployment", service)
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"
    hpa = _one(rendered, "HorizontalPodAutoscaler", service)
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": service,
    }
    assert hpa["spec"]["minReplicas"] >= 2
    pdb = _one(rendered, "PodDisruptionBudget", service)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()


def test_every_container_is_locked_down(rendered: list[Object]) -> None:
    for name, pod, container in _containers(rendered):
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["automountServiceAccountToken"] is False, name
        context = container["securityContext"]
        assert context["allowPrivilegeEscalation"] is False, name
        assert context["readOnlyRootFilesystem"] is True, name
        assert context["capabilities"]["drop"] == ["ALL"], name
        resources = container["resources"]
        assert {"cpu", "memory"} <= resources["requests"].keys(), name
        assert {"cpu", "memory"} <= resources["limits"].keys(), name


def test_pods_have_time_to_drain_their_streams(rendered: list[Object]) -> None:
    for name in (*SERVICES, "envoy"):
        pod = _pod(_one(rendered, "Deployment", name))
        (container,) = pod["containers"]
        command = " ".join(container["lifecycle"]["preStop"]["exec"]["command"])
        sleeps = sum(int(s) for s in re.findall(r"sleep (\d+)", command))
        assert sleeps >= 5, name  # Envoy's DNS refresh (5 s) drops the pod before SIGTERM
        drain = SERVICE_DRAIN_S if name in SERVICES else 0
        assert pod["terminationGracePeriodSeconds"] >= sleeps + drain + 5, name
    envoy = _pod(_one(rendered, "Deployment", "envoy"))["containers"][0]
    assert "/drain_listeners?graceful" in " ".join(envoy["lifecycle"]["preStop"]["exec"]["command"])


def test_envoy_runs_the_committed_rendered_config(rendered: list[Object]) -> None:
    configmap = _one(rendered, "ConfigMap", "envoy-config")
    committed = (deploy.ROOT / "k8s/base/config/envoy.yaml").read_text()
    assert configmap["data"] == {"envoy.yaml": committed}
    pod = _pod(_one(rendered, "Deployment", "envoy"))
    (container,) = pod["containers"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == _name(configmap)
    assert container["args"][container["args"].index("--config-path") + 1] == (
        f"{mounts['config']}/envoy.yaml"
    )
    jwt = deploy.k8s_config().jwt
    assert jwt is not None
    assert jwt.jwks_filename == f"{mounts['jwks']}/jwks.json"
    jwks = _one(rendered, "ConfigMap", "ridemesh-jwks")
    assert volumes["jwks"]["configMap"]["name"] == _name(jwks)
    assert "jwks.json" in jwks["data"]


def test_envoy_image_matches_the_envoy_the_tests_run(rendered: list[Object]) -> None:
    (container,) = _pod(_one(rendered, "Deployment", "envoy"))["containers"]
    image, tag = container["image"].split(":")
    assert image == "envoyproxy/envoy"
    version = subprocess.run(
        [str(find_binary("envoy")), "--version"], capture_output=True, text=True, check=True
    ).stdout
    assert f"/{tag.removeprefix('v')}/" in version


def test_envoy_finds_every_upstream_by_its_service_name(rendered: list[Object]) -> None:
    for cluster, host in deploy.UPSTREAM_NAMES.items():
        service = _one(rendered, "Service", host)
        assert service["spec"]["clusterIP"] == "None", cluster
        port = deploy.WEB_PORT if cluster == "web" else deploy.SERVICE_PORT
        assert port in [p["port"] for p in service["spec"]["ports"]], cluster
    envoy = _one(rendered, "Service", "envoy")
    assert envoy["spec"]["type"] == "LoadBalancer"
    assert [p["port"] for p in envoy["spec"]["ports"]] == [deploy.ENVOY_PORT]


def test_services_agree_with_envoy_on_tokens_and_run_in_production(
    rendered: list[Object],
) -> None:
    jwt = deploy.k8s_config().jwt
    assert jwt is not None
    assert jwt.jwks_filename is not None
    for service in SERVICES:
        (container,) = _pod(_one(rendered, "Deployment", service))["containers"]
        env = _env(container, rendered)
        assert env["RIDEMESH_PRODUCTION"] == "1"
        assert env["RIDEMESH_OPEN_REFLECTION"] == "0"
        assert env["RIDEMESH_AUTH_ISSUER"] == jwt.issuer
        assert env["RIDEMESH_AUTH_AUDIENCE"] == jwt.audiences[0]
        assert f"{env['RIDEMESH_AUTH_KEYS_DIR']}/jwks.json" == jwt.jwks_filename
        assert env["RIDEMESH_MESH_TARGET"] == f"envoy:{deploy.ENVOY_PORT}"
        secrets = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
        assert secrets["RIDEMESH_DATABASE_URL"]["key"] == "database-url"
        assert secrets["RIDEMESH_REDIS_URL"]["key"] == "redis-url"
    (ride,) = _pod(_one(rendered, "Deployment", "ride"))["containers"]
    assert any(e["name"] == "RIDEMESH_SERVICE_TOKEN" for e in ride["env"])


def test_the_migration_job_and_the_page(rendered: list[Object]) -> None:
    (migrate,) = _pod(_one(rendered, "Job", "ridemesh-migrate"))["containers"]
    assert migrate["args"] == ["migrate"]
    (web,) = _pod(_one(rendered, "Deployment", "web"))["containers"]
    assert web["args"] == ["serve", "web", "--host", "0.0.0.0", "--port", str(deploy.WEB_PORT)]
    assert "--dev-keys-dir" not in web["args"]  # production: the page gets no token
    assert web["readinessProbe"]["httpGet"]["path"] == "/healthz"
    images = {c["image"] for _, _, c in _containers(rendered) if c["name"] != "envoy"}
    assert images == {"registry.example.com/ridemesh:0.1.0"}


def test_prometheus_scrapes_envoy_on_its_stats_listener(rendered: list[Object]) -> None:
    deployment = _one(rendered, "Deployment", "envoy")
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    (container,) = _pod(deployment)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": deploy.ENVOY_PORT, "metrics": deploy.ENVOY_STATS_PORT}
    assert annotations["prometheus.io/port"] == str(deploy.ENVOY_STATS_PORT)
    assert annotations["prometheus.io/path"] == "/stats/prometheus"


def test_the_example_stores_are_a_redis_cluster_and_a_primary_with_a_replica(
    rendered: list[Object],
) -> None:
    """The example runs the topology `make test` proves: every URL is one the services take."""
    secret = next(
        o for o in rendered if o["kind"] == "Secret" and _name(o).startswith("ridemesh-stores")
    )
    stores = {key: base64.b64decode(value).decode() for key, value in secret["data"].items()}
    assert is_cluster_url(redis_url(stores["redis-url"]))
    assert partitions_in(stores["redis-url"]) == CLUSTER_PARTITIONS
    assert database_url(stores["database-url"]).startswith("postgresql+asyncpg://")
    assert "-ro." in stores["database-read-url"]
    assert "-rw." in stores["database-url"]
