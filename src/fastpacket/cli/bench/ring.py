"""RingBuffer beside the plain-Python receive buffer and a raw memory copy:
64 KiB written, then consumed through a zero-copy view, repeated.

(a) plain Python: a bytearray FIFO (``buf += data``; a memoryview of the
    front; ``del buf[:n]``);
(b) RingBuffer: ``ring.write(data)``, ``ring.readable()``, ``ring.consume(n)``;
(c) reference: one numpy copy of the same 64 KiB (np.copyto), the floor any
    copying receive path pays. Target: (b) at >= 50% of (c)'s speed.
"""

from __future__ import annotations

from typing import List

import numpy as np

from fastpacket import RingBuffer
from fastpacket.cli.bench._harness import Row, interleaved_medians

CHUNK = 64 << 10
LOOPS, QUICK_LOOPS = 2000, 200


def python_fifo(loops: int, data: bytes) -> int:
    buf = bytearray()
    total = 0
    for _ in range(loops):
        buf += data
        with memoryview(buf) as mv:
            n = len(mv)
        del buf[:n]
        total += n
    return total


def ring_write_consume(loops: int, data: bytes, ring: RingBuffer) -> int:
    write, readable, consume = ring.write, ring.readable, ring.consume
    total = 0
    for _ in range(loops):
        write(data)
        with readable() as mv:
            n = len(mv)
        consume(n)
        total += n
    return total


def numpy_copy(loops: int, src: np.ndarray, dst: np.ndarray) -> int:
    copyto = np.copyto
    for _ in range(loops):
        copyto(dst, src)
    return loops * len(src)


def run(quick: bool = False) -> List[Row]:
    loops = QUICK_LOOPS if quick else LOOPS
    data = np.random.default_rng(1).integers(0, 256, CHUNK, dtype=np.uint8).tobytes()
    ring = RingBuffer(CHUNK)
    src = np.frombuffer(data, dtype=np.uint8)
    dst = np.empty_like(src)
    # same answer: the ring hands back exactly what went in
    ring.write(data)
    with ring.readable() as mv:
        if bytes(mv) != data:
            raise RuntimeError("RingBuffer returned different bytes")
    ring.consume(len(data))
    impls = {
        "plain-python bytearray FIFO": lambda: python_fifo(loops, data),
        "fastpacket RingBuffer": lambda: ring_write_consume(loops, data, ring),
        "numpy copy (reference)": lambda: numpy_copy(loops, src, dst),
    }
    med = interleaved_medians(impls, repeat=3 if quick else 7)
    nbytes = loops * CHUNK
    rows = []
    case = "64 KiB write + consume via readable()"
    for name, t in med.items():
        base = "plain-python bytearray FIFO"
        rows.append(Row(section="ring", case=case, impl=name, rate=nbytes / t / 1e6, unit="MB/s",
                        ratio=None if name == base else med[base] / t,
                        extra=f"{med['numpy copy (reference)'] / t:.2f}x numpy copy",
                        target=">= 0.5x numpy copy" if name == "fastpacket RingBuffer" else ""))
    return rows
