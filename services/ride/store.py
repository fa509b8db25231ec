"""Rides and their transition log in PostgreSQL + PostGIS, one transaction a change."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from ridemesh.v1 import ride_service_pb2 as pb
from ridemesh.v1.common_pb2 import LatLng
from services.domain.errors import FailedPrecondition, NotFound, PermissionDenied
from services.history.store import raw_connection, transaction
from services.ride import rows, states
from services.ride.publish import publish_ride
from services.ride.rows import Moment, RideEvent
from services.ride.states import ACTIVE, Party, RideState

__all__ = ["Moment", "RideCursor", "RideEvent", "RideStore", "publish_ride"]

RideCursor = tuple[datetime, str]
"""(create_time, ride_id) of the last ride of a page; the next page starts strictly after it."""

_INSERT_RIDE = f"""
INSERT INTO rides (ride_id, rider_id, state, pickup, dropoff, request_id, auto_arrive)
VALUES ($1, $2, 'RIDE_STATE_REQUESTED', {rows.POINT.format(lat="$3", lng="$4")},
        {rows.POINT.format(lat="$5", lng="$6")}, $7, $8)
ON CONFLICT ON CONSTRAINT rides_rider_request DO NOTHING
RETURNING {rows.COLUMNS}
"""
_SELECT_BY_REQUEST = f"SELECT {rows.COLUMNS} FROM rides WHERE rider_id = $1 AND request_id = $2"
_SELECT = f"SELECT {rows.COLUMNS} FROM rides WHERE ride_id = $1"
# NO KEY UPDATE: enough to serialise changes of one ride, and it does not block the foreign-key
# checks of ride_events / chat_messages rows being inserted for the same ride.
_LOCK = f"{_SELECT} FOR NO KEY UPDATE"
_INSERT_EVENT = f"""
INSERT INTO ride_events (ride_id, from_state, to_state, party, actor_id, reason, position)
VALUES ($1, $2, $3, $4, $5, $6, {rows.POINT.format(lat="$7", lng="$8")})
"""
_ACTIVE_OF_DRIVER = f"""
SELECT {rows.COLUMNS} FROM rides
WHERE driver_id = $1
  AND state IN ('RIDE_STATE_DRIVER_ASSIGNED', 'RIDE_STATE_DRIVER_ARRIVED', 'RIDE_STATE_IN_PROGRESS')
"""
# Waiting rides the sweeper must move on: an offer that lapsed, no offer although dispatch
# started (a replica died between steps), or never dispatched at all for too long.
_LAPSED = """
SELECT ride_id FROM rides
WHERE state = 'RIDE_STATE_REQUESTED'
  AND ((offered_driver_id IS NOT NULL AND offer_expire_time <= $1)
       OR (offered_driver_id IS NULL AND (dispatch_deadline IS NOT NULL OR create_time <= $2)))
ORDER BY offer_expire_time NULLS FIRST, ride_id
LIMIT $3
"""


def not_found(ride_id: str) -> NotFound:
    return NotFound(f"ride {ride_id} does not exist")


class RideStore:
    """Every state change is one transaction that locks the ride row, checks the transition
    (services.ride.states), updates the row and logs a ride_events row. Methods return pb.Ride;
    publishing the change is the caller's job, after this returns (see publish_ride).

    Who may act: acting on a ride in the wrong state is FailedPrecondition naming the state; a
    driver acting on a ride assigned to someone else, or a rider on another rider's ride, is
    PermissionDenied. Transitions are not idempotent: repeating one is FailedPrecondition.
    """

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    def _connection(self) -> AbstractAsyncContextManager[Any]:
        return raw_connection(self._engine)

    def _transaction(self) -> AbstractAsyncContextManager[Any]:
        return transaction(self._engine)

    async def dispose(self) -> None:
        """Close the engine's pooled connections."""
        await self._engine.dispose()

    # Creating and reading.

    async def create(
        self,
        rider_id: str,
        pickup: LatLng,
        dropoff: LatLng,
        request_id: str,
        auto_arrive: bool = False,
    ) -> tuple[pb.Ride, bool]:
        """A new REQUESTED ride, or the ride this rider's `request_id` already made (then False).

        Concurrent retries are safe: ON CONFLICT waits for the first insert to commit, and the
        SELECT that follows (a fresh snapshot under READ COMMITTED) sees its row.
        """
        async with self._transaction() as apg:
            row = await apg.fetchrow(
                _INSERT_RIDE,
                rows.new_ride_id(),
                rider_id,
                pickup.latitude,
                pickup.longitude,
                dropoff.latitude,
                dropoff.longitude,
                request_id,
                auto_arrive,
            )
            if row is None:
                return rows.ride(
                    await apg.fetchrow(_SELECT_BY_REQUEST, rider_id, request_id)
                ), False
            await self._log(
                apg,
                row["ride_id"],
                None,
                states.REQUESTED,
                states.RIDER,
                rider_id,
                "requested",
                pickup,
            )
        return rows.ride(row), True

    async def get(self, ride_id: str) -> pb.Ride | None:
        async with self._connection() as apg:
            row = await apg.fetchrow(_SELECT, ride_id)
        return None if row is None else rows.ride(row)

    async def active_ride_of(self, driver_id: str) -> pb.Ride | None:
        """The ride the driver currently holds (assigned, arrived or under way), if any."""
        async with self._connection() as apg:
            row = await apg.fetchrow(_ACTIVE_OF_DRIVER, driver_id)
        return None if row is None else rows.ride(row)

    async def list_rides(
        self,
        *,
        rider_id: str = "",
        driver_id: str = "",
        states: Iterable[RideState] = (),
        page_size: int = 50,
        after_cursor: RideCursor | None = None,
    ) -> tuple[list[pb.Ride], RideCursor | None]:
        """One page of a rider's or a driver's rides (every ride when neither is given), newest
        first, and the cursor of the next page (None on the last)."""
        if rider_id and driver_id:
            raise ValueError("list_rides takes at most one of rider_id and driver_id")
        conditions = ["(cardinality($1::text[]) = 0 OR state = ANY($1::text[]))"]
        args: list[Any] = [[rows.name(s) for s in states]]
        if rider_id or driver_id:
            args.append(rider_id or driver_id)
            conditions.append(f"{'rider_id' if rider_id else 'driver_id'} = ${len(args)}")
        if after_cursor is not None:
            args += list(after_cursor)
            conditions.append(f"(create_time, ride_id) < (${len(args) - 1}, ${len(args)})")
        # One row more than the page tells whether another page follows.
        sql = f"""
            SELECT {rows.COLUMNS} FROM rides
            WHERE {" AND ".join(conditions)}
            ORDER BY create_time DESC, ride_id DESC
            LIMIT {int(page_size) + 1}
        """
        async with self._connection() as apg:
            records = await apg.fetch(sql, *args)
        rides = [rows.ride(row) for row in records[:page_size]]
        if len(records) <= page_size:
            return rides, None
        last = records[page_size - 1]
        return rides, (last["create_time"], last["ride_id"])

    async def events(self, ride_id: str) -> list[RideEvent]:
        """The ride's transition log, oldest first."""
        async with self._connection() as apg:
            records = await apg.fetch(
                """
                SELECT from_state, to_state, party, actor_id, reason, event_time,
                       ST_Y(position::geometry) AS lat, ST_X(position::geometry) AS lng
                FROM ride_events WHERE ride_id = $1 ORDER BY id
                """,
                ride_id,
            )
        return [rows.event(row) for row in records]

    # Dispatch.

    async def set_candidates(
        self, ride_id: str, driver_ids: Sequence[str], deadline: Moment
    ) -> pb.Ride:
        """Drivers to offer the ride to, nearest first, and when dispatch gives up. A ride no
        longer REQUESTED is returned unchanged."""
        async with self._transaction() as apg:
            row = await apg.fetchrow(
                f"""
                UPDATE rides SET candidates = $2, dispatch_deadline = $3
                WHERE ride_id = $1 AND state = 'RIDE_STATE_REQUESTED'
                RETURNING {rows.COLUMNS}
                """,
                ride_id,
                list(driver_ids),
                rows.at(deadline),
            )
            if row is None:
                row = await apg.fetchrow(_SELECT, ride_id)
        if row is None:
            raise not_found(ride_id)
        return rows.ride(row)

    async def offer_next(
        self, ride_id: str, now: Moment, offer_timeout_s: float, *, skip_locked: bool = False
    ) -> tuple[pb.Ride, str | None]:
        """Offers the ride to its next candidate not yet declined; returns the ride and that
        driver. Returns (ride, None) and changes nothing when the ride is no longer REQUESTED
        or an offer is still outstanding (a lapsed offer is first ended with decline(...,
        timed_out=True)); moves the ride to EXPIRED and returns (ride, None) when no candidate
        is left or the dispatch deadline has passed. With skip_locked, a ride another
        transaction is changing is skipped (returned as read, None), for concurrent sweepers.
        """
        now = rows.at(now)
        lock = _LOCK + (" SKIP LOCKED" if skip_locked else "")
        async with self._transaction() as apg:
            row = await apg.fetchrow(lock, ride_id)
            if row is None:
                if skip_locked and (current := await apg.fetchrow(_SELECT, ride_id)) is not None:
                    return rows.ride(current), None
                raise not_found(ride_id)
            if row["state"] != rows.name(states.REQUESTED) or row["offered_driver_id"]:
                return rows.ride(row), None
            deadline = row["dispatch_deadline"]
            remaining = [d for d in row["candidates"] if d not in row["declined"]]
            if deadline is not None and now >= deadline:
                return await self._expire(apg, ride_id, "no driver accepted in time"), None
            if not remaining:
                reason = (
                    f"no driver accepted ({len(row['declined'])} offered)"
                    if row["declined"]
                    else "no driver was available near the pickup"
                )
                return await self._expire(apg, ride_id, reason), None
            driver_id = remaining[0]
            row = await apg.fetchrow(
                f"""
                UPDATE rides SET candidates = $2, offered_driver_id = $3, offer_expire_time = $4
                WHERE ride_id = $1 RETURNING {rows.COLUMNS}
                """,
                ride_id,
                remaining[1:],
                driver_id,
                now + timedelta(seconds=offer_timeout_s),
            )
            await self._log(
                apg,
                ride_id,
                states.REQUESTED,
                states.REQUESTED,
                states.SYSTEM,
                driver_id,
                "offered",
            )
        return rows.ride(row), driver_id

    async def _expire(self, apg: Any, ride_id: str, reason: str) -> pb.Ride:
        states.check_transition(states.REQUESTED, states.EXPIRED, states.SYSTEM, ride_id=ride_id)
        row = await apg.fetchrow(
            f"""
            UPDATE rides SET state = 'RIDE_STATE_EXPIRED', end_reason = $2, candidates = '{{}}',
                offered_driver_id = NULL, offer_expire_time = NULL, update_time = now(),
                effects_due = true
            WHERE ride_id = $1 RETURNING {rows.COLUMNS}
            """,
            ride_id,
            reason,
        )
        await self._log(apg, ride_id, states.REQUESTED, states.EXPIRED, states.SYSTEM, "", reason)
        return rows.ride(row)

    async def lapsed_offers(
        self, now: Moment, limit: int, *, undispatched_after: timedelta = timedelta(minutes=1)
    ) -> list[str]:
        """REQUESTED rides dispatch must move on: offer lapsed, no offer outstanding though
        dispatch started, or not dispatched `undispatched_after` after the request."""
        async with self._connection() as apg:
            at = rows.at(now)
            records = await apg.fetch(_LAPSED, at, at - undispatched_after, limit)
        return [row["ride_id"] for row in records]

    async def accept(self, ride_id: str, driver_id: str, *, now: Moment | None = None) -> pb.Ride:
        """The offered driver takes the ride: REQUESTED → DRIVER_ASSIGNED.

        Of concurrent accepts one wins (the row lock serialises them and the UPDATE is guarded);
        the others get FailedPrecondition saying why. A driver already holding an active ride
        is refused by the database's partial unique index, translated here.
        """
        at = datetime.now(UTC) if now is None else rows.at(now)
        try:
            async with self._transaction() as apg:
                row = await self._locked(apg, ride_id)
                rows.check_offer(row, driver_id, at, "AcceptRide")
                row = await apg.fetchrow(
                    f"""
                    UPDATE rides SET state = 'RIDE_STATE_DRIVER_ASSIGNED', driver_id = $2,
                        offered_driver_id = NULL, offer_expire_time = NULL, candidates = '{{}}',
                        update_time = now(), effects_due = true
                    WHERE ride_id = $1 AND state = 'RIDE_STATE_REQUESTED'
                      AND offered_driver_id = $2
                    RETURNING {rows.COLUMNS}
                    """,
                    ride_id,
                    driver_id,
                )
                await self._log(
                    apg,
                    ride_id,
                    states.REQUESTED,
                    states.DRIVER_ASSIGNED,
                    states.DRIVER,
                    driver_id,
                    "accepted",
                )
        except asyncpg.UniqueViolationError as exc:
            if exc.constraint_name != "rides_one_active_per_driver":
                raise
            held = await self.active_ride_of(driver_id)
            which = f"ride {held.ride_id} ({states.state_name(held.state)})" if held else "a ride"
            raise FailedPrecondition(
                f"driver {driver_id} already holds {which}; complete or cancel it before "
                f"accepting ride {ride_id}"
            ) from None
        return rows.ride(row)

    async def decline(
        self, ride_id: str, driver_id: str, reason: str = "", *, timed_out: bool = False
    ) -> pb.Ride:
        """The offered driver turns the ride down (or, timed_out, the offer lapsed): the driver
        is never offered this ride again and the offer is cleared; call offer_next after."""
        async with self._transaction() as apg:
            row = await self._locked(apg, ride_id)
            rows.check_offer(row, driver_id, None, "DeclineRide")
            row = await apg.fetchrow(
                f"""
                UPDATE rides SET declined = array_append(declined, $2),
                    offered_driver_id = NULL, offer_expire_time = NULL
                WHERE ride_id = $1 RETURNING {rows.COLUMNS}
                """,
                ride_id,
                driver_id,
            )
            party = states.SYSTEM if timed_out else states.DRIVER
            why = "offer timed out" if timed_out else (reason or "declined")
            await self._log(apg, ride_id, states.REQUESTED, states.REQUESTED, party, driver_id, why)
        return rows.ride(row)

    # The assigned driver's steps, and cancellation.

    async def mark_arrived(
        self, ride_id: str, driver_id: str, position: LatLng | None = None
    ) -> pb.Ride:
        """DRIVER_ASSIGNED → DRIVER_ARRIVED, by the assigned driver."""
        return await self._advance(ride_id, driver_id, states.DRIVER_ARRIVED, position)

    async def start(self, ride_id: str, driver_id: str, position: LatLng | None = None) -> pb.Ride:
        """DRIVER_ARRIVED → IN_PROGRESS, by the assigned driver."""
        return await self._advance(ride_id, driver_id, states.IN_PROGRESS, position)

    async def complete(
        self, ride_id: str, driver_id: str, position: LatLng | None = None
    ) -> pb.Ride:
        """IN_PROGRESS → COMPLETED, by the assigned driver; the driver is free again."""
        return await self._advance(ride_id, driver_id, states.COMPLETED, position)

    async def _advance(
        self, ride_id: str, driver_id: str, target: RideState, position: LatLng | None
    ) -> pb.Ride:
        async with self._transaction() as apg:
            row = await self._locked(apg, ride_id)
            current = pb.RideState.Value(row["state"])
            states.check_transition(current, target, states.DRIVER, ride_id=ride_id)
            if row["driver_id"] != driver_id:
                raise PermissionDenied(f"driver {driver_id} is not the driver of ride {ride_id}")
            row = await apg.fetchrow(
                "UPDATE rides SET state = $2, update_time = now(), effects_due = true "
                f"WHERE ride_id = $1 "
                f"RETURNING {rows.COLUMNS}",
                ride_id,
                rows.name(target),
            )
            reason = states.action_name(target)
            await self._log(
                apg, ride_id, current, target, states.DRIVER, driver_id, reason, position
            )
        return rows.ride(row)

    async def cancel(
        self,
        ride_id: str,
        party: Party,
        actor_id: str,
        reason: str,
        position: LatLng | None = None,
    ) -> pb.Ride:
        """Cancels a ride not yet completed. A rider may cancel only their own ride, a driver only
        the ride they hold; an empty actor_id skips that check (until callers are authenticated
        the request may not say who they are). If an offer was outstanding, the returned ride's
        offered_driver_id names the driver whose offer this withdrew (the row no longer does)."""
        async with self._transaction() as apg:
            row = await self._locked(apg, ride_id)
            current = pb.RideState.Value(row["state"])
            states.check_transition(current, states.CANCELLED, party, ride_id=ride_id)
            owner = {states.RIDER: row["rider_id"], states.DRIVER: row["driver_id"]}.get(party)
            if actor_id and owner is not None and actor_id != owner:
                who = states.party_name(party)
                raise PermissionDenied(f"{who} {actor_id} is not the {who} of ride {ride_id}")
            withdrawn = row["offered_driver_id"] or ""
            reason = reason or f"cancelled by the {states.party_name(party)}"
            row = await apg.fetchrow(
                f"""
                UPDATE rides SET state = 'RIDE_STATE_CANCELLED', cancelled_by = $2,
                    end_reason = $3, offered_driver_id = NULL, offer_expire_time = NULL,
                    candidates = '{{}}', update_time = now(), effects_due = true
                WHERE ride_id = $1 RETURNING {rows.COLUMNS}
                """,
                ride_id,
                pb.Party.Name(party),
                reason,
            )
            await self._log(
                apg,
                ride_id,
                current,
                states.CANCELLED,
                party,
                actor_id or owner or "",
                reason,
                position,
            )
        ride = rows.ride(row)
        ride.offered_driver_id = withdrawn
        return ride

    # Side effects in Redis, owed by state changes (an outbox on the ride row).

    async def effects_applied(self, ride: pb.Ride) -> None:
        """The Redis side effects of `ride`'s latest change are applied (unless it changed
        again since, whose effects are then still owed)."""
        async with self._connection() as apg:
            await apg.execute(
                "UPDATE rides SET effects_due = false "
                "WHERE ride_id = $1 AND effects_due AND update_time <= $2",
                ride.ride_id,
                ride.update_time.ToDatetime(tzinfo=UTC),
            )

    async def effects_owed(self, older_than_s: float, limit: int = 100) -> list[pb.Ride]:
        """Rides whose last change's side effects were not applied within `older_than_s`."""
        async with self._connection() as apg:
            records = await apg.fetch(
                f"SELECT {rows.COLUMNS} FROM rides WHERE effects_due "
                "AND update_time < now() - make_interval(secs => $1) "
                "ORDER BY update_time LIMIT $2",
                older_than_s,
                limit,
            )
        return [rows.ride(row) for row in records]

    async def owe_effects_of_active_rides(self) -> int:
        """Marks every ride in progress as owing its side effects again (Redis lost them)."""
        async with self._connection() as apg:
            status: str = await apg.execute(
                "UPDATE rides SET effects_due = true WHERE state = ANY($1::text[]) "
                "AND NOT effects_due",
                [rows.name(state) for state in ACTIVE],
            )
        return int(status.rsplit(" ", 1)[1])

    # Shared steps.

    async def _locked(self, apg: Any, ride_id: str) -> Any:
        row = await apg.fetchrow(_LOCK, ride_id)
        if row is None:
            raise not_found(ride_id)
        return row

    async def _log(
        self,
        apg: Any,
        ride_id: str,
        from_state: RideState | None,
        to_state: RideState,
        party: Party,
        actor_id: str,
        reason: str,
        position: LatLng | None = None,
    ) -> None:
        await apg.execute(
            _INSERT_EVENT,
            ride_id,
            None if from_state is None else rows.name(from_state),
            rows.name(to_state),
            pb.Party.Name(party),
            actor_id,
            reason,
            None if position is None else position.latitude,
            None if position is None else position.longitude,
        )
