"""atheris target: RingBuffer operation sequences against a model of the
ring written from its documentation (fastpacket/ring.py):

- the ring is `capacity` bytes of memory at stream positions modulo the
  capacity; write()/commit() append at the head, read()/consume() drop at
  the tail; read()/peek()/readable() show the bytes at the tail;
- a readable() view pins its bytes: consuming them is allowed, but the
  producer does not overwrite them while the view is alive; a writable()
  view pins its start: the producer does not write a lap past it. So the
  free space is capacity - (head - oldest of: tail, pinned starts);
- views are contiguous across the wrap point only when double-mapped, else
  they stop at it; at most 64 views per side are alive (BufferError beyond);
- commit(n) and consume(n) outside 0..free / 0..len raise ValueError.

Besides the model's memory, each held readable() view keeps its own copy of
what it showed when made (updated only by the fuzzer's own writes into
writable views over the same memory): a producer that overwrote pinned
bytes would change the view but not the copy.

Input: a config byte (bits 0-1: capacity 1 / 8192 / 16384 / 65536 bytes
asked; bit 2: double_map=False), then operations: an op byte and its
arguments (see OPS below) until the input ends.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import Reader, expect, fp, run  # noqa: E402

CAPACITIES = (1, 8192, 16384, 65536)
#: Views of one side that may be alive at once (fastpacket.ring.MAX_LIVE_VIEWS).
MAX_PINS = 64
#: Copies of at least this many bytes release the GIL (fastpacket.ring).
NOGIL_BYTES = 4096
#: Most operations one input runs.
MAX_OPS = 400
(OP_WRITE, OP_WRITE_BIG, OP_READ, OP_PEEK, OP_WRITABLE, OP_FILL, OP_COMMIT, OP_READABLE, OP_CONSUME,
 OP_RELEASE, OP_RELEASE_ALL, OP_CHECK) = range(12)
OPS = 12
PATTERN = bytes(range(251))


class View:
    def __init__(self, mv: memoryview, start: int, writable: bool, snapshot: Optional[bytearray] = None,
                 known: Optional[bytearray] = None) -> None:
        self.mv = mv
        self.start = start  # stream index of its first byte (its pin)
        self.writable = writable
        self.snapshot = snapshot
        self.known = known


class RingSpec:
    """The documented ring, at the level of stream indices and memory."""

    def __init__(self, cap: int, double: bool) -> None:
        self.cap = cap
        self.double = double
        self.mem = bytearray(cap)
        self.known = bytearray(cap)  # 1 where the model knows the byte (written by us)
        self.head = 0
        self.tail = 0
        self.read_pins: List[int] = []
        self.write_pins: List[int] = []

    @property
    def size(self) -> int:
        return self.head - self.tail

    @property
    def free(self) -> int:
        oldest = min([self.tail] + self.read_pins + self.write_pins)
        return oldest + self.cap - self.head

    def span(self, start: int, n: int) -> int:
        """How much of n bytes from `start` one view covers."""
        return n if self.double else min(n, self.cap - start % self.cap)

    def _pieces(self, index: int, n: int) -> "list[tuple[int, int, int]]":
        """(memory position, offset in the data, length) of n bytes from
        stream index `index` (n <= capacity: at most two pieces)."""
        pos = index % self.cap
        first = min(n, self.cap - pos)
        return [(pos, 0, first)] + ([(0, first, n - first)] if n > first else [])

    def store(self, index: int, data: bytes) -> None:
        for pos, off, k in self._pieces(index, len(data)):
            self.mem[pos:pos + k] = data[off:off + k]
            self.known[pos:pos + k] = b"\1" * k

    def load(self, index: int, n: int) -> "tuple[bytes, bytes]":
        pieces = self._pieces(index, n)
        return (b"".join(self.mem[p:p + k] for p, _, k in pieces),
                b"".join(self.known[p:p + k] for p, _, k in pieces))


def same(got: bytes, want: bytes, known: bytes) -> bool:
    """Equal wherever the model knows the byte (memory nobody wrote holds
    whatever the allocator left there)."""
    if len(got) != len(want):
        return False
    if known.count(0) == 0:
        return got == want
    g, w, k = (np.frombuffer(b, dtype=np.uint8) for b in (got, want, known))
    # np.equal, not ==: atheris' comparison hook leaks the array an
    # instrumented `==` of two arrays returns (about 50 KB per input here)
    return bool(np.all(np.logical_or(np.equal(g, w), np.equal(k, 0))))


def check_views(views: List[View], spec: RingSpec) -> None:
    for v in views:
        if v.writable:
            continue
        got = bytes(v.mv)
        assert v.snapshot is not None and v.known is not None
        expect(same(got, bytes(v.snapshot), bytes(v.known)), "a pinned readable() view changed under it",
               v.start, got, bytes(v.snapshot))


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    cfg = inp.u8()
    asked = CAPACITIES[cfg & 3]
    ring = fp.RingBuffer(asked, double_map=False if cfg >> 2 & 1 else None)
    cap = ring.capacity
    expect(cap >= asked and cap & (cap - 1) == 0, "capacity not a power of two at least as asked", asked, cap)
    spec = RingSpec(cap, ring.double_mapped)
    views: List[View] = []
    try:
        for _ in range(MAX_OPS):
            if not inp.remaining:
                break
            step(inp, ring, spec, views)
            expect(len(ring) == spec.size and ring.free == spec.free, "len/free disagree",
                   (len(ring), ring.free), (spec.size, spec.free))
        check_views(views, spec)
    finally:
        for v in views:
            v.mv.release()
    expect(ring.free == cap - len(ring), "views released but free space not back", ring.free, cap, len(ring))


def step(inp: Reader, ring: Any, spec: RingSpec, views: List[View]) -> None:
    op = inp.u8() % OPS
    if op in (OP_WRITE, OP_WRITE_BIG):
        if op == OP_WRITE:
            payload = inp.take(inp.u8())
        else:  # large enough to copy without the GIL; a pattern, not input bytes
            first, n = inp.u8(), NOGIL_BYTES + inp.u16() % NOGIL_BYTES
            payload = (PATTERN * (n // len(PATTERN) + 2))[first:first + n]
        buf = memoryview(payload) if len(payload) % 2 else payload
        want = min(len(payload), spec.free)
        n = ring.write(buf)
        expect(n == want, "write() took another amount", n, want)
        spec.store(spec.head, payload[:n])
        spec.head += n
    elif op in (OP_READ, OP_PEEK):
        n = inp.u16()
        n = -1 if n == 0xFFFF else n
        take = spec.size if n < 0 else min(n, spec.size)
        want, known = spec.load(spec.tail, take)
        got = ring.read(n) if op == OP_READ else ring.peek(n)
        expect(same(got, want, known), "read()/peek() bytes differ", n, got, want)
        if op == OP_READ:
            spec.tail += take
    elif op in (OP_WRITABLE, OP_READABLE):
        writable = op == OP_WRITABLE
        pins = spec.write_pins if writable else spec.read_pins
        start = spec.head if writable else spec.tail
        length = spec.span(start, spec.free if writable else spec.size)
        try:
            mv = ring.writable() if writable else ring.readable()
        except BufferError:
            expect(len(pins) == MAX_PINS, "BufferError below the view limit", len(pins))
            return
        expect(len(pins) < MAX_PINS, "more views than the limit allowed", len(pins))
        expect(len(mv) == length and mv.readonly != writable, "view length or mode", len(mv), length)
        pins.append(start)
        if writable:
            views.append(View(mv, start, True))
        else:
            want, known = spec.load(start, length)
            expect(same(bytes(mv), want, known), "readable() shows other bytes", bytes(mv), want)
            views.append(View(mv, start, False, bytearray(want), bytearray(known)))
    elif op == OP_FILL:
        writable_views = [v for v in views if v.writable]
        pick, offset, k = inp.u8(), inp.u16(), inp.u8()
        payload = inp.take(k)
        if not writable_views:
            return
        v = writable_views[pick % len(writable_views)]
        offset %= len(v.mv) + 1
        payload = payload[:len(v.mv) - offset]
        v.mv[offset:offset + len(payload)] = payload
        index = v.start + offset
        spec.store(index, payload)
        for r in views:  # the same memory seen through a readable view
            if not r.writable and r.snapshot is not None and r.known is not None:
                j0 = (index - r.start) % spec.cap
                for j, off, k in ((j0, 0, min(len(payload), spec.cap - j0)),
                                  (0, spec.cap - j0, len(payload) - (spec.cap - j0))):
                    end = min(j + max(k, 0), len(r.snapshot))
                    if end > j:
                        r.snapshot[j:end] = payload[off:off + end - j]
                        r.known[j:end] = b"\1" * (end - j)
    elif op in (OP_COMMIT, OP_CONSUME):
        n = inp.u16()
        n = -(n & 0xFF) - 1 if n >= 0xFF00 else n
        limit = spec.free if op == OP_COMMIT else spec.size
        try:
            ring.commit(n) if op == OP_COMMIT else ring.consume(n)
        except ValueError:
            expect(not 0 <= n <= limit, "a valid commit/consume refused", op, n, limit)
            return
        expect(0 <= n <= limit, "an out-of-range commit/consume accepted", op, n, limit)
        if op == OP_COMMIT:
            spec.head += n
        else:
            spec.tail += n
    elif op == OP_RELEASE:
        pick = inp.u8()
        if views:
            release(views.pop(pick % len(views)), spec)
    elif op == OP_RELEASE_ALL:
        while views:
            release(views.pop(), spec)
    else:
        check_views(views, spec)
        expect(ring.capacity == spec.cap, "capacity changed")


def release(v: View, spec: RingSpec) -> None:
    v.mv.release()
    (spec.write_pins if v.writable else spec.read_pins).remove(v.start)


if __name__ == "__main__":
    run(test_one_input)
