"""A relay client: joins a room, sends a few MOVEs, prints what the room
relays back and the round trip of its own moves.

    python -m fastpacket.examples.client [port] [player_id] [room]
"""

import asyncio
import struct
import sys
import time

import fastpacket as fp
from fastpacket.apps.relay import JOIN, MOVE, MOVE_FORMAT


async def main(port, player_id, room, moves=10):
    # no handler: batches queue for recv(); max_delay=0: sends made outside a
    # read burst go out at the end of this loop iteration, not 10 ms later
    session = await fp.aio.connect("127.0.0.1", port, max_delay=0)
    session.send(JOIN, struct.pack("<I", room), player_id=player_id)
    for i in range(moves):
        session.send(MOVE, MOVE_FORMAT.pack(i, 2 * i, 0, time.monotonic_ns()), player_id=player_id)
        own = False
        while not own:
            batch = await session.recv(timeout=5.0)
            if batch is None:
                raise SystemExit(f"the server closed the connection: {session.close_reason}")
            for packet in batch:
                if packet.type != MOVE:
                    continue
                x, y, z, sent_ns = MOVE_FORMAT.unpack_from(packet.payload)
                if packet.player_id == player_id:
                    own = True
                    print(f"my move {i} to ({x}, {y}, {z}): round trip "
                          f"{(time.monotonic_ns() - sent_ns) / 1000:.0f} us")
                else:
                    print(f"player {packet.player_id} moved to ({x}, {y}, {z})")
        await asyncio.sleep(0.1)
    session.close("bye")
    await session.wait_closed()


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:4]]
    asyncio.run(main(*(args + [7777, 1, 0][len(args):])))
