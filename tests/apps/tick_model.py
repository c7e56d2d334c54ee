"""The tick app's rules (fastpacket.apps.tick) restated in plain Python,
one player at a time, written from its module docstring and independent of
its numpy code: the reference its end-to-end and differential tests compare
against."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Iterable, List, Tuple

SPAWN_X, SPAWN_Y = 7919, 104729


@dataclass
class Player:
    x: int
    y: int
    vx: int = 0
    vy: int = 0
    ack: int = 0


def clip(v: int, lo: int, hi: int) -> int:
    return lo if v < lo else hi if v > hi else v


class TickModel:
    """Players by id; step() applies one tick's inputs in arrival order."""

    def __init__(self, world_size: int, max_speed: int) -> None:
        self.world_size = world_size
        self.max_speed = max_speed
        self.tick = 0
        self.players: Dict[int, Player] = {}

    def join(self, player_id: int) -> None:
        self.players[player_id] = Player((player_id * SPAWN_X) % self.world_size,
                                         (player_id * SPAWN_Y) % self.world_size)

    def leave(self, player_id: int) -> None:
        del self.players[player_id]

    def step(self, inputs: Iterable[Tuple[int, int, int, int]]) -> None:
        """inputs: (player_id, seq, vx, vy) in arrival order."""
        last = {}
        for pid, seq, vx, vy in inputs:
            last[pid] = (seq, vx, vy)  # the last one wins
        for pid, (seq, vx, vy) in last.items():
            p = self.players.get(pid)
            if p is None:
                continue
            p.vx = clip(vx, -self.max_speed, self.max_speed)
            p.vy = clip(vy, -self.max_speed, self.max_speed)
            p.ack = seq
        top = self.world_size - 1
        for p in self.players.values():
            p.x = clip(p.x + p.vx, 0, top)
            p.y = clip(p.y + p.vy, 0, top)
        self.tick += 1

    def state(self, player_id: int) -> Tuple[int, int, int, int, int, int]:
        p = self.players[player_id]
        return (self.tick, p.ack, p.x, p.y, p.vx, p.vy)

    def near(self, player_id: int, radius: int) -> List[int]:
        """Ids of the players within `radius` of `player_id`, itself included."""
        me = self.players[player_id]
        return sorted(pid for pid, p in self.players.items()
                      if (p.x - me.x) ** 2 + (p.y - me.y) ** 2 <= radius * radius)


def replay(states: List[Tuple[int, int, int, int, int, int]], inputs: Dict[int, Tuple[int, int]],
           spawn: Tuple[int, int], world_size: int, max_speed: int) -> List[Tuple[int, int, int, int, int, int]]:
    """What one player's STATEs must be, given the acks the server reported
    (which INPUT each tick applied) and the inputs the client sent ({seq:
    (vx, vy)}): the model run tick by tick from the player's spawn point."""
    x, y = spawn
    vx = vy = ack = 0
    out = []
    top = world_size - 1
    for tick, got_ack, *_ in states:
        if got_ack != ack:  # a new INPUT was the last one of this tick
            ack = got_ack
            vx = clip(inputs[ack][0], -max_speed, max_speed)
            vy = clip(inputs[ack][1], -max_speed, max_speed)
        x = clip(x + vx, 0, top)
        y = clip(y + vy, 0, top)
        out.append((tick, ack, x, y, vx, vy))
    return out
