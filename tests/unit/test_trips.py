"""Trip and stop detection on scripted days whose answers are known by construction."""

from __future__ import annotations

import itertools
import random
import tracemalloc
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

import pytest

from services.domain.geodesy import haversine_m
from services.domain.trips import (
    Event,
    Fix,
    RideSpan,
    Stop,
    Trip,
    TripDetector,
    TripSettings,
    key_of,
    within_radius,
)
from tests.trip_days import Day, destination, micros

SETTINGS = TripSettings()
T0 = datetime(2026, 12, 7, 8, 0, tzinfo=UTC)
US = 1_000_000


def at(seconds: float) -> int:
    """T0 plus `seconds`, in µs since the epoch."""
    return micros(T0) + round(seconds * US)


def detect(fixes: Sequence[Fix], rides: Sequence[RideSpan] = (), page: int = 97) -> list[Event]:
    """Runs the detector, pushing the fixes in pages as the service does."""
    detector = TripDetector(SETTINGS, rides)
    events: list[Event] = []
    for begin in range(0, len(fixes), page):
        events += detector.push(fixes[begin : begin + page])
    return events + detector.finish()


def trips(events: Sequence[Event]) -> list[Trip]:
    return [event for event in events if isinstance(event, Trip)]


def stops(events: Sequence[Event]) -> list[Stop]:
    return [event for event in events if isinstance(event, Stop)]


def city_day() -> Day:
    """Park 5 min; drive 5 km; park 10 min with 4 m jitter; drive 3 km; stand 2 min; no data
    for 20 min; park 5 min; move the car 120 m; park 5 min; drive 2 km (data ends driving)."""
    day = Day(52.52, 13.405, T0)
    day.park(300).drive(5_000).park(600).turn(0.0).drive(3_000).park(120).gap(1_200)
    return day.park(300).drive(120, 3.0).park(300).turn(180.0).drive(2_000)


def test_a_city_day_has_three_trips_and_three_stops_at_the_right_times() -> None:
    events = detect(city_day().fixes)
    got = [(type(e).__name__, e.first.micros, e.last.micros) for e in events]
    assert got == [
        ("Stop", at(0), at(300)),
        ("Trip", at(300), at(804)),  # from the last parked fix to the first parked fix
        ("Stop", at(804), at(1_400)),
        ("Trip", at(1_400), at(1_820)),  # the 2 min standing ends with the data gap
        ("Stop", at(3_024), at(3_660)),  # the 120 m move is no trip: one stop around it
        ("Trip", at(3_660), at(3_860)),  # running past the end of the data
    ]


def test_trip_distances_times_and_speeds_match_the_script() -> None:
    first, second, third = trips(detect(city_day().fixes))
    assert first.distance_m == pytest.approx(5_000, abs=8)
    assert second.distance_m == pytest.approx(3_000, abs=8)  # standing jitter adds nothing
    assert third.distance_m == pytest.approx(2_000, abs=8)
    assert first.duration_s == 504
    assert first.moving_s == 500  # the leg onto the parking place is standing, not moving
    assert second.moving_s == 300
    assert first.average_speed_mps == pytest.approx(5_000 / 504, rel=0.01)
    assert first.max_speed_mps == pytest.approx(10.0, abs=0.5)
    assert first.fix_count == 127  # the parked fix before, 125 driving, the parked one after
    assert [trip.ride_id for trip in (first, second, third)] == ["", "", ""]


def test_stops_sit_where_the_car_stood() -> None:
    day = city_day()
    events = detect(day.fixes)
    second_stop = stops(events)[1]
    parked = [f for f in day.fixes if at(804) <= f.micros <= at(1_400)]
    centre_lat = sum(f.latitude for f in parked) / len(parked)
    centre_lng = sum(f.longitude for f in parked) / len(parked)
    where = second_stop.first
    assert haversine_m(where.latitude, where.longitude, centre_lat, centre_lng) < 8
    assert second_stop.duration_s == 596


def test_no_fixes_and_one_fix_make_nothing() -> None:
    assert detect([]) == []
    assert detect(Day(1.0, 2.0, T0).fixes) == []


def test_a_long_jittery_park_is_one_stop_and_no_trip() -> None:
    day = Day(-33.86, 151.2, T0).park(7_200, jitter_m=15.0)
    events = detect(day.fixes)
    assert [(type(e).__name__, e.first.micros, e.last.micros) for e in events] == [
        ("Stop", at(0), at(7_200))
    ]


def test_short_drives_are_not_trips() -> None:
    short_distance = Day(40.0, -74.0, T0).park(300).drive(150, 2.0).park(300)
    short_time = Day(40.0, -74.0, T0).park(300).drive(400, 10.0).park(300)  # 40 s
    for day in (short_distance, short_time):
        events = detect(day.fixes)
        assert trips(events) == []
        assert [(e.first.micros, e.last.micros) for e in stops(events)] == [
            (at(0), at(day_end(day)))
        ]


def day_end(day: Day) -> float:
    return (day.now - at(0)) / US


def test_a_drive_without_reported_speeds_is_found_by_implied_speed() -> None:
    day = Day(35.68, 139.76, T0).park(300).drive(4_000, report_speed=False).park(300)
    (trip,) = trips(detect(day.fixes))
    # Without speeds the stop lasts to its last fix inside the radius: the first 40 m leg.
    assert trip.first.micros == at(304)
    assert trip.distance_m == pytest.approx(3_960, abs=8)
    assert trip.moving_s == pytest.approx(396, abs=8)
    assert trip.max_speed_mps == pytest.approx(10.0, abs=0.5)


def test_a_gps_glitch_does_not_become_the_max_speed() -> None:
    day = Day(48.85, 2.35, T0).park(300).drive(2_000).jump(3_000).drive(2_000).park(300)
    (trip,) = trips(detect(day.fixes))
    assert trip.max_speed_mps == pytest.approx(10.0, abs=0.5)


def test_high_latitude_and_antimeridian_distances_are_metres() -> None:
    north = Day(78.22, 15.65, T0).park(300).drive(5_000).park(300)  # Svalbard, eastward
    across = Day(-16.5, 179.97, T0).park(300).drive(6_000).park(300)  # Fiji, over 180°
    assert across.fixes[-1].longitude < 0 < across.fixes[0].longitude
    for day, metres in ((north, 5_000), (across, 6_000)):
        (trip,) = trips(detect(day.fixes))
        assert trip.distance_m == pytest.approx(metres, abs=8)


def test_a_ride_cuts_the_trip_and_names_its_pieces() -> None:
    day = Day(52.52, 13.405, T0).park(300).drive(6_000).park(300)  # driving 300..900 s
    ride = RideSpan("ride-1", assigned=at(100), picked_up=at(500), ended=at(701))
    pieces = trips(detect(day.fixes, [ride]))
    assert [(t.first.micros, t.last.micros, t.ride_id) for t in pieces] == [
        (at(300), at(500), "ride-1"),  # to the pickup (assigned while parked)
        (at(500), at(704), "ride-1"),  # with the rider, to the first fix at or after the end
        (at(704), at(904), ""),
    ]
    assert sum(t.distance_m for t in pieces) == pytest.approx(6_000, abs=8)
    assert sum(t.duration_s for t in pieces) == 604


def test_a_ride_that_has_not_ended_names_the_rest_of_the_trip() -> None:
    day = Day(52.52, 13.405, T0).park(300).drive(3_000).park(300)
    ride = RideSpan("ride-2", assigned=at(400), picked_up=None, ended=None)
    pieces = trips(detect(day.fixes, [ride]))
    assert [(t.first.micros, t.ride_id) for t in pieces] == [(at(300), ""), (at(400), "ride-2")]


def resumed(fixes: Sequence[Fix], trip: Trip, rides: Sequence[RideSpan]) -> list[Event]:
    """What a later page sees: detection from the trip's resume key, after the trip's end."""
    start = fixes.index(next(f for f in fixes if key_of(f) == trip.resume_from))
    end_key = key_of(trip.last)
    return [e for e in detect(fixes[start:], rides) if key_of(e.last) > end_key]


def test_detection_resumed_after_any_trip_finds_exactly_what_followed_it() -> None:
    day = city_day()
    rides = [
        RideSpan("ride-a", assigned=at(1_000), picked_up=at(1_500), ended=at(1_700)),
        RideSpan("ride-b", assigned=at(3_700), picked_up=at(3_702), ended=at(3_800)),
    ]
    events = detect(day.fixes, rides)
    assert len(trips(events)) == 8  # three drives; the second cut twice, the third 3 times
    for index, event in enumerate(events):
        if isinstance(event, Trip):
            assert resumed(day.fixes, event, rides) == events[index + 1 :]


def test_memory_stays_bounded_over_days_of_fixes() -> None:
    def fixes() -> Iterator[Fix]:
        for n in range(4):
            day = Day(52.52, 13.405, T0, seed=n).park(3_600)
            for _ in range(6):
                day.drive(8_000).park(900).turn(day.bearing_deg + 120)
            yield from day.fixes

    detector = TripDetector(SETTINGS)
    tracemalloc.start()
    try:
        count = 0
        for fix in fixes():
            count += len(detector.push((fix,)))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert count > 40
    # One day of the generator's fixes alone is far more than this; the detector holds none.
    assert peak < 4 * 1024 * 1024


def test_the_quick_radius_check_agrees_with_haversine_everywhere() -> None:
    rng = random.Random(5)
    anchors = [(0.0, 179.9999), (-16.5, -179.9999), (84.9, 10.0), (89.99, 0.0), (-89.99, 45.0)]
    anchors += [(rng.uniform(-90, 90), rng.uniform(-180, 180)) for _ in range(200)]
    checked = 0
    for lat, lng in anchors:
        anchor = Fix(0, 0, lat, lng, 0.0)
        for metres in (0.0, 10.0, 49.0, 49.9, 50.1, 51.0, 200.0, 5e6):
            to_lat, to_lng = destination(lat, lng, rng.uniform(0, 360), metres)
            fix = Fix(0, 0, to_lat, to_lng, 0.0)
            exact = haversine_m(lat, lng, to_lat, to_lng) <= 50.0
            assert within_radius(anchor, fix, 50.0) is exact, (lat, lng, metres)
            checked += 1
    assert checked == 205 * 8


def random_day(seed: int) -> tuple[Day, list[RideSpan]]:
    """A day of random stops, halts, drives (some too short to be trips), gaps and rides."""
    rng = random.Random(seed)
    day = Day(rng.uniform(-70, 70), rng.uniform(-180, 180), T0, seed=seed)
    report = rng.random() < 0.7
    for _ in range(rng.randrange(4, 12)):
        step = rng.random()
        if step < 0.35:
            day.park(rng.choice([60, 150, 200, 400, 900]), jitter_m=rng.uniform(0, 12))
        elif step < 0.8:
            day.turn(rng.uniform(0, 360))
            day.drive(
                rng.choice([80, 150, 400, 2_000, 6_000]), rng.uniform(2, 20), report_speed=report
            )
        else:
            day.gap(rng.choice([300, 700, 3_000]))
    rides, t = [], at(0)
    while t < day.now:
        t += rng.randrange(200, 2_000) * US
        picked, ended = t + rng.randrange(0, 900) * US, t + rng.randrange(900, 3_000) * US
        rides.append(RideSpan(f"r{t}", t, picked if rng.random() < 0.8 else None, ended))
        t = ended
    return day, rides


@pytest.mark.parametrize("seed", range(40))
def test_random_days_keep_the_invariants_and_resume_exactly(seed: int) -> None:
    day, rides = random_day(seed)
    events = detect(day.fixes, rides)
    for before, after in itertools.pairwise(events):
        assert key_of(before.last) <= key_of(after.first)  # in time order, never overlapping
    for event in events:
        assert event.last.micros > event.first.micros
    for index, event in enumerate(events):
        if isinstance(event, Trip):
            assert event.fix_count >= 2
            assert resumed(day.fixes, event, rides) == events[index + 1 :]


def test_minutes_without_fixes_inside_a_trip_are_not_moving_time() -> None:
    # Stands a minute, the app is quiet 3 minutes (neither a stop nor a gap), then drives on.
    day = Day(52.52, 13.405, T0).park(300).drive(2_000).park(60).gap(180).drive(2_000).park(300)
    (trip,) = trips(detect(day.fixes))
    assert (trip.first.micros, trip.last.micros) == (at(300), at(944))
    assert trip.distance_m == pytest.approx(4_000, abs=8)
    # The quiet leg's end fix reports 10 m/s, but it covers 40 m in 184 s: not moving.
    assert trip.moving_s == 200 + 196
