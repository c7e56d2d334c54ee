"""asyncio adapter: every test runs on asyncio's default loop and on uvloop,
on 127.0.0.1 only, each bounded in time and count."""

from __future__ import annotations

import asyncio
import gc
import resource
import socket
import struct
import weakref

import numpy as np
import pytest

import fastpacket as fp
from fastpacket import aio
from tests.loops import run  # noqa: F401  (the fixture)


def echo(session, batch):
    session.send_batch(batch)


async def recv_packets(session, n, timeout=10.0):
    got = []
    while len(got) < n:
        batch = await session.recv(timeout)
        if batch is None:
            break
        got.extend(batch)
    return got


def test_round_trip(run):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0)
        client = await aio.connect("127.0.0.1", server.port)
        for i in range(100):
            client.send(i % 7, b"x" * i, player_id=i)
        got = await recv_packets(client, 100)
        assert [p.type for p in got] == [i % 7 for i in range(100)]
        assert [p.seq for p in got] == list(range(100))  # client-assigned, relayed as they are
        assert [bytes(p.payload) for p in got] == [b"x" * i for i in range(100)]
        assert [p.player_id for p in got] == list(range(100))
        client.close("done")
        assert await client.wait_closed() == "done"
        server.close()
        await server.wait_closed()

    run(main())


def test_handlers_by_type_and_server_broadcast(run):
    async def main():
        seen = []

        def on_move(session, batch):
            seen.append(("move", batch.types.tolist()))
            session.send(100, b"moved")

        def fallback(session, batch):
            seen.append(("other", batch.types.tolist()))

        server = await aio.serve(fallback, "127.0.0.1", 0, handlers={1: on_move})
        client = await aio.connect("127.0.0.1", server.port)
        client.send_batch(fp.PacketBatch.build([1, 2, 1, 3], [b"a", b"b", b"c", b"d"]))
        (reply,) = await recv_packets(client, 1)
        assert reply.type == 100 and bytes(reply.payload) == b"moved"
        assert sorted(seen) == [("move", [1, 1]), ("other", [2]), ("other", [3])]
        assert server.broadcast(7, b"to all") == 1
        (b,) = await recv_packets(client, 1)
        assert (b.type, bytes(b.payload)) == (7, b"to all")
        client.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_server_close_flushes_and_gives_reason(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port)
        client.send(1, b"hello")
        await recv_packets(client, 1)
        server.broadcast(2, b"last words")
        server.close()  # flushes the broadcast before closing
        (last,) = await recv_packets(client, 1)
        assert bytes(last.payload) == b"last words"
        assert await client.recv(5) is None
        await server.wait_closed()
        assert server.closes == {"server_shutdown": 1}
        assert sessions[0].close_reason == "server shutdown"

    run(main())


def test_many_packets_many_connections_in_order(run):
    """>= 1 M packets over 50 connections; seq checked at both ends."""
    connections, per_conn = 50, 20_480
    received_by_server = {}

    def checking_echo(session, batch):
        seqs = batch.seqs
        key = session.peername  # sessions are pooled: key by connection, not by object
        start = received_by_server.get(key, 0)
        assert np.array_equal(seqs, np.arange(start, start + len(seqs)) % 2**32)
        received_by_server[key] = start + len(seqs)
        session.send_batch(batch)

    async def one_client(port, k):
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        state = {"next": 0}

        def on_batch(session, batch):
            seqs = batch.seqs
            n = state["next"]
            if not np.array_equal(seqs, np.arange(n, n + len(seqs))):
                done.set_exception(AssertionError(f"client {k}: out of order at {n}"))
            state["next"] = n + len(seqs)
            if state["next"] >= per_conn and not done.done():
                done.set_result(None)

        client = await aio.connect("127.0.0.1", port, on_batch)
        block = 1024
        payload = bytes(range(24))
        for start in range(0, per_conn, block):
            client.send_batch(fp.PacketBatch.build([1] * block, [payload] * block,
                                                   seqs=np.arange(start, start + block)))
            await asyncio.sleep(0)
        await asyncio.wait_for(done, 50)
        client.close()

    async def main():
        server = await aio.serve(checking_echo, "127.0.0.1", 0)
        await asyncio.gather(*(one_client(server.port, k) for k in range(connections)))
        assert sum(received_by_server.values()) == connections * per_conn >= 1_000_000
        server.close()
        await server.wait_closed()

    run(main(), timeout=120)


def test_handler_exception_closes_only_that_session(run, caplog):
    async def main():
        def handler(session, batch):
            if batch.types[0] == 13:
                raise RuntimeError("boom")
            session.send_batch(batch)

        sessions = []
        server = await aio.serve(handler, "127.0.0.1", 0, on_connect=sessions.append)
        bad = await aio.connect("127.0.0.1", server.port)
        good = await aio.connect("127.0.0.1", server.port)
        bad.send(13, b"")
        assert await bad.recv(5) is None
        good.send(1, b"still serving")
        (p,) = await recv_packets(good, 1)
        assert bytes(p.payload) == b"still serving"
        assert server.closes == {"handler_error": 1}  # by class; the text is the session's
        assert sessions[0].close_reason == "handler error: RuntimeError: boom"
        good.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert "handler failed" in caplog.text


def raw_connect(port):
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


async def wait_for_close(server, n=1, timeout=10.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while sum(server.closes.values()) < n and loop.time() < deadline:
        await asyncio.sleep(0.01)
    return server.closes


def close_reasons(sessions):
    """The close reasons (full text) of the sessions that ended."""
    return [s.close_reason for s in sessions if s.close_reason is not None]


def test_oversize_header_closed_before_payload(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, max_packet_size=1000, on_connect=sessions.append)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        sock.setblocking(False)
        await loop.sock_sendall(sock, struct.pack("<HHII", 60000, 1, 0, 0))  # header only
        assert await wait_for_close(server) == {"protocol_error": 1}
        (reason,) = close_reasons(sessions)
        assert reason.startswith("protocol error: packet size 60000") and "max_packet_size 1000" in reason
        assert await loop.sock_recv(sock, 100) == b""  # closed without waiting for the payload
        sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_random_garbage_closes_with_protocol_error(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        sock.setblocking(False)
        good = fp.encode(1, b"ok")
        await loop.sock_sendall(sock, good + b"\x03\x00" + bytes(200))
        echoed = await loop.sock_recv(sock, 100)
        assert echoed == good  # the packet before the garbage is still handled
        assert await wait_for_close(server) == {"protocol_error": 1}
        assert close_reasons(sessions)[0].startswith("protocol error: packet size 3 at stream offset 14")
        sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_disconnect_mid_packet(run):
    async def main():
        got = []
        server = await aio.serve(lambda s, b: got.extend(b), "127.0.0.1", 0)
        loop = asyncio.get_running_loop()
        sock = raw_connect(server.port)
        sock.setblocking(False)
        await loop.sock_sendall(sock, fp.encode(1, b"whole") + fp.encode(2, b"partial")[:9])
        await asyncio.sleep(0.05)
        sock.close()
        closes = await wait_for_close(server)
        assert closes == {"peer_closed": 1}
        assert [p.type for p in got] == [1]
        server.close()
        await server.wait_closed()

    run(main())


def test_rate_limit_drop_and_close(run):
    async def main():
        got = []
        server = await aio.serve(lambda s, b: got.append(len(b)), "127.0.0.1", 0, packets_per_s=100,
                                 rate_burst=1.0)
        client = await aio.connect("127.0.0.1", server.port, lambda s, b: None)
        client.send_batch(fp.PacketBatch.build([1] * 500, [b"flood"] * 500))
        client.flush()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.drops.get("rate limit", 0) + sum(got) < 500 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert sum(got) <= 101 and server.drops["rate limit"] >= 399
        client.close()
        server.close()
        await server.wait_closed()

        server = await aio.serve(echo, "127.0.0.1", 0, bytes_per_s=1000, max_packet_size=1000, rate_policy="close")
        client = await aio.connect("127.0.0.1", server.port)
        client.send_batch(fp.PacketBatch.build([1] * 100, [bytes(100)] * 100))
        assert await client.wait_closed() == "peer closed"
        assert await wait_for_close(server) == {"rate_limit_exceeded": 1}
        server.close()
        await server.wait_closed()

    run(main())


def test_idle_timeout_and_max_connections(run):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, idle_timeout=0.2, max_connections=2)
        a = await aio.connect("127.0.0.1", server.port)
        b = await aio.connect("127.0.0.1", server.port)
        c = await aio.connect("127.0.0.1", server.port)
        assert await asyncio.wait_for(c.wait_closed(), 5) == "peer closed"
        closes = await wait_for_close(server, 3, timeout=5)
        assert closes == {"too_many_connections": 1, "idle_timeout": 2}
        for s in (a, b):
            assert await asyncio.wait_for(s.wait_closed(), 5) == "peer closed"
        server.close()
        await server.wait_closed()

    run(main())


def test_peer_that_never_reads_is_cut_off(run):
    async def main():
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=sessions.append,
                                 max_pending_bytes=256 << 10, write_timeout=1.0)
        sock = raw_connect(server.port)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        await asyncio.sleep(0.05)
        (session,) = sessions
        payload = bytes(1000)
        sent = 0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while not session.closed and loop.time() < deadline:
            for _ in range(50):
                if session.send(5, payload) is None:
                    break
                sent += 1
            if session.transport is not None:  # never more queued for the peer than the limit
                assert session.transport.get_write_buffer_size() + session.queued_bytes <= 256 << 10
            await asyncio.sleep(0.001)
        assert session.close_reason == "slow consumer"
        assert await wait_for_close(server) == {"slow_consumer": 1}
        sock.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_many_concurrent_connections(run):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 12_000
    if soft < need:
        if hard != resource.RLIM_INFINITY and hard < need:
            pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (need, hard))
    n = 5000

    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, backlog=4096)
        loop = asyncio.get_running_loop()
        clients = []
        for start in range(0, n, 500):
            clients += await asyncio.gather(*(aio.connect("127.0.0.1", server.port) for _ in range(start, min(n, start + 500))))
        deadline = loop.time() + 20
        while len(server.sessions) < n and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert len(server.sessions) == n
        for i, c in enumerate(clients[::50]):
            c.send(1, i.to_bytes(4, "little"))
        for i, c in enumerate(clients[::50]):
            (p,) = await recv_packets(c, 1)
            assert int.from_bytes(p.payload, "little") == i
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    try:
        run(main(), timeout=90)
    finally:
        gc.collect()


def test_options_are_checked(run):
    async def main():
        with pytest.raises(TypeError, match="unexpected keyword argument 'max_packet'"):
            await aio.serve(echo, "127.0.0.1", 0, max_packet=1)  # type: ignore[call-arg]
        with pytest.raises(ValueError, match="recv_buffer"):
            await aio.serve(echo, "127.0.0.1", 0, max_packet_size=100_000)
        with pytest.raises(ValueError, match="rate_policy"):
            await aio.serve(echo, "127.0.0.1", 0, rate_policy="ignore")
        with pytest.raises(TypeError, match="needs a handler"):
            await aio.serve(None, "127.0.0.1", 0)

    run(main())


def test_on_wire_aggregation_both_ends(run):
    async def main():
        agg_server = fp.Aggregator("lz4", threshold=256)
        agg_client = fp.Aggregator("lz4", threshold=256)
        sessions = []
        # every packet echoed must fit one aggregate frame: max_packet_size at most its capacity
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=agg_server, on_connect=sessions.append,
                                 max_packet_size=agg_server.frame_capacity())
        client = await aio.connect("127.0.0.1", server.port, aggregator=agg_client,
                                   max_packet_size=agg_client.frame_capacity())
        payload = b"position:0000,0000,0000;" * 3
        client.send_batch(fp.PacketBatch.build([3] * 200, [payload] * 200, seqs=range(200)))
        got = await recv_packets(client, 200)
        assert [p.seq for p in got] == list(range(200))
        assert all(bytes(p.payload) == payload for p in got)
        assert agg_server.stats["compressed"] >= 1 and agg_server.stats["bytes_out"] < agg_server.stats["bytes_in"]
        assert agg_client.stats["compressed"] >= 1
        # byte counters count what went on the wire, compressed
        assert sessions[0].bytes_out == client.bytes_in == agg_server.stats["bytes_out"]
        assert client.bytes_out == sessions[0].bytes_in < 200 * (12 + len(payload))
        client.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_metrics_with_a_registry(run):
    async def main():
        reg = fp.Registry()
        server = await aio.serve(echo, "127.0.0.1", 0, registry=reg)
        client = await aio.connect("127.0.0.1", server.port)
        client.send_batch(fp.PacketBatch.build([1] * 10, [b"12345678"] * 10))
        await recv_packets(client, 10)
        snap = reg.snapshot()
        assert snap["connections"]["value"] == 1 and snap["connections_accepted_total"]["value"] == 1
        assert snap["packets_in_total"]["value"] == 10 and snap["packets_out_total"]["value"] == 10
        assert snap["bytes_in_total"]["value"] == snap["bytes_out_total"]["value"] == 200
        assert snap["batch_packets"]["sum"] == 10 and snap["flush_bytes"]["sum"] == 200
        handler = snap["handler_duration_ns"]
        # nanoseconds: even a trivial echo handler call takes more than 0
        assert handler["unit"] == "ns" and handler["count"] >= 1 and handler["min"] > 0
        client.close()
        await wait_for_close(server)
        snap = reg.snapshot()
        assert snap['closes_total{reason="peer_closed"}']["value"] == 1 and snap["connections"]["value"] == 0
        text = reg.exposition()
        assert "fastpacket_packets_in_total 10.0" in text
        assert 'fastpacket_closes_total{reason="peer_closed"} 1.0' in text
        assert "fastpacket_handler_duration_seconds_count" in text and "_us" not in text
        server.close()
        await server.wait_closed()

    run(main())


def test_packets_by_type_are_a_bounded_label(run):
    # with handlers by type, each handled type has a series from the start;
    # types without their own handler (the default handler's, unhandled ones)
    # count under "other"; the series add up to packets_in_total
    async def main():
        reg = fp.Registry()
        server = await aio.serve(handlers={1: echo, 7: echo}, handler=echo, host="127.0.0.1", port=0, registry=reg)
        snap = reg.snapshot()
        assert {k for k in snap if k.startswith("packets_by_type_total")} == {
            'packets_by_type_total{type="1"}', 'packets_by_type_total{type="7"}',
            'packets_by_type_total{type="other"}'}
        client = await aio.connect("127.0.0.1", server.port)
        client.send_batch(fp.PacketBatch.build([1, 7, 7, 300, 1, 9], [b"ab"] * 6))
        await recv_packets(client, 6)
        snap = reg.snapshot()
        by_type = {t: snap[f'packets_by_type_total{{type="{t}"}}']["value"] for t in ("1", "7", "other")}
        assert by_type == {"1": 2, "7": 2, "other": 2}
        assert sum(by_type.values()) == snap["packets_in_total"]["value"] == 6
        client.close()
        server.close()
        await server.wait_closed()

    run(main())

    async def many():
        reg = fp.Registry()
        server = await aio.serve(handlers={t: echo for t in range(200)}, host="127.0.0.1", port=0, registry=reg)
        labels = [k for k in reg.snapshot() if k.startswith("packets_by_type_total")]
        assert len(labels) == fp.metrics.MAX_TYPE_LABELS + 1
        server.close()
        await server.wait_closed()

    run(many())


def test_close_and_drop_reasons_are_bounded_labels(run):
    # reasons are a `reason` label from a fixed set; an application's own
    # reason ("kicked: ...") folds into "other" (server.closes counts it by its
    # class, "kicked"; the text is the session's)
    async def main():
        reg = fp.Registry()

        def kick(session, batch):
            session.close("kicked: cheating")

        server = await aio.serve(host="127.0.0.1", port=0, registry=reg, packets_per_s=50, rate_burst=1.0,
                                 handlers={1: echo, 9: kick})
        client = await aio.connect("127.0.0.1", server.port)
        client.send(7, b"no handler for 7")
        client.send_batch(fp.PacketBatch.build([1] * 200, [b"flood"] * 200))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while server.drops.get("rate limit", 0) < 100 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert server.drops.get("unhandled type") == 1
        other = await aio.connect("127.0.0.1", server.port)
        other.send(9, b"")
        assert await asyncio.wait_for(other.wait_closed(), 5) == "peer closed"
        bad = raw_connect(server.port)
        bad.sendall(b"\x03\x00" + bytes(20))  # size 3: protocol error
        closes = await wait_for_close(server, 2)
        assert closes.get("kicked") == 1 and closes.get("protocol_error") == 1
        bad.close()
        client.close()
        await wait_for_close(server, 3)
        snap = reg.snapshot()
        counts = {k: v["value"] for k, v in snap.items() if k.startswith(("closes_total", "drops_total"))}
        assert counts['closes_total{reason="other"}'] == 1
        assert counts['closes_total{reason="protocol_error"}'] == 1
        assert counts['closes_total{reason="peer_closed"}'] == 1
        assert counts['drops_total{reason="rate_limit"}'] == server.drops["rate limit"] >= 100
        assert counts['drops_total{reason="unhandled_type"}'] == 1
        labels = {k.split('"')[1] for k in counts}
        assert labels <= fp.metrics.CLOSE_REASONS | fp.metrics.DROP_REASONS
        server.close()
        await server.wait_closed()

    run(main())


def test_connections_gauge_shared_by_servers(run):
    # the workers of one `fastpacket serve` share one registry: the gauge
    # counts up and down rather than being set to one server's count
    async def main():
        reg = fp.Registry()
        servers = [await aio.serve(echo, "127.0.0.1", 0, registry=reg) for _ in range(2)]
        clients = [await aio.connect("127.0.0.1", s.port) for s in servers for _ in range(2)]
        for c in clients:
            c.send(1, b"x")
            await recv_packets(c, 1)
        assert reg.gauge("connections").value == 4
        clients[0].close()
        await wait_for_close(servers[0])
        assert reg.gauge("connections").value == 3
        for s in servers:
            s.close()
            await s.wait_closed()
        assert reg.gauge("connections").value == 0

    run(main())


def test_client_handlers_and_prompt_sends(run):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0)
        got = []
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def on_pong(session, batch):
            got.extend(p.type for p in batch)
            if len(got) == 2 and not done.done():
                done.set_result(None)

        client = await aio.connect("127.0.0.1", server.port, handlers={7: on_pong}, handler=on_pong)
        assert client.options.max_delay == 0  # a client's requests are not held back
        client.send(7, b"ping")
        client.send(8, b"ping")
        await asyncio.wait_for(done, 5)
        assert sorted(got) == [7, 8]
        client.close()
        server.close()
        await server.wait_closed()

    run(main())


# -- regressions: refused connections, session identity, the send path ----------


def test_no_on_connect_or_on_close_for_a_refused_connection(run):
    async def main():
        connected, closed = [], []
        server = await aio.serve(echo, "127.0.0.1", 0, max_connections=1, on_connect=connected.append,
                                 on_close=closed.append)
        a = await aio.connect("127.0.0.1", server.port)
        b = await aio.connect("127.0.0.1", server.port)
        assert await asyncio.wait_for(b.wait_closed(), 5) == "peer closed"
        assert await wait_for_close(server) == {"too_many_connections": 1}
        a.send(1, b"still served")
        (p,) = await recv_packets(a, 1)
        assert bytes(p.payload) == b"still served"
        assert len(connected) == 1 and not closed and server.sessions == set(connected)
        a.close()
        await wait_for_close(server, 2)
        assert closed == connected
        server.close()
        await server.wait_closed()

    run(main())


def test_a_closed_session_is_never_another_connection(run):
    # A weak reference (or a WeakSet of sessions) to a closed session must
    # not come back pointing at a newer connection.
    async def main():
        refs = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=lambda s: refs.append(weakref.ref(s)))
        loop = asyncio.get_running_loop()
        for i in range(3):
            c = await aio.connect("127.0.0.1", server.port)
            c.send(1, b"x")
            await recv_packets(c, 1)
            c.close()
            await wait_for_close(server, i + 1)
        deadline = loop.time() + 5
        while len(refs) < 3 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        alive = [r() for r in refs if r() is not None]
        assert len({id(s) for s in alive}) == len(alive)  # three connections, three sessions
        for s in alive:
            assert s.closed and s.close_reason == "peer closed"
        server.close()
        await server.wait_closed()

    run(main())


def _record_loop_errors(loop):
    errors = []
    loop.set_exception_handler(lambda loop, ctx: errors.append(ctx))
    return errors


# A GAME packet that an aggregate frame cannot carry: 65,532 bytes > 65,515.
BIG_PAYLOAD = bytes(65520)


def test_an_unpackable_reply_closes_only_its_session(run, caplog):
    # Flushed at the end of the read burst (fill_ratio=1: no early flush),
    # the reply cannot be packed: the session closes with the reason, the
    # packet is counted, nothing reaches the event loop's error handler.
    async def main():
        errors = _record_loop_errors(asyncio.get_running_loop())
        sessions = []

        def handler(session, batch):
            for p in batch:
                session.send(p.type, BIG_PAYLOAD if p.type == 13 else p.payload)

        server = await aio.serve(handler, "127.0.0.1", 0, aggregator=fp.Aggregator(), fill_ratio=1.0,
                                 max_packet_size=60000, on_connect=sessions.append)
        bad = await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=60000)
        good = await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=60000)
        bad.send(13, b"")
        assert await bad.recv(5) is None
        assert await wait_for_close(server) == {"send_error": 1}
        assert server.drops == {"send error": 1}
        bad_session = next(s for s in sessions if s.closed)
        assert bad_session.close_reason.startswith(
            "send error: ValueError: packet 0 (65532 bytes) cannot fit any aggregate frame")
        assert bad_session.dropped_out == 1 and bad_session.packets_out == 0
        good.send(1, b"still serving")
        (p,) = await recv_packets(good, 1)
        assert bytes(p.payload) == b"still serving"
        assert errors == []
        good.close()
        server.close()
        await server.wait_closed()

    run(main())
    assert "send error" in caplog.text


def test_a_failing_flush_does_not_strand_other_sessions(run):
    # Sends made outside a read burst wait on the hub's dirty list; the
    # first session's flush fails, the one after it must still go out.
    async def main():
        errors = _record_loop_errors(asyncio.get_running_loop())
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=fp.Aggregator(), fill_ratio=1.0,
                                 max_packet_size=60000, max_delay=0.01, on_connect=sessions.append)
        clients = [await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=60000) for _ in range(2)]
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(sessions) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        first, second = sessions
        assert first.send(1, BIG_PAYLOAD) is not None  # queued; fails when flushed
        assert second.send(2, b"for the second") is not None
        assert second.send(3, b"and another") is not None
        got = await recv_packets(clients[1], 2)
        assert [bytes(p.payload) for p in got] == [b"for the second", b"and another"]
        assert await clients[0].recv(5) is None
        assert first.close_reason.startswith("send error: ValueError")
        assert first.dropped_out == 1 and server.drops == {"send error": 1}
        assert errors == []
        server.close()
        await server.wait_closed()

    run(main())


def test_send_that_flushes_an_unpackable_packet_returns_none(run):
    # Past the fill threshold send() flushes at once: the packet is dropped
    # and counted, the session closes, send() says so by returning None.
    async def main():
        errors = _record_loop_errors(asyncio.get_running_loop())
        sessions = []
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=fp.Aggregator(), max_packet_size=60000,
                                 on_connect=sessions.append)
        client = await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=60000)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not sessions and loop.time() < deadline:
            await asyncio.sleep(0.01)
        (session,) = sessions
        assert session.send(1, BIG_PAYLOAD) is None
        assert session.closed and session.close_reason.startswith("send error: ValueError")
        assert session.dropped_out == 1
        assert session.send(1, b"after the close") is None and session.dropped_out == 2
        assert await client.recv(5) is None
        assert errors == []
        server.close()
        await server.wait_closed()

    run(main())


def test_options_refuse_combinations_that_cannot_work(run):
    async def main():
        with pytest.raises(ValueError, match="max_packet_size.*65535.*aggregate frame.*65515"):
            await aio.serve(echo, "127.0.0.1", 0, aggregator=fp.Aggregator())
        with pytest.raises(ValueError, match="max_packet_size.*2000.*1000"):
            await aio.serve(echo, "127.0.0.1", 0, aggregator=fp.Aggregator(max_raw_size=1000),
                            max_packet_size=2000, recv_buffer=4096, send_buffer=4096)
        with pytest.raises(ValueError, match="rate_burst"):
            await aio.serve(echo, "127.0.0.1", 0, packets_per_s=100, rate_burst=0)
        with pytest.raises(ValueError, match="rate_burst.*packets_per_s"):
            await aio.serve(echo, "127.0.0.1", 0, packets_per_s=10, rate_burst=0.05)
        with pytest.raises(ValueError, match="rate_burst.*bytes_per_s.*max_packet_size"):
            await aio.serve(echo, "127.0.0.1", 0, bytes_per_s=1000)
        # the edges that do work
        for kwargs in (dict(aggregator=fp.Aggregator(), max_packet_size=65515),
                       dict(packets_per_s=10, rate_burst=0.1),
                       dict(bytes_per_s=1000, max_packet_size=1000),
                       dict(rate_burst=0)):
            server = await aio.serve(echo, "127.0.0.1", 0, **kwargs)
            server.close()
            await server.wait_closed()

    run(main())


# -- arrays as packets: send_array, scatter, broadcast_array (issue 15) ---------

STATE = np.dtype([("tick", "<u4"), ("x", "<i4"), ("y", "<i4")])


def states(n, tick=0):
    rows = np.zeros(n, dtype=STATE)
    rows["tick"] = tick
    rows["x"] = np.arange(n)
    rows["y"] = -np.arange(n)
    return rows


def test_session_send_array_any_size(run):
    async def main():
        rows = states(20000)  # 480 KB: many flushes of the 64 KiB send buffer

        def reply(session, batch):
            n = int(batch.payload_array("<u4")[0])
            assert session.send_array(5, rows[:n], player_ids=np.arange(n) % 1000) == n

        server = await aio.serve(reply, "127.0.0.1", 0)
        client = await aio.connect("127.0.0.1", server.port)
        for n in (3, 20000):
            client.send(1, struct.pack("<I", n))
            got = await recv_packets(client, n)
            batch = fp.PacketBatch.build([p.type for p in got], [bytes(p.payload) for p in got],
                                         seqs=[p.seq for p in got], player_ids=[p.player_id for p in got])
            assert np.array_equal(batch.payload_array(STATE), rows[:n])
            assert batch.player_ids.tolist() == (np.arange(n) % 1000).tolist()
            first = 0 if n == 3 else 3
            assert batch.seqs.tolist() == list(range(first, first + n))  # the session's seq, as usual
        with pytest.raises(ValueError, match="never fit"):
            next(iter(server.sessions)).send_array(5, np.zeros((1, 70000), dtype=np.uint8))
        client.close()
        server.close()
        await server.wait_closed()

    run(main())


async def _clients(port, n):
    return [await aio.connect("127.0.0.1", port) for _ in range(n)]


async def _wait_sessions(server, n, timeout=5.0):
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while len(server.sessions) < n and loop.time() < deadline:
        await asyncio.sleep(0.005)
    assert len(server.sessions) == n


def test_scatter_rows_and_neighbour_lists(run):
    async def main():
        order = []
        server = await aio.serve(echo, "127.0.0.1", 0, on_connect=order.append)
        clients = await _clients(server.port, 4)
        await _wait_sessions(server, 4)
        rows = states(4, tick=9)
        ids = np.array([10, 11, 12, 13], dtype=np.uint32)
        # one row each; a None entry is skipped
        assert aio.scatter(order[:3] + [None], 2, rows, player_ids=ids, flush=True) == 3
        for i, c in enumerate(clients[:3]):
            (p,) = await recv_packets(c, 1)
            assert (p.type, p.player_id, bytes(p.payload)) == (2, 10 + i, rows[i].tobytes())
        # neighbour lists (CSR): session k gets rows index[starts[k]:starts[k+1]]
        index = np.array([1, 2, 0, 3, 2, 1, 0])
        starts = np.array([0, 2, 2, 5, 7])
        assert server.scatter(3, rows, order, player_ids=ids, index=index, starts=starts) == 3
        for k, c in enumerate(clients):
            want = index[starts[k]:starts[k + 1]]
            got = await recv_packets(c, len(want)) if len(want) else []
            assert [p.player_id for p in got] == ids[want].tolist()
            assert b"".join(bytes(p.payload) for p in got) == rows[want].tobytes()
        with pytest.raises(ValueError, match="one row per session"):
            aio.scatter(order, 2, rows[:3])
        with pytest.raises(ValueError, match="not a row"):
            aio.scatter(order, 2, rows, index=[0, 4], starts=[0, 1, 2, 2, 2])
        with pytest.raises(ValueError, match="starts"):
            aio.scatter(order, 2, rows, index=[0], starts=[0, 1])
        with pytest.raises(TypeError, match="go together"):
            aio.scatter(order, 2, rows, index=[0])
        with pytest.raises(ValueError, match=r"player_ids\[0\]"):
            aio.scatter(order, 2, rows, player_ids=np.full(4, 2**32, dtype=np.uint64))
        with pytest.raises(TypeError, match="sessions"):
            aio.scatter(order[:3] + ["x"], 2, rows)
        assert all(s.queued_bytes == 0 for s in order)  # the refused calls queued nothing
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())


def test_broadcast_array_to_every_session(run):
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0)
        clients = await _clients(server.port, 3)
        await _wait_sessions(server, 3)
        rows = states(50, tick=1)
        assert server.broadcast_array(4, rows, player_ids=7) == 3
        for c in clients:
            got = await recv_packets(c, 50)
            assert b"".join(bytes(p.payload) for p in got) == rows.tobytes()
            assert {p.player_id for p in got} == {7} and [p.seq for p in got] == list(range(50))
        sessions = list(server.sessions)
        sessions[0].close()
        # a closed session drops (and counts) its rows; the others get them
        assert aio.broadcast_array(sessions, 4, rows[:2], flush=True) == 2
        assert sessions[0].dropped_out == 2
        for c in clients:
            c.close()
        server.close()
        await server.wait_closed()

    run(main())
