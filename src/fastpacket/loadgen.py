"""Load generation for servers speaking the fastpacket wire format: the
engine behind ``fastpacket bench echo`` (and ``fastpacket load``).

The echo load client does not parse: every connection writes pre-built
blocks of whole packets, keeps a bounded window of bytes in flight, and
counts and checksums (CRC-32) the bytes that come back, so the client is not
the bottleneck and any loss, duplication or reordering by the server shows as
a checksum mismatch. The ping-pong probe measures round trips with one
packet in flight on a blocking socket.
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import time
import zlib
from dataclasses import dataclass, asdict
from typing import Any, Callable, Dict, List, Optional

from fastpacket.batch import PacketBatch

__all__ = ["EchoLoadResult", "build_block", "run_echo_load", "ping_pong", "percentile"]


def percentile(sorted_values: List[float], q: float) -> float:
    """The q-th percentile (0..100) of already sorted values, nearest rank."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, int(round(q / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def build_block(packets: int, payload_min: int = 20, payload_max: int = 64, seed: int = 0,
                ptype: int = 1) -> bytes:
    """`packets` GAME packets with seqs 0..packets-1, as one bytes block."""
    import random

    rng = random.Random(seed)
    payloads = [rng.randbytes(rng.randint(payload_min, payload_max)) for _ in range(packets)]
    return PacketBatch.build([ptype] * packets, payloads, seqs=range(packets),
                             player_ids=[seed] * packets).to_bytes()


@dataclass
class EchoLoadResult:
    connections: int
    seconds: float
    packets: int          # packets whose echo came back
    bytes: int
    ok: bool              # every connection got back exactly the bytes it sent, in order
    errors: List[str]

    @property
    def packets_per_s(self) -> float:
        return self.packets / self.seconds if self.seconds else 0.0

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["packets_per_s"] = self.packets_per_s
        return d


class _EchoClient(asyncio.Protocol):
    def __init__(self, block: bytes, block_packets: int, window: int, stop_at: float) -> None:
        self.block = block
        self.block_packets = block_packets
        self.window = window
        self.stop_at = stop_at
        self.sent = 0          # bytes written
        self.received = 0      # bytes echoed back
        self.crc_sent = 0
        self.crc_recv = 0
        self.stopping = False
        self.done = asyncio.get_running_loop().create_future()
        self.transport: Optional[asyncio.Transport] = None
        self.error: Optional[str] = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def start(self, stop_at: float) -> None:
        self.stop_at = stop_at
        while self.sent - self.received < self.window:
            self._write_block()

    def _write_block(self) -> None:
        self.transport.write(self.block)
        self.sent += len(self.block)
        self.crc_sent = zlib.crc32(self.block, self.crc_sent)

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        self.crc_recv = zlib.crc32(data, self.crc_recv)
        if self.received > self.sent:
            self.error = "received more bytes than sent"
        if not self.stopping and time.monotonic() >= self.stop_at:
            self.stopping = True
        if not self.stopping:
            while self.sent - self.received < self.window:
                self._write_block()
        if self.stopping and self.received >= self.sent and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        if not self.done.done():
            if self.received < self.sent:
                self.error = f"connection lost with {self.sent - self.received} bytes outstanding ({exc})"
            self.done.set_result(None)


async def _echo_load(host: str, port: int, connections: int, seconds: float, block_packets: int,
                     window_blocks: int, drain_timeout: float, ready: Optional[Callable[[], None]]) -> EchoLoadResult:
    loop = asyncio.get_running_loop()
    blocks = [build_block(block_packets, seed=i) for i in range(min(connections, 16))]
    clients = []
    for i in range(connections):
        block = blocks[i % len(blocks)]
        _, proto = await loop.create_connection(
            lambda b=block: _EchoClient(b, block_packets, window_blocks * len(b), 0.0), host, port)
        clients.append(proto)
    if ready is not None:
        ready()  # every connection is up; the load starts when this returns
    t0 = time.monotonic()
    for c in clients:
        c.start(t0 + seconds)
    await asyncio.wait([c.done for c in clients], timeout=seconds + drain_timeout)
    elapsed = time.monotonic() - t0
    errors = []
    packets = 0
    total = 0
    for i, c in enumerate(clients):
        if c.error:
            errors.append(f"connection {i}: {c.error}")
        elif not c.done.done():
            errors.append(f"connection {i}: {c.sent - c.received} bytes never came back")
        elif c.crc_recv != c.crc_sent or c.received != c.sent:
            errors.append(f"connection {i}: echoed bytes differ from sent bytes (CRC mismatch)")
        packets += c.received // len(c.block) * block_packets
        total += c.received
        if c.transport is not None:
            c.transport.close()
    return EchoLoadResult(connections, elapsed, packets, total, not errors, errors)


def run_echo_load(host: str, port: int, connections: int = 32, seconds: float = 3.0, block_packets: int = 64,
                  window_blocks: int = 4, uvloop: bool = True, drain_timeout: float = 10.0,
                  ready: Optional[Callable[[], None]] = None) -> EchoLoadResult:
    """Drive an echo server with `connections` pipelining connections for
    `seconds`; each keeps `window_blocks` blocks of `block_packets` packets
    in flight. Uses uvloop when asked and installed. `ready()`, if given, is
    called once every connection is open, just before the load starts (a
    benchmark starts its CPU clock there)."""
    coro = _echo_load(host, port, connections, seconds, block_packets, window_blocks, drain_timeout, ready)
    if uvloop:
        try:
            import uvloop as _uvloop

            loop = _uvloop.new_event_loop()
        except ImportError:
            loop = asyncio.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def ping_pong(host: str, port: int, rounds: int = 2000, payload: int = 32, warmup: int = 200,
              timeout: float = 5.0) -> Dict[str, float]:
    """Round-trip times (µs) with one packet in flight on one connection:
    p50, p95, p99, max, mean."""
    packet = build_block(1, payload, payload)
    size = len(packet)
    samples = []
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        buf = bytearray(size)
        view = memoryview(buf)
        for i in range(warmup + rounds):
            t0 = time.perf_counter_ns()
            sock.sendall(packet)
            got = 0
            while got < size:
                n = sock.recv_into(view[got:])
                if n == 0:
                    raise ConnectionError("server closed during ping-pong")
                got += n
            dt = time.perf_counter_ns() - t0
            if buf != packet:
                raise ConnectionError("ping-pong echo differs from the packet sent")
            if i >= warmup:
                samples.append(dt / 1000)
    samples.sort()
    return {"p50": percentile(samples, 50), "p95": percentile(samples, 95), "p99": percentile(samples, 99),
            "max": samples[-1], "mean": statistics.fmean(samples), "rounds": rounds}
