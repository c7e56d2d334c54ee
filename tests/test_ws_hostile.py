"""Hostile WebSocket clients against fastpacket.ws: a bad handshake, a
handshake that never ends, an unmasked client frame, a 1 GiB declared
length, a fragment flood, a text message, a slow reader. Each is closed
with a reason (a close code where a frame can still carry one), the
server's memory stays bounded, and a well-behaved client connected the
whole time keeps getting every reply. The hostile bytes are written by
hand on a raw socket (no library sends malformed frames); the server side
is picows. Both event loops, every wait bounded."""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import struct

import pytest
from websockets.asyncio.client import connect as ws_connect

import fastpacket as fp
from fastpacket.ws import MAX_FRAGMENTS, serve_ws
from tests.loops import run  # noqa: F401  (run: the event-loop fixture)

WAIT_S = 10.0
#: The well-behaved client sends a packet this often, in seconds.
GOOD_PERIOD_S = 0.01
#: How much the server process's peak memory may grow during one hostile
#: case, in bytes: far below the 1 GiB a naive server would allocate.
MAX_GROWTH_BYTES = 64 << 20
KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455's sample key
MASK = b"\x11\x22\x33\x44"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE = 0x0, 0x1, 0x2, 0x8


def echo(session, batch):
    session.send_batch(batch)


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True, length: int = None,
          rsv1: bool = False) -> bytes:
    """One client frame (RFC 6455 5.2); `length` overrides the declared length."""
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode])
    bit = 0x80 if masked else 0
    if n < 126:
        head += bytes([bit | n])
    elif n < 65536:
        head += bytes([bit | 126]) + struct.pack(">H", n)
    else:
        head += bytes([bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + MASK + bytes(b ^ MASK[i % 4] for i, b in enumerate(payload))


async def raw_upgrade(port: int, request: bytes = None):
    """A raw connection after a valid (or the given) upgrade request; (reader, writer, response head)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request or (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                             f"Connection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\n"
                             f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_S)
    return reader, writer, head


async def read_close(reader) -> tuple:
    """(code, reason) of the close frame the server sends, skipping other frames; EOF after it."""
    while True:
        b0, b1 = await asyncio.wait_for(reader.readexactly(2), WAIT_S)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack(">H", await reader.readexactly(2))[0]
        elif n == 127:
            n = struct.unpack(">Q", await reader.readexactly(8))[0]
        payload = await asyncio.wait_for(reader.readexactly(n), WAIT_S)
        if b0 & 0x0F == OP_CLOSE:
            assert await asyncio.wait_for(reader.read(), WAIT_S) == b"", "the server kept the connection open"
            return struct.unpack(">H", payload[:2])[0], payload[2:].decode()


async def closed(writer) -> None:
    """Close our end and wait (bounded) until the transport is gone: nothing left for the GC to warn about."""
    writer.close()
    with contextlib.suppress(ConnectionError):
        await asyncio.wait_for(writer.wait_closed(), WAIT_S)


class GoodClient:
    """A websockets client that echoes a packet every GOOD_PERIOD_S and checks every reply."""

    def __init__(self, url: str):
        self.url = url
        self.sent = self.received = 0
        self._stop = False
        self._task = None

    async def __aenter__(self):
        self._ws = await ws_connect(self.url).__aenter__()
        self._task = asyncio.ensure_future(self._run())
        return self

    async def _run(self):
        while not self._stop:
            await self._ws.send(fp.encode(1, b"good %d" % self.sent, player_id=self.sent))
            self.sent += 1
            reply = fp.FrameDecoder().feed(await asyncio.wait_for(self._ws.recv(), WAIT_S))
            assert [bytes(p.payload) for p in reply] == [b"good %d" % self.received]
            self.received += 1
            await asyncio.sleep(GOOD_PERIOD_S)

    async def __aexit__(self, *exc):
        self._stop = True
        await asyncio.wait_for(self._task, WAIT_S)  # raises what went wrong
        await self._ws.close()
        assert self.received == self.sent > 0


def hostile(run, case, **server_kwargs):
    """Serve echo, run `case(server)` while a GoodClient is connected; the
    close reasons of the server's sessions."""
    async def main():
        reasons = []  # each session's close_reason (server.closes counts them by class)
        server = await serve_ws(echo, "127.0.0.1", 0, on_close=lambda s: reasons.append(s.close_reason),
                                **server_kwargs)
        before = peak_rss_bytes()
        async with GoodClient(f"ws://127.0.0.1:{server.port}/") as good:
            await case(server)
            await asyncio.sleep(0.1)
            assert good.received > 0
        assert peak_rss_bytes() - before < MAX_GROWTH_BYTES
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        return reasons

    return run(main())


@pytest.mark.parametrize("request_bytes, status", [
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n", b" 400 "),  # no key
    (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: "
     b"short\r\nSec-WebSocket-Version: 13\r\n\r\n", b" 400 "),
    (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello", b" 4"),
    (b"\x16\x03\x01\x00garbage\r\n\r\n", b""),  # not HTTP at all (a TLS hello, say)
])
def test_bad_handshake_refused(run, request_bytes, status):
    async def case(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(request_bytes)
        response = await asyncio.wait_for(reader.read(), WAIT_S)  # until the server closes
        assert status in response.split(b"\r\n", 1)[0] if status else True, response
        await closed(writer)
        assert len(server.sessions) == 1  # only the good client ever got a session

    hostile(run, case)


def test_handshake_that_never_ends_is_dropped(run):
    async def case(server):
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        assert await asyncio.wait_for(reader.read(), WAIT_S) == b""  # closed at handshake_timeout
        await closed(writer)

    hostile(run, case, handshake_timeout=0.3)


def test_unmasked_client_frame(run):
    async def case(server):
        reader, writer, head = await raw_upgrade(server.port)
        assert b" 101 " in head
        writer.write(frame(OP_BINARY, fp.encode(1, b"x"), masked=False))
        code, reason = await read_close(reader)
        assert code == 1002 and "un-masked" in reason
        await closed(writer)

    closes = hostile(run, case)
    assert any(r.startswith("protocol error: ") and "un-masked" in r for r in closes), closes


def test_one_gib_declared_length(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)
        writer.write(frame(OP_BINARY, b"", length=1 << 30) + b"\x00" * 1000)
        code, reason = await read_close(reader)
        assert code == 1009, (code, reason)
        await closed(writer)

    closes = hostile(run, case)
    assert any("1009" in r for r in closes), closes


def test_fragment_flood(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)
        # the header of a packet that never completes, then one byte per fragment
        writer.write(frame(OP_BINARY, fp.encode(1, bytes(60000))[:12], fin=False))
        writer.write(b"".join(frame(OP_CONT, b"\x00", fin=False) for _ in range(MAX_FRAGMENTS + 100)))
        code, reason = await read_close(reader)
        assert code == 1009 and "fragments" in reason, (code, reason)
        await closed(writer)

    closes = hostile(run, case)
    assert any("fragments" in r for r in closes), closes


def test_text_message(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)
        writer.write(frame(OP_TEXT, b"hello"))
        assert await read_close(reader) == (1003, "protocol error: text message (packets travel in binary "
                                                  "messages)")
        await closed(writer)

    hostile(run, case)


def test_slow_reader_is_cut_off(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        message = frame(OP_BINARY, fp.encode(1, bytes(4000)) * 16)  # 64 KiB echoed per message
        deadline = asyncio.get_running_loop().time() + WAIT_S
        while "slow_consumer" not in server.closes:
            assert asyncio.get_running_loop().time() < deadline, server.closes
            writer.write(message)
            try:
                await asyncio.wait_for(writer.drain(), 0.05)
            except (asyncio.TimeoutError, ConnectionError):
                pass
            await asyncio.sleep(0.01)
        writer.transport.abort()

    closes = hostile(run, case, max_pending_bytes=256 << 10, write_timeout=0.5)
    assert "slow consumer" in closes



def test_peer_that_never_answers_pings(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)  # then silent: no pong
        code, reason = await read_close(reader)
        assert code == 1001 and "ping" in reason, (code, reason)
        await closed(writer)

    closes = hostile(run, case, ping_interval=0.2, ping_timeout=0.2)
    assert any(r.startswith("idle timeout: ") and "ping" in r for r in closes), closes


def test_compressed_frame_without_negotiation(run):
    async def case(server):
        reader, writer, _ = await raw_upgrade(server.port)
        writer.write(frame(OP_BINARY, fp.encode(1, b"deflated, supposedly"), rsv1=True))
        code, reason = await read_close(reader)
        assert code == 1002 and "RSV" in reason, (code, reason)
        await closed(writer)

    hostile(run, case)
