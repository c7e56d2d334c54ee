"""WebSocket: the fastpacket echo over WebSocket (fastpacket.ws on picows)
against the same echo over TCP (fastpacket.aio), and against picows's own
echo server (a WSListener that sends each frame back: WebSocket with no
packets) and the ``websockets`` library's (the other common choice, where
it is installed), on the same load, measured in one run with interleaved
repetitions, each server in its own process on uvloop (asyncio's loop
where uvloop is missing).

The load: CONNECTIONS connections, each sending a burst of BURSTS packets
(PAYLOAD_BYTES of payload each) as one TCP write or one WebSocket message,
waiting for all of them to come back, and again, for the run's seconds (a
closed loop; a picows client for WebSocket, an asyncio protocol for TCP,
both in one load process). Reported: packets/s echoed and the server
process's CPU per packet over the load phase. The goal: WebSocket costs at
most 1.3x the TCP server's CPU per packet.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import multiprocessing as mp
import statistics
import struct
import sys
import threading
import time
from typing import Any, Callable, Dict, Iterator, List, Tuple

from fastpacket.cli.bench._harness import Row
from fastpacket.cli.bench.cluster import cpu_seconds_of
from fastpacket.system import new_event_loop, raise_nofile

_CTX = mp.get_context("spawn")  # servers and load clients start clean
HEADER = struct.Struct("<HHII")
#: Simulated clients.
CONNECTIONS = 16
#: Packets per write (TCP) or message (WebSocket): a burst of a tick's
#: packets, and one packet per message (what a browser sending each input
#: at once does, WebSocket's worst case).
BURSTS = (16, 1)
#: Payload bytes of each packet.
PAYLOAD_BYTES = 32
#: Seconds a server or the load may take to start.
START_TIMEOUT_S = 30.0
#: Seconds the load waits after closing its connections.
CLOSE_GRACE_S = 0.2
#: The goal: WebSocket server CPU per packet at most this multiple of TCP's.
GOAL_CPU_RATIO = 1.3
IMPLS = ("tcp", "ws", "picows", "websockets")
LABELS = {"tcp": "fastpacket TCP", "ws": "fastpacket WebSocket", "picows": "picows echo (no packets)",
          "websockets": "websockets echo (no packets)"}


def _loop_kind() -> str:
    try:
        import uvloop  # noqa: F401

        return "uvloop"
    except ImportError:
        return "asyncio"


def _server_process(impl: str, loop_kind: str, conn: Any) -> None:
    raise_nofile(4096)
    loop = new_event_loop(loop_kind)
    asyncio.set_event_loop(loop)

    async def start() -> Any:
        import fastpacket as fp
        from fastpacket.apps.echo import echo

        if impl == "tcp":
            return await fp.aio.serve(echo, "127.0.0.1", 0)
        if impl == "ws":
            return await fp.aio.serve_ws(echo, "127.0.0.1", 0)
        if impl == "websockets":
            from websockets.asyncio.server import serve
            from websockets.exceptions import ConnectionClosed

            async def handler(ws: Any) -> None:
                try:
                    async for message in ws:
                        await ws.send(message)
                except ConnectionClosed:  # the load process ends without a close handshake
                    pass

            return await serve(handler, "127.0.0.1", 0, compression=None)
        import picows

        class Echo(picows.WSListener):
            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == picows.WSMsgType.BINARY:
                    transport.send(picows.WSMsgType.BINARY, frame.get_payload_as_memoryview())
                elif frame.msg_type == picows.WSMsgType.CLOSE:
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

        return await picows.ws_create_server(lambda request: Echo(), "127.0.0.1", 0, use_aiofastnet=False)

    server = loop.run_until_complete(start())
    conn.send(server.sockets[0].getsockname()[1])
    stop = loop.create_future()

    def control() -> None:
        conn.recv()
        loop.call_soon_threadsafe(stop.set_result, None)

    threading.Thread(target=control, daemon=True).start()
    loop.run_until_complete(stop)
    server.close()
    loop.run_until_complete(asyncio.sleep(0.05))
    loop.close()


class _Counter:
    """Bytes echoed on one connection; wakes the sender when a burst is back."""

    def __init__(self, burst_bytes: int) -> None:
        self.burst_bytes = burst_bytes
        self.pending = 0
        self.packets = 0
        self.back: "asyncio.Future[None] | None" = None

    def received(self, n: int) -> None:
        self.pending -= n
        if self.pending <= 0 and self.back is not None and not self.back.done():
            self.back.set_result(None)


async def _drive(impl: str, port: int, seconds: float, count: int, conn: Any) -> int:
    burst = b"".join(HEADER.pack(HEADER.size + PAYLOAD_BYTES, 1, i, 7) + bytes(PAYLOAD_BYTES) for i in range(count))
    loop = asyncio.get_running_loop()
    counters = [_Counter(len(burst)) for _ in range(CONNECTIONS)]
    senders: List[Callable[[], None]] = []
    closers: List[Callable[[], None]] = []
    if impl == "tcp":
        class Client(asyncio.Protocol):
            def __init__(self, counter: _Counter) -> None:
                self.counter = counter

            def data_received(self, data: bytes) -> None:
                self.counter.received(len(data))

        for c in counters:
            transport, _ = await loop.create_connection(functools.partial(Client, c), "127.0.0.1", port)
            senders.append(functools.partial(transport.write, burst))
            closers.append(transport.close)
    else:
        import picows

        class WSClient(picows.WSListener):
            def __init__(self, counter: _Counter) -> None:
                self.counter = counter

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                if frame.msg_type == picows.WSMsgType.BINARY:
                    self.counter.received(frame.payload_size)

        for c in counters:
            ws, _ = await picows.ws_connect(functools.partial(WSClient, c), f"ws://127.0.0.1:{port}/",
                                            use_aiofastnet=False)
            senders.append(functools.partial(ws.send, picows.WSMsgType.BINARY, burst))
            closers.append(functools.partial(ws.send_close, picows.WSCloseCode.OK))
    conn.send("ready")
    await loop.run_in_executor(None, conn.recv)  # "go": the parent read the server's CPU clock
    deadline = loop.time() + seconds

    async def one(counter: _Counter, send: Any) -> None:
        while loop.time() < deadline:
            counter.pending = counter.burst_bytes
            counter.back = loop.create_future()
            send()
            await asyncio.wait_for(counter.back, START_TIMEOUT_S)
            counter.packets += count

    await asyncio.gather(*(one(c, s) for c, s in zip(counters, senders)))
    for close in closers:
        close()
    await asyncio.sleep(CLOSE_GRACE_S)  # let the closes reach the server before the process exits
    return sum(c.packets for c in counters)


def _load_process(impl: str, port: int, seconds: float, count: int, conn: Any) -> None:
    loop = new_event_loop(_loop_kind())
    asyncio.set_event_loop(loop)
    t0 = time.perf_counter()
    packets = loop.run_until_complete(_drive(impl, port, seconds, count, conn))
    conn.send((packets, time.perf_counter() - t0))
    loop.close()


@contextlib.contextmanager
def _server(impl: str) -> Iterator[Tuple[int, int]]:
    """(port, pid) of an echo server in its own process, stopped on exit."""
    parent, child = _CTX.Pipe()
    proc = _CTX.Process(target=_server_process, args=(impl, _loop_kind(), child), daemon=True)
    proc.start()
    try:
        if not parent.poll(START_TIMEOUT_S):
            raise RuntimeError(f"the {impl} echo server did not start")
        assert proc.pid is not None
        yield parent.recv(), proc.pid
    finally:
        parent.send("stop")
        proc.join(10)
        if proc.is_alive():
            proc.kill()


def measure(impl: str, seconds: float, count: int) -> Dict[str, float]:
    """One server, one load run: packets/s and server CPU µs per packet."""
    with _server(impl) as (port, pid):
        lparent, lchild = _CTX.Pipe()
        load = _CTX.Process(target=_load_process, args=(impl, port, seconds, count, lchild), daemon=True)
        load.start()
        if not lparent.poll(START_TIMEOUT_S) or lparent.recv() != "ready":
            raise RuntimeError("the load client did not connect")
        cpu0 = cpu_seconds_of(pid)
        t0 = time.perf_counter()
        lparent.send("go")
        if not lparent.poll(seconds + START_TIMEOUT_S):
            raise RuntimeError("the load client did not finish")
        packets, _ = lparent.recv()
        elapsed = time.perf_counter() - t0
        cpu1 = cpu_seconds_of(pid)
        load.join(10)
    n = max(packets, 1)
    return {"packets_per_s": packets / elapsed, "cpu_us_per_packet": (cpu1 - cpu0) * 1e6 / n}


def _has_websockets() -> bool:
    try:
        import websockets.asyncio.server  # noqa: F401
    except ImportError:
        return False
    return True


def run(quick: bool = False) -> List[Row]:
    """The ws section's rows (see the module docstring)."""
    if not sys.platform.startswith("linux"):
        return [Row("ws", "echo over WebSocket vs TCP", "not measured", 0.0, "-",
                    extra="Linux only (reads /proc/PID/stat)")]
    try:
        import picows  # noqa: F401
    except ImportError:
        return [Row("ws", "echo over WebSocket vs TCP", "not measured", 0.0, "-",
                    extra="picows not installed (pip install 'fastpacket[ws]')")]
    seconds = 1.0 if quick else 3.0
    repeat = 1 if quick else 5
    rows = []
    for count in BURSTS:
        rows += _rows(count, seconds, repeat)
    return rows


def _rows(count: int, seconds: float, repeat: int) -> List[Row]:
    impls = [impl for impl in IMPLS if impl != "websockets" or _has_websockets()]
    runs: Dict[str, List[Dict[str, float]]] = {impl: [] for impl in impls}
    for _ in range(repeat):  # interleaved, so machine noise hits all alike
        for impl in impls:
            runs[impl].append(measure(impl, seconds, count))
    res = {impl: {k: statistics.median(r[k] for r in rs) for k in rs[0]} for impl, rs in runs.items()}
    base = res["tcp"]["cpu_us_per_packet"]
    rows = []
    case = (f"{_loop_kind()}: echo server CPU per packet, {CONNECTIONS} conns x {count}-packet "
            f"{'bursts' if count > 1 else 'messages'} ({PAYLOAD_BYTES} B payloads)")
    for impl in impls:
        r = res[impl]
        cpu_ratio = r["cpu_us_per_packet"] / base
        rows.append(Row("ws", case, LABELS[impl], 1e6 / r["cpu_us_per_packet"], "packets/CPU-s",
                        None if impl == "tcp" else base / r["cpu_us_per_packet"],
                        f"{r['cpu_us_per_packet']:.3f} us/pkt = {cpu_ratio:.2f}x TCP's, "
                        f"{r['packets_per_s'] / 1e3:.0f}k pkt/s",
                        f"<= {GOAL_CPU_RATIO}x TCP's CPU" if impl == "ws" else ""))
    return rows
