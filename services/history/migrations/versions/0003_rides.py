"""Rides: the lifecycle row, its transition log, and the rider–driver chat.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_STATES = (
    "'RIDE_STATE_REQUESTED', 'RIDE_STATE_DRIVER_ASSIGNED', 'RIDE_STATE_DRIVER_ARRIVED', "
    "'RIDE_STATE_IN_PROGRESS', 'RIDE_STATE_COMPLETED', 'RIDE_STATE_CANCELLED', "
    "'RIDE_STATE_EXPIRED'"
)
_ACTIVE = "'RIDE_STATE_DRIVER_ASSIGNED', 'RIDE_STATE_DRIVER_ARRIVED', 'RIDE_STATE_IN_PROGRESS'"
_PARTIES = "'PARTY_RIDER', 'PARTY_DRIVER', 'PARTY_SYSTEM'"


def upgrade() -> None:
    # States and parties are stored by their proto enum names: readable in psql, and stable
    # where the numbers would be too (names are the contract; buf forbids renaming them).
    op.execute(
        f"""
        CREATE TABLE rides (
            ride_id           text PRIMARY KEY,
            rider_id          text NOT NULL,
            driver_id         text,
            state             text NOT NULL CHECK (state IN ({_STATES})),
            pickup            geography(Point, 4326) NOT NULL,
            dropoff           geography(Point, 4326) NOT NULL,
            request_id        text NOT NULL,
            offered_driver_id text,
            offer_expire_time timestamptz,
            candidates        text[] NOT NULL DEFAULT '{{}}',
            declined          text[] NOT NULL DEFAULT '{{}}',
            dispatch_deadline timestamptz,
            cancelled_by      text CHECK (cancelled_by IN ({_PARTIES})),
            end_reason        text NOT NULL DEFAULT '',
            chat_seq          bigint NOT NULL DEFAULT 0,
            create_time       timestamptz NOT NULL DEFAULT now(),
            update_time       timestamptz NOT NULL DEFAULT now(),
            -- The idempotency key of RequestRide: one ride per rider and key, whatever retries.
            CONSTRAINT rides_rider_request UNIQUE (rider_id, request_id),
            -- A ride a driver has taken always names the driver.
            CONSTRAINT rides_driver_when_taken CHECK (
                driver_id IS NOT NULL
                OR state IN ('RIDE_STATE_REQUESTED', 'RIDE_STATE_CANCELLED', 'RIDE_STATE_EXPIRED')
            ),
            CONSTRAINT rides_offer_only_when_requested CHECK (
                offered_driver_id IS NULL OR state = 'RIDE_STATE_REQUESTED'
            )
        )
        """
    )
    # The guard that one driver never holds two active rides: a second accept by a busy driver
    # violates this index inside its transaction, whatever the application checked before.
    # The predicate is a constant list, so it is immutable as index predicates must be.
    op.execute(
        f"CREATE UNIQUE INDEX rides_one_active_per_driver ON rides (driver_id) "
        f"WHERE state IN ({_ACTIVE})"
    )
    # ListRides walks (create_time, ride_id) newest first, by rider or by driver.
    op.execute("CREATE INDEX rides_rider_time ON rides (rider_id, create_time DESC, ride_id DESC)")
    op.execute(
        "CREATE INDEX rides_driver_time ON rides (driver_id, create_time DESC, ride_id DESC) "
        "WHERE driver_id IS NOT NULL"
    )
    # The dispatch sweeper looks only at rides still waiting, a tiny fraction of all rides.
    op.execute(
        "CREATE INDEX rides_requested_offer_expiry ON rides (offer_expire_time) "
        "WHERE state = 'RIDE_STATE_REQUESTED'"
    )
    op.execute(
        f"""
        CREATE TABLE ride_events (
            id         bigserial PRIMARY KEY,
            ride_id    text NOT NULL REFERENCES rides (ride_id) ON DELETE CASCADE,
            from_state text CHECK (from_state IN ({_STATES})),
            to_state   text NOT NULL CHECK (to_state IN ({_STATES})),
            party      text NOT NULL CHECK (party IN ({_PARTIES})),
            actor_id   text NOT NULL DEFAULT '',
            reason     text NOT NULL DEFAULT '',
            position   geography(Point, 4326),
            event_time timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX ride_events_ride ON ride_events (ride_id, id)")
    op.execute(
        f"""
        CREATE TABLE chat_messages (
            ride_id           text NOT NULL REFERENCES rides (ride_id) ON DELETE CASCADE,
            sequence          bigint NOT NULL CHECK (sequence > 0),
            sender            text NOT NULL CHECK (sender IN ({_PARTIES})),
            sender_id         text NOT NULL,
            text              text NOT NULL,
            -- NULL when the client sent none: such messages are never taken for resends.
            client_message_id text,
            send_time         timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (ride_id, sequence),
            -- A resent message is stored once.
            CONSTRAINT chat_messages_client_id UNIQUE (ride_id, sender_id, client_message_id)
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE IF EXISTS chat_messages")
    op.execute("DROP TABLE IF EXISTS ride_events")
    op.execute("DROP TABLE IF EXISTS rides")
