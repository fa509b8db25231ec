"""The pure parts of geofence events: script arguments, message decoding, watch filters."""

from __future__ import annotations

import json

import pytest
from shapely.geometry import box

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.domain.errors import InvalidArgument, NotFound
from services.geo.fence_events import (
    MAX_WATCH_IDS,
    STATE_TTL_S,
    EventFilter,
    PendingFix,
    _EntryCache,
    described,
    event_filter,
    script_args,
    script_keys,
    zone_entry,
    zone_event,
)
from services.geo.zone_index import Zone, ZoneIndex, ZoneTiming
from services.live.events import LoggedEvent, fix_json, log_args
from services.live.group import MAX_PACE_S, pace_for
from services.live.ingest import FOLLOW_EVERY_S
from services.live.names import (
    ended_zones_key,
    events_meta_key,
    events_stream,
    fence_members_key,
    fence_state_key,
)

ENTER = pb.GeofenceTransition.GEOFENCE_TRANSITION_ENTER
EXIT = pb.GeofenceTransition.GEOFENCE_TRANSITION_EXIT

AIRPORT = Zone("z-air", 'Airport "T1" ✈', {"kind": "airport", "city": "ber"}, box(13, 52, 14, 53))
CENTRE = Zone("z-mitte", "Mitte", {"kind": "district"}, box(13.3, 52.4, 13.5, 52.6))


def _fix(lat: float = 52.123456789012345, lng: float = 13.987654321098765) -> DriverLocation:
    location = DriverLocation(
        driver_id="drv-1", position=LatLng(latitude=lat, longitude=lng), seq=7
    )
    location.recorded_at.FromMilliseconds(1_764_331_200_123)
    return location


def _logged(location: DriverLocation, zone: Zone, kind: str, reason: str = "") -> LoggedEvent:
    # What the apply script logs, built from the same pieces it is given.
    fix, subject = json.loads(fix_json(location)), json.loads(zone_entry(zone))
    return LoggedEvent(3, (1_764_331_200_200, 1), "ep0ch", kind, fix, subject, reason)


# --- what the script is given ------------------------------------------------------------------


def test_zone_entry_is_compact_json_with_name_and_labels() -> None:
    assert json.loads(zone_entry(AIRPORT)) == {
        "id": "z-air",
        "n": 'Airport "T1" ✈',
        "l": {"kind": "airport", "city": "ber"},
    }
    assert " " not in zone_entry(CENTRE)


def test_fix_json_keeps_every_digit_of_the_position_and_the_millisecond_time() -> None:
    fix = json.loads(fix_json(_fix()))
    assert fix == {"d": "drv-1", "t": 1_764_331_200_123, "lat": 52.123456789012345,
                   "lng": 13.987654321098765}  # fmt: skip


def test_script_args_lay_out_time_seq_zones_and_described_zones() -> None:
    slow = Zone("z-mitte", "Mitte", {}, CENTRE.geometry, ZoneTiming(30.0, 600.0, 15.0))
    pending = PendingFix(
        _fix(),
        ZoneIndex([AIRPORT, slow]),
        "z-air",
        {
            "z-air": described(zone_entry(AIRPORT), AIRPORT),
            "z-mitte": described(zone_entry(slow), slow),
        },
        unknown=["z-old", "z-older"],
        near_ids="z-mitte",
    )
    args = script_args(pending, retention_s=60.0)
    assert args[:4] == [1_764_331_200_123, 7, STATE_TTL_S, "drv-1"]
    assert json.loads(args[4])["d"] == "drv-1"
    assert args[5:8] == ["z-air", "z-mitte", "z-old,z-older"]
    assert len(args[8]) == 8  # a fresh epoch candidate
    assert args[9] == log_args(60.0)[1] == 60_000
    assert args[10:] == [
        "z-air", zone_entry(AIRPORT), 0, 0,
        "z-mitte", zone_entry(slow), 30_000, 600_000,
    ]  # fmt: skip


def test_script_args_for_a_fix_in_no_zone_are_empty_lists() -> None:
    args = script_args(PendingFix(_fix(0.0, 0.0), ZoneIndex(), "", {}))
    assert args[5:8] == ["", "", ""]
    assert len(args) == 10


def test_script_keys_are_the_drivers_state_and_its_partitions_log_and_zone_sets() -> None:
    assert script_keys("drv-1") == [
        fence_state_key("drv-1"),
        events_stream(0),
        events_meta_key(0),
        fence_members_key(0),
        ended_zones_key(0),
    ]


def test_entry_cache_encodes_once_per_index_and_forgets_on_swap() -> None:
    cache = _EntryCache()
    first = ZoneIndex([AIRPORT])
    entry = cache.get(first, AIRPORT)
    assert cache.get(first, AIRPORT) is entry
    renamed = Zone("z-air", "Airport BER", {}, AIRPORT.geometry)
    # Ids are never reused for another zone, but a new index must still not serve stale text.
    assert json.loads(cache.get(ZoneIndex([renamed]), renamed))["n"] == "Airport BER"


# --- a logged event as the API shows it ------------------------------------------------------


def test_zone_event_has_time_position_names_and_the_logs_id() -> None:
    location = _fix()
    event = zone_event(_logged(location, AIRPORT, "geofence.enter"))
    assert event.transition == ENTER
    assert event.geofence_id == "z-air"
    assert event.geofence_display_name == 'Airport "T1" ✈'
    assert event.driver_id == "drv-1"
    assert event.event_time.ToMilliseconds() == 1_764_331_200_123
    assert event.position.latitude == location.position.latitude
    assert event.position.longitude == location.position.longitude
    assert event.event_id == "3:1764331200200-1"
    assert event.reason == ""


def test_zone_event_of_an_ended_zone_carries_the_reason() -> None:
    event = zone_event(_logged(_fix(), CENTRE, "geofence.exit", "zone_deleted"))
    assert (event.transition, event.reason) == (EXIT, "zone_deleted")
    dwell = zone_event(_logged(_fix(), CENTRE, "geofence.dwell"))
    assert dwell.transition == pb.GeofenceTransition.GEOFENCE_TRANSITION_DWELL


# --- filters -----------------------------------------------------------------------------------


def test_filter_without_ids_or_labels_accepts_every_zone_event_and_no_ride_event() -> None:
    air, mitte = (
        _logged(_fix(), AIRPORT, "geofence.exit"),
        _logged(_fix(), CENTRE, "geofence.enter"),
    )
    everything = EventFilter(frozenset(), {})
    assert everything.accepts(air)
    assert everything.accepts(mitte)
    ride = LoggedEvent(0, (1, 0), "", "ride.at_pickup", json.loads(fix_json(_fix())), {"id": "r"})
    assert not everything.accepts(ride)


def test_filter_by_ids_accepts_any_of_them() -> None:
    air, mitte = (
        _logged(_fix(), AIRPORT, "geofence.exit"),
        _logged(_fix(), CENTRE, "geofence.enter"),
    )
    assert EventFilter(frozenset({"z-air", "z-x"}), {}).accepts(air)
    assert not EventFilter(frozenset({"z-air", "z-x"}), {}).accepts(mitte)


def test_filter_by_labels_needs_all_of_them() -> None:
    air, mitte = (
        _logged(_fix(), AIRPORT, "geofence.exit"),
        _logged(_fix(), CENTRE, "geofence.enter"),
    )
    both = EventFilter(frozenset(), {"kind": "airport", "city": "ber"})
    assert both.accepts(air)
    assert not both.accepts(mitte)
    assert not EventFilter(frozenset(), {"kind": "airport", "city": "muc"}).accepts(air)


def test_filter_with_ids_and_labels_needs_both() -> None:
    air = _logged(_fix(), AIRPORT, "geofence.exit")
    assert EventFilter(frozenset({"z-air"}), {"kind": "airport"}).accepts(air)
    assert not EventFilter(frozenset({"z-air"}), {"kind": "district"}).accepts(air)
    assert not EventFilter(frozenset({"z-mitte"}), {"kind": "airport"}).accepts(air)


# --- request validation ------------------------------------------------------------------------


def test_event_filter_from_a_valid_request() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["z-air", "z-air"], labels={"kind": "x"})
    wanted = event_filter(ZoneIndex([AIRPORT]), request)
    assert wanted == EventFilter(frozenset({"z-air"}), {"kind": "x"})


def test_a_resumed_watch_may_name_a_zone_that_ended_since() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["z-gone"], resume_token="t")
    assert event_filter(ZoneIndex(), request).geofence_ids == {"z-gone"}


def test_unknown_ids_are_not_found_and_named() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["z-air", "nope-2", "nope-1"])
    with pytest.raises(NotFound, match="'nope-1', 'nope-2'"):
        event_filter(ZoneIndex([AIRPORT]), request)


def test_many_unknown_ids_are_named_up_to_ten() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=[f"gone-{i:02}" for i in range(15)])
    with pytest.raises(NotFound, match="and 5 more") as raised:
        event_filter(ZoneIndex(), request)
    assert "gone-09" in str(raised.value)
    assert "gone-10" not in str(raised.value)


def test_too_many_ids_are_invalid_with_the_bound() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["z-air"] * (MAX_WATCH_IDS + 1))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_WATCH_IDS}"):
        event_filter(ZoneIndex([AIRPORT]), request)


def test_an_empty_id_is_invalid() -> None:
    request = pb.WatchGeofenceEventsRequest(geofence_ids=["z-air", ""])
    with pytest.raises(InvalidArgument, match="empty id"):
        event_filter(ZoneIndex([AIRPORT]), request)


@pytest.mark.parametrize(
    ("labels", "reason"),
    [
        ({"": "x"}, "label key ''"),
        ({"Kind": "x"}, "label key 'Kind'"),
        ({"k" * 64: "x"}, "1 to 63 characters"),
        ({"kind": "v" * 257}, "at most 256"),
        ({f"k{i}": "v" for i in range(33)}, "at most 32"),
    ],
)
def test_insane_labels_are_invalid(labels: dict[str, str], reason: str) -> None:
    request = pb.WatchGeofenceEventsRequest(labels=labels)
    with pytest.raises(InvalidArgument, match=reason):
        event_filter(ZoneIndex(), request)


def test_a_replica_reads_about_as_often_with_many_partitions_as_with_one() -> None:
    assert pace_for(1) == FOLLOW_EVERY_S
    assert pace_for(4) == pytest.approx(4 * FOLLOW_EVERY_S)
    assert pace_for(12) == MAX_PACE_S  # 100 ms at most between reads of one log
    assert pace_for(256) == MAX_PACE_S
