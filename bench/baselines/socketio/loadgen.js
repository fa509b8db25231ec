// One Socket.io load-generator process: driver sockets emitting fixes, watcher sockets on 5% of them.
//
// The same load shape as bench/loadgen.py: drivers are global indexes split round-robin over the
// workers (this one owns i % workers == worker), opened at a bounded rate from a shared start time,
// each emitting a fix every interval from a random phase until the window ends. Every driver and
// every watcher is its own WebSocket connection, as each would be its own device. Acks are timed
// on the monotonic clock; fix-to-watcher latency is the watcher's wall clock minus the fix's
// `sentAt` (same host, one clock). Prints ONE JSON line; --out also writes it with the raw samples.
//
//   node loadgen.js --urls http://127.0.0.1:PORT[,...] --drivers 1000 --interval 4 --duration 60
"use strict";

const fs = require("node:fs");
const { parseArgs } = require("node:util");
const { io } = require("socket.io-client");

const { values: args } = parseArgs({
  options: {
    urls: { type: "string" },
    drivers: { type: "string", default: "100" },
    worker: { type: "string", default: "0" },
    workers: { type: "string", default: "1" },
    interval: { type: "string", default: "4" },
    duration: { type: "string", default: "60" },
    "start-at": { type: "string" }, // wall-clock ms shared by all workers
    "open-rate": { type: "string", default: "200" }, // sockets per second, across all workers
    "watch-percent": { type: "string", default: "5" },
    drain: { type: "string", default: "5" }, // seconds to wait for the last acks
    "run-id": { type: "string", default: Math.random().toString(16).slice(2, 10) },
    out: { type: "string" },
  },
});
if (!args.urls) {
  console.error("loadgen.js: --urls is required");
  process.exit(2);
}
const urls = args.urls.split(",");
const drivers = Number(args.drivers);
const worker = Number(args.worker);
const workers = Number(args.workers);
const intervalMs = Number(args.interval) * 1000;
const openRate = Number(args["open-rate"]);
const watchPercent = Number(args["watch-percent"]);
const watchEvery = watchPercent > 0 ? Math.max(1, Math.round(100 / watchPercent)) : 0;

// A wall clock with sub-millisecond resolution: the monotonic clock offset to the moment
// Date.now() ticks over (Date.now() alone has whole milliseconds).
const now = (() => {
  performance.now(); // loads perf_hooks first: it takes over a millisecond, once
  const start = Date.now();
  while (Date.now() === start); // spins under 1 ms, once
  const origin = Date.now() - performance.now();
  return () => origin + performance.now();
})();

const startAt = args["start-at"] ? Number(args["start-at"]) : now() + 1000;
const endAt = startAt + Number(args.duration) * 1000;
// Fixes sent after every worker has opened all its sockets also count in the *_steady samples.
const steadyAt = startAt + (drivers / openRate) * 1000;

const result = {
  drivers: 0,
  watchers: 0,
  connected: 0, // driver sockets that connected at least once
  held: 0, // driver sockets still connected when the window ended
  fixes_sent: 0,
  fixes_acked: 0,
  watch_updates: 0,
  connect_failures: 0,
  errors: {},
};
const samples = {
  ack_ms: [],
  watch_ms: [],
  watch_from_server_ms: [],
  ack_ms_steady: [],
  watch_ms_steady: [],
  client_loop_lag_ms: [],
};
let outstanding = 0; // fixes sent and not yet answered
let windowClosed = false;
let closing = false;

const sleepUntil = (wallMs) => new Promise((done) => setTimeout(done, Math.max(0, wallMs - now())));

function countError(key) {
  result.errors[key] = (result.errors[key] ?? 0) + 1;
}

// Same rule as bench/stream.py's percentiles(), so the figures compare.
function percentiles(values) {
  if (values.length === 0) return { count: 0, p50: null, p99: null, max: null };
  const ordered = Float64Array.from(values).sort();
  const at = (q) => ordered[Math.min(ordered.length - 1, Math.floor(q * ordered.length))];
  const round = (x) => Math.round(x * 100) / 100;
  return { count: ordered.length, p50: round(at(0.5)), p99: round(at(0.99)), max: round(at(1)) };
}

function open(url, onFailure) {
  const socket = io(url, {
    transports: ["websocket"], // a device's steady state; skips the long-polling handshake
    forceNew: true, // one connection per socket, as one per device
    reconnection: false, // a failure is counted, not hidden (the gRPC harness does not reconnect)
    timeout: 20000,
  });
  socket.on("connect_error", (error) => {
    result.connect_failures += 1;
    countError(`connect_error: ${error.message}`.slice(0, 120));
    onFailure();
  });
  socket.on("disconnect", (reason) => {
    if (!closing) countError(`disconnect: ${reason}`);
    onFailure();
  });
  return socket;
}

class Driver {
  constructor(id, url) {
    this.id = id;
    this.seq = 0;
    this.failed = false;
    this.socket = open(url, () => {
      this.failed = true;
    });
    this.socket.once("connect", () => {
      result.connected += 1;
    });
  }

  sendFix() {
    this.seq += 1;
    const fix = {
      driverId: this.id,
      lat: 12.97 + (Math.random() - 0.5) * 0.1,
      lng: 77.59,
      heading: 90,
      speed: 8,
      seq: this.seq,
      sentAt: now(),
    };
    const sent = performance.now();
    outstanding += 1;
    result.fixes_sent += 1;
    this.socket.emit("location", fix, (reply) => {
      outstanding -= 1;
      if (reply && reply.ok) {
        result.fixes_acked += 1;
        const ms = performance.now() - sent;
        samples.ack_ms.push(ms);
        if (fix.sentAt >= steadyAt) samples.ack_ms_steady.push(ms);
      } else {
        countError(`rejected: ${reply && reply.error}`.slice(0, 120));
      }
    });
  }
}

function watch(driverId, url) {
  const socket = open(url, () => {});
  socket.on("connect", () => socket.emit("watch", driverId));
  socket.on("location", (fix) => {
    const t = now();
    samples.watch_ms.push(t - fix.sentAt);
    if (fix.sentAt >= steadyAt) samples.watch_ms_steady.push(t - fix.sentAt);
    samples.watch_from_server_ms.push(t - fix.receivedAt);
    result.watch_updates += 1;
  });
  return socket;
}

// A fix every interval from `first` until the window ends (as bench/loadgen.py's drive()).
async function drive(driver, first) {
  for (let next = first; next < endAt && !driver.failed; next += intervalMs) {
    await sleepUntil(next);
    if (windowClosed) return;
    driver.sendFix();
  }
}

// How late this process's event loop wakes from 10 ms sleeps: the load generator's own lag.
async function probeLag() {
  while (now() < endAt) {
    const before = performance.now();
    await new Promise((done) => setTimeout(done, 10));
    samples.client_loop_lag_ms.push(performance.now() - before - 10);
  }
}

async function main() {
  const fleet = [];
  const watchers = [];
  const probe = probeLag();
  for (let i = worker; i < drivers; i += workers) {
    const openedAt = startAt + (i / openRate) * 1000;
    await sleepUntil(openedAt);
    const driver = new Driver(`sio-${args["run-id"]}-${i}`, urls[i % urls.length]);
    fleet.push(driver);
    if (watchEvery && i % watchEvery === 0) {
      // On another instance when there are several, so the fix crosses the Redis adapter.
      watchers.push(watch(driver.id, urls[(i + 1) % urls.length]));
    }
    drive(driver, openedAt + Math.random() * intervalMs);
  }
  result.drivers = fleet.length;
  result.watchers = watchers.length;
  await sleepUntil(endAt);
  windowClosed = true;
  result.held = fleet.filter((d) => d.socket.connected).length;
  const drainUntil = now() + Number(args.drain) * 1000;
  while (outstanding > 0 && now() < drainUntil) await sleepUntil(now() + 50);
  await probe;
  closing = true;
  for (const socket of [...fleet.map((d) => d.socket), ...watchers]) socket.close();

  const summary = { ...result };
  for (const [name, values] of Object.entries(samples)) summary[name] = percentiles(values);
  if (args.out) fs.writeFileSync(args.out, JSON.stringify({ ...result, samples }));
  process.stdout.write(`${JSON.stringify(summary)}\n`, () => process.exit(0));
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
