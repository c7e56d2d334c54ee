"""Tick: one authoritative game tick (10,000 INPUTs from 1,000 players ->
one STATE per player) beside the plain-Python way of the same tick (the
implementations of ``fastpacket bench tick``)."""

from fastpacket.cli.bench.tick import FastpacketTick, PythonTick, make_inputs


class Tick:
    """Decode, apply each player's last input, move, queue the STATEs; the
    send buffers emptied after each tick (both implementations alike)."""

    params = ["python", "fastpacket"]
    param_names = ["impl"]

    def setup(self, impl):
        self.stream, ids = make_inputs()
        self.impl = {"python": PythonTick, "fastpacket": FastpacketTick}[impl](ids)

    def time_tick(self, impl):
        self.impl.run(self.stream)
        self.impl.drain()
