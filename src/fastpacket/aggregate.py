"""Aggregation: a batch of packets packed into one compressed aggregate frame.

An aggregate frame is an ordinary packet of the batch's layout whose type is
0xFFFF; its payload is an 8-byte aggregate header (codec u8, flags u8,
count u16, raw_size u32, little-endian) and a body of ``count`` whole
packets back to back, compressed by ``codec`` (0 none, 1 lz4 block, 2 zlib).

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

from __future__ import annotations

import math
from typing import Optional, Union

from fastpacket import _native
from fastpacket.layout import GAME, HeaderLayout

__all__ = ["Aggregator", "CODECS", "AGGREGATE_TYPE", "AGGREGATE_HEADER_SIZE", "DEFAULT_MAX_RAW_SIZE"]

#: Codec names and their numbers on the wire.
CODECS = {"none": 0, "lz4": 1, "zlib": 2}
#: Packet type of aggregate frames.
AGGREGATE_TYPE = 0xFFFF
#: Bytes of the aggregate header (codec, flags, count, raw_size).
AGGREGATE_HEADER_SIZE = 8
#: Default bound on a frame's raw body, in bytes (1 MiB).
DEFAULT_MAX_RAW_SIZE = 1 << 20
_MAX_RAW_SIZE_FIELD = 0xFFFFFFFF  # raw_size is a u32


class Aggregator(_native.NativeAggregator):
    """Aggregator(codec="lz4", threshold=1024, min_saving=0.10, max_raw_size=1 << 20, ...)

    Packs a PacketBatch into aggregate frames and unpacks them, checking
    every field of untrusted frames.

    Args:
        codec: ``"none"``, ``"lz4"`` or ``"zlib"`` (or 0, 1, 2).
        threshold: bodies smaller than this many bytes are sent raw (codec 0).
        min_saving: a compressed body is kept only when it is smaller than
            ``(1 - min_saving) * body``; otherwise the frame goes raw.
        max_raw_size: largest raw body pack() makes and unpack() accepts,
            in bytes; unpack() refuses a larger raw_size before
            decompressing anything.
        level: zlib compression level, 0..9 (default 6).
        acceleration: lz4 acceleration, >= 1 (1 is lz4's default; higher is
            faster and compresses less).
        max_frame_size: cap on a whole frame in bytes, header included, for
            peers whose decoder has a lower max_packet_size; default: what the
            layout's length field can hold (65535 for GAME).
        layout: the layout unpack() reads frames in (default GAME); pack()
            writes frames in the batch's own layout.

    ``stats`` counts frames compressed and left raw, bytes in and out, and
    frames unpacked and rejected, correctly when several threads pack or
    unpack at once (atomic counters).
    """

    def __init__(
        self,
        codec: Union[str, int] = "lz4",
        threshold: int = 1024,
        min_saving: float = 0.10,
        max_raw_size: int = DEFAULT_MAX_RAW_SIZE,
        *,
        level: int = 6,
        acceleration: int = 1,
        max_frame_size: Optional[int] = None,
        layout: HeaderLayout = GAME,
    ) -> None:
        if isinstance(codec, str):
            if codec not in CODECS:
                raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
            number = CODECS[codec]
        elif isinstance(codec, int) and not isinstance(codec, bool) and codec in CODECS.values():
            number = codec
        else:
            raise ValueError(f"codec must be one of {sorted(CODECS)} or 0..2, got {codec!r}")
        if not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be a non-negative int (bytes), got {threshold!r}")
        if not isinstance(min_saving, (int, float)) or not math.isfinite(min_saving) or not 0 <= min_saving < 1:
            raise ValueError(f"min_saving must be in [0, 1), got {min_saving!r}")
        if not isinstance(max_raw_size, int) or not 0 <= max_raw_size <= _MAX_RAW_SIZE_FIELD:
            raise ValueError(f"max_raw_size must be an int in [0, {_MAX_RAW_SIZE_FIELD}], got {max_raw_size!r}")
        if not isinstance(level, int) or not 0 <= level <= 9:
            raise ValueError(f"level must be a zlib level 0..9, got {level!r}")
        if not isinstance(acceleration, int) or acceleration < 1:
            raise ValueError(f"acceleration must be an int >= 1, got {acceleration!r}")
        if not isinstance(layout, HeaderLayout):
            raise TypeError(f"layout must be a fastpacket.HeaderLayout, not {type(layout).__name__!r}")
        min_frame = layout.size + AGGREGATE_HEADER_SIZE
        if max_frame_size is not None and (not isinstance(max_frame_size, int) or max_frame_size < min_frame):
            raise ValueError(f"max_frame_size must be an int >= {min_frame} (header + aggregate header), "
                             f"got {max_frame_size!r}")
        self._configure(number, level, acceleration, threshold, float(min_saving), max_raw_size,
                        max_frame_size or 0, layout)

    def __repr__(self) -> str:
        return (f"Aggregator(codec={self.codec!r}, threshold={self.threshold}, min_saving={self.min_saving}, "
                f"max_raw_size={self.max_raw_size})")

    # pack, pack_many, unpack and stats come from the native half (their
    # docstrings are on NativeAggregator).
