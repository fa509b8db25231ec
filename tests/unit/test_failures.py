"""Which dependency an exception says is away, and the message a caller then gets (pure)."""

from __future__ import annotations

import asyncpg
import grpc
import pytest
from grpc import aio
from redis import exceptions as redis_errors
from sqlalchemy import exc as sqlalchemy_errors

from services.domain.errors import InvalidArgument
from services.server.failures import Dependency, dependency_of, unavailable


@pytest.mark.parametrize(
    "error",
    [
        redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused."),
        redis_errors.TimeoutError("Timeout reading from socket"),
        redis_errors.BusyLoadingError("LOADING Redis is loading the dataset in memory"),
        redis_errors.ReadOnlyError("READONLY You can't write against a read only replica."),
        redis_errors.SlotNotCoveredError("Slot 3300 not covered by the cluster"),
        redis_errors.RedisClusterException("Redis Cluster cannot be connected"),
        redis_errors.ClusterDownError("CLUSTERDOWN The cluster is down"),
        redis_errors.ResponseError("NOGROUP No such key 'rm:ingest' or consumer group"),
    ],
)
def test_redis_away_names_redis(error: Exception) -> None:
    assert dependency_of(error) is Dependency.REDIS


def test_a_redis_command_error_is_not_redis_being_away() -> None:
    assert dependency_of(redis_errors.ResponseError("WRONGTYPE Operation against a key")) is None


@pytest.mark.parametrize(
    "error",
    [
        asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed in the middle"),
        asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
        asyncpg.exceptions.AdminShutdownError("terminating connection due to administrator"),
        asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
        asyncpg.InterfaceError("connection is closed"),
        # A pooled connection PostgreSQL terminated while it was idle, used next.
        asyncpg.InternalClientError(
            "cannot switch to state 11; another operation (2) is in progress"
        ),
    ],
)
def test_postgresql_away_names_postgresql(error: Exception) -> None:
    assert dependency_of(error) is Dependency.POSTGRES


def test_a_query_postgresql_refuses_is_not_postgresql_being_away() -> None:
    assert dependency_of(asyncpg.exceptions.UniqueViolationError("duplicate key")) is None
    assert dependency_of(asyncpg.InterfaceError("another operation is in progress")) is None


def test_sqlalchemys_wrapping_is_seen_through() -> None:
    inner = asyncpg.exceptions.ConnectionDoesNotExistError("connection was closed")
    wrapped = sqlalchemy_errors.DBAPIError("SELECT 1", None, inner, connection_invalidated=True)
    assert dependency_of(wrapped) is Dependency.POSTGRES
    assert dependency_of(sqlalchemy_errors.TimeoutError("QueuePool limit")) is Dependency.POSTGRES


def _raised_from(cause: Exception) -> RuntimeError:
    try:
        raise RuntimeError("ingest failed") from cause
    except RuntimeError as outer:
        return outer


def test_a_cause_chain_is_followed() -> None:
    outer = _raised_from(redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379"))
    assert dependency_of(outer) is Dependency.REDIS


def test_a_bare_socket_error_is_named_by_the_library_that_raised_it() -> None:
    assert dependency_of(ConnectionRefusedError(111, "Connection refused")) is None


@pytest.mark.parametrize(
    ("code", "away"),
    [
        (grpc.StatusCode.UNAVAILABLE, True),
        (grpc.StatusCode.DEADLINE_EXCEEDED, True),
        (grpc.StatusCode.INVALID_ARGUMENT, False),
    ],
)
def test_an_upstream_call_that_failed_names_the_service(code: grpc.StatusCode, away: bool) -> None:
    error = aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), "no healthy upstream", None)
    assert (dependency_of(error) is Dependency.UPSTREAM) is away


def test_the_message_names_the_dependency_says_to_retry_and_leaks_nothing() -> None:
    error = redis_errors.ConnectionError("Error 111 connecting to 127.0.0.1:6379.")
    failure = unavailable(error)
    assert failure is not None
    assert failure.code == grpc.StatusCode.UNAVAILABLE
    assert str(failure) == "the live store (Redis) is unavailable; retry in a few seconds"
    assert unavailable(InvalidArgument("bad")) is None
    assert unavailable(KeyError("bug")) is None
