"""Envoy's local rate limit on unary routes: rendered where it belongs, configurable, valid."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.auth.keys import ensure_dev_keys
from services.ops.mesh.envoy_config import (
    DEFAULT_RATE_LIMIT,
    EnvoyConfig,
    EnvoyJwt,
    EnvoyRateLimit,
    render_config,
)
from services.ops.mesh.envoy_proxy import EnvoyProxy, validate_config

UPSTREAMS = {"location": [50051], "ride": [50061], "geo": [50071]}
RATE_LIMIT = "envoy.filters.http.local_ratelimit"


def _filters(config: EnvoyConfig) -> list[dict[str, Any]]:
    loaded = yaml.safe_load(render_config(config))
    (listener,) = loaded["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    filters: list[dict[str, Any]] = hcm["typed_config"]["http_filters"]
    return filters


def _validate(tmp_path: Path, config: EnvoyConfig) -> None:
    path = tmp_path / "envoy.yaml"
    path.write_text(render_config(config))
    validate_config(path)


def test_rate_limit_is_off_unless_configured() -> None:
    names = [f["name"] for f in _filters(EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS))]
    assert RATE_LIMIT not in names


def test_a_running_mesh_gets_the_default_limit(tmp_path: Path) -> None:
    proxy = EnvoyProxy(tmp_path, UPSTREAMS, port=1, admin_port=2)
    assert proxy.config.rate_limit == DEFAULT_RATE_LIMIT
    assert DEFAULT_RATE_LIMIT.burst >= 10_000  # generous: a backstop, not the fairness rule


def _routes(config: EnvoyConfig) -> list[dict[str, Any]]:
    loaded = yaml.safe_load(render_config(config))
    (listener,) = loaded["static_resources"]["listeners"]
    (hcm,) = listener["filter_chains"][0]["filters"]
    (host,) = hcm["typed_config"]["route_config"]["virtual_hosts"]
    routes: list[dict[str, Any]] = host["routes"]
    return routes


def test_the_bucket_is_on_unary_routes_and_never_on_streams(tmp_path: Path) -> None:
    config = EnvoyConfig(
        port=1, admin_port=2, upstreams=UPSTREAMS, rate_limit=EnvoyRateLimit(7, 11)
    )
    _validate(tmp_path, config)
    (listener_filter,) = [f for f in _filters(config) if f["name"] == RATE_LIMIT]
    assert "token_bucket" not in listener_filter["typed_config"]
    streams = {r["match"]["path"]: r for r in _routes(config) if "path" in r["match"]}
    assert set(streams) == {
        "/ridemesh.v1.LocationService/StreamLocations",
        "/ridemesh.v1.LocationService/WatchDriver",
        "/ridemesh.v1.LocationService/WatchArea",
        "/ridemesh.v1.RideService/WatchRide",
        "/ridemesh.v1.RideService/WatchRideEvents",
        "/ridemesh.v1.RideService/Chat",
        "/ridemesh.v1.GeoQueryService/WatchGeofenceEvents",
        "/ridemesh.v1.GeoQueryService/ExportDriverTrack",
        "/ridemesh.v1.GeoQueryService/ReplayFleet",
    }
    assert all("typed_per_filter_config" not in r for r in streams.values())
    for prefix in ("LocationService", "RideService", "GeoQueryService"):
        (unary,) = [
            r for r in _routes(config) if r["match"].get("prefix", "").endswith(prefix + "/")
        ]
        typed = unary["typed_per_filter_config"][RATE_LIMIT]
        assert typed["token_bucket"] == {
            "max_tokens": 11,
            "tokens_per_fill": 7,
            "fill_interval": "1s",
        }
        assert typed["rate_limited_as_resource_exhausted"] is True
        for key in ("filter_enabled", "filter_enforced"):
            assert typed[key]["default_value"] == {"numerator": 100, "denominator": "HUNDRED"}
    # Exact stream routes come before the prefixes that would otherwise catch them.
    paths = [r["match"].get("path") or r["match"]["prefix"] for r in _routes(config)]
    assert paths.index("/ridemesh.v1.RideService/Chat") < paths.index("/ridemesh.v1.RideService/")


def test_rate_limit_runs_before_token_checks_and_the_router(tmp_path: Path) -> None:
    jwks = ensure_dev_keys(tmp_path / "keys").jwks_path.read_text()
    config = EnvoyConfig(
        port=1,
        admin_port=2,
        upstreams=UPSTREAMS,
        jwt=EnvoyJwt("ridemesh-dev", ["ridemesh"], jwks),
        rate_limit=EnvoyRateLimit(),
    )
    _validate(tmp_path, config)
    assert [f["name"] for f in _filters(config)] == [
        "envoy.filters.http.grpc_web",
        "envoy.filters.http.cors",
        RATE_LIMIT,
        "envoy.filters.http.jwt_authn",
        "envoy.filters.http.grpc_json_transcoder",
        "envoy.filters.http.router",
    ]


@pytest.mark.parametrize("limit", [EnvoyRateLimit(0, 10), EnvoyRateLimit(10, 0)])
def test_an_empty_bucket_is_refused(limit: EnvoyRateLimit) -> None:
    with pytest.raises(ValueError, match="rate limit"):
        render_config(EnvoyConfig(port=1, admin_port=2, upstreams=UPSTREAMS, rate_limit=limit))
