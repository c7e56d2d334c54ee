"""The relay app in process: rooms, JOIN/LEAVE, MOVE fan-out, closes."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from fastpacket import aio
from fastpacket.apps.relay import JOIN, LEAVE, MOVE, MOVE_FORMAT, Relay


def move(x, t=0, pad=0):
    return MOVE_FORMAT.pack(x, 0, 0, t) + b"\0" * pad


def test_relay_rooms():
    async def main_():
        relay = Relay(rooms=2)
        server = await aio.serve(host="127.0.0.1", port=0, handlers=relay.handlers, on_close=relay.on_close)
        a, b, c = [await aio.connect("127.0.0.1", server.port) for _ in range(3)]
        a.send(JOIN, struct.pack("<I", 7), player_id=1)
        b.send(JOIN, struct.pack("<I", 7), player_id=2)
        for s, pid in ((a, 1), (b, 2)):  # a JOIN comes back once the room is joined
            assert [(p.type, p.player_id, bytes(p.payload)) for p in await s.recv(5.0)] == \
                [(JOIN, pid, struct.pack("<I", 7))]
        c.send(MOVE, move(5), player_id=4)  # no JOIN: room 4 % 2 = 0
        got_c = await c.recv(5.0)
        assert [(p.type, p.player_id) for p in got_c] == [(MOVE, 4)]  # its own copy only
        await asyncio.sleep(0.05)
        a.send(MOVE, move(1), player_id=1)
        a.send(MOVE, move(2), player_id=1)
        for s in (a, b):
            got = []
            while len(got) < 2:
                got.extend(await s.recv(5.0))
            assert [MOVE_FORMAT.unpack_from(p.payload)[0] for p in got] == [1, 2]
            assert {p.player_id for p in got} == {1}
        assert sorted(relay.members) == [0, 7] and len(relay.members[7]) == 2
        assert relay.members[7] is server.group(7)  # a room is a group of the server
        with pytest.raises(asyncio.TimeoutError):  # room 0 hears nothing of room 7
            await c.recv(0.1)
        b.send(LEAVE, b"", player_id=2)
        await asyncio.sleep(0.05)
        assert len(relay.members[7]) == 1
        b.send(JOIN, b"\x01", player_id=2)  # too short
        assert (await asyncio.wait_for(b.wait_closed(), 5.0)) == "peer closed"
        for s in (a, c):
            s.close()
        deadline = time.monotonic() + 5
        while relay.members and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert relay.members == {}
        assert server.closes.get("bad_join") == 1
        server.close()
        await server.wait_closed()

    asyncio.run(asyncio.wait_for(main_(), 30))
