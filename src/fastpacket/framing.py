"""Stream framing: FrameDecoder turns a TCP byte stream into PacketBatches
of Packets (docs/wire-format.md is the normative wire format).

The scan for complete frames runs in C++ (csrc/fastpacket/framing.hpp);
each feed copies the bytes of its complete packets once into the batch (or
keeps an immutable ``bytes`` input as it is when it holds exactly whole
packets) and keeps an incomplete tail of at most one packet for the next.

A PacketBatch holds many packets over one buffer that it keeps alive: numpy
columns (``types``, ``seqs``, ``player_ids``, ``sizes``, ``headers``),
zero-copy payloads, ``by_type()`` groups, ``PacketBatch.build`` to make one.
PacketBatch, Packet and FrameDecoder are native classes; their docstrings
are on the classes.

Errors: a header announcing a size below the header size or above
``max_packet_size`` raises ProtocolError; the complete packets of that feed
before the bad one are on the exception as ``exc.batch``. The decoder then
refuses input until ``reset()``.
"""

from fastpacket import _native
from fastpacket._native import FrameDecoder, Packet, PacketBatch

__all__ = ["FrameDecoder", "Packet", "PacketBatch", "DEFAULT_MAX_PACKET_SIZE", "MAX_PACKET_SIZE"]

#: Default max_packet_size: the largest size GAME's u16 size field can hold
#: (65535; from the C++ core, like every constant it defines).
DEFAULT_MAX_PACKET_SIZE: int = _native.DEFAULT_MAX_PACKET_SIZE
#: Largest max_packet_size a FrameDecoder takes, in bytes (2**32 - 1: a
#: batch's sizes are u32); a larger one is a ValueError.
MAX_PACKET_SIZE: int = _native.MAX_PACKET_SIZE
