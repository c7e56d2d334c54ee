"""A handler for embed_selftest.sh that keeps batches past its return (as
game logic that queues work for later may): fastpacket_embed must then read
into a fresh buffer, never under a batch Python holds. Each new batch's
memory must not overlap a kept batch's (content checks cannot see an
overwrite when the load repeats its bytes), and a kept batch's bytes must
be what they were; either failing raises, which closes the connection and
fails the load generator's check."""

from __future__ import annotations

from collections import deque

import numpy as np

import fastpacket as fp

#: Batches held at a time (the oldest is checked and dropped).
KEEP = 8
_kept: deque = deque()


def _span(batch: fp.PacketBatch) -> tuple:
    view = np.frombuffer(batch, np.uint8)
    return view.ctypes.data, view.ctypes.data + view.size


def on_burst(batch: fp.PacketBatch, out: fp.SendBuffer) -> None:
    """Echo, holding the last KEEP batches."""
    begin, end = _span(batch)
    for _, (b, e), _ in _kept:
        if begin < e and b < end:
            raise RuntimeError("a burst was read into memory a kept batch lies over")
    _kept.append((batch, (begin, end), bytes(batch)))
    if len(_kept) > KEEP:
        old, _, copy = _kept.popleft()
        if bytes(old) != copy:
            raise RuntimeError("a kept batch's bytes changed under it")
    out.send_batch(batch)
