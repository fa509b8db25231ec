// One load-generator process on @grpc/grpc-js: bench/loadgen.py's load, for less of its own CPU.
//
// Reads a LoadPlan as JSON (bench/loadgen.py's field names; start_at in wall-clock seconds) and
// writes a LoadResult as JSON (the same field names; latencies in ms) that bench/stream.py merges
// with the others. What it does is bench/loadgen.py's, step for step: one StreamLocations stream
// per driver as that driver, streams_per_channel streams per client (each its own TCP connection),
// WatchDriver on the watched drivers and WatchArea per box with the ops token, then half-close
// and drain. Ack and durable times are on the monotonic clock; watcher latency is this process's
// wall clock minus the fix's recorded_at (one host, one clock).
//
//   node bench/grpcjs/loadgen.js --plan plan.json --out result.json
"use strict";

const fs = require("node:fs");
const path = require("node:path");
const { parseArgs } = require("node:util");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

// After the load window each driver closes its side and waits this long for the final durable ack.
const DRAIN_S = 15;
// Separate subchannel pools so each client is its own TCP connection to Envoy.
const CHANNEL_OPTIONS = { "grpc.use_local_subchannel_pool": 1 };
// Drivers report positions in this band (latitude) at one longitude, as in bench/loadgen.py.
const LAT_LOW = 12.92;
const LAT_HIGH = 13.02;
const LNG = 77.59;
// Each driver drives up and down the band at this speed, so its fixes pass the server's
// plausible-speed filter however closely they follow each other, as a real car's do.
const SPEED_MPS = 8;
const PROTOS = path.resolve(__dirname, "..", "..", "protos");

// A wall clock in ms with sub-millisecond resolution: the monotonic clock offset to the moment
// Date.now() ticks over (Date.now() alone has whole milliseconds).
const now = (() => {
  performance.now(); // loads perf_hooks first: it takes over a millisecond, once
  const start = Date.now();
  while (Date.now() === start); // spins under 1 ms, once
  const origin = Date.now() - performance.now();
  return () => origin + performance.now();
})();

const sleepUntil = (wallMs) => new Promise((done) => setTimeout(done, Math.max(0, wallMs - now())));
const timestampMs = (t) => t.seconds * 1000 + t.nanos / 1e6; // longs: Number, so seconds is one
const bearer = (token) => {
  const metadata = new grpc.Metadata();
  metadata.set("authorization", `Bearer ${token}`);
  return metadata;
};

function loadService() {
  const definition = protoLoader.loadSync("ridemesh/v1/location_service.proto", {
    includeDirs: [PROTOS],
    keepCase: true, // field names as in the proto (and bench/loadgen.py)
    longs: Number, // int64 seq and Timestamp seconds, both well inside 2^53
    oneofs: true, // response.kind names the field that is set
  });
  return grpc.loadPackageDefinition(definition).ridemesh.v1.LocationService;
}

function emptyResult() {
  return {
    streams_opened: 0,
    streams_held: 0, // open and not failed at the end of the load window
    fixes_sent: 0,
    fixes_acked: 0,
    fixes_durable: 0,
    rejected: {},
    errors: {},
    ack_ms: [],
    durable_ms: [],
    watch_ms: [],
    watch_from_server_ms: [], // the part of watch_ms after LocationService stamped received_at
    client_lag_ms: [], // how late this process's event loop woke from 10 ms sleeps
    watchers: 0,
    watch_updates: 0,
    area_ms: [], // WatchArea: fix-to-watcher latency of fixes recorded after the watch began
    area_watchers: 0,
    area_updates: 0,
  };
}

const count = (counter, key) => {
  counter[key] = (counter[key] ?? 0) + 1;
};
// Keyed like bench/loadgen.py's: "driver UNAVAILABLE: details", at most 120 characters.
const errorKey = (kind, error) => `${kind} ${grpc.status[error.code]}: ${error.details}`.slice(0, 120);

// One driver app: a fix every interval, each seq's send time kept until acked and durable.
class Driver {
  constructor(driverId, token, client, result, start) {
    this.driverId = driverId;
    this.result = result;
    this.sent = new Map(); // seq -> monotonic send time (ms)
    this.acked = 0;
    this.durable = 0;
    this.seq = 0;
    // `start` of the way up the band: the run's drivers are spread evenly, so every area box
    // holds some even in a small run.
    this.latitude = LAT_LOW + start * (LAT_HIGH - LAT_LOW);
    this.north = Math.random() < 0.5;
    this.at = Date.now();
    this.failed = false;
    this.closed = false;
    this.cancelled = false;
    this.call = client.StreamLocations(bearer(token));
    // Settles when the server ends the stream (OK or not): the drain waits for these.
    this.ended = new Promise((done) => this.call.on("status", done));
    this.call.on("data", (response) => this.onResponse(response));
    this.call.on("error", (error) => {
      this.failed = true;
      if (!this.cancelled) count(result.errors, errorKey("driver", error));
    });
  }

  sendFix() {
    this.seq += 1;
    const moved = (SPEED_MPS * (Date.now() - this.at)) / 1000 / 111195;
    if (this.latitude + moved > LAT_HIGH) this.north = false;
    if (this.latitude - moved < LAT_LOW) this.north = true;
    this.latitude += this.north ? moved : -moved;
    this.at = Date.now();
    const wall = now(); // recorded_at is the send time on this machine's wall clock
    const seconds = Math.floor(wall / 1000);
    const update = {
      driver_id: this.driverId,
      position: { latitude: this.latitude, longitude: LNG },
      heading_deg: this.north ? 0 : 180,
      speed_mps: SPEED_MPS,
      accuracy_m: 5,
      seq: this.seq,
      recorded_at: { seconds, nanos: Math.min(999999999, Math.round((wall - seconds * 1000) * 1e6)) },
    };
    this.sent.set(this.seq, performance.now());
    this.call.write({ update });
    this.result.fixes_sent += 1;
  }

  close() {
    this.closed = true;
    this.call.end(); // half-close: the server answers what it has, then ends the stream
  }

  cancel() {
    this.cancelled = true; // past the drain: not an error, as bench/loadgen.py's task.cancel()
    this.call.cancel();
  }

  onResponse(response) {
    if (response.kind === "ack") {
      this.onAck(response.ack, performance.now());
    } else if (response.kind === "rejected") {
      count(this.result.rejected, `code ${response.rejected.code ?? 0}`);
      this.sent.delete(response.rejected.seq ?? 0);
    }
  }

  // An ack's seq covers every fix up to it; its durable_seq every durable fix up to that.
  onAck(ack, t) {
    const result = this.result;
    const seq = ack.seq ?? 0;
    const durableSeq = ack.durable_seq ?? 0;
    for (let s = this.acked + 1; s <= seq; s++) {
      const sent = this.sent.get(s);
      if (sent !== undefined) {
        result.ack_ms.push(t - sent);
        result.fixes_acked += 1;
      }
    }
    this.acked = Math.max(this.acked, seq);
    for (let s = this.durable + 1; s <= durableSeq; s++) {
      const sent = this.sent.get(s);
      if (sent !== undefined) {
        this.sent.delete(s);
        result.durable_ms.push(t - sent);
        result.fixes_durable += 1;
      }
    }
    this.durable = Math.max(this.durable, durableSeq);
  }
}

// A fix every interval (from a random phase, so sends are spread) until the load window ends.
async function drive(driver, first, plan) {
  const end = (plan.start_at + plan.duration_s) * 1000;
  for (let next = first; next < end && !driver.failed; next += plan.interval_s * 1000) {
    await sleepUntil(next);
    if (driver.closed) return; // the window ended while this one slept: nothing more to send
    driver.sendFix();
  }
}

// Fix-to-watcher latency: receive time minus the fix's recorded_at (the driver's send time).
function watch(driverId, client, token, result) {
  const call = client.WatchDriver({ driver_id: driverId }, bearer(token));
  call.on("data", (response) => {
    const t = now();
    result.watch_ms.push(t - timestampMs(response.location.recorded_at));
    result.watch_from_server_ms.push(t - timestampMs(response.location.received_at));
    result.watch_updates += 1;
  });
  call.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) count(result.errors, errorKey("watch", error));
  });
  return call;
}

// WatchArea latency: the snapshot's old fixes are skipped, later ones measured like WatchDriver's.
function watchArea([south, west, north, east], client, token, result) {
  const bounds = {
    south_west: { latitude: south, longitude: west },
    north_east: { latitude: north, longitude: east },
  };
  const began = now();
  const call = client.WatchArea({ bounds }, bearer(token));
  call.on("data", (response) => {
    const recorded = timestampMs(response.location.recorded_at);
    if (recorded >= began && !response.exited) {
      result.area_ms.push(now() - recorded);
      result.area_updates += 1;
    }
  });
  call.on("error", (error) => {
    if (error.code !== grpc.status.CANCELLED) count(result.errors, errorKey("area", error));
  });
  return call;
}

// Samples event-loop lag every 10 ms until the wall-clock time `until` (ms).
async function probeLag(result, until) {
  while (now() < until) {
    const before = performance.now();
    await new Promise((done) => setTimeout(done, 10));
    result.client_lag_ms.push(performance.now() - before - 10);
  }
}

async function runPlan(plan, LocationService) {
  const result = emptyResult();
  const end = (plan.start_at + plan.duration_s) * 1000;
  const credentials = grpc.credentials.createInsecure();
  const clients = [];
  for (let n = 0; n < plan.drivers.length; n += plan.streams_per_channel) {
    clients.push(new LocationService(plan.address, credentials, CHANNEL_OPTIONS));
  }
  const watched = new Set(plan.watched);
  const drivers = [];
  const watchers = [];
  const probe = probeLag(result, end);
  if (plan.area_boxes.length > 0 && clients.length > 0) {
    await sleepUntil(plan.start_at * 1000);
    for (const box of plan.area_boxes) {
      watchers.push(watchArea(box, clients[0], plan.token, result));
      result.area_watchers += 1;
    }
  }
  for (const [n, index] of plan.drivers.entries()) {
    const openedAt = (plan.start_at + index / plan.open_rate) * 1000;
    await sleepUntil(openedAt);
    const client = clients[Math.floor(n / plan.streams_per_channel)];
    const token = plan.driver_tokens[String(index)];
    const start = (index + 0.5) / Math.max(plan.drivers_total ?? 1, index + 1);
    const driver = new Driver(`bench-${plan.run_id}-${index}`, token, client, result, start);
    if (watched.has(index)) {
      watchers.push(watch(driver.driverId, client, plan.token, result));
      result.watchers += 1;
    }
    drivers.push(driver);
    drive(driver, openedAt + Math.random() * plan.interval_s * 1000, plan);
    result.streams_opened += 1;
  }
  await sleepUntil(end);
  result.streams_held = drivers.filter((d) => !d.failed).length;
  for (const driver of drivers) driver.close();
  let drained;
  const drainTimer = new Promise((done) => {
    drained = setTimeout(done, DRAIN_S * 1000);
  });
  await Promise.race([Promise.all(drivers.map((d) => d.ended)), drainTimer]);
  clearTimeout(drained);
  await probe;
  for (const driver of drivers) driver.cancel(); // a no-op on the streams that ended
  for (const call of watchers) call.cancel();
  for (const client of clients) client.close();
  return result;
}

async function main() {
  const { values: args } = parseArgs({
    options: { plan: { type: "string" }, out: { type: "string" } },
  });
  if (!args.plan || !args.out) {
    console.error("loadgen.js: --plan PLAN.json and --out RESULT.json are required");
    process.exit(2);
  }
  const plan = JSON.parse(fs.readFileSync(args.plan, "utf8"));
  const result = await runPlan(plan, loadService());
  fs.writeFileSync(args.out, JSON.stringify(result));
  process.exit(0); // any call grpc-js still tears down is of no interest now
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
