"""Stream framing: FrameDecoder turns a TCP byte stream into PacketBatches.

The scan for complete frames runs in C++ (csrc/fastpacket/framing.hpp);
each feed copies the bytes of its complete packets once into the batch (or
keeps an immutable ``bytes`` input as it is when it holds exactly whole
packets) and keeps an incomplete tail of at most one packet for the next.

Errors: a header announcing a size below the header size or above
``max_packet_size`` raises ProtocolError; the complete packets of that feed
before the bad one are on the exception as ``exc.batch``. The decoder then
refuses input until ``reset()``.
"""

from fastpacket._native import FrameDecoder

__all__ = ["FrameDecoder", "DEFAULT_MAX_PACKET_SIZE"]

#: Default max_packet_size: the largest size GAME's u16 size field can hold.
DEFAULT_MAX_PACKET_SIZE = 65535
