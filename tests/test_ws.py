"""fastpacket.ws: the same handlers, sessions, groups, limits and metrics
over WebSocket. Clients: the ``websockets`` library (what a Python user
would pick, independent of the server's picows) and fastpacket's own
``connect_ws`` (picows). Real sockets on 127.0.0.1, every wait bounded, on
asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
import urllib.request

import pytest
import websockets
from websockets.asyncio.client import connect as ws_connect

import fastpacket as fp
from fastpacket import aio
from fastpacket.ws import close_code, serve_ws
from tests.certs import certs  # noqa: F401  (the session's certificates)
from tests.loops import recv_packets, run  # noqa: F401  (run: the event-loop fixture)

WAIT_S = 10.0


def echo(session, batch):
    session.send_batch(batch)


def decode(message: bytes):
    """Every packet of one binary message (FrameDecoder: a message holds whole packets)."""
    dec = fp.FrameDecoder()
    batch = dec.feed(message)
    assert dec.pending == 0, "a reply message ended inside a packet"
    return [(p.type, p.player_id, bytes(p.payload)) for p in batch]


async def closed_with(ws) -> tuple:
    """(code, reason) of the close the server sent, reading until it comes."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), WAIT_S)
    except websockets.ConnectionClosed as exc:
        assert exc.rcvd is not None, "the server closed without a close frame"
        return exc.rcvd.code, exc.rcvd.reason


def url(server, scheme="ws", path="/"):
    return f"{scheme}://127.0.0.1:{server.port}{path}"


def test_websockets_client_echo_every_packet_of_a_message(run):
    async def main():
        server = await serve_ws(echo, "127.0.0.1", 0)
        async with ws_connect(url(server)) as ws:
            message = b"".join(fp.encode(i % 3, b"p%d" % i, player_id=i) for i in range(20))
            await ws.send(message)
            reply = await asyncio.wait_for(ws.recv(), WAIT_S)
            # the 20 packets came back in one binary message: one flush
            assert isinstance(reply, bytes) and reply == message
            await ws.send(fp.encode(7, b"x" * 1000))
            assert decode(await asyncio.wait_for(ws.recv(), WAIT_S)) == [(7, 0, b"x" * 1000)]
        await asyncio.sleep(0.05)
        server.close()
        await server.wait_closed()
        assert server.closes == {"peer_closed": 1}

    run(main())


def test_fragmented_message_is_one_message(run):
    async def main():
        got = []
        server = await serve_ws(lambda s, b: got.extend(bytes(p.payload) for p in b), "127.0.0.1", 0)
        async with ws_connect(url(server)) as ws:
            data = fp.encode(1, b"a" * 100) + fp.encode(2, b"b" * 100)
            # fragments that split a packet: allowed within one message
            await ws.send([data[:7], data[7:150], data[150:]])
            for _ in range(100):
                if len(got) == 2:
                    break
                await asyncio.sleep(0.01)
        assert got == [b"a" * 100, b"b" * 100]
        server.close()
        await server.wait_closed()

    run(main())


def test_picows_client_session(run):
    async def main():
        server = await aio.serve_ws(echo, "127.0.0.1", 0)
        client = await aio.connect_ws(url(server))
        for i in range(50):
            client.send(i % 3, b"p%d" % i, player_id=i)
        got = await recv_packets(client, 50, WAIT_S)
        assert [bytes(p.payload) for p in got] == [b"p%d" % i for i in range(50)]
        assert [p.seq for p in got] == list(range(50))
        client.close()
        assert await asyncio.wait_for(client.wait_closed(), WAIT_S) == "closed"
        server.close()
        await server.wait_closed()

    run(main())


def test_groups_span_tcp_and_websocket_sessions(run):
    async def main():
        def on_connect(session):
            server.group("room").add(session)

        def shout(session, batch):
            server.group("room").send_batch(batch, exclude=session)

        server = await aio.serve(shout, "127.0.0.1", 0, on_connect=on_connect)
        ws_server = await serve_ws(host="127.0.0.1", port=0, server=server)
        tcp = await aio.connect("127.0.0.1", server.port)
        async with ws_connect(url(ws_server)) as ws:
            for _ in range(100):
                if len(server.group("room")) == 2:
                    break
                await asyncio.sleep(0.01)
            await ws.send(fp.encode(5, b"from ws", player_id=9))
            got = await recv_packets(tcp, 1, WAIT_S)
            assert [(p.type, p.player_id, bytes(p.payload)) for p in got] == [(5, 9, b"from ws")]
            tcp.send(6, b"from tcp", player_id=3)
            assert decode(await asyncio.wait_for(ws.recv(), WAIT_S)) == [(6, 3, b"from tcp")]
        tcp.close()
        await asyncio.wait_for(tcp.wait_closed(), WAIT_S)
        for s in (ws_server, server):
            s.close()
            await s.wait_closed()

    run(main())


def test_metrics_count_websocket_sessions(run):
    async def main():
        reg = fp.Registry()
        server = await serve_ws(echo, "127.0.0.1", 0, registry=reg)
        async with ws_connect(url(server)) as ws:
            await ws.send(fp.encode(1, b"a") + fp.encode(1, b"b"))
            await asyncio.wait_for(ws.recv(), WAIT_S)
            snap = reg.snapshot()
            assert snap["packets_in_total"]["value"] == 2
            assert snap["packets_out_total"]["value"] == 2
            assert snap["connections"]["value"] == 1
        server.close()
        await server.wait_closed()

    run(main())


@pytest.mark.parametrize("what, message, code, reason", [
    ("text", "hello", 1003, "protocol error: text message"),
    ("partial packet", fp.encode(1, b"abcdef")[:9], 1002, "protocol error: a message ended inside a packet"),
    ("bad size", b"\x03\x00" + bytes(10), 1002, "protocol error: "),
])
def test_bad_messages_close_with_code_and_reason(run, what, message, code, reason):
    async def main():
        reasons = []
        server = await serve_ws(echo, "127.0.0.1", 0, on_close=lambda s: reasons.append(s.close_reason))
        async with ws_connect(url(server)) as ws:
            await ws.send(message)
            got_code, got_reason = await closed_with(ws)
        assert got_code == code and got_reason.startswith(reason), (got_code, got_reason)
        await asyncio.sleep(0.05)
        assert len(reasons) == 1 and reasons[0].startswith(reason), reasons
        assert server.closes == {"protocol_error": 1}
        server.close()
        await server.wait_closed()

    run(main())


def test_packets_before_a_bad_one_are_delivered(run):
    async def main():
        got = []
        server = await serve_ws(lambda s, b: got.extend(p.type for p in b), "127.0.0.1", 0)
        async with ws_connect(url(server)) as ws:
            await ws.send(fp.encode(1, b"ok") + fp.encode(2, b"ok") + b"\x03\x00" + bytes(10))
            assert (await closed_with(ws))[0] == 1002
        assert got == [1, 2]
        server.close()
        await server.wait_closed()

    run(main())


def test_oversize_message_1009(run):
    async def main():
        server = await serve_ws(echo, "127.0.0.1", 0, max_message_size=1024)
        async with ws_connect(url(server)) as ws:
            await ws.send(fp.encode(1, bytes(2000)))
            code, reason = await closed_with(ws)
        assert code == 1009, (code, reason)
        async with ws_connect(url(server)) as ws:  # the same over fragments of a message
            data = fp.encode(1, bytes(600)) * 2
            await ws.send([data[:600], data[600:]])
            code, reason = await closed_with(ws)
        assert code == 1009 and "max_message_size" in reason
        server.close()
        await server.wait_closed()

    run(main())


def test_limits_close_codes(run):
    async def main():
        server = await serve_ws(echo, "127.0.0.1", 0, packets_per_s=5, rate_policy="close", max_connections=1)
        async with ws_connect(url(server)) as ws:
            async with ws_connect(url(server)) as second:
                assert await closed_with(second) == (1013, "too many connections")
            await ws.send(b"".join(fp.encode(1, b"x") for _ in range(20)))
            assert await closed_with(ws) == (1008, "rate limit exceeded")
        server.close()
        await server.wait_closed()

        def boom(session, batch):
            raise RuntimeError("bug")

        server = await serve_ws(boom, "127.0.0.1", 0, idle_timeout=0.2)
        async with ws_connect(url(server)) as ws:
            await ws.send(fp.encode(1, b"x"))
            code, reason = await closed_with(ws)
            assert code == 1011 and reason.startswith("handler error")
        async with ws_connect(url(server)) as ws:  # sends nothing
            assert await closed_with(ws) == (1001, "idle timeout")
        async with ws_connect(url(server)) as ws:
            await asyncio.sleep(0.05)
            server.close()
            assert await closed_with(ws) == (1001, "server shutdown")
        await server.wait_closed()

    run(main())


def test_close_code_mapping():
    assert close_code("peer closed") == 1000
    assert close_code("protocol error: size 3") == 1002
    assert close_code("slow consumer") == 1008
    assert close_code("game over") == 1000
    assert close_code(None) == 1000


def test_wss_with_tls(run, certs):
    async def main():
        server = await serve_ws(echo, "127.0.0.1", 0, ssl=certs.server_context())
        async with ws_connect(url(server, "wss"), ssl=certs.client_context()) as ws:
            await ws.send(fp.encode(4, b"secure"))
            assert decode(await asyncio.wait_for(ws.recv(), WAIT_S)) == [(4, 0, b"secure")]
        client = await aio.connect_ws(url(server, "wss"), ssl=certs.client_context())
        client.send(4, b"picows")
        assert [bytes(p.payload) for p in await recv_packets(client, 1, WAIT_S)] == [b"picows"]
        client.close()
        await asyncio.wait_for(client.wait_closed(), WAIT_S)
        server.close()
        await server.wait_closed()

    run(main())


def test_pages_and_paths(run):
    async def main():
        server = await serve_ws(echo, "127.0.0.1", 0, path="/game", pages={"/": ("text/html", b"<p>hi</p>")})

        def get(path):
            try:
                with urllib.request.urlopen(url(server, "http", path), timeout=WAIT_S) as r:
                    return r.status, r.headers["Content-Type"], r.read()
            except urllib.error.HTTPError as exc:
                return exc.code, None, None

        loop = asyncio.get_running_loop()
        assert await loop.run_in_executor(None, get, "/") == (200, "text/html", b"<p>hi</p>")
        assert (await loop.run_in_executor(None, get, "/nothing"))[0] == 404
        with pytest.raises(websockets.InvalidStatus):
            async with ws_connect(url(server, path="/")):
                pass
        async with ws_connect(url(server, path="/game")) as ws:
            await ws.send(fp.encode(1, b"in"))
            assert decode(await asyncio.wait_for(ws.recv(), WAIT_S)) == [(1, 0, b"in")]
        server.close()
        await server.wait_closed()

    run(main())


@pytest.mark.parametrize("kwargs, name", [
    ({"max_message_size": 4}, "max_message_size"),
    ({"ping_interval": 0}, "ping_interval"),
    ({"ping_interval": 1.0, "ping_timeout": 2.0}, "ping_timeout"),
    ({"path": "game"}, "path"),
    ({"pages": {"/": "html"}}, "pages"),
    ({"bogus": 1}, "bogus"),
    ({"recv_buffer": 100}, "recv_buffer"),
])
def test_bad_arguments_name_themselves(run, kwargs, name):
    async def main():
        with pytest.raises((ValueError, TypeError), match=name):
            await serve_ws(echo, "127.0.0.1", 0, **kwargs)

    run(main())
