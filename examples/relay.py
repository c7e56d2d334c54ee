"""The game relay that ``fastpacket demo`` runs, written out: players JOIN
rooms, and every MOVE is relayed to every player of the sender's room (the
sender's own copy is its acknowledgement; clients time round trips with it).
Packet types and payloads: see fastpacket/relay.py (the same logic, which
`fastpacket demo` and `fastpacket serve` use).

    python examples/relay.py [port] [metrics_port]
    fastpacket load --port 7777          # in another terminal
"""

import asyncio
import struct
import sys

import fastpacket as fp
from fastpacket.relay import JOIN, LEAVE, MOVE

ROOMS = 16
rooms = {}  # room -> list of sessions


def join(session, room):
    leave(session)
    rooms.setdefault(room, []).append(session)
    session.room = room


def leave(session):
    room = session.__dict__.pop("room", None)
    if room is not None:
        rooms[room].remove(session)
        if not rooms[room]:
            del rooms[room]


def on_move(session, moves):
    # called once per read burst with every MOVE of the burst: the Python
    # work is per burst and per room member, never per packet
    if getattr(session, "room", None) is None:
        join(session, moves[0].player_id % ROOMS)
    for member in rooms[session.room]:
        member.send_batch(moves)  # byte-for-byte, one copy, one write per member per burst


def on_join(session, joins):
    join(session, struct.unpack_from("<I", joins.payload(len(joins) - 1))[0])


async def main(port, metrics_port):
    registry = fp.Registry()
    server = await fp.aio.serve(host="127.0.0.1", port=port, registry=registry,
                                handlers={MOVE: on_move, JOIN: on_join, LEAVE: lambda s, b: leave(s)},
                                on_close=leave, idle_timeout=60.0)
    print(f"relay on 127.0.0.1:{server.port}", flush=True)
    if metrics_port is not None:
        from fastpacket.server import serve_metrics

        metrics = await serve_metrics(registry, "127.0.0.1", metrics_port)
        print(f"metrics at http://127.0.0.1:{metrics.sockets[0].getsockname()[1]}/metrics", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 7777,
                     int(sys.argv[2]) if len(sys.argv) > 2 else None))
