"""Groups of one server (no bus): membership, the native fan-out (each
member's own seq for send, byte-for-byte for send_batch, exclude), one
write per member per loop iteration, sessions leaving on close, argument
errors. Every test runs on asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import recv_packets, run  # noqa: F401  (the fixture)



async def _server_and_clients(n, handler=None, **kw):
    joined = []

    def on_connect(session):
        joined.append(session)

    server = await aio.serve(handler or (lambda s, b: None), on_connect=on_connect, **kw)
    clients = [await aio.connect("127.0.0.1", server.port) for _ in range(n)]
    for _ in range(500):
        if len(joined) == n:
            break
        await asyncio.sleep(0.01)
    assert len(joined) == n
    return server, clients, joined


def test_membership_and_identity(run):
    async def main():
        server, clients, sessions = await _server_and_clients(3)
        room = server.group("room:1")
        assert server.group("room:1") is room and server.group(7) is not server.group("7")
        assert len(room) == 0 and sessions[0] not in room
        for s in sessions:
            room.add(s)
        room.add(sessions[0])  # again: nothing changes
        assert len(room) == 3 and all(s in room for s in sessions)
        assert sessions[0].groups == [room] and sessions[0].group("room:1") is room
        room.discard(sessions[1])
        room.discard(sessions[1])
        assert len(room) == 2 and sessions[1] not in room and sessions[1].groups == []
        other = await aio.serve(lambda s, b: None)
        with pytest.raises(ValueError, match="another server"):
            other.group("x").add(sessions[0])
        with pytest.raises(TypeError, match="sessions"):
            room.add("not a session")
        with pytest.raises(TypeError, match="str or an int"):
            server.group(1.5)
        with pytest.raises(TypeError, match="str or an int"):
            server.group(True)
        with pytest.raises(TypeError, match="server.group"):
            fp.aio.Group()
        assert (await room.ready()) is True  # no bus: ready at once
        for c in clients:
            c.close()
        for _ in range(500):
            if len(room) == 0:
                break
            await asyncio.sleep(0.01)
        assert len(room) == 0  # a session leaves its groups when it closes
        for srv in (server, other):
            srv.close()
            await srv.wait_closed()

    run(main())


def test_send_numbers_per_member_and_send_batch_relays(run):
    async def main():
        server, clients, sessions = await _server_and_clients(3)
        room = server.group(5)
        for s in sessions:
            room.add(s)
        sessions[0].send(9, b"first")  # member 0's counter is ahead by one
        assert room.send(1, b"hello", player_id=42) == 3
        got0 = await recv_packets(clients[0], 2)
        assert [(p.type, p.seq) for p in got0] == [(9, 0), (1, 1)]
        for c in clients[1:]:
            (p,) = await recv_packets(c, 1)
            assert (p.type, p.seq, p.player_id, bytes(p.payload)) == (1, 0, 42, b"hello")
        batch = fp.PacketBatch.build([3, 4], [b"a", b"bb"], seqs=[100, 200], player_ids=[7, 8])
        room.send_batch(batch, exclude=sessions[2])
        for c in clients[:2]:
            got = await recv_packets(c, 2)
            assert [(p.type, p.seq, p.player_id, bytes(p.payload)) for p in got] == \
                [(3, 100, 7, b"a"), (4, 200, 8, b"bb")]  # as they are, seq included
        with pytest.raises(asyncio.TimeoutError):
            await clients[2].recv(0.2)
        with pytest.raises(TypeError, match="PacketBatch"):
            room.send_batch(b"raw")
        with pytest.raises(TypeError, match="exclude"):
            room.send_batch(batch, exclude="x")
        with pytest.raises(ValueError, match="never fit"):
            room.send(1, b"x" * 70000)
        with pytest.raises(ValueError):
            room.send(1 << 20, b"")  # type does not fit u16
        other = fp.HeaderLayout(fields=[("len", "u32"), ("type", "u16")], length_field="len")
        with pytest.raises(ValueError, match="layout"):
            room.send_batch(fp.PacketBatch.build([1], [b"x"], layout=other))
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_one_write_per_member_per_iteration(run):
    async def main():
        server, clients, sessions = await _server_and_clients(4)
        room = server.group("r")
        for s in sessions:
            room.add(s)
        before = [s.flushes for s in sessions]
        for i in range(50):  # many sends in one loop iteration ...
            room.send(1, b"m%d" % i)
        room.send_batch(fp.PacketBatch.build([2] * 10, [b"z"] * 10))
        for c in clients:
            got = await recv_packets(c, 60)
            assert [p.seq for p in got[:50]] == list(range(50))
            assert [bytes(p.payload) for p in got[:50]] == [b"m%d" % i for i in range(50)]
        assert [s.flushes - b for s, b in zip(sessions, before)] == [1, 1, 1, 1]  # ... one write each
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_relay_in_handler_and_large_batches(run):
    """A group fed from a handler (the relay's pattern) with a batch larger
    than a send buffer: relayed in order, in pieces, nothing lost."""
    async def main():
        room = None

        def handler(session, batch):
            room.send_batch(batch)

        server, clients, sessions = await _server_and_clients(3, handler=handler, send_buffer=4096, max_packet_size=4096,
                                                              max_pending_bytes=1 << 22)
        room = server.group("big")
        for s in sessions:
            room.add(s)
        payloads = [bytes([i % 256]) * 100 for i in range(300)]  # ~33 KB: 9 send buffers
        for k in range(0, 300, 30):  # the client's own buffer is 64 KiB: a burst the server reads whole
            clients[0].send_batch(fp.PacketBatch.build([1] * 30, payloads[k:k + 30], seqs=range(k, k + 30)))
        for c in clients:
            got = await recv_packets(c, 300)
            assert [p.seq for p in got] == list(range(300))
            assert [bytes(p.payload) for p in got] == payloads
        with pytest.raises(ValueError, match="larger than a send buffer"):
            room.send_batch(fp.PacketBatch.build([1], [b"x" * 5000]))
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_member_cut_off_does_not_stop_the_others(run):
    async def main():
        server, clients, sessions = await _server_and_clients(3, max_pending_bytes=1 << 16,
                                                              send_buffer=1 << 16, write_timeout=0.2)
        room = server.group("g")
        for s in sessions:
            room.add(s)
        clients[1].transport.pause_reading()  # a member that stops reading
        sent = 0
        for i in range(8000):  # 8 MB: more than the kernel's socket buffers hold
            room.send(1, b"y" * 1000)
            sent += 1
            if i % 20 == 0:
                await asyncio.sleep(0)
        for c in (clients[0], clients[2]):
            got = await recv_packets(c, sent, timeout=30)
            assert len(got) == sent
        for _ in range(500):
            if sessions[1] not in room:
                break
            await asyncio.sleep(0.01)
        assert sessions[1] not in room and sessions[1].close_reason == "slow consumer"
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())
