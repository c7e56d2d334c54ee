"""A small pure-Python model of the fastpacket wire format, written from
the spec (docs/wire-format.md) and independently of the native code, for
differential tests.

A layout here is a plain description: fields [(name, kind)], the length
field, whether the length counts the header, the byte order. Packets are
(type, seq, player_id, payload) tuples; fields a layout lacks are ignored.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

KIND_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
AGGREGATE_TYPE = 0xFFFF


@dataclass(frozen=True)
class RefLayout:
    fields: Tuple[Tuple[str, str], ...]
    length_field: str
    length_includes_header: bool = True
    byteorder: str = "little"
    length_adjustment: int = 0

    @property
    def struct(self) -> struct.Struct:
        order = "<" if self.byteorder == "little" else ">"
        return struct.Struct(order + "".join(KIND_CODES[k] for _, k in self.fields))

    @property
    def size(self) -> int:
        return self.struct.size

    def field_max(self, name: str) -> int:
        kind = dict(self.fields)[name]
        return (1 << (8 * struct.calcsize(KIND_CODES[kind]))) - 1

    def frame_size(self, length_value: int) -> int:
        return length_value + (0 if self.length_includes_header else self.size) + self.length_adjustment

    def length_value(self, frame_size: int) -> int:
        return frame_size - (0 if self.length_includes_header else self.size) - self.length_adjustment

    @property
    def max_frame(self) -> int:
        return self.frame_size(self.field_max(self.length_field))


GAME = RefLayout((("size", "u16"), ("type", "u16"), ("seq", "u32"), ("player_id", "u32")), "size")
# A u32 big-endian length that excludes the header.
BIG_U32 = RefLayout((("len", "u32"), ("type", "u16"), ("seq", "u32")), "len", False, "big")
# A u8 length (excluding the header) after a u8 type.
TINY_U8 = RefLayout((("type", "u8"), ("len", "u8")), "len", False, "little")


def encode_packet(layout: RefLayout, ptype: int, payload: bytes, seq: int = 0, player_id: int = 0) -> bytes:
    values = []
    frame = layout.size + len(payload)
    for name, _ in layout.fields:
        if name == layout.length_field:
            values.append(layout.length_value(frame))
        elif name == "type":
            values.append(ptype)
        elif name == "seq":
            values.append(seq)
        elif name == "player_id":
            values.append(player_id)
        else:
            values.append(0)
    return layout.struct.pack(*values) + payload


def decode_stream(layout: RefLayout, stream: bytes, max_packet_size: int) -> Tuple[List[dict], Optional[int], int]:
    """Decode a whole stream: (packets, offset of the first bad header or
    None, bytes left over in an incomplete tail). Each packet is a dict of
    every header field plus 'payload' and 'size'."""
    packets = []
    pos = 0
    hs = layout.size
    names = [n for n, _ in layout.fields]
    while len(stream) - pos >= hs:
        values = dict(zip(names, layout.struct.unpack_from(stream, pos)))
        frame = layout.frame_size(values[layout.length_field])
        if frame < hs or frame > max_packet_size:
            return packets, pos, 0
        if len(stream) - pos < frame:
            break
        values["payload"] = bytes(stream[pos + hs:pos + frame])
        values["size"] = frame
        packets.append(values)
        pos += frame
    return packets, None, len(stream) - pos


def chunk(stream: bytes, cuts: Sequence[int]) -> List[bytes]:
    """Split `stream` at the sorted, de-duplicated positions `cuts`."""
    points = sorted({c for c in cuts if 0 < c < len(stream)})
    out = []
    prev = 0
    for c in points + [len(stream)]:
        out.append(stream[prev:c])
        prev = c
    return out


def encode_all(layout: RefLayout, packets: Iterable[Tuple[int, int, int, bytes]]) -> bytes:
    return b"".join(encode_packet(layout, t, p, s, pid) for t, s, pid, p in packets)


def payload_records(payloads: Sequence[bytes], itemsize: int) -> Tuple[bytes, List[bool]]:
    """Payload records as the spec of PacketBatch.payload_array reads them:
    the first `itemsize` bytes of each payload, back to back (zeros in place
    of a payload shorter than that), and which payloads were long enough."""
    out = []
    valid = []
    for p in payloads:
        ok = len(p) >= itemsize
        valid.append(ok)
        out.append(bytes(p[:itemsize]) if ok else bytes(itemsize))
    return b"".join(out), valid


def encode_rows(layout: RefLayout, types: Sequence[int], rows: Sequence[bytes], seqs: Sequence[int],
                player_ids: Sequence[int]) -> bytes:
    """One packet per row, as PacketBatch.build and send_array write them."""
    return b"".join(encode_packet(layout, t, r, s, pid) for t, r, s, pid in zip(types, rows, seqs, player_ids))
