"""A pure-Python reference model of aggregate frames (docs/wire-format.md),
written from the spec and independent of fastpacket: an encoder
that applies the sender's rule, an encoder that writes any (even wrong)
header, and a decoder that makes the receiver's checks in the same order
as fastpacket and names the failed one.

Layouts are described by a struct format whose first field is the length
(whole packet, header included) and second the type, as in GAME "<HHII",
or (unpacking) by a tests/reference.py RefLayout: any length field, the
field named "type" as the type (none: no packet is an aggregate).
"""

from __future__ import annotations

import struct
import zlib
from typing import Any, Callable, List, Optional, Sequence, Tuple

import lz4.block

GAME_FORMAT = "<HHII"
AGGREGATE_TYPE = 0xFFFF
AGG_HEADER = struct.Struct("<BBHI")  # codec, flags, count, raw_size
CODEC_NONE, CODEC_LZ4, CODEC_ZLIB = 0, 1, 2
CODEC_NUMBERS = {"none": CODEC_NONE, "lz4": CODEC_LZ4, "zlib": CODEC_ZLIB}


def ref_packet(ptype: int, payload: bytes, *rest: int, fmt: str = GAME_FORMAT) -> bytes:
    """One packet: header (size, type, *rest; missing fields 0) then payload."""
    h = struct.Struct(fmt)
    nfields = len(h.unpack(bytes(h.size)))
    rest = tuple(rest) + (0,) * (nfields - 2 - len(rest))
    return h.pack(h.size + len(payload), ptype, *rest) + payload


def ref_compress(codec: int, body: bytes, level: int = 6) -> bytes:
    if codec == CODEC_LZ4:
        return lz4.block.compress(body, store_size=False)
    if codec == CODEC_ZLIB:
        return zlib.compress(body, level)
    return body


def ref_raw_frame(
    body_on_wire: bytes,
    *,
    codec: int,
    count: int,
    raw_size: int,
    flags: int = 0,
    ptype: int = AGGREGATE_TYPE,
    rest: Sequence[int] = (0, 0),
    fmt: str = GAME_FORMAT,
    size_delta: int = 0,
) -> bytes:
    """An aggregate frame with whatever header fields the caller gives
    (for corruption tests): `size_delta` is added to the length field."""
    h = struct.Struct(fmt)
    payload = AGG_HEADER.pack(codec, flags, count, raw_size) + body_on_wire
    return h.pack(h.size + len(payload) + size_delta, ptype, *rest) + payload


def ref_pack(
    packets: Sequence[bytes],
    codec: str = "lz4",
    *,
    threshold: int = 1024,
    min_saving: float = 0.10,
    level: int = 6,
    seq: int = 0,
    player_id: int = 0,
    fmt: str = GAME_FORMAT,
) -> bytes:
    """The frame a conforming sender makes: compress only a body of at least
    `threshold` bytes, keep it only if smaller than (1 - min_saving) * body."""
    body = b"".join(packets)
    number = CODEC_NUMBERS[codec]
    on_wire, used = body, CODEC_NONE
    if number != CODEC_NONE and len(body) >= threshold:
        c = ref_compress(number, body, level)
        if len(c) < (1.0 - min_saving) * len(body):
            on_wire, used = c, number
    return ref_raw_frame(on_wire, codec=used, count=len(packets), raw_size=len(body), rest=(seq, player_id), fmt=fmt)


class RefAggregateError(Exception):
    def __init__(self, check: str) -> None:
        super().__init__(check)
        self.check = check


def _size_and_type(fmt: str, layout: Any) -> Tuple[int, Callable[[bytes, int], Tuple[int, Optional[int]]]]:
    """(header size, read) where read(buf, pos) gives the whole size and the
    type (None without a type field) of the packet at buf[pos]."""
    if layout is None:
        h = struct.Struct(fmt)

        def read_fmt(buf: bytes, pos: int) -> Tuple[int, Optional[int]]:
            size, ptype = h.unpack_from(buf, pos)[:2]
            return size, ptype

        return h.size, read_fmt
    s = layout.struct
    names = [name for name, _ in layout.fields]
    length_at = names.index(layout.length_field)
    type_at = names.index("type") if "type" in names else None

    def read_layout(buf: bytes, pos: int) -> Tuple[int, Optional[int]]:
        values = s.unpack_from(buf, pos)
        return layout.frame_size(values[length_at]), None if type_at is None else values[type_at]

    return s.size, read_layout


def ref_unpack(frame: bytes, *, max_raw_size: int = 1 << 20, fmt: str = GAME_FORMAT,
               layout: Any = None, max_packet_size: Optional[int] = None) -> List[bytes]:
    """The packets of one aggregate frame, or RefAggregateError(check).
    `layout` (a RefLayout), when given, replaces `fmt`; with
    `max_packet_size`, a packet inside larger than it fails the check
    "max_packet_size" (wire format 3.3, check 12)."""
    hs, size_and_type = _size_and_type(fmt, layout)
    if len(frame) < hs + AGG_HEADER.size:
        raise RefAggregateError("frame")
    size, ptype = size_and_type(frame, 0)
    if size != len(frame):
        raise RefAggregateError("frame")
    if ptype != AGGREGATE_TYPE:
        raise RefAggregateError("type")
    codec, flags, count, raw_size = AGG_HEADER.unpack_from(frame, hs)
    if flags != 0:
        raise RefAggregateError("flags")
    if codec > CODEC_ZLIB:
        raise RefAggregateError("codec")
    if raw_size > max_raw_size:
        raise RefAggregateError("max_raw_size")
    if count * hs > raw_size:
        raise RefAggregateError("count")
    src = frame[hs + AGG_HEADER.size:]
    if codec == CODEC_NONE:
        if len(src) != raw_size:
            raise RefAggregateError("raw_size")
        body = src
    elif codec == CODEC_LZ4:
        try:
            body = lz4.block.decompress(src, uncompressed_size=raw_size)
        except lz4.block.LZ4BlockError:
            raise RefAggregateError("decompress") from None
        if len(body) != raw_size:
            raise RefAggregateError("raw_size")
    else:
        d = zlib.decompressobj()
        try:
            body = d.decompress(src, raw_size + 1)
        except zlib.error:
            raise RefAggregateError("decompress") from None
        if len(body) > raw_size:
            raise RefAggregateError("raw_size")
        if not d.eof:
            raise RefAggregateError("decompress")
        if len(body) != raw_size:
            raise RefAggregateError("raw_size")
        if d.unused_data:
            raise RefAggregateError("decompress")
    packets = []
    pos = 0
    for _ in range(count):
        if len(body) - pos < hs:
            raise RefAggregateError("count" if pos == len(body) else "packet_size")
        size, ptype = size_and_type(body, pos)
        if size < hs:
            raise RefAggregateError("packet_size")
        if max_packet_size is not None and size > max_packet_size:
            raise RefAggregateError("max_packet_size")
        if size > len(body) - pos:
            raise RefAggregateError("packet_size")
        if ptype == AGGREGATE_TYPE:
            raise RefAggregateError("nested")
        packets.append(body[pos:pos + size])
        pos += size
    if pos != len(body):
        raise RefAggregateError("count")
    return packets


def ref_unwrap_stream(packets: Sequence[bytes], max_raw_size: int = 1 << 20, fmt: str = GAME_FORMAT) -> List[bytes]:
    """A stream's packets with each aggregate replaced by its packets."""
    h = struct.Struct(fmt)
    out: List[bytes] = []
    for p in packets:
        if h.unpack_from(p)[1] == AGGREGATE_TYPE:
            out.extend(ref_unpack(p, max_raw_size=max_raw_size, fmt=fmt))
        else:
            out.append(p)
    return out


def ref_split(sizes: Sequence[int], max_body: int, max_count: int = 0xFFFF) -> List[int]:
    """pack_many's runs: end index of each run (greedy, in order)."""
    ends: List[int] = []
    total = n = 0
    for i, s in enumerate(sizes):
        if n == max_count or total + s > max_body:
            ends.append(i)
            total = n = 0
        total += s
        n += 1
    if n:
        ends.append(len(sizes))
    return ends
