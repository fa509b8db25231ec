// The Ridemesh live map: wires config, token, map and the live feeds together.
import "./style.css";
import { Auth, createApi, loadConfig } from "./api";
import { Status } from "./status";
import { createMap } from "./map";
import { Drivers, watchVisibleDrivers } from "./drivers";
import { DriverPanel } from "./panel";
import { addTrackDownloads } from "./exports";
import { Rides } from "./rides";
import { EventFeed, Zones, watchZoneEvents } from "./zones";
import { Webhooks } from "./webhooks";
import { Heatmap } from "./heatmap";
import { Replay } from "./replay";

function byId<T extends HTMLElement = HTMLElement>(id: string): T {
  const el = document.getElementById(id);
  if (!el) throw new Error(`#${id} is missing from index.html`);
  return el as T;
}

/** The sign-in form: shown when there is no token or the server refused it. */
function setUpSignIn(auth: Auth): void {
  const form = byId<HTMLFormElement>("signin");
  const input = byId<HTMLTextAreaElement>("signin-token");
  const reason = byId("signin-reason");
  auth.needed = (why) => {
    reason.textContent = why;
    form.hidden = false;
    input.focus();
  };
  form.addEventListener("submit", (event) => {
    event.preventDefault();
    const token = input.value.trim().replace(/^Bearer\s+/i, "");
    if (!token) return;
    input.value = "";
    form.hidden = true;
    auth.setToken(token);
  });
}

/** Small notes over the map ("zoom in to see drivers", heatmap skipped…), one per source. */
function notes(): (source: string) => (note: string | null) => void {
  const el = byId("map-notes");
  const current = new Map<string, string>();
  return (source) => (note) => {
    if (note === null) current.delete(source);
    else current.set(source, note);
    el.replaceChildren(
      ...[...current.values()].map((text) => {
        const p = document.createElement("p");
        p.textContent = text;
        return p;
      }),
    );
    el.hidden = current.size === 0;
  };
}

async function main(): Promise<void> {
  const config = await loadConfig();
  const auth = new Auth(config.token);
  setUpSignIn(auth);
  const status = new Status(byId("status"));
  const api = createApi(config, auth, status);
  const { map, layers } = createMap(byId("map"), config);
  const note = notes();

  let panel: DriverPanel | null = null;
  const drivers = new Drivers(map, byId("driver-count"), (id) => panel?.follow(id));
  panel = new DriverPanel(api, map, drivers, byId("driver-panel"));
  addTrackDownloads(api, byId("driver-panel"));
  watchVisibleDrivers(api, map, drivers, note("drivers"));
  new Zones(api, map, layers).start();
  const feed = new EventFeed(byId("zone-events"));
  watchZoneEvents(api, feed);
  new Rides(api, byId("rides"), byId("rides-error"), feed).start();
  new Webhooks(api, byId("webhooks")).start();
  new Heatmap(api, map, layers, note("heatmap")).start();
  const replay = new Replay(api, map, byId("replay-panel"));

  Object.assign(window, { ridemesh: { config, map, drivers, panel, status, replay } });
}

main().catch((err: unknown) => {
  console.error(err);
  const status = document.getElementById("status");
  if (status) status.textContent = `failed to start: ${String(err)}`;
});
