"""Envoy's configuration, rendered from envoy/envoy.yaml.tmpl for a run (locally, compose, k8s)."""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

from ridemesh.v1 import geo_query_service_pb2, location_service_pb2, ride_service_pb2
from services.ops.mesh.api_descriptors import descriptor_set

TEMPLATE = Path(__file__).resolve().parents[3] / "envoy" / "envoy.yaml.tmpl"
CLUSTERS = ("location", "ride", "geo")
WEB_CLUSTER = "web"
STATS_CLUSTER = "envoy_admin"
LOCAL_ORIGINS = ("http://127.0.0.1", "http://localhost")


TYPE_PREFIX = "type.googleapis.com/"
# Each cluster's service, from the protos: routes are derived from its methods.
API_SERVICES = {
    "location": location_service_pb2.DESCRIPTOR.services_by_name["LocationService"],
    "ride": ride_service_pb2.DESCRIPTOR.services_by_name["RideService"],
    "geo": geo_query_service_pb2.DESCRIPTOR.services_by_name["GeoQueryService"],
}
_LOCAL_RATE_LIMIT = TYPE_PREFIX + "envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit"
JWT_PROVIDER = "ridemesh"
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
GRPC_PREFIXES = ("/ridemesh.", "/grpc.")
# Plain HTTP (the transcoder's bindings, `google.api.http` in the protos): every path is under it.
HTTP_API_PREFIX = "/v1/"
# The services whose HTTP bindings Envoy serves (only GeoQueryService has any: exports).
TRANSCODED_SERVICES = ("GeoQueryService",)
# GET and HEAD: what a browser loading the page sends; gRPC and gRPC-Web are always POST.
_SAFE_METHOD = {"name": ":method", "string_match": {"safe_regex": {"regex": "GET|HEAD"}}}


@dataclass(frozen=True)
class EnvoyJwt:
    """Tokens verified at the edge: who issues them, for whom, and the JWKS that signs them."""

    issuer: str
    audiences: Sequence[str]
    jwks: str  # the JWKS document itself, inlined into the config
    open_health_and_reflection: bool = True
    # Deployments: Envoy reads the JWKS from this file (a mounted ConfigMap or volume) instead of
    # the inlined `jwks`, which must then be empty. Envoy reads it once, at startup.
    jwks_filename: str | None = None


@dataclass(frozen=True)
class EnvoyTls:
    """The listener's certificate chain and private key (PEM files; Envoy reads them)."""

    cert_path: Path
    key_path: Path


@dataclass(frozen=True)
class EnvoyRateLimit:
    """A listener-wide token bucket on requests (every unary call, and every stream's start): a
    backstop against floods; per-caller fairness is the services' LimitInterceptor."""

    requests_per_s: int = 5_000
    burst: int = 20_000


# What a running mesh uses; EnvoyConfig alone renders no rate limit unless given one.
DEFAULT_RATE_LIMIT = EnvoyRateLimit()


@dataclass(frozen=True)
class EnvoyConfig:
    """What varies between runs: ports, replica ports per cluster, allowed browser origins,
    and the optional edge token check and TLS (both off unless given)."""

    port: int
    admin_port: int
    upstreams: Mapping[str, Sequence[int]]
    listen_address: str = "127.0.0.1"
    cors_origin_prefixes: Sequence[str] = LOCAL_ORIGINS
    max_streams: int = 20_000
    max_downstream_connections: int = 50_000
    upstream_host: str = "127.0.0.1"
    jwt: EnvoyJwt | None = None
    tls: EnvoyTls | None = None
    rate_limit: EnvoyRateLimit | None = None
    # The live map's static upstream (`ridemesh serve web`): every non-gRPC GET goes there.
    web_port: int | None = None
    # Deployments: a DNS name per cluster (CLUSTERS or "web"), e.g. a Kubernetes headless Service
    # or a compose service. That cluster becomes STRICT_DNS, one endpoint per address the name
    # resolves to, on its `upstreams` ports (`web_port` for web), instead of `upstream_host`.
    upstream_dns: Mapping[str, str] = field(default_factory=dict)
    # Deployments: a second listener (on `listen_address`) that serves only the admin's
    # /stats/prometheus, so Prometheus can scrape Envoy while the admin stays on loopback.
    stats_port: int | None = None


def _endpoints(host: str, ports: Sequence[int]) -> str:
    """The lb_endpoints list as a YAML flow sequence (JSON is YAML)."""
    endpoints = [
        {"endpoint": {"address": {"socket_address": {"address": host, "port_value": port}}}}
        for port in ports
    ]
    return json.dumps(endpoints)


def _jwt_filter(jwt: EnvoyJwt | None, static_open: bool = False) -> str:
    """The jwt_authn http filter as one YAML flow list item, or nothing when tokens are off."""
    if jwt is None:
        return ""
    provider = {
        "issuer": jwt.issuer,
        "audiences": list(jwt.audiences),
        "local_jwks": _local_jwks(jwt),
        # Services verify the token again, so they need the header too.
        "forward": True,
    }
    opened = OPEN_PREFIXES if jwt.open_health_and_reflection else ()
    required = {"provider_name": JWT_PROVIDER}
    # A rule without `requires` lets the request through unverified; the first match wins.
    rules: list[dict[str, object]] = [{"match": {"prefix": p}} for p in opened]
    if static_open:
        # The page and its files are public; every gRPC path (always a POST) still needs a token.
        api = (*GRPC_PREFIXES, HTTP_API_PREFIX)
        rules += [{"match": {"prefix": p}, "requires": required} for p in api]
        rules.append({"match": {"prefix": "/", "headers": [_SAFE_METHOD]}})
    rules.append({"match": {"prefix": "/"}, "requires": required})
    typed = {
        "@type": TYPE_PREFIX + "envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication",
        "providers": {JWT_PROVIDER: provider},
        "rules": rules,
        # Browsers send CORS preflights without credentials; cors answers them.
        "bypass_cors_preflight": True,
    }
    return "- " + json.dumps({"name": "envoy.filters.http.jwt_authn", "typed_config": typed})


def _local_jwks(jwt: EnvoyJwt) -> dict[str, str]:
    """Where jwt_authn finds the keys: the inlined document, or a file Envoy reads."""
    if jwt.jwks_filename is None:
        return {"inline_string": jwt.jwks}
    if jwt.jwks:
        raise ValueError("give EnvoyJwt the JWKS inline or as jwks_filename, not both")
    return {"filename": jwt.jwks_filename}


def _rate_limit_filter(limit: EnvoyRateLimit | None) -> str:
    """The local_ratelimit http filter as one YAML flow list item, or nothing when off. It holds
    no bucket itself: the unary routes each carry one (`_route_rate_limit`)."""
    if limit is None:
        return ""
    if limit.requests_per_s < 1 or limit.burst < 1:
        raise ValueError(f"rate limit needs requests_per_s and burst >= 1, got {limit}")
    typed = {"@type": _LOCAL_RATE_LIMIT, "stat_prefix": "ridemesh_rate_limit"}
    return "- " + json.dumps({"name": "envoy.filters.http.local_ratelimit", "typed_config": typed})


def _route_rate_limit(limit: EnvoyRateLimit) -> dict[str, object]:
    always = {"default_value": {"numerator": 100, "denominator": "HUNDRED"}, "runtime_key": ""}
    return {
        "@type": _LOCAL_RATE_LIMIT,
        "stat_prefix": "ridemesh_unary_rate_limit",
        "token_bucket": {
            "max_tokens": limit.burst,
            "tokens_per_fill": limit.requests_per_s,
            "fill_interval": "1s",
        },
        "filter_enabled": always,
        "filter_enforced": always,
        # gRPC callers see RESOURCE_EXHAUSTED (not UNAVAILABLE, which clients would retry).
        "rate_limited_as_resource_exhausted": True,
    }


def _transcoder_filter() -> str:
    """The gRPC-JSON transcoder as one YAML flow list item: GETs on the protos' HTTP bindings
    (`/v1/...`) become gRPC calls; gRPC and gRPC-Web (already gRPC after grpc_web) pass through.
    A streamed google.api.HttpBody answer goes out as raw bytes with its own content type, and a
    gRPC error as its HTTP status with a JSON body."""
    services = [API_SERVICES["geo"].file.services_by_name[name] for name in TRANSCODED_SERVICES]
    files = {service.file.name: service.file for service in services}
    typed = {
        "@type": TYPE_PREFIX
        + "envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder",
        "proto_descriptor_bin": base64.b64encode(descriptor_set(*files.values())).decode(),
        "services": [service.full_name for service in services],
        "convert_grpc_status": True,
        # A misspelt query parameter is a 400 naming it, not a request that silently ignores it
        # (or, passed through untranscoded, reaches the 404 route below).
        "request_validation_options": {"reject_unknown_query_parameters": True},
    }
    return "- " + json.dumps(
        {"name": "envoy.filters.http.grpc_json_transcoder", "typed_config": typed}
    )


def _unknown_http_path() -> dict[str, object]:
    """A /v1/ path no binding matches: a JSON 404 (before the web route would serve it a page).
    Transcoded requests never reach it: the transcoder re-routes them on their gRPC path."""
    body = {"code": 5, "message": "no such HTTP API path: see the google.api.http bindings"}
    return {
        "match": {"prefix": HTTP_API_PREFIX},
        "direct_response": {"status": 404, "body": {"inline_string": json.dumps(body)}},
        "response_headers_to_add": [
            {"header": {"key": "content-type", "value": "application/json"}}
        ],
    }


def _routes(limit: EnvoyRateLimit | None, web: bool = False) -> str:
    """Routes as a YAML flow list: streaming methods by exact path (never rate limited, never
    timed out), then each service's prefix, rate limited when a limit is set; last, with `web`,
    every other GET or HEAD to the live map's static upstream."""
    action = {"timeout": "0s", "max_stream_duration": {"grpc_timeout_header_max": "0s"}}
    routes: list[dict[str, object]] = []
    for cluster, service in API_SERVICES.items():
        for method in service.methods:
            if method.client_streaming or method.server_streaming:
                path = f"/{service.full_name}/{method.name}"
                routes.append({"match": {"path": path}, "route": {"cluster": cluster, **action}})
        unary: dict[str, object] = {
            "match": {"prefix": f"/{service.full_name}/"},
            "route": {"cluster": cluster, **action},
        }
        if limit is not None:
            unary["typed_per_filter_config"] = {
                "envoy.filters.http.local_ratelimit": _route_rate_limit(limit)
            }
        routes.append(unary)
    for prefix in ("/grpc.reflection.", "/grpc.health.v1.Health/"):
        routes.append({"match": {"prefix": prefix}, "route": {"cluster": "location", **action}})
    routes.append(_unknown_http_path())
    if web:
        page = {"match": {"prefix": "/", "headers": [_SAFE_METHOD]}, "route": {"cluster": "web"}}
        routes.append(page)
    return json.dumps(routes)


def _discovery(cluster: str, dns: Mapping[str, str]) -> str:
    """How a cluster finds its endpoints: fixed addresses, or every address its DNS name has."""
    return "STRICT_DNS" if cluster in dns else "STATIC"


def _web_cluster(port: int | None, host: str, dns: Mapping[str, str]) -> str:
    """The static upstream's cluster (HTTP/1.1) as one YAML flow list item, or nothing."""
    if port is None:
        return ""
    host = dns.get(WEB_CLUSTER, host)
    cluster = {
        "name": "web",
        "type": _discovery(WEB_CLUSTER, dns),
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": "web",
            "endpoints": [{"lb_endpoints": json.loads(_endpoints(host, [port]))}],
        },
    }
    return "- " + json.dumps(cluster)


def _stats_listener(config: EnvoyConfig) -> str:
    """The Prometheus stats listener as one YAML flow list item, or nothing."""
    if config.stats_port is None:
        return ""
    route = {"match": {"path": "/stats/prometheus"}, "route": {"cluster": STATS_CLUSTER}}
    router = {
        "name": "envoy.filters.http.router",
        "typed_config": {"@type": TYPE_PREFIX + "envoy.extensions.filters.http.router.v3.Router"},
    }
    manager = {
        "@type": TYPE_PREFIX
        + "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
        "stat_prefix": "prometheus_stats",
        "route_config": {
            "name": "prometheus_stats",
            "virtual_hosts": [{"name": "stats", "domains": ["*"], "routes": [route]}],
        },
        "http_filters": [router],
    }
    listener = {
        "name": "prometheus_stats",
        "address": {
            "socket_address": {"address": config.listen_address, "port_value": config.stats_port}
        },
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": manager,
                    }
                ]
            }
        ],
    }
    return "- " + json.dumps(listener)


def _stats_cluster(config: EnvoyConfig) -> str:
    """The admin interface (loopback) as the stats listener's upstream, or nothing."""
    if config.stats_port is None:
        return ""
    cluster = {
        "name": STATS_CLUSTER,
        "type": "STATIC",
        "connect_timeout": "1s",
        "load_assignment": {
            "cluster_name": STATS_CLUSTER,
            "endpoints": [
                {"lb_endpoints": json.loads(_endpoints("127.0.0.1", [config.admin_port]))}
            ],
        },
    }
    return "- " + json.dumps(cluster)


def _tls_socket(tls: EnvoyTls | None) -> str:
    """The listener's transport_socket: DownstreamTlsContext, or null for plaintext."""
    if tls is None:
        return "null"
    context = {
        "@type": TYPE_PREFIX + "envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext",
        "common_tls_context": {
            # h2 for native gRPC, http/1.1 for gRPC-Web from browsers that fall back to it.
            "alpn_protocols": ["h2", "http/1.1"],
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": str(tls.cert_path)},
                    "private_key": {"filename": str(tls.key_path)},
                }
            ],
        },
    }
    return json.dumps({"name": "envoy.transport_sockets.tls", "typed_config": context})


def render_config(config: EnvoyConfig, template: Path = TEMPLATE) -> str:
    """Fill the template with this run's values."""
    unknown = set(config.upstreams) - set(CLUSTERS)
    if unknown:
        raise ValueError(f"unknown clusters {sorted(unknown)}; expected some of {CLUSTERS}")
    unknown = set(config.upstream_dns) - {*CLUSTERS, WEB_CLUSTER}
    if unknown:
        raise ValueError(f"DNS names for unknown clusters {sorted(unknown)}")
    dns = config.upstream_dns
    values: dict[str, object] = {
        "port": config.port,
        "admin_port": config.admin_port,
        "listen_address": config.listen_address,
        "cors_origins": json.dumps([{"prefix": p} for p in config.cors_origin_prefixes]),
        "max_streams": config.max_streams,
        "max_downstream_connections": config.max_downstream_connections,
        "rate_limit_filter": _rate_limit_filter(config.rate_limit),
        "routes": _routes(config.rate_limit, web=config.web_port is not None),
        "jwt_authn_filter": _jwt_filter(config.jwt, static_open=config.web_port is not None),
        "transcoder_filter": _transcoder_filter(),
        "web_cluster": _web_cluster(config.web_port, config.upstream_host, dns),
        "tls_transport_socket": _tls_socket(config.tls),
        "stats_listener": _stats_listener(config),
        "stats_cluster": _stats_cluster(config),
    }
    for cluster in CLUSTERS:
        ports = config.upstreams.get(cluster, ())
        host = dns.get(cluster, config.upstream_host)
        values[f"{cluster}_endpoints"] = _endpoints(host, ports)
        values[f"{cluster}_discovery"] = _discovery(cluster, dns)
    return Template(template.read_text()).substitute(values)
