"""The ride store against a real PostgreSQL + PostGIS: lifecycle, dispatch races, guards, chat."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from alembic import command
from alembic.script import ScriptDirectory
from redis.asyncio import Redis
from sqlalchemy.engine import make_url

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import DomainError, FailedPrecondition, NotFound, PermissionDenied
from services.history.migrate import alembic_config, run_migrations_async
from services.history.store import create_engine
from services.live.names import ride_channel
from services.ops.mesh.redis_server import RedisServer
from services.ride import states
from services.ride.chat_store import ChatMessages
from services.ride.publish import publish_ride
from services.ride.states import RideState
from services.ride.store import RideStore

pytestmark = [pytest.mark.integration, pytest.mark.asyncio]

REDIS_DB = 8
PICKUP = LatLng(latitude=52.520008, longitude=13.404954)
DROPOFF = LatLng(latitude=52.500000, longitude=13.300000)
OFFER_S = 30.0


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture(scope="module")
async def store(database_url: str) -> AsyncIterator[RideStore]:
    rides = RideStore(create_engine(database_url))
    yield rides
    await rides.dispose()


@pytest.fixture(scope="module")
async def messages(database_url: str) -> AsyncIterator[ChatMessages]:
    engine = create_engine(database_url)
    yield ChatMessages(engine)
    await engine.dispose()


@pytest.fixture
async def pg(database_url: str) -> AsyncIterator[Any]:
    """A plain asyncpg connection for looking at what the store wrote."""
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture(scope="module")
async def redis(redis_server: RedisServer) -> AsyncIterator[Redis]:
    client = Redis.from_url(f"redis://127.0.0.1:{redis_server.port}/{REDIS_DB}")
    await client.flushdb()
    yield client
    await client.aclose()


async def requested(store: RideStore, rider_id: str = "") -> pb.Ride:
    ride, created = await store.create(rider_id or uid("rider"), PICKUP, DROPOFF, uid("req"))
    assert created
    return ride


async def offered(store: RideStore, *drivers: str) -> pb.Ride:
    """A REQUESTED ride offered to the first of `drivers` (the rest are candidates)."""
    ride = await requested(store)
    deadline = datetime.now(UTC) + timedelta(minutes=5)
    await store.set_candidates(ride.ride_id, list(drivers), deadline)
    ride, driver_id = await store.offer_next(ride.ride_id, datetime.now(UTC), OFFER_S)
    assert driver_id == drivers[0]
    return ride


async def assigned(store: RideStore, driver_id: str = "") -> pb.Ride:
    driver_id = driver_id or uid("driver")
    ride = await offered(store, driver_id)
    return await store.accept(ride.ride_id, driver_id)


async def ride_in(store: RideStore, state: RideState) -> pb.Ride:
    """A fresh ride in `state`, with its own rider and driver."""
    if state == states.REQUESTED:
        return await offered(store, uid("driver"))
    if state == states.EXPIRED:
        ride = await requested(store)
        await store.set_candidates(ride.ride_id, [], datetime.now(UTC) + timedelta(minutes=1))
        ride, _ = await store.offer_next(ride.ride_id, datetime.now(UTC), OFFER_S)
        return ride
    if state == states.CANCELLED:
        ride = await requested(store)
        return await store.cancel(ride.ride_id, states.RIDER, ride.rider_id, "changed my mind")
    ride = await assigned(store)
    steps = [(states.DRIVER_ARRIVED, store.mark_arrived), (states.IN_PROGRESS, store.start)]
    steps.append((states.COMPLETED, store.complete))
    for target, step in steps:
        if ride.state == state:
            break
        ride = await step(ride.ride_id, ride.driver_id)
        assert ride.state == target
    assert ride.state == state
    return ride


# Creating, idempotency.


async def test_create_stores_a_requested_ride_with_its_points(store: RideStore, pg: Any) -> None:
    rider = uid("rider")
    ride, created = await store.create(rider, PICKUP, DROPOFF, "key-1")
    assert created
    assert ride.state == pb.RIDE_STATE_REQUESTED
    assert ride.rider_id == rider
    assert ride.ride_id.startswith("r-")
    assert (ride.pickup.latitude, ride.pickup.longitude) == pytest.approx((52.520008, 13.404954))
    assert (ride.dropoff.latitude, ride.dropoff.longitude) == pytest.approx((52.5, 13.3))
    assert ride.driver_id == ride.offered_driver_id == ""
    assert ride.create_time.ToDatetime() > datetime(2020, 1, 1)
    # Stored as geography points: ST_Distance in metres between pickup and drop-off.
    metres = await pg.fetchval(
        "SELECT ST_Distance(pickup, dropoff) FROM rides WHERE ride_id = $1", ride.ride_id
    )
    assert 7000 < metres < 8000
    assert await store.get(ride.ride_id) == ride
    [event] = await store.events(ride.ride_id)
    assert (event.from_state, event.to_state, event.party) == (0, states.REQUESTED, states.RIDER)
    assert event.actor_id == rider


async def test_create_with_the_same_key_returns_the_same_ride(store: RideStore) -> None:
    rider = uid("rider")
    first, created = await store.create(rider, PICKUP, DROPOFF, "same")
    again, created_again = await store.create(rider, PICKUP, DROPOFF, "same")
    assert created
    assert not created_again
    assert again == first
    # The key is per rider: another rider's identical key is another ride.
    other, other_created = await store.create(uid("rider"), PICKUP, DROPOFF, "same")
    assert other_created
    assert other.ride_id != first.ride_id
    assert len(await store.events(first.ride_id)) == 1


async def test_ten_concurrent_creates_with_one_key_make_one_ride(store: RideStore, pg: Any) -> None:
    rider = uid("rider")
    results = await asyncio.gather(
        *(store.create(rider, PICKUP, DROPOFF, "retry") for _ in range(10))
    )
    assert len({ride.ride_id for ride, _ in results}) == 1
    assert sum(created for _, created in results) == 1
    assert await pg.fetchval("SELECT count(*) FROM rides WHERE rider_id = $1", rider) == 1


async def test_get_of_an_unknown_ride_is_none(store: RideStore) -> None:
    assert await store.get("r-nope") is None


# The lifecycle.


async def test_full_lifecycle_logs_every_transition(store: RideStore, pg: Any) -> None:
    driver = uid("driver")
    ride = await offered(store, driver)
    assert ride.offered_driver_id == driver
    ride = await store.accept(ride.ride_id, driver)
    assert (ride.state, ride.driver_id, ride.offered_driver_id) == (
        states.DRIVER_ASSIGNED,
        driver,
        "",
    )
    at_pickup = LatLng(latitude=52.52, longitude=13.405)
    ride = await store.mark_arrived(ride.ride_id, driver, at_pickup)
    assert ride.state == states.DRIVER_ARRIVED
    ride = await store.start(ride.ride_id, driver)
    assert ride.state == states.IN_PROGRESS
    at_dropoff = LatLng(latitude=52.5001, longitude=13.3001)
    done = await store.complete(ride.ride_id, driver, at_dropoff)
    assert done.state == states.COMPLETED
    assert done.update_time.ToDatetime() >= done.create_time.ToDatetime()
    assert await store.get(ride.ride_id) == done

    events = await store.events(ride.ride_id)
    assert [(e.from_state, e.to_state, e.party) for e in events] == [
        (0, states.REQUESTED, states.RIDER),
        (states.REQUESTED, states.REQUESTED, states.SYSTEM),  # the offer
        (states.REQUESTED, states.DRIVER_ASSIGNED, states.DRIVER),
        (states.DRIVER_ASSIGNED, states.DRIVER_ARRIVED, states.DRIVER),
        (states.DRIVER_ARRIVED, states.IN_PROGRESS, states.DRIVER),
        (states.IN_PROGRESS, states.COMPLETED, states.DRIVER),
    ]
    assert all(e.actor_id == driver for e in events[1:])
    assert events[3].position == at_pickup
    assert events[4].position is None
    assert events[5].position is not None
    assert (events[5].position.latitude, events[5].position.longitude) == pytest.approx(
        (52.5001, 13.3001)
    )
    times = [e.event_time for e in events]
    assert times == sorted(times)
    stored = await pg.fetchrow(
        "SELECT state, driver_id FROM rides WHERE ride_id = $1", ride.ride_id
    )
    assert tuple(stored) == ("RIDE_STATE_COMPLETED", driver)


Action = Callable[[RideStore, pb.Ride], Awaitable[pb.Ride]]


def _driver_of(ride: pb.Ride) -> str:
    return ride.driver_id or ride.offered_driver_id or "driver-x"


ACTIONS: dict[str, Action] = {
    "accept": lambda s, r: s.accept(r.ride_id, _driver_of(r)),
    "decline": lambda s, r: s.decline(r.ride_id, _driver_of(r), "busy"),
    "arrive": lambda s, r: s.mark_arrived(r.ride_id, _driver_of(r)),
    "start": lambda s, r: s.start(r.ride_id, _driver_of(r)),
    "complete": lambda s, r: s.complete(r.ride_id, _driver_of(r)),
    "rider cancel": lambda s, r: s.cancel(r.ride_id, states.RIDER, r.rider_id, "no"),
    "driver cancel": lambda s, r: s.cancel(r.ride_id, states.DRIVER, _driver_of(r), "no"),
    "system cancel": lambda s, r: s.cancel(r.ride_id, states.SYSTEM, "ops", "no"),
}
ALLOWED: dict[RideState, set[str]] = {
    states.REQUESTED: {"accept", "decline", "rider cancel", "system cancel"},
    states.DRIVER_ASSIGNED: {"arrive", "rider cancel", "driver cancel", "system cancel"},
    states.DRIVER_ARRIVED: {"start", "rider cancel", "driver cancel", "system cancel"},
    states.IN_PROGRESS: {"complete", "rider cancel", "driver cancel", "system cancel"},
    states.COMPLETED: set(),
    states.CANCELLED: set(),
    states.EXPIRED: set(),
}


@pytest.mark.parametrize("state", states.ALL_STATES, ids=states.state_name)
async def test_every_action_is_allowed_exactly_where_the_lifecycle_says(
    store: RideStore, state: RideState
) -> None:
    for name, action in ACTIONS.items():
        ride = await ride_in(store, state)
        if name in ALLOWED[state]:
            changed = await action(store, ride)
            assert changed.state != ride.state or name == "decline", name
            continue
        with pytest.raises(FailedPrecondition) as caught:
            await action(store, ride)
        assert f"ride {ride.ride_id} is {states.state_name(state)}" in str(caught.value), name
        # A refused action changes nothing, not even the log.
        assert await store.get(ride.ride_id) == ride, name


async def test_actions_on_an_unknown_ride_are_not_found(
    messages: ChatMessages, store: RideStore
) -> None:
    ride = pb.Ride(ride_id="r-unknown", rider_id="someone")
    for name, action in ACTIONS.items():
        with pytest.raises(NotFound, match="ride r-unknown does not exist"):
            await action(store, ride)
        assert name
    with pytest.raises(NotFound):
        await store.offer_next("r-unknown", datetime.now(UTC), OFFER_S)
    with pytest.raises(NotFound):
        await store.set_candidates("r-unknown", ["d"], datetime.now(UTC))
    with pytest.raises(NotFound):
        await messages.add_chat_message("r-unknown", states.RIDER, "someone", "hi", "c1")


async def test_only_the_assigned_driver_moves_the_ride(store: RideStore) -> None:
    ride = await assigned(store)
    stranger = uid("driver")
    for step in (store.mark_arrived, store.start, store.complete):
        with pytest.raises(DomainError):
            await step(ride.ride_id, stranger)
    with pytest.raises(PermissionDenied, match=f"driver {stranger} is not the driver"):
        await store.mark_arrived(ride.ride_id, stranger)
    assert (await store.get(ride.ride_id)) == ride


async def test_cancel_checks_whose_ride_it_is(store: RideStore) -> None:
    ride = await assigned(store)
    with pytest.raises(PermissionDenied, match="is not the rider"):
        await store.cancel(ride.ride_id, states.RIDER, uid("rider"), "not mine")
    with pytest.raises(PermissionDenied, match="is not the driver"):
        await store.cancel(ride.ride_id, states.DRIVER, uid("driver"), "not mine")
    cancelled = await store.cancel(ride.ride_id, states.DRIVER, ride.driver_id, "flat tyre")
    assert cancelled.state == states.CANCELLED
    assert cancelled.cancelled_by == states.DRIVER
    assert cancelled.end_reason == "flat tyre"
    last = (await store.events(ride.ride_id))[-1]
    assert (last.to_state, last.party, last.actor_id, last.reason) == (
        states.CANCELLED,
        states.DRIVER,
        ride.driver_id,
        "flat tyre",
    )


async def test_cancel_with_an_open_offer_names_the_driver_it_withdrew(store: RideStore) -> None:
    driver = uid("driver")
    ride = await offered(store, driver)
    cancelled = await store.cancel(ride.ride_id, states.RIDER, ride.rider_id, "")
    assert cancelled.offered_driver_id == driver
    assert cancelled.end_reason == "cancelled by the rider"
    stored = await store.get(ride.ride_id)
    assert stored is not None
    assert stored.offered_driver_id == ""
    with pytest.raises(FailedPrecondition, match="is CANCELLED"):
        await store.accept(ride.ride_id, driver)


# Dispatch: offers, declines, expiry, races.


async def test_two_concurrent_accepts_have_exactly_one_winner(store: RideStore) -> None:
    for _ in range(5):
        driver = uid("driver")
        ride = await offered(store, driver, uid("driver"))
        # The offered driver twice (a retried call) and the next candidate, all at once.
        results = await asyncio.gather(
            store.accept(ride.ride_id, driver),
            store.accept(ride.ride_id, driver),
            store.accept(ride.ride_id, ride.offered_driver_id + "-other"),
            return_exceptions=True,
        )
        winners = [r for r in results if isinstance(r, pb.Ride)]
        losers = [r for r in results if isinstance(r, BaseException)]
        assert len(winners) == 1
        assert winners[0].driver_id == driver
        assert len(losers) == 2
        assert all(isinstance(e, FailedPrecondition) for e in losers), losers
        accepted = [e for e in await store.events(ride.ride_id) if e.to_state == 2]
        assert len(accepted) == 1


async def test_accept_by_a_driver_the_ride_is_not_offered_to_says_why(store: RideStore) -> None:
    first, second = uid("driver"), uid("driver")
    ride = await offered(store, first, second)
    with pytest.raises(FailedPrecondition, match=f"is not offered to driver {second}"):
        await store.accept(ride.ride_id, second)
    await store.accept(ride.ride_id, first)
    with pytest.raises(FailedPrecondition, match="is DRIVER_ASSIGNED with another driver"):
        await store.accept(ride.ride_id, second)


async def test_a_driver_holding_an_active_ride_cannot_accept_another(
    store: RideStore, pg: Any
) -> None:
    driver = uid("driver")
    held = await assigned(store, driver)
    ride = await offered(store, driver)
    with pytest.raises(FailedPrecondition, match=f"already holds ride {held.ride_id}"):
        await store.accept(ride.ride_id, driver)
    still = await store.get(ride.ride_id)
    assert still is not None
    assert still.state == states.REQUESTED
    assert still.offered_driver_id == driver
    # The guard is the database's, not only the store's: a direct write is refused too.
    with pytest.raises(asyncpg.UniqueViolationError, match="rides_one_active_per_driver"):
        await pg.execute(
            "UPDATE rides SET state = 'RIDE_STATE_DRIVER_ASSIGNED', driver_id = $2, "
            "offered_driver_id = NULL WHERE ride_id = $1",
            ride.ride_id,
            driver,
        )
    # Once the first ride is over the driver is free to take the second.
    await store.cancel(held.ride_id, states.RIDER, held.rider_id, "")
    taken = await store.accept(ride.ride_id, driver)
    assert taken.state == states.DRIVER_ASSIGNED


async def test_one_driver_accepting_two_rides_at_once_gets_one(store: RideStore) -> None:
    driver = uid("driver")
    rides = [await offered(store, driver) for _ in range(2)]
    results = await asyncio.gather(
        *(store.accept(r.ride_id, driver) for r in rides), return_exceptions=True
    )
    winners = [r for r in results if isinstance(r, pb.Ride)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1
    assert len(losers) == 1
    assert isinstance(losers[0], FailedPrecondition)
    assert f"already holds ride {winners[0].ride_id}" in str(losers[0])


async def test_decline_moves_to_the_next_candidate_then_expires(store: RideStore) -> None:
    d1, d2, d3 = uid("driver"), uid("driver"), uid("driver")
    ride = await offered(store, d1, d2, d3)
    now = datetime.now(UTC)
    ride = await store.decline(ride.ride_id, d1, "too far")
    assert (ride.state, ride.offered_driver_id) == (states.REQUESTED, "")
    ride, nxt = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert nxt == d2
    assert ride.offered_driver_id == d2
    with pytest.raises(FailedPrecondition, match=f"was declined by driver {d1}"):
        await store.accept(ride.ride_id, d1)
    with pytest.raises(FailedPrecondition, match=f"was declined by driver {d1}"):
        await store.decline(ride.ride_id, d1, "again")
    # A fresh search that finds the declined driver again does not bring them back.
    await store.set_candidates(ride.ride_id, [d1, d3], now + timedelta(minutes=5))
    await store.decline(ride.ride_id, d2, "", timed_out=True)
    ride, nxt = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert nxt == d3
    await store.decline(ride.ride_id, d3, "")
    ride, nxt = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert nxt is None
    assert ride.state == states.EXPIRED
    assert ride.end_reason == "no driver accepted (3 offered)"
    events = await store.events(ride.ride_id)
    declines = [(e.party, e.actor_id, e.reason) for e in events if e.reason != "offered"][1:-1]
    assert declines == [
        (states.DRIVER, d1, "too far"),
        (states.SYSTEM, d2, "offer timed out"),
        (states.DRIVER, d3, "declined"),
    ]
    assert (events[-1].to_state, events[-1].party) == (states.EXPIRED, states.SYSTEM)


async def test_no_candidates_at_all_expires_the_ride(store: RideStore) -> None:
    ride = await ride_in(store, states.EXPIRED)
    assert ride.state == states.EXPIRED
    assert ride.end_reason == "no driver was available near the pickup"


async def test_a_passed_dispatch_deadline_expires_the_ride(store: RideStore) -> None:
    ride = await requested(store)
    now = datetime.now(UTC)
    await store.set_candidates(ride.ride_id, [uid("driver")], now - timedelta(seconds=1))
    ride, driver = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert driver is None
    assert ride.state == states.EXPIRED
    assert ride.end_reason == "no driver accepted in time"


async def test_offer_next_leaves_an_outstanding_offer_and_finished_rides_alone(
    store: RideStore,
) -> None:
    d1 = uid("driver")
    ride = await offered(store, d1, uid("driver"))
    again, driver = await store.offer_next(ride.ride_id, datetime.now(UTC), OFFER_S)
    assert driver is None
    assert again.offered_driver_id == d1
    done = await ride_in(store, states.COMPLETED)
    same, driver = await store.offer_next(done.ride_id, datetime.now(UTC), OFFER_S)
    assert driver is None
    assert same == done


async def test_offer_next_accepts_epoch_seconds(store: RideStore) -> None:
    driver = uid("driver")
    ride = await requested(store)
    now = datetime.now(UTC).timestamp()
    await store.set_candidates(ride.ride_id, [driver], now + 60)
    ride, offered_to = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert offered_to == driver
    assert (await store.accept(ride.ride_id, driver, now=now + 1)).state == states.DRIVER_ASSIGNED


async def test_a_lapsed_offer_cannot_be_accepted_and_is_found_by_the_sweep(
    store: RideStore,
) -> None:
    now = datetime.now(UTC)
    driver = uid("driver")
    ride = await requested(store)
    await store.set_candidates(ride.ride_id, [driver, uid("driver")], now + timedelta(minutes=5))
    # Offered a minute ago with a 30 s timeout: it lapsed 30 s ago.
    await store.offer_next(ride.ride_id, now - timedelta(minutes=1), OFFER_S)
    with pytest.raises(FailedPrecondition, match="lapsed at"):
        await store.accept(ride.ride_id, driver)
    live = await offered(store, uid("driver"))
    fresh = await requested(store)
    lapsed = await store.lapsed_offers(now, 10_000)
    assert ride.ride_id in lapsed
    assert live.ride_id not in lapsed
    assert fresh.ride_id not in lapsed  # not dispatched yet, and only just requested
    later = datetime.now(UTC)
    assert fresh.ride_id in await store.lapsed_offers(later, 10_000, undispatched_after=timedelta())
    # After the timeout is recorded the ride has no offer while dispatch runs: still swept.
    await store.decline(ride.ride_id, driver, "", timed_out=True)
    assert ride.ride_id in await store.lapsed_offers(now, 10_000)
    _, nxt = await store.offer_next(ride.ride_id, now, OFFER_S)
    assert nxt is not None
    assert ride.ride_id not in await store.lapsed_offers(now, 10_000)


async def test_offer_next_skip_locked_passes_over_a_ride_being_changed(
    store: RideStore, pg: Any
) -> None:
    ride = await requested(store)
    await store.set_candidates(ride.ride_id, [uid("driver")], datetime.now(UTC) + timedelta(1))
    async with pg.transaction():
        await pg.execute("SELECT 1 FROM rides WHERE ride_id = $1 FOR UPDATE", ride.ride_id)
        same, driver = await asyncio.wait_for(
            store.offer_next(ride.ride_id, datetime.now(UTC), OFFER_S, skip_locked=True), 5
        )
        assert driver is None
        assert same.offered_driver_id == ""
        waiting = asyncio.create_task(store.offer_next(ride.ride_id, datetime.now(UTC), OFFER_S))
        await asyncio.sleep(0.2)
        assert not waiting.done()  # without skip_locked it waits for the lock
    _, driver = await asyncio.wait_for(waiting, 5)
    assert driver is not None


# Listing.


async def test_list_rides_by_rider_pages_newest_first_with_a_state_filter(
    store: RideStore,
) -> None:
    rider = uid("rider")
    made = [await requested(store, rider) for _ in range(7)]
    for ride in made[1::3]:
        await store.cancel(ride.ride_id, states.RIDER, rider, "")
    await _requested_by_someone_else(store)
    pages, cursor = [], None
    while True:
        page, cursor = await store.list_rides(rider_id=rider, page_size=3, after_cursor=cursor)
        pages.append([r.ride_id for r in page])
        if cursor is None:
            break
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [i for p in pages for i in p] == [r.ride_id for r in reversed(made)]
    cancelled, cursor = await store.list_rides(
        rider_id=rider, states=[states.CANCELLED, states.COMPLETED], page_size=10
    )
    assert cursor is None
    assert [r.ride_id for r in cancelled] == [r.ride_id for r in reversed(made[1::3])]
    assert all(r.state == states.CANCELLED for r in cancelled)
    exact, cursor = await store.list_rides(rider_id=rider, page_size=7)
    assert len(exact) == 7
    assert cursor is None


async def _requested_by_someone_else(store: RideStore) -> None:
    await requested(store)


async def test_list_rides_by_driver_with_a_state_filter(store: RideStore) -> None:
    driver = uid("driver")
    completed = []
    for _ in range(3):
        ride = await assigned(store, driver)
        for step in (store.mark_arrived, store.start, store.complete):
            ride = await step(ride.ride_id, driver)
        completed.append(ride)
    active = await assigned(store, driver)
    page, cursor = await store.list_rides(driver_id=driver, states=[states.COMPLETED], page_size=2)
    assert [r.ride_id for r in page] == [completed[2].ride_id, completed[1].ride_id]
    assert cursor is not None
    rest, cursor = await store.list_rides(
        driver_id=driver, states=[states.COMPLETED], page_size=2, after_cursor=cursor
    )
    assert [r.ride_id for r in rest] == [completed[0].ride_id]
    assert cursor is None
    everything, _ = await store.list_rides(driver_id=driver, page_size=50)
    assert everything[0].ride_id == active.ride_id
    assert len(everything) == 4
    assert (await store.active_ride_of(driver)) == active


async def test_list_rides_takes_at_most_one_owner(store: RideStore) -> None:
    with pytest.raises(ValueError, match="at most one"):
        await store.list_rides(rider_id="a", driver_id="b", page_size=10)


async def test_list_every_ride_pages_newest_first_across_riders_and_filters_open_ones(
    store: RideStore,
) -> None:
    made = [await requested(store) for _ in range(4)]
    await store.cancel(made[1].ride_id, states.RIDER, made[1].rider_id, "")
    first, cursor = await store.list_rides(page_size=2)
    assert [r.ride_id for r in first] == [made[3].ride_id, made[2].ride_id]
    assert cursor is not None
    second, _ = await store.list_rides(page_size=2, after_cursor=cursor)
    assert [r.ride_id for r in second] == [made[1].ride_id, made[0].ride_id]
    open_rides, _ = await store.list_rides(states=[states.REQUESTED], page_size=500)
    listed = {r.ride_id for r in open_rides}
    assert {made[0].ride_id, made[2].ride_id, made[3].ride_id} <= listed
    assert made[1].ride_id not in listed


# Chat.


async def test_twenty_concurrent_sends_get_gap_free_sequences(
    messages: ChatMessages, store: RideStore
) -> None:
    ride = await assigned(store)
    senders = [(states.RIDER, ride.rider_id), (states.DRIVER, ride.driver_id)]
    sent = await asyncio.gather(
        *(
            messages.add_chat_message(ride.ride_id, *senders[i % 2], f"message {i}", f"c{i}")
            for i in range(20)
        )
    )
    assert sorted(m.sequence for m in sent) == list(range(1, 21))
    stored = await messages.chat_messages_after(ride.ride_id, 0, 100)
    assert [m.sequence for m in stored] == list(range(1, 21))
    assert {m.text for m in stored} == {f"message {i}" for i in range(20)}
    assert sorted(stored, key=lambda m: m.sequence) == sorted(sent, key=lambda m: m.sequence)
    tail = await messages.chat_messages_after(ride.ride_id, 15, 100)
    assert [m.sequence for m in tail] == [16, 17, 18, 19, 20]
    assert [m.sequence for m in await messages.chat_messages_after(ride.ride_id, 0, 3)] == [1, 2, 3]


async def test_a_resent_client_message_id_is_stored_once(
    messages: ChatMessages, store: RideStore, pg: Any
) -> None:
    ride = await assigned(store)
    first = await messages.add_chat_message(ride.ride_id, states.RIDER, ride.rider_id, "hi", "m-1")
    again = await messages.add_chat_message(ride.ride_id, states.RIDER, ride.rider_id, "hi", "m-1")
    assert again == first
    assert first.sequence == 1
    assert first.client_message_id == "m-1"
    assert first.sender == states.RIDER
    # Resent concurrently: still one message, and no sequence is used up.
    burst = await asyncio.gather(
        *(
            messages.add_chat_message(
                ride.ride_id, states.DRIVER, ride.driver_id, "on my way", "m-2"
            )
            for _ in range(5)
        )
    )
    assert {m.sequence for m in burst} == {2}
    # The same client id from the other party is another message; no id never deduplicates.
    other = await messages.add_chat_message(
        ride.ride_id, states.DRIVER, ride.driver_id, "ok", "m-1"
    )
    blank = [
        await messages.add_chat_message(ride.ride_id, states.RIDER, ride.rider_id, "x", "")
        for _ in range(2)
    ]
    assert [other.sequence, *(m.sequence for m in blank)] == [3, 4, 5]
    assert blank[0].client_message_id == ""
    assert await pg.fetchval("SELECT chat_seq FROM rides WHERE ride_id = $1", ride.ride_id) == 5


async def test_only_the_rides_rider_and_driver_may_chat(
    messages: ChatMessages, store: RideStore
) -> None:
    ride = await offered(store, uid("driver"))
    with pytest.raises(PermissionDenied, match="is not in the chat"):
        await messages.add_chat_message(ride.ride_id, states.RIDER, uid("rider"), "hi", "a")
    # Offered is not assigned: the driver joins the chat once they hold the ride.
    with pytest.raises(PermissionDenied, match="is not in the chat"):
        await messages.add_chat_message(
            ride.ride_id, states.DRIVER, ride.offered_driver_id, "hi", "b"
        )
    with pytest.raises(PermissionDenied):
        await messages.add_chat_message(ride.ride_id, states.SYSTEM, "ops", "hi", "c")
    assert await messages.chat_messages_after(ride.ride_id, 0, 10) == []


# Schema guards and publishing.


async def test_the_schema_refuses_inconsistent_rows(store: RideStore, pg: Any) -> None:
    ride = await requested(store)
    with pytest.raises(asyncpg.CheckViolationError):
        await pg.execute("UPDATE rides SET state = 'BOGUS' WHERE ride_id = $1", ride.ride_id)
    with pytest.raises(asyncpg.CheckViolationError, match="rides_driver_when_taken"):
        await pg.execute(
            "UPDATE rides SET state = 'RIDE_STATE_IN_PROGRESS' WHERE ride_id = $1", ride.ride_id
        )
    plan = await pg.fetchval(
        "EXPLAIN SELECT ride_id FROM rides "
        "WHERE state = 'RIDE_STATE_REQUESTED' AND offer_expire_time <= now()"
    )
    assert plan is not None


async def test_publish_ride_sends_the_ride_on_its_channel(redis: Redis) -> None:
    ride = pb.Ride(ride_id="r-pub", state=pb.RIDE_STATE_DRIVER_ASSIGNED, driver_id="d")
    pubsub = redis.pubsub()
    await pubsub.ssubscribe(ride_channel("r-pub"))
    await publish_ride(redis, ride)
    received = None
    for _ in range(50):
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.1)
        if message is not None:
            received = message
            break
    await pubsub.aclose()
    assert received is not None
    assert received["channel"] == b"rm:ch:ride:r-pub"
    assert pb.Ride.FromString(received["data"]) == ride


async def test_migration_0003_downgrades_and_upgrades_again(
    make_database: Callable[[], str],
) -> None:
    url = await asyncio.to_thread(make_database)
    config = alembic_config(url)
    await asyncio.to_thread(command.downgrade, config, "0002")
    dsn = make_url(url).set(drivername="postgresql").render_as_string(False)
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT to_regclass('rides')") is None
        await run_migrations_async(url)
        head = ScriptDirectory.from_config(config).get_current_head()
        assert await conn.fetchval("SELECT version_num FROM alembic_version") == head
        predicate = await conn.fetchval(
            "SELECT pg_get_indexdef('rides_one_active_per_driver'::regclass)"
        )
        assert "UNIQUE" in predicate
        assert "RIDE_STATE_IN_PROGRESS" in predicate
    finally:
        await conn.close()


async def test_a_finished_ride_takes_no_new_chat_message_but_answers_a_resend(
    messages: ChatMessages,
    store: RideStore,
) -> None:
    ride = await assigned(store)
    first = await messages.add_chat_message(
        ride.ride_id, states.RIDER, ride.rider_id, "on my way", "m-1"
    )
    await store.cancel(ride.ride_id, states.RIDER, ride.rider_id, "plans changed")
    with pytest.raises(FailedPrecondition, match="CANCELLED; its chat is closed"):
        await messages.add_chat_message(ride.ride_id, states.RIDER, ride.rider_id, "late", "m-2")
    again = await messages.add_chat_message(
        ride.ride_id, states.RIDER, ride.rider_id, "on my way", "m-1"
    )
    assert again.sequence == first.sequence
    assert await messages.chat_messages_after(ride.ride_id, 0) == [first]
