#!/usr/bin/env python3
"""The memory figures of issue 14 against the server tests/test_hostile.py
attacks (tests/hostile_server.py: echo, zlib aggregation, tight limits), with
a well-behaved client checking its echoes byte for byte all along:

    python tools/hostile_figures.py bad --connections 100000 [--uvloop]
    python tools/hostile_figures.py bombs [--uvloop]

``bad`` opens that many connections, each announcing a distinct oversize
length, and prints the server's RSS before and after and its closes by
class. ``bombs`` sends one 64 KiB write of zlib frames of about 1.1 KB each
declaring 1 MiB (refused before decompressing), then 30 valid frames
declaring 200,000 bytes each (inflated a budget at a time, every packet
echoed), and prints the server's peak RSS over the idle one for each.
Run from the repository root (it imports tests.test_hostile). The attack
runs on a thread of its own so that it cannot starve the well-behaved
client's loop. Linux only (/proc); every wait is bounded.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import struct
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastpacket as fp  # noqa: E402
from fastpacket.system import new_event_loop  # noqa: E402
from tests.test_hostile import (MAX_PACKET, WAIT_S, GoodClient, HostileServer, bomb, raw,  # noqa: E402
                                until_closed)

#: Attacking connections open at once.
WORKERS = 64
#: Frames and their declared raw_size in the valid-bombs run.
VALID_FRAMES, VALID_RAW = 30, 200_000


def flood(kind: str, port: int, n: int) -> None:
    """n connections with distinct bad sizes, WORKERS at a time, on a loop of their own."""
    async def main() -> None:
        loop = asyncio.get_running_loop()

        async def worker(first: int) -> None:
            for i in range(first, n, WORKERS):
                sock = await raw(loop, port)
                await loop.sock_sendall(sock, struct.pack("<HHII", MAX_PACKET + 1 + i % 60000, 1, i, 0))
                await until_closed(loop, sock)
                sock.close()

        await asyncio.gather(*(worker(k) for k in range(WORKERS)))

    loop = new_event_loop(kind)
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


async def bad(hs: HostileServer, kind: str, n: int) -> None:
    async with GoodClient(hs.port) as good:
        rss0, _ = hs.memory_kib()
        hs.reset_peak()
        start = good.rounds
        t = threading.Thread(target=flood, args=(kind, hs.port, n))
        t.start()
        while t.is_alive():
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        stats = await hs.stats()
        rss1, peak = hs.memory_kib()
        rounds = good.rounds - start
    print(f"{kind}: {n} connections with distinct bad sizes: server RSS {rss0} KiB before, {rss1} KiB after "
          f"({rss1 - rss0:+d} KiB), peak {peak - rss0:+d} KiB; closes {stats['closes']}; the well-behaved "
          f"client made {rounds} byte-exact rounds meanwhile")


async def bombs(hs: HostileServer, kind: str) -> None:
    loop = asyncio.get_running_loop()
    async with GoodClient(hs.port):
        rss0, _ = hs.memory_kib()
        hs.reset_peak()
        frame = bomb(1 << 20, packet_size=65535)
        writes = frame * (65536 // len(frame))
        sock = await raw(loop, hs.port)
        try:
            await loop.sock_sendall(sock, writes)
            await until_closed(loop, sock)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.close()
        await asyncio.sleep(0.5)
        rss1, peak = hs.memory_kib()
        print(f"{kind}: {writes.count(frame)} zlib frames of {len(frame)} B declaring 1 MiB each in one "
              f"{len(writes)} B write: peak {peak - rss0:+d} KiB over the idle server ({rss0} KiB), "
              f"after {rss1 - rss0:+d} KiB")
        rss0, _ = hs.memory_kib()
        hs.reset_peak()
        frame = bomb(VALID_RAW)
        sock = await raw(loop, hs.port)
        await loop.sock_sendall(sock, frame * VALID_FRAMES)
        dec = fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator())
        got = 0
        while got < VALID_FRAMES * (VALID_RAW // 1000):
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S)
            if not data:
                raise SystemExit("the server closed a valid connection")
            got += len(dec.feed(data))
        sock.close()
        await asyncio.sleep(0.5)
        rss1, peak = hs.memory_kib()
        print(f"{kind}: {VALID_FRAMES} valid zlib frames of {len(frame)} B declaring {VALID_RAW} B each, all "
              f"{got} packets echoed: peak {peak - rss0:+d} KiB, after {rss1 - rss0:+d} KiB")


def main(argv: "list[str] | None" = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    b = sub.add_parser("bad")
    b.add_argument("--connections", type=int, default=100_000)
    m = sub.add_parser("bombs")
    for p in (b, m):
        p.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    kind = "uvloop" if args.uvloop else "asyncio"
    hs = HostileServer(kind)
    loop = new_event_loop(kind)
    try:
        coro = bad(hs, kind, args.connections) if args.command == "bad" else bombs(hs, kind)
        loop.run_until_complete(asyncio.wait_for(coro, 600))
    finally:
        loop.close()
        hs.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
