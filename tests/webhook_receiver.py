"""A real HTTP/1.1 receiver for webhook tests, on a free loopback port, that fails on purpose."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
from dataclasses import dataclass, field


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def key(self) -> str:
        return self.headers["idempotency-key"]


@dataclass
class Receiver:
    """A tiny HTTP/1.1 server (keep-alive, Content-Length bodies) that records every request.
    `failing` answers 503 to every request, `failing_keys` to those events; `refuse()` closes
    the listening socket and every connection, `accept()` listens on the same port again."""

    port: int = 0
    failing: bool = False
    failing_keys: set[str] = field(default_factory=set)
    delay_s: float = 0.0
    requests: list[Received] = field(default_factory=list)
    overlaps: list[tuple[str, str]] = field(default_factory=list)
    _in_flight: set[tuple[str, str]] = field(default_factory=set)
    _writers: set[asyncio.StreamWriter] = field(default_factory=set)
    _server: asyncio.Server | None = None

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    async def accept(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def refuse(self) -> None:
        assert self._server is not None
        self._server.close()
        for writer in list(self._writers):
            writer.close()
        await self._server.wait_closed()

    def accepted(self, path: str) -> list[str]:
        """Idempotency keys answered 2xx on `path`, in the order they arrived."""
        return [r.key for r in self.requests if r.path == path and r.status == 200]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                await self._one(reader, writer)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the client closed the connection
        finally:
            self._writers.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        path = head[0].split(" ")[1]
        headers = {}
        for line in head[1:]:
            if line:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        flight = (path, headers.get("idempotency-key", ""))
        if flight in self._in_flight:
            self.overlaps.append(flight)
        self._in_flight.add(flight)
        try:
            if self.delay_s:
                await asyncio.sleep(self.delay_s)
            status = 503 if self.failing or flight[1] in self.failing_keys else 200
            self.requests.append(Received(path, headers, body, status))
            writer.write(f"HTTP/1.1 {status} X\r\nContent-Length: 0\r\n\r\n".encode())
            await writer.drain()
        finally:
            self._in_flight.discard(flight)


def verifies(request: Received, secret: str) -> bool:
    """What a receiver does with Ridemesh-Signature (as the webhooks module documents)."""
    fields = dict(part.split("=", 1) for part in request.headers["ridemesh-signature"].split(","))
    expected = hmac.new(
        secret.encode(), fields["t"].encode() + b"." + request.body, hashlib.sha256
    ).hexdigest()
    return hmac.compare_digest(fields["v1"], expected)
