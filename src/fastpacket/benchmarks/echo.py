"""Echo: a plain-Python asyncio echo server (bytearray + struct framing, one
``transport.write`` per ``data_received``) beside the fastpacket echo
(``handler = lambda s, b: s.send_batch(b)``), on asyncio's default loop and
on uvloop, each server in its own process, driven by a non-parsing load
client in another process (fastpacket.loadgen).

Reported: packets/s echoed, server CPU µs per packet (the server process's
own CPU time over the load phase), ping-pong RTT p50/p99 with one packet in
flight on one connection.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import struct
import threading
import time
from typing import Any, Dict, List, Optional

from fastpacket.benchmarks._harness import Row

HEADER = struct.Struct("<HHII")
MAX_PACKET = 65535


class PlainEchoProtocol(asyncio.Protocol):
    """How an echo server is written today: frame with struct, hand each
    packet to the application, one write per data_received."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        pos = 0
        end = len(buf)
        out = []
        unpack_from = HEADER.unpack_from
        while end - pos >= 12:
            size, ptype, seq, player_id = unpack_from(buf, pos)
            if size < 12 or size > MAX_PACKET:
                self.transport.close()
                return
            if end - pos < size:
                break
            out.append(bytes(buf[pos:pos + size]))  # the packet the application handles and echoes
            pos += size
        if out:
            self.transport.write(b"".join(out))
        del buf[:pos]


def _new_loop(loop_kind: str) -> asyncio.AbstractEventLoop:
    if loop_kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _server_process(impl: str, loop_kind: str, conn: Any) -> None:
    """Runs one echo server until told to stop; answers 'cpu' with its own
    process CPU time so the parent can measure the load phase alone."""
    loop = _new_loop(loop_kind)
    asyncio.set_event_loop(loop)

    async def start() -> Any:
        if impl == "plain":
            return await loop.create_server(PlainEchoProtocol, "127.0.0.1", 0)
        import fastpacket as fp

        return await fp.aio.serve(lambda s, b: s.send_batch(b), "127.0.0.1", 0)

    server = loop.run_until_complete(start())
    conn.send(server.sockets[0].getsockname()[1])
    stop = loop.create_future()

    def control() -> None:
        while True:
            msg = conn.recv()
            if msg == "cpu":
                t = os.times()
                conn.send((t.user, t.system))
            else:
                loop.call_soon_threadsafe(stop.set_result, None)
                return

    threading.Thread(target=control, daemon=True).start()
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()


def _load_process(port: int, connections: int, seconds: float, conn: Any) -> None:
    from fastpacket.loadgen import run_echo_load

    conn.send(run_echo_load("127.0.0.1", port, connections=connections, seconds=seconds).to_dict())


def measure_echo(impl: str, loop_kind: str, connections: int, seconds: float, rtt_rounds: int) -> Dict[str, Any]:
    """One server, one load run, one ping-pong run: a dict of figures."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    server = ctx.Process(target=_server_process, args=(impl, loop_kind, child), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError(f"{impl} echo server on {loop_kind} did not start")
        port = parent.recv()
        lparent, lchild = ctx.Pipe()
        load = ctx.Process(target=_load_process, args=(port, connections, seconds, lchild), daemon=True)
        load.start()
        time.sleep(0.3)  # the load process imports and connects; measure the steady phase below
        parent.send("cpu")
        cpu0 = parent.recv()
        if not lparent.poll(seconds + 60):
            raise RuntimeError("load client did not finish")
        result = lparent.recv()
        parent.send("cpu")
        cpu1 = parent.recv()
        load.join(10)
        if not result["ok"]:
            raise RuntimeError(f"{impl} echo on {loop_kind} lost or corrupted data: {result['errors'][:3]}")
        from fastpacket.loadgen import ping_pong

        rtt = ping_pong("127.0.0.1", port, rounds=rtt_rounds)
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()
    n = max(result["packets"], 1)
    return {
        "packets_per_s": result["packets_per_s"],
        "cpu_us_per_packet": (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) * 1e6 / n,
        "user_us_per_packet": (cpu1[0] - cpu0[0]) * 1e6 / n,
        "sys_us_per_packet": (cpu1[1] - cpu0[1]) * 1e6 / n,
        "rtt": rtt,
        "packets": result["packets"],
    }


def _loops() -> List[str]:
    try:
        import uvloop  # noqa: F401

        return ["asyncio", "uvloop"]
    except ImportError:
        return ["asyncio"]


def run(quick: bool = False) -> List[Row]:
    rows: List[Row] = []
    connections = 32
    seconds = 1.0 if quick else 3.0
    rtt_rounds = 500 if quick else 3000
    for loop_kind in _loops():
        res = {impl: measure_echo(impl, loop_kind, connections, seconds, rtt_rounds) for impl in ("plain", "fastpacket")}
        base = res["plain"]
        for impl, r in res.items():
            name = "plain-python" if impl == "plain" else "fastpacket"
            ratio = None if impl == "plain" else base["cpu_us_per_packet"] / r["cpu_us_per_packet"]
            rows.append(Row("echo", f"{loop_kind}: server CPU per packet, {connections} conns pipelined",
                            name, 1.0 / r["cpu_us_per_packet"] * 1e6, "packets/CPU-s", ratio,
                            f"{r['cpu_us_per_packet']:.3f} us/pkt (user {r['user_us_per_packet']:.3f}, "
                            f"sys {r['sys_us_per_packet']:.3f}), {r['packets_per_s'] / 1e6:.2f}M pkt/s",
                            ">= 10x" if impl != "plain" else ""))
        for impl, r in res.items():
            name = "plain-python" if impl == "plain" else "fastpacket"
            rtt = r["rtt"]
            ratio = None if impl == "plain" else base["rtt"]["p50"] / rtt["p50"]
            rows.append(Row("echo", f"{loop_kind}: ping-pong RTT, 1 packet in flight", name,
                            1e6 / rtt["p50"], "round trips/s", ratio,
                            f"p50 {rtt['p50']:.1f} us, p99 {rtt['p99']:.1f} us",
                            "p50 within 10%" if impl != "plain" else ""))
    return rows
