"""Framing: a 16 MiB stream of small packets (payloads of 20-64 random
bytes) fed in random chunks of 1..4096 bytes through

(a) the plain-Python incremental decoder (bytearray + struct.unpack_from),
(b) FrameDecoder, results consumed as arrays (types, seqs, player_ids, sizes),
(c) FrameDecoder, Python iteration reading type, seq, player_id, payload.
"""

from __future__ import annotations

import random
import struct
from typing import List, Tuple

from fastpacket import FrameDecoder, PacketBatch
from fastpacket.cli.bench._harness import Row, interleaved_medians

STREAM_BYTES = 16 << 20
QUICK_STREAM_BYTES = 1 << 20
MAX_CHUNK = 4096
PAYLOAD_MIN, PAYLOAD_MAX = 20, 64
HEADER = struct.Struct("<HHII")


def make_stream(nbytes: int, seed: int = 1) -> Tuple[bytes, int]:
    """Encoded GAME packets totalling about `nbytes`; returns (stream, count)."""
    rng = random.Random(seed)
    payloads = []
    total = 0
    while total < nbytes:
        p = rng.randbytes(rng.randint(PAYLOAD_MIN, PAYLOAD_MAX))
        payloads.append(p)
        total += HEADER.size + len(p)
    n = len(payloads)
    types = [rng.randrange(32) for _ in range(n)]
    players = [rng.randrange(1000) for _ in range(n)]
    batch = PacketBatch.build(types, payloads, seqs=range(n), player_ids=players)
    return batch.to_bytes(), n


def make_chunks(stream: bytes, max_chunk: int = MAX_CHUNK, seed: int = 2) -> List[bytes]:
    """The stream cut in random chunks of 1..max_chunk bytes."""
    rng = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(stream):
        k = rng.randint(1, max_chunk)
        chunks.append(stream[pos:pos + k])
        pos += k
    return chunks


def plain_python_decode(chunks: List[bytes], max_packet_size: int = 65535) -> int:
    """The way servers frame today: a bytearray buffer and struct.unpack_from,
    yielding (type, seq, player_id, payload) per packet. Returns the count."""
    buf = bytearray()
    unpack_from = HEADER.unpack_from
    hs = HEADER.size
    count = 0
    for chunk in chunks:
        buf += chunk
        pos = 0
        end = len(buf)
        while end - pos >= hs:
            size, ptype, seq, player_id = unpack_from(buf, pos)
            if size < hs or size > max_packet_size:
                raise ValueError(f"bad packet size {size}")
            if end - pos < size:
                break
            payload = bytes(buf[pos + hs:pos + size])
            count += 1
            pos += size
        del buf[:pos]
    return count


def fastpacket_arrays(chunks: List[bytes]) -> int:
    """FrameDecoder, each batch consumed as numpy columns."""
    dec = FrameDecoder()
    count = 0
    for chunk in chunks:
        batch = dec.feed(chunk)
        types = batch.types
        seqs = batch.seqs
        players = batch.player_ids
        sizes = batch.sizes
        count += len(types)
    return count


def fastpacket_iterate(chunks: List[bytes]) -> int:
    """FrameDecoder, each packet read from Python."""
    dec = FrameDecoder()
    count = 0
    for chunk in chunks:
        for packet in dec.feed(chunk):
            ptype = packet.type
            seq = packet.seq
            player_id = packet.player_id
            payload = packet.payload
            count += 1
    return count


def run(quick: bool = False) -> List[Row]:
    stream, n = make_stream(QUICK_STREAM_BYTES if quick else STREAM_BYTES)
    chunks = make_chunks(stream)
    impls = {
        "plain-python": lambda: plain_python_decode(chunks),
        "fastpacket arrays": lambda: fastpacket_arrays(chunks),
        "fastpacket iterate": lambda: fastpacket_iterate(chunks),
    }
    for name, fn in impls.items():  # same answer from every implementation
        got = fn()
        if got != n:
            raise RuntimeError(f"{name} decoded {got} packets, expected {n}")
    medians = interleaved_medians(impls, repeat=3 if quick else 7)
    base = medians["plain-python"]
    targets = {"fastpacket arrays": ">= 50x", "fastpacket iterate": ">= 5x"}
    rows = []
    for name, t in medians.items():
        rows.append(Row(
            section="framing",
            case=f"decode {len(stream) >> 20 or len(stream) >> 10}{'MiB' if len(stream) >= 1 << 20 else 'KiB'}, chunks 1..{MAX_CHUNK}",
            impl=name,
            rate=n / t,
            unit="packets/s",
            ratio=None if name == "plain-python" else base / t,
            extra=f"{len(stream) / t / 1e6:.0f} MB/s",
            target=targets.get(name, ""),
        ))
    return rows
