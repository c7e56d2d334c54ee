"""A game-style relay: the application ``fastpacket demo`` runs and
``fastpacket serve relay`` serves (``python -m fastpacket.examples.relay`` too).

Players join rooms; every MOVE packet a player sends is relayed,
byte-for-byte (header and seq as sent), to every player of its room, the
sender included: the sender's copy is its acknowledgement, from which a
client measures the round trip (the payload carries the send time).

Packet types (GAME layout; ``player_id`` in the header is the sender's id):

=========  ====  ===============================================================
name       type  payload
=========  ====  ===============================================================
MOVE       1     x, y, z: i32, sent_ns: u64 (the sender's clock), then any
                 padding (``MOVE_FORMAT``, 20 bytes at least; not checked by
                 the relay, which forwards whatever it gets)
JOIN       2     room: u32; a player that sends MOVE before any JOIN is put in
                 room ``player_id % rooms``
LEAVE      3     empty: leaves the room (closing the connection does too)
=========  ====  ===============================================================

Per read burst the adapter groups the packets by type (``handlers=``), so
``on_move`` runs once per burst with every MOVE of that burst and forwards
the whole group to each room member with one ``send_batch`` (one copy into
the member's send buffer; each member gets one write per burst). The Python
work is per burst and per room member, not per packet.
"""

from __future__ import annotations

import struct
from typing import Any, Dict, List

from fastpacket.framing import PacketBatch

__all__ = ["MOVE", "JOIN", "LEAVE", "MOVE_FORMAT", "MOVE_SIZE", "Relay"]

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
_ROOM = struct.Struct("<I")


class Relay:
    """Room membership and the packet handlers of the relay.

    An app in the runtime's sense (``handlers`` and ``on_close``): serve it
    with ``fastpacket serve relay`` or, in code,
    ``fp.aio.serve(handlers=relay.handlers, on_close=relay.on_close, ...)``.
    ``rooms`` is the number of rooms players land in when they move before
    joining. One Relay serves one event loop (it is not thread-safe).
    """

    def __init__(self, rooms: int = 16) -> None:
        if not isinstance(rooms, int) or rooms < 1:
            raise ValueError(f"rooms must be an int >= 1, got {rooms!r}")
        self.rooms = rooms
        self.members: Dict[int, List[Any]] = {}
        self.handlers = {MOVE: self.on_move, JOIN: self.on_join, LEAVE: self.on_leave}

    # -- membership ------------------------------------------------------------------

    def join(self, session: Any, room: int) -> List[Any]:
        """Put `session` in `room` (leaving its previous room); its member list."""
        old = session.__dict__.get("room")
        if old == room:
            return self.members[room]
        if old is not None:
            self.leave(session)
        members = self.members.setdefault(room, [])
        members.append(session)
        session.room = room
        return members

    def leave(self, session: Any) -> None:
        """Take `session` out of its room, if any."""
        room = session.__dict__.pop("room", None)
        if room is None:
            return
        members = self.members.get(room)
        if members is not None:
            try:
                members.remove(session)
            except ValueError:
                pass
            if not members:
                del self.members[room]

    # -- handlers (called by the adapter once per burst per type) ---------------------

    def on_move(self, session: Any, group: PacketBatch) -> None:
        """MOVE packets of one burst: relayed as one group to every member of the sender's room."""
        room = session.__dict__.get("room")
        if room is None:
            members = self.join(session, (group[0].player_id or 0) % self.rooms)
        else:
            members = self.members[room]
        for member in members:  # the sender too: its copy is the acknowledgement
            member.send_batch(group)

    def on_join(self, session: Any, group: PacketBatch) -> None:
        """JOIN packets (payload: u32 room): the session moves to that room."""
        payload = group.payload(len(group) - 1)  # the last JOIN of the burst wins
        if len(payload) < _ROOM.size:
            session.close(f"bad JOIN: payload of {len(payload)} bytes, expected {_ROOM.size}")
            return
        self.join(session, _ROOM.unpack_from(payload)[0])

    def on_leave(self, session: Any, group: PacketBatch) -> None:
        """LEAVE packets: the session leaves its room."""
        self.leave(session)

    def on_close(self, session: Any) -> None:
        """A session closed: it leaves its room."""
        self.leave(session)
