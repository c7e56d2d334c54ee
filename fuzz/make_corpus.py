"""Writes the seed corpora of fuzz/corpus/<target>/: valid streams of each
layout, aggregates of each codec, operation sequences, and a few malformed
cases of each kind, in the input formats the targets read (see
fuzz/atheris/_fuzzlib.py and fuzz/libfuzzer/fuzz_input.hpp).

    python fuzz/make_corpus.py            # rewrites fuzz/corpus/ from scratch

Deterministic: the same files every run (the lz4 and zlib packages being
the same versions). Needs fastpacket's dependencies (lz4) only, not atheris.
"""

from __future__ import annotations

import random
import shutil
import sys
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "atheris"))
import _fuzzlib as fz  # noqa: E402

CORPUS = HERE / "corpus"

# (name, descriptor) of the layouts seeded; all but TINY carry aggregates.
LAYOUTS: List[Tuple[str, bytes]] = [
    ("game", fz.GAME_DESCRIPTOR),
    # u32 big-endian length counting the payload only, u16 type, u32 seq (DESIGN.md's example)
    ("big-u32", fz.layout_descriptor(["u32", "u16", "u32"], [None, "type", "seq"], 0, big_endian=True,
                                     includes_header=False)),
    # u8 type then u8 length of the payload
    ("tiny-u8", fz.layout_descriptor(["u8", "u8"], ["type", None], 1, includes_header=False)),
    # u64 length with an adjustment (Netty's lengthAdjustment), u16 type, u32 player_id
    ("u64-adjusted", fz.layout_descriptor(["u16", "u64", "u32"], ["type", None, "player_id"], 1,
                                          includes_header=True, adjustment=-4)),
    # u16 big-endian length that counts 2 bytes less than the payload
    ("big-u16-plus2", fz.layout_descriptor(["u16", "u16", "u8"], [None, "type", "seq"], 0, big_endian=True,
                                           includes_header=False, adjustment=2)),
]


def layout_of(descriptor: bytes) -> fz.FuzzLayout:
    return fz.read_layout(fz.Reader(descriptor))


def packets(fl: fz.FuzzLayout, rng: random.Random, n: int, max_payload: int = 60) -> List[Tuple[int, bytes]]:
    out = []
    for i in range(n):
        payload = bytes(rng.randrange(4) for _ in range(rng.randrange(max_payload)))  # compressible
        out.append((1 + i % 5, payload))
    return out


def raw_stream(fl: fz.FuzzLayout, pkts: Sequence[Tuple[int, bytes]]) -> bytes:
    return b"".join(fz.encode_packet(fl, t, p, i, 7) or b"" for i, (t, p) in enumerate(pkts))


def cuts(w: fz.Writer, positions: Sequence[int]) -> None:
    w.u8(len(positions))
    for c in positions:
        w.u16(c)


# -- stream targets: fuzz_feed (atheris) and fuzz_framing (libFuzzer) -------------------

def feed_seeds() -> Dict[str, bytes]:
    """fuzz_feed: descriptor, cfg, [max], cuts, stream (raw, or records with cfg bit 5)."""
    rng = random.Random(1)
    out: Dict[str, bytes] = {}
    for name, desc in LAYOUTS:
        fl = layout_of(desc)
        stream = raw_stream(fl, packets(fl, rng, 12))
        for delivery, label in ((0, "bytes"), (2, "memoryview"), (4, "ring"), (5, "ring-fallback")):
            w = fz.Writer().raw(desc).u8(1 | delivery << 2).u16(1000)  # max: header + 1000
            cuts(w, [1, 5, 40, 41, 200] if delivery != 4 else [3, 100])
            out[f"{name}-valid-{label}"] = w.raw(stream).bytes()
        # the same kind of stream built from records, with a bad length in the middle
        sw = fz.StreamWriter()
        sw.raw(desc).u8(1 | 1 << 5).u16(300)
        cuts(sw, [7, 30])
        for t, p in packets(fl, rng, 4):
            sw.packet(t, p)
        sw.bad_length(0).packet(9, b"never delivered")
        out[f"{name}-records-then-bad-length"] = sw.bytes()
        # oversize header after a valid packet, one byte at a time around it
        w = fz.Writer().raw(desc).u8(2).u8(40)  # max: header + 40 bytes
        cuts(w, list(range(1, 30)))
        too_big = fz.encode_packet(fl, 3, b"y" * 41) or b""
        out[f"{name}-too-large"] = w.raw(raw_stream(fl, [(1, b"ok")]) + too_big).bytes()
        # a truncated last packet: held, not delivered
        w = fz.Writer().raw(desc).u8(0)
        cuts(w, [])
        out[f"{name}-truncated-tail"] = w.raw(stream[:-3]).bytes()
    # a max_packet_size below the header size is refused
    out["game-max-below-header"] = fz.Writer().raw(fz.GAME_DESCRIPTOR).u8(3).u32(5).u8(0).bytes()
    # a u64 length far past any max
    fl = layout_of(LAYOUTS[3][1])
    hdr = fl.ref.struct.pack(3, (1 << 64) - 1, 0)
    out["u64-huge-length"] = fz.Writer().raw(LAYOUTS[3][1]).u8(0).u8(0).raw(hdr).bytes()
    return out


def framing_seeds() -> Dict[str, bytes]:
    """fuzz_framing: the raw-stream feed seeds (same layout, cfg bit 2 = zero copy)."""
    seeds = feed_seeds()
    return {k: v for k, v in seeds.items() if "records" not in k}


# -- aggregates: fuzz_decoder_aggregate, fuzz_aggregator, fuzz_aggregate --------------

CODECS = ((0, "none"), (1, "lz4"), (2, "zlib"))
CORRUPTIONS = ((fz.CORRUPT_RAW_SIZE, "raw-size", 129), (fz.CORRUPT_COUNT, "count", 127),
               (fz.CORRUPT_FLAGS, "flags", 4), (fz.CORRUPT_FLIP, "flip", 9), (fz.CORRUPT_TRUNCATE, "truncate", 3),
               (fz.CORRUPT_NESTED, "nested", 1), (fz.CORRUPT_TRAILING, "trailing", 5))


def decoder_aggregate_seeds() -> Dict[str, bytes]:
    """descriptor, cfg (bit 7: raw stream), [max_raw_size], max - header (u16), cuts, records."""
    rng = random.Random(2)
    out: Dict[str, bytes] = {}
    for name, desc in LAYOUTS:
        fl = layout_of(desc)
        if not fl.carries_aggregates:
            continue
        for codec, cname in CODECS:
            w = fz.StreamWriter()
            w.raw(desc).u8(0).u16(4000)
            cuts(w, [2, 50, 51, 400])
            w.packet(1, b"before")
            w.aggregate(codec, packets(fl, rng, 6))
            w.packet(2, b"between")
            w.aggregate(codec, packets(fl, rng, 3), seq=4, pid=9)
            w.packet(3, b"after")
            out[f"{name}-{cname}-aggregates"] = w.bytes()
        for corruption, cname, param in CORRUPTIONS:
            codec = 2 if corruption in (fz.CORRUPT_FLIP, fz.CORRUPT_TRUNCATE, fz.CORRUPT_TRAILING) else 1
            w = fz.StreamWriter()
            w.raw(desc).u8(4 << 2).u16(4000)  # delivered through a ring
            cuts(w, [9])
            w.packet(1, b"delivered first")
            w.aggregate(codec, packets(fl, rng, 4), corruption=corruption, param=param)
            w.packet(2, b"never delivered")
            out[f"{name}-bad-{cname}"] = w.bytes()
    # a bomb: raw_size past a small max_raw_size, refused before inflating
    w = fz.StreamWriter()
    w.raw(fz.GAME_DESCRIPTOR).u8(1).u16(256).u16(4000)
    cuts(w, [])
    w.aggregate(2, [(1, bytes(200)) for _ in range(4)])
    out["game-bomb-over-max-raw-size"] = w.bytes()
    # an unknown codec
    w = fz.StreamWriter()
    w.raw(fz.GAME_DESCRIPTOR).u8(0).u16(4000)
    cuts(w, [])
    w.aggregate(7, [(1, b"x")])
    out["game-unknown-codec"] = w.bytes()
    return out


def aggregator_seeds() -> Dict[str, bytes]:
    """cfg, [descriptor], [max_raw_size], then a frame (unpack) or pack arguments and packets."""
    rng = random.Random(3)
    out: Dict[str, bytes] = {}
    game_pkts = [fz.ref_agg.ref_packet(i % 4, bytes(rng.randrange(3) for _ in range(90)), i, 5) for i in range(20)]
    for _, cname in CODECS:
        frame = fz.ref_agg.ref_pack(game_pkts, cname, threshold=0, min_saving=0.0)
        out[f"unpack-game-{cname}"] = fz.Writer().u8(0).raw(frame).bytes()
        out[f"unpack-game-{cname}-lz4block-bytearray"] = fz.Writer().u8(1 << 3 | 1 << 4).raw(frame).bytes()
        out[f"unpack-game-{cname}-small-max-raw"] = fz.Writer().u8(1 << 1).u16(500).raw(frame).bytes()
    for name, desc in LAYOUTS:
        fl = layout_of(desc)
        if not fl.carries_aggregates:
            continue
        for codec, cname in CODECS:
            w = fz.StreamWriter()
            w.u8(1 | 1 << 5).raw(desc)
            w.aggregate(codec, packets(fl, rng, 5), op=False)
            out[f"unpack-{name}-{cname}-built"] = w.bytes()
        for corruption, cname, param in CORRUPTIONS:
            w = fz.StreamWriter()
            w.u8(1 | 1 << 5 | 1 << 6).raw(desc)
            w.aggregate(1, packets(fl, rng, 3), corruption=corruption, param=param, op=False)
            out[f"unpack-{name}-bad-{cname}"] = w.bytes()
    out["unpack-too-short"] = fz.Writer().u8(0).raw(b"\x14\x00\xff\xff").bytes()
    out["unpack-not-aggregate"] = fz.Writer().u8(0).raw(fz.ref_agg.ref_packet(3, b"12345678")).bytes()
    # pack and pack_many: codec, threshold, min_saving, level, max_frame_size, seq, player_id, mode, packets
    for name, desc in LAYOUTS[:2] + LAYOUTS[3:]:
        fl = layout_of(desc)
        for codec, cname in CODECS:
            for mode, mname in ((0, "pack"), (1, "pack-many"), (2, "pack-gathered"), (5, "pack-many-by-type")):
                w = fz.Writer().u8(1 | 1 << 7).raw(desc).u8(codec).u16(64).u8(25).u8(6)
                w.u16(300 if mode & 1 else 0).u32(11).u32(12).u8(mode)
                for t, p in packets(fl, rng, 12):
                    w.u16(t).u16(0).u8(1).u8(len(p)).raw(p)
                out[f"{mname}-{name}-{cname}"] = w.bytes()
    return out


def aggregate_cpp_seeds() -> Dict[str, bytes]:
    """fuzz_aggregate: descriptor, cfg (bit 2: body mode), [max_raw_size], frame | count + body."""
    rng = random.Random(4)
    out: Dict[str, bytes] = {}
    for name, desc in LAYOUTS:
        fl = layout_of(desc)
        if not fl.carries_aggregates:
            continue
        pk = [fz.encode_packet(fl, t, p) or b"" for t, p in packets(fl, rng, 6)]
        for codec, cname in CODECS:
            frame = fz.aggregate_frame(fl, pk, codec) or b""
            out[f"{name}-{cname}-frame"] = fz.Writer().raw(desc).u8(0).raw(frame).bytes()
        out[f"{name}-body"] = fz.Writer().raw(desc).u8(1 << 2).u16(len(pk)).raw(b"".join(pk)).bytes()
        out[f"{name}-body-count-lies"] = fz.Writer().raw(desc).u8(1 << 2).u16(len(pk) + 1).raw(b"".join(pk)).bytes()
        nested = fz.aggregate_frame(fl, pk[:2], 0) or b""
        out[f"{name}-body-nested"] = fz.Writer().raw(desc).u8(1 << 2).u16(2).raw(pk[0] + nested).bytes()
        bomb = fz.aggregate_frame(fl, pk, 2) or b""
        out[f"{name}-over-max-raw"] = fz.Writer().raw(desc).u8(2).u8(10).raw(bomb).bytes()
    return out


# -- buffers and layouts -------------------------------------------------------------------

def ring_seeds() -> Dict[str, bytes]:
    """cfg (capacity, double_map=False), then ops (see fuzz_ring.py)."""
    sys.path.insert(0, str(HERE / "atheris"))
    import fuzz_ring as r
    out: Dict[str, bytes] = {}
    for cfg, label in ((0, "page"), (1 | 1 << 2, "8k-fallback"), (1, "8k")):
        w = fz.Writer().u8(cfg)
        for i in range(40):  # write and read around the wrap point many times
            w.u8(r.OP_WRITE_BIG).u8(i).u16(3000 + 97 * i)
            w.u8(r.OP_READ).u16(2000 + 89 * i)
            w.u8(r.OP_CHECK)
        out[f"{label}-wrap"] = w.bytes()
        w = fz.Writer().u8(cfg)
        for i in range(12):  # the socket path: writable(), fill, commit, readable(), consume, views held
            w.u8(r.OP_WRITABLE).u8(r.OP_FILL).u8(0).u16(0).u8(100).raw(bytes(range(i, i + 100)))
            w.u8(r.OP_COMMIT).u16(100)
            w.u8(r.OP_READABLE).u8(r.OP_CONSUME).u16(60)
            w.u8(r.OP_WRITE).u8(200).raw(bytes(200))
            if i % 3 == 2:
                w.u8(r.OP_RELEASE).u8(i)
        w.u8(r.OP_CHECK).u8(r.OP_RELEASE_ALL).u8(r.OP_READ).u16(0xFFFF)
        out[f"{label}-views"] = w.bytes()
        w = fz.Writer().u8(cfg)
        for _ in range(66):  # past the view limit
            w.u8(r.OP_READABLE)
        w.u8(r.OP_COMMIT).u16(0xFFFF).u8(r.OP_CONSUME).u16(0xFF05).u8(r.OP_RELEASE_ALL)
        out[f"{label}-too-many-views-bad-commit"] = w.bytes()
    return out


def sendbuf_seeds() -> Dict[str, bytes]:
    import fuzz_sendbuf as s
    out: Dict[str, bytes] = {}
    for name, desc in LAYOUTS:
        w = fz.Writer().u8(1).raw(desc).u16(2000)
        for i in range(10):
            # send(type, payload, player_id=, seq=None)
            w.u8(s.OP_SEND).u8(0).u32(i + 1).u8(0).u32(100 + i).u8(1).u8(20).raw(bytes([i]) * 20)
        w.u8(s.OP_SEND).u8(0).u32(5).u8(0).u32(6).u8(0).u8(0).u32(99).u8(3).raw(b"abc")  # a given seq
        w.u8(s.OP_SHOULD_FLUSH).u16(10).u8(2)
        w.u8(s.OP_FLUSH).u8(1)  # held
        for kind in range(len(s.ID_DTYPES)):
            w.u8(s.OP_BROADCAST).u8(0).u32(7).u8(4).raw(b"ping").u8(kind).u8(5)
            for j in range(5):
                w.u8(0).u32(j * 1000)
        w.u8(s.OP_SEND_BATCH).u8(0).u8(1).u8(6)
        for j in range(6):
            w.u16(j).u16(j).u8(j).u8(10).raw(bytes(10))
        w.u8(s.OP_SEND_BATCH).u8(3).u8(0).u8(2).u16(1).u16(1).u8(1).u8(1).raw(b"z").u16(2).u16(2).u8(2).u8(0)
        w.u8(s.OP_CHECK).u8(s.OP_FLUSH).u8(0).u8(s.OP_NEXT_SEQ).u8(0).u32(0xFFFFFFFF).u8(s.OP_CLEAR)
        out[f"{name}-mixed"] = w.bytes()
        w = fz.Writer().u8(1 | 1 << 1).raw(desc).u8(60)  # a small buffer: BufferFull and never-fits
        for i in range(8):
            w.u8(s.OP_SEND).u8(0).u32(1).u8(0).u32(1).u8(1).u8(25 + i).raw(bytes(25 + i))
        w.u8(s.OP_SEND).u8(0xFC).u8(0xFD).u8(1).u8(0)  # bad arguments
        w.u8(s.OP_RELEASE).u8(0).u8(s.OP_FLUSH).u8(1).u8(s.OP_FLUSH).u8(1).u8(s.OP_CHECK)
        out[f"{name}-full"] = w.bytes()
    return out


def layout_seeds() -> Dict[str, bytes]:
    """field count; per field shape, name, kind; length field, includes, byteorder,
    adjustment, three roles, label; packet records."""
    import fuzz_layout as lt
    out: Dict[str, bytes] = {}

    def name(n: object) -> int:
        return lt.NAMES.index(n)

    def kind(k: object) -> int:
        return lt.KINDS.index(k)

    def layout(fields: Sequence[Tuple[object, object]], length: int, includes: int, order: int, adj: int,
               roles: Sequence[int] = (0, 0, 0)) -> fz.Writer:
        w = fz.Writer().u8(len(fields))
        for n, k in fields:
            w.u8(4).u8(name(n)).u8(kind(k))
        w.u8(length).u8(includes).u8(order).u8(adj)
        for r in roles:
            w.u8(r)
        return w.u8(0)

    def records(w: fz.Writer) -> bytes:
        for i in range(6):
            w.u32(i + 1).u32(1000 + i).u32(7 * i).u8(i * 3).raw(bytes(range(i * 3)))
        return w.bytes()

    out["game"] = records(layout([("size", "u16"), ("type", "u16"), ("seq", "u32"), ("player_id", "u32")], 0, 0, 0, 0))
    out["big-u32-excludes"] = records(layout([("len", "u32"), ("type", "u16"), ("seq", "u32")], 0, 1, 1, 0))
    out["u8-adjusted"] = records(layout([("type", "u8"), ("len", "u8")], 1, 1, 0, 2))
    out["role-by-argument"] = records(layout([("len", "u16"), ("a", "u32"), ("b", "u64")], 0, 0, 0, 0,
                                             roles=(0xA0 + name("a"), 0xA0 + name("b"), 0)))
    out["bad-kind"] = layout([("len", "u128"), ("type", "u16")], 0, 0, 0, 0).bytes()
    out["bad-name"] = layout([("len", "u16"), ("1x", "u16")], 0, 0, 0, 0).bytes()
    out["bad-byteorder"] = layout([("len", "u16"), ("type", "u16")], 0, 0, 4, 0).bytes()
    out["bad-adjustment"] = layout([("len", "u16"), ("type", "u16")], 0, 0, 0, 8).bytes()
    out["too-large"] = layout([(n, "u64") for n in ("len", "type", "seq", "player_id", "a", "b", "class", "size")]
                              + [("é", "u8")], 0, 0, 0, 0).bytes()
    out["empty"] = fz.Writer().u8(0).u8(0).bytes()
    return out


TARGETS: Dict[str, Callable[[], Dict[str, bytes]]] = {
    "feed": feed_seeds,
    "decoder_aggregate": decoder_aggregate_seeds,
    "aggregator": aggregator_seeds,
    "ring": ring_seeds,
    "sendbuf": sendbuf_seeds,
    "layout": layout_seeds,
    "framing": framing_seeds,
    "aggregate": aggregate_cpp_seeds,
}


def main() -> None:
    if CORPUS.exists():
        shutil.rmtree(CORPUS)
    for target, make in TARGETS.items():
        d = CORPUS / target
        d.mkdir(parents=True)
        seeds = make()
        for name, data in sorted(seeds.items()):
            (d / name).write_bytes(data)
        print(f"{target}: {len(seeds)} seeds, {sum(map(len, seeds.values()))} bytes")


if __name__ == "__main__":
    main()
