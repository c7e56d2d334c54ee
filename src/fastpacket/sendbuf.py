"""Coalesced sends: SendBuffer queues packets (header + payload, encoded in
native code) back to back in one buffer, flushed with one write::

    sb = fp.SendBuffer(max_bytes=65536)
    seq = sb.send(MOVE, payload, player_id=7)      # seq assigned unless given
    sb.broadcast(CHAT, payload, player_ids)       # one packet per id, native loop
    sb.send_batch(batch)                          # relay packets as they are
    sb.send_array(STATE, records, player_ids=ids)  # one packet per row of a numpy array
    if sb.should_flush():
        transport.write(sb.flush())

Double buffering: flush() returns a read-only memoryview of the queued bytes
and switches to a second buffer, so sends continue while the first is being
written. A flushed view stays intact as long as it is referenced: a buffer is
reused only after every view of it is released, otherwise the next flush()
allocates a fresh one. A packet is queued whole or not at all: BufferFull
when it does not fit now (flush and retry), ValueError when it can never fit
or a value does not fit its header field.

``scatter(buffers, type, records)`` queues row i of a numpy array to
``buffers[i]``: one native call for one packet to each of many buffers (a
game tick's per-player state).
"""

from fastpacket import _native
from fastpacket._native import SendBuffer, scatter

__all__ = ["SendBuffer", "scatter", "DEFAULT_MAX_BYTES", "DEFAULT_MIN_PACKETS", "DEFAULT_FILL_RATIO"]

# The defaults come from the C++ core (csrc/fastpacket/sendbuf.hpp).
#: Default capacity of one flush, in bytes.
DEFAULT_MAX_BYTES: int = _native.DEFAULT_MAX_BYTES
#: should_flush() defaults: flush at this many packets ...
DEFAULT_MIN_PACKETS: int = _native.DEFAULT_MIN_PACKETS
#: ... or when this fraction of max_bytes is queued.
DEFAULT_FILL_RATIO: float = _native.DEFAULT_FILL_RATIO
