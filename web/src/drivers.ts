// Driver markers, moved live by LocationService.WatchArea on the visible box.
import L from "leaflet";
import { Code } from "@connectrpc/connect";
import { keepStreaming, type Api, type StreamHandle } from "./api";
import { onMapSettled, toBoundingBox } from "./map";
import { DriverAvailability, type DriverLocation } from "./gen/ridemesh/v1/common_pb";

export type Availability = "available" | "busy" | "unknown";

export function availabilityName(a: DriverAvailability): Availability {
  switch (a) {
    case DriverAvailability.AVAILABLE:
      return "available";
    case DriverAvailability.BUSY:
      return "busy";
    default:
      return "unknown";
  }
}

/** Markers not updated for this long are dropped. */
const STALE_MS = 60_000;

interface Driver {
  marker: L.Marker;
  seen: number;
}

export class Drivers {
  private readonly drivers = new Map<string, Driver>();
  private readonly layer: L.LayerGroup;
  /** The followed driver keeps its marker even outside the watched box. */
  followed: string | null = null;

  constructor(
    map: L.Map,
    private readonly countEl: HTMLElement,
    private readonly onClick: (driverId: string) => void,
  ) {
    this.layer = L.layerGroup().addTo(map);
    setInterval(() => this.dropStale(Date.now()), 5_000);
    this.renderCount();
  }

  get size(): number {
    return this.drivers.size;
  }

  update(location: DriverLocation): void {
    const position = location.position;
    if (!position || !location.driverId) return;
    const latLng = L.latLng(position.latitude, position.longitude);
    let driver = this.drivers.get(location.driverId);
    if (!driver) {
      const icon = L.divIcon({ className: "driver", html: '<span class="arrow"></span>', iconSize: [18, 18] });
      const marker = L.marker(latLng, { icon, keyboard: false, title: location.driverId });
      marker.on("click", () => this.onClick(location.driverId));
      marker.addTo(this.layer);
      driver = { marker, seen: 0 };
      this.drivers.set(location.driverId, driver);
      this.renderCount();
    } else {
      driver.marker.setLatLng(latLng);
    }
    driver.seen = Date.now();
    const el = driver.marker.getElement();
    if (el) {
      el.dataset.driverId = location.driverId;
      el.dataset.availability = availabilityName(location.availability);
      el.dataset.lat = position.latitude.toFixed(6);
      el.dataset.lng = position.longitude.toFixed(6);
      el.classList.toggle("followed", this.followed === location.driverId);
      const arrow = el.firstElementChild as HTMLElement | null;
      if (arrow) arrow.style.transform = `rotate(${location.headingDeg}deg)`;
    }
  }

  remove(driverId: string): void {
    if (driverId === this.followed) return;
    const driver = this.drivers.get(driverId);
    if (!driver) return;
    driver.marker.remove();
    this.drivers.delete(driverId);
    this.renderCount();
  }

  /** Drops markers outside `bounds` (after the watched box moved) except the followed one. */
  keepOnly(bounds: L.LatLngBounds): void {
    for (const [id, driver] of this.drivers) {
      if (!bounds.contains(driver.marker.getLatLng())) this.remove(id);
    }
  }

  setFollowed(driverId: string | null): void {
    const previous = this.followed;
    this.followed = driverId;
    for (const id of [previous, driverId]) {
      if (id) this.drivers.get(id)?.marker.getElement()?.classList.toggle("followed", id === driverId);
    }
  }

  private dropStale(now: number): void {
    for (const [id, driver] of this.drivers) {
      if (now - driver.seen > STALE_MS) this.remove(id);
    }
  }

  private renderCount(): void {
    this.countEl.textContent = String(this.drivers.size);
  }
}

/**
 * Watches the visible box (padded) and re-subscribes when the map settles somewhere the current
 * subscription does not cover, or at a very different zoom. A box too large for the server
 * (INVALID_ARGUMENT) is not retried: `onNote` says to zoom in.
 */
export function watchVisibleDrivers(
  api: Api,
  map: L.Map,
  drivers: Drivers,
  onNote: (note: string | null) => void,
): void {
  let handle: StreamHandle | null = null;
  let watched: L.LatLngBounds | null = null;
  let watchedZoom = -1;
  let generation = 0;

  onMapSettled(map, 300, () => {
    const visible = map.getBounds();
    const zoom = map.getZoom();
    if (handle && watched?.contains(visible) && Math.abs(zoom - watchedZoom) < 2) return;
    handle?.stop();
    watched = visible.pad(0.25);
    watchedZoom = zoom;
    drivers.keepOnly(watched);
    onNote(null);
    const bounds = toBoundingBox(watched);
    const name = `WatchArea#${++generation}`;
    handle = keepStreaming(
      api,
      name,
      async ({ signal, onHeader }) => {
        for await (const res of api.location.watchArea({ bounds }, { signal, onHeader })) {
          onHeader();
          const location = res.location;
          if (!location) continue;
          if (res.exited) drivers.remove(location.driverId);
          else drivers.update(location);
        }
      },
      {
        fatal: [Code.InvalidArgument],
        onFatal: (err) => {
          handle = null;
          watched = null;
          onNote(`Zoom in to see drivers (${err.rawMessage})`);
        },
      },
    );
  });
}
