"""Aggregation: a batch of packets packed into one compressed aggregate frame.

An aggregate frame is an ordinary packet of the batch's layout whose type is
0xFFFF; its payload is an 8-byte aggregate header (codec u8, flags u8,
count u16, raw_size u32, little-endian) and a body of ``count`` whole
packets back to back, compressed by ``codec`` (0 none, 1 lz4 block, 2 zlib);
docs/wire-format.md is the normative spec.

    agg = fp.Aggregator()                       # lz4, compress bodies >= 1 KiB
    frame = agg.pack(batch)                     # bytes: one frame
    batch = agg.unpack(frame)                   # PacketBatch
    dec = fp.FrameDecoder(aggregator=agg)       # unwraps aggregates in a stream

The body is gathered in C++ (csrc/fastpacket/aggregate.hpp) in one pass;
the codecs are the ``lz4`` package's ``lz4.block`` (``store_size=False``:
raw_size travels in our header) and ``zlib``, both of which release the GIL
while they run, so several threads can pack at once.

Receiving side, every check raises AggregateError (a ProtocolError) whose
``check`` names it, and none of the frame's packets is delivered:

- ``frame``: not exactly one packet, or too short for the aggregate header;
- ``type``: the packet's type is not 0xFFFF;
- ``flags``: the reserved flags byte is not 0;
- ``codec``: an unknown codec;
- ``max_raw_size``: raw_size above max_raw_size, refused *before*
  decompressing (a frame never makes us allocate more than max_raw_size);
- ``count``: count cannot fit raw_size, or the body holds another number;
- ``raw_size``: the body is not exactly raw_size bytes;
- ``decompress``: the codec rejects the body (corrupt or truncated);
- ``packet_size``: an inner packet's size is below the header or past the body;
- ``nested``: an inner packet is itself an aggregate.

``exc.offset`` is relative to the frame for header checks and to the
decompressed body for inner-packet checks; a FrameDecoder also sets
``exc.stream_offset`` (the frame's offset in the stream) and ``exc.batch``
(the packets before the frame), and then fails until ``reset()``.
"""

from typing import Dict

from fastpacket import _native
from fastpacket._native import Aggregator

__all__ = ["Aggregator", "CODECS", "AGGREGATE_TYPE", "AGGREGATE_HEADER_SIZE", "DEFAULT_MAX_RAW_SIZE", "MAX_RAW_SIZE",
           "DEFAULT_THRESHOLD", "DEFAULT_MIN_SAVING"]

# Aggregator is a native class: its argument checks and docstring are on
# the class. Every constant comes from the native module (the C++ core).

#: Codec names and their numbers on the wire.
CODECS: Dict[str, int] = _native.CODECS
#: Packet type of aggregate frames.
AGGREGATE_TYPE: int = _native.AGGREGATE_TYPE
#: Bytes of the aggregate header (codec, flags, count, raw_size).
AGGREGATE_HEADER_SIZE: int = _native.AGGREGATE_HEADER_SIZE
#: Default bound on a frame's raw body, in bytes (1 MiB).
DEFAULT_MAX_RAW_SIZE: int = _native.DEFAULT_MAX_RAW_SIZE
#: Largest max_raw_size, in bytes: what every codec path handles (liblz4's
#: LZ4_MAX_INPUT_SIZE, 0x7E000000), so no raw_size ever reaches a codec as
#: a negative int.
MAX_RAW_SIZE: int = _native.MAX_RAW_SIZE
#: Bodies smaller than this many bytes are sent raw by default (1024).
DEFAULT_THRESHOLD: int = _native.DEFAULT_THRESHOLD
#: A compressed body is kept by default when it saves at least this fraction (0.10).
DEFAULT_MIN_SAVING: float = _native.DEFAULT_MIN_SAVING
