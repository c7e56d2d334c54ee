"""Async handlers in the adapter: run as tasks, one session's bursts in
order, bounded queue with backpressure, errors, peer close, graceful
shutdown. Real sockets on 127.0.0.1, every wait bounded, on asyncio's
default loop and on uvloop (the ``run`` fixture)."""

from __future__ import annotations

import asyncio
import functools
import random
import struct

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import recv_packets, run  # noqa: F401  (run: the event-loop fixture)

#: Seconds any single wait in these tests may take.
WAIT_S = 10.0


async def wait_for(predicate, what, timeout=WAIT_S):
    """Polls `predicate` until true (fails the test after `timeout` seconds)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"{what}: not within {timeout} s")
        await asyncio.sleep(0.005)


def test_async_handler_keeps_each_sessions_replies_in_order_under_pipelining(run):
    clients_n, per_client = 8, 400

    async def handler(session, batch):
        # awaits between packets, for a varying time: bursts of different
        # sessions interleave, those of one session must not
        for p in batch:
            await asyncio.sleep(random.random() * 0.001 if p.seq % 16 == 0 else 0)
            session.send(p.type, p.payload, player_id=p.player_id)

    async def main():
        server = await aio.serve(handler, "127.0.0.1", 0)
        clients = [await aio.connect("127.0.0.1", server.port) for _ in range(clients_n)]
        for i, c in enumerate(clients):  # pipelined: everything is sent before any reply is read
            for k in range(per_client):
                c.send(k % 5, struct.pack("<II", i, k), player_id=i)
        for i, c in enumerate(clients):
            got = await recv_packets(c, per_client)
            assert [struct.unpack("<II", p.payload) for p in got] == [(i, k) for k in range(per_client)]
            assert [p.type for p in got] == [k % 5 for k in range(per_client)]
            assert {p.player_id for p in got} == {i}
        assert sum(s.unhandled_packets for s in server.sessions) == 0
        for c in clients:
            c.close()
        await wait_for(lambda: not server.sessions, "the clients' closes")
        assert server.closes == {"peer_closed": clients_n}
        await server.shutdown(WAIT_S)

    run(main())


def test_sync_and_async_handlers_by_type_keep_arrival_order(run):
    seen = []

    def on_fast(session, batch):
        seen.append(("fast", [struct.unpack("<I", p.payload)[0] for p in batch]))
        for p in batch:
            session.send(p.type, p.payload)

    async def on_slow(session, batch):
        await asyncio.sleep(0.01)
        seen.append(("slow", [struct.unpack("<I", p.payload)[0] for p in batch]))
        for p in batch:
            session.send(p.type, p.payload)

    async def main():
        server = await aio.serve(handlers={1: on_slow, 2: on_fast}, host="127.0.0.1", port=0)
        client = await aio.connect("127.0.0.1", server.port)
        n = 60
        for k in range(n):
            client.send(1 if k % 3 == 0 else 2, struct.pack("<I", k))
            if k % 10 == 9:
                await asyncio.sleep(0.002)  # several bursts
        got = await recv_packets(client, n)
        # per burst, types are grouped (by_type), and each group's replies
        # wait for the groups before it, also across bursts
        order = [k for _, ks in seen for k in ks]
        assert [struct.unpack("<I", p.payload)[0] for p in got] == order
        assert sorted(order) == list(range(n))
        client.close()
        await server.shutdown(WAIT_S)

    run(main())


def test_slow_async_handler_bounds_memory_by_pausing_reads(run):
    release = None
    handled = []
    limit_packets = 64

    async def handler(session, batch):
        await release.wait()
        handled.extend(struct.unpack_from("<I", p.payload)[0] for p in batch)

    async def main():
        nonlocal release
        release = asyncio.Event()
        server = await aio.serve(handler, "127.0.0.1", 0, handler_queue_packets=limit_packets,
                                 handler_queue_bytes=1 << 30)
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        payload = bytes(500)
        total = 20_000  # 10 MB: far more than the queue and the socket buffers hold
        packets = b"".join(fp.encode(1, struct.pack("<I", k) + payload) for k in range(total))
        writer.write(packets)   # the client's transport buffers what the server does not read
        await wait_for(lambda: server.sessions and next(iter(server.sessions)).unhandled_packets >= limit_packets,
                       "the queue filling")
        (session,) = server.sessions
        # reading has paused: the queue stops growing, the rest waits in the
        # client's buffers and the kernel's
        await asyncio.sleep(0.2)
        first = session.unhandled_packets
        await asyncio.sleep(0.2)
        assert session.unhandled_packets == first
        # one read burst past the bound at most: a burst is one ring (recv_buffer) of packets
        assert first <= limit_packets + session.options.recv_buffer // (12 + 4 + len(payload)) + 1
        assert session.unhandled_bytes <= (limit_packets + 1) * 516 + session.options.recv_buffer
        assert writer.transport.get_write_buffer_size() > 0  # the client is held back
        release.set()
        await wait_for(lambda: len(handled) == total, "every packet handled after the release", 30.0)
        assert handled == list(range(total))  # in order, nothing lost
        writer.close()
        await server.shutdown(WAIT_S)

    run(main(), timeout=60)


def test_async_handler_error_closes_only_its_session(run, caplog):
    async def handler(session, batch):
        await asyncio.sleep(0)
        if any(bytes(p.payload) == b"boom" for p in batch):
            raise RuntimeError("kaboom")
        session.send_batch(batch)

    async def main():
        sessions = []
        server = await aio.serve(handler, "127.0.0.1", 0, on_connect=sessions.append)
        bad = await aio.connect("127.0.0.1", server.port)
        good = await aio.connect("127.0.0.1", server.port)
        bad.send(1, b"boom")
        assert await bad.recv(WAIT_S) is None  # closed by the server
        assert await bad.wait_closed() == "peer closed"
        good.send(1, b"fine")
        (p,) = await recv_packets(good, 1)
        assert bytes(p.payload) == b"fine"
        await wait_for(lambda: "handler_error" in server.closes, "the close reason")
        assert sessions[0].close_reason == "handler error: RuntimeError: kaboom"
        good.close()
        await server.shutdown(WAIT_S)

    run(main())
    assert "handler failed" in caplog.text


def test_a_sync_handler_returning_a_coroutine_is_refused_with_a_reason(run):
    async def really_async(session, batch):
        session.send_batch(batch)

    def wrapper(session, batch):  # not `async def`: its coroutine would never run
        return really_async(session, batch)

    async def main():
        sessions = []
        server = await aio.serve(wrapper, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"x")
        assert await client.recv(WAIT_S) is None
        await wait_for(lambda: server.closes, "the close")
        assert server.closes == {"handler_error": 1}
        reason = sessions[0].close_reason
        assert reason.startswith("handler error: TypeError:") and "async def" in reason
        await server.shutdown(WAIT_S)

    run(main())  # no "coroutine was never awaited" warning: pytest turns warnings into errors


def test_handlers_that_are_not_callable_raise_type_error_at_serve(run):
    async def on_connect(session):
        pass

    async def main():
        with pytest.raises(TypeError, match="handler must be a function"):
            await aio.serve("echo", "127.0.0.1", 0)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match=r"handlers\[3\] must be a function"):
            await aio.serve(handlers={3: None}, host="127.0.0.1", port=0)  # type: ignore[dict-item]
        with pytest.raises(TypeError, match="on_connect must be a plain function"):
            await aio.serve(lambda s, b: None, "127.0.0.1", 0, on_connect=on_connect)  # type: ignore[arg-type]

    run(main())


def test_async_callables_are_recognised():
    async def f(session, batch):
        pass

    class Obj:
        async def __call__(self, session, batch):
            pass

        async def method(self, session, batch):
            pass

        def sync(self, session, batch):
            pass

    assert aio.is_async_handler(f) and aio.is_async_handler(functools.partial(f))
    assert aio.is_async_handler(Obj()) and aio.is_async_handler(Obj().method)
    assert not aio.is_async_handler(Obj().sync) and not aio.is_async_handler(print)
    assert not aio.is_async_handler(lambda s, b: None)


def test_peer_close_while_pending_still_handles_what_it_sent_then_on_close(run):
    events = []
    gate = None

    async def handler(session, batch):
        await gate.wait()
        events.extend(bytes(p.payload) for p in batch)

    def on_close(session):
        events.append(("closed", session.close_reason))

    async def main():
        nonlocal gate
        gate = asyncio.Event()
        server = await aio.serve(handler, "127.0.0.1", 0, on_close=on_close)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"first")
        await wait_for(lambda: server.sessions and next(iter(server.sessions)).packets_in == 1, "first burst")
        client.send(1, b"second")
        (session,) = server.sessions
        await wait_for(lambda: session.packets_in == 2, "second burst")
        client.close()
        await wait_for(lambda: session.closed, "the peer's close seen")
        assert events == [] and session in server.sessions  # still being handled
        gate.set()
        await wait_for(lambda: len(events) == 3, "the handlers and on_close")
        assert events == [b"first", b"second", ("closed", "peer closed")]
        assert server.sessions == set() and server.closes == {"peer_closed": 1}
        await server.shutdown(WAIT_S)

    run(main())


def test_graceful_shutdown_waits_for_handlers_then_aborts_at_the_timeout(run):
    async def finishing(session, batch):
        await asyncio.sleep(0.05)
        session.send_batch(batch)  # the reply still goes out before the close

    never = None

    async def stuck(session, batch):
        await never.wait()

    async def main():
        nonlocal never
        never = asyncio.Event()
        server = await aio.serve(finishing, "127.0.0.1", 0)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"last request")
        await wait_for(lambda: server.sessions and next(iter(server.sessions)).packets_in == 1, "the request")
        assert await server.shutdown(WAIT_S) is True
        (reply,) = await recv_packets(client, 1)
        assert bytes(reply.payload) == b"last request"
        assert await client.recv(WAIT_S) is None
        assert server.closes == {"server_shutdown": 1}

        server = await aio.serve(stuck, "127.0.0.1", 0)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"never answered")
        await wait_for(lambda: server.sessions and next(iter(server.sessions)).packets_in == 1, "the request")
        t0 = asyncio.get_running_loop().time()
        assert await server.shutdown(0.2) is False  # aborted after the timeout
        assert asyncio.get_running_loop().time() - t0 < WAIT_S
        assert server.sessions == set() and server.closes == {"server_shutdown": 1}
        assert await client.recv(WAIT_S) is None

    run(main())
