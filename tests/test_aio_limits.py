"""The adapter's limits under issue 14's findings, each on both event loops
and real sockets on 127.0.0.1, every wait bounded: the inflate budget and
the rate limit charged before inflating (finding 2), inner packets and
max_packet_size (4), close reasons counted by class (3), idle_timeout and
packet_timeout against a drip (5), the receive-ring pool giving memory back
(7), Options checks. The attacks themselves, against a server process, are
tests/test_hostile.py."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import recv_packets, run  # noqa: F401  (the fixture)
from tests.reference_aggregate import ref_pack, ref_packet

#: Seconds any single wait of these tests may take.
WAIT_S = 10.0


def echo(session, batch):
    session.send_batch(batch)


async def wait_until(predicate, what, timeout=WAIT_S):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def raw_connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.setblocking(False)
    return sock


def zeros_aggregate(raw_size, packet_size=1000, ptype=1):
    """A zlib aggregate of valid packets of zeros declaring `raw_size`: a
    few hundred bytes on the wire."""
    count, rest = divmod(raw_size, packet_size)
    packets = [ref_packet(ptype, bytes(packet_size - 12))] * count
    if rest:
        packets.append(ref_packet(ptype, bytes(rest - 12)))
    return ref_pack(packets, "zlib", threshold=0), packets


# -- finding 2: the inflate budget, the rate limit before inflating ----------------

def test_aggregates_past_the_inflate_budget_wait_and_all_arrive(run):  # noqa: F811
    """Frames that together declare more than max_inflate_bytes in one read
    are not refused: one budget's worth per loop iteration, reading paused
    meanwhile, every packet echoed in order."""
    async def main():
        sessions = []
        agg = fp.Aggregator("zlib")
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=agg, max_packet_size=2048,
                                 max_inflate_bytes=65536, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=2048)
        frame, inner = zeros_aggregate(60000)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        await loop.sock_sendall(sock, frame * 20)  # 1.2 MB declared in one write of a few KB
        dec = fp.FrameDecoder(max_packet_size=2048, aggregator=fp.Aggregator())
        got = []
        while len(got) < 20 * len(inner):
            data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S)
            assert data, "closed"
            got.extend(p.to_bytes() for p in dec.feed(data))
        assert got == inner * 20
        client.send(3, b"the other client is served meanwhile")
        (p,) = await recv_packets(client, 1)
        assert bytes(p.payload) == b"the other client is served meanwhile"
        assert server.closes == {} and agg.stats["unpacked"] == 21  # and the client's one frame
        sock.close()
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_one_aggregate_over_the_inflate_budget_closes_before_inflating(run):  # noqa: F811
    async def main():
        sessions = []
        agg = fp.Aggregator("zlib")
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=agg, max_packet_size=2048,
                                 on_connect=sessions.append)
        assert server.options.inflate_budget == 4 * 65536  # the default: four receive buffers
        bomb, _ = zeros_aggregate(1 << 20)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        await loop.sock_sendall(sock, bomb * 60)
        await wait_until(lambda: server.closes, "the close")
        assert server.closes == {"protocol_error": 1}
        reason = sessions[0].close_reason
        assert "(max_inflate_bytes): raw_size 1048576" in reason and "refused before decompressing" in reason
        assert agg.stats["unpacked"] == 0 and agg.stats["rejected"] == 1
        sock.close()
        await server.shutdown(WAIT_S)

    run(main())


@pytest.mark.parametrize("policy", ["drop", "close"])
def test_the_rate_limit_charges_what_an_aggregate_declares_before_inflating(run, policy):  # noqa: F811
    """A 60,000-byte aggregate against a 10,000-bytes/s limit: refused on
    what it declares, never inflated; plain packets within the rate pass."""
    async def main():
        got = []
        agg = fp.Aggregator("zlib")
        server = await aio.serve(lambda s, b: got.extend(p.to_bytes() for p in b), "127.0.0.1", 0,
                                 aggregator=agg, max_packet_size=2048, bytes_per_s=10_000, rate_burst=1.0,
                                 rate_policy=policy)
        frame, inner = zeros_aggregate(60_000)
        small = ref_packet(1, b"small")
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        await loop.sock_sendall(sock, small)
        await wait_until(lambda: got, "the small packet")
        await loop.sock_sendall(sock, frame)
        await wait_until(lambda: server.drops or server.closes, "the refusal")
        assert agg.stats["unpacked"] == 0  # charged what it declares, before inflating
        if policy == "drop":
            assert server.drops == {"rate limit": len(inner)}  # its declared count
            await loop.sock_sendall(sock, small)  # within the rate: the connection goes on
            await wait_until(lambda: len(got) == 2, "the next packet")
            assert server.closes == {}
        else:
            await wait_until(lambda: server.closes, "the close")
            assert server.closes == {"rate_limit_exceeded": 1}
        assert got == [small] * len(got)
        sock.close()
        await server.shutdown(WAIT_S)

    run(main())


# -- finding 4: inner packets obey max_packet_size ----------------------------------

def test_an_aggregate_cannot_smuggle_a_packet_over_max_packet_size(run):  # noqa: F811
    """A 54-byte zlib frame delivered a 5,012-byte packet to a server whose
    limit is 1,024; now refused as the same packet sent plainly is."""
    async def main():
        sessions, got = [], []
        server = await aio.serve(lambda s, b: got.extend(b), "127.0.0.1", 0, aggregator=fp.Aggregator(),
                                 max_packet_size=1024, on_connect=sessions.append)
        frame = ref_pack([ref_packet(1, bytes(5000))], "zlib", threshold=0)
        assert len(frame) < 64
        loop = asyncio.get_running_loop()
        for i, data in enumerate((frame, ref_packet(1, bytes(5000)))):
            sock = raw_connect(server.port)
            await loop.sock_sendall(sock, data)
            await wait_until(lambda: sum(server.closes.values()) == i + 1, "the close")
            sock.close()
        assert server.closes == {"protocol_error": 2} and got == []
        smuggled, plain = (s.close_reason for s in sessions)
        assert "(max_packet_size): inner packet 0 at body offset 0 has size 5012, over max_packet_size 1024" \
            in smuggled
        assert "packet size 5012 at stream offset 0 exceeds max_packet_size 1024" in plain
        await server.shutdown(WAIT_S)

    run(main())


# -- finding 3: close reasons by class ------------------------------------------------

def test_closes_are_counted_by_class_not_by_text(run):  # noqa: F811
    """40,000 connections with distinct bad sizes grew server.closes (keyed
    by the full text, which holds the size) by 7.5 MiB; it now has one key."""
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, max_packet_size=1000, on_connect=sessions.append)
        loop = asyncio.get_running_loop()
        n = 50
        for i in range(n):
            sock = raw_connect(server.port)
            await loop.sock_sendall(sock, struct.pack("<HHII", 1001 + i, 1, 0, 0))
            sock.close()
        await wait_until(lambda: sum(server.closes.values()) == n, "the closes")
        assert server.closes == {"protocol_error": n}
        assert len({s.close_reason for s in sessions}) == n  # the full text stays on each session
        await server.shutdown(WAIT_S)

    run(main())


def test_close_classes_are_bounded(run):  # noqa: F811
    async def main():
        server = await aio.serve(lambda s, b: s.close(f"reason{b[0].type}"), "127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        n = 80
        for i in range(n):
            sock = raw_connect(server.port)
            await loop.sock_sendall(sock, fp.encode(i, b""))
            await wait_until(lambda: sum(server.closes.values()) == i + 1, "the close")
            sock.close()
        closes = server.closes
        assert len(closes) == 64 and closes["other"] == n - 63 and sum(closes.values()) == n
        await server.shutdown(WAIT_S)

    run(main())


# -- finding 5: idle_timeout counts packets, packet_timeout bounds a partial one ------

@pytest.mark.parametrize("limit", ["idle_timeout", "packet_timeout"])
def test_a_drip_into_one_packet_is_closed_on_time(run, limit):  # noqa: F811
    """Dripping 1 byte every 0.1 s into one packet kept a connection open
    past idle_timeout (every byte reset it). It is closed now, while the drip
    goes on, with the reason; a well-behaved client stays."""
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append, **{limit: 0.5})
        good = await aio.connect("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        packet = fp.encode(1, bytes(200))
        sent = 0
        deadline = loop.time() + WAIT_S
        while not server.closes and loop.time() < deadline:
            await loop.sock_sendall(sock, packet[sent:sent + 1])
            sent += 1
            good.send(2, b"still here")  # a complete packet every 0.1 s: never idle
            assert len(await recv_packets(good, 1)) == 1
            await asyncio.sleep(0.1)
        assert sent < len(packet)  # closed in the middle of the packet
        expected = "idle timeout" if limit == "idle_timeout" else "packet timeout"
        assert server.closes == {expected.replace(" ", "_"): 1}
        assert [s.close_reason for s in sessions if s.closed] == [expected]
        sock.close()
        good.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_packets_that_keep_completing_are_not_a_packet_timeout(run):  # noqa: F811
    """A stream whose reads end mid-packet is not a partial packet that
    waits: packet_timeout measures one packet's wait, not the stream's."""
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, packet_timeout=0.3)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        stream = b"".join(fp.encode(1, bytes(50)) for _ in range(20))
        for i in range(0, len(stream), 31):  # every read ends inside a packet
            await loop.sock_sendall(sock, stream[i:i + 31])
            await asyncio.sleep(0.05)
        echoed = b""
        while len(echoed) < len(stream):
            echoed += await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), WAIT_S)
        assert echoed == stream and server.closes == {}
        sock.close()
        await server.shutdown(WAIT_S)

    run(main())


# -- finding 7: the ring pool gives memory back ----------------------------------------

def test_the_ring_pool_shrinks_to_its_floor_when_unused(run):  # noqa: F811
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0)
        hub = server._hub
        loop = asyncio.get_running_loop()
        socks = [raw_connect(server.port) for _ in range(40)]
        packet = fp.encode(1, b"x" * 100)
        for sock in socks:  # half a packet each: 40 connections hold a ring at once
            await loop.sock_sendall(sock, packet[:50])
        await wait_until(lambda: len(server.sessions) == 40, "the connections")
        await asyncio.sleep(0.2)  # bounded: the halves are read
        for sock in socks:  # the rest: each ring, empty again, goes back to the pool
            await loop.sock_sendall(sock, packet[50:])
            assert await asyncio.wait_for(loop.sock_recv(sock, 200), WAIT_S) == packet
        pooled = hub.pooled_rings
        assert pooled > 16
        hub._trim_pools()  # a period in which rings were lent: none spare yet
        assert hub.pooled_rings == pooled
        hub._trim_pools()  # a whole period without a lend: back to the floor
        assert hub.pooled_rings == 16
        again = await aio.connect("127.0.0.1", server.port)
        again.send(1, b"still served")
        assert len(await recv_packets(again, 1)) == 1
        again.close()
        for sock in socks:
            sock.close()
        await server.shutdown(WAIT_S)

    run(main())


# -- Options ---------------------------------------------------------------------------

@pytest.mark.parametrize("kwargs, error, message", [
    (dict(max_packet_size=2**32), ValueError, r"max_packet_size must be in \[12, 4294967295\]"),
    (dict(max_packet_size=5), ValueError, "max_packet_size must be in"),
    (dict(max_packet_size=100.5), TypeError, "max_packet_size must be an int"),
    (dict(max_inflate_bytes=1 << 20), ValueError, "max_inflate_bytes bounds what an aggregator inflates"),
    (dict(aggregator=fp.Aggregator(), max_packet_size=1024, max_inflate_bytes=1000), ValueError,
     r"max_inflate_bytes must be in \[65515, "),
    (dict(packet_timeout=0), ValueError, "packet_timeout must be > 0"),
    (dict(idle_timeout=float("nan")), ValueError, "idle_timeout must be > 0"),
])
def test_options_refuse_impossible_limits(kwargs, error, message):
    with pytest.raises(error, match=message):
        aio.Options(**kwargs).check()


def test_the_default_inflate_budget_takes_any_frame_a_peer_packs():
    wide = fp.HeaderLayout([("len", "u32"), ("type", "u16")], "len")
    options = aio.Options(layout=wide, aggregator=fp.Aggregator(max_raw_size=1 << 20), max_packet_size=4096,
                          recv_buffer=1 << 16).check()
    assert options.inflate_budget == 1 << 20  # one frame's capacity, above four receive buffers
    assert aio.Options().check().inflate_budget is None
