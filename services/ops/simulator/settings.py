"""How a simulation run is shaped: the city, its drivers and riders, and their pace."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SimSettings:
    """Everything a run needs; the defaults are a plausible city, tests shrink and speed it up."""

    target: str = "127.0.0.1:8080"
    drivers: int = 200
    ride_rate_per_min: float = 6.0
    center: tuple[float, float] = (12.9716, 77.5946)
    duration_s: float = 0.0  # 0 runs until stopped
    seed: int | None = None
    block_m: float = 150.0
    city_radius_m: float = 3000.0
    trip_radius_m: float = 2000.0  # pickups and drop-offs lie this close to the centre
    speed_mps: tuple[float, float] = (5.0, 14.0)
    # Without hints (or before the first), a fix every this many seconds (uniform in the range).
    fix_interval_s: tuple[float, float] = (3.0, 5.0)
    # Send at the server's hinted interval and one fix at once when asked; False keeps to
    # fix_interval_s whatever the server says (the sampling bench's baseline).
    honour_hints: bool = True
    # This share of the drivers park where they start and wait for rides there (and park again
    # where a ride ends) instead of cruising.
    parked_fraction: float = 0.0
    gps_sigma_m: float = 4.0
    accept_probability: float = 0.9
    stream_open_rate_per_s: float = 50.0
    reconnect_backoff_s: tuple[float, float] = (0.5, 10.0)
    token_ttl_s: int = 24 * 3600
    # A rider whose ride has no driver after this long cancels it (before dispatch gives up).
    rider_patience_s: float = 60.0
    # Create the demo zones (a station, a park, a business district) if they are missing.
    demo_zones: bool = True
