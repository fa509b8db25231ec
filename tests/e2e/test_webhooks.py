"""Webhooks through Envoy against the whole mesh: a receiver down for a minute gets every event
afterwards (once each by idempotency key, signed, in order per driver), and a subscription whose
retry time is shorter than the outage dead-letters what it could not deliver, for a replay."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from google.protobuf.duration_pb2 import Duration

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from ridemesh.v1 import location_service_pb2_grpc as location_grpc
from tests.e2e.clients import DriverStream, Messages, fix, new_driver_id
from tests.e2e.test_geo import _square
from tests.tokens import Metadata
from tests.waiting import until
from tests.webhook_receiver import Receiver, verifies

pytestmark = pytest.mark.e2e

DOWN_S = 60.0


async def test_a_receiver_down_for_a_minute_gets_every_event_after_and_short_retries_dead_letter(
    location: location_grpc.LocationServiceAsyncStub,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
    as_driver: Callable[[str], Metadata],
) -> None:
    tag = new_driver_id("hooked")
    receiver = Receiver()
    await receiver.accept()
    kinds = ["geofence.enter", "geofence.exit"]
    patient = (
        await geo.CreateWebhook(
            pb.CreateWebhookRequest(
                webhook=pb.Webhook(
                    url=receiver.url("/patient"),
                    event_kinds=kinds,
                    labels={"t": tag},
                    max_retry=Duration(seconds=600),
                )
            )
        )
    ).webhook
    hasty = (
        await geo.CreateWebhook(
            pb.CreateWebhookRequest(
                webhook=pb.Webhook(
                    url=receiver.url("/hasty"),
                    event_kinds=kinds,
                    labels={"t": tag},
                    max_retry=Duration(seconds=5),
                )
            )
        )
    ).webhook
    assert patient.secret
    assert patient.secret != hasty.secret
    centre = (50.0875, 14.4213)  # Prague
    await geo.CreateGeofence(
        pb.CreateGeofenceRequest(
            geofence=pb.Geofence(
                display_name="Old Town", geojson=_square(*centre, 0.005), labels={"t": tag}
            )
        )
    )
    control = Messages(geo.WatchGeofenceEvents(pb.WatchGeofenceEventsRequest(labels={"t": tag})))
    driver_id = new_driver_id("hooked")
    driver = DriverStream(location, as_driver(driver_id))
    inside, outside = centre, (centre[0] + 0.01, centre[1])
    seq = 0
    events: list[str] = []

    async def cross() -> None:
        """Drives across the line until the watch reports the crossing."""
        nonlocal seq
        async with asyncio.timeout(15):
            while True:
                seq += 1
                driver.send(fix(driver_id, seq, *(inside if seq % 2 else outside)))
                try:
                    events.append((await control.next(timeout=0.5)).event.event_id)
                    return
                except TimeoutError:
                    continue

    # Both subscriptions deliver: the receiver has the first event on both paths.
    await cross()
    await until(lambda: events[0] in receiver.accepted("/patient"), 30)
    await until(lambda: events[0] in receiver.accepted("/hasty"), 30)

    await receiver.refuse()  # down for a minute, while the driver keeps crossing
    started = time.monotonic()
    while time.monotonic() - started < DOWN_S:
        await cross()
        await asyncio.sleep(2.0)
    missed = events[1:]
    assert len(missed) >= 15
    await receiver.accept()  # back, on the same port

    # Every event reaches the patient subscription once by idempotency key, in order.
    await until(lambda: set(receiver.accepted("/patient")) >= set(events), 60)
    # First arrivals in log order, the driver's order (the subscription may also have had an
    # event from before the watch was live: it started when it was created).
    keys = [key for key in dict.fromkeys(receiver.accepted("/patient")) if key in set(events)]
    assert keys == events
    patient_requests = [r for r in receiver.requests if r.path == "/patient"]
    assert all(verifies(r, patient.secret) for r in patient_requests)
    assert all(not verifies(r, hasty.secret) for r in patient_requests)

    # The hasty one gave up on what waited longer than 5 s: those are dead letters, and events
    # after them still flow once the receiver is back.
    letters = (
        await geo.ListWebhookDeadLetters(
            pb.ListWebhookDeadLettersRequest(webhook_id=hasty.webhook_id, page_size=1000)
        )
    ).dead_letters
    dead = [letter.event_id for letter in letters]
    assert dead
    assert set(dead) <= set(missed)
    assert all(letter.attempts >= 1 and letter.last_error for letter in letters)
    await cross()  # a new event, after the outage
    await until(lambda: events[-1] in receiver.accepted("/hasty"), 30)
    assert not set(dead) & set(receiver.accepted("/hasty"))
    await until(lambda: events[-1] in receiver.accepted("/patient"), 30)

    # Health as the live map shows it (counted once the deliverer has recorded the answer).
    async with asyncio.timeout(10):
        while True:
            response = await geo.ListWebhooks(pb.ListWebhooksRequest())
            listed = {w.webhook_id: w for w in response.webhooks}
            if listed[patient.webhook_id].health.delivered >= len(events):
                break
            await asyncio.sleep(0.2)  # no event to wait on: the count is in PostgreSQL
    assert listed[patient.webhook_id].health.backlog == 0
    assert listed[patient.webhook_id].health.retried >= 1
    assert listed[hasty.webhook_id].health.dead_lettered == len(dead)
    assert not listed[patient.webhook_id].secret  # shown once, at creation

    # A replay sends the dead letters again, with their own idempotency keys.
    replayed = await geo.ReplayWebhookDeadLetters(
        pb.ReplayWebhookDeadLettersRequest(webhook_id=hasty.webhook_id)
    )
    assert replayed.replayed == len(dead)
    await until(lambda: set(receiver.accepted("/hasty")) >= set(dead), 30)

    for webhook in (patient, hasty):
        await geo.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=webhook.webhook_id))
    control.cancel()
    driver.close()
    await driver.reader
    await receiver.refuse()
