"""Idle connections hold no send buffer (issue 16): a session's send buffer
(send_buffer bytes, most of an idle session's memory) is made on its first
send, by whichever send path comes first; closing, flushing and aborting a
session that never sent work without one. Every test runs on both loops."""

from __future__ import annotations

import asyncio
import struct

import numpy as np
import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import recv_packets, run  # noqa: F401  (the fixture)

#: Rows of this dtype are the payloads of the array send paths.
ROW = np.dtype([("x", "<f4"), ("y", "<f4")])
#: Packets each send path below queues for the client.
ROWS = 3
#: Seconds a test waits for the server to see a connection.
ACCEPT_TIMEOUT_S = 5.0
#: Seconds a test waits for a connection or the server to close.
CLOSE_TIMEOUT_S = 5.0


def rows():
    out = np.zeros(ROWS, dtype=ROW)
    out["x"] = np.arange(ROWS)
    out["y"] = np.arange(ROWS) * 2
    return out


def batch_of(n):
    return fp.PacketBatch.build([7] * n, [bytes([i]) * 4 for i in range(n)])


# Each send path, on the server's session `s` of `server`; returns the payloads the client must get, in order.
def via_send(server, s):
    s.send(7, b"abcd")
    return [b"abcd"]


def via_send_batch(server, s):
    s.send_batch(batch_of(ROWS))
    return [bytes([i]) * 4 for i in range(ROWS)]


def via_send_array(server, s):
    assert s.send_array(7, rows()) == ROWS
    return [r.tobytes() for r in rows()]


def via_broadcast(server, s):
    assert server.broadcast(7, b"wxyz") == 1
    return [b"wxyz"]


def via_scatter(server, s):
    assert aio.scatter([s], 7, rows()[:1]) == 1
    return [rows()[0].tobytes()]


def via_broadcast_array(server, s):
    assert aio.broadcast_array([s], 7, rows()) == 1
    return [r.tobytes() for r in rows()]


def via_group_send(server, s):
    g = server.group("room")
    g.add(s)
    assert g.send(7, b"grp!") == 1
    return [b"grp!"]


def via_group_send_batch(server, s):
    g = server.group("room")
    g.add(s)
    g.send_batch(batch_of(ROWS))  # returns None: members that got it are not counted here
    return [bytes([i]) * 4 for i in range(ROWS)]


SEND_PATHS = [via_send, via_send_batch, via_send_array, via_broadcast, via_scatter, via_broadcast_array,
              via_group_send, via_group_send_batch]


async def accepted(sessions):
    for _ in range(int(ACCEPT_TIMEOUT_S / 0.01)):
        if sessions:
            return sessions[0]
        await asyncio.sleep(0.01)
    raise AssertionError("the server did not accept the connection")


async def close_both(client, server):
    """Closes the client, waits (bounded) for both ends to be gone, stops the server."""
    client.close()
    await asyncio.wait_for(client.wait_closed(), CLOSE_TIMEOUT_S)
    for s in list(server.sessions):
        await asyncio.wait_for(s.wait_closed(), CLOSE_TIMEOUT_S)
    server.close()
    await asyncio.wait_for(server.wait_closed(), CLOSE_TIMEOUT_S)


def test_an_idle_session_holds_no_send_buffer(run):
    """Connected, a packet received and handled without a reply: still none,
    on both ends; the first send makes it."""
    async def main():
        sessions, handled = [], []
        server = await aio.serve(lambda s, b: handled.extend(b), "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        s = await accepted(sessions)
        assert s.send_buffer_bytes == 0 and client.send_buffer_bytes == 0
        assert s.queued_bytes == 0
        client.send(1, b"ping")
        assert client.send_buffer_bytes == server.options.send_buffer
        for _ in range(500):
            if handled:
                break
            await asyncio.sleep(0.01)
        assert [p.payload.tobytes() for p in handled] == [b"ping"]
        assert s.send_buffer_bytes == 0  # read and handled, never replied: still idle on the way out
        s.flush()  # nothing to write, no buffer: a no-op
        assert s.send_buffer_bytes == 0
        await close_both(client, server)
        assert s.send_buffer_bytes == 0

    run(main())


@pytest.mark.parametrize("path", SEND_PATHS, ids=lambda f: f.__name__)
def test_each_send_path_works_on_a_fresh_session(run, path):
    """The first write into a session's send buffer, by any path, from
    outside a read burst (on_connect's session, before it read anything):
    the buffer is made and every byte arrives."""
    async def main():
        sessions = []
        server = await aio.serve(lambda s, b: None, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        s = await accepted(sessions)
        assert s.send_buffer_bytes == 0
        want = path(server, s)
        assert s.send_buffer_bytes >= server.options.send_buffer
        got = await recv_packets(client, len(want))
        assert [p.payload.tobytes() for p in got] == want
        assert [p.type for p in got] == [7] * len(want)
        await close_both(client, server)

    run(main())


@pytest.mark.parametrize("path", SEND_PATHS, ids=lambda f: f.__name__)
def test_each_send_path_works_first_inside_a_read_burst(run, path):
    """The first send from the handler, inside the session's first read
    burst (flushed at the burst's end)."""
    async def main():
        box = {}

        def handler(s, batch):
            box["want"] = path(box["server"], s)

        server = await aio.serve(handler, "127.0.0.1", 0)
        box["server"] = server
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, struct.pack("<I", 1))
        first = await client.recv(5)
        assert first is not None
        got = list(first)
        want = box["want"]
        got += await recv_packets(client, len(want) - len(got))
        assert [p.payload.tobytes() for p in got] == want
        await close_both(client, server)

    run(main())


@pytest.mark.parametrize("how", ["close", "abort", "peer"])
def test_a_session_that_never_sent_closes_cleanly(run, how):
    """close() (which flushes), abort() and the peer's close on a session
    with no send buffer: closed with its reason, nothing raised into the loop."""
    async def main():
        sessions, errors = [], []
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
        server = await aio.serve(lambda s, b: None, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        s = await accepted(sessions)
        if how == "close":
            s.close("bye")
        elif how == "abort":
            s.abort("gone")
        else:
            client.close()
        reason = await asyncio.wait_for(s.wait_closed(), 5)
        assert reason is not None
        if how != "peer":
            assert reason == {"close": "bye", "abort": "gone"}[how]
        assert s.send_buffer_bytes == 0 and s.dropped_out == 0
        s.send(7, b"late")  # after the close: dropped and counted, no buffer made for it
        assert s.dropped_out == 1 and s.send_buffer_bytes == 0
        assert errors == []
        await close_both(client, server)

    run(main())
