"""The native socket path (issue 16).

Writes (asyncio's selector loop and uvloop): a flush is one send(2) from
native code while the transport holds nothing; what the kernel does not take (a partial write, EAGAIN) goes to
transport.write, which buffers it and pauses us; an error (a peer reset)
reaches asyncio's transport, which closes the connection as it always did.

Reads (asyncio's selector loop): the selector calls the session's native _read_ready, one recv(2)
into the receive ring per readiness (no get_buffer()/buffer_updated()
calls); a packet split over many reads, a readiness with nothing to read
(EAGAIN), end of file, a reset and pause/resume of reading are tested.

Every test runs on both loops: writes are native on both (uvloop's TCP and
Unix transports too), reads on the selector loop only (uvloop reads
through get_buffer()/buffer_updated())."""

from __future__ import annotations

import asyncio
import socket
import struct

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import run  # noqa: F401  (the fixture)

HEADER = struct.Struct("<HHII")
#: Small socket buffers (client receive, server send), set before the window is
#: negotiated: the server's writes hit a full socket after a few hundred KiB at most.
CLIENT_RCVBUF_BYTES = 16384
SERVER_SNDBUF_BYTES = 8192
#: Bytes of payload per packet the server sends back.
PAYLOAD_BYTES = 1000


def echo(session, batch):
    session.send_batch(batch)


def expected_read_path(loop):
    """Reads are native on asyncio's selector loop (uvloop reads in C already)."""
    return "native" if isinstance(loop, asyncio.SelectorEventLoop) else "transport"


async def read_exactly(sock, n, timeout=20.0):
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    out = bytearray()
    async def _read():
        while len(out) < n:
            chunk = await loop.sock_recv(sock, min(1 << 16, n - len(out)))
            if not chunk:
                break
            out.extend(chunk)
    await asyncio.wait_for(_read(), timeout)
    return bytes(out)


async def _one_session(sessions, timeout=5.0):
    """The one session `sessions` (an on_connect list) gets, once accepted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not sessions and loop.time() < deadline:
        await asyncio.sleep(0.005)
    (session,) = sessions
    return session


async def _closed(session, server):
    """Waits (bounded) for `session` to close, then closes `server`."""
    await asyncio.wait_for(session.wait_closed(), 5)
    server.close()
    await server.wait_closed()


def test_write_path_is_native_on_the_selector_loop_only(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        session = await _one_session(sessions)
        assert session.write_path == "native"
        assert client.write_path == "native"
        assert session.read_path == expected_read_path(loop)
        assert client.read_path == expected_read_path(loop)
        client.send(1, b"x" * 20)
        got = await client.recv(5)
        assert [p.payload.tobytes() for p in got] == [b"x" * 20]
        client.close()
        await asyncio.wait_for(client.wait_closed(), 5)
        await _closed(session, server)
        assert session.write_path is None and session.read_path is None

    run(main())


def test_partial_writes_and_eagain_pause_and_resume_with_every_byte_in_order(run):
    """A client that does not read: the server's send(2) takes part of a
    flush, then nothing (EAGAIN); the rest waits in the transport, writing
    pauses (and with it reading), and once the client reads, every byte
    arrives in order, exactly once."""
    async def main():
        sessions = []

        def small_sndbuf(session):
            session.transport.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF,
                                                                  SERVER_SNDBUF_BYTES)
            sessions.append(session)

        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=small_sndbuf,
                                 max_pending_bytes=64 << 20, write_timeout=30.0)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, CLIENT_RCVBUF_BYTES)
        sock.connect(("127.0.0.1", server.port))
        loop = asyncio.get_running_loop()
        session = await _one_session(sessions)
        assert session.write_path == "native"
        sent = []
        paused = False
        deadline = loop.time() + 10
        seq = 0
        # queue from outside any read burst until the transport holds bytes (the kernel refused some)
        while loop.time() < deadline and not paused:
            for _ in range(64):
                payload = seq.to_bytes(4, "little") * (PAYLOAD_BYTES // 4)
                assert session.send(7, payload) is not None
                sent.append(payload)
                seq += 1
            session.flush()
            paused = session.transport.get_write_buffer_size() > 0
            await asyncio.sleep(0)
        assert paused, "the kernel never refused a write"
        # the next flushes go behind the buffered bytes, never around them
        # (fewer than the send buffer holds: writing may be paused meanwhile)
        for _ in range(16):
            payload = seq.to_bytes(4, "little") * (PAYLOAD_BYTES // 4)
            assert session.send(7, payload) is not None
            sent.append(payload)
            seq += 1
        session.flush()
        total = len(sent) * (HEADER.size + PAYLOAD_BYTES)
        data = await read_exactly(sock, total)
        assert len(data) == total
        batch = fp.FrameDecoder().feed(data)
        assert [p.payload.tobytes() for p in batch] == sent
        assert list(batch.seqs) == list(range(len(sent)))
        assert session.bytes_out == total and session.packets_out == len(sent)
        assert not session.closed
        # writing resumed: a new burst is echoed through the path again
        await loop.sock_sendall(sock, fp.encode(1, b"again"))
        back = await read_exactly(sock, HEADER.size + 5, timeout=5)
        assert fp.FrameDecoder().feed(back)[0].payload.tobytes() == b"again"
        sock.close()
        await _closed(session, server)

    run(main())


def test_peer_reset_closes_the_session_without_an_error_in_the_loop(run):
    """The peer resets (RST) while the server keeps sending: the failed
    send(2) goes to asyncio's transport, which closes the connection; no
    exception reaches the loop, later sends are dropped and counted."""
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append, max_delay=0.0)
        sock = socket.create_connection(("127.0.0.1", server.port))
        session = await _one_session(sessions)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        deadline = loop.time() + 10
        while not session.closed and loop.time() < deadline:
            session.send(7, bytes(PAYLOAD_BYTES))
            session.flush()
            await asyncio.sleep(0.001)
        reason = await asyncio.wait_for(session.wait_closed(), 5)
        assert reason.startswith(("connection lost", "peer closed")), reason
        assert session.send(7, b"late") is None
        assert session.dropped_out >= 1
        assert errors == []
        server.close()
        await server.wait_closed()

    run(main())


def test_unix_socket_uses_the_native_path_too(run, tmp_path):
    async def main():
        sessions = []
        path = str(tmp_path / "s.sock")
        server = await aio.serve_unix(echo, path, on_connect=sessions.append)
        client = await aio.connect_unix(path)
        client.send_batch(fp.PacketBatch.build([1] * 100, [bytes([i]) * 30 for i in range(100)]))
        got = []
        while len(got) < 100:
            batch = await client.recv(5)
            assert batch is not None
            got.extend(batch)
        assert [p.payload.tobytes() for p in got] == [bytes([i]) * 30 for i in range(100)]
        assert sessions[0].write_path == "native"
        client.close()
        await asyncio.wait_for(client.wait_closed(), 5)
        server.close()
        await server.wait_closed()

    run(main())


def test_the_selector_calls_the_native_reader_directly(run):
    """On the selector loop the reader registered for the socket is the
    session's _read_ready (not the transport's Python method), from the
    start and again after reading was paused and resumed."""
    async def main():
        loop = asyncio.get_running_loop()
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        session = await _one_session(sessions)
        client.send(1, b"first")
        assert [p.payload.tobytes() for p in await client.recv(5)] == [b"first"]
        if expected_read_path(loop) == "native":
            fd = session.transport.get_extra_info("socket").fileno()
            reader = lambda: loop._selector.get_key(fd).data[0]._callback  # noqa: E731
            assert reader() == session._read_ready
            session.transport.pause_reading()
            session.transport.resume_reading()
            assert reader() == session._read_ready
        else:
            session.transport.pause_reading()
            session.transport.resume_reading()
        client.send(1, b"after resume")
        assert [p.payload.tobytes() for p in await client.recv(5)] == [b"after resume"]
        client.close()
        await _closed(session, server)

    run(main())


def test_a_packet_split_over_many_reads_and_many_packets_in_one(run):
    """Bytes arrive in pieces of 1 to 7 bytes (each its own read), then a
    burst of 2,000 packets in one write: every packet is delivered once, in
    order, whole; reads that end inside a header or a payload keep the
    partial packet for the next."""
    async def main():
        got = []
        sessions = []
        server = await aio.serve(lambda s, b: got.extend(p.payload.tobytes() for p in b), "127.0.0.1", 0,
                                 on_connect=sessions.append)
        sock = socket.create_connection(("127.0.0.1", server.port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        loop = asyncio.get_running_loop()
        session = await _one_session(sessions)
        assert session.read_path == expected_read_path(loop)
        trickled = [bytes([k]) * (k * 37 % 300) for k in range(40)]
        data = b"".join(fp.encode(3, p) for p in trickled)
        k = 0
        while k < len(data):
            n = 1 + k % 7
            await loop.sock_sendall(sock, data[k:k + n])
            k += n
            await asyncio.sleep(0.0005)  # each piece read on its own (mostly)
        burst = [struct.pack("<I", k) * (k % 50) for k in range(2000)]
        await loop.sock_sendall(sock, b"".join(fp.encode(4, p) for p in burst))
        deadline = loop.time() + 10
        while len(got) < len(trickled) + len(burst) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert got == trickled + burst
        assert session.packets_in == len(got) and session.batches_in > len(trickled)
        sock.close()
        await _closed(session, server)

    run(main())


def test_a_readiness_with_nothing_to_read_changes_nothing(run):
    """EAGAIN: the native reader called while no byte is queued (a spurious
    wakeup) leaves the session open, holding no receive ring, and the next
    bytes are read as usual."""
    async def main():
        loop = asyncio.get_running_loop()
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        session = await _one_session(sessions)
        session._read_ready()  # nothing queued: recv(2) says EAGAIN (on uvloop: not the reader, a no-op)
        pooled = server._hub.pooled_rings  # the ring lent for the read went back to the pool
        for _ in range(3):
            session._read_ready()
        assert not session.closed and session.bytes_in == 0
        assert server._hub.pooled_rings == pooled  # each lent and given back: the session holds none
        client.send(1, b"still reads")
        assert [p.payload.tobytes() for p in await client.recv(5)] == [b"still reads"]
        assert expected_read_path(loop) == session.read_path
        client.close()
        await _closed(session, server)

    run(main())


def test_end_of_file_after_packets_delivers_them_then_closes(run):
    """The peer sends packets and shuts down its side: every packet is
    handled, then the session closes with "peer closed"."""
    async def main():
        got = []
        sessions = []
        server = await aio.serve(lambda s, b: got.extend(p.payload.tobytes() for p in b), "127.0.0.1", 0,
                                 on_connect=sessions.append)
        sock = socket.create_connection(("127.0.0.1", server.port))
        session = await _one_session(sessions)
        sent = [bytes([k]) * 100 for k in range(50)]
        sock.sendall(b"".join(fp.encode(2, p) for p in sent) + fp.encode(2, b"partial")[:9])
        sock.shutdown(socket.SHUT_WR)
        reason = await asyncio.wait_for(session.wait_closed(), 5)
        assert reason == "peer closed"
        assert got == sent  # the partial packet at the end is not one
        sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_a_reset_while_reading_closes_with_the_error_and_nothing_in_the_loop(run):
    """The peer resets the connection with unread bytes queued on its side:
    the server's recv(2) fails (ECONNRESET) or sees the end; the session
    closes with that reason and no exception reaches the loop."""
    async def main():
        loop = asyncio.get_running_loop()
        errors = []
        loop.set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        got = []
        sessions = []
        server = await aio.serve(lambda s, b: got.extend(b), "127.0.0.1", 0, on_connect=sessions.append)
        sock = socket.create_connection(("127.0.0.1", server.port))
        session = await _one_session(sessions)
        sock.sendall(fp.encode(1, b"x" * 50))
        deadline = loop.time() + 5
        while not got and loop.time() < deadline:
            await asyncio.sleep(0.005)
        assert len(got) == 1
        sock.sendall(fp.encode(1, b"y" * 50)[:20])  # part of a packet, then the reset
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
        reason = await asyncio.wait_for(session.wait_closed(), 5)
        assert reason.startswith(("connection lost", "peer closed")), reason
        assert errors == []
        assert len(got) == 1
        server.close()
        await server.wait_closed()

    run(main())


def test_get_buffer_lends_one_reused_buffer_of_the_free_space():
    """What uvloop (and asyncio's TLS) read into: get_buffer() returns the
    same object every time, exporting the ring's free space at that moment
    (no view object made per read); an export pins its bytes like a
    writable() view, exports at two positions at once are refused, and
    buffer_updated() commits what was written through it."""
    from fastpacket import _native

    got = []
    loop = asyncio.new_event_loop()
    try:
        hub = _native.Hub(loop, aio.Options().check(), lambda s, b: got.extend(p.payload.tobytes() for p in b), None)
        session = aio.Session(hub)
        head = session.get_buffer(-1)
        assert session.get_buffer(-1) is head and len(head) > 1000
        packet = fp.encode(5, b"through the head")
        with memoryview(head) as view:
            assert not view.readonly and len(view) == len(head)
            view[:len(packet)] = packet
        session.buffer_updated(len(packet))
        assert got == [b"through the head"]
        head = session.get_buffer(-1)
        part = head[3:]  # asyncio's TLS protocol reads into slices
        assert len(part) == len(head) - 3 and not part.readonly
        del part
        with memoryview(head) as view:
            view[:5] = packet[:5]
        session.buffer_updated(5)  # part of a packet: the ring stays lent, its head moves
        pinned = memoryview(session.get_buffer(-1))  # an export at the new position
        pinned[:len(packet) - 5] = packet[5:]
        session.buffer_updated(len(packet) - 5)
        with pytest.raises(BufferError, match="another position"):
            memoryview(head)  # the head moved while that export lives
        pinned.release()
        assert len(memoryview(head)) == len(head)
        assert got == [b"through the head"] * 2
    finally:
        loop.close()


def test_batches_lie_over_the_receive_ring_and_kept_ones_stay_intact(run):
    """A sync handler's batch of a burst of 2 KiB or more lies over the
    receive ring's bytes (no copy; a smaller one is copied). A handler that
    keeps batches, and payload views of them, past its return keeps their
    bytes intact while the connection reads on (the session gives that ring
    up and goes on in a fresh one, the undecoded part of a packet moved
    along); one that keeps nothing reads every burst through the same
    pooled ring."""
    async def main():
        loop = asyncio.get_running_loop()
        kept, views = [], []

        def keeper(session, batch):
            kept.append(batch)
            views.append(batch[0].payload)
            session.send(9, b"ack")

        def forgetful(session, batch):
            session.send(9, b"ack")

        for handler, repeat, pooled in ((keeper, 1100, 0), (keeper, 20, 1), (forgetful, 1100, 1)):
            kept.clear()
            views.clear()
            server = await aio.serve(handler, "127.0.0.1", 0)
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            sent = []
            for k in range(30):
                payloads = [bytes([k, j]) * (repeat + j) for j in range(k % 4 + 1)]
                sent.append(payloads)
                data = b"".join(fp.encode(1, p) for p in payloads)
                nxt = fp.encode(1, bytes([k, 99]) * repeat)
                if k % 3 == 0:
                    data += nxt[:7]  # a partial packet at the end of this read ...
                await loop.sock_sendall(sock, data)
                await asyncio.wait_for(loop.sock_recv(sock, 100), 5)  # the ack: this burst was handled
                if k % 3 == 0:
                    sent.append([bytes([k, 99]) * repeat])
                    await loop.sock_sendall(sock, nxt[7:])  # ... its rest in the next
                    await asyncio.wait_for(loop.sock_recv(sock, 100), 5)
            sock.close()
            if handler is keeper:
                assert [[p.payload.tobytes() for p in b] for b in kept] == sent
                assert [v.tobytes() for v in views] == [ps[0] for ps in sent]
            # lent and kept: each ring was given up, none pooled; copied, or
            # nothing kept: one ring, lent and returned every burst
            assert server._hub.pooled_rings == pooled, (handler.__name__, repeat)
            server.close()
            await server.wait_closed()

    run(main())
