"""The simulator's street grid: cars follow streets at the speed they report, stay in the city,
and the phone's GPS noise stays within a few metres."""

from __future__ import annotations

import math
import random

import pytest

from services.domain.geodesy import haversine_m
from services.ops.simulator.city import (
    Car,
    Grid,
    drive_to,
    gps_fix,
    on_line,
    roam,
    snap_to_street,
)

GRID = Grid(12.9716, 77.5946, block_m=150.0, radius_m=1500.0)


def _position(car: Car) -> tuple[float, float]:
    return GRID.to_latlng(car.x, car.y)


def test_the_projection_measures_metres() -> None:
    lat, lng = GRID.to_latlng(300.0, 400.0)
    assert haversine_m(GRID.center_lat, GRID.center_lng, lat, lng) == pytest.approx(500.0, rel=1e-3)
    assert GRID.to_xy(lat, lng) == pytest.approx((300.0, 400.0), abs=1e-6)


@pytest.mark.parametrize("seed", range(5))
def test_a_roaming_car_moves_its_speed_along_streets_and_stays_in_the_city(seed: int) -> None:
    rng = random.Random(seed)
    car = GRID.random_intersection(rng)
    speed, tick_s = rng.uniform(5.0, 14.0), 4.0
    for _ in range(500):
        before = _position(car)
        roam(car, GRID, speed * tick_s, rng)
        after = _position(car)
        moved = haversine_m(*before, *after)
        # Along streets: never further than driven, at most cut by one corner (the diagonal).
        assert speed * tick_s / math.sqrt(2) - 1.0 <= moved <= speed * tick_s + 1.0
        assert on_line(car.x, GRID.block_m) or on_line(car.y, GRID.block_m)
        assert haversine_m(GRID.center_lat, GRID.center_lng, *after) <= GRID.radius_m + 1.0


def test_the_heading_points_the_way_the_car_is_going() -> None:
    rng = random.Random(7)
    car = GRID.random_intersection(rng)
    for _ in range(300):
        roam(car, GRID, rng.uniform(5.0, 60.0), rng)
        if on_line(car.x, GRID.block_m) and on_line(car.y, GRID.block_m):
            continue  # at an intersection the next move may turn
        reported = car.heading_deg
        x, y = car.x, car.y
        roam(car, GRID, 0.001, rng)  # a millimetre on: never across an intersection
        bearing = math.degrees(math.atan2(car.x - x, car.y - y)) % 360
        assert bearing == pytest.approx(reported, abs=1e-6)


def test_a_car_drives_to_a_point_and_reports_arrival() -> None:
    car = Car(0.0, 0.0, (1, 0))
    target = snap_to_street(420.0, -130.0, GRID.block_m)
    steps = 0
    while not drive_to(car, target, 50.0, GRID.block_m):
        steps += 1
        assert steps < 100
    assert (car.x, car.y) == pytest.approx(target)
    assert steps == math.ceil((abs(target[0]) + abs(target[1])) / 50.0) - 1


def test_snapping_puts_a_point_on_the_nearest_street() -> None:
    assert snap_to_street(160.0, 80.0, 150.0) == (150.0, 80.0)
    assert snap_to_street(80.0, 295.0, 150.0) == (80.0, 300.0)


def test_gps_noise_is_a_few_metres_and_reported() -> None:
    rng = random.Random(3)
    car = Car(150.0, 300.0, (0, 1))
    true_lat, true_lng = _position(car)
    errors = []
    for _ in range(500):
        lat, lng, accuracy = gps_fix(GRID, car, rng, sigma_m=4.0)
        errors.append(haversine_m(true_lat, true_lng, lat, lng))
        assert 3.0 <= accuracy <= 10.0
    assert 2.0 < sum(errors) / len(errors) < 8.0
    assert max(errors) < 30.0
