"""The deploy-time Envoy configs (compose, Kubernetes): committed, current, accepted by Envoy."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec

from services.auth.keys import jwks_json
from services.ops.mesh import deploy
from services.ops.mesh.envoy_config import STATS_CLUSTER, EnvoyConfig, EnvoyJwt, render_config
from services.ops.mesh.envoy_proxy import validate_config

TARGETS = {target.path.parts[0]: target for target in deploy.targets()}
JWT_AUTHN = "envoy.filters.http.jwt_authn"


def _load(target: deploy.Rendered) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(target.text())
    return loaded


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    listener = config["static_resources"]["listeners"][0]
    (hcm,) = listener["filter_chains"][0]["filters"]
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def _provider_and_rules(config: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    (jwt,) = [f for f in _hcm(config)["http_filters"] if f["name"] == JWT_AUTHN]
    (provider,) = jwt["typed_config"]["providers"].values()
    return provider, jwt["typed_config"]["rules"]


def _needs_token(rules: list[dict[str, Any]], path: str, method: str = "POST") -> bool:
    """What jwt_authn decides for a request: the first rule whose prefix (and method) matches."""
    for rule in rules:
        match = rule["match"]
        if not path.startswith(match["prefix"]):
            continue
        if "headers" in match and method not in ("GET", "HEAD"):
            continue
        return "requires" in rule
    raise AssertionError(f"no rule matches {path}")


def test_committed_files_equal_what_the_renderer_produces_now() -> None:
    assert deploy.stale() == [], "run `python -m services.ops.mesh.deploy` and commit the result"
    assert deploy.main(["--check"]) == 0


def test_check_reports_a_drifted_file(tmp_path: Path) -> None:
    assert {p.as_posix() for p in deploy.stale(tmp_path)} == {
        "deploy/compose/envoy.yaml",
        "k8s/base/config/envoy.yaml",
    }
    assert len(deploy.write_all(tmp_path)) == 2
    assert deploy.stale(tmp_path) == []
    (tmp_path / "k8s/base/config/envoy.yaml").write_text("# edited by hand\n")
    assert deploy.stale(tmp_path) == [Path("k8s/base/config/envoy.yaml")]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_envoy_accepts_the_committed_file(tmp_path: Path, name: str) -> None:
    # Validation reads the JWKS file (it does not resolve DNS): point a copy at a real one.
    target = TARGETS[name]
    assert target.config.jwt is not None
    assert target.config.jwt.jwks_filename
    jwks = tmp_path / "jwks.json"
    jwks.write_text(jwks_json({"example": ec.generate_private_key(ec.SECP256R1()).public_key()}))
    committed = (deploy.ROOT / target.path).read_text()
    copy = tmp_path / "envoy.yaml"
    copy.write_text(committed.replace(target.config.jwt.jwks_filename, str(jwks)))
    validate_config(copy)


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_listener_on_every_interface_admin_on_loopback(name: str) -> None:
    config = _load(TARGETS[name])
    listener = config["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_upstreams_are_found_by_dns_name(name: str) -> None:
    clusters = {c["name"]: c for c in _load(TARGETS[name])["static_resources"]["clusters"]}
    expected = {"location": 50051, "ride": 50051, "geo": 50051, "web": 8081}
    assert set(clusters) == {*expected, STATS_CLUSTER}
    for cluster, port in expected.items():
        spec = clusters[cluster]
        assert spec["type"] == "STRICT_DNS"
        (locality,) = spec["load_assignment"]["endpoints"]
        (endpoint,) = locality["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert address == {"address": cluster, "port_value": port}
    # The gRPC clusters keep their health checks: a replica failing them leaves rotation.
    assert all("health_checks" in clusters[c] for c in ("location", "ride", "geo"))


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_prometheus_scrapes_envoy_stats_and_nothing_else_of_the_admin(name: str) -> None:
    config = _load(TARGETS[name])
    stats = config["static_resources"]["listeners"][1]
    assert stats["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 9902}
    (chain,) = stats["filter_chains"]
    (manager,) = chain["filters"]
    (vhost,) = manager["typed_config"]["route_config"]["virtual_hosts"]
    assert vhost["routes"] == [
        {"match": {"path": "/stats/prometheus"}, "route": {"cluster": STATS_CLUSTER}}
    ]
    clusters = {c["name"]: c for c in config["static_resources"]["clusters"]}
    (locality,) = clusters[STATS_CLUSTER]["load_assignment"]["endpoints"]
    (endpoint,) = locality["lb_endpoints"]
    admin = config["admin"]["address"]["socket_address"]
    assert endpoint["endpoint"]["address"]["socket_address"] == admin


def test_compose_uses_the_development_keys_from_the_shared_volume() -> None:
    provider, rules = _provider_and_rules(_load(TARGETS["deploy"]))
    assert provider["local_jwks"] == {"filename": "/var/lib/ridemesh/keys/jwks.json"}
    assert provider["issuer"] == "ridemesh-dev"
    assert not _needs_token(rules, "/grpc.health.v1.Health/Check")
    assert not _needs_token(rules, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert _needs_token(rules, "/ridemesh.v1.LocationService/StreamLocations")
    assert not _needs_token(rules, "/index.html", method="GET")


def test_kubernetes_is_production_flavoured() -> None:
    config = _load(TARGETS["k8s"])
    provider, rules = _provider_and_rules(config)
    assert provider["local_jwks"] == {"filename": "/etc/ridemesh/jwks/jwks.json"}
    assert (provider["issuer"], provider["audiences"]) == (deploy.K8S_ISSUER, [deploy.K8S_AUDIENCE])
    assert _needs_token(rules, "/grpc.health.v1.Health/Check")
    assert _needs_token(rules, "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo")
    assert _needs_token(rules, "/ridemesh.v1.RideService/RequestRide")
    assert not _needs_token(rules, "/", method="GET")  # the page itself is public
    (vhost,) = _hcm(config)["route_config"]["virtual_hosts"]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    origins = [o["prefix"] for o in cors["allow_origin_string_match"]]
    assert origins == list(deploy.K8S_CORS_ORIGINS)
    assert all(o.startswith("https://") for o in origins)


def test_a_dns_name_for_an_unknown_cluster_is_rejected() -> None:
    config = EnvoyConfig(1, 2, {"location": [1]}, upstream_dns={"payments": "payments"})
    with pytest.raises(ValueError, match="unknown clusters"):
        render_config(config)


def test_the_jwks_is_inline_or_a_file_never_both() -> None:
    jwt = EnvoyJwt("i", ["a"], jwks='{"keys": []}', jwks_filename="/etc/jwks.json")
    with pytest.raises(ValueError, match="not both"):
        render_config(EnvoyConfig(1, 2, {"location": [1]}, jwt=jwt))


def test_without_dns_names_clusters_stay_static() -> None:
    loaded = yaml.safe_load(render_config(EnvoyConfig(1, 2, {"location": [5]}, web_port=7)))
    assert {c["type"] for c in loaded["static_resources"]["clusters"]} == {"STATIC"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((deploy.ROOT / "docker-compose.yml").read_text())
    services: dict[str, Any] = loaded["services"]
    return services


def test_compose_envoy_runs_the_committed_config_with_the_shared_keys(
    compose: dict[str, Any],
) -> None:
    envoy = compose["envoy"]
    config_path = envoy["command"][envoy["command"].index("-c") + 1]
    assert f"./deploy/compose/envoy.yaml:{config_path}:ro" in envoy["volumes"]
    jwt = deploy.compose_config().jwt
    assert jwt is not None
    assert f"keys:{deploy.COMPOSE_KEYS_DIR}:ro" in envoy["volumes"]
    assert jwt.jwks_filename == f"{deploy.COMPOSE_KEYS_DIR}/jwks.json"
    assert envoy["ports"] == [f"{deploy.ENVOY_PORT}:{deploy.ENVOY_PORT}"]
    k8s_envoy = yaml.safe_load_all((deploy.ROOT / "k8s/base/envoy.yaml").read_text())
    (deployment,) = [d for d in k8s_envoy if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert envoy["image"] == container["image"], "compose and Kubernetes run the same Envoy"


def test_compose_runs_every_upstream_envoy_resolves(compose: dict[str, Any]) -> None:
    for cluster, host in deploy.UPSTREAM_NAMES.items():
        service = compose[host]
        port = deploy.WEB_PORT if cluster == "web" else deploy.SERVICE_PORT
        assert service["command"][:2] == ["serve", cluster]
        assert service["command"][2:6] == ["--host", "0.0.0.0", "--port", str(port)]
        assert "healthcheck" in service
        assert service["environment"]["RIDEMESH_AUTH_KEYS_DIR"] == deploy.COMPOSE_KEYS_DIR
        assert f"keys:{deploy.COMPOSE_KEYS_DIR}" in service["volumes"]
    for name in ("location", "ride", "geo"):
        service = compose[name]
        assert service["deploy"]["replicas"] == 2
        assert service["environment"]["RIDEMESH_MESH_TARGET"] == f"envoy:{deploy.ENVOY_PORT}"
        conditions = {dep: spec["condition"] for dep, spec in service["depends_on"].items()}
        assert conditions == {
            "redis": "service_healthy",
            "postgis": "service_healthy",
            "keys": "service_completed_successfully",
            "migrate": "service_completed_successfully",
        }


def test_compose_one_shots_make_the_keys_and_the_schema(compose: dict[str, Any]) -> None:
    keys = compose["keys"]["command"]
    assert keys[0] == "token"
    assert keys[keys.index("--keys-dir") + 1] == deploy.COMPOSE_KEYS_DIR
    assert compose["migrate"]["command"] == ["migrate"]
    assert compose["migrate"]["depends_on"] == {"postgis": {"condition": "service_healthy"}}
    assert compose["redis"]["image"].startswith("redis:7")
    assert compose["postgis"]["image"].startswith("postgis/postgis:")
