"""The native write path (issue 16): on asyncio's selector loop a flush is
one send(2) from native code while the transport holds nothing; what the
kernel does not take (a partial write, EAGAIN) goes to transport.write,
which buffers it and pauses us; an error (a peer reset) reaches asyncio's
transport, which closes the connection as it always did. Every test runs on
both loops (uvloop keeps its own transport.write)."""

from __future__ import annotations

import asyncio
import socket
import struct

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


def expected_path(loop):
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


def test_write_path_is_native_on_the_selector_loop_only(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        for _ in range(100):
            if sessions:
                break
            await asyncio.sleep(0.01)
        assert sessions[0].write_path == expected_path(loop)
        assert client.write_path == expected_path(loop)
        client.send(1, b"x" * 20)
        got = await client.recv(5)
        assert [p.payload.tobytes() for p in got] == [b"x" * 20]
        client.close()
        await asyncio.wait_for(client.wait_closed(), 5)
        await asyncio.wait_for(sessions[0].wait_closed(), 5)
        assert sessions[0].write_path is None
        server.close()
        await server.wait_closed()

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
        for _ in range(100):
            if sessions:
                break
            await asyncio.sleep(0.01)
        (session,) = sessions
        assert session.write_path == expected_path(loop)
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
        await asyncio.wait_for(session.wait_closed(), 5)
        server.close()
        await server.wait_closed()

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
        for _ in range(100):
            if sessions:
                break
            await asyncio.sleep(0.01)
        (session,) = sessions
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
        assert sessions[0].write_path == expected_path(asyncio.get_running_loop())
        client.close()
        await asyncio.wait_for(client.wait_closed(), 5)
        server.close()
        await server.wait_closed()

    run(main())
