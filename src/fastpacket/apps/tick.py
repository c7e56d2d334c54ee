"""An authoritative tick server: the application ``fastpacket serve --app
tick`` serves and ``fastpacket demo --app tick`` runs under load.

Players send INPUT packets (a desired velocity); every tick (30 Hz by
default) the server takes every input received since the last tick as one
array, steps every position with numpy, and sends each player a STATE
packet: its own state, or (with a ``radius``) the states of every player
within that radius, itself included. Nothing here touches a packet in
Python: inputs arrive as arrays (``PacketBatch.payload_array``), states
leave as arrays (``fastpacket.aio.scatter``).

Packet types (GAME layout; the header's player_id of an INPUT is ignored,
the connection identifies the player; a STATE's is its subject's id):

=========  ====  ==================================================================
name       type  payload
=========  ====  ==================================================================
WELCOME    20    player_id: u32, world_size: u32, hz: u16 (``WELCOME_FORMAT``),
                 once, when the player connects
INPUT      21    seq: u32 (the client's input counter), vx, vy: i16, world units
                 per tick (``INPUT_DTYPE``)
STATE      22    tick: u32, ack: u32 (the seq of the last INPUT applied, 0 before
                 any), x, y: i32, vx, vy: i16 (``STATE_DTYPE``)
=========  ====  ==================================================================

The rules of a tick (``World.step``), which ``tests/apps/tick_model.py``
restates in plain Python:

1. For each player, the last INPUT received since the previous tick (in
   arrival order), if any, sets its velocity to (vx, vy), each clipped to
   [-MAX_SPEED, MAX_SPEED], and its ack to that INPUT's seq.
2. Every player moves: x = clip(x + vx, 0, world_size - 1), the same for y.
3. The tick counter goes up by one and each player gets its STATE (or the
   STATEs of the players within `radius`: dx*dx + dy*dy <= radius*radius,
   ordered by slot).

A player starts at rest at ``spawn_position(player_id, world_size)``.
Player ids are given by the server, from 1 up, in order of connection.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from typing import Any, List, Optional, Tuple

import numpy as np

from fastpacket import aio
from fastpacket.framing import PacketBatch
from fastpacket.metrics import Metric

__all__ = ["WELCOME", "INPUT", "STATE", "WELCOME_FORMAT", "INPUT_DTYPE", "STATE_DTYPE", "DEFAULT_HZ",
           "DEFAULT_WORLD_SIZE", "MAX_WORLD_SIZE", "MAX_SPEED", "MAX_HZ", "MAX_PLAYER_ID", "MAX_INPUTS_PER_TICK",
           "World", "Tick", "spawn_position",
           "neighbours"]

log = logging.getLogger("fastpacket.apps.tick")

#: Packet type the server sends a player once, when it connects.
WELCOME = 20
#: Packet type of a player's input.
INPUT = 21
#: Packet type of a player's state, sent every tick.
STATE = 22
#: WELCOME payload: player_id, world_size, hz.
WELCOME_FORMAT = struct.Struct("<IIH")
#: INPUT payload: the client's input counter and the velocity it asks for.
INPUT_DTYPE = np.dtype([("seq", "<u4"), ("vx", "<i2"), ("vy", "<i2")])
#: STATE payload: the tick, the last input applied, position and velocity.
STATE_DTYPE = np.dtype([("tick", "<u4"), ("ack", "<u4"), ("x", "<i4"), ("y", "<i4"), ("vx", "<i2"),
                        ("vy", "<i2")])
#: Ticks per second by default.
DEFAULT_HZ = 30.0
#: Side of the square world, in world units.
DEFAULT_WORLD_SIZE = 1 << 20
#: Largest world_size, in world units: positions plus a speed stay within int32.
MAX_WORLD_SIZE = 1 << 30
#: Largest speed on either axis, in world units per tick.
MAX_SPEED = 1024
#: INPUTs one player may send per tick; past it the connection is closed
#: ("input flood"), so a client cannot make the server hold unbounded input.
MAX_INPUTS_PER_TICK = 64
#: Player slots allocated at first; doubled when full.
INITIAL_SLOTS = 64
#: Highest tick rate, in ticks per second.
MAX_HZ = 1000.0
#: Player ids are 1 .. this (GAME's u32 player_id field; 0 marks a free slot).
MAX_PLAYER_ID = 0xFFFFFFFF
#: WELCOME's u16 hz field holds at most this.
_WELCOME_HZ_MAX = 0xFFFF

# spawn_position's multipliers (primes): players land spread over the world.
_SPAWN_X, _SPAWN_Y = 7919, 104729


def spawn_position(player_id: int, world_size: int = DEFAULT_WORLD_SIZE) -> Tuple[int, int]:
    """Where player `player_id` starts: (x, y)."""
    return (player_id * _SPAWN_X) % world_size, (player_id * _SPAWN_Y) % world_size


def neighbours(x: np.ndarray, y: np.ndarray, radius: int) -> Tuple[np.ndarray, np.ndarray]:
    """The points within `radius` of each point, itself included, as
    compressed sparse rows: point k's neighbours are
    ``index[starts[k]:starts[k+1]]``, in increasing order. Vectorized with a
    uniform grid of `radius`-wide cells (each point against the 3x3 cells
    around its own), so the work grows with the pairs that are near, not
    with the square of the points. Coordinates are non-negative integers."""
    n = len(x)
    if n == 0:
        return np.zeros(0, np.int64), np.zeros(1, np.int64)
    x = x.astype(np.int64)
    y = y.astype(np.int64)
    cx, cy = x // radius + 1, y // radius + 1  # + 1: the cells around stay >= 0
    width = int(cy.max()) + 2
    key = cx * width + cy
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    sources, targets = [], []
    for dx in (-1, 0, 1):
        for dy in (-1, 0, 1):
            want = (cx + dx) * width + (cy + dy)
            lo = np.searchsorted(sorted_key, want, "left")
            counts = np.searchsorted(sorted_key, want, "right") - lo
            total = int(counts.sum())
            if total == 0:
                continue
            # ragged ranges lo[k] .. lo[k] + counts[k], flattened
            within = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
            sources.append(np.repeat(np.arange(n), counts))
            targets.append(order[np.repeat(lo, counts) + within])
    src = np.concatenate(sources)
    dst = np.concatenate(targets)
    near = (x[src] - x[dst]) ** 2 + (y[src] - y[dst]) ** 2 <= radius * radius
    src, dst = src[near], dst[near]
    by_pair = np.lexsort((dst, src))
    starts = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(src, minlength=n), out=starts[1:])
    return dst[by_pair], starts


class World:
    """The state of every player as numpy columns, one slot per player, and
    the tick rule (see the module docstring). No I/O: the Tick app and the
    benchmark drive it with arrays."""

    def __init__(self, world_size: int = DEFAULT_WORLD_SIZE, max_speed: int = MAX_SPEED) -> None:
        if not isinstance(world_size, int) or not 1 <= world_size <= MAX_WORLD_SIZE:
            raise ValueError(f"world_size must be an int in [1, 2**30], got {world_size!r}")
        if not isinstance(max_speed, int) or not 0 <= max_speed <= 0x7FFF:
            raise ValueError(f"max_speed must be an int in [0, 32767], got {max_speed!r}")
        self.world_size = world_size
        self.max_speed = max_speed
        self.tick = 0
        self.states = np.zeros(0, STATE_DTYPE)   # one row per slot: what STATE carries
        self.ids = np.zeros(0, np.uint32)        # player id per slot (0: free)
        self._free: List[int] = []
        self._order = np.arange(0)               # 0, 1, 2, ...: input positions, grown as needed
        self._grow(INITIAL_SLOTS)

    def _grow(self, slots: int) -> None:
        old = len(self.states)
        self.states = np.concatenate([self.states, np.zeros(slots - old, STATE_DTYPE)])
        self.ids = np.concatenate([self.ids, np.zeros(slots - old, np.uint32)])
        self._free.extend(range(slots - 1, old - 1, -1))  # lowest slot first

    @property
    def capacity(self) -> int:
        """Slots allocated (occupied or free)."""
        return len(self.ids)

    @property
    def alive(self) -> np.ndarray:
        """Bool mask of the occupied slots."""
        return self.ids != 0

    def join(self, player_id: int) -> int:
        """Add player `player_id` (>= 1) at its spawn position, at rest; its slot."""
        if not 1 <= player_id <= MAX_PLAYER_ID:
            raise ValueError(f"player_id must be in [1, 2**32 - 1], got {player_id}")
        if not self._free:
            self._grow(2 * self.capacity)
        slot = self._free.pop()
        x, y = spawn_position(player_id, self.world_size)
        self.states[slot] = (self.tick, 0, x, y, 0, 0)
        self.ids[slot] = player_id
        return slot

    def leave(self, slot: int) -> None:
        """Free the slot of a player who left."""
        if self.ids[slot]:
            self.ids[slot] = 0
            self.states[slot] = 0
            self._free.append(slot)

    def step(self, slots: np.ndarray, inputs: np.ndarray) -> None:
        """One tick: `inputs` (INPUT_DTYPE records, in arrival order) of the
        players in `slots` (one slot per input), then every player moves.
        (Free slots stay at rest at 0, 0; only their tick changes.)"""
        s = self.states
        n = len(inputs)
        if n:
            if len(self._order) < n:
                self._order = np.arange(max(n, 2 * len(self._order)))
            last = np.full(self.capacity, -1, np.int64)
            np.maximum.at(last, slots, self._order[:n])  # each player's last input this tick
            got = np.flatnonzero((last >= 0) & (self.ids != 0))
            pick = np.take(last, got)  # (np.take: numpy's faster gather for a 1-d index)
            for speed in ("vx", "vy"):  # (np.minimum/maximum: ufuncs, without np.clip's Python layer)
                s[speed][got] = np.minimum(np.maximum(np.take(inputs[speed], pick), -self.max_speed),
                                           self.max_speed)
            s["ack"][got] = np.take(inputs["seq"], pick)
        top = self.world_size - 1
        for axis, speed in (("x", "vx"), ("y", "vy")):
            column = s[axis]
            np.add(column, s[speed], out=column)  # i32 + i16 in place: world_size <= 2**30 cannot overflow
            np.maximum(column, 0, out=column)
            np.minimum(column, top, out=column)
        self.tick += 1
        s["tick"] = self.tick

    def neighbours(self, radius: int) -> Tuple[np.ndarray, np.ndarray]:
        """CSR lists (slot index, starts per slot) of the occupied slots
        within `radius` of each occupied slot (free slots get none)."""
        live = np.flatnonzero(self.alive)
        index, starts = neighbours(self.states["x"][live], self.states["y"][live], radius)
        counts = np.zeros(self.capacity, np.int64)
        counts[live] = np.diff(starts)
        all_starts = np.zeros(self.capacity + 1, np.int64)
        np.cumsum(counts, out=all_starts[1:])
        return live[index], all_starts


class Tick:
    """The tick app: per-connection inputs in, one world step per tick,
    STATE packets out (module docstring). An app in the runtime's sense:
    ``handlers``, ``on_connect``, ``on_close``; the tick timer runs while
    players are connected.

    Args:
        hz: ticks per second.
        radius: 0 (each player gets its own STATE) or the distance, in world
            units, within which a player gets the other players' STATEs.
        world_size: side of the square world.
        registry: a fastpacket.Registry to record the tick's metrics into
            (``tick_duration_ns``: wall time of a whole tick; ``tick_step_ns``:
            its inputs and world step; ``tick_cpu_ns``: this thread's CPU
            time per tick); otherwise private Metrics (``tick_ns``,
            ``step_ns``, ``cpu_ns``).
    """

    def __init__(self, hz: float = DEFAULT_HZ, radius: int = 0, world_size: int = DEFAULT_WORLD_SIZE,
                 registry: Any = None) -> None:
        if not isinstance(hz, (int, float)) or not 0 < hz <= MAX_HZ:
            raise ValueError(f"hz must be in (0, {MAX_HZ:g}], got {hz!r}")
        if not isinstance(radius, int) or radius < 0:
            raise ValueError(f"radius must be an int >= 0 (0: own state only), got {radius!r}")
        self.hz = float(hz)
        self.period = 1.0 / self.hz
        self.radius = radius
        self.world = World(world_size)
        self.sessions: List[Optional[aio.Session]] = [None] * self.world.capacity
        self.handlers = {INPUT: self.on_input}
        self.tick_ns = registry.metric("tick_duration_ns") if registry is not None else Metric("tick_duration_ns")
        # the part of a tick before any packet is queued: inputs and step (and neighbour lists)
        self.step_ns = registry.metric("tick_step_ns") if registry is not None else Metric("tick_step_ns")
        # CPU time of this thread per tick: what the tick costs, whatever else the machine runs
        self.cpu_ns = registry.metric("tick_cpu_ns") if registry is not None else Metric("tick_cpu_ns")
        self.ticks = 0                 # ticks run
        self.late_ticks = 0            # ticks skipped because a tick ran past the next one's time
        self.inputs_in = 0             # INPUT records applied
        self.states_out = 0            # STATE packets queued
        self._next_id = 1
        # this tick's inputs in arrival order and the slot of each, gathered
        # burst by burst (payload_array(out=)); held = how many
        self._inputs = np.zeros(INITIAL_SLOTS, INPUT_DTYPE)
        self._input_slots = np.zeros(INITIAL_SLOTS, np.int64)
        self._held = 0
        self._leaving: List[int] = []
        self._pending = np.zeros(self.world.capacity, np.int64)  # inputs held per slot this tick
        self._timer: Optional[asyncio.TimerHandle] = None
        self._next_at = 0.0

    # -- connections --------------------------------------------------------------

    def on_connect(self, session: aio.Session) -> None:
        """A player joins: a slot, its WELCOME, and the timer if it was idle."""
        player_id = self._next_id
        self._next_id = self._next_id % MAX_PLAYER_ID + 1
        slot = self.world.join(player_id)
        if self.world.capacity > len(self.sessions):
            self.sessions.extend([None] * (self.world.capacity - len(self.sessions)))
            self._pending = np.concatenate([self._pending, np.zeros(self.world.capacity - len(self._pending),
                                                                    np.int64)])
        self.sessions[slot] = session
        session.slot = slot  # type: ignore[attr-defined]
        hz = min(round(self.hz), _WELCOME_HZ_MAX)
        session.send(WELCOME, WELCOME_FORMAT.pack(player_id, self.world.world_size, hz), player_id=player_id)
        if self._timer is None:
            self.start()

    def on_close(self, session: aio.Session) -> None:
        """A player leaves: its slot is freed at the end of the next tick
        (inputs it sent this tick still count; no new player takes the slot
        meanwhile). The timer stops once no player is left."""
        slot = session.__dict__.pop("slot", None)
        if slot is None:
            return
        self.sessions[slot] = None
        self._leaving.append(slot)

    def on_input(self, session: aio.Session, batch: PacketBatch) -> None:
        """The INPUTs of one read burst: kept, as one array, for the next tick."""
        slot = session.__dict__.get("slot")
        if slot is None:
            return
        n = len(batch)
        held = self._pending[slot] + n
        if held > MAX_INPUTS_PER_TICK:
            session.close(f"input flood: {held} INPUTs in one tick, at most {MAX_INPUTS_PER_TICK}")
            return
        start, end = self._held, self._held + n
        if end > len(self._inputs):  # bounded: MAX_INPUTS_PER_TICK per player
            grown = max(end, 2 * len(self._inputs))
            self._inputs = np.concatenate([self._inputs, np.zeros(grown - len(self._inputs), INPUT_DTYPE)])
            self._input_slots = np.concatenate([self._input_slots, np.zeros(grown - len(self._input_slots),
                                                                            np.int64)])
        try:
            batch.payload_array(INPUT_DTYPE, out=self._inputs[start:end])
        except ValueError as exc:
            session.close(f"bad INPUT: {exc}")
            return
        self._input_slots[start:end] = slot
        self._pending[slot] = held
        self._held = end

    # -- the tick -------------------------------------------------------------------

    def run_tick(self) -> None:
        """One tick now: apply the inputs, step, send the states."""
        t0 = time.monotonic_ns()
        held, self._held = self._held, 0
        self._pending[:] = 0
        world = self.world
        world.step(self._input_slots[:held], self._inputs[:held])
        self.inputs_in += held
        if self.radius:
            index, starts = world.neighbours(self.radius)
            self.step_ns.record(time.monotonic_ns() - t0)
            aio.scatter(self.sessions, STATE, world.states, player_ids=world.ids, index=index, starts=starts,
                        flush=True)
            self.states_out += len(index)
        else:
            self.step_ns.record(time.monotonic_ns() - t0)
            self.states_out += aio.scatter(self.sessions, STATE, world.states, player_ids=world.ids, flush=True)
        for slot in self._leaving:
            world.leave(slot)
        self._leaving = []
        self.ticks += 1

    def start(self) -> None:
        """Start ticking on the running event loop (on_connect does it)."""
        loop = asyncio.get_running_loop()
        self._next_at = loop.time() + self.period
        self._timer = loop.call_at(self._next_at, self._on_timer)

    def stop(self) -> None:
        """Stop ticking (on_close does it when the last player leaves)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _on_timer(self) -> None:
        t0 = time.monotonic_ns()
        c0 = time.thread_time_ns()
        try:
            self.run_tick()
        except Exception:
            log.exception("tick %d failed", self.world.tick)
        self.cpu_ns.record(time.thread_time_ns() - c0)
        self.tick_ns.record(time.monotonic_ns() - t0)
        if not self.world.alive.any():
            self._timer = None  # the last player left: idle until the next one connects
            return
        loop = asyncio.get_running_loop()
        self._next_at += self.period
        now = loop.time()
        if self._next_at <= now:  # the tick ran past the next one's time: skip, never bunch up
            missed = int((now - self._next_at) // self.period) + 1
            self.late_ticks += missed
            self._next_at += missed * self.period
        self._timer = loop.call_at(self._next_at, self._on_timer)

    async def shutdown(self, server: Any) -> None:
        """Runtime hook: stop ticking."""
        self.stop()
