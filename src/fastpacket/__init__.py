"""fastpacket: the packet core for Python real-time servers.

A C++17 core with Cython bindings frames TCP byte streams into packet
batches, coalesces replies into few large writes, packs and compresses
packet batches and records lock-free metrics::

    import fastpacket as fp
    dec = fp.FrameDecoder()
    for packet in dec.feed(data):
        print(packet.type, packet.seq, packet.player_id, bytes(packet.payload))

``fastpacket.aio`` serves connections on asyncio; ``fastpacket.run(app,
...)`` (fastpacket.runtime) serves an app on N worker processes with TLS,
Unix sockets, /metrics and graceful shutdown, as ``fastpacket serve`` does;
``fastpacket.cluster`` lets groups (rooms) span workers and machines over
Redis.
"""

from fastpacket.errors import (AddressInUse, AggregateError, BufferFull, BusUnavailable, FastpacketError,
                               ProtocolError)
from fastpacket.layout import GAME, HeaderLayout, encode
from fastpacket.framing import FrameDecoder, Packet, PacketBatch
from fastpacket.ring import RingBuffer
from fastpacket.sendbuf import SendBuffer
from fastpacket.aggregate import Aggregator
from fastpacket import metrics
from fastpacket.metrics import Registry
from fastpacket import aio
from fastpacket.runtime import run

#: The package version (PEP 440), the same as in its metadata.
__version__ = "0.1.0"

__all__ = [
    "AddressInUse",
    "AggregateError",
    "Aggregator",
    "BufferFull",
    "BusUnavailable",
    "FastpacketError",
    "FrameDecoder",
    "GAME",
    "HeaderLayout",
    "Packet",
    "PacketBatch",
    "ProtocolError",
    "Registry",
    "RingBuffer",
    "SendBuffer",
    "encode",
    "run",
    "aio",
    "metrics",
    "__version__",
]
