// The followed driver: LocationService.WatchDriver feeds a side panel and keeps the map on the car.
import type L from "leaflet";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { keepStreaming, type Api, type StreamHandle } from "./api";
import { availabilityName, type Drivers } from "./drivers";
import type { DriverLocation } from "./gen/ridemesh/v1/common_pb";

const COMPASS = ["N", "NE", "E", "SE", "S", "SW", "W", "NW"];

export function compassPoint(headingDeg: number): string {
  const index = Math.round((((headingDeg % 360) + 360) % 360) / 45) % 8;
  return COMPASS[index] ?? "N";
}

export class DriverPanel {
  private handle: StreamHandle | null = null;
  private driverId: string | null = null;
  private fixMs: number | null = null;

  constructor(
    private readonly api: Api,
    private readonly map: L.Map,
    private readonly drivers: Drivers,
    private readonly el: HTMLElement,
  ) {
    this.part("button.stop").addEventListener("click", () => this.unfollow());
    setInterval(() => this.renderAge(), 1_000);
  }

  follow(driverId: string): void {
    if (driverId === this.driverId) return;
    this.unfollow();
    this.driverId = driverId;
    this.fixMs = null;
    this.drivers.setFollowed(driverId);
    this.el.dataset.driverId = driverId;
    this.part(".driver-id").textContent = driverId;
    for (const sel of [".availability", ".speed", ".heading", ".age"]) this.part(sel).textContent = "…";
    this.el.hidden = false;
    this.handle = keepStreaming(this.api, `WatchDriver ${driverId}`, async ({ signal, onHeader }) => {
      for await (const res of this.api.location.watchDriver({ driverId }, { signal, onHeader })) {
        onHeader();
        if (res.location && this.driverId === driverId) this.show(res.location);
      }
    });
  }

  unfollow(): void {
    this.handle?.stop();
    this.handle = null;
    this.driverId = null;
    this.drivers.setFollowed(null);
    this.el.hidden = true;
    delete this.el.dataset.driverId;
  }

  private show(location: DriverLocation): void {
    this.drivers.update(location);
    const speed = location.speedMps;
    const heading = location.headingDeg;
    const availability = availabilityName(location.availability);
    const availabilityEl = this.part(".availability");
    availabilityEl.textContent = availability;
    availabilityEl.dataset.availability = availability;
    this.part(".speed").textContent = `${Math.round(speed * 3.6)} km/h (${speed.toFixed(1)} m/s)`;
    this.part(".heading").textContent = `${Math.round(heading)}° ${compassPoint(heading)}`;
    const at = location.recordedAt ?? location.receivedAt;
    this.fixMs = at ? timestampMs(at) : null;
    this.renderAge();
    const position = location.position;
    if (position) this.map.panTo([position.latitude, position.longitude], { animate: true });
  }

  private renderAge(): void {
    if (this.driverId === null || this.fixMs === null) return;
    const age = Math.max(0, Math.round((Date.now() - this.fixMs) / 1000));
    this.part(".age").textContent = `${age} s ago`;
  }

  private part(selector: string): HTMLElement {
    const found = this.el.querySelector<HTMLElement>(selector);
    if (!found) throw new Error(`#driver-panel has no ${selector}`);
    return found;
  }
}
