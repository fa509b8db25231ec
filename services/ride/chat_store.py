"""A ride's chat in PostgreSQL: messages with gap-free sequences, stored once per client id."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncEngine

from ridemesh.v1 import ride_service_pb2 as pb
from services.domain.errors import FailedPrecondition, PermissionDenied
from services.history.store import raw_connection, transaction
from services.ride import rows, states
from services.ride.states import Party
from services.ride.store import not_found


class ChatMessages:
    """Messages of rides' chats; the ride row's lock orders concurrent senders of one ride."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def add_chat_message(
        self, ride_id: str, sender: Party, sender_id: str, text: str, client_message_id: str
    ) -> pb.ChatMessage:
        """Stores a message from the ride's rider or driver with the next gap-free sequence. The
        same non-empty client_message_id from the same sender returns the stored message."""
        async with transaction(self._engine) as apg:
            # The ride row lock orders concurrent senders; a rolled-back send leaves no gap.
            ride = await apg.fetchrow(
                "SELECT rider_id, driver_id, state FROM rides WHERE ride_id = $1 FOR NO KEY UPDATE",
                ride_id,
            )
            if ride is None:
                raise not_found(ride_id)
            owner = {states.RIDER: ride["rider_id"], states.DRIVER: ride["driver_id"]}.get(sender)
            if owner is None or owner != sender_id:
                who = states.party_name(sender) if sender in states.PARTIES else "sender"
                raise PermissionDenied(f"{who} {sender_id} is not in the chat of ride {ride_id}")
            if client_message_id:
                stored = await apg.fetchrow(
                    f"SELECT {rows.CHAT_COLUMNS} FROM chat_messages "
                    "WHERE ride_id = $1 AND sender_id = $2 AND client_message_id = $3",
                    ride_id,
                    sender_id,
                    client_message_id,
                )
                if stored is not None:
                    return rows.chat_message(stored)
            if pb.RideState.Value(ride["state"]) in states.TERMINAL:
                # Checked under the row lock, so a new message cannot slip in as the ride ends.
                raise FailedPrecondition(
                    f"ride {ride_id} is {ride['state'].removeprefix('RIDE_STATE_')}; "
                    "its chat is closed"
                )
            row = await apg.fetchrow(
                f"""
                WITH seq AS (
                    UPDATE rides SET chat_seq = chat_seq + 1 WHERE ride_id = $1 RETURNING chat_seq
                )
                INSERT INTO chat_messages
                    (ride_id, sequence, sender, sender_id, text, client_message_id)
                SELECT $1, chat_seq, $2, $3, $4, $5 FROM seq
                RETURNING {rows.CHAT_COLUMNS}
                """,
                ride_id,
                pb.Party.Name(sender),
                sender_id,
                text,
                client_message_id or None,
            )
        return rows.chat_message(row)

    async def chat_messages_after(
        self, ride_id: str, after_sequence: int, limit: int = 500
    ) -> list[pb.ChatMessage]:
        """Up to `limit` of the ride's messages with a sequence above `after_sequence`, in order."""
        async with raw_connection(self._engine) as apg:
            records = await apg.fetch(
                f"SELECT {rows.CHAT_COLUMNS} FROM chat_messages "
                "WHERE ride_id = $1 AND sequence > $2 ORDER BY sequence LIMIT $3",
                ride_id,
                after_sequence,
                limit,
            )
        return [rows.chat_message(row) for row in records]
