"""atheris target: Aggregator.unpack on fuzzed frames against the reference
unpacker (same packets, or an AggregateError naming the same check, and the
stats counting it), and Aggregator.pack / pack_many round trips that the
reference must open into the packed packets, with the sender's codec rule.

Input: a config byte (bit 0: a layout descriptor follows, else GAME; bits
1-2: max_raw_size default / u16 / u8 / 0; bit 3: lz4 through lz4.block
rather than liblz4 directly; bit 4: the frame as a bytearray; bit 5: the
frame is built from an AGGREGATE record (see _fuzzlib) rather than raw;
bit 6: unpack(frame, layout=) on a GAME aggregator instead of an
Aggregator of that layout; bit 7: pack mode), [descriptor], [max_raw_size],
then for unpack the frame, for pack: codec u8, threshold u16, min_saving
u8 (/256), level u8, max_frame_size u16 (0: none), seq u32, player_id u32,
a mode byte (bit 0 pack_many; bits 1-2: all packets / every other one /
the first type's group) and packet records (type u16, seq u16,
player_id u8, n u8, n payload bytes).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, List, Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import (  # noqa: E402
    AGG_HEADER, AGGREGATE_TYPE, ANY_PACKET_SIZE, LENGTH_SATURATION, FuzzLayout, Reader, batch_rows, build_aggregate,
    encode_packet, expect, fp, read_layout, ref, ref_agg, run, use_lz4_direct,
)

DEFAULT_MAX_RAW_SIZE = 1 << 20
#: A max_raw_size (bytes) above anything a u32 raw_size announces.
ANY_RAW_SIZE = 1 << 32
CODEC_NAMES = ("none", "lz4", "zlib")
#: Packets one pack input holds at most.
MAX_PACKETS = 200


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    cfg = inp.u8()
    if cfg & 1:
        fl = read_layout(inp)
    else:
        fl = FuzzLayout(fp.GAME, ref.GAME)
    mode = cfg >> 1 & 3
    raw_limit = DEFAULT_MAX_RAW_SIZE if mode == 0 else inp.u16() if mode == 1 else inp.u8() if mode == 2 else 0
    direct = use_lz4_direct(not cfg >> 3 & 1)
    if cfg >> 7:
        check_pack(inp, fl, raw_limit, direct)
    else:
        frame = build_aggregate(fl, inp) if cfg >> 5 & 1 else inp.rest()
        check_unpack(fl, bytearray(frame) if cfg >> 4 & 1 else frame, raw_limit, bool(cfg >> 6 & 1))


def check_unpack(fl: FuzzLayout, frame: Any, raw_limit: int, layout_argument: bool) -> None:
    try:
        want: Optional[List[Any]] = [fl.row(p) for p in ref_agg.ref_unpack(bytes(frame), max_raw_size=raw_limit,
                                                                            layout=fl.ref)]
        check = ""
    except ref_agg.RefAggregateError as e:
        want, check = None, e.check
    if layout_argument:
        agg = fp.Aggregator(max_raw_size=raw_limit)
        unpack = lambda: agg.unpack(frame, layout=fl.native)  # noqa: E731
    else:
        agg = fp.Aggregator(max_raw_size=raw_limit, layout=fl.native)
        unpack = lambda: agg.unpack(frame)  # noqa: E731
    before = agg.stats
    try:
        batch = unpack()
    except fp.AggregateError as err:
        expect(want is None, "unpack refused a frame the reference opens", err)
        expect(err.check == check, "a different check failed", err.check, check, err)
        expect(f"({check})" in str(err), "the message does not name the check", err)
        expect(agg.stats["rejected"] == before["rejected"] + 1 and agg.stats["unpacked"] == before["unpacked"],
               "stats did not count one rejection", before, agg.stats)
        return
    expect(want is not None, f"unpack opened a frame the reference refuses ({check})")
    got = batch_rows(batch, fl)
    expect(got == want, "unpacked packets differ", got, want)
    expect(agg.stats["unpacked"] == before["unpacked"] + 1, "stats did not count one unpacked frame")


def frame_limit(fl: FuzzLayout, max_frame_size: Optional[int]) -> int:
    """Largest whole frame the layout's length field (and max_frame_size) allows."""
    field_max = fl.ref.field_max(fl.ref.length_field)
    limit = LENGTH_SATURATION if field_max >= LENGTH_SATURATION else fl.ref.frame_size(field_max)
    return min(limit, max_frame_size) if max_frame_size else limit


def fits(fl: FuzzLayout, name: str, value: int) -> bool:
    return name not in fl.names or value <= fl.ref.field_max(name)


def check_pack(inp: Reader, fl: FuzzLayout, raw_limit: int, direct: bool) -> None:
    codec = inp.u8() % 3
    threshold, min_saving, level = inp.u16(), inp.u8() / 256, inp.u8() % 10
    extra = inp.u16()
    head = fl.hs + AGG_HEADER.size
    max_frame_size = head + extra if extra else None
    seq, pid, mode = inp.u32(), inp.u32(), inp.u8()
    packets: List[bytes] = []
    while inp.remaining and len(packets) < MAX_PACKETS:
        t, s, p, n = inp.u16(), inp.u16(), inp.u8(), inp.u8()
        encoded = encode_packet(fl, t, inp.take(n), s, p)
        if encoded is not None:
            packets.append(encoded)
    batch = fp.FrameDecoder(fl.native, max_packet_size=ANY_PACKET_SIZE).feed(b"".join(packets))
    subset = mode >> 1 & 3
    if subset == 1:
        batch, packets = batch[::2], packets[::2]  # not back to back: the body is gathered
    elif subset == 2 and fl.type_at is not None and len(batch):
        first = fl.row(packets[0])[fl.type_at]
        batch = batch.by_type()[first]
        packets = [p for p in packets if fl.row(p)[fl.type_at] == first]
    agg = fp.Aggregator(CODEC_NAMES[codec], threshold, min_saving, raw_limit, level=level,
                        max_frame_size=max_frame_size, layout=fl.native)
    rows = [fl.row(p) for p in packets]
    limit = frame_limit(fl, max_frame_size)
    carries = fl.carries_aggregates and fits(fl, "seq", seq) and fits(fl, "player_id", pid)
    nested = any(fl.type_at is not None and r[fl.type_at] == AGGREGATE_TYPE for r in rows)
    if mode & 1:
        check_pack_many(agg, batch, fl, rows, packets, seq, pid, carries, nested, limit, raw_limit, head, codec)
        return
    raw = sum(len(p) for p in packets)
    # the frame the reference's sender makes; liblz4 called directly may
    # compress to another size, and then only the rule itself is checked
    body = b"".join(packets)
    used, on_wire = 0, body
    tried = codec != 0 and raw >= threshold
    if tried:
        c = ref_agg.ref_compress(codec, body, level)
        if len(c) < (1.0 - min_saving) * raw:
            used, on_wire = codec, c
    representable = lambda n: 0 <= fl.ref.length_value(n) and n <= limit  # noqa: E731
    if codec != 1 or not direct:
        refuse = not carries or raw > raw_limit or not representable(head + len(on_wire))
        try:
            frame = agg.pack(batch, seq=seq, player_id=pid)
        except ValueError as err:
            expect(refuse, "pack refused a batch that fits", err, raw, limit)
            return
        expect(not refuse, "pack made a frame it should have refused", raw, raw_limit, limit)
        want = encode_packet(fl, AGGREGATE_TYPE, AGG_HEADER.pack(used, 0, len(packets), raw) + on_wire, seq, pid)
        expect(frame == want, "the frame is not the reference sender's", frame, want)
    else:
        try:
            frame = agg.pack(batch, seq=seq, player_id=pid)
        except ValueError as err:
            expect(not carries or raw > raw_limit or not representable(head + raw)
                   or (tried and not representable(head)), "pack refused a batch that fits", err, raw, limit)
            return
        expect(carries and raw <= raw_limit and representable(len(frame)), "pack made a frame it should have "
               "refused", raw, raw_limit, len(frame), limit)
        got_codec, clen = frame[fl.hs], len(frame) - head
        expect(got_codec in (0, codec), "an unexpected codec", got_codec)
        expect(got_codec == 0 or (tried and clen < (1.0 - min_saving) * raw), "compressed against the rule",
               raw, clen, threshold, min_saving)
    open_and_compare(frame, fl, rows, nested)


def open_and_compare(frame: bytes, fl: FuzzLayout, rows: List[Any], nested: bool) -> None:
    try:
        opened = [fl.row(p) for p in ref_agg.ref_unpack(frame, max_raw_size=ANY_RAW_SIZE, layout=fl.ref)]
    except ref_agg.RefAggregateError as e:
        # a batch holding aggregate-typed packets packs into a frame every
        # receiver refuses: the one refusal allowed
        expect(nested and e.check == "nested", "the reference cannot open our frame", e.check)
        return
    expect(not nested, "a nested aggregate went unnoticed")
    expect(opened == rows, "the reference opens other packets", opened, rows)


def check_pack_many(agg: Any, batch: Any, fl: FuzzLayout, rows: List[Any], packets: List[bytes], seq: int,
                    pid: int, carries: bool, nested: bool, limit: int, raw_limit: int, head: int,
                    codec: int) -> None:
    max_body = max(0, min(limit - head, raw_limit))
    sizes = [len(p) for p in packets]
    splittable = carries and all(s <= max_body for s in sizes)
    ends = ref_agg.ref_split(sizes, max_body) if splittable else []
    starts = [0] + ends[:-1]
    run_raws = [sum(sizes[a:b]) for a, b in zip(starts, ends)] or [0]  # an empty batch: one empty frame
    # a length field that counts less than the whole frame cannot announce
    # frames below its bias: such runs are refused at encoding
    too_short = any(fl.ref.length_value(head + r) < 0 or head + r > limit for r in run_raws) or (
        codec != 0 and fl.ref.length_value(head + 1) < 0)
    try:
        frames = agg.pack_many(batch, seq=seq, player_id=pid)
    except ValueError as err:
        expect(not splittable or too_short, "pack_many refused a batch it can split", err, sizes, max_body)
        return
    expect(splittable, "pack_many split what cannot be split", sizes, max_body)
    expect(len(frames) == len(run_raws), "another number of frames than the greedy split", len(frames), ends)
    for frame, a, b in zip(frames, starts or [0], ends or [0]):
        expect(len(frame) <= limit, "a frame over the limit", len(frame), limit)
        part = rows[a:b]
        open_and_compare(frame, fl, part, any(fl.type_at is not None and r[fl.type_at] == AGGREGATE_TYPE
                                              for r in part))


if __name__ == "__main__":
    run(test_one_input)
