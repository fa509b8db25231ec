// Geofences (ListGeofences, redrawn every 30 s) and the live ENTER/EXIT/DWELL feed
// (WatchGeofenceEvents, resumed after a lost connection from the last event's token).
import L from "leaflet";
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { describeError, errorCode, keepStreaming, poll, reportPoll, type Api, type StreamHandle } from "./api";
import { GeofenceTransition, type Geofence, type GeofenceEvent } from "./gen/ridemesh/v1/geo_query_service_pb";

type GeoJsonInput = NonNullable<Parameters<typeof L.geoJSON>[0]>;

const REFRESH_MS = 30_000;
/** While there are no zones yet (a fresh city), look more often. */
const REFRESH_EMPTY_MS = 5_000;
const MAX_EVENTS = 50;

export class Zones {
  private readonly layer: L.LayerGroup;
  private drawn = "";
  private count = 0;

  constructor(
    private readonly api: Api,
    map: L.Map,
    layers: L.Control.Layers,
  ) {
    this.layer = L.layerGroup().addTo(map);
    layers.addOverlay(this.layer, "Geofences");
  }

  start(): StreamHandle {
    return poll(
      () => (this.count === 0 ? REFRESH_EMPTY_MS : REFRESH_MS),
      (signal) => this.refresh(signal),
    );
  }

  private async refresh(signal: AbortSignal): Promise<void> {
    await this.api.auth.ready();
    const fences: Geofence[] = [];
    let pageToken = "";
    try {
      do {
        const res = await this.api.geo.listGeofences({ pageSize: 100, pageToken }, { signal });
        fences.push(...res.geofences);
        pageToken = res.nextPageToken;
      } while (pageToken);
      reportPoll(this.api, "ListGeofences");
    } catch (err) {
      if (signal.aborted) return;
      reportPoll(this.api, "ListGeofences", err);
      if (errorCode(err) === Code.Unauthenticated) this.api.auth.reject(describeError(err));
      console.warn(`ListGeofences: ${describeError(err)}`);
      return;
    }
    this.count = fences.length;
    const key = fences.map((f) => `${f.geofenceId}:${f.displayName}:${f.geojson}`).join("\n");
    if (key === this.drawn) return;
    this.drawn = key;
    this.layer.clearLayers();
    for (const fence of fences) {
      let geometry: GeoJsonInput;
      try {
        geometry = JSON.parse(fence.geojson) as GeoJsonInput;
      } catch {
        console.warn(`geofence ${fence.geofenceId}: geojson is not JSON`);
        continue;
      }
      const shape = L.geoJSON(geometry, {
        style: () => ({ className: "zone", color: "#5b4bd6", weight: 2, fillOpacity: 0.08 }),
      });
      shape.bindTooltip(fence.displayName || fence.geofenceId, { permanent: true, direction: "center", className: "zone-label" });
      shape.addTo(this.layer);
      shape.eachLayer((layer) => {
        const el = (layer as L.Path).getElement?.();
        el?.setAttribute("data-geofence-id", fence.geofenceId);
      });
    }
  }
}

/** The page's event feed: zone events and the proximity events of watched rides, newest first. */
export class EventFeed {
  constructor(private readonly list: HTMLElement) {}

  add(row: HTMLLIElement): void {
    this.list.prepend(row);
    while (this.list.children.length > MAX_EVENTS) this.list.lastElementChild?.remove();
  }
}

export function watchZoneEvents(api: Api, feed: EventFeed): StreamHandle {
  // A reconnect resumes after the last event shown: none is missed or shown twice, unless the
  // log no longer holds it (FAILED_PRECONDITION): then the feed goes on from now.
  let resumeToken = "";
  return keepStreaming(api, "WatchGeofenceEvents", async ({ signal, onHeader }) => {
    try {
      for await (const res of api.geo.watchGeofenceEvents({ resumeToken }, { signal, onHeader })) {
        onHeader();
        if (res.event) feed.add(eventRow(res.event));
        resumeToken = res.resumeToken;
      }
    } catch (err) {
      if (!resumeToken || errorCode(err) !== Code.FailedPrecondition) throw err;
      console.warn(`WatchGeofenceEvents: ${describeError(err)}; going on from now`);
      resumeToken = "";
    }
  });
}

const TRANSITIONS: Partial<Record<GeofenceTransition, string>> = {
  [GeofenceTransition.ENTER]: "ENTER",
  [GeofenceTransition.EXIT]: "EXIT",
  [GeofenceTransition.DWELL]: "DWELL",
};

function eventRow(event: GeofenceEvent): HTMLLIElement {
  const transition = TRANSITIONS[event.transition] ?? "ENTER";
  const li = document.createElement("li");
  li.className = "zone-event";
  li.dataset.transition = transition;
  li.dataset.driverId = event.driverId;
  li.dataset.geofenceId = event.geofenceId;
  if (event.reason) li.dataset.reason = event.reason;
  const at = event.eventTime ? new Date(timestampMs(event.eventTime)) : new Date();
  const time = at.toLocaleTimeString([], { hour12: false });
  const parts: Array<[string, string]> = [
    ["time", time],
    ["transition", transition],
    ["driver-id", event.driverId],
    ["zone", event.geofenceDisplayName || event.geofenceId],
  ];
  if (event.reason) parts.push(["reason", event.reason.replace("_", " ")]);
  for (const [className, text] of parts) {
    const span = document.createElement("span");
    span.className = className;
    span.textContent = text;
    li.append(span, " ");
  }
  return li;
}
