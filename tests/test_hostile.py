"""Hostile clients against a real server process (tests/hostile_server.py:
echo, zlib aggregation, max_packet_size 4096, idle_timeout 1 s,
write_timeout 1 s, max_pending_bytes 256 KiB), on asyncio's loop and on
uvloop. Each attack asserts the reason its connection was closed with,
that a well-behaved client of the same server kept getting byte-exact
replies all through it, and a bound on the server's memory (its RSS and
its peak RSS, reset before the attack). Every wait is bounded."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import queue
import random
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.system import new_event_loop
from tests.hostile_server import OPTIONS, aggregator
from tests.reference_aggregate import ref_pack, ref_packet, ref_raw_frame

LOOPS = ["asyncio", "uvloop"]
#: Seconds any single wait may take.
WAIT_S = 15.0
#: KiB a single attack may add to the server's peak RSS, the bombs included
#: (issue 14: 60 bombs per 64 KiB write took it from 37 to 158 MiB).
PEAK_BOUND_KIB = 8 << 10
#: KiB the server's RSS may keep after an attack is over.
KEPT_BOUND_KIB = 4 << 10
#: Seconds between two rounds of the well-behaved client.
GOOD_ROUND_S = 0.02
MAX_PACKET = OPTIONS["max_packet_size"]
#: Connections with distinct bad sizes per loop (issue 14, finding 3).
BAD_CONNECTIONS = 10_000
#: Attacking connections open at once.
ATTACK_WORKERS = 64
#: Seconds the server's RSS may take to come back after an attack: two of
#: its pool trims (fastpacket.aio trims every 5 s while there is work).
SETTLE_S = 11.0
#: Seconds between two connects while the machine is out of ephemeral ports.
PORT_RETRY_S = 0.05


class HostileServer:
    """tests.hostile_server in a subprocess: its port, pid, memory, and the
    close reasons it reports per peer port."""

    def __init__(self, loop_kind: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.hostile_server", loop_kind],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        self.lines: "queue.Queue[dict]" = queue.Queue()
        self.reasons: dict = {}
        ready: "queue.Queue[str]" = queue.Queue()

        def reader() -> None:
            for raw in self.proc.stdout:  # type: ignore[union-attr]
                line = raw.decode()
                if line.startswith("READY"):
                    ready.put(line)
                elif line.strip():
                    self.lines.put(json.loads(line))

        threading.Thread(target=reader, daemon=True).start()
        try:
            line = ready.get(timeout=WAIT_S)
        except queue.Empty:
            self.proc.kill()
            raise RuntimeError(f"the hostile server did not start: {self.proc.stderr.read().decode()}") from None
        _, port, pid = line.split()
        self.port, self.pid = int(port), int(pid)

    def forget(self) -> None:
        """Forgets the closes reported so far: a reason looked up from now on
        is that of a connection made from now on (peer ports are reused)."""
        self._drain()
        self.reasons.clear()

    def _drain(self) -> list:
        stats = []
        while True:
            try:
                item = self.lines.get_nowait()
            except queue.Empty:
                return stats
            if "stats" in item:
                stats.append(item["stats"])
            else:
                self.reasons[item["peer"]] = item["reason"]

    async def close_reason(self, peer_port: int) -> str:
        deadline = time.monotonic() + WAIT_S
        while peer_port not in self.reasons:
            if time.monotonic() > deadline:
                raise AssertionError(f"the server reported no close for peer port {peer_port}")
            await asyncio.sleep(0.01)
            self._drain()
        return self.reasons[peer_port]

    async def stats(self) -> dict:
        self.proc.stdin.write(b"stats\n")  # type: ignore[union-attr]
        self.proc.stdin.flush()  # type: ignore[union-attr]
        deadline = time.monotonic() + WAIT_S
        while True:
            got = self._drain()
            if got:
                return got[-1]
            if time.monotonic() > deadline:
                raise AssertionError("no stats from the server")
            await asyncio.sleep(0.01)

    def memory_kib(self) -> tuple:
        """(VmRSS, VmHWM) of the server, KiB."""
        fields = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def reset_peak(self) -> None:
        with open(f"/proc/{self.pid}/clear_refs", "w") as f:
            f.write("5")  # VmHWM back to the current RSS

    def stop(self) -> None:
        try:
            self.proc.communicate(b"quit\n", timeout=WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


@pytest.fixture(scope="module", params=LOOPS)
def hostile(request):
    if request.param == "uvloop":
        pytest.importorskip("uvloop")
    server = HostileServer(request.param)
    server.loop_kind = request.param
    yield server
    server.stop()


class GoodClient:
    """A well-behaved client of the same server (aggregation on both ends,
    as README sets it up): a round of numbered packets every GOOD_ROUND_S,
    each echo checked byte for byte and in order."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.rounds = 0
        self.failure = None
        self._task = None

    async def __aenter__(self) -> "GoodClient":
        self.session = await aio.connect("127.0.0.1", self.port, aggregator=aggregator(),
                                         max_packet_size=MAX_PACKET)
        self._task = asyncio.ensure_future(self._run())
        await self.wait_rounds(3)
        return self

    async def _run(self) -> None:
        try:
            while True:
                n = self.rounds
                batch = fp.PacketBatch.build([7] * 5, [n.to_bytes(8, "little") + bytes([k]) * 40 for k in range(5)],
                                             seqs=range(n * 5, n * 5 + 5), player_ids=[42] * 5)
                self.session.send_batch(batch)
                got = []
                while len(got) < 5:
                    b = await self.session.recv(WAIT_S)
                    if b is None:
                        raise AssertionError(f"closed: {self.session.close_reason}")
                    got.extend(p.to_bytes() for p in b)
                if got != [p.to_bytes() for p in batch]:
                    raise AssertionError(f"round {n}: echo differs")
                self.rounds += 1
                await asyncio.sleep(GOOD_ROUND_S)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # recorded, asserted at the end
            self.failure = exc

    async def wait_rounds(self, n: int) -> None:
        deadline = time.monotonic() + WAIT_S
        target = self.rounds + n
        while self.rounds < target and self.failure is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"the well-behaved client made {self.rounds} rounds, waited for {target}")
            await asyncio.sleep(0.01)

    async def __aexit__(self, *exc) -> None:
        if exc[0] is None:
            await self.wait_rounds(3)  # still served after the attack
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self.session.close()
        await self.session.wait_closed()
        assert self.failure is None, f"the well-behaved client failed: {self.failure!r}"


def attack(hostile, body, *, peak_kib=PEAK_BOUND_KIB):
    """Runs `body(loop, port)` (returns the attacker's peer port, or a list
    of them) on a loop of the server's kind with a well-behaved client beside
    it; returns the close reasons of the attacker's connections. Asserts the
    client was served all along and the server's memory stayed bounded."""
    async def main():
        loop = asyncio.get_running_loop()
        async with GoodClient(hostile.port) as good:
            rss0, _ = hostile.memory_kib()
            hostile.reset_peak()
            started = good.rounds
            hostile.forget()
            peers = await body(loop, hostile.port)
            peers = peers if isinstance(peers, list) else [peers]
            reasons = [await hostile.close_reason(p) for p in peers]
            await good.wait_rounds(2)
            assert good.rounds > started  # replies came during the attack
            rss1, peak = hostile.memory_kib()
        assert peak - rss0 < peak_kib, f"peak RSS {peak - rss0} KiB over the idle server"
        assert rss1 - rss0 < KEPT_BOUND_KIB, f"RSS {rss1 - rss0} KiB over the idle server after the attack"
        return reasons

    event_loop = new_event_loop(hostile.loop_kind)
    try:
        return event_loop.run_until_complete(asyncio.wait_for(main(), 120))
    finally:
        event_loop.close()


async def raw(loop, port):
    """A connected non-blocking socket. Out of ephemeral ports for a moment
    (EADDRNOTAVAIL: other jobs on the machine open connections too), it
    retries until WAIT_S is over."""
    deadline = loop.time() + WAIT_S
    while True:
        sock = socket.socket()
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), WAIT_S)
            return sock
        except OSError as exc:
            sock.close()
            if exc.errno != errno.EADDRNOTAVAIL or loop.time() > deadline:
                raise
        await asyncio.sleep(PORT_RETRY_S)


async def until_closed(loop, sock):
    """Reads (and drops) what the server sends until it closes; bounded."""
    deadline = loop.time() + WAIT_S
    try:
        while loop.time() < deadline:
            if not await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S):
                return
    except ConnectionResetError:
        return
    raise AssertionError("the server did not close the connection")


def bomb(raw_size, packet_size=1000):
    """A zlib aggregate of `packet_size`-byte packets of zeros declaring
    `raw_size`: about a thousandth of it on the wire."""
    count, rest = divmod(raw_size, packet_size)
    packets = [ref_packet(1, bytes(packet_size - 12))] * count + ([ref_packet(1, bytes(rest - 12))] if rest else [])
    return ref_pack(packets, "zlib", threshold=0)


# -- sizes and garbage ----------------------------------------------------------

def test_oversize_length_is_closed_before_its_payload(hostile):
    async def body(loop, port):
        sock = await raw(loop, port)
        await loop.sock_sendall(sock, struct.pack("<HHII", 60000, 1, 0, 0))  # a header, no payload
        await until_closed(loop, sock)  # without waiting for the 60,000 bytes
        peer = sock.getsockname()[1]
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("protocol error: packet size 60000 at stream offset 0 exceeds max_packet_size 4096")


def test_undersize_length(hostile):
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        await loop.sock_sendall(sock, ref_packet(1, b"fine") + struct.pack("<HHII", 5, 1, 0, 0))
        await until_closed(loop, sock)
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("protocol error: packet size 5 at stream offset 16 is below the header size 12")


def test_garbage(hostile):
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        await loop.sock_sendall(sock, random.Random(14).randbytes(64 << 10))
        await until_closed(loop, sock)
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("protocol error:")


def test_many_distinct_bad_sizes_leave_memory_where_it_was(hostile):
    """Issue 14, finding 3: server.closes was keyed by the full reason text,
    which holds the announced size: 40,000 connections with distinct bad
    sizes grew the server by 7.5 MiB. Counted by class, they leave its RSS
    within 2 MiB (10,000 connections here per loop; 100,000 measured once,
    see the issue's closing note: FASTPACKET_HOSTILE_BAD_CONNECTIONS=100000
    runs it with that many)."""
    n = int(os.environ.get("FASTPACKET_HOSTILE_BAD_CONNECTIONS", BAD_CONNECTIONS))

    async def body(loop, port):
        before = (await hostile.stats())["closes"].get("protocol_error", 0)
        rss0, _ = hostile.memory_kib()

        async def worker(first):
            # a few workers, not one task per connection: 100,000 tasks at
            # once starve the well-behaved client on this loop for seconds
            for i in range(first, n, ATTACK_WORKERS):
                sock = await raw(loop, port)
                try:
                    await loop.sock_sendall(sock, struct.pack("<HHII", MAX_PACKET + 1 + i % 60000, 1, i, 0))
                    await until_closed(loop, sock)
                finally:
                    sock.close()

        await asyncio.gather(*(worker(k) for k in range(ATTACK_WORKERS)))
        deadline = loop.time() + WAIT_S
        while (await hostile.stats())["closes"].get("protocol_error", 0) < before + n:
            assert loop.time() < deadline, "the closes were not all counted"
            await asyncio.sleep(0.05)
        stats = await hostile.stats()
        assert set(stats["closes"]) <= {"protocol_error", "idle_timeout", "peer_closed", "connection_lost",
                                        "slow_consumer", "bad_join"}  # classes, never texts
        # the server hands freed memory back at its next pool trim (every
        # few seconds after closes): allow it two of them
        deadline = loop.time() + SETTLE_S
        rss1, _ = hostile.memory_kib()
        while rss1 - rss0 >= 2 << 10 and loop.time() < deadline:
            await asyncio.sleep(0.25)
            rss1, _ = hostile.memory_kib()
        assert rss1 - rss0 < 2 << 10, f"{n} bad connections kept {rss1 - rss0} KiB"
        hostile.forget()  # the 10,000 peer ports are reused from here on
        sock = await raw(loop, port)  # the reason of one more, for the attack() bookkeeping
        await loop.sock_sendall(sock, struct.pack("<HHII", 5000, 1, 0, 0))
        await until_closed(loop, sock)
        peer = sock.getsockname()[1]
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("protocol error: packet size 5000")


# -- slow and broken peers ------------------------------------------------------------

def test_slowloris_drip_is_closed_by_the_idle_timeout(hostile):
    """Issue 14, finding 5: one byte every 0.2 s into one packet reset the
    idle timeout forever; idle_timeout counts complete packets."""
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        packet = ref_packet(1, bytes(500))
        deadline = loop.time() + WAIT_S
        sent = 0
        try:
            while loop.time() < deadline and sent < len(packet):
                await loop.sock_sendall(sock, packet[sent:sent + 1])
                sent += 1
                await asyncio.sleep(0.2)
                if peer in hostile.reasons or (hostile._drain() or peer in hostile.reasons):
                    break
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert sent < len(packet)  # closed while still dripping
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason == "idle timeout"


@pytest.mark.parametrize("how", ["fin", "rst"])
def test_disconnect_in_the_middle_of_a_packet(hostile, how):
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        await loop.sock_sendall(sock, ref_packet(1, b"whole") + ref_packet(2, bytes(300))[:100])
        await asyncio.sleep(0.1)
        if how == "fin":
            sock.shutdown(socket.SHUT_WR)
            await until_closed(loop, sock)
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with RST
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    if how == "fin":
        assert reason == "peer closed"
    else:
        assert reason.startswith("connection lost:") or reason == "peer closed"


def test_flooder_that_never_reads_is_cut_off(hostile):
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        noise = random.Random(7)  # incompressible: the echoes pile up at the server's size
        burst = b"".join(ref_packet(1, noise.randbytes(1000)) for _ in range(60))
        deadline = loop.time() + WAIT_S
        try:
            while loop.time() < deadline:
                await asyncio.wait_for(loop.sock_sendall(sock, burst), 2.0)
                if hostile._drain() or peer in hostile.reasons:
                    break
        except (BrokenPipeError, ConnectionResetError, asyncio.TimeoutError):
            pass  # the server stopped reading, then cut us off
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason == "slow consumer"


def test_rst_while_the_server_writes(hostile):
    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        random_payloads = random.Random(3)  # incompressible: the replies stay large
        burst = b"".join(ref_packet(1, random_payloads.randbytes(1000)) for _ in range(60))
        for _ in range(3):
            await loop.sock_sendall(sock, burst)  # ~180 KB of echoes queued for a peer that does not read
        await asyncio.sleep(0.2)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST while the server has output pending
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("connection lost:") or reason in ("peer closed", "slow consumer")


# -- aggregates -----------------------------------------------------------------------------

def test_zlib_bombs_are_refused_before_inflating(hostile):
    """Issue 14, finding 2: one 64 KiB write of 60 zlib frames of about 1 KB
    each declaring 1 MiB made a 60 MiB batch (37 -> 158 MiB). Refused before
    decompressing: the server's peak stays within 8 MiB of the idle one."""
    peaks = []

    async def body(loop, port):
        frame = bomb(1 << 20, packet_size=65535)  # as the campaign's: about 1.1 KB declaring 1 MiB
        assert len(frame) < 1200 <= MAX_PACKET
        writes = frame * (65536 // len(frame))
        assert len(writes) <= 65536 and writes.count(frame) >= 50
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        try:
            await loop.sock_sendall(sock, writes)
            await until_closed(loop, sock)
        except (BrokenPipeError, ConnectionResetError):
            pass
        sock.close()
        peaks.append(hostile.memory_kib()[1])
        return peer

    (reason,) = attack(hostile, body)
    assert "(max_inflate_bytes): raw_size 1048576" in reason and "refused before decompressing" in reason


def test_valid_bombs_within_the_budget_are_inflated_a_budget_at_a_time(hostile):
    """Aggregates that inflate to valid packets and each declare less than
    the budget are served, one budget per loop iteration with reading
    paused meanwhile: memory stays bounded all the same."""
    async def body(loop, port):
        frame = bomb(200_000)
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        await loop.sock_sendall(sock, frame * 30)  # 6 MB declared in about 6 KB
        dec = fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator())
        got = 0
        deadline = loop.time() + WAIT_S
        while got < 30 * 200 and loop.time() < deadline:
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S)
            assert data
            got += len(dec.feed(data))
        assert got == 30 * 200  # every packet echoed
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason in ("peer closed",) or reason.startswith("connection lost:")


@pytest.mark.parametrize("lie, check", [
    ("nested", "nested"),
    ("count", "count"),
    ("raw_size", "raw_size"),
    ("inner_too_large", "max_packet_size"),
    ("corrupt", "decompress"),
])
def test_nested_and_lying_aggregates(hostile, lie, check):
    inner = [ref_packet(1, b"a" * 40), ref_packet(2, b"b" * 40)]
    if lie == "nested":
        frame = ref_pack([ref_pack(inner, "none")], "zlib", threshold=0)
    elif lie == "count":
        body = b"".join(inner)
        frame = ref_raw_frame(zlib.compress(body), codec=2, count=3, raw_size=len(body))
    elif lie == "raw_size":
        body = b"".join(inner)
        frame = ref_raw_frame(zlib.compress(body), codec=2, count=2, raw_size=len(body) - 10)
    elif lie == "inner_too_large":  # finding 4: a 5,012-byte packet in a 54-byte frame
        frame = ref_pack([ref_packet(1, bytes(5000))], "zlib", threshold=0)
    else:
        frame = ref_raw_frame(b"\x78\x9c" + bytes(30), codec=2, count=2, raw_size=104)

    async def body(loop, port):
        sock = await raw(loop, port)
        peer = sock.getsockname()[1]
        await loop.sock_sendall(sock, ref_packet(9, b"before") + frame + ref_packet(9, b"after"))
        echoed = b""
        try:
            while True:
                data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S)
                if not data:
                    break
                echoed += data
        except ConnectionResetError:
            pass
        dec = fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator())
        assert [p.to_bytes() for p in dec.feed(echoed)] == [ref_packet(9, b"before")]  # not the lie, nor after
        sock.close()
        return peer

    (reason,) = attack(hostile, body)
    assert reason.startswith("protocol error:") and f"bad aggregate frame ({check})" in reason
