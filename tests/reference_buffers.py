"""Pure-Python reference models for the buffers area (RingBuffer,
SendBuffer): what the native code must agree with on random input."""

from __future__ import annotations

import struct
from typing import List, Optional

GAME_HEADER = struct.Struct("<HHII")
SEQ_MODULUS = 1 << 32


def encode_game(ptype: int, payload: bytes, seq: int = 0, player_id: int = 0) -> bytes:
    """One GAME packet: <HHII size, type, seq, player_id, then the payload."""
    return GAME_HEADER.pack(GAME_HEADER.size + len(payload), ptype, seq, player_id) + bytes(payload)


class RingModel:
    """A bounded FIFO of bytes: what RingBuffer holds, minus the wrap."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.data = bytearray()

    @property
    def free(self) -> int:
        return self.capacity - len(self.data)

    def write(self, b: bytes) -> int:
        n = min(len(b), self.free)
        self.data += b[:n]
        return n

    def read(self, n: int = -1) -> bytes:
        n = len(self.data) if n < 0 else min(n, len(self.data))
        out = bytes(self.data[:n])
        del self.data[:n]
        return out

    def peek(self, n: int = -1) -> bytes:
        n = len(self.data) if n < 0 else min(n, len(self.data))
        return bytes(self.data[:n])


class SendModel:
    """What SendBuffer queues: GAME packets with consecutive u32 seqs."""

    def __init__(self, max_bytes: int = 65536) -> None:
        self.max_bytes = max_bytes
        self.next_seq = 0
        self.queued: List[bytes] = []

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.queued)

    def send(self, ptype: int, payload: bytes, player_id: int = 0, seq: Optional[int] = None) -> Optional[int]:
        """The seq used, or None when the packet does not fit now."""
        packet_len = GAME_HEADER.size + len(payload)
        if self.nbytes + packet_len > self.max_bytes:
            return None
        used = self.next_seq if seq is None else seq
        if seq is None:
            self.next_seq = (self.next_seq + 1) % SEQ_MODULUS
        self.queued.append(encode_game(ptype, payload, used, player_id))
        return used

    def flush(self) -> bytes:
        out = b"".join(self.queued)
        self.queued = []
        return out
