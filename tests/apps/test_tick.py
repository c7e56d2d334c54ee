"""The tick app: the world step and the neighbour lists against the plain
Python model (tests/apps/tick_model.py) on random input, and end to end over
real sockets on both event loops: every STATE a player receives equals the
model replayed from its own inputs."""

from __future__ import annotations

import asyncio
import random

import numpy as np
import pytest
from hypothesis import given, strategies as st

from fastpacket import aio
from fastpacket.apps.tick import (INPUT, INPUT_DTYPE, MAX_INPUTS_PER_TICK, MAX_SPEED, STATE, STATE_DTYPE, WELCOME,
                                  WELCOME_FORMAT, Tick, World, neighbours, spawn_position)
from tests.apps.tick_model import TickModel, replay

LOOPS = ["asyncio", "uvloop"]
SMALL_WORLD = 5000  # walls within reach of a few ticks: clipping is exercised


@pytest.fixture(params=LOOPS)
def run(request):
    if request.param == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()

    def runner(coro, timeout=60.0):
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))

    yield runner
    loop.run_until_complete(asyncio.sleep(0))
    loop.close()


# -- the world against the model, in process ------------------------------------

speeds = st.integers(-3 * MAX_SPEED, 3 * MAX_SPEED)
events = st.lists(st.one_of(
    st.tuples(st.just("join")),
    st.tuples(st.just("leave"), st.integers(0, 50)),
    st.tuples(st.just("tick"), st.lists(st.tuples(st.integers(0, 50), speeds, speeds), max_size=40)),
), max_size=40)


@given(events)
def test_world_steps_like_the_model(script):
    world = World(SMALL_WORLD)
    model = TickModel(SMALL_WORLD, MAX_SPEED)
    slots = {}  # player id -> slot
    next_id, seq = 1, 0
    for event in script:
        if event[0] == "join":
            slots[next_id] = world.join(next_id)
            model.join(next_id)
            next_id += 1
        elif event[0] == "leave" and slots:
            pid = sorted(slots)[event[1] % len(slots)]
            world.leave(slots.pop(pid))
            model.leave(pid)
        elif event[0] == "tick":
            ids = sorted(slots)
            arrivals = []
            for k, vx, vy in event[1]:
                if ids:
                    seq += 1
                    arrivals.append((ids[k % len(ids)], seq, vx, vy))
            inputs = np.array([(s, vx, vy) for _, s, vx, vy in arrivals], dtype=[("seq", "<u4"), ("vx", "<i4"),
                                                                                   ("vy", "<i4")])
            # out-of-range speeds clipped from i16 records: keep them in i16 range first
            records = np.zeros(len(arrivals), INPUT_DTYPE)
            records["seq"] = inputs["seq"]
            records["vx"] = np.clip(inputs["vx"], -0x8000, 0x7FFF)
            records["vy"] = np.clip(inputs["vy"], -0x8000, 0x7FFF)
            world.step(np.array([slots[pid] for pid, *_ in arrivals], np.int64), records)
            model.step([(pid, s, int(r["vx"]), int(r["vy"])) for (pid, s, _, _), r in zip(arrivals, records)])
        assert world.tick == model.tick
        for pid, slot in slots.items():
            assert tuple(int(v) for v in world.states[slot]) == model.state(pid)
            assert world.ids[slot] == pid
        assert int(world.alive.sum()) == len(slots)


@given(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 3000)), max_size=80), st.integers(1, 2000))
def test_neighbours_are_every_pair_within_the_radius(points, radius):
    x = np.array([p[0] for p in points], np.int32)
    y = np.array([p[1] for p in points], np.int32)
    index, starts = neighbours(x, y, radius)
    assert len(starts) == len(points) + 1 and starts[0] == 0 and starts[-1] == len(index)
    for k, (px, py) in enumerate(points):
        want = [j for j, (qx, qy) in enumerate(points) if (qx - px) ** 2 + (qy - py) ** 2 <= radius * radius]
        assert index[starts[k]:starts[k + 1]].tolist() == want


def test_world_neighbours_skip_free_slots():
    world = World(1000)
    a, b, c = (world.join(pid) for pid in (1, 2, 3))
    world.leave(b)
    index, starts = world.neighbours(10 ** 6)
    assert len(starts) == world.capacity + 1
    assert index[starts[a]:starts[a + 1]].tolist() == [a, c]
    assert starts[b] == starts[b + 1]


def test_world_and_app_arguments():
    with pytest.raises(ValueError, match="world_size"):
        World(0)
    with pytest.raises(ValueError, match="hz"):
        Tick(hz=0)
    with pytest.raises(ValueError, match="radius"):
        Tick(radius=-1)
    world = World(100)
    for pid in range(1, 200):  # past the first allocation: the columns grow
        world.join(pid)
    assert world.capacity >= 199 and int(world.alive.sum()) == 199
    assert tuple(world.states[world.join(500)][["x", "y"]].item()) == spawn_position(500, 100)


# -- end to end: real sockets, both loops -----------------------------------------


class Player:
    """A test client: its WELCOME, the inputs it sent, the STATEs it got."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.player_id = 0
        self.welcome = asyncio.get_running_loop().create_future()
        self.inputs = {}  # seq -> (vx, vy)
        self.states = []  # (tick, ack, x, y, vx, vy) of its own STATEs
        self.others = {}  # tick -> [(player_id, state)] of every STATE received
        self.session = None

    def on_batch(self, session, batch):
        for ptype, group in batch.by_type().items():
            if ptype == WELCOME:
                pid, size, hz = WELCOME_FORMAT.unpack_from(group.payload(0))
                self.player_id = pid
                if not self.welcome.done():
                    self.welcome.set_result((pid, size, hz))
            elif ptype == STATE:
                rows = group.payload_array(STATE_DTYPE)
                for pid, row in zip(group.player_ids.tolist(), rows.tolist()):
                    self.others.setdefault(row[0], []).append((pid, row))
                    if pid == self.player_id:
                        self.states.append(tuple(row))

    def send_inputs(self, k: int) -> None:
        records = np.zeros(k, INPUT_DTYPE)
        for i in range(k):
            seq = len(self.inputs) + 1
            vx, vy = (self.rng.randint(-2 * MAX_SPEED, 2 * MAX_SPEED) for _ in range(2))
            self.inputs[seq] = (vx, vy)
            records[i] = (seq, vx, vy)
        self.session.send_array(INPUT, records, player_ids=self.player_id)


async def _play(app: Tick, nplayers: int, ticks: int, seed: int):
    server = await aio.serve(handlers=app.handlers, on_connect=app.on_connect, on_close=app.on_close,
                             host="127.0.0.1", port=0)
    rng = random.Random(seed)
    players = [Player(random.Random(rng.random())) for _ in range(nplayers)]
    for p in players:
        p.session = await aio.connect("127.0.0.1", server.port, handler=p.on_batch)
        await asyncio.wait_for(p.welcome, 5)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while min(len(p.states) for p in players) < ticks and loop.time() < deadline:
        for p in players:
            if rng.random() < 0.6:
                p.send_inputs(rng.randint(1, 3))  # sometimes several in one tick: the last one wins
        await asyncio.sleep(rng.uniform(0, 1.5 * app.period))
    for p in players:
        p.session.close()
    server.close()
    await server.wait_closed()
    return players


def test_tick_end_to_end_matches_the_model(run):
    app = Tick(hz=100, world_size=SMALL_WORLD)
    players = run(_play(app, nplayers=3, ticks=40, seed=1))
    assert app.ticks >= 40 and app.inputs_in > 0
    for p in players:
        assert len(p.states) >= 40
        ticks = [s[0] for s in p.states]
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks)))  # one STATE per tick, none lost
        assert len({s[1] for s in p.states}) > 5  # many different inputs were applied
        want = replay(p.states, p.inputs, spawn_position(p.player_id, SMALL_WORLD), SMALL_WORLD, MAX_SPEED)
        assert p.states == want


def test_tick_radius_sends_the_states_of_the_players_near(run):
    radius = 1500
    app = Tick(hz=100, radius=radius, world_size=SMALL_WORLD)
    players = run(_play(app, nplayers=4, ticks=30, seed=2))
    positions = {}  # tick -> {player_id: (x, y)} from each player's own, model-checked states
    for p in players:
        want = replay(p.states, p.inputs, spawn_position(p.player_id, SMALL_WORLD), SMALL_WORLD, MAX_SPEED)
        assert p.states == want
        for s in p.states:
            positions.setdefault(s[0], {})[p.player_id] = (s[2], s[3])
    checked = 0
    for p in players:
        for tick, received in p.others.items():
            everyone = positions.get(tick, {})
            if len(everyone) < len(players):
                continue  # a tick before every player had joined or after one left
            me = everyone[p.player_id]
            near = sorted(pid for pid, (x, y) in everyone.items()
                          if (x - me[0]) ** 2 + (y - me[1]) ** 2 <= radius * radius)
            assert sorted(pid for pid, _ in received) == near
            for pid, row in received:
                assert (row[2], row[3]) == everyone[pid]
            checked += 1
    assert checked >= 20


def test_tick_closes_bad_and_flooding_inputs(run):
    async def main():
        app = Tick(hz=20)
        texts = []

        def on_close(session):
            texts.append(session.close_reason)  # server.closes counts classes; the text is the session's
            app.on_close(session)

        server = await aio.serve(handlers=app.handlers, on_connect=app.on_connect, on_close=on_close,
                                 host="127.0.0.1", port=0)
        short = await aio.connect("127.0.0.1", server.port)
        short.send(INPUT, b"\x01\x02")  # 2 bytes: not an INPUT record
        assert await asyncio.wait_for(short.wait_closed(), 5) == "peer closed"
        flood = await aio.connect("127.0.0.1", server.port)
        flood.send_array(INPUT, np.zeros(MAX_INPUTS_PER_TICK + 1, INPUT_DTYPE))
        assert await asyncio.wait_for(flood.wait_closed(), 5) == "peer closed"
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while len(server.closes) < 2 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert server.closes == {"bad_input": 1, "input_flood": 1}
        reasons = sorted(texts)
        assert reasons[0].startswith("bad INPUT: packet 0's payload is 2 bytes")
        assert reasons[1].startswith("input flood: 65 INPUTs")
        assert app._timer is None or app.world.alive.any()
        server.close()
        await server.wait_closed()

    run(main())


def test_tick_timer_idles_without_players(run):
    async def main():
        app = Tick(hz=200)
        server = await aio.serve(handlers=app.handlers, on_connect=app.on_connect, on_close=app.on_close,
                                 host="127.0.0.1", port=0)
        c = await aio.connect("127.0.0.1", server.port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while app.ticks < 5 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert app.ticks >= 5 and app.tick_ns.count >= 5
        c.close()
        deadline = loop.time() + 5
        while app._timer is not None and loop.time() < deadline:
            await asyncio.sleep(0.01)
        assert app._timer is None and not app.world.alive.any()  # the slot freed at the tick after the close
        ticks = app.ticks
        await asyncio.sleep(0.05)
        assert app.ticks == ticks
        server.close()
        await server.wait_closed()

    run(main())
