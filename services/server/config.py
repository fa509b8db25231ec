"""Settings read once from the environment (RIDEMESH_*) and the command line into a typed object."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from typing import Any

from services.domain.fix_quality import QualitySettings
from services.server.urls import InvalidUrl, database_url, redis_url


class MissingSetting(RuntimeError):
    """A required setting has no value; the message names its environment key."""


class InvalidSetting(MissingSetting):
    """A setting whose value cannot be used; the message names the key and what it accepts."""


class UnsafeSetting(MissingSetting):
    """A setting (or key) that production mode refuses; the message names what to change."""


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything a service process needs to know; built in the wiring and passed in."""

    # Empty only in commands that never touch that store (migrate, maintain).
    redis_url: str
    database_url: str
    # A PostgreSQL streaming replica for history reads that may lag a moment (tracks, ride and
    # zone listings); empty: every read goes to database_url. Writes, and reads that must see
    # this process's own writes (durability checks, ride transitions), always use the primary.
    database_read_url: str = ""
    # A driver with no fix for this long is not live (GetDriverLocation answers NOT_FOUND).
    live_window_s: float = 300.0
    # Fixes stamped further ahead of the server clock than this are rejected.
    max_future_skew_s: float = 300.0
    # Fixes older than this are rejected (history partitions are kept for retention anyway).
    max_fix_age_s: float = 7 * 86400.0
    # Server-side throttle per driver: a token bucket of this rate and burst.
    fix_rate_per_s: float = 2.0
    fix_burst: int = 5
    # Fix quality filters (services/domain/fix_quality.py); 0 turns one off. Refused: accuracy
    # radius worse than this (m), a move faster than this from the previous fix (m/s), and a
    # repeat of the previous fix's position and time. Stored without moving the live position:
    # a fix within fix_jitter_m of a driver reporting at most fix_jitter_speed_mps. Stored only
    # (never live, no events): fixes taken more than fix_late_after_s before they arrive.
    fix_max_accuracy_m: float = 100.0
    fix_max_speed_mps: float = 70.0
    fix_drop_duplicates: bool = True
    fix_jitter_m: float = 8.0
    fix_jitter_speed_mps: float = 0.5
    fix_late_after_s: float = 30.0
    # How often each driver stream is told how far its fixes got.
    ack_interval_s: float = 0.5
    # Write-behind persistence: a batch is flushed at this size or this age, whichever first.
    persist_batch_size: int = 5000
    persist_max_age_s: float = 1.0
    # Entries pending in a crashed persister for this long are claimed by another.
    persist_claim_idle_s: float = 30.0
    # An accepted fix not in PostgreSQL this long after it was accepted is given up as lost (its
    # stream ends and the app sends it again), even if the ingest watermark never passed it.
    fix_lost_after_s: float = 120.0
    # Daily history partitions are created this many days ahead.
    partitions_ahead_days: int = 3
    # On SIGTERM: how long streams get to finish after the final flush.
    shutdown_grace_s: float = 5.0
    # Upper bound on fixes in one UploadLocations call.
    max_upload_batch: int = 1000
    # History older than this many days is archived to `archive_dir` and its partition dropped.
    retention_days: int = 30
    archive_dir: str = ".ridemesh/archive"
    # How often the maintenance task (partitions ahead, retention) runs inside the mesh.
    maintenance_interval_s: float = 3600.0
    # EstimateEta: road distance ≈ great-circle distance × this factor, at this speed unless the
    # driver's recent speed is known.
    eta_detour_factor: float = 1.3
    eta_default_speed_mps: float = 8.33
    # Every GeoQuery replica reloads its zone index at least this often (and on every change).
    zone_refresh_s: float = 30.0
    # Where services reach each other: Envoy's address (inter-service calls go through the mesh).
    mesh_target: str = ""
    # Dispatch: search this far for up to this many available drivers, offer one at a time for
    # offer_timeout_s each, and expire the ride when nobody accepted within max_dispatch_s.
    dispatch_radius_m: float = 5000.0
    dispatch_candidates: int = 10
    offer_timeout_s: float = 15.0
    max_dispatch_s: float = 120.0
    # How often a RideService replica looks for lapsed offers (any replica may advance any ride).
    dispatch_sweep_s: float = 0.5
    # Sampling hints sent on driver streams (services/domain/sampling.py): per activity, send a
    # fix this often (s) at this accuracy (m).
    sampling_idle_s: float = 30.0
    sampling_idle_m: float = 50.0
    sampling_available_s: float = 4.0
    sampling_available_m: float = 20.0
    sampling_to_pickup_s: float = 2.0
    sampling_to_pickup_m: float = 10.0
    sampling_near_pickup_s: float = 1.0
    sampling_near_pickup_m: float = 5.0
    sampling_on_ride_s: float = 3.0
    sampling_on_ride_m: float = 10.0
    # An available driver whose fixes stay within idle_radius_m for idle_after_s is idle; a
    # driver's app is asked for a fix now at most once per fix_request_gap_s.
    idle_radius_m: float = 30.0
    idle_after_s: float = 120.0
    fix_request_gap_s: float = 2.0
    # Authentication: the directory holding jwks.json (the keys tokens must be signed with), and
    # the issuer and audience they must name; clock skew tolerated on exp.
    auth_keys_dir: str = ".ridemesh/keys"
    auth_issuer: str = "ridemesh-dev"
    auth_audience: str = "ridemesh"
    auth_leeway_s: float = 30.0
    # Production refuses the development key and open reflection at startup.
    production: bool = False
    # Reflection answers without a token (health always does: Envoy's checks carry none).
    open_reflection: bool = True
    # RideService's own token for calls through the mesh; empty: minted with the development key.
    service_token: str = ""
    # Per caller (token `sub`) and per process: concurrent StreamLocations/Chat calls, concurrent
    # watch streams, and unary calls per second (token bucket); ops and service callers get
    # staff_limit_factor times the stream and watcher allowances. Beyond: RESOURCE_EXHAUSTED.
    max_streams_per_caller: int = 8
    max_watchers_per_caller: int = 32
    staff_limit_factor: int = 50
    unary_rate_per_s: float = 50.0
    unary_burst: int = 100
    # Prometheus metrics at http://<the service's host>:<port>/metrics; 0 serves none.
    metrics_port: int = 0
    # Service logs: "json" (one object per line, with trace ids) or "text".
    log_format: str = "json"
    # Run the service's event loop on uvloop (libuv) instead of asyncio's own.
    uvloop: bool = False

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        required: tuple[str, ...] = ("redis_url", "database_url"),
        **overrides: Any,
    ) -> Settings:
        """Reads RIDEMESH_<FIELD> for each field; non-None `overrides` win over the environment.
        Store URLs are normalised (postgres:// works as well as postgresql+asyncpg://); a store
        not in `required` may be left unset by commands that never touch it."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        for field in fields(cls):
            override = overrides.get(field.name)
            raw = override if override is not None else env.get(f"RIDEMESH_{field.name.upper()}")
            if raw is None:
                continue
            kind = type(field.default) if field.default is not field.default_factory else str
            values[field.name] = raw if isinstance(raw, kind) else _convert(field.name, raw, kind)
        for name in required:
            if not values.get(name):
                raise MissingSetting(
                    f"setting RIDEMESH_{name.upper()} is required "
                    f"(or pass --{name.replace('_', '-')})"
                )
        return cls(**normalise_store_urls(values))

    @property
    def fix_quality(self) -> QualitySettings:
        """The fix quality filters' bounds."""
        return QualitySettings(
            max_accuracy_m=self.fix_max_accuracy_m,
            max_speed_mps=self.fix_max_speed_mps,
            jitter_m=self.fix_jitter_m,
            jitter_speed_mps=self.fix_jitter_speed_mps,
            late_after_s=self.fix_late_after_s,
            drop_duplicates=self.fix_drop_duplicates,
        )

    def with_overrides(self, **changes: Any) -> Settings:
        """A copy with some fields changed (tests use it for short intervals)."""
        return replace(self, **changes)


def normalise_store_urls(values: dict[str, Any]) -> dict[str, Any]:
    """`values` with redis_url and database_url (set or empty) in the forms the drivers take;
    InvalidSetting names the key and the forms accepted."""
    normalise = {
        "redis_url": redis_url,
        "database_url": database_url,
        "database_read_url": database_url,
    }
    values.setdefault("redis_url", "")
    values.setdefault("database_url", "")
    values.setdefault("database_read_url", "")
    try:
        for name, normal in normalise.items():
            if values[name]:
                values[name] = normal(values[name], _setting_name(name))
    except InvalidUrl as exc:
        raise InvalidSetting(str(exc)) from None
    return values


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _convert(name: str, raw: object, kind: type) -> object:
    if kind in (str, type(None)) or isinstance(raw, kind):
        return raw
    if kind is bool:
        # bool("0") is True, so booleans are read by name.
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise MissingSetting(
            f"setting RIDEMESH_{name.upper()} must be a bool (1/true/yes or 0/false/no), "
            f"got {raw!r}"
        )
    try:
        return kind(raw)
    except (TypeError, ValueError) as exc:
        raise MissingSetting(
            f"setting RIDEMESH_{name.upper()} must be a {kind.__name__}, got {raw!r}"
        ) from exc


def _setting_name(name: str) -> str:
    return f"RIDEMESH_{name.upper()} (--{name.replace('_', '-')})"
