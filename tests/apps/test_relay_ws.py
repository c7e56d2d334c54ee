"""The relay over WebSocket: ``fastpacket serve relay --ws-port`` in a
subprocess, a Python client on the ``websockets`` library in the same room
as a TCP client, each seeing the other's MOVEs; ``fastpacket.run(...,
ws_port=)`` in code. Every wait bounded."""

from __future__ import annotations

import asyncio
import struct

from websockets.asyncio.client import connect as ws_connect

import fastpacket as fp
from fastpacket import aio
from fastpacket.apps.relay import JOIN, MOVE, MOVE_FORMAT
from tests.certs import certs  # noqa: F401  (the session's certificates)
from tests.loops import recv_packets
from tests.served import Served

WAIT_S = 10.0
ROOM = 3


def packets(message):
    return [(p.type, p.player_id, bytes(p.payload)) for p in fp.FrameDecoder().feed(message)]


async def ws_moves(ws, want):
    """MOVE packets the websocket client receives until `want` of them."""
    got = []
    while len(got) < want:
        got += [p for p in packets(await asyncio.wait_for(ws.recv(), WAIT_S)) if p[0] == MOVE]
    return got


def test_serve_relay_ws_port_websockets_and_tcp_share_a_room(tmp_path):
    served = Served(["relay", "--ws-port", "0"], tmp_path)
    try:
        assert served.ws_port, served.line

        async def main():
            tcp = await aio.connect("127.0.0.1", served.port)
            tcp.send(JOIN, struct.pack("<I", ROOM), player_id=1)
            assert [p.type for p in await asyncio.wait_for(tcp.recv(), WAIT_S)] == [JOIN]
            async with ws_connect(f"ws://127.0.0.1:{served.ws_port}/") as ws:
                await ws.send(fp.encode(JOIN, struct.pack("<I", ROOM), player_id=2))
                assert packets(await asyncio.wait_for(ws.recv(), WAIT_S))[0][0] == JOIN
                tcp.send(MOVE, MOVE_FORMAT.pack(10, 20, 0, 123), player_id=1)
                assert await ws_moves(ws, 1) == [(MOVE, 1, MOVE_FORMAT.pack(10, 20, 0, 123))]
                await ws.send(fp.encode(MOVE, MOVE_FORMAT.pack(7, 8, 0, 456), player_id=2))
                # the sender hears its own move (its acknowledgement), the TCP player too
                assert await ws_moves(ws, 1) == [(MOVE, 2, MOVE_FORMAT.pack(7, 8, 0, 456))]
                got = await recv_packets(tcp, 2, WAIT_S)  # its own move, then the browser's
                assert [(p.type, p.player_id) for p in got] == [(MOVE, 1), (MOVE, 2)]
            tcp.close()
            await asyncio.wait_for(tcp.wait_closed(), WAIT_S)

        asyncio.run(main())
    finally:
        code, out, err = served.stop()
    assert code == 0, err


def test_ws_port_arguments_are_checked():
    import pytest

    from fastpacket.runtime import ServerConfig, run_config

    with pytest.raises(ValueError, match="ws_port"):
        ServerConfig(app="fastpacket.apps.relay:Relay", ws_port=70000).check()
    with pytest.raises(ValueError, match="ws_port"):
        ServerConfig(app="fastpacket.apps.relay:Relay", uds="/tmp/x.sock", ws_port=0).check()
    with pytest.raises(ValueError, match="ws_port must be a fixed port"):
        run_config(ServerConfig(app="fastpacket.apps.relay:Relay", port=0, ws_port=0), workers=2)


def test_live_view_pages_are_served(tmp_path):
    import urllib.request

    served = Served(["relay", "--ws-port", "0"], tmp_path)
    try:
        for path, kind, marker in (("/", "text/html", b"fastpacketLive"),
                                   ("/fastpacket.js", "text/javascript", b"export function connect")):
            with urllib.request.urlopen(f"http://127.0.0.1:{served.ws_port}{path}", timeout=WAIT_S) as r:
                assert r.headers["Content-Type"].startswith(kind) and marker in r.read()
    finally:
        code, out, err = served.stop()
    assert code == 0, err


def test_watcher_gets_stats_and_every_room_move(tmp_path):
    from fastpacket.apps.relay import ROOM, STATS, STATS_FORMAT, WATCH

    served = Served(["relay", "--ws-port", "0"], tmp_path)
    try:
        async def main():
            async with ws_connect(f"ws://127.0.0.1:{served.ws_port}/") as watcher:
                await watcher.send(fp.encode(WATCH, b"clock123"))
                got = packets(await asyncio.wait_for(watcher.recv(), WAIT_S))
                assert [p[0] for p in got] == [WATCH, STATS] and got[0][2] == b"clock123"
                connections, rooms, watchers, _, _ = STATS_FORMAT.unpack(got[1][2])
                assert (connections, rooms, watchers) == (1, 0, 1)
                tcp = await aio.connect("127.0.0.1", served.port)
                tcp.send(JOIN, struct.pack("<I", ROOM_OF_TCP), player_id=9)
                await asyncio.wait_for(tcp.recv(), WAIT_S)
                tcp.send(MOVE, MOVE_FORMAT.pack(1, 2, 3, 4), player_id=9)
                seen = []
                while len(seen) < 2:
                    seen += packets(await asyncio.wait_for(watcher.recv(), WAIT_S))
                assert seen == [(ROOM, 0, struct.pack("<I", ROOM_OF_TCP)), (MOVE, 9, MOVE_FORMAT.pack(1, 2, 3, 4))]
                tcp.close()
            await asyncio.wait_for(tcp.wait_closed(), WAIT_S)

        asyncio.run(main())
    finally:
        code, out, err = served.stop()
    assert code == 0, err


ROOM_OF_TCP = 11


def test_serve_relay_wss_with_the_tls_flags(tmp_path, certs):
    served = Served(["relay", "--ws-port", "0", "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile",
                     str(certs.server_key)], tmp_path)
    try:
        assert "WebSocket at wss://" in served.line, served.line

        async def main():
            async with ws_connect(f"wss://127.0.0.1:{served.ws_port}/", ssl=certs.client_context()) as ws:
                await ws.send(fp.encode(JOIN, struct.pack("<I", ROOM), player_id=4))
                assert packets(await asyncio.wait_for(ws.recv(), WAIT_S))[0][:2] == (JOIN, 4)

        asyncio.run(main())
    finally:
        code, out, err = served.stop()
    assert code == 0, err
