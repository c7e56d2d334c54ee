"""Framing: a 16 MiB stream of small packets (payloads of 20-64 random
bytes) fed in random chunks of 1..4096 bytes through

(a) the plain-Python incremental decoder (bytearray + struct.unpack_from),
(b) FrameDecoder, results consumed as arrays (types, seqs, player_ids, sizes),
(c) FrameDecoder, Python iteration reading type, seq, player_id, payload;

then the fixed cost of one call: a feed of one 42-byte packet (bytes, and a
bytearray, which is copied), beside the plain-Python decoder on the same packet.
"""

from __future__ import annotations

import random
import struct
from typing import Callable, List, Tuple, Union

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


ONE_PACKET_FEEDS, QUICK_ONE_PACKET_FEEDS = 200_000, 20_000
ONE_PACKET_PAYLOAD = 30


def _one_packet_rows(quick: bool) -> List[Row]:
    """The fixed cost of a call: one feed of one whole packet."""
    packet = PacketBatch.build(1, [bytes(ONE_PACKET_PAYLOAD)], seqs=[1], player_ids=[2]).to_bytes()
    mutable = bytearray(packet)
    n = QUICK_ONE_PACKET_FEEDS if quick else ONE_PACKET_FEEDS
    chunks = [packet]

    def plain() -> None:
        for _ in range(n):
            plain_python_decode(chunks)

    def feeds(data: Union[bytes, bytearray]) -> Callable[[], None]:
        def go() -> None:
            feed = FrameDecoder().feed
            for _ in range(n):
                feed(data)
        return go

    def loop() -> None:  # the loop alone, subtracted from every row
        for _ in range(n):
            pass

    med = interleaved_medians({"plain-python": plain, "fastpacket bytes": feeds(packet),
                               "fastpacket bytearray": feeds(mutable), "loop": loop}, repeat=3 if quick else 7)
    base = med["plain-python"] - med["loop"]
    rows = []
    for name in ("plain-python", "fastpacket bytes", "fastpacket bytearray"):
        t = med[name] - med["loop"]
        rows.append(Row(section="framing", case=f"one feed of one {len(packet)}-byte packet", impl=name,
                        rate=n / t, unit="feeds/s", ratio=None if name == "plain-python" else base / t,
                        extra=f"{t / n * 1e9:.0f} ns/feed", target="" if name == "plain-python" else "<= 300 ns"))
    return rows


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
    targets = {"fastpacket arrays": ">= 25x", "fastpacket iterate": ">= 2x"}
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
    return rows + _one_packet_rows(quick)
