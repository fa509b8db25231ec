// The Leaflet map: tiles when configured, otherwise a plain background with a metre grid.
import L from "leaflet";
import type { Config } from "./api";
import { create } from "@bufbuild/protobuf";
import { BoundingBoxSchema, type BoundingBox } from "./gen/ridemesh/v1/common_pb";

const EARTH_CIRCUMFERENCE_M = 40_075_016.686;
const METRES_PER_DEGREE_LAT = 111_320;

/** 1, 2 or 5 times a power of ten, at least `x`. */
function niceStep(x: number): number {
  const power = 10 ** Math.floor(Math.log10(x));
  for (const m of [1, 2, 5, 10]) if (m * power >= x) return m * power;
  return 10 * power;
}

/**
 * Grid lines every round number of metres (100 m, 200 m, 500 m, 1 km, …), about 80 px apart.
 * Lines are at fixed latitudes and longitudes, with the east-west spacing taken at the configured
 * centre's latitude, so tiles line up and the grid is true to a few per cent across a city.
 */
class MetreGrid extends L.GridLayer {
  constructor(private readonly refLat: number) {
    super({ tileSize: 256, pane: "tilePane", updateWhenZooming: false });
  }

  override createTile(coords: L.Coords): HTMLElement {
    const tile = document.createElement("canvas");
    const size = this.getTileSize();
    tile.width = size.x;
    tile.height = size.y;
    const ctx = tile.getContext("2d");
    const map = (this as unknown as { _map?: L.Map })._map;
    if (!ctx || !map) return tile;
    const zoom = coords.z;
    const cosRef = Math.cos((this.refLat * Math.PI) / 180);
    const metresPerPx = (EARTH_CIRCUMFERENCE_M * cosRef) / (256 * 2 ** zoom);
    const step = niceStep(80 * metresPerPx);
    const dLat = step / METRES_PER_DEGREE_LAT;
    const dLng = step / (METRES_PER_DEGREE_LAT * cosRef);
    const origin = L.point(coords.x * size.x, coords.y * size.y);
    const nw = map.unproject(origin, zoom);
    const se = map.unproject(origin.add(size), zoom);
    const toPx = (lat: number, lng: number): L.Point => map.project([lat, lng], zoom).subtract(origin);

    const line = (index: number): void => {
      const major = Math.round(index) % 5 === 0;
      ctx.strokeStyle = major ? "rgba(60, 70, 90, 0.28)" : "rgba(60, 70, 90, 0.12)";
      ctx.lineWidth = major ? 1.2 : 1;
    };
    const south = Math.max(se.lat, -85);
    const north = Math.min(nw.lat, 85);
    for (let i = Math.ceil(south / dLat); i * dLat <= north; i++) {
      const y = Math.round(toPx(i * dLat, nw.lng).y) + 0.5;
      line(i);
      ctx.beginPath();
      ctx.moveTo(0, y);
      ctx.lineTo(size.x, y);
      ctx.stroke();
    }
    for (let i = Math.ceil(nw.lng / dLng); i * dLng <= se.lng; i++) {
      const x = Math.round(toPx(nw.lat, i * dLng).x) + 0.5;
      line(i);
      ctx.beginPath();
      ctx.moveTo(x, 0);
      ctx.lineTo(x, size.y);
      ctx.stroke();
    }
    return tile;
  }
}

export function createMap(el: HTMLElement, config: Config): { map: L.Map; layers: L.Control.Layers } {
  const map = L.map(el, { center: config.center, zoom: config.zoom, preferCanvas: false });
  const base: Record<string, L.Layer> = {};
  el.classList.add("no-tiles"); // the plain background shows wherever tiles do not
  const grid = new MetreGrid(config.center[0]);
  if (config.tileUrl) {
    const tiles = L.tileLayer(config.tileUrl, {
      maxZoom: 19,
      attribution: config.tileAttribution ?? "",
    });
    tiles.addTo(map);
    base["Map tiles"] = tiles;
    // Tiles that cannot load (no network): show the metre grid underneath instead of blank.
    tiles.once("tileerror", () => {
      grid.setZIndex(0);
      grid.addTo(map);
    });
  } else {
    grid.addTo(map);
    base["Metre grid"] = grid;
  }
  L.control.scale({ metric: true, imperial: false }).addTo(map);
  const layers = L.control.layers(base, {}, { collapsed: false }).addTo(map);
  return { map, layers };
}

function wrapLng(lng: number): number {
  return ((((lng + 180) % 360) + 360) % 360) - 180;
}

/** A Leaflet box as the API's BoundingBox (longitudes wrapped; may cross the antimeridian). */
export function toBoundingBox(bounds: L.LatLngBounds): BoundingBox {
  const south = Math.max(-90, bounds.getSouth());
  const north = Math.min(90, bounds.getNorth());
  let west = bounds.getWest();
  let east = bounds.getEast();
  if (east - west >= 360) {
    west = -180;
    east = 180;
  } else {
    west = wrapLng(west);
    east = wrapLng(east);
    if (east === -180) east = 180;
  }
  return create(BoundingBoxSchema, {
    southWest: { latitude: south, longitude: west },
    northEast: { latitude: north, longitude: east },
  });
}

/** Calls `onSettled` when the map stops moving for `ms` (and once now). */
export function onMapSettled(map: L.Map, ms: number, onSettled: () => void): void {
  let timer: ReturnType<typeof setTimeout> | undefined;
  map.on("movestart zoomstart", () => clearTimeout(timer));
  map.on("moveend zoomend", () => {
    clearTimeout(timer);
    timer = setTimeout(onSettled, ms);
  });
  onSettled();
}
