"""Header layouts and single-packet encoding.

A HeaderLayout names the unsigned fields of a packet header (u8, u16, u32,
u64, all little- or all big-endian), which field holds the frame length and
whether that length counts the header (Netty's LengthFieldBasedFrameDecoder
is the model: the field's offset and width, plus an adjustment). GAME, the
default, is ``<HHII``: size (whole packet), type, seq, player_id.
docs/wire-format.md is the normative wire format.

Fields named ``type``, ``seq`` and ``player_id`` take those roles (for
PacketBatch.types, Packet.seq, encode(), SendBuffer) unless other names are
given with ``type_field=``, ``seq_field=`` and ``player_id_field=``.

HeaderLayout is a native class (its argument checks and docstring are on
the class); layouts are immutable, hashable, compare by value and pickle.
"""

from typing import Dict

from fastpacket import _native
from fastpacket._native import GAME, HeaderLayout, encode

__all__ = ["HeaderLayout", "GAME", "encode", "FIELD_KINDS", "MAX_HEADER_SIZE"]

#: Field kinds a header may use, and their widths in bytes.
FIELD_KINDS: Dict[str, int] = _native.FIELD_KINDS
#: Largest header a layout may describe, in bytes.
MAX_HEADER_SIZE: int = _native.MAX_HEADER_SIZE
