"""A ride end to end through Envoy: request, dispatch over the mesh, the offer on the driver's own
stream, the lifecycle, WatchRide with ETAs, and chat across RideService replicas."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

import grpc
import pytest
from grpc import aio

from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1 import ride_service_pb2_grpc as ride_grpc
from ridemesh.v1.common_pb2 import LatLng
from services.auth.keys import DevKeys
from services.history.store import create_engine
from services.ops.mesh.supervisor import Mesh
from services.ride.store import RideStore
from tests.e2e.clients import DriverStream, collect, fix, new_driver_id, read_to_end
from tests.e2e.conftest import status_of
from tests.tokens import Metadata, ops_channel

pytestmark = pytest.mark.e2e


def _request(
    rider_id: str, pickup: tuple[float, float], dropoff: tuple[float, float]
) -> pb.RequestRideRequest:
    return pb.RequestRideRequest(
        rider_id=rider_id,
        pickup=LatLng(latitude=pickup[0], longitude=pickup[1]),
        dropoff=LatLng(latitude=dropoff[0], longitude=dropoff[1]),
        request_id=str(uuid.uuid4()),
    )


Act = Callable[[str], Metadata]


async def _online(
    location: location_grpc.LocationServiceAsyncStub,
    as_driver: Act,
    driver_id: str,
    at: tuple[float, float],
) -> DriverStream:
    stream = DriverStream(location, metadata=as_driver(driver_id))
    stream.send(fix(driver_id, 1, *at))
    await stream.wait_for(lambda: stream.accepted_seq == 1)
    return stream


async def test_a_full_ride_with_watch_and_stored_events(
    mesh: Mesh,
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup, dropoff = (38.7223, -9.1393), (38.7369, -9.1427)  # Lisbon
    driver_id, rider_id = new_driver_id("drv"), new_driver_id("rider")
    driver = await _online(location, as_driver, driver_id, (38.7150, -9.1393))

    requested = await rides.RequestRide(
        _request(rider_id, pickup, dropoff), metadata=as_rider(rider_id)
    )
    ride_id = requested.ride.ride_id
    await driver.wait_for(lambda: any(o.ride_id == ride_id for o in driver.offers))
    offer = next(o for o in driver.offers if o.ride_id == ride_id)
    assert offer.pickup_distance_m == pytest.approx(811, abs=5)

    watch = rides.WatchRide(pb.WatchRideRequest(ride_id=ride_id), metadata=as_rider(rider_id))
    (first,) = await collect(watch, 1)
    assert first.ride.state == pb.RIDE_STATE_REQUESTED

    me = as_driver(driver_id)
    accepted = await rides.AcceptRide(
        pb.AcceptRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    assert accepted.ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED
    seq = 1
    etas = []
    for lat in (38.7180, 38.7200, 38.7220):  # the driver drives to the pickup
        seq += 1
        driver.send(fix(driver_id, seq, lat, -9.1393))
        await asyncio.sleep(0.3)
    await rides.MarkDriverArrived(
        pb.MarkDriverArrivedRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    await rides.StartRide(pb.StartRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me)
    seq += 1
    driver.send(fix(driver_id, seq, 38.7300, -9.1410))
    await asyncio.sleep(0.3)
    done = await rides.CompleteRide(
        pb.CompleteRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    assert done.ride.state == pb.RIDE_STATE_COMPLETED

    states: list[pb.RideState.ValueType] = []
    for message in await read_to_end(watch):
        if not states or states[-1] != message.ride.state:
            states.append(message.ride.state)
        if message.ride.state == pb.RIDE_STATE_DRIVER_ASSIGNED and message.HasField("eta"):
            etas.append(message.eta.ToTimedelta().total_seconds())
    assert states == [
        pb.RIDE_STATE_DRIVER_ASSIGNED,
        pb.RIDE_STATE_DRIVER_ARRIVED,
        pb.RIDE_STATE_IN_PROGRESS,
        pb.RIDE_STATE_COMPLETED,
    ]
    assert len(etas) >= 2
    assert etas[-1] < etas[0], "the ETA shrinks as the driver approaches"

    assert mesh.database_url is not None
    store = RideStore(create_engine(mesh.database_url))
    try:
        events = await store.events(ride_id)
    finally:
        await store.dispose()
    to_states = [e.to_state for e in events]
    for state in states:
        assert state in to_states
    driver.close()
    await driver.reader


async def test_two_drivers_accepting_at_once_one_wins(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (41.9028, 12.4964)  # Rome
    near, far = new_driver_id("near"), new_driver_id("far")
    streams = [
        await _online(location, as_driver, near, (41.9030, 12.4964)),
        await _online(location, as_driver, far, (41.91, 12.4964)),
    ]
    rider = new_driver_id("r")
    ride = (
        await rides.RequestRide(_request(rider, pickup, (41.95, 12.5)), metadata=as_rider(rider))
    ).ride
    assert ride.offered_driver_id == near

    results = await asyncio.gather(
        rides.AcceptRide(
            pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=near), metadata=as_driver(near)
        ),
        rides.AcceptRide(
            pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=far), metadata=as_driver(far)
        ),
        return_exceptions=True,
    )
    winners = [r for r in results if isinstance(r, pb.AcceptRideResponse)]
    losers = [r for r in results if isinstance(r, aio.AioRpcError)]
    assert len(winners) == 1
    assert winners[0].ride.driver_id == near
    assert len(losers) == 1
    assert status_of(losers[0]) == grpc.StatusCode.FAILED_PRECONDITION
    for stream in streams:
        stream.close()
        await stream.reader


async def test_decline_goes_to_the_next_driver_then_expires(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup = (48.1351, 11.5820)  # Munich
    first, second = new_driver_id("first"), new_driver_id("second")
    one = await _online(location, as_driver, first, (48.1352, 11.5820))
    two = await _online(location, as_driver, second, (48.1400, 11.5820))
    rider = new_driver_id("r")
    ride = (
        await rides.RequestRide(_request(rider, pickup, (48.2, 11.6)), metadata=as_rider(rider))
    ).ride
    assert ride.offered_driver_id == first
    declined = await rides.DeclineRide(
        pb.DeclineRideRequest(ride_id=ride.ride_id, driver_id=first, reason="too far"),
        metadata=as_driver(first),
    )
    assert declined.ride.offered_driver_id == second
    await two.wait_for(lambda: any(o.ride_id == ride.ride_id for o in two.offers))
    # The second driver lets the 5 s offer lapse: nobody is left, so the ride expires, which
    # WatchRide shows as its last message.
    watch = rides.WatchRide(pb.WatchRideRequest(ride_id=ride.ride_id))
    last = (await read_to_end(watch, timeout=20))[-1]
    assert last.ride.state == pb.RIDE_STATE_EXPIRED
    await two.wait_for(lambda: any(w.ride_id == ride.ride_id for w in two.withdrawn))
    for stream in (one, two):
        stream.close()
        await stream.reader


async def test_no_driver_nearby_expires_at_once(
    rides: ride_grpc.RideServiceAsyncStub, as_rider: Act
) -> None:
    rider = new_driver_id("r")
    request = _request(rider, (-54.8, -68.3), (-54.81, -68.3))
    ride = (await rides.RequestRide(request, metadata=as_rider(rider))).ride
    assert ride.state == pb.RIDE_STATE_EXPIRED
    assert ride.end_reason


async def test_bad_requests_and_transitions(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    request = _request(new_driver_id("r"), (59.3293, 18.0686), (59.34, 18.07))  # Stockholm
    rider = as_rider(request.rider_id)
    first = (await rides.RequestRide(request, metadata=rider)).ride
    again = (await rides.RequestRide(request, metadata=rider)).ride
    assert again.ride_id == first.ride_id, "the same idempotency key returns the same ride"

    with pytest.raises(aio.AioRpcError) as unknown:
        await rides.GetRide(pb.GetRideRequest(ride_id="no-such-ride"))
    assert status_of(unknown.value) == grpc.StatusCode.NOT_FOUND

    with pytest.raises(aio.AioRpcError) as early:
        await rides.StartRide(
            pb.StartRideRequest(ride_id=first.ride_id, driver_id="someone"),
            metadata=as_driver("someone"),
        )
    assert status_of(early.value) == grpc.StatusCode.FAILED_PRECONDITION
    assert "EXPIRED" in (early.value.details() or "") or "REQUESTED" in (
        early.value.details() or ""
    )

    bad = pb.RequestRideRequest(
        rider_id="r1", request_id="k", pickup=LatLng(latitude=91, longitude=0)
    )
    bad.dropoff.latitude = 1
    with pytest.raises(aio.AioRpcError) as invalid:
        await rides.RequestRide(bad, metadata=as_rider("r1"))
    assert status_of(invalid.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert "pickup" in (invalid.value.details() or "")

    listed = await rides.ListRides(pb.ListRidesRequest(rider_id=request.rider_id), metadata=rider)
    assert [r.ride_id for r in listed.rides] == [first.ride_id]
    with pytest.raises(aio.AioRpcError) as both:
        await rides.ListRides(pb.ListRidesRequest(rider_id="a", driver_id="b"))
    assert status_of(both.value) == grpc.StatusCode.INVALID_ARGUMENT


async def test_chat_across_two_replicas_with_a_reconnect(
    mesh: Mesh,
    keys: DevKeys,
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    driver_id, rider_id = new_driver_id("chatdrv"), new_driver_id("chatrider")
    driver = await _online(location, as_driver, driver_id, (52.5200, 13.4050))  # Berlin
    request = _request(rider_id, (52.5201, 13.4050), (52.53, 13.41))
    ride = (await rides.RequestRide(request, metadata=as_rider(rider_id))).ride
    await rides.AcceptRide(
        pb.AcceptRideRequest(ride_id=ride.ride_id, driver_id=driver_id),
        metadata=as_driver(driver_id),
    )

    first_port, second_port = mesh.services["ride"]
    async with (
        ops_channel(keys, f"127.0.0.1:{first_port}") as one,
        ops_channel(keys, f"127.0.0.1:{second_port}") as two,
    ):
        rider_q: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()
        driver_q: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()

        async def requests(q: asyncio.Queue[pb.ChatRequest | None]):  # type: ignore[no-untyped-def]
            while (item := await q.get()) is not None:
                yield item

        def join(party: pb.Party.ValueType, who: str, after: int = 0) -> pb.ChatRequest:
            return pb.ChatRequest(
                join=pb.ChatJoin(
                    ride_id=ride.ride_id, party=party, participant_id=who, after_sequence=after
                )
            )

        def send(text: str) -> pb.ChatRequest:
            return pb.ChatRequest(send=pb.ChatSend(text=text, client_message_id=text))

        rider_q.put_nowait(join(pb.PARTY_RIDER, rider_id))
        driver_q.put_nowait(join(pb.PARTY_DRIVER, driver_id))
        rider_call = ride_grpc.RideServiceStub(one).Chat(
            requests(rider_q), metadata=as_rider(rider_id)
        )
        driver_call = ride_grpc.RideServiceStub(two).Chat(
            requests(driver_q), metadata=as_driver(driver_id)
        )
        for i in range(10):
            rider_q.put_nowait(send(f"r{i}"))
            driver_q.put_nowait(send(f"d{i}"))
        rider_seen = [m.message for m in await collect(rider_call, 20)]
        # The driver drops after 5 messages and reconnects to the other replica.
        driver_seen = [m.message for m in await collect(driver_call, 5)]
        driver_call.cancel()
        driver_q.put_nowait(None)
        again_q: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()
        again_q.put_nowait(join(pb.PARTY_DRIVER, driver_id, after=driver_seen[-1].sequence))
        again = ride_grpc.RideServiceStub(one).Chat(
            requests(again_q), metadata=as_driver(driver_id)
        )
        driver_seen += [m.message for m in await collect(again, 15)]

        for seen in (rider_seen, driver_seen):
            assert [m.sequence for m in seen] == list(range(1, 21)), "in order, nothing lost"
        assert sorted(m.text for m in rider_seen) == sorted(
            [f"r{i}" for i in range(10)] + [f"d{i}" for i in range(10)]
        )
        # Only the ride's rider and driver may chat.
        stranger_q: asyncio.Queue[pb.ChatRequest | None] = asyncio.Queue()
        stranger_q.put_nowait(join(pb.PARTY_RIDER, "someone-else"))
        stranger = ride_grpc.RideServiceStub(one).Chat(
            requests(stranger_q), metadata=as_rider("someone-else")
        )
        with pytest.raises(aio.AioRpcError) as denied:
            await collect(stranger, 1)
        assert status_of(denied.value) == grpc.StatusCode.PERMISSION_DENIED
        rider_call.cancel()
        again.cancel()
    driver.close()
    await driver.reader


async def test_a_ride_announces_its_driver_near_and_at_the_pickup_and_arrives_by_itself(
    location: location_grpc.LocationServiceAsyncStub,
    rides: ride_grpc.RideServiceAsyncStub,
    as_driver: Act,
    as_rider: Act,
) -> None:
    pickup, dropoff = (-34.6037, -58.3816), (-34.5890, -58.3816)  # Buenos Aires, 1.6 km north
    metre = 1 / 111_195.0  # of latitude, in degrees

    def south_of(point: tuple[float, float], metres: float) -> tuple[float, float]:
        return point[0] - metres * metre, point[1]

    driver_id, rider_id = new_driver_id("drv"), new_driver_id("rider")
    driver = await _online(location, as_driver, driver_id, south_of(pickup, 1500))
    request = _request(rider_id, pickup, dropoff)
    request.auto_arrive = True
    ride_id = (await rides.RequestRide(request, metadata=as_rider(rider_id))).ride.ride_id
    await driver.wait_for(lambda: any(o.ride_id == ride_id for o in driver.offers))
    me = as_driver(driver_id)
    await rides.AcceptRide(pb.AcceptRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me)
    watch = rides.WatchRide(pb.WatchRideRequest(ride_id=ride_id), metadata=as_rider(rider_id))
    everything = rides.WatchRideEvents(pb.WatchRideEventsRequest(ride_ids=[ride_id]))
    (first,) = await collect(watch, 1)
    assert first.ride.auto_arrive

    seen: list[pb.WatchRideResponse] = []
    seq = 1

    async def drive_until(kind: int, legs: list[tuple[tuple[float, float], float]]) -> None:
        """Sends the legs' fixes in turn, each until the rider's watch answers it, and returns
        once the watch announced `kind`."""
        nonlocal seq
        for point, speed in legs:
            seq += 1
            driver.send(fix(driver_id, seq, *point, speed_mps=speed))
            while True:
                (message,) = await collect(watch, 1)
                seen.append(message)
                if message.driver_location.seq == seq:
                    break
        while not any(m.event.kind == kind for m in seen):
            seen.append((await collect(watch, 1))[0])

    to_pickup = [(south_of(pickup, m), 4.0) for m in (1000, 700, 450, 250)]  # 4 m/s: by distance
    await drive_until(pb.RIDE_EVENT_KIND_APPROACHING_PICKUP, to_pickup)
    await drive_until(pb.RIDE_EVENT_KIND_AT_PICKUP, [(south_of(pickup, 20), 0.0)])
    # Auto-arrive: the ride moves to DRIVER_ARRIVED with no MarkDriverArrived call.
    while seen[-1].ride.state != pb.RIDE_STATE_DRIVER_ARRIVED:
        seen.append((await collect(watch, 1))[0])
    await rides.StartRide(pb.StartRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me)
    to_dropoff = [(south_of(dropoff, m), 10.0) for m in (1200, 800, 400)]
    await drive_until(pb.RIDE_EVENT_KIND_APPROACHING_DROPOFF, to_dropoff)

    events = [m.event for m in seen if m.HasField("event")]
    assert [e.kind for e in events] == [
        pb.RIDE_EVENT_KIND_APPROACHING_PICKUP,
        pb.RIDE_EVENT_KIND_AT_PICKUP,
        pb.RIDE_EVENT_KIND_APPROACHING_DROPOFF,
    ]
    # Within the threshold (a fix close behind may be the one that tells: fixes handled in one
    # batch count by the newest), and at the pickup within 50 m.
    assert 200 <= events[0].distance_m <= 500
    assert events[1].distance_m == pytest.approx(20, abs=1)
    assert all(e.ride_id == ride_id and e.driver_id == driver_id for e in events)
    # Ops see the same events, with the same ids, on the ride events watch.
    logged = [m.event for m in await collect(everything, 3)]
    assert [e.event_id for e in logged] == [e.event_id for e in events]
    everything.cancel()
    await rides.CompleteRide(
        pb.CompleteRideRequest(ride_id=ride_id, driver_id=driver_id), metadata=me
    )
    await read_to_end(watch)
    driver.close()
    await driver.reader
