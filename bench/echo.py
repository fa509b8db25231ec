"""The ceiling of the Python gRPC stack: a bare grpc.aio server whose StreamLocations answers
every fix at once with an ack (no validation, no tokens, no Redis, no persistence). Driven by the
same load generator as LocationService, its CPU per fix is the floor ours is compared with.

    .venv/bin/python -m bench.echo --port 50099
"""

from __future__ import annotations

import argparse
import asyncio
import signal
from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from ridemesh.v1 import location_service_pb2 as pb
from ridemesh.v1 import location_service_pb2_grpc as pb_grpc


class EchoLocation(pb_grpc.LocationServiceServicer):
    """Acks each fix as accepted and durable the moment it arrives."""

    async def StreamLocations(
        self, request_iterator: AsyncIterator[pb.StreamLocationsRequest], context: Any
    ) -> AsyncIterator[pb.StreamLocationsResponse]:
        async for request in request_iterator:
            seq = request.update.seq
            yield pb.StreamLocationsResponse(ack=pb.LocationAck(seq=seq, durable_seq=seq))


async def serve(port: int) -> None:
    server = aio.server(options=[("grpc.max_concurrent_streams", 100_000)])
    # Only StreamLocations is implemented; grpc answers UNIMPLEMENTED for the rest.
    pb_grpc.add_LocationServiceServicer_to_server(EchoLocation(), server)  # type: ignore[abstract]
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"echo listening on 127.0.0.1:{port}", flush=True)
    await stop.wait()
    await server.stop(1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
