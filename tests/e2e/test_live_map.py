"""The live map in a real browser (Debian's Chromium driven by Playwright, headless) against the
mesh with a simulated city: the page loads through Envoy, drivers appear and move, a click
follows one, rides change state, zone events arrive, and a lost connection is shown and healed."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from ridemesh.v1 import geo_query_service_pb2 as pb
from ridemesh.v1 import geo_query_service_pb2_grpc as geo_grpc
from services.auth.keys import DevKeys
from services.domain.geodesy import haversine_m
from services.geo.export_formats import GPX_NAMESPACE
from services.ops.mesh.ports import free_port
from services.ops.mesh.supervisor import Mesh
from services.ops.simulator.run import Simulation
from services.ops.simulator.settings import SimSettings
from services.ops.webapp import WEB_DIST
from tests.gpx_schema import assert_valid_gpx

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage",
]  # fmt: skip
TBILISI = (41.7151, 44.8271)  # a centre no other test uses
# Set to a path (the README's picture is docs/live-map.png) to keep the final screenshot.
SCREENSHOT_ENV = "RIDEMESH_SCREENSHOT"

Positions = dict[str, tuple[float, float]]


def _chromium() -> str:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make install` installs Debian's chromium")
    return str(CHROMIUM)


def _page_built() -> bool:
    return (WEB_DIST / "index.html").is_file()


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=_chromium(), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def city(envoy_address: str, keys: DevKeys) -> AsyncIterator[Simulation]:
    """A small, lively city: drivers visibly moving, rides every second, a park in the middle."""
    settings = SimSettings(
        target=envoy_address,
        drivers=20,
        ride_rate_per_min=60.0,
        center=TBILISI,
        duration_s=120.0,
        seed=5,
        city_radius_m=600.0,
        trip_radius_m=400.0,
        speed_mps=(15.0, 25.0),
        fix_interval_s=(0.5, 1.0),
        honour_hints=False,  # fast fixes whatever the server hints
        rider_patience_s=20.0,
    )
    simulation = Simulation(settings, keys)
    running = asyncio.create_task(simulation.run())
    yield simulation
    simulation.stop.set()
    with contextlib.suppress(Exception):
        await asyncio.wait_for(running, 30)


async def _positions(page: Page) -> Positions:
    found = await page.eval_on_selector_all(
        ".driver",
        "els => els.map(e => [e.dataset.driverId, Number(e.dataset.lat), Number(e.dataset.lng)])",
    )
    return {driver: (lat, lng) for driver, lat, lng in found}


async def test_the_live_map_shows_a_moving_city_through_envoy(
    mesh: Mesh,
    browser: Browser,
    city: Simulation,
    tmp_path: Path,
    geo: geo_grpc.GeoQueryServiceAsyncStub,
) -> None:
    assert _page_built(), "the page is not built: run `make web`"
    assert mesh.envoy is not None
    errors: list[str] = []
    page = await browser.new_page(viewport={"width": 1280, "height": 800})
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    centre = f"{TBILISI[0]},{TBILISI[1]}"
    await page.goto(f"{mesh.envoy.url}/?center={centre}&zoom=16")

    # Loaded through Envoy, signed in with the mesh's development token, streams live.
    await page.wait_for_selector("#status[data-state=live]", timeout=20_000)
    await page.wait_for_function(
        "document.querySelectorAll('.driver').length >= 15", timeout=30_000
    )
    await page.wait_for_selector(".zone", state="attached", timeout=10_000)
    # The supply heatmap, and (with no tile layer configured) a scale over the plain grid.
    await page.wait_for_selector("path.heat-cell", state="attached", timeout=15_000)
    assert await page.locator(".leaflet-control-scale").count() == 1
    assert await page.locator(".leaflet-tile-container img").count() == 0
    count = int(await page.inner_text("#driver-count"))
    assert count == await page.locator(".driver").count()
    availabilities = set(
        await page.eval_on_selector_all(".driver", "els => els.map(e => e.dataset.availability)")
    )
    assert availabilities <= {"available", "busy", "unknown"}
    assert "available" in availabilities

    # Drivers move between two screenshots.
    before = await _positions(page)
    await page.screenshot(path=str(tmp_path / "before.png"))
    await asyncio.sleep(3.0)
    after = await _positions(page)
    await page.screenshot(path=str(tmp_path / "after.png"))
    ours = {d.driver_id for d in city.drivers}
    moved = [
        driver
        for driver in before.keys() & after.keys() & ours
        if haversine_m(*before[driver], *after[driver]) > 10.0
    ]
    assert len(moved) >= 10, (before, after)

    # Clicking one follows it: its details show.
    followed = moved[0]
    # The click goes to the marker itself: a click at its centre can land on a neighbour that
    # has just driven over it.
    await page.dispatch_event(f'.driver[data-driver-id="{followed}"]', "click")
    panel = page.locator("#driver-panel")
    await panel.wait_for(state="visible", timeout=10_000)
    assert await panel.get_attribute("data-driver-id") == followed
    speed_mps = next(d.speed_mps for d in city.drivers if d.driver_id == followed)
    await page.wait_for_function(
        "kmh => document.querySelector('#driver-panel .speed').textContent.includes(kmh)",
        arg=f"{speed_mps * 3.6:.0f}",
        timeout=10_000,
    )
    assert (await panel.locator(".heading").inner_text()).strip()
    assert (await panel.locator(".age").inner_text()).strip()
    # The panel downloads the followed driver's last hour (HTTP through Envoy, the page's token).
    async with page.expect_download(timeout=15_000) as downloading:
        await panel.locator('button[data-format="EXPORT_FORMAT_GPX"]').click()
    download = await downloading.value
    assert download.suggested_filename.endswith(".gpx")
    saved = Path(await download.path())
    track = assert_valid_gpx(await asyncio.to_thread(saved.read_bytes))
    assert followed in track.findtext(f"{{{GPX_NAMESPACE}}}trk/{{{GPX_NAMESPACE}}}name")
    assert track.findall(f".//{{{GPX_NAMESPACE}}}trkpt")

    # A ride's state changes on the page, and a zone event arrives.
    await page.wait_for_function(
        "[...document.querySelectorAll('li.ride')]"
        ".some(li => (li.dataset.statesSeen || '').trim().split(/\\s+/).length >= 2)",
        timeout=60_000,
    )
    await page.wait_for_selector("li.zone-event", timeout=60_000)
    transition = await page.get_attribute("li.zone-event", "data-transition")
    assert transition in ("ENTER", "EXIT", "DWELL")
    # Drivers of the city's rides come near their pickups: the feed shows it.
    await page.wait_for_selector("li.ride-event", timeout=60_000)
    kind = await page.get_attribute("li.ride-event", "data-kind")
    assert kind in ("APPROACHING_PICKUP", "AT_PICKUP", "LEFT_PICKUP", "APPROACHING_DROPOFF")
    # A webhook whose receiver is not there shows as retrying, with its error.
    nobody = f"http://127.0.0.1:{free_port()}/hook"
    created = await geo.CreateWebhook(pb.CreateWebhookRequest(webhook=pb.Webhook(url=nobody)))
    row = page.locator(f'li.webhook[data-webhook-id="{created.webhook.webhook_id}"]')
    await row.wait_for(state="attached", timeout=15_000)
    await page.wait_for_function(
        'id => document.querySelector(`li.webhook[data-webhook-id="${id}"]`)'
        "?.dataset.health === 'retrying'",
        arg=created.webhook.webhook_id,
        timeout=30_000,
    )
    assert nobody in await row.inner_text()
    await geo.DeleteWebhook(pb.DeleteWebhookRequest(webhook_id=created.webhook.webhook_id))
    shot = tmp_path / "live-map.png"
    await page.screenshot(path=str(shot))
    if target := os.environ.get(SCREENSHOT_ENV):
        shutil.copyfile(shot, target)

    # Moving the map re-subscribes to the new box: away from the city no driver shows, and back
    # over it they all come back. (Following a driver keeps the map on it, so stop first.)
    await page.click("#driver-panel button.stop")
    await panel.wait_for(state="hidden", timeout=5_000)
    away = f"[{TBILISI[0] + 0.3}, {TBILISI[1]}]"
    await page.evaluate(f"window.ridemesh.map.setView({away}, 16)")
    await page.wait_for_function(
        "document.querySelectorAll('.driver').length === 0", timeout=15_000
    )
    await page.evaluate(f"window.ridemesh.map.setView([{centre}], 16)")
    await page.wait_for_function(
        "document.querySelectorAll('.driver').length >= 15", timeout=30_000
    )

    # A lost connection is shown, and the page recovers by itself.
    await page.context.set_offline(True)
    await page.wait_for_selector("#status[data-state=reconnecting]", timeout=30_000)
    await page.context.set_offline(False)
    await page.wait_for_selector("#status[data-state=live]", timeout=30_000)
    assert not errors, errors
