"""The game relay of ``fastpacket demo``, served from your own script: the
built-in relay app (fastpacket.apps.relay: players JOIN rooms and every MOVE
goes to every player of the sender's room) with metrics at /metrics.
``fastpacket serve relay`` does the same from the command line.

    python -m fastpacket.examples.relay [port] [metrics_port]
    fastpacket load --port 7777          # in another terminal
"""

import asyncio
import sys

import fastpacket as fp
from fastpacket.apps.relay import Relay
from fastpacket.metrics import start_http_server


async def main(port, metrics_port):
    registry = fp.Registry()
    relay = Relay(rooms=16)
    server = await fp.aio.serve(host="127.0.0.1", port=port, registry=registry, idle_timeout=60.0,
                                handlers=relay.handlers, on_close=relay.on_close)
    print(f"relay on 127.0.0.1:{server.port}", flush=True)
    if metrics_port is not None:
        metrics = start_http_server(registry, metrics_port)  # prometheus_client's server, in a thread
        print(f"metrics at {metrics.url}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7777,
                     int(sys.argv[2]) if len(sys.argv) > 2 else None))
