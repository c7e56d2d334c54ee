"""The server tests/test_hostile.py attacks, as its own process (its memory
is measured alone): ``python -m tests.hostile_server LOOP`` serves
fastpacket.apps.echo on 127.0.0.1 with zlib aggregation and tight limits,
prints ``READY <port> <pid>``, then one JSON line per closed session
(``{"peer": port, "reason": text}``); a ``stats`` line on stdin answers with
a JSON line of server.closes, server.drops and the open sessions."""

from __future__ import annotations

import asyncio
import json
import os
import sys

import fastpacket as fp
from fastpacket import aio
from fastpacket.apps.echo import echo
from fastpacket.system import new_event_loop

#: The limits under attack (issue 14's campaign used such, with --compress;
#: max_packet_size above the ~1.1 KB of a zlib bomb declaring 1 MiB, so that
#: the bombs reach the inflate budget, as they did the campaign's server).
OPTIONS = dict(max_packet_size=4096, idle_timeout=1.0, write_timeout=1.0, max_pending_bytes=256 << 10)
#: Bodies from this many bytes are compressed by the server's aggregator.
COMPRESS_THRESHOLD = 256


def aggregator() -> fp.Aggregator:
    """The aggregator of the server and of its well-behaved clients."""
    return fp.Aggregator("zlib", threshold=COMPRESS_THRESHOLD)


async def main() -> None:
    loop = asyncio.get_running_loop()

    def on_connect(session: aio.Session) -> None:
        session.peer_port = session.peername[1]  # kept: the transport is gone by on_close

    def on_close(session: aio.Session) -> None:
        print(json.dumps({"peer": session.peer_port, "reason": session.close_reason}), flush=True)

    server = await aio.serve(echo, "127.0.0.1", 0, on_connect=on_connect, on_close=on_close,
                             aggregator=aggregator(), **OPTIONS)
    done = asyncio.Event()

    def command() -> None:
        line = sys.stdin.readline()
        if not line or line.strip() == "quit":
            done.set()
        elif line.strip() == "stats":
            print(json.dumps({"stats": {"closes": server.closes, "drops": server.drops,
                                        "sessions": len(server.sessions)}}), flush=True)

    loop.add_reader(sys.stdin.fileno(), command)
    print(f"READY {server.port} {os.getpid()}", flush=True)
    await done.wait()
    loop.remove_reader(sys.stdin.fileno())
    await server.shutdown(1.0)


if __name__ == "__main__":
    event_loop = new_event_loop(sys.argv[1] if len(sys.argv) > 1 else "asyncio")
    try:
        event_loop.run_until_complete(main())
    finally:
        event_loop.close()
