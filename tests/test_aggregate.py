"""Aggregator: round trips, agreement with the independent reference model
(tests/reference_aggregate.py), every corruption, bombs, FrameDecoder
unwrapping, threads, fuzzing."""

from __future__ import annotations

import random
import struct
import sys
import threading
import tracemalloc
import zlib

import lz4.block
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpacket as fp
from fastpacket import _native
from tests.reference_aggregate import (
    AGGREGATE_TYPE,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_NUMBERS,
    CODEC_ZLIB,
    RefAggregateError,
    ref_pack,
    ref_packet,
    ref_raw_frame,
    ref_split,
    ref_unpack,
    ref_unwrap_stream,
)

CODECS = ["none", "lz4", "zlib"]
HS = 12
WIDE = fp.HeaderLayout([("len", "u32"), ("type", "u16"), ("seq", "u32")], length_field="len",
                       length_includes_header=False, byteorder="big", name="WIDE")


@pytest.fixture(params=["direct", "lz4.block"], autouse=True)
def lz4_path(request):
    """Every test runs with liblz4 called directly and through lz4.block."""
    was = _native._use_lz4_direct(request.param == "direct")
    if request.param == "direct" and not was:
        pytest.skip("liblz4 symbols not found in the lz4 package")
    yield request.param
    _native._use_lz4_direct(True)


def packets_of(batch):
    return [p.to_bytes() for p in batch]


def batch_of(packets, layout=fp.GAME):
    return fp.FrameDecoder(layout=layout, max_packet_size=1 << 30).feed(b"".join(packets))


def compressible(n, seed=0):
    rng = random.Random(seed)
    return bytes(rng.choice(b"abcd") for _ in range(n))


def movement_packets(n=100, players=10, seed=7):
    """A burst of movement updates: 20-byte positions plus a short tail, a
    few players in turn, consecutive seq (compressible like real traffic)."""
    rng = random.Random(seed)
    pos = [[rng.randrange(-10**5, 10**5) for _ in range(3)] for _ in range(players)]
    out = []
    for i in range(n):
        p = pos[i % players]
        p[rng.randrange(3)] += rng.randint(-8, 8)
        payload = struct.pack("<iiiHhBBH", *p, i % 360, 0, 0, rng.randrange(4), 100) + bytes(rng.randrange(8))
        out.append(ref_packet(1, payload, 1000 + i, 1 + i % players))
    return out


SHAPES = {
    "empty": [],
    "one": [ref_packet(7, b"hello", 1, 2)],
    "growing": [ref_packet(i % 8, bytes([i % 256]) * (100 + 10 * i), i, i % 5) for i in range(50)],
    "movement": movement_packets(),
    "incompressible": [ref_packet(1, random.Random(i).randbytes(1500), i, i) for i in range(3)],
}


# -- round trips and the reference model --------------------------------------

@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("codec", CODECS)
def test_round_trip_matches_reference(codec, shape):
    packets = SHAPES[shape]
    agg = fp.Aggregator(codec)
    frame = agg.pack(batch_of(packets), seq=5, player_id=9)
    assert packets_of(agg.unpack(frame)) == packets
    assert ref_unpack(frame) == packets  # the reference opens ours
    ref = ref_pack(packets, codec, seq=5, player_id=9)
    assert packets_of(agg.unpack(ref)) == packets  # we open the reference's
    # identical bytes, lz4's included: both paths use lz4.block's entry point
    assert frame == ref


@pytest.mark.parametrize("codec", CODECS)
def test_unpack_buffer_types(codec, as_buffer):
    packets = SHAPES["growing"]
    frame = ref_pack(packets, codec)
    assert packets_of(fp.Aggregator(codec).unpack(as_buffer(frame))) == packets


def test_codec_choice_follows_the_rule():
    small = [ref_packet(1, b"a" * 100)]
    assert fp.Aggregator("lz4").pack(batch_of(small))[HS] == CODEC_NONE  # below threshold
    assert fp.Aggregator("lz4", threshold=0).pack(batch_of(small))[HS] == CODEC_LZ4
    noisy = SHAPES["incompressible"]
    assert fp.Aggregator("lz4").pack(batch_of(noisy))[HS] == CODEC_NONE  # saves < 10%
    assert fp.Aggregator("zlib").pack(batch_of(SHAPES["growing"]))[HS] == CODEC_ZLIB
    # min_saving at the boundary: the body is compressed when the output is
    # below (1 - min_saving) of it, on both sides of the boundary, and the
    # reference agrees on every value
    body = batch_of(SHAPES["movement"])
    raw = len(body.to_bytes())
    for codec in ("lz4", "zlib"):
        clen = len(fp.Aggregator(codec, min_saving=0.0).pack(body)) - HS - 8
        edge = 1.0 - clen / raw
        for saving in (0.0, 0.3, edge - 1e-3, edge + 1e-3, 0.9):
            got = fp.Aggregator(codec, min_saving=saving).pack(body)
            assert got[HS] == (CODEC_NONE if saving >= edge else CODEC_NUMBERS[codec]), (codec, saving)
            assert got == ref_pack(SHAPES["movement"], codec, min_saving=saving), (codec, saving)


def test_lz4_direct_found_on_linux():
    # the lz4 wheels (and distributions' builds, which link liblz4) export
    # liblz4's API on Linux; elsewhere lz4.block may be the only way in
    if sys.platform.startswith("linux"):
        assert _native._LZ4_DIRECT_UNAVAILABLE is None, _native._LZ4_DIRECT_UNAVAILABLE
    else:
        assert _native._LZ4_DIRECT_UNAVAILABLE is None or isinstance(_native._LZ4_DIRECT_UNAVAILABLE, str)


@pytest.mark.parametrize("acceleration", [1, 2, 8, 65537])
@pytest.mark.parametrize("shape", ["movement", "growing", "incompressible"])
def test_both_lz4_paths_write_identical_frames(shape, acceleration):
    # liblz4 called directly goes through lz4.block's own entry point, so a
    # frame does not depend on which path is in use (nor on the platform)
    if _native._LZ4_DIRECT_UNAVAILABLE is not None:
        pytest.skip(f"only lz4.block here: {_native._LZ4_DIRECT_UNAVAILABLE}")
    batch = batch_of(SHAPES[shape] * 3)
    agg = fp.Aggregator("lz4", acceleration=acceleration, threshold=0, min_saving=0.0)
    frames = {}
    try:
        for direct in (True, False):
            _native._use_lz4_direct(direct)
            frames[direct] = (agg.pack(batch), agg.pack_many(batch))
    finally:
        _native._use_lz4_direct(True)
    assert frames[True] == frames[False]
    raw = batch.to_bytes()
    body = lz4.block.compress(raw, mode="fast", acceleration=acceleration, store_size=False)
    frame = frames[True][0]
    if len(body) < len(raw):  # min_saving 0: lz4 is kept whenever it is smaller
        assert (frame[HS], frame[HS + 8:]) == (CODEC_LZ4, body)
    else:
        assert (frame[HS], frame[HS + 8:]) == (CODEC_NONE, raw)


def test_non_contiguous_batch_is_gathered():
    batch = batch_of(SHAPES["growing"])
    by_type = batch.by_type()
    for codec in CODECS:
        for sub in by_type.values():
            agg = fp.Aggregator(codec, threshold=0)
            assert packets_of(agg.unpack(agg.pack(sub))) == packets_of(sub)


@pytest.mark.parametrize("codec", CODECS)
def test_other_layouts(codec):
    # WIDE (u32 big-endian length excluding the header) is built by fastpacket itself
    batch = fp.PacketBatch.build([i % 3 for i in range(40)], [compressible(50 + i) for i in range(40)],
                                 seqs=range(40), layout=WIDE)
    agg = fp.Aggregator(codec, threshold=0, layout=WIDE)
    frame = agg.pack(batch)
    assert packets_of(agg.unpack(frame)) == packets_of(batch)
    assert fp.Aggregator(codec).unpack(frame, layout=WIDE).to_bytes() == batch.to_bytes()


# -- limits -------------------------------------------------------------------

def test_max_size_packet():
    big = ref_packet(3, compressible(65535 - HS), 1, 1)
    assert len(big) == 65535
    # GAME: only a compressed body can carry a max-size packet
    for codec in ("lz4", "zlib"):
        agg = fp.Aggregator(codec)
        assert packets_of(agg.unpack(agg.pack(batch_of([big])))) == [big]
    with pytest.raises(ValueError, match="frame-size limit of 65535"):
        fp.Aggregator("none").pack(batch_of([big]))
    with pytest.raises(ValueError, match="cannot fit any aggregate frame"):
        fp.Aggregator("none").pack_many(batch_of([big]))
    # a layout with a u32 length carries it raw
    wide = fp.PacketBatch.build([3], [random.Random(1).randbytes(200_000)], layout=WIDE)
    for codec in CODECS:
        agg = fp.Aggregator(codec, layout=WIDE)
        assert agg.unpack(agg.pack(wide)).to_bytes() == wide.to_bytes()


def test_frame_size_limit_exactly():
    # raw frame = 12 + 8 + body; a body of 65515 bytes makes exactly 65535
    payload = 65515 - 2 * HS
    packets = [ref_packet(1, b"\x00" * payload), ref_packet(2, b"")]
    agg = fp.Aggregator("none")
    frame = agg.pack(batch_of(packets))
    assert len(frame) == 65535
    assert packets_of(agg.unpack(frame)) == packets
    over = [ref_packet(1, b"\x00" * (payload + 1)), ref_packet(2, b"")]
    with pytest.raises(ValueError, match="65536-byte aggregate frame, over the frame-size limit of 65535"):
        agg.pack(batch_of(over))
    frames = agg.pack_many(batch_of(over))
    assert len(frames) == 2 and all(len(f) <= 65535 for f in frames)
    assert [p for f in frames for p in packets_of(agg.unpack(f))] == over


def test_max_frame_size_and_max_raw_size_limits():
    packets = SHAPES["growing"]
    with pytest.raises(ValueError, match="max_raw_size 4096"):
        fp.Aggregator("lz4", max_raw_size=4096).pack(batch_of(packets))
    with pytest.raises(ValueError, match="max_frame_size"):
        fp.Aggregator("none", max_frame_size=1000).pack(batch_of(packets))
    agg = fp.Aggregator("none", max_frame_size=2000)
    frames = agg.pack_many(batch_of(packets))
    assert all(len(f) <= 2000 for f in frames)
    assert [p for f in frames for p in packets_of(agg.unpack(f))] == packets


@pytest.mark.parametrize("codec", CODECS)
def test_pack_many_splits_in_order(codec):
    rng = random.Random(5)
    packets = [ref_packet(i % 9, compressible(rng.randint(0, 3000), i), i, i) for i in range(300)]
    agg = fp.Aggregator(codec)
    frames = agg.pack_many(batch_of(packets))
    ends = ref_split([len(p) for p in packets], 65535 - HS - 8)
    assert len(frames) == len(ends) > 1
    assert all(len(f) <= 65535 for f in frames)
    assert [p for f in frames for p in packets_of(agg.unpack(f))] == packets
    assert packets_of(agg.unpack(agg.pack_many(batch_of([]))[0])) == []


def test_pack_many_splits_on_count():
    tiny = fp.HeaderLayout([("len", "u32"), ("type", "u16")], length_field="len", name="TINY")
    n = 70_000
    batch = fp.PacketBatch.build([1] * n, [b""] * n, layout=tiny)
    agg = fp.Aggregator("lz4", layout=tiny)
    with pytest.raises(ValueError, match="at most 65535 packets"):
        agg.pack(batch)
    frames = agg.pack_many(batch)
    assert [len(agg.unpack(f)) for f in frames] == [65535, n - 65535]


def test_bad_arguments():
    with pytest.raises(ValueError, match="codec"):
        fp.Aggregator("zstd")
    with pytest.raises(ValueError, match="codec"):
        fp.Aggregator(3)
    with pytest.raises(ValueError, match="threshold"):
        fp.Aggregator(threshold=-1)
    with pytest.raises(ValueError, match="min_saving"):
        fp.Aggregator(min_saving=1.0)
    with pytest.raises(ValueError, match="max_raw_size"):
        fp.Aggregator(max_raw_size=1 << 32)
    with pytest.raises(ValueError, match="level"):
        fp.Aggregator("zlib", level=10)
    with pytest.raises(ValueError, match="max_frame_size"):
        fp.Aggregator(max_frame_size=10)
    with pytest.raises(TypeError, match="PacketBatch"):
        fp.Aggregator().pack(b"not a batch")
    with pytest.raises(TypeError, match="aggregator"):
        fp.FrameDecoder(aggregator="lz4")
    small_type = fp.HeaderLayout([("len", "u16"), ("type", "u8")], length_field="len", name="SMALL")
    with pytest.raises(ValueError, match="cannot carry aggregate frames"):
        fp.Aggregator().pack(fp.PacketBatch.build([1], [b"x"], layout=small_type))


# -- corruption: every check, against the reference ---------------------------

def _body(packets):
    return b"".join(packets)


GOOD = SHAPES["growing"]
RAW = _body(GOOD)


def _frames_with(codec):
    wire = {CODEC_NONE: RAW, CODEC_LZ4: lz4.block.compress(RAW, store_size=False),
            CODEC_ZLIB: zlib.compress(RAW)}[codec]
    return wire


def corruptions():
    """(name, frame, expected check) for every kind of bad frame."""
    out = []
    for codec in (CODEC_NONE, CODEC_LZ4, CODEC_ZLIB):
        wire = _frames_with(codec)
        n, raw = len(GOOD), len(RAW)
        good = ref_raw_frame(wire, codec=codec, count=n, raw_size=raw)
        tag = f"codec{codec}"
        out += [
            (f"{tag}-truncated-header", good[:HS + 5], "frame"),
            (f"{tag}-truncated-body", good[:-3], "frame"),
            (f"{tag}-size-field", ref_raw_frame(wire, codec=codec, count=n, raw_size=raw, size_delta=1), "frame"),
            (f"{tag}-type", ref_raw_frame(wire, codec=codec, count=n, raw_size=raw, ptype=7), "type"),
            (f"{tag}-flags", ref_raw_frame(wire, codec=codec, count=n, raw_size=raw, flags=1), "flags"),
            (f"{tag}-count-plus", ref_raw_frame(wire, codec=codec, count=n + 1, raw_size=raw), "count"),
            (f"{tag}-count-minus", ref_raw_frame(wire, codec=codec, count=n - 1, raw_size=raw), "count"),
            (f"{tag}-count-zero", ref_raw_frame(wire, codec=codec, count=0, raw_size=raw), "count"),
            (f"{tag}-count-cannot-fit", ref_raw_frame(wire, codec=codec, count=65535, raw_size=raw), "count"),
            (f"{tag}-raw-size-small", ref_raw_frame(wire, codec=codec, count=n, raw_size=raw - 1),
             "decompress" if codec == CODEC_LZ4 else "raw_size"),
            (f"{tag}-raw-size-large", ref_raw_frame(wire, codec=codec, count=n, raw_size=raw + 1), "raw_size"),
            (f"{tag}-bomb-1GiB", ref_raw_frame(wire, codec=codec, count=n, raw_size=1 << 30), "max_raw_size"),
        ]
    for codec in (3, 4, 255):
        out.append((f"unknown-codec-{codec}", ref_raw_frame(RAW, codec=codec, count=len(GOOD), raw_size=len(RAW)),
                    "codec"))
    lz4_wire, zlib_wire = _frames_with(CODEC_LZ4), _frames_with(CODEC_ZLIB)
    out += [
        ("lz4-garbage", ref_raw_frame(b"\xff" * 64, codec=CODEC_LZ4, count=1, raw_size=100), "decompress"),
        ("lz4-empty", ref_raw_frame(b"", codec=CODEC_LZ4, count=0, raw_size=0), "decompress"),
        ("zlib-garbage", ref_raw_frame(b"\x78\x9c" + b"\xff" * 64, codec=CODEC_ZLIB, count=1, raw_size=100),
         "decompress"),
        ("zlib-truncated", ref_raw_frame(zlib_wire[:-6], codec=CODEC_ZLIB, count=len(GOOD), raw_size=len(RAW)),
         "decompress"),
        ("zlib-trailing", ref_raw_frame(zlib_wire + b"xx", codec=CODEC_ZLIB, count=len(GOOD), raw_size=len(RAW)),
         "decompress"),
        ("lz4-labelled-zlib", ref_raw_frame(lz4_wire, codec=CODEC_ZLIB, count=len(GOOD), raw_size=len(RAW)),
         "decompress"),
        ("nested", ref_raw_frame(ref_pack([ref_packet(1, b"x")], "none"), codec=0, count=1, raw_size=HS + 8 + 13),
         "nested"),
        ("inner-size-small", ref_raw_frame(struct.pack("<HHII", 5, 1, 0, 0), codec=0, count=1, raw_size=12),
         "packet_size"),
        ("inner-size-past-body", ref_raw_frame(struct.pack("<HHII", 40, 1, 0, 0) + b"x" * 8, codec=0, count=1,
                                               raw_size=20), "packet_size"),
        ("inner-truncated-header", ref_raw_frame(ref_packet(1, b"") + b"\x0c\x00", codec=0, count=2,
                                                 raw_size=14), "count"),
    ]
    # zlib bomb: 8 MiB of zeros in ~8 KiB, declared as a 4 KiB body
    bomb = zlib.compress(bytes(8 << 20), 9)
    out.append(("zlib-bomb", ref_raw_frame(bomb, codec=CODEC_ZLIB, count=1, raw_size=4096), "raw_size"))
    lz4_bomb = lz4.block.compress(bytes(8 << 20), store_size=False)
    out.append(("lz4-bomb", ref_raw_frame(lz4_bomb, codec=CODEC_LZ4, count=1, raw_size=4096), "decompress"))
    return out


CORRUPTIONS = corruptions()


@pytest.mark.parametrize("name,frame,check", CORRUPTIONS, ids=[c[0] for c in CORRUPTIONS])
def test_corruption_raises_aggregate_error(name, frame, check):
    with pytest.raises(RefAggregateError) as ref:
        ref_unpack(frame)
    agg = fp.Aggregator()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(fp.AggregateError) as exc:
            agg.unpack(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.check == check == ref.value.check, str(exc.value)
    assert isinstance(exc.value, fp.ProtocolError)
    assert f"({check})" in str(exc.value)
    # nothing near the declared size is ever allocated: at most the frame's
    # raw body (<= max_raw_size) plus bookkeeping
    assert peak < agg.max_raw_size
    assert agg.stats["rejected"] == 1 and agg.stats["unpacked"] == 0


def test_max_raw_size_checked_before_decompressing():
    frame = ref_pack(GOOD, "lz4")
    raw = len(RAW)
    agg = fp.Aggregator(max_raw_size=raw - 1)
    tracemalloc.start()
    try:
        with pytest.raises(fp.AggregateError, match=f"raw_size {raw} .* exceeds max_raw_size {raw - 1}") as exc:
            agg.unpack(frame)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.check == "max_raw_size" and exc.value.offset == HS + 4
    # not even the legitimate body was allocated (what tracemalloc sees besides
    # is the exception, its message and traceback)
    assert peak < raw
    assert packets_of(fp.Aggregator(max_raw_size=raw).unpack(frame)) == GOOD


def test_bomb_allocates_at_most_max_raw_size(lz4_path):
    # raw_size = max_raw_size, but the lz4 block expands to twice that
    agg = fp.Aggregator(max_raw_size=1 << 20)
    wide = fp.HeaderLayout([("len", "u32"), ("type", "u16")], length_field="len", name="W")
    packet = struct.pack("<IH", 1 << 20, 1) + bytes((1 << 20) - 6)
    bomb = ref_raw_frame(lz4.block.compress(packet + packet, store_size=False), codec=CODEC_LZ4, count=1,
                         raw_size=1 << 20, fmt="<IH", rest=())
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        with pytest.raises(fp.AggregateError) as exc:
            agg.unpack(bomb, layout=wide)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert exc.value.check == "decompress"
    # direct liblz4: exactly raw_size; through lz4.block: its buffer and its copy
    slack = 64 * 1024
    assert peak <= (1 << 20) + slack if lz4_path == "direct" else peak <= 2 * (1 << 20) + slack


# -- FrameDecoder(aggregator=) -------------------------------------------------

def _stream_case(seed):
    rng = random.Random(seed)
    packets = []
    for k in range(12):
        if rng.random() < 0.4:
            inner = [ref_packet(rng.randrange(100), compressible(rng.randint(0, 300), k * 100 + j), j, k)
                     for j in range(rng.randint(0, 30))]
            packets.append(ref_pack(inner, rng.choice(CODECS), threshold=rng.choice([0, 1024])))
        else:
            packets.append(ref_packet(rng.randrange(100), rng.randbytes(rng.randint(0, 50)), k))
    return packets


@pytest.mark.parametrize("seed", range(6))
def test_decoder_unwraps_in_stream_order(seed):
    packets = _stream_case(seed)
    stream = b"".join(packets)
    expected = ref_unwrap_stream(packets)
    rng = random.Random(seed)
    dec = fp.FrameDecoder(aggregator=fp.Aggregator())
    got, pos = [], 0
    while pos < len(stream):
        k = rng.randint(1, 2000)
        got += packets_of(dec.feed(stream[pos:pos + k]))
        pos += k
    assert got == expected
    assert packets_of(fp.FrameDecoder(aggregator=fp.Aggregator()).feed(stream)) == expected
    # without an aggregator, aggregates are ordinary packets
    assert packets_of(fp.FrameDecoder().feed(stream)) == packets


def test_decoder_feed_buffer_types(as_buffer):
    packets = _stream_case(1)
    dec = fp.FrameDecoder(aggregator=fp.Aggregator())
    assert packets_of(dec.feed(as_buffer(b"".join(packets)))) == ref_unwrap_stream(packets)


def test_decoder_single_aggregate_feed():
    for codec in CODECS:
        frame = ref_pack(GOOD, codec)
        dec = fp.FrameDecoder(aggregator=fp.Aggregator())
        assert packets_of(dec.feed(frame)) == GOOD
        assert packets_of(dec.feed(frame[:100])) == [] and packets_of(dec.feed(frame[100:])) == GOOD


def test_decoder_bad_aggregate_delivers_packets_before_and_fails():
    before = [ref_packet(1, b"a"), ref_pack(GOOD[:5], "lz4", threshold=0), ref_packet(2, b"b")]
    bad = ref_raw_frame(b"\xff" * 40, codec=CODEC_LZ4, count=1, raw_size=100)
    after = [ref_packet(3, b"c")]
    stream = b"".join(before) + bad + b"".join(after)
    agg = fp.Aggregator()
    dec = fp.FrameDecoder(aggregator=agg)
    with pytest.raises(fp.AggregateError) as exc:
        dec.feed(stream)
    assert exc.value.check == "decompress"
    assert exc.value.stream_offset == len(b"".join(before))
    assert f"stream offset {len(b''.join(before))}" in str(exc.value)
    assert packets_of(exc.value.batch) == ref_unwrap_stream(before)
    assert dec.failed
    with pytest.raises(fp.ProtocolError, match="reset"):
        dec.feed(b"".join(after))
    dec.reset()
    assert not dec.failed
    assert packets_of(dec.feed(b"".join(after))) == after


def test_decoder_bad_aggregate_then_bad_size():
    stream = ref_raw_frame(b"", codec=CODEC_NONE, count=1, raw_size=0) + b"\x02\x00" + b"\x00" * 10
    dec = fp.FrameDecoder(aggregator=fp.Aggregator())
    with pytest.raises(fp.AggregateError) as exc:  # the earlier error in the stream wins
        dec.feed(stream)
    assert exc.value.check == "count"
    assert packets_of(exc.value.batch) == []


def test_decoder_protocol_error_batch_is_unwrapped():
    good = [ref_pack(GOOD[:3], "zlib", threshold=0)]
    dec = fp.FrameDecoder(aggregator=fp.Aggregator())
    with pytest.raises(fp.ProtocolError) as exc:
        dec.feed(good[0] + b"\x02\x00" + b"\x00" * 10)
    assert not isinstance(exc.value, fp.AggregateError)
    assert packets_of(exc.value.batch) == GOOD[:3]


# -- the receiver's limits: max_packet_size inside aggregates, the inflate budget --

def test_an_aggregate_cannot_carry_a_packet_over_max_packet_size():
    """Issue 14, finding 4: a 54-byte zlib frame delivered a 5,012-byte inner
    packet to a decoder whose max_packet_size is 1,024, while the same
    packet sent plainly is refused. One check now refuses both."""
    big = ref_packet(1, b"\0" * 5000)
    frame = ref_pack([ref_packet(2, b"ok"), big], "zlib", threshold=0)
    assert len(frame) < 100
    dec = fp.FrameDecoder(max_packet_size=1024, aggregator=fp.Aggregator())
    with pytest.raises(fp.AggregateError, match="inner packet 1 .* has size 5012, over max_packet_size 1024") as exc:
        dec.feed(ref_packet(3, b"before") + frame)
    assert exc.value.check == "max_packet_size" and exc.value.value == 5012 and exc.value.limit == 1024
    assert packets_of(exc.value.batch) == [ref_packet(3, b"before")]  # all-or-nothing: none of the aggregate's
    with pytest.raises(fp.ProtocolError, match="packet size 5012 at stream offset 0 exceeds max_packet_size 1024"):
        fp.FrameDecoder(max_packet_size=1024, aggregator=fp.Aggregator()).feed(big)
    with pytest.raises(fp.ProtocolError, match="packet size 5012 at stream offset 0 exceeds max_packet_size 1024"):
        fp.FrameDecoder(max_packet_size=1024).feed(big)
    with pytest.raises(fp.AggregateError, match="over max_packet_size 1024") as exc:
        fp.Aggregator().unpack(frame, max_packet_size=1024)
    assert exc.value.check == "max_packet_size"
    assert len(fp.Aggregator().unpack(frame)) == 2  # no limit asked: only the body bounds them
    assert len(fp.FrameDecoder(max_packet_size=5012, aggregator=fp.Aggregator()).feed(frame)) == 2


@pytest.mark.parametrize("codec", CODECS)
def test_aggregate_frames_may_be_larger_than_max_packet_size(codec):
    """max_packet_size bounds the packets; the aggregate frames carrying
    them are as large as the sender packs them (up to frame_limit)."""
    packets = [ref_packet(1, compressible(900, i)) for i in range(60)]
    frames = fp.Aggregator(codec, threshold=0).pack_many(batch_of(packets))
    assert max(len(f) for f in frames) > 1024
    dec = fp.FrameDecoder(max_packet_size=1024, aggregator=fp.Aggregator())
    assert dec.max_packet_size == 1024 and dec.frame_limit == 65535
    assert packets_of(dec.feed(b"".join(frames))) == packets
    assert fp.FrameDecoder(max_packet_size=1024).frame_limit == 1024
    wide = fp.FrameDecoder(WIDE, max_packet_size=1024, aggregator=fp.Aggregator(max_raw_size=4096))
    assert wide.frame_limit == 10 + 8 + 4096  # header + aggregate header + max_raw_size


def test_plain_packet_over_max_packet_size_with_an_aggregator_is_refused_at_its_header():
    """Aggregate frames pass the scan up to frame_limit; a plain packet
    over max_packet_size is still refused as soon as its header arrives."""
    dec = fp.FrameDecoder(max_packet_size=1024, aggregator=fp.Aggregator())
    ok = ref_packet(1, b"a")
    big = ref_packet(2, b"b" * 2000)
    with pytest.raises(fp.ProtocolError, match="packet size 2012 at stream offset 13 exceeds max_packet_size 1024") \
            as exc:
        dec.feed(ok + big[:12])  # its header only
    assert packets_of(exc.value.batch) == [ok] and dec.pending == 0 and dec.failed
    dec = fp.FrameDecoder(max_packet_size=1024, aggregator=fp.Aggregator())
    assert packets_of(dec.feed(ok + big[:5])) == [ok]  # the header completes in the next feed
    with pytest.raises(fp.ProtocolError, match="packet size 2012 at stream offset 13 exceeds max_packet_size 1024"):
        dec.feed(big[5:12])
    with pytest.raises(fp.ProtocolError, match="exceeds max_packet_size 1024 and the largest aggregate frame 60018"):
        fp.FrameDecoder(WIDE, max_packet_size=1024, aggregator=fp.Aggregator(max_raw_size=60000)).feed(
            struct.pack(">IHI", 70000, 1, 0))


def _zeros_aggregate(raw_size, packet_size=1000):
    """A zlib aggregate of valid packets declaring `raw_size`: a few hundred
    bytes on the wire (the "bomb" of issue 14, but well-formed)."""
    count, rest = divmod(raw_size, packet_size)
    packets = [ref_packet(1, bytes(packet_size - 12))] * count + ([ref_packet(1, bytes(rest - 12))] if rest else [])
    return ref_pack(packets, "zlib", threshold=0), packets


def test_inflate_budget_refuses_an_aggregate_declaring_more_than_it():
    """Issue 14, finding 2: 60 zlib frames of about 1 KB, each declaring
    1 MiB, were all inflated from one read. An aggregate declaring more than
    max_inflate_bytes is refused before anything is decompressed."""
    bomb, _ = _zeros_aggregate(1 << 20)
    assert len(bomb) < 4000
    agg = fp.Aggregator()
    dec = fp.FrameDecoder(aggregator=agg, max_inflate_bytes=256 << 10)
    tracemalloc.start()
    try:
        with pytest.raises(fp.AggregateError, match="raw_size 1048576 at offset 16 exceeds max_inflate_bytes 262144") \
                as exc:
            dec.feed(ref_packet(5, b"first") + bomb * 60)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert exc.value.check == "max_inflate_bytes" and exc.value.limit == 256 << 10
    assert packets_of(exc.value.batch) == [ref_packet(5, b"first")]
    assert peak < 1 << 20  # nothing inflated
    assert agg.stats["rejected"] == 1 and agg.stats["unpacked"] == 0
    with pytest.raises(ValueError, match="max_inflate_bytes bounds what an aggregator inflates"):
        fp.FrameDecoder(max_inflate_bytes=1 << 20)
    with pytest.raises(ValueError, match="max_inflate_bytes must be >= 1"):
        fp.FrameDecoder(aggregator=agg, max_inflate_bytes=0)


def test_inflate_budget_defers_what_one_feed_cannot_inflate():
    """Aggregates that together declare more than the budget are not
    refused: what does not fit one feed's budget waits, and the next feed
    (or feed(b"")) delivers it first. Every packet arrives, in order."""
    frame, inner = _zeros_aggregate(100_000)
    plain = [ref_packet(9, bytes([i])) for i in range(3)]
    stream = frame + plain[0] + frame + plain[1] + frame + plain[2]
    dec = fp.FrameDecoder(aggregator=fp.Aggregator(), max_inflate_bytes=250_000)
    first = dec.feed(stream)
    assert packets_of(first) == inner + plain[:1] + inner + plain[1:2]  # 200,000 bytes inflated
    assert dec.deferred == len(frame) + len(plain[2])
    later = ref_packet(7, b"later")
    assert packets_of(dec.feed(later)) == inner + plain[2:] + [later]  # the waiting ones first
    assert dec.deferred == 0
    assert packets_of(dec.feed(frame * 5)) == inner * 2
    assert packets_of(dec.feed(b"")) == inner * 2
    assert packets_of(dec.feed(b"")) == inner
    assert packets_of(dec.feed(b"")) == [] and dec.deferred == 0
    dec.feed(frame * 3)
    assert dec.deferred > 0
    dec.reset()
    assert dec.deferred == 0 and packets_of(dec.feed(b"")) == []


def test_inflate_budget_then_a_bad_header_drops_what_waited():
    frame, inner = _zeros_aggregate(100_000)
    dec = fp.FrameDecoder(aggregator=fp.Aggregator(), max_inflate_bytes=150_000)
    with pytest.raises(fp.ProtocolError, match="below the header size.*the 2 frames before it past "
                                              "max_inflate_bytes were dropped") as exc:
        dec.feed(frame * 3 + b"\x02\x00" + bytes(10))
    assert packets_of(exc.value.batch) == inner
    assert dec.deferred == 0 and dec.failed


# -- stats and threads ----------------------------------------------------------

def test_stats_count_what_happened():
    agg = fp.Aggregator("lz4")
    f1 = agg.pack(batch_of(GOOD))                     # compressed
    f2 = agg.pack(batch_of(SHAPES["one"]))            # below threshold: raw
    agg.unpack(f1)
    with pytest.raises(fp.AggregateError):
        agg.unpack(f2[:-1])
    assert agg.stats == {"compressed": 1, "raw": 1, "bytes_in": len(RAW) + len(SHAPES["one"][0]),
                         "bytes_out": len(f1) + len(f2), "unpacked": 1, "rejected": 1}


@pytest.mark.parametrize("codec", ["lz4", "zlib"])
def test_stats_with_threads(codec):
    agg = fp.Aggregator(codec)
    batches = [batch_of(GOOD), batch_of(SHAPES["one"]), batch_of(SHAPES["movement"])]
    threads, rounds = 4, 60
    outputs = [[] for _ in range(threads)]
    barrier = threading.Barrier(threads)

    def work(k):
        barrier.wait()
        for r in range(rounds):
            b = batches[(k + r) % len(batches)]
            f = agg.pack(b)
            assert agg.unpack(f).to_bytes() == b.to_bytes()
            outputs[k].append((b.nbytes, len(f), f[HS] != CODEC_NONE))

    ts = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    done = [o for out in outputs for o in out]
    assert len(done) == threads * rounds
    s = agg.stats
    assert s["compressed"] == sum(c for _, _, c in done)
    assert s["raw"] == sum(not c for _, _, c in done)
    assert s["bytes_in"] == sum(i for i, _, _ in done)
    assert s["bytes_out"] == sum(o for _, o, _ in done)
    assert s["unpacked"] == threads * rounds


# -- fuzzing --------------------------------------------------------------------

def _agree(frame, max_raw_size=1 << 20):
    """fastpacket and the reference accept and reject alike, naming the same check."""
    try:
        expected = ref_unpack(frame, max_raw_size=max_raw_size)
    except RefAggregateError as e:
        with pytest.raises(fp.AggregateError) as exc:
            fp.Aggregator(max_raw_size=max_raw_size).unpack(frame)
        assert exc.value.check == e.check
        return
    assert packets_of(fp.Aggregator(max_raw_size=max_raw_size).unpack(frame)) == expected


@settings(max_examples=150)
@given(st.binary(max_size=200))
def test_fuzz_unpack_random_bytes(data):
    _agree(data)


@settings(max_examples=150)
@given(st.binary(max_size=120))
def test_fuzz_unpack_random_after_a_valid_header(data):
    # the outer header is right, so the fuzzing reaches the aggregate checks
    _agree(struct.pack("<HHII", HS + len(data), AGGREGATE_TYPE, 0, 0) + data)


_SEED_FRAMES = [ref_pack(SHAPES["growing"][:8], c, threshold=0) for c in CODECS] + \
    [ref_pack(SHAPES["movement"][:20], c, threshold=0) for c in CODECS]


@settings(max_examples=300)
@given(st.sampled_from(_SEED_FRAMES), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)),
                                               min_size=1, max_size=4), st.integers(0, 3))
def test_fuzz_unpack_mutated_frames(frame, flips, cut):
    mutated = bytearray(frame)
    for pos, value in flips:
        mutated[pos % len(mutated)] = value
    if cut:
        mutated = mutated[:-cut]
    _agree(bytes(mutated), max_raw_size=4096)


@pytest.mark.parametrize("double_map", [None, False])
def test_feed_from_ring_unwraps_aggregates(double_map):
    agg = fp.Aggregator("lz4", threshold=64)
    inner = fp.PacketBatch.build([5] * 30, [b"ring-" * 8] * 30, seqs=range(30))
    stream = fp.encode(1, b"before") + agg.pack(inner) + fp.encode(2, b"after")
    ring = fp.RingBuffer(4096, double_map=double_map)
    ring.write(b"\0" * 3000)  # move the tail near the wrap point
    ring.consume(3000)
    dec = fp.FrameDecoder(aggregator=agg)
    got = []
    for i in range(0, len(stream), 97):
        ring.write(stream[i:i + 97])
        got.extend((p.type, p.seq) for p in dec.feed_from(ring))
    assert got == [(1, 0)] + [(5, i) for i in range(30)] + [(2, 0)]
    assert len(ring) == 0


def test_max_raw_size_is_capped_at_what_every_codec_handles():
    # liblz4 takes an int: a raw_size above LZ4_MAX_INPUT_SIZE (0x7E000000)
    # would reach LZ4_decompress_safe as a negative capacity on the direct
    # path and fail in lz4.block on the other; refuse it up front.
    limit = 0x7E000000
    for bad in (limit + 1, 2**31, 2**32 - 1):
        with pytest.raises(ValueError, match=f"max_raw_size must be an int in \\[0, {limit}\\]"):
            fp.Aggregator(max_raw_size=bad)
    assert fp.Aggregator(max_raw_size=limit).max_raw_size == limit
    assert fp.aggregate.MAX_RAW_SIZE == limit
