"""Load generation for servers speaking the fastpacket wire format: the
engine behind ``fastpacket bench echo`` (and ``fastpacket load``).

The echo load client does not parse: every connection writes pre-built
blocks of whole packets, keeps a bounded window of bytes in flight, and
counts and checksums (CRC-32) the bytes that come back, so the client is not
the bottleneck and any loss, duplication or reordering by the server shows as
a checksum mismatch. The ping-pong probe measures round trips with one
packet in flight on a blocking socket.

The movement load (``move_load``/``run_move_load``, behind ``fastpacket
load`` and ``fastpacket demo``) plays simulated players against a relay
(fastpacket.apps.relay) or any echo server: each connection is one player
(player_id = ``first_player_id`` + its index) that JOINs a room, waits for
its JOIN to come back (the relay acknowledges it once the room is joined
on every server of its bus; an echo server echoes it), and sends MOVE
packets, either at ``rate`` packets/s or pipelined (``window`` of its own
MOVEs in flight: a new one goes out as each comes back). With several
``servers`` the players are spread so that each room's players are split
over them (player i on server ``(i // rooms) % len(servers)``).

Delivery check: a MOVE's header seq is its sender's own count (0, 1, 2 ...),
relayed as it is, so every player checks that every MOVE of its room (its
own included) arrives exactly once and, per sender, in order; the result
counts ``missing``, ``duplicates`` and ``out_of_order`` MOVEs. The check
needs a relay: when no player hears any other player's MOVE (an echo
server), it is reported as not done. Replies are
decoded with FrameDecoder (natively, through fastpacket.aio); a MOVE
carrying the connection's own player_id is its round trip, and its RTT is
the receive time minus the send time written in its payload (one
monotonic clock, one process), recorded into a fastpacket histogram
(percentiles within 1%). The RTT therefore includes the client's own
queueing: at full pipelined load it is latency under load, not idle latency.

The input load (``input_load``/``run_input_load``, behind ``fastpacket load
--mode input`` and ``fastpacket demo --app tick``) plays players against the
tick app (fastpacket.apps.tick): each connection waits for its WELCOME, then
sends INPUT packets (random velocities, seq counting up) at ``rate`` per
second and counts the STATE packets it gets; the latency of an input is the
time from its send to the first STATE whose ack covers it (so it includes
the wait for the next tick).
"""

from __future__ import annotations

import asyncio
import socket
import statistics
import struct
import time
import zlib
from dataclasses import dataclass, asdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from fastpacket.framing import PacketBatch
from fastpacket.system import new_event_loop

__all__ = ["EchoLoadResult", "MoveLoadResult", "InputLoadResult", "build_block", "move_load", "input_load",
           "run_echo_load", "run_move_load", "run_input_load", "ping_pong", "percentile"]


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
        """Echoed packets per second."""
        return self.packets / self.seconds if self.seconds else 0.0

    def to_dict(self) -> Dict[str, Any]:
        """The result as a JSON-ready dict."""
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
        assert self.transport is not None
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
            lambda b=block: _EchoClient(b, block_packets, window_blocks * len(b), 0.0),  # type: ignore[misc]
            host, port)
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
                  window_blocks: int = 4, loop: str = "uvloop", drain_timeout: float = 10.0,
                  ready: Optional[Callable[[], None]] = None) -> EchoLoadResult:
    """Drive an echo server with `connections` pipelining connections for
    `seconds`; each keeps `window_blocks` blocks of `block_packets` packets
    in flight, on a `loop` event loop (asyncio's when uvloop is asked for
    and missing). `ready()`, if given, is
    called once every connection is open, just before the load starts (a
    benchmark starts its CPU clock there)."""
    coro = _echo_load(host, port, connections, seconds, block_packets, window_blocks, drain_timeout, ready)
    try:
        ev = new_event_loop(loop)
    except ImportError:
        ev = new_event_loop("asyncio")
    try:
        return ev.run_until_complete(coro)
    finally:
        ev.close()


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


# ---------------------------------------------------------------------------
# movement load: simulated players against a relay (or any echo server)


@dataclass
class MoveLoadResult:
    """What ``move_load`` measured. Rates are over the sending phase
    (``seconds``); counts are final (after the drain)."""

    connections: int
    rooms: int
    seconds: float        # sending phase
    mode: str             # "pipelined (window N)" or "N packets/s per connection"
    sent: int             # MOVE packets sent
    echoed: int           # own MOVEs that came back: completed round trips
    received: int         # MOVEs received (own echoes and relayed ones; JOIN acknowledgements aside)
    bytes_sent: int       # on the wire (after compression, when on)
    bytes_received: int
    sent_per_s: float
    echoed_per_s: float
    received_per_s: float
    rtt_us: Dict[str, float]   # p50, p95, p99, max, mean (µs) over every round trip
    closes: Dict[str, int]     # how the connections ended, by reason
    compression: Optional[Dict[str, int]]  # the clients' Aggregator stats, when on
    errors: List[str]
    servers: int = 1           # servers the players were spread over
    delivery_checked: bool = False  # False against an echo server (no MOVE of another player arrived)
    expected: int = 0          # MOVEs that should have arrived: each one times the members of its room
    delivered: int = 0         # MOVEs that arrived (once each)
    missing: int = 0           # expected, never arrived
    duplicates: int = 0        # arrived more than once (the extra copies)
    out_of_order: int = 0      # arrived after a later MOVE of the same sender

    @property
    def ok(self) -> bool:
        """True when no connection reported an error."""
        return not self.errors

    @property
    def packets_per_s(self) -> float:
        """Completed round trips per second (own MOVEs echoed back)."""
        return self.echoed_per_s

    def to_dict(self) -> Dict[str, Any]:
        """The result as a JSON-ready dict (the keys `load --json` prints)."""
        d = asdict(self)
        d["ok"] = self.ok
        d["packets_per_s"] = self.packets_per_s
        for k in ("p50", "p95", "p99", "max"):
            d[k] = self.rtt_us.get(k)
        return d


def move_dtype(payload_size: int) -> np.dtype:
    """The wire record of one MOVE packet with a `payload_size`-byte payload
    (GAME header, x, y, z, sent_ns, padding)."""
    from fastpacket.apps.relay import MOVE_SIZE

    if payload_size < MOVE_SIZE:
        raise ValueError(f"payload_size must be >= {MOVE_SIZE} (x, y, z, sent_ns), got {payload_size}")
    fields = [("size", "<u2"), ("type", "<u2"), ("seq", "<u4"), ("player_id", "<u4"),
              ("x", "<i4"), ("y", "<i4"), ("z", "<i4"), ("sent_ns", "<u8")]
    if payload_size > MOVE_SIZE:
        fields.append(("pad", f"V{payload_size - MOVE_SIZE}"))
    return np.dtype(fields)


#: A MOVE's x runs over [0, X_RANGE) with the sender's seq (y is the
#: player's index); player i starts i * X_PHASE along it, so that the
#: players of a room (the live view draws them) are spread out.
X_RANGE = 1000
X_PHASE = 137

#: MOVE seqs are u32: a sender's count wraps at 2**32.
SEQ_MODULUS = 1 << 32
#: Gaps a receiver remembers per sender (to tell a late MOVE from a
#: duplicate); past this, a late MOVE counts as a duplicate.
MAX_REMEMBERED_GAPS = 1 << 16


class _Delivery:
    """What one player received from one sender: the next seq it expects
    (as an unwrapped count), the MOVEs received once, and the seqs skipped
    (a gap: missing unless they arrive late, out of order)."""

    __slots__ = ("next", "unique", "gaps")

    def __init__(self) -> None:
        self.next = 0
        self.unique = 0
        self.gaps: set = set()


class _Player:
    """One connection of the movement load."""

    def __init__(self, load: "_MoveLoad", index: int, player_id: int, room: int) -> None:
        from fastpacket.framing import FrameDecoder

        self.load = load
        self.index = index
        self.player_id = player_id
        self.room = room
        self.session: Any = None
        self.sent = 0
        self.echoed = 0
        self.received = 0
        self.joined = False
        self.from_senders: Dict[int, _Delivery] = {}
        self.duplicates = 0
        self.out_of_order = 0
        self.heard_others = False
        self.decoder = FrameDecoder()
        self.block = np.zeros(load.chunk, dtype=load.dtype)
        self.block["size"] = load.dtype.itemsize
        self.block["type"] = load.move_type
        self.block["player_id"] = player_id
        self.closed_by_us = False

    def send(self, k: int) -> None:
        """Queue k MOVE packets (one send_batch per chunk)."""
        load = self.load
        s = self.session
        while k > 0 and not s.closed:
            n = min(k, load.chunk)
            blk = self.block[:n]
            seqs = (np.arange(self.sent, self.sent + n, dtype=np.uint64) & 0xFFFFFFFF).astype(np.uint32)
            blk["seq"] = seqs
            blk["x"] = (seqs + self.index * X_PHASE) % X_RANGE  # players spread along x, each moving
            blk["y"] = self.index
            blk["sent_ns"] = time.monotonic_ns()
            s.send_batch(self.decoder.feed(blk.tobytes()))
            self.sent += n
            k -= n
        s.flush()  # now, not max_delay later: the send time is in the payload

    def on_batch(self, session: Any, batch: PacketBatch) -> None:
        load = self.load
        types = batch.types
        if not self.joined and ((types == load.join_type) & (batch.player_ids == self.player_id)).any():
            self.joined = True
        moves = types == load.move_type
        n_moves = int(np.count_nonzero(moves))
        self.received += n_moves
        if n_moves:
            self._check(batch.player_ids[moves], batch.seqs[moves])
        own = (batch.player_ids == self.player_id) & (batch.types == load.move_type)
        k = int(np.count_nonzero(own))
        if not k:
            return
        now = time.monotonic_ns()
        sizes = batch.sizes
        raw = batch.to_bytes()
        if sizes[0] == load.dtype.itemsize and (sizes == sizes[0]).all():
            sent_ns = np.frombuffer(raw, dtype=load.dtype)["sent_ns"][own]
        else:  # mixed sizes: read the own ones one by one
            offsets = np.concatenate(([0], np.cumsum(sizes[:-1], dtype=np.int64)))[own]
            sent_ns = np.array([struct.unpack_from("<Q", raw, int(o) + 24)[0] if sizes[j] >= 32 else now
                                for j, o in zip(np.flatnonzero(own), offsets)], dtype=np.uint64)
        rtt = now - sent_ns.astype(np.int64)
        load.rtt.record_many(np.maximum(rtt, 0))
        self.echoed += k
        if load.window and not load.stopping:
            self.send(k)

    def _check(self, senders: "np.ndarray[Any, Any]", seqs: "np.ndarray[Any, Any]") -> None:
        """The delivery check of the MOVEs of one batch: per sender, a run of
        consecutive seqs from the expected one is the fast path; anything
        else is looked at packet by packet."""
        order = np.argsort(senders, kind="stable")
        senders = senders[order]
        seqs = seqs[order].astype(np.int64)
        cuts = np.flatnonzero(senders[1:] != senders[:-1]) + 1
        starts = [0, *cuts.tolist()]
        ends = [*cuts.tolist(), len(senders)]
        for a, b in zip(starts, ends):
            sender = int(senders[a])
            if sender != self.player_id:
                self.heard_others = True
            d = self.from_senders.get(sender)
            if d is None:
                d = self.from_senders[sender] = _Delivery()
            run = seqs[a:b]
            if run[0] == d.next % SEQ_MODULUS and (b - a == 1 or bool((np.diff(run) % SEQ_MODULUS == 1).all())):
                d.next += b - a
                d.unique += b - a
                continue
            for v in run.tolist():
                delta = (v - d.next) % SEQ_MODULUS
                if delta >= SEQ_MODULUS // 2:
                    delta -= SEQ_MODULUS
                if delta == 0:
                    d.next += 1
                    d.unique += 1
                elif delta > 0:  # a gap: those may still come, late
                    if len(d.gaps) + delta <= MAX_REMEMBERED_GAPS:
                        d.gaps.update(range(d.next, d.next + delta))
                    d.next += delta + 1
                    d.unique += 1
                elif d.next + delta in d.gaps:
                    d.gaps.discard(d.next + delta)
                    d.unique += 1
                    self.out_of_order += 1
                else:
                    self.duplicates += 1


class _MoveLoad:
    def __init__(self, payload_size: int, window: int, move_type: int, join_type: int = 2) -> None:
        from fastpacket.metrics import Metric

        self.dtype = move_dtype(payload_size)
        self.window = window
        self.chunk = max(1, min(window or 64, 1024))
        self.move_type = move_type
        self.join_type = join_type
        self.stopping = False
        self.rtt = Metric("rtt_ns", "ns")
        self.room_of: Dict[int, int] = {}  # player id -> room, for the delivery check


async def move_load(host: str, port: int, *, connections: int = 50, seconds: float = 10.0,
                    rate: float = 0.0, window: int = 16, payload_size: int = 20, rooms: Optional[int] = None,
                    first_player_id: int = 1, compress: bool = False, compress_threshold: int = 256, drain_timeout: float = 5.0,
                    on_start: Optional[Callable[[], Any]] = None,
                    on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
                    on_stop: Optional[Callable[[], Any]] = None,
                    progress_interval: float = 0.5, servers: Optional[Sequence[Tuple[str, int]]] = None,
                    join_timeout: float = 5.0) -> MoveLoadResult:
    """Play `connections` players against the server at host:port for
    `seconds` (in the running event loop) and return what was measured.

    ``rate`` > 0: each connection sends `rate` MOVEs per second (in ticks of
    at least 2 ms); ``rate`` = 0: pipelined, `window` own MOVEs in flight per
    connection. ``rooms`` (default: one per 10 players): player i JOINs room
    i % rooms. ``servers``: (host, port) pairs to spread the players over
    instead of host:port, each room's players split over them. Each player
    waits (`join_timeout` seconds at most) for its JOIN to come back before
    the load starts. ``compress``: the clients' sends go through an lz4
    Aggregator too (bursts of `compress_threshold` bytes or more compressed).
    ``on_start()`` is called once every connection is up and sending begins;
    ``on_progress(dict)`` every `progress_interval` seconds with elapsed,
    sent, echoed, received, connections; ``on_stop()`` when sending stops
    (before the drain).
    """
    from fastpacket import aio
    from fastpacket.apps.relay import JOIN, MOVE

    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if rate < 0:
        raise ValueError(f"rate must be >= 0 (0: pipelined), got {rate}")
    if rate == 0 and window < 1:
        raise ValueError(f"window must be >= 1 when pipelined, got {window}")
    rooms = rooms or max(1, -(-connections // 10))
    load = _MoveLoad(payload_size, 0 if rate else window, MOVE, JOIN)
    agg = None
    if compress:
        from fastpacket.aggregate import Aggregator

        agg = Aggregator("lz4", threshold=compress_threshold)
    players = [_Player(load, i, first_player_id + i, i % rooms) for i in range(connections)]
    load.room_of = {p.player_id: p.room for p in players}
    targets = list(servers) if servers else [(host, port)]
    errors: List[str] = []
    # the clients' packets must fit one aggregate frame (aio.Options refuses more)
    options: Dict[str, Any] = {"aggregator": agg, "max_packet_size": agg.frame_capacity()} if agg is not None else {}
    where = ""
    try:
        for p in players:
            h, pt = targets[(p.index // rooms) % len(targets)]
            where = f"{h}:{pt}"
            p.session = await aio.connect(h, pt, handler=p.on_batch, **options)
            p.session.send(JOIN, struct.pack("<I", p.room), player_id=p.player_id)
    except OSError as exc:
        for p in players:
            if p.session is not None:
                p.session.close("load aborted")
        raise ConnectionError(f"cannot connect to {where}: {exc}") from exc
    # every JOIN comes back before the first MOVE: the rooms are complete
    join_until = time.monotonic() + join_timeout
    while time.monotonic() < join_until and not all(p.joined or p.session.closed for p in players):
        await asyncio.sleep(0.005)
    if not all(p.joined for p in players):
        await asyncio.sleep(0.05)  # a server that does not answer JOINs: give them a moment to land
    if on_start is not None:
        on_start()
    t0 = time.monotonic()
    stop_at = t0 + seconds
    if rate == 0:
        for p in players:
            p.send(window)
    tick = min(0.05, max(0.002, 1.0 / rate)) if rate else progress_interval
    next_progress = t0 + progress_interval
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        if rate:
            due = int(rate * (now - t0)) + 1
            for p in players:
                if due > p.sent:
                    p.send(due - p.sent)
        if now >= next_progress:
            next_progress += progress_interval
            if on_progress is not None:
                on_progress(_progress(players, now - t0))
        if all(p.session.closed for p in players):
            break
        await asyncio.sleep(min(tick, stop_at - now, max(0.0, next_progress - now)))
    load.stopping = True
    elapsed = time.monotonic() - t0
    if on_stop is not None:
        on_stop()
    at_stop = _progress(players, elapsed)
    drain_until = time.monotonic() + drain_timeout
    while time.monotonic() < drain_until and any(p.echoed < p.sent and not p.session.closed for p in players):
        await asyncio.sleep(0.01)
    checked = any(p.heard_others for p in players)
    if checked:  # a relay: also wait for the room's MOVEs still on their way
        while time.monotonic() < drain_until and any(
                _unique(p) < _expected(p, players) and not p.session.closed for p in players):
            await asyncio.sleep(0.01)
    closes: Dict[str, int] = {}
    for p in players:
        s = p.session
        if s.closed:
            reason = s.close_reason or "closed"
            errors.append(f"connection {p.index} (player {p.player_id}) closed before the end: {reason}")
        elif p.echoed < p.sent:
            errors.append(f"connection {p.index} (player {p.player_id}): {p.sent - p.echoed} of {p.sent} "
                          f"MOVEs not echoed within {drain_timeout:g} s")
        s.close("load done")
    for p in players:
        try:
            reason = await asyncio.wait_for(p.session.wait_closed(), 5.0)
        except asyncio.TimeoutError:
            reason = "close timed out"
        closes[reason or "closed"] = closes.get(reason or "closed", 0) + 1
    m = load.rtt
    rtt = {"p50": (m.percentile(50.0) or 0) / 1e3, "p95": (m.percentile(95.0) or 0) / 1e3,
           "p99": (m.percentile(99.0) or 0) / 1e3, "max": (m.max or 0) / 1e3, "mean": (m.mean or 0) / 1e3,
           "count": m.count} if m.count else \
        {"p50": float("nan"), "p95": float("nan"), "p99": float("nan"), "max": float("nan"),
         "mean": float("nan"), "count": 0}
    if at_stop["echoed"] == 0 and not errors:
        errors.append("no MOVE came back: is the server a fastpacket relay or echo server?")
    expected = delivered = missing = 0
    duplicates = sum(p.duplicates for p in players)
    out_of_order = sum(p.out_of_order for p in players)
    if checked:
        for p in players:
            want = _expected(p, players)
            got = _unique(p)
            expected += want
            delivered += got
            missing += max(0, want - got)
        if missing or duplicates or out_of_order:
            errors.append(f"delivery check: {missing} MOVEs missing, {duplicates} duplicated, {out_of_order} "
                          f"out of order (of {expected} expected: every MOVE to every member of its room, "
                          f"once, in each sender's order)")
    return MoveLoadResult(
        connections=connections, rooms=rooms, seconds=elapsed,
        mode=f"{rate:g} packets/s per connection" if rate else f"pipelined (window {window})",
        sent=sum(p.sent for p in players), echoed=sum(p.echoed for p in players),
        received=sum(p.received for p in players),
        bytes_sent=sum(int(p.session.bytes_out) for p in players),
        bytes_received=sum(int(p.session.bytes_in) for p in players),
        sent_per_s=at_stop["sent"] / elapsed, echoed_per_s=at_stop["echoed"] / elapsed,
        received_per_s=at_stop["received"] / elapsed, rtt_us=rtt, closes=closes,
        compression=dict(agg.stats) if agg is not None else None, errors=errors, servers=len(targets),
        delivery_checked=checked, expected=expected, delivered=delivered, missing=missing,
        duplicates=duplicates, out_of_order=out_of_order)


def _unique(p: _Player) -> int:
    """MOVEs `p` received once each, from the players of its room."""
    room = p.room
    return sum(d.unique for sender, d in p.from_senders.items()
               if p.load.room_of.get(sender) == room)


def _expected(p: _Player, players: List[_Player]) -> int:
    """MOVEs `p` should receive: everything its room's players sent (its own included)."""
    return sum(q.sent for q in players if q.room == p.room)


def _progress(players: List[_Player], elapsed: float) -> Dict[str, Any]:
    return {"elapsed": elapsed, "sent": sum(p.sent for p in players), "echoed": sum(p.echoed for p in players),
            "received": sum(p.received for p in players),
            "connections": sum(1 for p in players if not p.session.closed)}


def run_move_load(host: str, port: int, *, loop: str = "asyncio", **kwargs: Any) -> MoveLoadResult:
    """``move_load`` on a fresh event loop of kind `loop`."""
    ev = new_event_loop(loop)
    try:
        return ev.run_until_complete(move_load(host, port, **kwargs))
    finally:
        ev.close()


# ---------------------------------------------------------------------------
# input load: players against the tick app

#: Largest speed an input load player asks for on either axis, world units
#: per tick (half the tick app's MAX_SPEED: some inputs are never clipped).
INPUT_LOAD_SPEED = 512
#: INPUT send times kept per player at first (grown as needed).
INPUT_LOG_INITIAL = 1024


@dataclass
class InputLoadResult:
    """What ``input_load`` measured. Rates are over the sending phase."""

    connections: int
    seconds: float             # sending phase
    rate: float                # INPUTs per second per player
    sent: int                  # INPUT packets sent
    states: int                # STATE packets received
    acked: int                 # INPUTs a STATE acknowledged
    sent_per_s: float
    states_per_s: float
    latency_us: Dict[str, float]  # input -> acknowledging STATE: p50, p95, p99, max, mean
    closes: Dict[str, int]
    errors: List[str]

    @property
    def ok(self) -> bool:
        """True when no connection reported an error."""
        return not self.errors

    def to_dict(self) -> Dict[str, Any]:
        """The result as a JSON-ready dict."""
        d = asdict(self)
        d["ok"] = self.ok
        return d


class _InputPlayer:
    """One connection of the input load."""

    def __init__(self, load: "_InputLoad", index: int, seed: int) -> None:
        self.load = load
        self.index = index
        self.rng = np.random.default_rng(seed)
        self.session: Any = None
        self.player_id = 0
        self.welcomed = asyncio.get_running_loop().create_future()
        self.sent = 0
        self.states = 0
        self.acked = 0
        self.sent_ns = np.zeros(INPUT_LOG_INITIAL, np.int64)  # send time of INPUT seq (1-based), grown as needed

    def on_batch(self, session: Any, batch: PacketBatch) -> None:
        from fastpacket.apps.tick import STATE, STATE_DTYPE, WELCOME, WELCOME_FORMAT

        types = batch.types
        if self.player_id == 0 and len(types) and types[0] == WELCOME:
            self.player_id = WELCOME_FORMAT.unpack_from(batch.payload(0))[0]
            if not self.welcomed.done():
                self.welcomed.set_result(self.player_id)
        own = (types == STATE) & (batch.player_ids == self.player_id)
        k = int(np.count_nonzero(own))
        if not k:
            return
        self.states += k
        last = batch.payload(int(np.flatnonzero(own)[-1]))
        if len(last) < STATE_DTYPE.itemsize:
            session.close(f"bad STATE: {len(last)} bytes, expected {STATE_DTYPE.itemsize}")
            return
        ack = int(np.frombuffer(last, STATE_DTYPE, 1)["ack"][0])
        if ack > self.acked:
            now = time.monotonic_ns()
            self.load.latency.record_many(np.maximum(now - self.sent_ns[self.acked + 1:ack + 1], 0))
            self.acked = ack

    def send(self, k: int) -> None:
        """Queue k INPUTs (one send_array)."""
        from fastpacket.apps.tick import INPUT, INPUT_DTYPE

        if k <= 0 or self.session.closed:
            return
        first = self.sent + 1
        if first + k >= len(self.sent_ns):
            self.sent_ns = np.concatenate([self.sent_ns, np.zeros(max(len(self.sent_ns), k), np.int64)])
        records = np.zeros(k, INPUT_DTYPE)
        records["seq"] = np.arange(first, first + k)
        records["vx"] = self.rng.integers(-INPUT_LOAD_SPEED, INPUT_LOAD_SPEED + 1, k)
        records["vy"] = self.rng.integers(-INPUT_LOAD_SPEED, INPUT_LOAD_SPEED + 1, k)
        self.sent_ns[first:first + k] = time.monotonic_ns()
        self.session.send_array(INPUT, records, player_ids=self.player_id)
        self.sent += k


class _InputLoad:
    def __init__(self) -> None:
        from fastpacket.metrics import Metric

        self.latency = Metric("input_latency_ns", "ns")


async def input_load(host: str, port: int, *, connections: int = 1000, seconds: float = 10.0, rate: float = 30.0,
                     drain_timeout: float = 5.0, connect_timeout: float = 30.0,
                     on_start: Optional[Callable[[], Any]] = None,
                     on_progress: Optional[Callable[[Dict[str, Any]], Any]] = None,
                     on_stop: Optional[Callable[[], Any]] = None,
                     progress_interval: float = 0.5) -> InputLoadResult:
    """Play `connections` players against the tick app at host:port for
    `seconds` (in the running event loop): each sends `rate` INPUTs per
    second once welcomed. ``on_start()`` is called once every player is
    welcomed, ``on_progress(dict)`` every `progress_interval` seconds
    (elapsed, sent, states, connections), ``on_stop()`` when sending stops
    (before the drain, which waits up to `drain_timeout` for the last acks).
    """
    from fastpacket import aio
    from fastpacket.system import raise_nofile

    if connections < 1:
        raise ValueError(f"connections must be >= 1, got {connections}")
    if seconds <= 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if not rate > 0:
        raise ValueError(f"rate must be > 0 INPUTs per second, got {rate}")
    raise_nofile(connections + 64)
    load = _InputLoad()
    players = [_InputPlayer(load, i, seed=i) for i in range(connections)]
    errors: List[str] = []
    try:
        for p in players:
            p.session = await aio.connect(host, port, handler=p.on_batch)
        await asyncio.wait_for(asyncio.gather(*(p.welcomed for p in players)), connect_timeout)
    except (OSError, asyncio.TimeoutError) as exc:
        for p in players:
            if p.session is not None:
                p.session.close("load aborted")
        welcomed = sum(1 for p in players if p.welcomed.done())
        raise ConnectionError(f"cannot start {connections} players at {host}:{port} ({welcomed} welcomed): "
                              f"{type(exc).__name__}: {exc}") from exc
    if on_start is not None:
        on_start()
    t0 = time.monotonic()
    stop_at = t0 + seconds
    tick = min(0.05, max(0.002, 1.0 / rate))
    next_progress = t0 + progress_interval
    while True:
        now = time.monotonic()
        if now >= stop_at:
            break
        due = int(rate * (now - t0)) + 1
        for p in players:
            p.send(due - p.sent)
        if now >= next_progress:
            next_progress += progress_interval
            if on_progress is not None:
                on_progress(_input_progress(players, now - t0))
        if all(p.session.closed for p in players):
            break
        await asyncio.sleep(min(tick, stop_at - now))
    elapsed = time.monotonic() - t0
    if on_stop is not None:
        on_stop()
    at_stop = _input_progress(players, elapsed)
    drain_until = time.monotonic() + drain_timeout
    while time.monotonic() < drain_until and any(p.acked < p.sent and not p.session.closed for p in players):
        await asyncio.sleep(0.01)
    closes: Dict[str, int] = {}
    for p in players:
        if p.session.closed:
            errors.append(f"connection {p.index} (player {p.player_id}) closed before the end: "
                          f"{p.session.close_reason}")
        elif p.states == 0:
            errors.append(f"connection {p.index} (player {p.player_id}) got no STATE")
        # Half-close: the server sees the end of our stream and closes its
        # side; we read its last STATEs meanwhile. A full close here, with
        # STATEs still arriving, would reset the connection under the server.
        s = p.session
        if not s.closed and s.transport is not None and s.transport.can_write_eof():
            s.flush()
            s.transport.write_eof()
        else:
            s.close("load done")
    for p in players:
        try:
            reason = await asyncio.wait_for(p.session.wait_closed(), 5.0)
        except asyncio.TimeoutError:
            p.session.close("load done")
            reason = "close timed out"
        closes[reason or "closed"] = closes.get(reason or "closed", 0) + 1
    m = load.latency
    latency = {"p50": (m.percentile(50.0) or 0) / 1e3, "p95": (m.percentile(95.0) or 0) / 1e3,
               "p99": (m.percentile(99.0) or 0) / 1e3, "max": (m.max or 0) / 1e3, "mean": (m.mean or 0) / 1e3,
               "count": m.count}
    return InputLoadResult(connections=connections, seconds=elapsed, rate=rate, sent=sum(p.sent for p in players),
                           states=sum(p.states for p in players), acked=sum(p.acked for p in players),
                           sent_per_s=at_stop["sent"] / elapsed, states_per_s=at_stop["states"] / elapsed,
                           latency_us=latency, closes=closes, errors=errors)


def _input_progress(players: List[_InputPlayer], elapsed: float) -> Dict[str, Any]:
    return {"elapsed": elapsed, "sent": sum(p.sent for p in players), "states": sum(p.states for p in players),
            "connections": sum(1 for p in players if not p.session.closed)}


def run_input_load(host: str, port: int, *, loop: str = "asyncio", **kwargs: Any) -> InputLoadResult:
    """``input_load`` on a fresh event loop of kind `loop`."""
    ev = new_event_loop(loop)
    try:
        return ev.run_until_complete(input_load(host, port, **kwargs))
    finally:
        ev.close()
