"""WatchRide's pure parts: snapshot order, the ETA target, and the watcher's mailbox."""

from __future__ import annotations

import asyncio

import pytest

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import DriverLocation, LatLng
from services.ride.watch import WatchMailbox, eta_target, is_newer, ride_order

PICKUP = LatLng(latitude=12.97, longitude=77.59)
DROPOFF = LatLng(latitude=13.19, longitude=77.70)


def ride(
    state: pb.RideState.ValueType, at_s: int, driver_id: str = "", offered_driver_id: str = ""
) -> pb.Ride:
    r = pb.Ride(ride_id="r1", rider_id="u1", state=state, pickup=PICKUP, dropoff=DROPOFF)
    r.driver_id, r.offered_driver_id = driver_id, offered_driver_id
    r.update_time.FromSeconds(at_s)
    return r


def fix(driver_id: str, seq: int) -> DriverLocation:
    location = DriverLocation(driver_id=driver_id, seq=seq)
    location.recorded_at.FromSeconds(1000 + seq)
    return location


def test_a_later_state_sorts_after_an_earlier_one_even_with_an_older_clock() -> None:
    # Two replicas' clocks may disagree; the lifecycle order is what cannot go backwards.
    assigned = ride(pb.RIDE_STATE_DRIVER_ASSIGNED, 100)
    arrived = ride(pb.RIDE_STATE_DRIVER_ARRIVED, 99)
    assert ride_order(arrived) > ride_order(assigned)


def test_is_newer_drops_older_snapshots_and_exact_repeats() -> None:
    assigned = ride(pb.RIDE_STATE_DRIVER_ASSIGNED, 100, driver_id="d1")
    arrived = ride(pb.RIDE_STATE_DRIVER_ARRIVED, 110, driver_id="d1")
    assert is_newer(assigned, None)
    assert is_newer(arrived, assigned)
    assert not is_newer(assigned, arrived)
    assert not is_newer(pb.Ride.FromString(arrived.SerializeToString()), arrived)


def test_is_newer_lets_a_changed_snapshot_in_the_same_state_through() -> None:
    first = ride(pb.RIDE_STATE_REQUESTED, 100, offered_driver_id="d1")
    second = ride(pb.RIDE_STATE_REQUESTED, 100, offered_driver_id="d2")
    assert is_newer(second, first)


@pytest.mark.parametrize(
    ("state", "target"),
    [
        (pb.RIDE_STATE_REQUESTED, None),
        (pb.RIDE_STATE_DRIVER_ASSIGNED, PICKUP),
        (pb.RIDE_STATE_DRIVER_ARRIVED, None),
        (pb.RIDE_STATE_IN_PROGRESS, DROPOFF),
        (pb.RIDE_STATE_COMPLETED, None),
        (pb.RIDE_STATE_CANCELLED, None),
        (pb.RIDE_STATE_EXPIRED, None),
    ],
)
def test_eta_points_at_the_pickup_then_the_dropoff(
    state: pb.RideState.ValueType, target: LatLng | None
) -> None:
    assert eta_target(ride(state, 1)) == target


async def test_the_mailbox_keeps_every_transition_in_order_however_many_updates_arrive() -> None:
    box = WatchMailbox()
    for i in range(100):  # many offers while REQUESTED: each snapshot supersedes the last
        box.put_ride(ride(pb.RIDE_STATE_REQUESTED, 100 + i, offered_driver_id=f"d{i}"))
    box.put_ride(ride(pb.RIDE_STATE_DRIVER_ASSIGNED, 300, driver_id="d99"))
    box.put_ride(ride(pb.RIDE_STATE_DRIVER_ARRIVED, 301, driver_id="d99"))
    box.put_ride(ride(pb.RIDE_STATE_IN_PROGRESS, 302, driver_id="d99"))
    box.put_ride(ride(pb.RIDE_STATE_COMPLETED, 303, driver_id="d99"))
    got = [await box.get() for _ in range(5)]
    assert [r.state for r in got if isinstance(r, pb.Ride)] == [
        pb.RIDE_STATE_REQUESTED,
        pb.RIDE_STATE_DRIVER_ASSIGNED,
        pb.RIDE_STATE_DRIVER_ARRIVED,
        pb.RIDE_STATE_IN_PROGRESS,
        pb.RIDE_STATE_COMPLETED,
    ]
    first = got[0]
    assert isinstance(first, pb.Ride)
    assert first.offered_driver_id == "d99"


async def test_the_mailbox_drops_a_snapshot_older_than_one_waiting() -> None:
    box = WatchMailbox()
    box.put_ride(ride(pb.RIDE_STATE_DRIVER_ARRIVED, 200, driver_id="d1"))
    box.put_ride(ride(pb.RIDE_STATE_DRIVER_ASSIGNED, 190, driver_id="d1"))  # published late
    item = await box.get()
    assert isinstance(item, pb.Ride)
    assert item.state == pb.RIDE_STATE_DRIVER_ARRIVED
    assert await _waits(box)


async def test_the_mailbox_conflates_positions_to_the_newest_and_sends_rides_first() -> None:
    box = WatchMailbox()
    for seq in range(1, 51):
        box.put_location(fix("d1", seq))
    box.put_ride(ride(pb.RIDE_STATE_DRIVER_ARRIVED, 200, driver_id="d1"))
    first, second = await box.get(), await box.get()
    assert isinstance(first, pb.Ride)
    assert isinstance(second, DriverLocation)
    assert second.seq == 50
    assert box.dropped_locations == 49
    assert await _waits(box)


async def _waits(box: WatchMailbox) -> bool:
    """True when the mailbox is empty: a get stays pending."""
    task = asyncio.create_task(box.get())
    await asyncio.sleep(0.05)
    pending = not task.done()
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    return pending
