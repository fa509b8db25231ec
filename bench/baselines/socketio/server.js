// The seed's design, as a benchmark baseline: a Socket.io relay with the Redis adapter.
//
// Drivers emit `location` fixes; each fix is written to Redis in one pipelined round trip (the live
// geo index, the driver's last state as a hash with the seed's 5-minute TTL), then broadcast to the
// room `driver:<id>` through the Redis adapter (so watchers on any server instance get it), then
// acked to the driver. Watchers join a driver's room with `watch`. No database, as in the seed.
//
// Settings come from the environment: PORT (required), REDIS_URL (default redis://127.0.0.1:6379),
// HOST (default 127.0.0.1). SIGTERM closes the sockets and Redis clients and exits.
"use strict";

const http = require("node:http");
const { Server } = require("socket.io");
const { createAdapter } = require("@socket.io/redis-adapter");
const { createClient } = require("redis");

const LIVE_KEY = "drivers:live"; // GEOADD index of every driver's latest fix
const LIVE_TTL_S = 300; // the seed keeps a driver's last state for 5 minutes

function setting(name, fallback) {
  const value = process.env[name] ?? fallback;
  if (value === undefined) {
    console.error(`server.js: missing setting ${name}`);
    process.exit(2);
  }
  return value;
}

// A wall clock with sub-millisecond resolution (Date.now() has whole milliseconds): the monotonic
// clock offset to the moment Date.now() ticks over.
function wallClock() {
  performance.now(); // loads perf_hooks first: it takes over a millisecond, once
  const start = Date.now();
  while (Date.now() === start); // spins under 1 ms, once
  const origin = Date.now() - performance.now();
  return () => origin + performance.now();
}

function isFix(fix) {
  return (
    fix !== null &&
    typeof fix === "object" &&
    typeof fix.driverId === "string" &&
    fix.driverId.length > 0 &&
    Number.isFinite(fix.lat) &&
    Math.abs(fix.lat) <= 85 &&
    Number.isFinite(fix.lng) &&
    Math.abs(fix.lng) <= 180 &&
    Number.isFinite(fix.seq)
  );
}

function handleSocket(io, store, now, socket) {
  socket.on("location", (fix, ack) => {
    const reply = typeof ack === "function" ? ack : () => {};
    if (!isFix(fix)) {
      reply({ ok: false, error: "invalid fix" });
      return;
    }
    const room = `driver:${fix.driverId}`;
    const receivedAt = now();
    store
      .multi()
      .geoAdd(LIVE_KEY, { longitude: fix.lng, latitude: fix.lat, member: fix.driverId })
      .hSet(room, {
        lat: fix.lat,
        lng: fix.lng,
        heading: fix.heading ?? 0,
        speed: fix.speed ?? 0,
        seq: fix.seq,
        sentAt: fix.sentAt ?? 0,
        receivedAt,
      })
      .expire(room, LIVE_TTL_S)
      .execAsPipeline()
      .then(
        () => {
          io.to(room).emit("location", { ...fix, receivedAt });
          reply({ ok: true, seq: fix.seq });
        },
        (error) => reply({ ok: false, error: String(error) }),
      );
  });
  socket.on("watch", (driverId, ack) => {
    if (typeof driverId === "string" && driverId.length > 0) socket.join(`driver:${driverId}`);
    if (typeof ack === "function") ack({ ok: true });
  });
  socket.on("unwatch", (driverId) => {
    if (typeof driverId === "string") socket.leave(`driver:${driverId}`);
  });
}

async function main() {
  const port = Number(setting("PORT"));
  const host = setting("HOST", "127.0.0.1");
  const url = setting("REDIS_URL", "redis://127.0.0.1:6379");
  const pub = createClient({ url });
  const sub = pub.duplicate();
  const store = pub.duplicate();
  for (const client of [pub, sub, store]) client.on("error", (e) => console.error("redis:", e));
  await Promise.all([pub.connect(), sub.connect(), store.connect()]);

  const httpServer = http.createServer();
  const io = new Server(httpServer, { adapter: createAdapter(pub, sub), serveClient: false });
  const now = wallClock();
  io.on("connection", (socket) => handleSocket(io, store, now, socket));
  httpServer.listen(port, host, () => console.log(`socket.io relay on ${host}:${port}`));

  process.on("SIGTERM", () => {
    io.close(() => {
      Promise.allSettled([pub.quit(), sub.quit(), store.quit()]).then(() => process.exit(0));
    });
    setTimeout(() => process.exit(0), 3000).unref();
  });
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});
