// Replay mode: stored fixes of the visible box played back by GeoQueryService.ReplayFleet, with a
// time slider that follows the replay clock. Replay markers replace the live ones while it is on.
import "./replay.css";
import L from "leaflet";
import { timestampDate, timestampFromMs } from "@bufbuild/protobuf/wkt";
import { describeError, type Api } from "./api";
import { toBoundingBox } from "./map";
import type { DriverLocation } from "./gen/ridemesh/v1/common_pb";

const SPEEDS = [1, 10, 60, 600];
const DEFAULT_SPEED = 60;
const HOUR_MS = 3_600_000;

/** A datetime-local input's value for `ms` in the browser's time zone (minute precision). */
function localInputValue(ms: number): string {
  const d = new Date(ms);
  const pad = (n: number) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function element<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  props: Partial<HTMLElementTagNameMap[K]> = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const el = Object.assign(document.createElement(tag), props);
  el.append(...children);
  return el;
}

/** The replay markers: one per driver, moved to each played fix. */
class ReplayMarkers {
  private readonly layer = L.layerGroup();
  private readonly markers = new Map<string, L.Marker>();

  constructor(private readonly map: L.Map) {}

  show(): void {
    this.layer.addTo(this.map);
  }

  hide(): void {
    this.clear();
    this.layer.remove();
  }

  clear(): void {
    this.layer.clearLayers();
    this.markers.clear();
  }

  get size(): number {
    return this.markers.size;
  }

  place(location: DriverLocation): void {
    const position = location.position;
    if (!position || !location.driverId) return;
    const latLng = L.latLng(position.latitude, position.longitude);
    let marker = this.markers.get(location.driverId);
    if (!marker) {
      const icon = L.divIcon({ className: "driver replay-driver", html: '<span class="arrow"></span>', iconSize: [18, 18] });
      marker = L.marker(latLng, { icon, keyboard: false, title: `${location.driverId} (replay)` }).addTo(this.layer);
      this.markers.set(location.driverId, marker);
    } else {
      marker.setLatLng(latLng);
    }
    const el = marker.getElement();
    if (el) {
      el.dataset.driverId = location.driverId;
      el.dataset.lat = position.latitude.toFixed(6);
      el.dataset.lng = position.longitude.toFixed(6);
      const arrow = el.firstElementChild as HTMLElement | null;
      if (arrow) arrow.style.transform = `rotate(${location.headingDeg}deg)`;
    }
  }
}

/**
 * The replay panel: a toggle, from/to, a speed and the slider. Turning it on (or changing any
 * of them, or letting go of the slider somewhere) starts a new ReplayFleet call over the visible
 * box; turning it off stops the call and brings the live markers back.
 */
export class Replay {
  private readonly markers: ReplayMarkers;
  private readonly toggle = element("input", { type: "checkbox", id: "replay-toggle" });
  private readonly from = element("input", { type: "datetime-local", id: "replay-from" });
  private readonly to = element("input", { type: "datetime-local", id: "replay-to" });
  private readonly speed = element("select", { id: "replay-speed" });
  private readonly slider = element("input", { type: "range", id: "replay-slider", step: "1000" });
  private readonly clock = element("output", { id: "replay-clock" });
  private readonly message = element("p", { id: "replay-message", className: "hint" });
  private call: AbortController | null = null;
  private dragging = false;

  constructor(
    private readonly api: Api,
    private readonly map: L.Map,
    panel: HTMLElement,
  ) {
    this.markers = new ReplayMarkers(map);
    for (const s of SPEEDS) this.speed.append(element("option", { value: String(s), selected: s === DEFAULT_SPEED }, `${s}×`));
    const now = Date.now();
    this.from.value = localInputValue(now - HOUR_MS);
    this.to.value = localInputValue(now);
    const controls = element("div", { className: "replay-controls" },
      element("label", {}, "From ", this.from),
      element("label", {}, "To ", this.to),
      element("label", {}, "Speed ", this.speed),
      this.slider, this.clock, this.message);
    controls.hidden = true;
    panel.append(element("h2", {}, "Replay"), element("label", {}, this.toggle, " Replay history of the visible area"), controls);

    this.toggle.addEventListener("change", () => {
      controls.hidden = !this.toggle.checked;
      if (this.toggle.checked) this.enter();
      else this.leave();
    });
    for (const input of [this.from, this.to, this.speed]) input.addEventListener("change", () => this.restart(this.rangeStart()));
    this.slider.addEventListener("input", () => {
      this.dragging = true;
      this.showClock(Number(this.slider.value));
    });
    this.slider.addEventListener("change", () => {
      this.dragging = false;
      this.restart(Number(this.slider.value));
    });
  }

  private enter(): void {
    this.map.getContainer().classList.add("replaying");
    this.markers.show();
    this.restart(this.rangeStart());
  }

  private leave(): void {
    this.call?.abort();
    this.call = null;
    this.markers.hide();
    this.map.getContainer().classList.remove("replaying");
    this.message.textContent = "";
  }

  private rangeStart(): number {
    return new Date(this.from.value).getTime();
  }

  /** A new ReplayFleet call from `startMs` to the end of the range (the old one is stopped). */
  private restart(startMs: number): void {
    if (!this.toggle.checked) return;
    this.call?.abort();
    const rangeStart = this.rangeStart();
    const end = new Date(this.to.value).getTime();
    if (!Number.isFinite(rangeStart) || !Number.isFinite(end) || end <= rangeStart) {
      this.message.textContent = "Choose a From before To.";
      return;
    }
    const start = Math.min(Math.max(startMs, rangeStart), end - 1000);
    this.slider.min = String(rangeStart);
    this.slider.max = String(end);
    this.setClock(start);
    this.markers.clear();
    const call = new AbortController();
    this.call = call;
    this.message.textContent = "";
    void this.play(call, start, end);
  }

  private async play(call: AbortController, startMs: number, endMs: number): Promise<void> {
    const request = {
      bounds: toBoundingBox(this.map.getBounds()),
      startTime: timestampFromMs(startMs),
      endTime: timestampFromMs(endMs),
      speed: Number(this.speed.value),
    };
    try {
      for await (const res of this.api.geo.replayFleet(request, { signal: call.signal })) {
        if (call.signal.aborted) return; // a message already on its way when a newer call began
        if (res.location) this.markers.place(res.location);
        if (res.replayTime) this.setClock(timestampDate(res.replayTime).getTime());
      }
      if (this.call === call) this.message.textContent = `Replay finished: ${this.markers.size} drivers.`;
    } catch (err) {
      if (call.signal.aborted) return;
      this.message.textContent = `Replay stopped: ${describeError(err)}`;
    }
  }

  private setClock(ms: number): void {
    if (this.dragging) return; // the user is choosing a time; the next call will start there
    this.slider.value = String(ms);
    this.showClock(ms);
  }

  private showClock(ms: number): void {
    this.clock.value = new Date(ms).toLocaleString();
    this.clock.dataset.ms = String(ms);
  }
}
