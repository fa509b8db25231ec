"""The interceptor's pure parts: the bearer token, open methods, no caller outside a call."""

from __future__ import annotations

import pytest

from services.auth.interceptor import (
    DEFAULT_OPEN_METHODS,
    bearer_token,
    current_identity,
    is_open,
)
from services.domain.errors import Unauthenticated


@pytest.mark.parametrize(
    ("metadata", "token"),
    [
        (None, None),
        ((), None),
        ((("user-agent", "x"),), None),
        ((("authorization", "Bearer abc.def.ghi"),), "abc.def.ghi"),
        ((("authorization", "bearer abc"),), "abc"),
        ((("authorization", b"Bearer abc"),), "abc"),
        ((("authorization", "Bearer "),), None),
    ],
)
def test_bearer_token(
    metadata: tuple[tuple[str, str | bytes], ...] | None, token: str | None
) -> None:
    assert bearer_token(metadata) == token


@pytest.mark.parametrize(
    ("metadata", "message"),
    [
        ((("authorization", "Basic dTpw"),), "not 'Bearer <jwt>'"),
        ((("authorization", "abc.def.ghi"),), "not 'Bearer <jwt>'"),
        ((("authorization", "Bearer a"), ("authorization", "Bearer b")), "more than one"),
    ],
)
def test_odd_authorization_is_unauthenticated(
    metadata: tuple[tuple[str, str], ...], message: str
) -> None:
    with pytest.raises(Unauthenticated, match=message):
        bearer_token(metadata)


@pytest.mark.parametrize(
    ("method", "expected"),
    [
        ("/grpc.health.v1.Health/Check", True),
        ("/grpc.health.v1.Health/Watch", True),
        ("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", True),
        ("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo", True),
        ("/ridemesh.v1.LocationService/GetDriverLocation", False),
        ("/grpc.health.v1.HealthX/Check", False),
    ],
)
def test_default_open_methods(method: str, expected: bool) -> None:
    assert is_open(method, DEFAULT_OPEN_METHODS) is expected


def test_exact_open_method_is_not_a_prefix() -> None:
    opened = frozenset({"/ridemesh.v1.GeoQueryService/EstimateEta"})
    assert is_open("/ridemesh.v1.GeoQueryService/EstimateEta", opened)
    assert not is_open("/ridemesh.v1.GeoQueryService/EstimateEtaX", opened)


def test_no_identity_outside_a_verified_call() -> None:
    with pytest.raises(Unauthenticated, match="no verified caller"):
        current_identity()
