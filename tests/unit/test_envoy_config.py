"""The rendered Envoy config: routes, stream timeouts, HTTP/2 upstreams, health checks, limits."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml
from google.api import annotations_pb2  # type: ignore[import-untyped]
from google.protobuf import descriptor_pool
from google.protobuf.descriptor_pb2 import FileDescriptorSet

from services.auth.keys import ensure_dev_keys
from services.ops.mesh.envoy_config import EnvoyConfig, EnvoyJwt, EnvoyTls, render_config
from services.ops.mesh.envoy_proxy import validate_config
from tests.certs import make_server_cert

HCM = "envoy.filters.network.http_connection_manager"
H2_OPTIONS = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
TRANSCODER = "envoy.filters.http.grpc_json_transcoder"


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    rendered = render_config(
        EnvoyConfig(
            port=18080,
            admin_port=19901,
            upstreams={"location": [50051, 50052], "ride": [50061, 50062], "geo": [50071, 50072]},
        )
    )
    loaded: dict[str, Any] = yaml.safe_load(rendered)
    return loaded


def _hcm(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = config["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    assert hcm["name"] == HCM
    typed: dict[str, Any] = hcm["typed_config"]
    return typed


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    (vhost,) = _hcm(config)["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = vhost["routes"]
    return routes


def test_listener_and_admin_bind_loopback(config: dict[str, Any]) -> None:
    (listener,) = config["static_resources"]["listeners"]
    assert listener["address"]["socket_address"] == {"address": "127.0.0.1", "port_value": 18080}
    admin = config["admin"]["address"]["socket_address"]
    assert admin == {"address": "127.0.0.1", "port_value": 19901}


def test_routes_send_each_service_to_its_cluster(config: dict[str, Any]) -> None:
    table = {
        r["match"]["prefix"]: r["route"]["cluster"]
        for r in _routes(config)
        if "prefix" in r["match"] and "route" in r
    }
    streams = {
        r["match"]["path"]: r["route"]["cluster"] for r in _routes(config) if "path" in r["match"]
    }
    assert streams["/ridemesh.v1.LocationService/StreamLocations"] == "location"
    assert streams["/ridemesh.v1.RideService/Chat"] == "ride"
    assert streams["/ridemesh.v1.GeoQueryService/WatchGeofenceEvents"] == "geo"
    assert table == {
        "/ridemesh.v1.LocationService/": "location",
        "/ridemesh.v1.RideService/": "ride",
        "/ridemesh.v1.GeoQueryService/": "geo",
        "/grpc.reflection.": "location",
        "/grpc.health.v1.Health/": "location",
    }


def test_streams_are_never_cut_by_timeouts(config: dict[str, Any]) -> None:
    hcm = _hcm(config)
    assert hcm["stream_idle_timeout"] == "0s"
    assert hcm["request_timeout"] == "0s"
    assert hcm["codec_type"] == "AUTO"
    assert "connection_keepalive" in hcm["http2_protocol_options"]
    assert all(r["route"]["timeout"] == "0s" for r in _routes(config) if "route" in r)


def test_filters_run_grpc_web_then_cors_then_transcoder_then_router(
    config: dict[str, Any],
) -> None:
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        TRANSCODER,
        "envoy.filters.http.router",
    ]


def test_cors_allows_local_origins_and_exposes_grpc_status(config: dict[str, Any]) -> None:
    (vhost,) = _hcm(config)["route_config"]["virtual_hosts"]
    cors = vhost["typed_per_filter_config"]["envoy.filters.http.cors"]
    assert cors["allow_origin_string_match"] == [
        {"prefix": "http://127.0.0.1"},
        {"prefix": "http://localhost"},
    ]
    assert "grpc-status" in cors["expose_headers"].split(",")
    assert "x-grpc-web" in cors["allow_headers"].split(",")


@pytest.mark.parametrize(
    ("cluster", "ports"),
    [("location", [50051, 50052]), ("ride", [50061, 50062]), ("geo", [50071, 50072])],
)
def test_cluster_round_robins_over_every_replica(
    config: dict[str, Any], cluster: str, ports: list[int]
) -> None:
    spec = _clusters(config)[cluster]
    assert spec["type"] == "STATIC"
    assert spec["lb_policy"] == "ROUND_ROBIN"
    (locality,) = spec["load_assignment"]["endpoints"]
    addresses = [e["endpoint"]["address"]["socket_address"] for e in locality["lb_endpoints"]]
    assert addresses == [{"address": "127.0.0.1", "port_value": p} for p in ports]


@pytest.mark.parametrize("cluster", ["location", "ride", "geo"])
def test_cluster_speaks_http2_and_is_health_checked(config: dict[str, Any], cluster: str) -> None:
    spec = _clusters(config)[cluster]
    options = spec["typed_extension_protocol_options"][H2_OPTIONS]
    assert "http2_protocol_options" in options["explicit_http_config"]
    (check,) = spec["health_checks"]
    assert check["grpc_health_check"] == {"service_name": ""}
    assert check["unhealthy_threshold"] == 2


@pytest.mark.parametrize("cluster", ["location", "ride", "geo"])
def test_circuit_breakers_hold_twenty_thousand_streams(
    config: dict[str, Any], cluster: str
) -> None:
    (limits,) = _clusters(config)[cluster]["circuit_breakers"]["thresholds"]
    for key in ("max_connections", "max_pending_requests", "max_requests"):
        assert limits[key] >= 20_000


def test_unknown_cluster_is_rejected() -> None:
    with pytest.raises(ValueError, match="unknown clusters"):
        render_config(EnvoyConfig(port=1, admin_port=2, upstreams={"payments": [1]}))


UPSTREAMS = {"location": [50051], "ride": [50061], "geo": [50071]}
JWT_AUTHN = "envoy.filters.http.jwt_authn"


def _jwt(tmp_path: Path, open_health_and_reflection: bool = True) -> EnvoyJwt:
    jwks = ensure_dev_keys(tmp_path / "keys").jwks_path.read_text()
    return EnvoyJwt("ridemesh-dev", ["ridemesh"], jwks, open_health_and_reflection)


def _load(config: EnvoyConfig) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(render_config(config))
    return loaded


def _validated(tmp_path: Path, config: EnvoyConfig) -> dict[str, Any]:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_config(config))
    validate_config(path)
    return _load(config)


def test_default_has_no_token_check_and_no_tls(tmp_path: Path) -> None:
    config = _validated(tmp_path, EnvoyConfig(port=18080, admin_port=19901, upstreams=UPSTREAMS))
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    assert JWT_AUTHN not in names
    (listener,) = config["static_resources"]["listeners"]
    assert listener["filter_chains"][0]["transport_socket"] is None


def test_jwt_authn_sits_between_cors_and_router(tmp_path: Path) -> None:
    config = _validated(
        tmp_path, EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, jwt=_jwt(tmp_path))
    )
    names = [f["name"] for f in _hcm(config)["http_filters"]]
    assert names == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        JWT_AUTHN,
        TRANSCODER,
        "envoy.filters.http.router",
    ]


def _jwt_config(config: dict[str, Any]) -> dict[str, Any]:
    (jwt_filter,) = [f for f in _hcm(config)["http_filters"] if f["name"] == JWT_AUTHN]
    typed: dict[str, Any] = jwt_filter["typed_config"]
    return typed


def test_provider_checks_issuer_audience_and_local_jwks(tmp_path: Path) -> None:
    jwt = _jwt(tmp_path)
    typed = _jwt_config(_load(EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, jwt=jwt)))
    (provider,) = typed["providers"].values()
    assert provider["issuer"] == "ridemesh-dev"
    assert provider["audiences"] == ["ridemesh"]
    assert provider["local_jwks"]["inline_string"] == jwt.jwks
    assert provider["forward"] is True
    assert typed["bypass_cors_preflight"] is True


def test_health_and_reflection_open_when_configured(tmp_path: Path) -> None:
    typed = _jwt_config(
        _load(EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, jwt=_jwt(tmp_path)))
    )
    (provider_name,) = typed["providers"]
    assert typed["rules"] == [
        {"match": {"prefix": "/grpc.health.v1.Health/"}},
        {"match": {"prefix": "/grpc.reflection."}},
        {"match": {"prefix": "/"}, "requires": {"provider_name": provider_name}},
    ]


def test_production_requires_a_token_everywhere(tmp_path: Path) -> None:
    jwt = _jwt(tmp_path, open_health_and_reflection=False)
    config = _validated(tmp_path, EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, jwt=jwt))
    (rule,) = _jwt_config(config)["rules"]
    assert rule["match"] == {"prefix": "/"}
    assert "requires" in rule


def test_tls_listener_offers_h2_and_http11(tmp_path: Path) -> None:
    cert = make_server_cert(tmp_path / "tls")
    tls = EnvoyTls(cert.cert_path, cert.key_path)
    config = _validated(
        tmp_path,
        EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, jwt=_jwt(tmp_path), tls=tls),
    )
    (listener,) = config["static_resources"]["listeners"]
    socket = listener["filter_chains"][0]["transport_socket"]
    context = socket["typed_config"]["common_tls_context"]
    assert socket["name"] == "envoy.transport_sockets.tls"
    assert context["alpn_protocols"] == ["h2", "http/1.1"]
    (pair,) = context["tls_certificates"]
    assert pair["certificate_chain"] == {"filename": str(cert.cert_path)}
    assert pair["private_key"] == {"filename": str(cert.key_path)}


def _jwt_rules(config: dict[str, Any]) -> list[dict[str, Any]]:
    (jwt_filter,) = [f for f in _hcm(config)["http_filters"] if "jwt_authn" in f["name"]]
    rules: list[dict[str, Any]] = jwt_filter["typed_config"]["rules"]
    return rules


def test_without_the_page_there_is_no_web_cluster_and_every_path_needs_a_token(
    tmp_path: Path,
) -> None:
    jwks = ensure_dev_keys(tmp_path / "keys").jwks_path.read_text()
    rendered = render_config(
        EnvoyConfig(18080, 19901, {"location": [1]}, jwt=EnvoyJwt("i", ["a"], jwks))
    )
    loaded = yaml.safe_load(rendered)
    assert "web" not in _clusters(loaded)
    assert all(r["route"]["cluster"] != "web" for r in _routes(loaded) if "route" in r)
    assert _jwt_rules(loaded)[-1] == {
        "match": {"prefix": "/"},
        "requires": {"provider_name": "ridemesh"},
    }


def test_the_page_gets_every_other_get_and_needs_no_token_while_grpc_still_does(
    tmp_path: Path,
) -> None:
    jwks = ensure_dev_keys(tmp_path / "keys").jwks_path.read_text()
    web = EnvoyConfig(18080, 19901, {"location": [1]}, jwt=EnvoyJwt("i", ["a"], jwks), web_port=7)
    loaded = yaml.safe_load(render_config(web))
    endpoint = _clusters(loaded)["web"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "127.0.0.1",
        "port_value": 7,
    }
    # HTTP/1.1 to the page: no HTTP/2 options, unlike the gRPC clusters.
    assert "typed_extension_protocol_options" not in _clusters(loaded)["web"]
    page = _routes(loaded)[-1]
    assert page["route"]["cluster"] == "web"
    assert page["match"]["prefix"] == "/"
    assert page["match"]["headers"][0]["string_match"]["safe_regex"]["regex"] == "GET|HEAD"
    # Every gRPC route comes before it, so no gRPC path reaches the page; nor does a /v1/ path.
    assert all(r["route"]["cluster"] != "web" for r in _routes(loaded)[:-1] if "route" in r)
    assert _routes(loaded)[-2]["match"] == {"prefix": "/v1/"}
    assert _routes(loaded)[-2]["direct_response"]["status"] == 404
    rules = _jwt_rules(loaded)
    required = {"provider_name": "ridemesh"}
    api = ("/ridemesh.", "/grpc.", "/v1/")
    grpc_rules = [r for r in rules if r["match"].get("prefix") in api]
    assert [r["requires"] for r in grpc_rules] == [required, required, required]
    open_get = next(i for i, r in enumerate(rules) if "headers" in r["match"])
    assert "requires" not in rules[open_get]
    assert all(rules.index(r) < open_get for r in grpc_rules)
    assert rules[-1] == {"match": {"prefix": "/"}, "requires": required}
    validate_path = tmp_path / "envoy.yaml"
    validate_path.write_text(render_config(web))
    validate_config(validate_path)


def _transcoder(config: dict[str, Any]) -> dict[str, Any]:
    (transcoder,) = [f for f in _hcm(config)["http_filters"] if f["name"] == TRANSCODER]
    typed: dict[str, Any] = transcoder["typed_config"]
    return typed


def test_the_transcoder_serves_the_geo_bindings_and_converts_errors(
    config: dict[str, Any],
) -> None:
    typed = _transcoder(config)
    assert typed["services"] == ["ridemesh.v1.GeoQueryService"]
    assert typed["convert_grpc_status"] is True
    assert typed["request_validation_options"] == {"reject_unknown_query_parameters": True}
    assert "auto_mapping" not in typed  # only the protos' own bindings, no POST-JSON for all


def test_the_descriptor_set_holds_the_api_with_every_import_before_its_user(
    config: dict[str, Any],
) -> None:
    files = FileDescriptorSet.FromString(
        base64.b64decode(_transcoder(config)["proto_descriptor_bin"])
    ).file
    names = [f.name for f in files]
    assert len(names) == len(set(names))
    for position, file in enumerate(files):
        assert set(file.dependency) <= set(names[:position]), file.name
    assert {
        "ridemesh/v1/geo_query_service.proto",
        "google/api/annotations.proto",
        "google/api/http.proto",
        "google/api/httpbody.proto",
        "google/protobuf/descriptor.proto",
    } <= set(names)
    pool = descriptor_pool.DescriptorPool()
    for file in files:
        pool.Add(file)
    method = pool.FindMethodByName("ridemesh.v1.GeoQueryService.ExportDriverTrack")
    assert method.GetOptions().HasExtension(annotations_pb2.http)
    rule = method.GetOptions().Extensions[annotations_pb2.http]
    assert rule.get == "/v1/drivers/{driver_id}/track:export"
    assert rule.response_body == "body"
    assert [b.get for b in rule.additional_bindings] == ["/v1/trips/{trip_id}:export"]
