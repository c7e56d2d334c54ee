# Ring: the lock-free single-producer/single-consumer byte ring of the
# receive path (csrc/fastpacket/ring.hpp), its zero-copy views, and the
# FrameDecoder.feed_from(ring) decode that scans the ring in place.

#: Views of one side of a ring that may be alive at once.
MAX_LIVE_VIEWS = kMaxRingPins


@cython.final
cdef class _RingView:
    """Exports one span of a RingBuffer to a memoryview. Each export pins the
    span's first byte in the ring until it is released (see RingBuffer)."""

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if (flags & PyBUF_WRITABLE) and not self._writable:
            raise BufferError("RingBuffer.readable() views are read-only")
        cdef CppRingBuffer* c = self._ring._c
        cdef bint ok = c.pin_write(self._index) if self._writable else c.pin_read(self._index)
        if not ok:
            raise BufferError(f"more than {kMaxRingPins} views of one side of this RingBuffer are alive; "
                              f"release some (memoryview.release() or del)")
        PyBuffer_FillInfo(buf, self, self._ptr, self._len, not self._writable, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        if self._writable:
            self._ring._c.unpin_write(self._index)
        else:
            self._ring._c.unpin_read(self._index)


@cython.final
cdef class _RingHead:
    """The free space at the head of a RingBuffer as a buffer exporter, made
    once and reused: each export is the writable span at that moment. What
    an asyncio.BufferedProtocol's get_buffer() lends (uvloop acquires it
    with PyObject_GetBuffer, asyncio's selector loop with recv_into), so a
    read makes no view object. Each export pins its first byte like a
    writable() view; the exports alive at once must share one head index
    (the readers of an asyncio protocol release theirs before committing)."""

    def __len__(self):
        if self._ring is None:
            return 0
        return self._ring._c.write_span().size

    def __getitem__(self, key):
        """A memoryview of part of the free space (asyncio's TLS protocol
        reads into ``buf[offset:]``)."""
        return memoryview(self)[key]

    def __getbuffer__(self, Py_buffer* buf, int flags):
        cdef RingBuffer ring = self._ring
        if ring is None:
            raise BufferError("this ring head is not lent")
        cdef CppRingBuffer* c = ring._c
        cdef uint64_t index = c.head_index()
        if self._exports and (ring is not self._pinned or index != self._index):
            raise BufferError("an export of this ring head at another position is still alive")
        cdef RingSpan s = c.write_span()
        if not c.pin_write(index):
            raise BufferError(f"more than {kMaxRingPins} views of one side of this RingBuffer are alive")
        self._pinned = ring
        self._index = index
        self._exports += 1
        PyBuffer_FillInfo(buf, self, s.data, s.size, 0, flags)

    def __releasebuffer__(self, Py_buffer* buf):
        self._pinned._c.unpin_write(self._index)
        self._exports -= 1
        if self._exports == 0:
            self._pinned = None


cdef class RingBuffer:
    """RingBuffer(capacity, double_map=None)

    A byte ring for the receive path: one producer (socket reads) and one
    consumer (the decoder) may use it from two threads at once without a
    lock. The capacity is rounded up to a power of two and at least a page.

    On Linux the ring is double-mapped (the same pages mapped twice back to
    back), so `readable()` and `writable()` are one contiguous view across
    the wrap point. Elsewhere, or with ``double_map=False``, views stop at
    the wrap point and a second call returns the rest; `read`, `write`,
    `peek` and `FrameDecoder.feed_from` handle the wrap either way.
    ``double_map=True`` requires the double map (OSError if unavailable);
    None uses it where available.

    Views are safe to keep: a `readable()` view pins its bytes, so consuming
    them is allowed but the producer will not overwrite them until the view
    is released; a `writable()` view stays valid across `commit()` (asyncio
    holds get_buffer()'s view while calling buffer_updated()) and the
    producer will not write a lap past it while it is alive. A view is never
    left pointing at reused memory; holding one only shrinks `free`.
    Writing through a writable view after committing those bytes is a bug of
    the producer (the consumer may already be reading them).
    """

    def __cinit__(self, capacity, double_map=None):
        capacity = ssize_arg(capacity, "capacity", 1, kMaxRingCapacity)
        cdef bint want_map = double_map is None or double_map
        self._c = new CppRingBuffer()
        if not self._c.init(capacity, want_map):
            raise MemoryError(f"cannot allocate a ring of {capacity} bytes")
        if double_map and not self._c.double_mapped():
            raise OSError(f"cannot double-map a ring of {self._c.capacity()} bytes on this system "
                          f"(memfd_create/mmap failed or unsupported); use double_map=None")

    def __dealloc__(self):
        del self._c

    @property
    def capacity(self):
        """Size of the ring in bytes (a power of two, at least a page)."""
        return self._c.capacity()

    @property
    def double_mapped(self):
        """True when views are contiguous across the wrap point."""
        return self._c.double_mapped()

    @property
    def free(self):
        """Bytes that may be written now."""
        return self._c.free_now()

    def __len__(self):
        """Bytes written (committed) and not yet consumed."""
        return self._c.size()

    def __repr__(self):
        return (f"<RingBuffer {self._c.size()}/{self._c.capacity()} bytes"
                f"{', double-mapped' if self._c.double_mapped() else ''}>")

    # -- producer ----------------------------------------------------------

    def write(self, data):
        """write(data) -> int: copy as much of `data` as fits (any contiguous
        bytes-like); returns the number of bytes written."""
        cdef Py_buffer view
        cdef size_t n, room
        cdef uint64_t head
        get_contiguous_buffer(data, &view, "RingBuffer.write")
        try:
            room = self._c.free_space()
            n = <size_t>view.len if <size_t>view.len < room else room
            head = self._c.head_index()
            if n >= RING_NOGIL_MIN_BYTES:
                with nogil:
                    self._c.store(head, <const uint8_t*>view.buf, n)
            else:
                self._c.store(head, <const uint8_t*>view.buf, n)
            self._c.commit(n)
            return n
        finally:
            PyBuffer_Release(&view)

    def writable(self):
        """writable() -> memoryview: the free space at the head, to fill and
        then commit(n) (for example ``sock.recv_into(ring.writable())``).
        The whole free space when double-mapped, else up to the wrap point.
        Empty when the ring is full."""
        cdef RingSpan s = self._c.write_span()
        return memoryview(self._view(s, self._c.head_index(), True))

    def commit(self, n):
        """commit(n): make `n` bytes written into writable() readable."""
        cdef size_t room = self._c.free_space()
        self._c.commit(ssize_arg(n, "n (bytes to commit)", 0, room))

    # -- consumer ----------------------------------------------------------

    def readable(self):
        """readable() -> memoryview: the bytes at the tail, read-only, without
        copying; consume(n) them when done. Everything readable when
        double-mapped, else up to the wrap point."""
        cdef RingSpan s = self._c.read_span()
        return memoryview(self._view(s, self._c.tail_index(), False))

    def consume(self, n):
        """consume(n): drop `n` bytes from the tail (after reading them
        through readable())."""
        cdef size_t have = self._c.readable()
        self._c.consume(ssize_arg(n, "n (bytes to consume)", 0, have))

    def peek(self, n=-1):
        """peek(n=-1) -> bytes: a copy of up to `n` bytes (all if n < 0) from
        the tail, without consuming them."""
        return self._copy_out(ssize_arg(n, "n", PY_SSIZE_T_MIN, PY_SSIZE_T_MAX), False)

    def read(self, n=-1):
        """read(n=-1) -> bytes: up to `n` bytes (all if n < 0) from the tail,
        consumed."""
        return self._copy_out(ssize_arg(n, "n", PY_SSIZE_T_MIN, PY_SSIZE_T_MAX), True)

    cdef bytes _copy_out(self, Py_ssize_t n, bint consume):
        cdef size_t have = self._c.readable()
        cdef size_t take = have if n < 0 or <size_t>n > have else <size_t>n
        cdef uint64_t tail = self._c.tail_index()
        out = PyBytes_FromStringAndSize(NULL, take)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
        if take >= RING_NOGIL_MIN_BYTES:
            with nogil:
                self._c.load(tail, dst, take)
        else:
            self._c.load(tail, dst, take)
        if consume:
            self._c.consume(take)
        return out

    cdef _RingView _view(self, RingSpan s, uint64_t index, bint writable):
        cdef _RingView v = _RingView.__new__(_RingView)
        v._ring = self
        v._ptr = s.data
        v._len = s.size
        v._index = index
        v._writable = writable
        return v

    @property
    def _pins(self):
        """(read pins, write pins): live views of each side (for tests)."""
        return (self._c.read_pins(), self._c.write_pins())


cdef PacketBatch _concat_batches(HeaderLayout nl, PacketBatch a, PacketBatch b):
    if b._count == 0:
        return a
    if a._count == 0:
        return b
    cdef Py_ssize_t na = a._nbytes, nb = b._nbytes
    data = PyBytes_FromStringAndSize(NULL, na + nb)
    memcpy(PyBytes_AS_STRING(data), a._base, na)
    memcpy(PyBytes_AS_STRING(data) + na, b._base, nb)
    return _batch_over(nl, data, a._count + b._count)


cdef PacketBatch _feed_from_ring(FrameDecoder dec, object ring_obj):
    """FrameDecoder.feed_from(ring): see its docstring."""
    if not isinstance(ring_obj, RingBuffer):
        raise TypeError(f"feed_from needs a fastpacket.RingBuffer, not {type(ring_obj).__name__!r}")
    cdef RingBuffer ring = <RingBuffer>ring_obj
    dec._check_usable()
    cdef RingSpan first, second
    cdef size_t taken = 0, taken2 = 0
    cdef ErrorInfo err
    cdef PacketBatch batch, rest
    ring._c.read_segments(&first, &second)
    if ring._c.double_mapped() or second.size == 0:
        if ring._c.double_mapped():
            first.size += second.size  # the second mapping continues the first
        batch = dec._decode_span(first.data, first.size, None, False, &taken, &err)
    else:
        # Fallback ring, data wrapping: the packet straddling the wrap point
        # is assembled in the decoder's pending buffer (one packet's copy).
        batch = dec._decode_span(first.data, first.size, None, True, &taken, &err)
        if err.kind == FrameError.none:
            try:
                rest = dec._decode_span(second.data, second.size, None, False, &taken2, &err)
            except BaseException:
                ring._c.consume(taken)
                raise
            taken += taken2
            batch = _concat_batches(dec._layout, batch, rest)
    ring._c.consume(taken)
    return dec._finish(batch, err)


cdef int _lend_frames(PacketBatch b, RingBuffer ring, const uint8_t* p, size_t nbytes) except -1:
    """`b`'s data: the ring's `nbytes` readable bytes at the tail (at `p`),
    without a copy, through a read view that pins them: the ring may
    consume them, but its producer writes over them only once the batch,
    and every batch or payload view made from it, is gone. (The ring's
    read_pins() tells its user whether any still lives.)"""
    cdef RingSpan span
    span.data = <uint8_t*>p  # read-only: a read view exports it read-only
    span.size = nbytes
    cdef _RingView v = ring._view(span, ring._c.tail_index(), False)
    cdef _HeldBuffer held = _HeldBuffer.__new__(_HeldBuffer)
    get_contiguous_buffer(v, &held._view, "a receive ring")
    held._held = True
    b._data = held
    b._base = p
    b._nbytes = <Py_ssize_t>nbytes
    return 0


cdef PacketBatch _feed_from_ring_lent(FrameDecoder dec, RingBuffer ring):
    """feed_from(ring) whose batch lies over the ring's own bytes (no copy)
    where it can: a contiguous readable span (double-mapped ring, or not
    wrapped) and no bytes pending in the decoder; else as feed_from. The
    caller checks ring._c.read_pins() once it has dropped the batch: a
    batch kept past then pins the ring's bytes (see _lend_frames)."""
    cdef RingSpan first, second
    cdef size_t taken = 0
    cdef ErrorInfo err
    cdef PacketBatch batch
    dec._check_usable()
    ring._c.read_segments(&first, &second)
    if not ring._c.double_mapped() and second.size != 0:
        return _feed_from_ring(dec, ring)
    if ring._c.double_mapped():
        first.size += second.size  # the second mapping continues the first
    batch = dec._decode_span(first.data, first.size, None, False, &taken, &err, ring)
    ring._c.consume(taken)
    return dec._finish(batch, err)
