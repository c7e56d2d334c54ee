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
WATCH      4     anything (the live view sends its clock): the session becomes
                 a watcher; the relay sends the WATCH back as it came (the
                 watcher's round trip) followed by a STATS
STATS      5     to watchers: connections, rooms, watchers (u32), packets/s
                 in and out (f64) (``STATS_FORMAT``)
ROOM       6     to watchers, before the MOVEs of a room: room (u32). A
                 watcher gets every MOVE this server relays, each run of them
                 after the ROOM they belong to
=========  ====  ===============================================================

The live view (``fastpacket serve relay --ws-port N``, then
``http://host:N/`` in a browser; ``fastpacket demo --browser``) is a
watcher: ``pages`` holds its page (``static/live.html``) and the JS client
(``static/fastpacket.js``), which the WebSocket port serves to plain GETs.
It draws each room's players from the MOVEs, and shows the STATS and its
own round trips. Watchers see the moves this server relays (with a bus,
not those of players on other servers), and cost the relay one more group
send per burst only while one is connected.

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
import time
from importlib import resources
from typing import Any, Dict, Optional, Set, Tuple

from fastpacket.aio import Group
from fastpacket.framing import PacketBatch

__all__ = ["MOVE", "JOIN", "LEAVE", "WATCH", "STATS", "ROOM", "MOVE_FORMAT", "MOVE_SIZE", "STATS_FORMAT", "Relay",
           "JOIN_ACK_TIMEOUT_S", "STATS_MIN_INTERVAL_S", "live_view_pages"]

log = logging.getLogger("fastpacket.apps.relay")

#: Packet type of a move: relayed to every player of the sender's room.
MOVE = 1
#: Packet type of a join: the payload's u32 is the room.
JOIN = 2
#: Packet type of a leave: no payload.
LEAVE = 3
#: Packet type of a watch request (the live view): echoed, then a STATS.
WATCH = 4
#: Packet type of the server's figures, sent to watchers.
STATS = 5
#: Packet type that tells watchers which room the following MOVEs are from.
ROOM = 6
#: STATS payload: connections, rooms, watchers (u32), packets/s in, out (f64).
STATS_FORMAT = struct.Struct("<IIIdd")
#: Packets/s in STATS are measured over at least this many seconds.
STATS_MIN_INTERVAL_S = 0.5
#: The watchers' group name (rooms are ints: no clash).
WATCHERS = "watchers"
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
        self.handlers = {MOVE: self.on_move, JOIN: self.on_join, LEAVE: self.on_leave, WATCH: self.on_watch}
        self._acks: Set["asyncio.Task[None]"] = set()
        self.watchers: Optional[Group] = None
        self.server: Any = None
        self._rate: Tuple[float, float, float, float, float] = (time.monotonic(), 0.0, 0.0, 0.0, 0.0)
        #: What the WebSocket port serves to plain GETs (fastpacket.ws): the live view.
        self.pages = live_view_pages()

    async def startup(self, server: Any) -> None:
        """Runtime hook: remember the server, for the figures STATS reports."""
        self.server = server

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
        watchers = self.watchers
        if watchers is not None and len(watchers) and "room" in session.__dict__:
            watchers.send(ROOM, _ROOM.pack(session.room))
            watchers.send_batch(group)

    def on_watch(self, session: Any, group: PacketBatch) -> None:
        """WATCH packets: the session becomes a watcher (the live view); each
        WATCH goes back as it came, then one STATS."""
        if self.watchers is None:
            self.watchers = session.group(WATCHERS)
        self.watchers.add(session)
        session.send_batch(group)
        session.send(STATS, self.stats_payload(session))

    def stats_payload(self, session: Any) -> bytes:
        """The STATS payload: connections, rooms, watchers, packets/s in and
        out (over the last STATS_MIN_INTERVAL_S at least; counted by the
        server's registry, else summed over the open sessions)."""
        server = self.server
        sessions = server.sessions if server is not None else ()
        registry = server.options.registry if server is not None else None
        if registry is not None:
            pin = registry.counter("packets_in_total").value
            pout = registry.counter("packets_out_total").value
        else:
            pin = sum(s.packets_in for s in sessions)
            pout = sum(s.packets_out for s in sessions)
        t0, in0, out0, rate_in, rate_out = self._rate
        now = time.monotonic()
        if now - t0 >= STATS_MIN_INTERVAL_S:
            rate_in, rate_out = max(0.0, (pin - in0) / (now - t0)), max(0.0, (pout - out0) / (now - t0))
            self._rate = (now, pin, pout, rate_in, rate_out)
        watchers = len(self.watchers) if self.watchers is not None else 0
        return STATS_FORMAT.pack(len(sessions), len(self.members), watchers, rate_in, rate_out)

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


def live_view_pages() -> Dict[str, Tuple[str, bytes]]:
    """The live view's files, by path: ``/`` (static/live.html) and
    ``/fastpacket.js`` (the JS client), as ``serve_ws(pages=)`` takes them."""
    static = resources.files("fastpacket") / "static"
    return {"/": ("text/html; charset=utf-8", (static / "live.html").read_bytes()),
            "/fastpacket.js": ("text/javascript; charset=utf-8", (static / "fastpacket.js").read_bytes())}
