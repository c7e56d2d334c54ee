# Ring (_ring.pxi): the lock-free SPSC byte ring of the receive path, its
# views, and FrameDecoder.feed_from(ring).

cdef class RingBuffer

# Ring copies of at least this many bytes run with the GIL released, so a
# producer and a consumer thread copy at the same time. Lower than
# NOGIL_MIN_BYTES: here the other side of the ring is usually a thread
# waiting for exactly this GIL. (cpdef: exported, fastpacket.ring re-exports it.)
cpdef enum:
    RING_NOGIL_MIN_BYTES = 4096


@cython.final
cdef class _RingView:
    cdef RingBuffer _ring
    cdef uint8_t* _ptr
    cdef Py_ssize_t _len
    cdef uint64_t _index
    cdef bint _writable


@cython.final
cdef class _RingHead:
    cdef RingBuffer _ring               # the ring the next export is of (set by its user)
    cdef RingBuffer _pinned             # the ring of the live export(s), else None
    cdef uint64_t _index                # the head index they pin
    cdef Py_ssize_t _exports            # live exports (all of one head index)


cdef class RingBuffer:
    cdef CppRingBuffer* _c

    cdef bytes _copy_out(self, Py_ssize_t n, bint consume)
    cdef _RingView _view(self, RingSpan s, uint64_t index, bint writable)


cdef PacketBatch _feed_from_ring(FrameDecoder dec, object ring_obj)
cdef PacketBatch _feed_from_ring_lent(FrameDecoder dec, RingBuffer ring)
cdef int _lend_frames(PacketBatch b, RingBuffer ring, const uint8_t* p, size_t nbytes) except -1
