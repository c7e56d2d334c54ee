"""A game-style relay: the application ``fastpacket demo`` runs and
``fastpacket serve relay`` serves (``python -m fastpacket.examples.relay`` too).

Players join rooms; every MOVE packet a player sends is relayed,
byte-for-byte (header and seq as sent), to every player of its room, the
sender included: the sender's copy is its acknowledgement, from which a
client measures the round trip (the payload carries the send time).

A room is a group of the server (``server.group(room)``, fastpacket.aio),
so with a bus (``fastpacket serve relay --workers N --bus redis://...``, or
several servers on one Redis) a room spans every worker and server: its
players may be connected anywhere and still see each other's moves, each
exactly once and in the order each sender sent them (fastpacket.cluster).

Packet types (GAME layout; ``player_id`` in the header is the sender's id):

=========  ====  ===============================================================
name       type  payload
=========  ====  ===============================================================
MOVE       1     x, y, z: i32, sent_ns: u64 (the sender's clock), then any
                 padding (``MOVE_FORMAT``, 20 bytes at least; not checked by
                 the relay, which forwards whatever it gets)
JOIN       2     room: u32; a player that sends MOVE before any JOIN is put in
                 room ``player_id % rooms``. The relay sends the JOIN back
                 once the room is joined on every server of the bus (at once
                 without a bus): from then on, the player's moves reach the
                 whole room and it hears every move of the room
LEAVE      3     empty: leaves the room (closing the connection does too)
=========  ====  ===============================================================

Per read burst the adapter groups the packets by type (``handlers=``), so
``on_move`` runs once per burst with every MOVE of that burst and hands the
whole group to the room's ``send_batch``: one native fan-out copies it into
each member's send buffer (each member gets one write per loop iteration),
and with a bus one publish per room per loop iteration carries it to the
other servers. The Python work is per burst, not per packet or member.
"""

from __future__ import annotations

import asyncio
import logging
import struct
from typing import Any, Dict, Set

from fastpacket.aio import Group
from fastpacket.framing import PacketBatch

__all__ = ["MOVE", "JOIN", "LEAVE", "MOVE_FORMAT", "MOVE_SIZE", "Relay", "JOIN_ACK_TIMEOUT_S"]

log = logging.getLogger("fastpacket.apps.relay")

#: Packet type of a move: relayed to every player of the sender's room.
MOVE = 1
#: Packet type of a join: the payload's u32 is the room.
JOIN = 2
#: Packet type of a leave: no payload.
LEAVE = 3
#: MOVE payload: x, y, z, sent_ns (little-endian), then optional padding.
MOVE_FORMAT = struct.Struct("<iiiQ")
#: Bytes of a MOVE payload before any padding (20).
MOVE_SIZE = MOVE_FORMAT.size
#: Seconds the relay waits for the bus to confirm a room's subscription
#: before acknowledging a JOIN anyway (the bus is down: local play goes on).
JOIN_ACK_TIMEOUT_S = 2.0
_ROOM = struct.Struct("<I")


class Relay:
    """Room membership and the packet handlers of the relay.

    An app in the runtime's sense (``handlers`` and ``on_close``): serve it
    with ``fastpacket serve relay`` or, in code,
    ``fp.aio.serve(handlers=relay.handlers, on_close=relay.on_close, ...)``.
    ``rooms`` is the number of rooms players land in when they move before
    joining. ``members`` maps each room with players on this server to its
    group. One Relay serves one event loop (it is not thread-safe).
    """

    def __init__(self, rooms: int = 16) -> None:
        if not isinstance(rooms, int) or rooms < 1:
            raise ValueError(f"rooms must be an int >= 1, got {rooms!r}")
        self.rooms = rooms
        self.members: Dict[int, Group] = {}
        self.handlers = {MOVE: self.on_move, JOIN: self.on_join, LEAVE: self.on_leave}
        self._acks: Set["asyncio.Task[None]"] = set()

    # -- membership ------------------------------------------------------------------

    def join(self, session: Any, room: int) -> Group:
        """Put `session` in `room` (leaving its previous room); the room's group."""
        group: Group = session.__dict__.get("room_group")
        if group is not None and session.room == room:
            return group
        if group is not None:
            self.leave(session)
        group = session.group(room)
        group.add(session)
        if session in group:  # a closed session is not added
            session.room = room
            session.room_group = group
            self.members[room] = group
        return group

    def leave(self, session: Any) -> None:
        """Take `session` out of its room, if any."""
        room = session.__dict__.pop("room", None)
        group = session.__dict__.pop("room_group", None)
        if group is None:
            return
        group.discard(session)
        if not len(group) and self.members.get(room) is group:
            del self.members[room]

    # -- handlers (called by the adapter once per burst per type) ---------------------

    def on_move(self, session: Any, group: PacketBatch) -> None:
        """MOVE packets of one burst: relayed as one batch to every member of
        the sender's room (the sender too: its copy is the acknowledgement)."""
        room_group = session.__dict__.get("room_group")
        if room_group is None:
            room_group = self.join(session, (group[0].player_id or 0) % self.rooms)
        room_group.send_batch(group)

    def on_join(self, session: Any, group: PacketBatch) -> None:
        """JOIN packets (payload: u32 room): the session moves to that room,
        and gets its JOIN back once the room is joined across the bus."""
        last = len(group) - 1  # the last JOIN of the burst wins
        payload = group.payload(last)
        if len(payload) < _ROOM.size:
            session.close(f"bad JOIN: payload of {len(payload)} bytes, expected {_ROOM.size}")
            return
        room = self.join(session, _ROOM.unpack_from(payload)[0])
        ack = group[last:]
        if room.channel is None:  # no bus: the room is complete now
            session.send_batch(ack)
            return
        task = asyncio.get_running_loop().create_task(self._ack_join(session, room, ack))
        self._acks.add(task)
        task.add_done_callback(self._acks.discard)

    async def _ack_join(self, session: Any, room: Group, ack: PacketBatch) -> None:
        if not await room.ready(JOIN_ACK_TIMEOUT_S):
            log.warning("room %r: the bus did not confirm the subscription within %g s; acknowledging the "
                        "JOIN anyway (players on other servers are not heard until it does)", room.name,
                        JOIN_ACK_TIMEOUT_S)
        if not session.closed and session in room:
            session.send_batch(ack)

    def on_leave(self, session: Any, group: PacketBatch) -> None:
        """LEAVE packets: the session leaves its room."""
        self.leave(session)

    def on_close(self, session: Any) -> None:
        """A session closed (it has left its groups already): forget its room."""
        self.leave(session)
