// Supply heatmap: GeoQueryService.GetSupplyHeatmap every 5 s for the visible box, drawn as H3 hexagons.
import L from "leaflet";
import { cellToBoundary, getHexagonAreaAvg, UNITS } from "h3-js";
import { Code } from "@connectrpc/connect";
import { describeError, errorCode, poll, reportPoll, type Api, type StreamHandle } from "./api";
import { toBoundingBox } from "./map";
import type { HeatmapCell } from "./gen/ridemesh/v1/geo_query_service_pb";

const REFRESH_MS = 5_000;
const EARTH_RADIUS_M = 6_371_008.8;
/** Aim for at most this many cells on screen (the server allows about 20,000). */
const TARGET_CELLS = 3_000;
const MAX_RESOLUTION = 10;

function boxAreaM2(bounds: L.LatLngBounds): number {
  const rad = Math.PI / 180;
  const south = Math.max(-90, bounds.getSouth());
  const north = Math.min(90, bounds.getNorth());
  const span = Math.min(360, bounds.getEast() - bounds.getWest());
  return EARTH_RADIUS_M ** 2 * span * rad * (Math.sin(north * rad) - Math.sin(south * rad));
}

/** The finest H3 resolution whose cells in the box stay under TARGET_CELLS. */
export function resolutionFor(bounds: L.LatLngBounds): number {
  const area = boxAreaM2(bounds);
  let best = 0;
  for (let r = 0; r <= MAX_RESOLUTION; r++) {
    if (area / getHexagonAreaAvg(r, UNITS.m2) <= TARGET_CELLS) best = r;
  }
  return best;
}

export class Heatmap {
  readonly layer = L.layerGroup();

  constructor(
    private readonly api: Api,
    private readonly map: L.Map,
    layers: L.Control.Layers,
    private readonly onNote: (note: string | null) => void,
  ) {
    layers.addOverlay(this.layer, "Supply heatmap");
    this.layer.addTo(map);
  }

  start(): StreamHandle {
    return poll(REFRESH_MS, (signal) => this.refresh(signal));
  }

  private async refresh(signal: AbortSignal): Promise<void> {
    if (!this.map.hasLayer(this.layer)) {
      this.api.status.closed("GetSupplyHeatmap");
      return;
    }
    await this.api.auth.ready();
    const visible = this.map.getBounds();
    const resolution = resolutionFor(visible);
    try {
      const res = await this.api.geo.getSupplyHeatmap({ bounds: toBoundingBox(visible), resolution }, { signal });
      this.onNote(null);
      this.draw(res.cells);
      reportPoll(this.api, "GetSupplyHeatmap");
    } catch (err) {
      if (signal.aborted) return;
      reportPoll(this.api, "GetSupplyHeatmap", err);
      const code = errorCode(err);
      if (code === Code.Unauthenticated) this.api.auth.reject(describeError(err));
      if (code === Code.InvalidArgument) this.layer.clearLayers();
      this.onNote(`Heatmap skipped: ${describeError(err)}`);
    }
  }

  private draw(cells: HeatmapCell[]): void {
    this.layer.clearLayers();
    const most = Math.max(1, ...cells.map((c) => c.availableDrivers + c.openRequests));
    for (const cell of cells) {
      let boundary: number[][];
      try {
        boundary = cellToBoundary(cell.h3Cell);
      } catch {
        continue;
      }
      const total = cell.availableDrivers + cell.openRequests;
      // Green where supply meets demand, red where requests outnumber available drivers.
      const short = cell.openRequests > cell.availableDrivers;
      const hexagon = L.polygon(
        boundary.map(([lat, lng]) => [lat ?? 0, lng ?? 0] as L.LatLngTuple),
        {
          className: "heat-cell",
          stroke: false,
          fillColor: short ? "#d9432f" : "#2f9e58",
          fillOpacity: 0.12 + 0.45 * (total / most),
          interactive: true,
        },
      );
      hexagon.bindTooltip(`${cell.availableDrivers} available · ${cell.openRequests} waiting`);
      hexagon.addTo(this.layer);
    }
  }
}
