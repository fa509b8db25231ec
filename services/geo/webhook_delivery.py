"""Webhook delivery: every GeoQuery replica runs a Deliverer; for each (subscription, event log
partition) one replica at a time holds a lease in Redis and POSTs the partition's events in log
order, at least once each.

The cursor in PostgreSQL is the last event handled. An event that fails is tried again after a
backoff, holding back the ones behind it (so a driver's events stay in order), until it succeeds
or its subscription's retry time passes, when it goes to the dead-letter list and the cursor
moves past it. Replays of dead letters go before new events. A replica that dies leaves its
lease to expire; the next holder starts from the cursor, so an event whose success was not yet
recorded is sent again (the receiver drops it by its Idempotency-Key).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from redis.asyncio import Redis
from redis.exceptions import RedisError

from services.geo import webhooks
from services.geo.webhook_store import Cursor, WebhookStore
from services.geo.webhooks import Backlog, StoredWebhook, WebhookSpec
from services.live.events import EventLog, LoggedEvent, LogState, format_id
from services.live.names import partitions, webhook_lease_key
from services.observability.metrics import (
    WEBHOOK_CURSOR_RESETS,
    WEBHOOK_DEAD_LETTERED,
    WEBHOOK_DELIVERED,
    WEBHOOK_LAG,
    WEBHOOK_RETRIED,
)
from services.server.failures import cancel_and_wait, dependency_of, raise_if_cancelling

log = logging.getLogger(__name__)

# Events read from the log at a time; replays queued meanwhile wait for the page to end.
PAGE = 100
# ListWebhooks counts a subscription's backlog up to this many events per partition.
BACKLOG_LIMIT = 1000

# Renews the lease only while this holder has it (another may have taken it after it expired).
_RENEW_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE_LUA = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True, slots=True)
class DeliveryTimings:
    """How often and how long; tests shorten them."""

    lease_ms: int = 10_000
    # How often the list of subscriptions is read (new ones start, deleted ones stop).
    poll_s: float = 1.0
    # How often a caught-up deliverer looks for new events.
    read_every_s: float = 0.25
    timeout_s: float = 5.0
    # The wait after Redis or PostgreSQL failed, before trying again.
    retry_s: float = 1.0
    backoff_base_s: float = webhooks.BACKOFF_BASE_S
    backoff_cap_s: float = webhooks.BACKOFF_CAP_S

    def __post_init__(self) -> None:
        if self.timeout_s * 1000 >= self.lease_ms:
            raise ValueError("a webhook POST must end within the lease: timeout_s < lease_ms")


class LeaseLost(Exception):
    """This replica can no longer be sure it holds a lease: it stops delivering under it."""


class Lease:
    """One holder's lease on a key: SET NX PX to take it, renewed (only while it is still this
    holder's) when a third of it has passed, and before every POST."""

    def __init__(
        self, redis: Redis, key: str, lease_ms: int, releasing: set[asyncio.Task[None]]
    ) -> None:
        self._redis = redis
        self._releasing = releasing
        self._key = key
        self._ms = lease_ms
        self._token = secrets.token_hex(8)
        self._renew = redis.register_script(_RENEW_LUA)
        self._release = redis.register_script(_RELEASE_LUA)
        self._renewed_at = 0.0

    async def acquire(self) -> bool:
        now = _now()
        try:
            taken = bool(await self._redis.set(self._key, self._token, nx=True, px=self._ms))
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            _report(exc, "taking a webhook lease")
            return False
        if taken:
            self._renewed_at = now
        return taken

    async def keep(self) -> None:
        """Renews it once a third of it has passed; raises LeaseLost when it is not held."""
        if _now() - self._renewed_at >= self._ms / 3000:
            await self.renew()

    async def renew(self) -> None:
        now = _now()
        if now - self._renewed_at >= self._ms / 1000:
            raise LeaseLost(f"lease {self._key} ran out before it was renewed (a stall)")
        try:
            renewed = await self._renew(keys=[self._key], args=[self._token, self._ms])
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            raise LeaseLost(f"lease {self._key} could not be renewed ({exc})") from exc
        if not renewed:
            raise LeaseLost(f"lease {self._key} was taken by another replica")
        self._renewed_at = now

    async def sleep(self, seconds: float) -> None:
        """Waits, renewing the lease meanwhile."""
        deadline = _now() + seconds
        while (left := deadline - _now()) > 0:
            await asyncio.sleep(min(left, self._ms / 3000))
            await self.keep()

    async def release(self) -> None:
        """Lets it go now rather than when it expires (best effort: it expires anyway). Shielded:
        it runs as its holder is cancelled, and a second cancel must not cut the command off."""
        self._renewed_at = 0.0
        task = asyncio.ensure_future(self._let_go())
        self._releasing.add(task)
        task.add_done_callback(self._releasing.discard)
        await asyncio.shield(task)

    async def _let_go(self) -> None:
        try:
            async with asyncio.timeout(1.0):
                await self._release(keys=[self._key], args=[self._token])
        except (RedisError, OSError) as exc:
            raise_if_cancelling(exc)
            log.info("could not release webhook lease %s (%s)", self._key, type(exc).__name__)


def _now() -> float:
    return asyncio.get_running_loop().time()


class Deliverer:
    """Delivers every subscription's events: a task per (subscription, partition), started and
    stopped as subscriptions come and go in PostgreSQL."""

    def __init__(
        self,
        store: WebhookStore,
        redis: Redis,
        timings: DeliveryTimings | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._store = store
        self._redis = redis
        self._log = EventLog(redis)
        self._t = timings or DeliveryTimings()
        self._rng = rng or random.Random()
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._workers: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._releasing: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        # Redirects are not followed: a subscription delivers to the URL it names, nowhere else.
        self._client = httpx.AsyncClient(timeout=self._t.timeout_s, follow_redirects=False)
        self._watcher = asyncio.create_task(self._watch(), name="webhooks")

    async def stop(self) -> None:
        await cancel_and_wait([t for t in (self._watcher, *self._workers.values()) if t])
        self._workers.clear()
        # What the cancelled tasks left finishing: lease releases and store calls (shielded).
        await asyncio.gather(*self._releasing, return_exceptions=True)
        await self._store.settle()
        if self._client is not None:
            await self._client.aclose()

    # --- which subscriptions run here ----------------------------------------------------------

    async def _watch(self) -> None:
        while True:
            try:
                await self._reconcile(await self._store.all())
            except Exception as exc:
                raise_if_cancelling(exc)
                _report(exc, "reading the webhook subscriptions")
            await asyncio.sleep(self._t.poll_s)

    async def _reconcile(self, subscriptions: list[StoredWebhook]) -> None:
        wanted = {(s.webhook_id, p): s for s in subscriptions for p in partitions()}
        gone = [key for key in self._workers if key not in wanted]
        await cancel_and_wait([self._workers.pop(key) for key in gone])
        for webhook_id, partition in gone:
            _forget_lag(webhook_id, partition)
        for (webhook_id, partition), subscription in wanted.items():
            if (webhook_id, partition) not in self._workers:
                self._workers[webhook_id, partition] = asyncio.create_task(
                    self._hold(subscription, partition), name=f"webhook-{webhook_id}-{partition}"
                )

    # --- one (subscription, partition) ----------------------------------------------------------

    async def _hold(self, subscription: StoredWebhook, partition: int) -> None:
        """Takes the lease whenever it is free and delivers while it is held; after a failure
        (Redis or PostgreSQL away) lets it go, waits, and starts again from the stored cursor
        (an event sent and not yet recorded is sent again). One task, no children: cancelling it
        stops everything it does."""
        key = webhook_lease_key(partition, subscription.webhook_id)
        lease = Lease(self._redis, key, self._t.lease_ms, self._releasing)
        while True:
            if await lease.acquire():
                try:
                    await self._deliver(subscription, partition, lease)
                except LeaseLost as exc:
                    log.warning("webhook %s: %s", subscription.webhook_id, exc)
                except Exception as exc:
                    raise_if_cancelling(exc)
                    _report(exc, f"delivering webhook {subscription.webhook_id}")
                finally:
                    # The lag is reported by the replica that holds the lease, and only there.
                    _forget_lag(subscription.webhook_id, partition)
                    await lease.release()
            await asyncio.sleep(self._t.retry_s)

    async def _deliver(self, subscription: StoredWebhook, partition: int, lease: Lease) -> None:
        webhook_id = subscription.webhook_id
        state = (await self._log.states())[partition]
        cursor = await self._store.cursor(webhook_id, partition, at_end(state))
        while True:
            await lease.keep()
            await self._replay(subscription, partition, lease)
            state = (await self._log.states())[partition]
            cursor = await self._covered(webhook_id, partition, cursor, state)
            page = await self._log.after(partition, cursor.offset, PAGE)
            if not page:
                WEBHOOK_LAG.labels(webhook_id, str(partition)).set(0.0)
                await lease.sleep(self._t.read_every_s)
                continue
            cursor = await self._handle(subscription, partition, page, lease)

    async def _covered(
        self, webhook_id: str, partition: int, cursor: Cursor, state: LogState
    ) -> Cursor:
        """The cursor, or the place before the oldest event kept, when the log lost events the
        cursor had not reached (trimmed by retention, or Redis came back empty)."""
        reset = bool(cursor.epoch and state.epoch and cursor.epoch != state.epoch)
        if not reset and state.trimmed <= cursor.ordinal:
            if not cursor.epoch and state.epoch:  # the log had not begun when it was set
                return Cursor(state.epoch, cursor.offset, cursor.ordinal)
            return cursor
        moved = before_oldest(state)
        WEBHOOK_CURSOR_RESETS.inc()
        log.error(
            "webhook %s: the event log of partition %d no longer holds the events after its "
            "cursor %s:%s (%s); undelivered events were lost, delivery goes on from %s",
            webhook_id,
            partition,
            cursor.epoch,
            format_id(cursor.offset),
            "Redis lost the log" if reset else "trimmed by retention",
            format_id(moved.offset),
        )
        await self._store.move(webhook_id, partition, moved)
        return moved

    async def _handle(
        self, subscription: StoredWebhook, partition: int, page: list[LoggedEvent], lease: Lease
    ) -> Cursor:
        """Delivers (or dead-letters) each wanted event of a page in order; the cursor after it."""
        skipped_last = False
        for event in page:
            skipped_last = not subscription.spec.wants(event)
            if not skipped_last:
                await self._send(subscription, event, lease)
        cursor = Cursor.at(page[-1])
        if skipped_last:  # otherwise the store moved it with the last event sent
            await self._store.move(subscription.webhook_id, partition, cursor)
        return cursor

    async def _send(self, subscription: StoredWebhook, event: LoggedEvent, lease: Lease) -> None:
        lag = WEBHOOK_LAG.labels(subscription.webhook_id, str(event.partition))
        lag.set(max(0.0, time.time() - event.offset[0] / 1000))
        body = webhooks.body(event)
        error, attempts = await self._attempts(
            subscription, lease, event.event_id, event.kind, body
        )
        if error is None:
            await self._store.delivered(subscription.webhook_id, event)
            WEBHOOK_DELIVERED.inc()
            return
        await self._store.dead(subscription.webhook_id, event, body, attempts, error)
        WEBHOOK_DEAD_LETTERED.inc()
        log.warning(
            "webhook %s gave up event %s after %d attempts: %s",
            subscription.webhook_id,
            event.event_id,
            attempts,
            error,
        )

    async def _replay(self, subscription: StoredWebhook, partition: int, lease: Lease) -> None:
        """Sends the partition's dead letters queued for replay, as they were first sent."""
        webhook_id = subscription.webhook_id
        for letter in await self._store.replays(webhook_id, partition, PAGE):
            body = letter.payload_json.encode()
            error, attempts = await self._attempts(
                subscription, lease, letter.event_id, letter.kind, body
            )
            if error is None:
                await self._store.replayed(webhook_id, letter.event_id)
                WEBHOOK_DELIVERED.inc()
            else:
                await self._store.dead_again(webhook_id, letter.event_id, attempts, error)
                WEBHOOK_DEAD_LETTERED.inc()

    async def _attempts(
        self, subscription: StoredWebhook, lease: Lease, event_id: str, kind: str, body: bytes
    ) -> tuple[str | None, int]:
        """POSTs one event until the receiver accepts it (None) or the retry time has passed
        since the first attempt (the last error); with the number of attempts."""
        loop = asyncio.get_running_loop()
        first, attempt = loop.time(), 0
        max_retry_s = subscription.spec.max_retry_s
        while True:
            attempt += 1
            # A whole lease ahead of every POST: no other replica sends while this one may.
            await lease.renew()
            error = await self._post(subscription, event_id, kind, body)
            elapsed = loop.time() - first
            if error is None or elapsed >= max_retry_s:
                return error, attempt
            WEBHOOK_RETRIED.inc()
            await self._store.retried(subscription.webhook_id, error)
            pause = webhooks.backoff_s(
                attempt, self._rng, self._t.backoff_base_s, self._t.backoff_cap_s
            )
            # Never past the retry time: the attempt there decides whether the event is given up.
            await lease.sleep(min(pause, max_retry_s - elapsed))

    async def _post(
        self, subscription: StoredWebhook, event_id: str, kind: str, body: bytes
    ) -> str | None:
        """One attempt: None when the receiver answered 2xx, else what went wrong."""
        assert self._client is not None, "Deliverer.start() first"
        sent = webhooks.headers(subscription.secret, event_id, kind, body, int(time.time()))
        try:
            # The whole request within timeout_s (httpx's timeout is per phase), so it ends
            # inside the lease renewed before it.
            async with (
                asyncio.timeout(self._t.timeout_s),
                # Streamed and closed unread: a receiver's answer body is not ours to buffer.
                self._client.stream(
                    "POST", subscription.spec.url, content=body, headers=sent
                ) as response,
            ):
                status = response.status_code
        except (httpx.HTTPError, httpx.InvalidURL, TimeoutError) as exc:
            raise_if_cancelling(exc)
            return f"the request failed: {type(exc).__name__} {exc}".strip()[:500]
        if 200 <= status < 300:
            return None
        return f"the receiver answered HTTP {status}"


# --- cursors and health, for the RPCs ----------------------------------------------------------


async def start_cursors(event_log: EventLog) -> list[Cursor]:
    """Cursors at the log's end in every partition: a new subscription gets the events from its
    creation on."""
    return [at_end(state) for state in await event_log.states()]


def at_end(state: LogState) -> Cursor:
    """A cursor after the newest event of a partition's log."""
    return Cursor(state.epoch, state.last, state.appended)


def before_oldest(state: LogState) -> Cursor:
    """A cursor just before the oldest event a partition's log keeps (at its end when it keeps
    none): XRANGE after it starts there."""
    if state.first is None:
        return at_end(state)
    ms, seq = state.first
    # (A sequence number past bigint within one millisecond does not happen.)
    previous = (ms, seq - 1) if seq > 0 else (ms - 1, 2**63 - 1)
    return Cursor(state.epoch, previous, state.trimmed)


async def backlog(
    event_log: EventLog,
    spec: WebhookSpec,
    cursors: Mapping[int, Cursor],
    now_s: float,
    limit: int = BACKLOG_LIMIT,
) -> Backlog:
    """The events after the cursors that the subscription wants (counted up to `limit` log
    entries per partition), and how long the oldest has waited since it was logged."""
    count, oldest_ms = 0, None
    for partition in partitions():
        cursor = cursors.get(partition)
        if cursor is None:
            continue
        wanted = [
            e for e in await event_log.after(partition, cursor.offset, limit) if spec.wants(e)
        ]
        count += len(wanted)
        if wanted and (oldest_ms is None or wanted[0].offset[0] < oldest_ms):
            oldest_ms = wanted[0].offset[0]
    lag_s = 0.0 if oldest_ms is None else max(0.0, now_s - oldest_ms / 1000)
    return Backlog(count, lag_s)


async def health(store: WebhookStore, event_log: EventLog) -> list[tuple[StoredWebhook, Backlog]]:
    """Every subscription with its backlog, oldest first."""
    found = []
    for subscription in await store.all():
        cursors = await store.cursors(subscription.webhook_id)
        found.append(
            (subscription, await backlog(event_log, subscription.spec, cursors, time.time()))
        )
    return found


def _forget_lag(webhook_id: str, partition: int) -> None:
    with contextlib.suppress(KeyError):  # it never delivered here
        WEBHOOK_LAG.remove(webhook_id, str(partition))


def _report(exc: Exception, doing: str) -> None:
    """Logs a failure of a loop that goes on: briefly when a dependency is away, in full else."""
    dependency = dependency_of(exc)
    if dependency is not None:
        log.warning("%s failed: %s is away (%s); retrying", doing, dependency.value, exc)
    else:
        log.exception("%s failed; retrying", doing)
