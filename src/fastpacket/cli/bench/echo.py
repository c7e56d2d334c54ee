"""Echo: a plain-Python asyncio echo server (bytearray + struct framing, one
``transport.write`` per ``data_received``) beside the fastpacket echo
(``handler = lambda s, b: s.send_batch(b)``), on asyncio's default loop and
on uvloop, each server in its own process, driven by a non-parsing load
client in another process (fastpacket.cli.loadgen).

Reported: packets/s echoed, server CPU µs per packet (the server process's
own CPU time over the load phase), ping-pong RTT p50/p99 with one packet in
flight on one connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing as mp
import os
import statistics
import struct
import threading
import time
from typing import Any, Dict, Iterator, List, Tuple

from fastpacket.cli.bench._harness import Row
from fastpacket.system import new_event_loop, raise_nofile, rss_bytes

HEADER = struct.Struct("<HHII")
_CTX = mp.get_context("spawn")  # servers and load clients start clean, whatever the parent imported
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


async def _count_sessions(server: Any) -> int:
    return len(getattr(server, "sessions", ())) or -1


def _server_process(impl: str, loop_kind: str, conn: Any) -> None:
    """Runs one echo server until told to stop; answers 'cpu' with its own
    process CPU time so the parent can measure the load phase alone."""
    raise_nofile()  # as many connections as the hard limit allows (measure_idle_rss)
    from fastpacket.cli.bench import parity

    parity._pin(0, parity.SERVER_CORE)  # the load runs on another core
    loop = new_event_loop(loop_kind)
    asyncio.set_event_loop(loop)

    async def start() -> Any:
        if impl == "plain":
            return await loop.create_server(PlainEchoProtocol, "127.0.0.1", 0)
        import fastpacket as fp

        from fastpacket.apps.echo import echo

        return await fp.aio.serve(echo, "127.0.0.1", 0)

    server = loop.run_until_complete(start())
    conn.send(server.sockets[0].getsockname()[1])
    stop = loop.create_future()

    def control() -> None:
        while True:
            msg = conn.recv()
            if msg == "cpu":
                t = os.times()
                conn.send((t.user, t.system))
            elif msg == "rss":
                conn.send(rss_bytes())
            elif msg == "sessions":
                fut = asyncio.run_coroutine_threadsafe(_count_sessions(server), loop)
                conn.send(fut.result(10))
            else:
                loop.call_soon_threadsafe(stop.set_result, None)
                return

    threading.Thread(target=control, daemon=True).start()
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()


def _load_process(port: int, connections: int, seconds: float, conn: Any) -> None:
    from fastpacket.cli.bench import parity
    from fastpacket.cli.loadgen import run_echo_load

    parity._pin(0, parity.LOAD_CORE)

    def ready() -> None:
        conn.send("ready")
        conn.recv()  # "go": the parent has read the server's CPU clock

    conn.send(run_echo_load("127.0.0.1", port, connections=connections, seconds=seconds, ready=ready).to_dict())


@contextlib.contextmanager
def _echo_server(impl: str, loop_kind: str) -> Iterator[Tuple[int, Any]]:
    """An echo server in its own process: yields (port, control pipe), and
    stops it on exit."""
    parent, child = _CTX.Pipe()
    server = _CTX.Process(target=_server_process, args=(impl, loop_kind, child), daemon=True)
    server.start()
    try:
        if not parent.poll(30):
            raise RuntimeError(f"{impl} echo server on {loop_kind} did not start")
        yield parent.recv(), parent
    finally:
        parent.send("stop")
        server.join(10)
        if server.is_alive():
            server.kill()


def _cpp_load(port: int, connections: int, seconds: float, read_cpu: Any) -> Tuple[Dict[str, Any], Any, Any]:
    """The pipelined echo load of the C++ load generator (bench.parity):
    (result, server CPU before, after)."""
    import json
    import subprocess

    from fastpacket.cli.bench import parity

    d = parity.find_examples()
    assert d is not None
    load = subprocess.Popen([str(d / parity.LOADGEN_EXE), "echo", "127.0.0.1", str(port), str(connections),
                             str(seconds), str(parity.ECHO_BLOCK_PACKETS), str(parity.ECHO_WINDOW_BLOCKS)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        parity._pin(load.pid, parity.LOAD_CORE)
        if parity._readline(load, parity.START_TIMEOUT_S) != "ready":
            raise RuntimeError("the C++ load generator did not connect")
        cpu0 = read_cpu()
        assert load.stdin is not None
        load.stdin.write("go\n")
        load.stdin.flush()
        result = json.loads(parity._readline(load, seconds + parity.REPORT_MARGIN_S))
        cpu1 = read_cpu()
        load.wait(10)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    return result, cpu0, cpu1


def measure_echo(impl: str, loop_kind: str, connections: int, seconds: float, rtt_rounds: int) -> Dict[str, Any]:
    """One server, one load run, one ping-pong run: a dict of figures. The
    load is the C++ load generator's when it is built (bench.parity), else
    fastpacket.cli.loadgen's (which caps the rate at what one Python client
    core sends)."""
    from fastpacket.cli.bench import parity

    ctx = _CTX
    with _echo_server(impl, loop_kind) as (port, parent):
        def read_cpu() -> Any:
            parent.send("cpu")
            return parent.recv()

        if parity.find_examples() is not None:
            result, cpu0, cpu1 = _cpp_load(port, connections, seconds, read_cpu)
        else:
            lparent, lchild = ctx.Pipe()
            load = ctx.Process(target=_load_process, args=(port, connections, seconds, lchild), daemon=True)
            load.start()
            if not lparent.poll(60) or lparent.recv() != "ready":
                raise RuntimeError("load client did not connect")
            cpu0 = read_cpu()
            lparent.send("go")  # the CPU window covers exactly the load phase
            if not lparent.poll(seconds + 60):
                raise RuntimeError("load client did not finish")
            result = lparent.recv()
            cpu1 = read_cpu()
            load.join(10)
        if not result["ok"]:
            raise RuntimeError(f"{impl} echo on {loop_kind} lost or corrupted data: {result['errors'][:3]}")
        from fastpacket.cli.loadgen import ping_pong

        rtt = ping_pong("127.0.0.1", port, rounds=rtt_rounds)
    n = max(result["packets"], 1)
    return {
        "packets_per_s": result["packets_per_s"],
        "cpu_us_per_packet": (cpu1[0] + cpu1[1] - cpu0[0] - cpu0[1]) * 1e6 / n,
        "user_us_per_packet": (cpu1[0] - cpu0[0]) * 1e6 / n,
        "sys_us_per_packet": (cpu1[1] - cpu0[1]) * 1e6 / n,
        "rtt": rtt,
        "packets": result["packets"],
    }


def _median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Median of each figure over repeated runs."""
    out: Dict[str, Any] = {}
    for key in ("packets_per_s", "cpu_us_per_packet", "user_us_per_packet", "sys_us_per_packet"):
        out[key] = statistics.median(r[key] for r in runs)
    out["rtt"] = {k: statistics.median(r["rtt"][k] for r in runs) for k in ("p50", "p95", "p99", "max")}
    return out


def _idle_process(port: int, n: int, conn: Any) -> None:
    import socket

    raise_nofile(n + 256)
    socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
    conn.send(len(socks))
    conn.recv()  # hold them until told
    for s in socks:
        s.close()


def measure_idle_rss(impl: str, loop_kind: str, n: int) -> float:
    """Server RSS bytes per idle connection, `n` connections held open."""
    ctx = _CTX
    with _echo_server(impl, loop_kind) as (port, parent):
        # warm the server up with a few connections first, so one-time
        # allocations (pools, code paths) are not charged to the idle ones
        warm_parent, warm_child = ctx.Pipe()
        warm = ctx.Process(target=_idle_process, args=(port, 50, warm_child), daemon=True)
        warm.start()
        warm_parent.recv()
        warm_parent.send("close")
        warm.join(10)
        time.sleep(0.3)
        parent.send("rss")
        before = parent.recv()
        lparent, lchild = ctx.Pipe()
        idle = ctx.Process(target=_idle_process, args=(port, n, lchild), daemon=True)
        idle.start()
        if not lparent.poll(60):
            raise RuntimeError("idle clients did not connect")
        lparent.recv()
        deadline = time.monotonic() + 20
        if impl == "fastpacket":
            while time.monotonic() < deadline:
                parent.send("sessions")
                if parent.recv() >= n:
                    break
                time.sleep(0.05)
        else:
            time.sleep(1.0)
        parent.send("rss")
        after = parent.recv()
        lparent.send("close")
        idle.join(10)
    return (after - before) / n


def _loops() -> List[str]:
    try:
        import uvloop  # noqa: F401

        return ["asyncio", "uvloop"]
    except ImportError:
        return ["asyncio"]


def run(quick: bool = False) -> List[Row]:
    from fastpacket.cli.bench import parity

    rows: List[Row] = parity.run(quick)  # the C++ reference rows, when built
    connections = 32
    seconds = 1.0 if quick else 3.0
    rtt_rounds = 500 if quick else 3000
    repeat = 1 if quick else 3
    for loop_kind in _loops():
        runs: Dict[str, List[Dict[str, Any]]] = {"plain": [], "fastpacket": []}
        for _ in range(repeat):  # interleaved, so machine noise hits both alike
            for impl in runs:
                runs[impl].append(measure_echo(impl, loop_kind, connections, seconds, rtt_rounds))
        res = {impl: _median_run(rs) for impl, rs in runs.items()}
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
    idle = 1000 if quick else 4000
    for impl in ("plain", "fastpacket"):
        per_conn = measure_idle_rss(impl, "asyncio", idle)
        rows.append(Row("echo", f"asyncio: server RSS per idle connection, {idle} connections",
                        "plain-python" if impl == "plain" else "fastpacket", per_conn / 1024, "KiB/conn", None,
                        "", "<= 10 KiB" if impl != "plain" else ""))
    return rows
