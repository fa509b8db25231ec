"""Settings from RIDEMESH_* variables: required keys, conversion, overrides, helpful errors."""

from __future__ import annotations

import pytest

from services.server.config import MissingSetting, Settings

REQUIRED = {
    "RIDEMESH_REDIS_URL": "redis://127.0.0.1:6379/0",
    "RIDEMESH_DATABASE_URL": "postgresql+asyncpg://u@127.0.0.1/ridemesh",
}


def test_required_urls_are_read() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings.redis_url == REQUIRED["RIDEMESH_REDIS_URL"]
    assert settings.database_url == REQUIRED["RIDEMESH_DATABASE_URL"]


def test_defaults_apply_when_unset() -> None:
    settings = Settings.from_env(REQUIRED)
    assert settings.fix_burst == 5
    assert settings.fix_rate_per_s == 2.0
    assert settings.max_fix_age_s == 7 * 86400.0


@pytest.mark.parametrize("key", ["RIDEMESH_REDIS_URL", "RIDEMESH_DATABASE_URL"])
def test_a_missing_url_names_its_key_and_flag(key: str) -> None:
    env = {k: v for k, v in REQUIRED.items() if k != key}
    flag = "--" + key.removeprefix("RIDEMESH_").lower().replace("_", "-")
    with pytest.raises(MissingSetting, match=f"setting {key} is required") as info:
        Settings.from_env(env)
    assert flag in str(info.value)


@pytest.mark.parametrize("key", ["RIDEMESH_REDIS_URL", "RIDEMESH_DATABASE_URL"])
def test_an_empty_url_counts_as_missing(key: str) -> None:
    with pytest.raises(MissingSetting, match=key):
        Settings.from_env({**REQUIRED, key: ""})


def test_nothing_set_names_a_required_key() -> None:
    with pytest.raises(MissingSetting, match="RIDEMESH_REDIS_URL"):
        Settings.from_env({})


def test_does_not_read_os_environ_when_a_mapping_is_given(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RIDEMESH_FIX_BURST", "99")
    assert Settings.from_env(REQUIRED).fix_burst == 5


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in REQUIRED.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("RIDEMESH_FIX_BURST", "9")
    assert Settings.from_env().fix_burst == 9


def test_values_are_converted_to_the_field_types() -> None:
    settings = Settings.from_env(
        {
            **REQUIRED,
            "RIDEMESH_FIX_RATE_PER_S": "2.5",
            "RIDEMESH_FIX_BURST": "7",
            "RIDEMESH_ACK_INTERVAL_S": "1",
            "RIDEMESH_PERSIST_BATCH_SIZE": "250",
        }
    )
    assert settings.fix_rate_per_s == 2.5
    assert settings.fix_burst == 7
    assert type(settings.fix_burst) is int
    assert settings.ack_interval_s == 1.0
    assert type(settings.ack_interval_s) is float
    assert settings.persist_batch_size == 250


def test_overrides_win_over_the_environment() -> None:
    env = {**REQUIRED, "RIDEMESH_FIX_BURST": "7"}
    settings = Settings.from_env(env, fix_burst=3, redis_url="redis://other:1/0")
    assert settings.fix_burst == 3
    assert settings.redis_url == "redis://other:1/0"


def test_falsy_overrides_still_win() -> None:
    env = {**REQUIRED, "RIDEMESH_PERSIST_MAX_AGE_S": "2.5", "RIDEMESH_FIX_BURST": "7"}
    settings = Settings.from_env(env, persist_max_age_s=0.0, fix_burst=0)
    assert settings.persist_max_age_s == 0.0
    assert settings.fix_burst == 0


def test_none_overrides_fall_back_to_the_environment() -> None:
    env = {**REQUIRED, "RIDEMESH_FIX_BURST": "7"}
    assert Settings.from_env(env, fix_burst=None, redis_url=None).fix_burst == 7


def test_overrides_can_supply_the_required_urls() -> None:
    settings = Settings.from_env({}, redis_url="redis://r/0", database_url="postgresql://d")
    assert (settings.redis_url, settings.database_url) == (
        "redis://r/0",
        "postgresql+asyncpg://d",
    )


def test_string_overrides_are_converted_too() -> None:
    assert Settings.from_env(REQUIRED, fix_rate_per_s="4").fix_rate_per_s == 4.0


@pytest.mark.parametrize(
    ("key", "raw", "kind"),
    [
        ("RIDEMESH_FIX_RATE_PER_S", "fast", "float"),
        ("RIDEMESH_FIX_BURST", "2.5", "int"),
        ("RIDEMESH_PERSIST_BATCH_SIZE", "", "int"),
    ],
)
def test_a_bad_number_names_the_key_and_the_value(key: str, raw: str, kind: str) -> None:
    with pytest.raises(MissingSetting) as info:
        Settings.from_env({**REQUIRED, key: raw})
    assert str(info.value) == f"setting {key} must be a {kind}, got {raw!r}"


def test_with_overrides_copies() -> None:
    settings = Settings.from_env(REQUIRED)
    faster = settings.with_overrides(ack_interval_s=0.05)
    assert faster.ack_interval_s == 0.05
    assert settings.ack_interval_s == 0.5


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("YES", True),
        ("on", True),
        ("0", False),
        ("false", False),
        ("No", False),
        ("off", False),
    ],
)
def test_booleans_are_read_by_name(raw: str, expected: bool) -> None:
    settings = Settings.from_env({**REQUIRED, "RIDEMESH_PRODUCTION": raw})
    assert settings.production is expected


def test_a_bad_boolean_names_the_key_and_the_value() -> None:
    with pytest.raises(MissingSetting) as info:
        Settings.from_env({**REQUIRED, "RIDEMESH_OPEN_REFLECTION": "maybe"})
    assert "RIDEMESH_OPEN_REFLECTION must be a bool" in str(info.value)
    assert "'maybe'" in str(info.value)


def test_a_boolean_override_is_kept() -> None:
    assert Settings.from_env(REQUIRED, open_reflection=False).open_reflection is False
