"""Webhook store: subscriptions, their delivery cursors and dead letters, in PostgreSQL.

A cursor is the offset of the last event a subscription handled (delivered or dead-lettered) in
one partition of the event log. It only moves forward within an epoch, so a deliverer that lost
its lease and writes late cannot move it back.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from services.geo.webhooks import Counters, DeadLetter, StoredWebhook, WebhookSpec
from services.history.store import raw_connection, transaction
from services.live.events import LoggedEvent, StreamId

log = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_COLUMNS = (
    "id, url, event_kinds, geofence_ids, labels::text, max_retry_s, secret, create_time, "
    "delivered, retried, dead_lettered, last_error, last_delivery_time"
)
_INSERT = f"""
INSERT INTO webhooks (id, url, event_kinds, geofence_ids, labels, max_retry_s, secret)
VALUES ($1, $2, $3, $4, $5::jsonb, $6, $7)
RETURNING {_COLUMNS}
"""
_INSERT_CURSOR = """
INSERT INTO webhook_cursors (webhook_id, partition, epoch, offset_ms, offset_seq, ordinal)
VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (webhook_id, partition) DO NOTHING
"""
# Forward only within an epoch; a new epoch (Redis lost the log) replaces the old one.
_MOVE_CURSOR = """
UPDATE webhook_cursors SET epoch = $3, offset_ms = $4, offset_seq = $5, ordinal = $6
WHERE webhook_id = $1 AND partition = $2
  AND (epoch <> $3 OR (offset_ms, offset_seq) < ($4::bigint, $5::bigint))
"""
_DELIVERED = """
UPDATE webhooks SET delivered = delivered + 1, last_error = '', last_delivery_time = now()
WHERE id = $1
"""
_DEAD = """
INSERT INTO webhook_dead_letters (
  webhook_id, event_id, partition, kind, payload_json, attempts, last_error
)
VALUES ($1, $2, $3, $4, $5, $6, $7)
ON CONFLICT (webhook_id, event_id) DO UPDATE SET
  payload_json = excluded.payload_json, attempts = webhook_dead_letters.attempts
  + excluded.attempts, last_error = excluded.last_error, dead_time = now(),
  replay_requested = false
"""
# Every transaction takes its subscription's row first, as DeleteWebhook does (its cascade then
# takes cursors and dead letters): the same order everywhere, so the two never deadlock.
_LOCK = "SELECT 1 FROM webhooks WHERE id = $1 FOR NO KEY UPDATE"
_LETTER_COLUMNS = "event_id, partition, kind, payload_json, attempts, last_error, dead_time"


@dataclass(frozen=True, slots=True)
class Cursor:
    """The last event a subscription handled in one partition: the log's epoch, the event's
    offset and its ordinal (how-manyeth event of the log it was)."""

    epoch: str
    offset: StreamId
    ordinal: int

    @staticmethod
    def at(event: LoggedEvent) -> Cursor:
        return Cursor(event.epoch, event.offset, event.ordinal)

    def args(self) -> tuple[str, int, int, int]:
        """Its columns as query arguments: epoch, offset_ms, offset_seq, ordinal."""
        return self.epoch, self.offset[0], self.offset[1], self.ordinal


def _to_the_end(
    method: Callable[P, Coroutine[Any, Any, T]],
) -> Callable[P, Coroutine[Any, Any, T]]:
    """Runs a store call in its own shielded task, so cancelling the caller (a deliverer being
    stopped, a subscription deleted) lets it finish. Cut off midway, a transaction, or the pool's
    pre-ping on checkout (which opens one of its own), would send the connection back to the pool
    still in a transaction, holding its locks: DeleteWebhook and TRUNCATE would wait forever."""

    @functools.wraps(method)
    async def run(*args: P.args, **kwargs: P.kwargs) -> T:
        task = asyncio.ensure_future(method(*args, **kwargs))
        task.add_done_callback(_retrieved)
        store = args[0]
        assert isinstance(store, WebhookStore)
        store.running.add(task)
        task.add_done_callback(store.running.discard)
        return await asyncio.shield(task)

    return run


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Reads how a shielded transaction ended (its caller may be gone, cancelled)."""
    error = None if task.cancelled() else task.exception()
    if error is not None:
        log.debug("a webhook store transaction failed after its caller left", exc_info=error)


def _stored(record: Any) -> StoredWebhook:
    spec = WebhookSpec(
        url=record[1],
        event_kinds=tuple(record[2]),
        geofence_ids=tuple(record[3]),
        labels=json.loads(record[4]),
        max_retry_s=record[5],
    )
    counters = Counters(record[8], record[9], record[10], record[11], record[12])
    return StoredWebhook(record[0], spec, record[6], record[7], counters)


def _letter(record: Any) -> DeadLetter:
    return DeadLetter(*record)


class WebhookStore:
    """Subscriptions, cursors and dead letters; every write that moves a cursor also counts."""

    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        # Calls whose callers were cancelled may still be finishing: see settle().
        self.running: set[asyncio.Future[Any]] = set()

    async def settle(self) -> None:
        """Waits for the calls still finishing after their callers were cancelled (before the
        engine is disposed of)."""
        await asyncio.gather(*self.running, return_exceptions=True)

    def _connection(self) -> AbstractAsyncContextManager[Any]:
        return raw_connection(self._engine)

    def _transaction(self) -> AbstractAsyncContextManager[Any]:
        return transaction(self._engine)

    @asynccontextmanager
    async def _locked(self, webhook_id: str) -> AsyncIterator[Any]:
        """A transaction holding the subscription's row; None when it was deleted."""
        async with self._transaction() as apg:
            yield apg if await apg.fetchval(_LOCK, webhook_id) else None

    # --- subscriptions -------------------------------------------------------------------------

    @_to_the_end
    async def create(
        self, spec: WebhookSpec, secret: str, starts: Sequence[Cursor]
    ) -> StoredWebhook:
        """Stores a subscription under a new UUID4 id, its cursors at `starts` (one per
        partition: the log's end when it was created)."""
        webhook_id = str(uuid.uuid4())
        async with self._transaction() as apg:
            record = await apg.fetchrow(
                _INSERT,
                webhook_id,
                spec.url,
                list(spec.event_kinds),
                list(spec.geofence_ids),
                json.dumps(dict(spec.labels)),
                spec.max_retry_s,
                secret,
            )
            await apg.executemany(
                _INSERT_CURSOR,
                [(webhook_id, p, *c.args()) for p, c in enumerate(starts)],
            )
        return _stored(record)

    @_to_the_end
    async def get(self, webhook_id: str) -> StoredWebhook | None:
        async with self._connection() as apg:
            record = await apg.fetchrow(
                f"SELECT {_COLUMNS} FROM webhooks WHERE id = $1", webhook_id
            )
        return None if record is None else _stored(record)

    @_to_the_end
    async def all(self) -> list[StoredWebhook]:
        """Every subscription, oldest first."""
        async with self._connection() as apg:
            records = await apg.fetch(f"SELECT {_COLUMNS} FROM webhooks ORDER BY create_time, id")
        return [_stored(record) for record in records]

    @_to_the_end
    async def delete(self, webhook_id: str) -> bool:
        """Deletes a subscription with its cursors and dead letters; False when there was none."""
        async with self._connection() as apg:
            status: str = await apg.execute("DELETE FROM webhooks WHERE id = $1", webhook_id)
        return status != "DELETE 0"

    # --- cursors -------------------------------------------------------------------------------

    @_to_the_end
    async def cursors(self, webhook_id: str) -> dict[int, Cursor]:
        async with self._connection() as apg:
            records = await apg.fetch(
                "SELECT partition, epoch, offset_ms, offset_seq, ordinal FROM webhook_cursors "
                "WHERE webhook_id = $1",
                webhook_id,
            )
        return {r[0]: Cursor(r[1], (r[2], r[3]), r[4]) for r in records}

    @_to_the_end
    async def cursor(self, webhook_id: str, partition: int, start: Cursor) -> Cursor:
        """The partition's cursor; set to `start` first when it has none (a partition added
        after the subscription was created)."""
        async with self._connection() as apg:
            await apg.execute(_INSERT_CURSOR, webhook_id, partition, *start.args())
            record = await apg.fetchrow(
                "SELECT epoch, offset_ms, offset_seq, ordinal FROM webhook_cursors "
                "WHERE webhook_id = $1 AND partition = $2",
                webhook_id,
                partition,
            )
        return start if record is None else Cursor(record[0], (record[1], record[2]), record[3])

    @_to_the_end
    async def move(self, webhook_id: str, partition: int, cursor: Cursor) -> None:
        """Moves a cursor past events the subscription does not want, or past a gap."""
        async with self._connection() as apg:
            await apg.execute(_MOVE_CURSOR, webhook_id, partition, *cursor.args())

    @_to_the_end
    async def delivered(self, webhook_id: str, event: LoggedEvent) -> None:
        """The receiver accepted `event`: the cursor moves past it and it is counted."""
        async with self._locked(webhook_id) as apg:
            if apg is not None:
                await apg.execute(_DELIVERED, webhook_id)
                await apg.execute(
                    _MOVE_CURSOR, webhook_id, event.partition, *Cursor.at(event).args()
                )

    @_to_the_end
    async def retried(self, webhook_id: str, error: str) -> None:
        async with self._connection() as apg:
            await apg.execute(
                "UPDATE webhooks SET retried = retried + 1, last_error = $2 WHERE id = $1",
                webhook_id,
                error,
            )

    @_to_the_end
    async def dead(
        self, webhook_id: str, event: LoggedEvent, body: bytes, attempts: int, error: str
    ) -> None:
        """`event` was given up: it goes on the dead-letter list and the cursor past it."""
        async with self._locked(webhook_id) as apg:
            if apg is None:
                return
            await _count_dead(apg, webhook_id, error)
            await apg.execute(_MOVE_CURSOR, webhook_id, event.partition, *Cursor.at(event).args())
            await apg.execute(
                _DEAD,
                webhook_id,
                event.event_id,
                event.partition,
                event.kind,
                body.decode(),
                attempts,
                error,
            )

    # --- dead letters and their replays --------------------------------------------------------

    @_to_the_end
    async def dead_letters(self, webhook_id: str, limit: int) -> list[DeadLetter]:
        """Oldest first."""
        async with self._connection() as apg:
            records = await apg.fetch(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters WHERE webhook_id = $1 "
                "ORDER BY dead_time, event_id LIMIT $2",
                webhook_id,
                limit,
            )
        return [_letter(record) for record in records]

    @_to_the_end
    async def request_replay(self, webhook_id: str, event_ids: Sequence[str]) -> int:
        """Queues dead letters for delivery again (all of them when `event_ids` is empty);
        returns how many."""
        async with self._connection() as apg:
            status: str = await apg.execute(
                "UPDATE webhook_dead_letters SET replay_requested = true "
                "WHERE webhook_id = $1 AND (cardinality($2::text[]) = 0 OR event_id = ANY($2))",
                webhook_id,
                list(event_ids),
            )
        return int(status.rsplit(" ", 1)[-1])

    @_to_the_end
    async def replays(self, webhook_id: str, partition: int, limit: int) -> list[DeadLetter]:
        """The partition's dead letters queued for replay, oldest first."""
        async with self._connection() as apg:
            records = await apg.fetch(
                f"SELECT {_LETTER_COLUMNS} FROM webhook_dead_letters "
                "WHERE webhook_id = $1 AND partition = $2 AND replay_requested "
                "ORDER BY dead_time, event_id LIMIT $3",
                webhook_id,
                partition,
                limit,
            )
        return [_letter(record) for record in records]

    @_to_the_end
    async def replayed(self, webhook_id: str, event_id: str) -> None:
        """A replayed dead letter was accepted: it leaves the list and counts as delivered."""
        async with self._locked(webhook_id) as apg:
            if apg is None:
                return
            status: str = await apg.execute(
                "DELETE FROM webhook_dead_letters WHERE webhook_id = $1 AND event_id = $2",
                webhook_id,
                event_id,
            )
            if status != "DELETE 0":
                await apg.execute(_DELIVERED, webhook_id)

    @_to_the_end
    async def dead_again(self, webhook_id: str, event_id: str, attempts: int, error: str) -> None:
        """A replayed dead letter was given up again: it stays on the list, out of the queue."""
        async with self._locked(webhook_id) as apg:
            if apg is None:
                return
            await apg.execute(
                "UPDATE webhook_dead_letters SET replay_requested = false, dead_time = now(), "
                "attempts = attempts + $3, last_error = $4 WHERE webhook_id = $1 AND event_id = $2",
                webhook_id,
                event_id,
                attempts,
                error,
            )
            await _count_dead(apg, webhook_id, error)


async def _count_dead(apg: Any, webhook_id: str, error: str) -> None:
    await apg.execute(
        "UPDATE webhooks SET dead_lettered = dead_lettered + 1, last_error = $2 WHERE id = $1",
        webhook_id,
        error,
    )
