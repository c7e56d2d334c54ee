"""The receive ring: RingBuffer, a lock-free single-producer/single-consumer
byte ring the socket reads into and the decoder reads from in place.

    ring = fp.RingBuffer(1 << 20)
    n = sock.recv_into(ring.writable()); ring.commit(n)     # producer
    batch = decoder.feed_from(ring)                         # consumer

On Linux the ring is double-mapped (memfd_create, the same pages mapped twice
back to back), so `readable()`/`writable()` are contiguous across the wrap
point and the only copy on the receive path is the one into the batch.
Elsewhere, or with ``RingBuffer(capacity, double_map=False)``, views stop at
the wrap point (call again for the rest); `read`, `write`, `peek` and
`FrameDecoder.feed_from` handle the wrap either way.

Threads: one producer thread (`write`, `writable`, `commit`) and one consumer
thread (`read`, `peek`, `readable`, `consume`, `feed_from`) may use a ring at
once without a lock; `write`/`read`/`peek` release the GIL around copies of
RING_NOGIL_MIN_BYTES and more.

Views: keeping a view is safe. A `readable()` view pins its bytes: consuming
them is allowed, but the producer does not overwrite them until the view is
released. A `writable()` view stays valid across `commit()` (asyncio keeps
get_buffer()'s view alive while it calls buffer_updated()), and the producer
does not write a lap past it while it is alive. Holding views only shrinks
`free`; release them (``del``, ``memoryview.release()`` or ``with``) when
done. At most 64 views per side may be alive (BufferError beyond).
"""

from fastpacket import _native
from fastpacket._native import RingBuffer

__all__ = ["RingBuffer", "RING_NOGIL_MIN_BYTES", "MAX_LIVE_VIEWS"]

#: write/read/peek copies of at least this many bytes release the GIL.
RING_NOGIL_MIN_BYTES: int = _native.RING_NOGIL_MIN_BYTES
#: Views of one side of a ring that may be alive at once.
MAX_LIVE_VIEWS: int = _native.MAX_LIVE_VIEWS
