// The rides list: ListRides polled every 3 s (every ride, as ops), and WatchRide per shown ride,
// whose proximity events (driver approaching, at or leaving the pickup, near the drop-off) go to
// the page's event feed.
import { timestampMs } from "@bufbuild/protobuf/wkt";
import { Code } from "@connectrpc/connect";
import { describeError, errorCode, keepStreaming, multiplexed, poll, reportPoll, type Api, type StreamHandle } from "./api";
import { RideEventKind, RideState, type Ride, type RideEvent } from "./gen/ridemesh/v1/ride_service_pb";
import type { EventFeed } from "./zones";

const ACTIVE_STATES = [RideState.REQUESTED, RideState.DRIVER_ASSIGNED, RideState.DRIVER_ARRIVED, RideState.IN_PROGRESS];
const FINAL_STATES = new Set([RideState.COMPLETED, RideState.CANCELLED, RideState.EXPIRED]);
const POLL_MS = 3_000;
const MAX_ROWS = 30;
/** WatchRide streams at once over HTTP/2; over HTTP/1.1 only two (see `multiplexed`), which with
 * WatchArea, WatchGeofenceEvents and WatchDriver leaves one of the browser's six connections for
 * the polls. Rows without a stream still change state with every ListRides poll. */
const MAX_WATCHES_H2 = 25;
const MAX_WATCHES_H1 = 2;
const KEEP_FINISHED_MS = 30_000;

export function rideStateName(state: RideState): string {
  return RideState[state] ?? "UNSPECIFIED";
}

interface Row {
  ride: Ride;
  li: HTMLLIElement;
  statesSeen: string[];
  watch: StreamHandle | null;
  finishedAt: number | null;
  unwatchable: boolean;
}

export class Rides {
  private readonly rows = new Map<string, Row>();

  constructor(
    private readonly api: Api,
    private readonly list: HTMLElement,
    private readonly errorEl: HTMLElement,
    private readonly feed: EventFeed,
  ) {}

  start(): StreamHandle {
    return poll(POLL_MS, (signal) => this.refresh(signal));
  }

  private async refresh(signal: AbortSignal): Promise<void> {
    await this.api.auth.ready();
    let rides: Ride[];
    try {
      const res = await this.api.rides.listRides({ states: ACTIVE_STATES, pageSize: 50 }, { signal });
      rides = res.rides;
      this.showError(null);
      reportPoll(this.api, "ListRides");
    } catch (err) {
      if (signal.aborted) return;
      reportPoll(this.api, "ListRides", err);
      if (errorCode(err) === Code.Unauthenticated) this.api.auth.reject(describeError(err));
      this.showError(`ListRides failed: ${describeError(err)}`);
      this.sweep();
      return;
    }
    const listed = new Set<string>();
    for (const ride of rides) {
      listed.add(ride.rideId);
      this.upsert(ride);
    }
    // A shown ride that left the active list without a stream to tell us: read its final state.
    for (const row of this.rows.values()) {
      if (!listed.has(row.ride.rideId) && !row.watch && row.finishedAt === null) {
        this.api.rides
          .getRide({ rideId: row.ride.rideId }, { signal })
          .then((res) => res.ride && this.upsert(res.ride))
          .catch(() => {});
      }
    }
    this.sweep();
  }

  private upsert(ride: Ride): void {
    let row = this.rows.get(ride.rideId);
    if (!row) {
      const li = document.createElement("li");
      li.className = "ride";
      li.dataset.rideId = ride.rideId;
      row = { ride, li, statesSeen: [], watch: null, finishedAt: null, unwatchable: false };
      this.rows.set(ride.rideId, row);
    }
    // A poll answered just before a transition must not move the row back.
    if (updatedMs(ride) < updatedMs(row.ride) || (row.finishedAt !== null && !FINAL_STATES.has(ride.state))) return;
    row.ride = ride;
    const state = rideStateName(ride.state);
    if (row.statesSeen[row.statesSeen.length - 1] !== state) row.statesSeen.push(state);
    if (FINAL_STATES.has(ride.state) && row.finishedAt === null) {
      row.finishedAt = Date.now();
      row.watch?.stop();
      row.watch = null;
    }
    this.render(row);
  }

  private render(row: Row): void {
    const { ride, li } = row;
    const state = rideStateName(ride.state);
    li.dataset.state = state;
    li.dataset.statesSeen = row.statesSeen.join(" ");
    li.classList.toggle("finished", row.finishedAt !== null);
    const who = ride.driverId ? `${ride.riderId} → ${ride.driverId}` : ride.riderId;
    li.replaceChildren(span("state", state.replaceAll("_", " ").toLowerCase()), span("id", ride.rideId), span("who", who));
  }

  /** Newest first, at most MAX_ROWS; finished rides go after a while; watch the newest active ones. */
  private sweep(): void {
    const now = Date.now();
    for (const [id, row] of this.rows) {
      if (row.finishedAt !== null && now - row.finishedAt > KEEP_FINISHED_MS) this.drop(id);
    }
    const ordered = [...this.rows.values()].sort((a, b) => createdMs(b.ride) - createdMs(a.ride));
    for (const row of ordered.slice(MAX_ROWS)) this.drop(row.ride.rideId);
    const shown = ordered.slice(0, MAX_ROWS);
    const maxWatches = multiplexed(this.api.baseUrl) ? MAX_WATCHES_H2 : MAX_WATCHES_H1;
    let watching = 0;
    for (const row of shown) {
      if (!row.watch) continue;
      if (watching < maxWatches) watching += 1;
      else {
        row.watch.stop(); // over budget (the budget shrank once the protocol was known)
        row.watch = null;
      }
    }
    // Streams already open stay while their row is shown; free ones go to the newest rides.
    for (const row of shown) {
      if (watching >= maxWatches) break;
      if (!row.watch && !row.unwatchable && row.finishedAt === null) {
        row.watch = this.watch(row);
        watching += 1;
      }
    }
    const current = [...this.list.children];
    if (shown.length !== current.length || shown.some((row, i) => row.li !== current[i])) {
      this.list.replaceChildren(...shown.map((row) => row.li));
    }
  }

  private watch(row: Row): StreamHandle {
    const rideId = row.ride.rideId;
    return keepStreaming(
      this.api,
      `WatchRide ${rideId}`,
      async ({ signal, onHeader }) => {
        for await (const res of this.api.rides.watchRide({ rideId }, { signal, onHeader })) {
          onHeader();
          if (res.ride) this.upsert(res.ride);
          if (res.event) this.feed.add(rideEventRow(res.event));
        }
      },
      {
        endIsFinal: () => row.finishedAt !== null || !this.rows.has(rideId),
        fatal: [Code.NotFound, Code.PermissionDenied],
        onFatal: () => {
          row.watch = null;
          row.unwatchable = true; // not worth reopening every poll; the poll keeps it current
        },
      },
    );
  }

  private drop(rideId: string): void {
    const row = this.rows.get(rideId);
    row?.watch?.stop();
    row?.li.remove();
    this.rows.delete(rideId);
  }

  private showError(message: string | null): void {
    this.errorEl.hidden = message === null;
    this.errorEl.textContent = message ?? "";
  }
}

const KINDS: Partial<Record<RideEventKind, string>> = {
  [RideEventKind.APPROACHING_PICKUP]: "APPROACHING_PICKUP",
  [RideEventKind.AT_PICKUP]: "AT_PICKUP",
  [RideEventKind.LEFT_PICKUP]: "LEFT_PICKUP",
  [RideEventKind.APPROACHING_DROPOFF]: "APPROACHING_DROPOFF",
};

function rideEventRow(event: RideEvent): HTMLLIElement {
  const kind = KINDS[event.kind] ?? "UNSPECIFIED";
  const li = document.createElement("li");
  li.className = "ride-event";
  li.dataset.kind = kind;
  li.dataset.rideId = event.rideId;
  li.dataset.driverId = event.driverId;
  const at = event.eventTime ? new Date(timestampMs(event.eventTime)) : new Date();
  li.append(
    span("time", at.toLocaleTimeString([], { hour12: false })),
    span("kind", kind.toLowerCase().replace("_", " ")),
    span("driver-id", event.driverId),
    span("distance", `${Math.round(event.distanceM)} m`),
  );
  return li;
}

function updatedMs(ride: Ride): number {
  return ride.updateTime ? timestampMs(ride.updateTime) : 0;
}

function createdMs(ride: Ride): number {
  return ride.createTime ? timestampMs(ride.createTime) : 0;
}

function span(className: string, text: string): HTMLSpanElement {
  const el = document.createElement("span");
  el.className = className;
  el.textContent = text;
  return el;
}
