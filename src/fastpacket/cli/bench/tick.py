"""Tick: one authoritative game tick, the tick app's rules
(fastpacket.apps.tick), beside the plain-Python way of the same tick.

Input: 10,000 INPUT packets from 1,000 players (ten each, interleaved) in
one stream. A tick decodes them, applies each player's last input
(velocity clipped), moves every player (position clipped to the world) and
queues one STATE packet per player to that player's own send buffer.

- plain-python: a bytearray decoder with struct.unpack_from per packet, the
  players in dicts, struct.pack per STATE appended to a bytearray per player;
- fastpacket: FrameDecoder.feed, PacketBatch.payload_array (a zero-copy
  view), the tick app's World.step (numpy), fastpacket.sendbuf.scatter (one
  native call queues every player's STATE to its SendBuffer).

Both run the same ticks from the same start and must queue the same bytes.
"""

from __future__ import annotations

import random
import struct
from typing import Dict, List, Tuple

import numpy as np

from fastpacket import FrameDecoder, PacketBatch, SendBuffer
from fastpacket.apps.tick import INPUT, INPUT_DTYPE, MAX_SPEED, STATE, STATE_DTYPE, World
from fastpacket.cli.bench._harness import Row, interleaved_medians
from fastpacket.sendbuf import scatter

PLAYERS = 1000
INPUTS_PER_PLAYER = 10
TICKS_PER_RUN, QUICK_TICKS_PER_RUN = 10, 3    # ticks per timed call; the buffers are emptied after each call
WORLD_SIZE = 1 << 20
HEADER = struct.Struct("<HHII")
INPUT_FORMAT = struct.Struct("<Ihh")           # INPUT_DTYPE, field for field
STATE_FORMAT = struct.Struct("<IIiihh")        # STATE_DTYPE, field for field
SEND_BUFFER_BYTES = 65536
SEQ_MASK = 0xFFFFFFFF

assert INPUT_FORMAT.size == INPUT_DTYPE.itemsize and STATE_FORMAT.size == STATE_DTYPE.itemsize


def make_inputs(players: int = PLAYERS, per_player: int = INPUTS_PER_PLAYER, seed: int = 3) -> Tuple[bytes, List[int]]:
    """The stream of INPUT packets (players interleaved, random velocities,
    some past MAX_SPEED) and the player ids, ids 1..players in a shuffled order."""
    rng = random.Random(seed)
    ids = list(range(1, players + 1))
    rng.shuffle(ids)
    order = [pid for _ in range(per_player) for pid in ids]
    rng.shuffle(order)
    records = np.zeros(len(order), INPUT_DTYPE)
    records["seq"] = np.arange(1, len(order) + 1)
    records["vx"] = [rng.randint(-2 * MAX_SPEED, 2 * MAX_SPEED) for _ in order]
    records["vy"] = [rng.randint(-2 * MAX_SPEED, 2 * MAX_SPEED) for _ in order]
    return PacketBatch.build(INPUT, records, player_ids=np.array(order, np.uint32)).to_bytes(), ids


class PythonTick:
    """The plain-Python server: dicts of players, a bytearray per player."""

    def __init__(self, ids: List[int], world_size: int = WORLD_SIZE) -> None:
        world = World(world_size)  # spawn positions as the tick app gives them
        self.players: Dict[int, List[int]] = {}
        for pid in ids:
            world.join(pid)
        for row, pid in zip(world.states.tolist(), world.ids.tolist()):
            if pid:
                self.players[pid] = [row[2], row[3], 0, 0, 0]  # x, y, vx, vy, ack
        self.out: Dict[int, bytearray] = {pid: bytearray() for pid in ids}
        self.seq: Dict[int, int] = {pid: 0 for pid in ids}
        self.tick = 0
        self.top = world_size - 1

    def run(self, stream: bytes) -> None:
        """One tick on `stream`: decode, last input per player, move, one STATE each."""
        unpack_from = HEADER.unpack_from
        unpack_input = INPUT_FORMAT.unpack_from
        hs = HEADER.size
        last: Dict[int, Tuple[int, int, int]] = {}
        buf = bytearray(stream)
        pos, end = 0, len(buf)
        while end - pos >= hs:  # decode
            size, ptype, _, pid = unpack_from(buf, pos)
            if size < hs or size > 65535:
                raise ValueError(f"bad packet size {size}")
            if end - pos < size:
                break
            if ptype == INPUT and size - hs >= INPUT_FORMAT.size:
                last[pid] = unpack_input(buf, pos + hs)
            pos += size
        for pid, (seq, vx, vy) in last.items():  # the last input of each player
            p = self.players.get(pid)
            if p is not None:
                p[2] = min(max(vx, -MAX_SPEED), MAX_SPEED)
                p[3] = min(max(vy, -MAX_SPEED), MAX_SPEED)
                p[4] = seq
        self.tick += 1
        tick, top = self.tick, self.top
        pack_header, pack_state = HEADER.pack, STATE_FORMAT.pack
        size = hs + STATE_FORMAT.size
        for pid, p in self.players.items():  # move, then one STATE each
            p[0] = min(max(p[0] + p[2], 0), top)
            p[1] = min(max(p[1] + p[3], 0), top)
            seq = self.seq[pid]
            self.out[pid] += pack_header(size, STATE, seq, pid) + pack_state(tick, p[4], p[0], p[1], p[2], p[3])
            self.seq[pid] = (seq + 1) & SEQ_MASK

    def drain(self) -> List[bytes]:
        """Every player's queued bytes (in slot order), emptying the buffers."""
        got = [bytes(self.out[pid]) for pid in self.players]
        for b in self.out.values():
            del b[:]
        return got


class FastpacketTick:
    """The tick app's World, a SendBuffer per player, arrays throughout."""

    def __init__(self, ids: List[int], world_size: int = WORLD_SIZE) -> None:
        self.world = World(world_size)
        self.slot_of = np.zeros(max(ids) + 1, np.int64)  # player id -> slot
        for pid in ids:
            self.slot_of[pid] = self.world.join(pid)
        # a SendBuffer per occupied slot, None for a free one
        self.buffers = [SendBuffer(SEND_BUFFER_BYTES) if pid else None for pid in self.world.ids.tolist()]
        self.decoder = FrameDecoder()

    def run(self, stream: bytes) -> None:
        """One tick on `stream`: the same rules, with arrays throughout."""
        batch = self.decoder.feed(stream)
        inputs = batch.payload_array(INPUT_DTYPE)           # a view: equal sizes, back to back
        self.world.step(np.take(self.slot_of, batch.player_ids), inputs)
        scatter(self.buffers, STATE, self.world.states, player_ids=self.world.ids)

    def drain(self) -> List[bytes]:
        """Every player's queued bytes (in slot order), emptying the buffers."""
        return [bytes(sb.flush()) for sb in self.buffers if sb is not None]


def _same_answer(stream: bytes, ids: List[int]) -> None:
    py, fast = PythonTick(ids), FastpacketTick(ids)
    for _ in range(2):
        py.run(stream)
        fast.run(stream)
    if py.drain() != fast.drain():
        raise RuntimeError("the fastpacket tick queued other bytes than the plain-Python tick")


def run(quick: bool = False) -> List[Row]:
    stream, ids = make_inputs()
    _same_answer(stream, ids)
    ticks = QUICK_TICKS_PER_RUN if quick else TICKS_PER_RUN
    py, fast = PythonTick(ids), FastpacketTick(ids)

    def loop(impl):  # `ticks` ticks, then the buffers emptied (both sides alike)
        def go() -> None:
            for _ in range(ticks):
                impl.run(stream)
            impl.drain()
        return go

    med = interleaved_medians({"plain-python": loop(py), "fastpacket": loop(fast)}, repeat=5 if quick else 15)
    base = med["plain-python"]
    case = f"tick: {PLAYERS * INPUTS_PER_PLAYER:,} INPUTs from {PLAYERS:,} players -> {PLAYERS:,} STATEs"
    rows = []
    for name, t in med.items():
        per_tick = t / ticks
        rows.append(Row(section="tick", case=case, impl=name, rate=1 / per_tick, unit="ticks/s",
                        ratio=None if name == "plain-python" else base / t,
                        extra=f"{per_tick * 1e3:.3f} ms/tick", target="" if name == "plain-python" else ">= 20x"))
    return rows
