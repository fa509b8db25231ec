"""Store URLs: the forms people paste are normalised; the rest is refused in one line."""

from __future__ import annotations

import pytest

from services.live.client import CLUSTER_PARTITIONS, cluster_client, is_cluster_url, partitions_in
from services.ops.cli import main
from services.server.config import InvalidSetting, Settings
from services.server.urls import InvalidUrl, database_url, redis_url

ASYNCPG = "postgresql+asyncpg://postgres@127.0.0.1:5432/ridemesh"


@pytest.mark.parametrize(
    "raw",
    [
        "postgresql://postgres@127.0.0.1:5432/ridemesh",
        "postgres://postgres@127.0.0.1:5432/ridemesh",
        "POSTGRESQL://postgres@127.0.0.1:5432/ridemesh",
        ASYNCPG,
        f"  {ASYNCPG}\n",
    ],
)
def test_postgres_forms_become_the_asyncpg_url(raw: str) -> None:
    assert database_url(raw) == ASYNCPG


def test_credentials_path_and_options_are_kept() -> None:
    raw = "postgres://app:s3cr%40t@db.internal:6432/rides?application_name=ridemesh"
    assert database_url(raw) == (
        "postgresql+asyncpg://app:s3cr%40t@db.internal:6432/rides?application_name=ridemesh"
    )


def test_libpq_sslmode_becomes_asyncpgs_ssl() -> None:
    url = database_url("postgresql://u@db:5432/r?sslmode=verify-full&connect_timeout=5")
    assert url == "postgresql+asyncpg://u@db:5432/r?ssl=verify-full&connect_timeout=5"


def test_an_unknown_sslmode_is_refused_naming_the_values() -> None:
    with pytest.raises(InvalidUrl, match=r"sslmode='always' is not one of .*verify-full"):
        database_url("postgresql://u@db/r?sslmode=always")


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("mysql://root:pw@db/ridemesh", "a mysql:// URL"),
        ("postgresql+psycopg://u:pw@db/ridemesh", "a postgresql+psycopg:// URL"),
        ("sqlite:///ridemesh.db", "a sqlite:// URL"),
        ("127.0.0.1:5432/ridemesh", "a URL without a scheme"),
        ("ridemesh", "a URL without a scheme"),
        ("postgresql://", "a postgresql:// URL"),
    ],
)
def test_other_database_urls_are_refused_naming_the_setting_and_forms(raw: str, shown: str) -> None:
    with pytest.raises(InvalidUrl) as info:
        database_url(raw, "RIDEMESH_DATABASE_URL")
    message = str(info.value)
    assert message == (
        "setting RIDEMESH_DATABASE_URL must be a postgresql://, postgres:// or "
        f"postgresql+asyncpg:// URL, got {shown}"
    )
    assert "pw" not in message  # a password in the URL is never echoed


@pytest.mark.parametrize(
    "raw",
    [
        "redis://127.0.0.1:6379/0",
        "rediss://:pw@cache:6380/1",
        "unix:///run/redis.sock?db=2",
        "redis+cluster://10.0.0.1:7000,10.0.0.2:7000",
        "rediss+cluster://:pw@a:7000,b:7000/?partitions=24",
    ],
)
def test_redis_forms_are_taken_as_they_are(raw: str) -> None:
    assert redis_url(raw) == raw


@pytest.mark.parametrize("bad", ["0", "257", "twelve", "-1"])
def test_a_partition_count_out_of_range_is_refused_naming_the_range(bad: str) -> None:
    with pytest.raises(InvalidUrl, match=r"partitions=.* must be a whole number from 1 to 256"):
        redis_url(f"redis+cluster://a:7000?partitions={bad}")


@pytest.mark.parametrize(
    ("url", "cluster", "partitions"),
    [
        ("redis://h:6379/0", False, 1),
        ("redis://h:6379/0?partitions=12", False, 12),
        ("redis+cluster://a:7000,b:7001", True, CLUSTER_PARTITIONS),
        ("rediss+cluster://a:7000?partitions=48", True, 48),
    ],
)
def test_the_url_picks_the_topology_and_the_partition_count(
    url: str, cluster: bool, partitions: int
) -> None:
    assert is_cluster_url(url) is cluster
    assert partitions_in(url) == partitions


def test_a_cluster_url_seeds_the_client_with_every_node_and_the_credentials() -> None:
    client = cluster_client("rediss+cluster://ops:s3cret@a.example:7000,b.example:7001")
    seeds = client.nodes_manager.startup_nodes
    assert sorted(seeds) == ["a.example:7000", "b.example:7001"]
    assert client.connection_kwargs["password"] == "s3cret"
    assert client.connection_kwargs["username"] == "ops"


@pytest.mark.parametrize(
    "raw", ["http://127.0.0.1:6379", "127.0.0.1:6379", "redis://", "unix://", "valkey://h:1"]
)
def test_other_redis_urls_are_refused_naming_the_forms(raw: str) -> None:
    with pytest.raises(
        InvalidUrl, match=r"RIDEMESH_REDIS_URL must be a redis://, rediss:// \(TLS\)"
    ):
        redis_url(raw, "RIDEMESH_REDIS_URL")


def test_settings_normalise_urls_from_the_environment() -> None:
    settings = Settings.from_env(
        {"RIDEMESH_REDIS_URL": "redis://r:6379", "RIDEMESH_DATABASE_URL": "postgres://u@db/r"}
    )
    assert settings.database_url == "postgresql+asyncpg://u@db/r"


def test_settings_normalise_urls_from_flags() -> None:
    settings = Settings.from_env({}, redis_url="redis://r", database_url="postgresql://u@db/r")
    assert settings.database_url == "postgresql+asyncpg://u@db/r"


def test_settings_name_the_key_and_the_flag_of_a_bad_url() -> None:
    with pytest.raises(InvalidSetting, match=r"RIDEMESH_DATABASE_URL \(--database-url\) must"):
        Settings.from_env({"RIDEMESH_REDIS_URL": "redis://r", "RIDEMESH_DATABASE_URL": "mysql://x"})


def test_migrate_needs_no_redis() -> None:
    settings = Settings.from_env({}, required=("database_url",), database_url="postgres://u@d/r")
    assert settings.redis_url == ""
    assert settings.database_url == "postgresql+asyncpg://u@d/r"


@pytest.mark.parametrize("command", ["serve location --port 1", "migrate", "maintain", "up"])
def test_the_command_stops_with_one_line_naming_the_setting(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [*command.split(), "--database-url", "mysql://root@db/ridemesh"]
    if command != "maintain":
        argv += ["--redis-url", "redis://127.0.0.1:1"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert err.startswith("ridemesh: setting RIDEMESH_DATABASE_URL (--database-url) must be a ")
    assert "got a mysql:// URL" in err


def test_the_read_url_is_normalised_like_the_primary_one() -> None:
    settings = Settings.from_env(
        env={},
        redis_url="redis://127.0.0.1:6379/0",
        database_url="postgres://u@127.0.0.1/ridemesh",
        database_read_url="postgres://u@127.0.0.1:5433/ridemesh?sslmode=require",
    )
    assert settings.database_read_url == (
        "postgresql+asyncpg://u@127.0.0.1:5433/ridemesh?ssl=require"
    )
    with pytest.raises(InvalidSetting, match="RIDEMESH_DATABASE_READ_URL"):
        Settings.from_env(
            env={"RIDEMESH_DATABASE_READ_URL": "mysql://u@host/db"},
            redis_url="redis://127.0.0.1:6379/0",
            database_url="postgres://u@127.0.0.1/ridemesh",
        )


def test_up_refuses_a_cluster_when_given_a_redis_of_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["up", "--redis-cluster", "--no-demo", "--redis-url", "redis://cache:6379/0"]
    assert main(argv) == 2
    assert "redis+cluster://" in capsys.readouterr().err


def test_up_refuses_a_replica_of_a_database_it_does_not_start(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["up", "--postgres-replica", "--no-demo", "--database-url", "postgres://u@db/ridemesh"]
    assert main(argv) == 2
    assert "RIDEMESH_DATABASE_READ_URL" in capsys.readouterr().err
