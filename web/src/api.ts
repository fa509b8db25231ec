// Transport, clients, the page's config, the bearer token, and the reconnect loop every stream uses.
import { Code, ConnectError, createClient, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { LocationService } from "./gen/ridemesh/v1/location_service_pb";
import { RideService } from "./gen/ridemesh/v1/ride_service_pb";
import { GeoQueryService } from "./gen/ridemesh/v1/geo_query_service_pb";
import type { Status } from "./status";

export interface Config {
  apiUrl: string | null;
  token: string | null;
  tileUrl: string | null;
  tileAttribution: string | null;
  center: [number, number];
  zoom: number;
  production: boolean;
}

const DEFAULT_CONFIG: Config = {
  apiUrl: null,
  token: null,
  tileUrl: null,
  tileAttribution: null,
  center: [12.9716, 77.5946],
  zoom: 14,
  production: true,
};

/** `config.json` next to the page, over the defaults; `?tiles=<url>` overrides the tile URL. */
export async function loadConfig(): Promise<Config> {
  let loaded: Partial<Config> = {};
  try {
    const res = await fetch("config.json", { cache: "no-store" });
    if (res.ok) loaded = (await res.json()) as Partial<Config>;
    else console.warn(`config.json: HTTP ${res.status}; using defaults`);
  } catch (err) {
    console.warn("config.json could not be read; using defaults", err);
  }
  const config: Config = { ...DEFAULT_CONFIG, ...loaded };
  // Page URL overrides: ?tiles=<url template>, ?center=<lat>,<lng>, ?zoom=<n>.
  const params = new URLSearchParams(window.location.search);
  const tiles = params.get("tiles");
  if (tiles) config.tileUrl = tiles;
  const center = (params.get("center") ?? "").split(",").map(Number);
  const [lat, lng] = center;
  if (center.length === 2 && lat !== undefined && lng !== undefined && Number.isFinite(lat) && Number.isFinite(lng)) {
    config.center = [lat, lng];
  }
  const zoom = Number(params.get("zoom") ?? "");
  if (params.get("zoom") && Number.isFinite(zoom)) config.zoom = zoom;
  return config;
}

const TOKEN_KEY = "ridemesh.token";

/** The bearer token: one pasted into the sign-in form (sessionStorage) wins over config.json's. */
export class Auth {
  private waiters: Array<() => void> = [];
  private refused = false;
  private onNeeded: (reason: string) => void = () => {};

  constructor(private readonly configToken: string | null) {}

  get token(): string | null {
    return sessionStorage.getItem(TOKEN_KEY) ?? this.configToken;
  }

  /** Called with a reason when a token is missing or was refused. */
  set needed(handler: (reason: string) => void) {
    this.onNeeded = handler;
  }

  setToken(token: string): void {
    sessionStorage.setItem(TOKEN_KEY, token.trim());
    this.refused = false;
    const waiters = this.waiters;
    this.waiters = [];
    waiters.forEach((wake) => wake());
  }

  /** The server said UNAUTHENTICATED to `token`: forget it (if pasted) and ask for another. */
  reject(reason: string, token: string | null = this.token): void {
    if (token !== this.token) return; // a newer token was given meanwhile
    sessionStorage.removeItem(TOKEN_KEY);
    this.refused = true;
    this.onNeeded(reason);
  }

  /** Resolves once there is a token not yet refused. */
  ready(): Promise<void> {
    if (this.token && !this.refused) return Promise.resolve();
    if (!this.token) this.onNeeded("sign in with an ops token");
    return new Promise((resolve) => this.waiters.push(resolve));
  }
}

export interface Api {
  baseUrl: string;
  location: Client<typeof LocationService>;
  rides: Client<typeof RideService>;
  geo: Client<typeof GeoQueryService>;
  auth: Auth;
  status: Status;
}

export function createApi(config: Config, auth: Auth, status: Status): Api {
  const bearer: Interceptor = (next) => (req) => {
    const token = auth.token;
    if (token) req.header.set("authorization", `Bearer ${token}`);
    return next(req);
  };
  const baseUrl = config.apiUrl ?? window.location.origin;
  const transport = createGrpcWebTransport({
    baseUrl,
    useBinaryFormat: true,
    interceptors: [bearer],
  });
  return {
    baseUrl,
    location: createClient(LocationService, transport),
    rides: createClient(RideService, transport),
    geo: createClient(GeoQueryService, transport),
    auth,
    status,
  };
}

/** The gRPC name of a code: Code.InvalidArgument → "INVALID_ARGUMENT". */
export function codeName(code: Code): string {
  return (Code[code] ?? String(code)).replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

let knownProtocol: string | null = null;

/**
 * Whether the browser multiplexes calls to the API on one connection (HTTP/2 or HTTP/3). Over
 * HTTP/1.1 (plain http:// in development) a browser opens at most six connections per host and
 * every open stream holds one, so the page must keep its streams few or later calls just queue.
 * Read from Resource Timing once a call has completed; until then, https is taken to mean HTTP/2.
 */
export function multiplexed(baseUrl: string): boolean {
  if (knownProtocol === null) {
    const entries = performance.getEntriesByType("resource") as PerformanceResourceTiming[];
    const seen = entries.filter((e) => e.name.startsWith(baseUrl) && e.nextHopProtocol).pop();
    if (seen) knownProtocol = seen.nextHopProtocol;
  }
  if (knownProtocol !== null) return knownProtocol === "h2" || knownProtocol === "h3";
  return new URL(baseUrl).protocol === "https:";
}

/** "UNAVAILABLE: upstream connect error" rather than "[unavailable] ...". */
export function describeError(err: unknown): string {
  const e = ConnectError.from(err);
  // fetch() itself failed (server down, CORS, offline): connect reports it as UNKNOWN.
  if (e.code === Code.Unknown && e.cause instanceof TypeError) return `network error: ${e.rawMessage}`;
  return `${codeName(e.code)}: ${e.rawMessage}`;
}

export function errorCode(err: unknown): Code {
  return ConnectError.from(err).code;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

const BACKOFF_MIN_MS = 500;
const BACKOFF_MAX_MS = 10_000;
const LIVE_AFTER_MS = 2_000;

/** Capped exponential backoff (0.5 s doubling to 10 s) with jitter: a random wait in [base/2, base]. */
export function backoffMs(attempt: number): number {
  const base = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * 2 ** attempt);
  return base / 2 + Math.random() * (base / 2);
}

export interface StreamOptions {
  /** Codes that are not worth retrying: the stream stops and `onFatal` is told. */
  fatal?: Code[];
  onFatal?: (err: ConnectError) => void;
  /** When the server ends the stream cleanly: return true to stop, false to reconnect. */
  endIsFinal?: () => boolean;
}

export interface StreamHandle {
  stop(): void;
}

/**
 * Keeps a server stream open: opens it, reconnects with backoff when it fails, reports its health
 * to the status bar under `name`, and waits for a new token on UNAUTHENTICATED.
 * `open` must pass `signal` and `onHeader` to the call and consume every message.
 */
export function keepStreaming(
  api: Api,
  name: string,
  open: (opts: { signal: AbortSignal; onHeader: () => void }) => Promise<void>,
  options: StreamOptions = {},
): StreamHandle {
  const controller = new AbortController();
  const signal = controller.signal;
  void (async () => {
    let attempt = 0;
    api.status.opening(name);
    while (!signal.aborted) {
      await api.auth.ready();
      if (signal.aborted) break;
      const token = api.auth.token;
      let live = false;
      const markLive = (): void => {
        if (!live) {
          live = true;
          api.status.live(name);
        }
      };
      const onHeader = (): void => {
        attempt = 0; // the server answered: the next failure starts the backoff afresh
        markLive();
      };
      // Envoy sends a stream's headers with its first message, so a quiet stream (no zone events
      // yet) never calls onHeader: one that has not failed after a moment counts as live.
      const grace = setTimeout(markLive, LIVE_AFTER_MS);
      try {
        await open({ signal, onHeader });
        clearTimeout(grace);
        if (signal.aborted || options.endIsFinal?.()) break;
        markLive(); // ended cleanly but not for good: reconnect soon
        await sleep(backoffMs(0), signal);
        continue;
      } catch (err) {
        clearTimeout(grace);
        if (signal.aborted) break; // stopped by us
        const e = ConnectError.from(err);
        if (e.code === Code.Unauthenticated) {
          api.status.failed(name, describeError(e));
          api.auth.reject(describeError(e), token);
          continue;
        }
        if (options.fatal?.includes(e.code)) {
          options.onFatal?.(e);
          break;
        }
        api.status.failed(name, describeError(e));
        await sleep(backoffMs(attempt), signal);
        attempt += 1;
      }
    }
    api.status.closed(name);
  })();
  return { stop: () => controller.abort() };
}

/** Whether an error means the connection (not the request) failed: the status bar shows those. */
export function isConnectionError(err: unknown): boolean {
  const e = ConnectError.from(err);
  return (
    e.code === Code.Unavailable ||
    e.code === Code.DeadlineExceeded ||
    (e.code === Code.Unknown && e.cause instanceof TypeError)
  );
}

/** Tells the status bar how a polled call went, under `name`. */
export function reportPoll(api: Api, name: string, err?: unknown): void {
  if (err !== undefined && isConnectionError(err)) api.status.failed(name, describeError(err));
  else api.status.live(name);
}

/** Runs `tick` now and every `everyMs` (a number, or asked anew each time) until stopped; a tick
 * never overlaps the previous one. */
export function poll(everyMs: number | (() => number), tick: (signal: AbortSignal) => Promise<void>): StreamHandle {
  const controller = new AbortController();
  void (async () => {
    while (!controller.signal.aborted) {
      try {
        await tick(controller.signal);
      } catch (err) {
        if (!controller.signal.aborted) console.warn("poll", err);
      }
      await sleep(typeof everyMs === "number" ? everyMs : everyMs(), controller.signal);
    }
  })();
  return { stop: () => controller.abort() };
}
