# SendBuffer: coalesced sends (csrc/fastpacket/sendbuf.hpp) into one of two
# buffers, flushed as a zero-copy read-only memoryview (double buffering).

from cpython.bytes cimport PyBytes_CheckExact, PyBytes_GET_SIZE
from cpython.long cimport PyLong_AsUnsignedLongLong
from cpython.number cimport PyNumber_Index
from cpython.exc cimport PyErr_Clear, PyErr_Occurred

cdef extern from "Python.h":
    # Without Cython's automatic error check: the caller tests PyErr_Occurred.
    unsigned long long _as_u64_unchecked "PyLong_AsUnsignedLongLong"(PyObject* v)
    bint _is_exact_int "PyLong_CheckExact"(PyObject* v)
from cpython.sequence cimport PySequence_Fast_ITEMS

#: Default capacity of one flush, in bytes.
DEFAULT_MAX_BYTES = kDefaultSendBufferBytes
#: should_flush() defaults: flush at this many packets ...
DEFAULT_MIN_PACKETS = kDefaultFlushMinPackets
#: ... or when this fraction of max_bytes is queued.
DEFAULT_FILL_RATIO = kDefaultFlushFillRatio


@cython.final
cdef class _SendChunk:
    """One buffer of a SendBuffer (malloc'd, max_bytes long). Exported by
    flush() as a read-only view of its first `_len` bytes; the SendBuffer
    reuses it for new sends only when no export is alive."""

    def __dealloc__(self):
        free(self._mem)

    def __getbuffer__(self, Py_buffer* buf, int flags):
        if flags & PyBUF_WRITABLE:
            raise BufferError("SendBuffer.flush() views are read-only")
        PyBuffer_FillInfo(buf, self, self._mem, self._len, 1, flags)
        self._exports += 1

    def __releasebuffer__(self, Py_buffer* buf):
        self._exports -= 1


cdef _SendChunk _new_chunk(size_t nbytes):
    cdef _SendChunk c = _SendChunk.__new__(_SendChunk)
    c._mem = <uint8_t*>malloc(nbytes if nbytes else 1)
    if c._mem == NULL:
        raise MemoryError(f"cannot allocate a send buffer of {nbytes} bytes")
    return c


cdef class SendBuffer:
    """SendBuffer(max_bytes=65536, layout=GAME)

    Coalesces outgoing packets into one contiguous buffer of at most
    `max_bytes`, written with one transport.write per flush().

    Packets get consecutive sequence numbers per buffer (`next_seq`, wrapping
    at the width of the layout's seq field, 2**32 for GAME) unless a seq is
    given. A packet is appended whole or not at all: BufferFull when it does
    not fit now (flush and retry), ValueError when it can never fit
    (header + payload > max_bytes) or a value does not fit its field.

    flush() returns a read-only memoryview of the queued bytes and switches
    to a second buffer, so sends continue while the first is written. A
    flushed view stays intact as long as it is referenced: a buffer is
    reused for new sends only once every view of it has been released (if
    the previous flush's view is still held at the next flush, a fresh buffer
    is allocated instead). Not thread-safe: use it from one thread.
    """

    def __cinit__(self, max_bytes=kDefaultSendBufferBytes, layout=None):
        cdef HeaderLayout nl = _layout_arg(layout)
        # from the header size (one empty packet) to SENDBUF_MAX_BYTES
        max_bytes = ssize_arg(max_bytes, "max_bytes", nl.c.header_size, SENDBUF_MAX_BYTES)
        self._layout = nl
        self._max = max_bytes
        self._active = _new_chunk(max_bytes)
        self._c = new CppSendBuffer(nl.c, max_bytes)
        self._c.attach(self._active._mem)

    def __dealloc__(self):
        del self._c

    @property
    def layout(self):
        """The HeaderLayout of the packets."""
        return self._layout

    @property
    def max_bytes(self):
        """Capacity of one buffer (one flush) in bytes."""
        return self._max

    @property
    def nbytes(self):
        """Bytes queued (headers included)."""
        return self._c.size()

    @property
    def free(self):
        """Bytes that may still be queued before a flush."""
        return self._c.free_bytes()

    @property
    def next_seq(self):
        """The seq the next automatically numbered packet gets."""
        return self._c.next_seq()

    @next_seq.setter
    def next_seq(self, seq):
        self._c.set_next_seq(u64_arg(seq, "next_seq", self._c.seq_max()))  # at most the seq field's max

    def __len__(self):
        """Packets queued."""
        return self._c.count()

    def __repr__(self):
        return f"<SendBuffer {self._c.count()} packets, {self._c.size()}/{self._max} bytes>"

    cdef int _fail(self, SendStatus st, EncodeError err, uint64_t frame, str what, uint64_t type_,
                   uint64_t seq, uint64_t player_id, size_t payload_len) except -1:
        if st == SendStatus.full:
            raise BufferFull(f"{what} needs {frame} bytes but only {self._c.free_bytes()} of "
                             f"{self._max} are free; flush() and retry")
        if st == SendStatus.never_fits:
            raise ValueError(f"{what} needs {frame} bytes, more than max_bytes={self._max}: it can "
                             f"never fit one flush")
        raise ValueError(_encode_error_text(err, self._layout, type_, seq, player_id, payload_len))

    def send(self, type, payload, *, player_id=0, seq=None):
        """send(type, payload, *, player_id=0, seq=None) -> int

        Queue one packet; returns the seq written (the next automatic one
        unless `seq` is given, which leaves the counter as it is). `payload`
        is any contiguous bytes-like object. On a layout without a type
        field (length + body, Twisted's sendString), `type` must be None:
        the payload is sent as one frame.
        """
        cdef Py_buffer view
        cdef const uint8_t* p
        cdef size_t n
        cdef uint64_t used = 0, given = 0, type_
        cdef EncodeError err = EncodeError.none
        cdef SendStatus st
        cdef bint explicit_seq = seq is not None
        _type_arg(self._layout, type, &type_)
        cdef uint64_t pid = u64_arg(player_id, "player_id")
        if explicit_seq:
            given = u64_arg(seq, "seq")
        if PyBytes_CheckExact(payload):
            p = <const uint8_t*>PyBytes_AS_STRING(payload)
            n = PyBytes_GET_SIZE(payload)
            st = self._c.send(type_, p, n, pid, explicit_seq, given, &used, &err)
        else:
            get_contiguous_buffer(payload, &view, "SendBuffer.send")
            try:
                n = view.len
                st = self._c.send(type_, <const uint8_t*>view.buf, n, pid, explicit_seq, given,
                                  &used, &err)
            finally:
                PyBuffer_Release(&view)
        if st != SendStatus.ok:
            self._fail(st, err, self._layout.c.header_size + n, "a packet", type_,
                       given if explicit_seq else self._c.next_seq(), pid, n)
        return used

    def send_batch(self, batch, start=0):
        """send_batch(batch, start=0) -> int

        Queue the packets ``batch[start:]`` as they are on the wire
        (headers, seq included, untouched), in order and whole, as many as
        fit now (one copy per run of packets that lie back to back); returns
        how many it queued. Like ``socket.send``: a batch of any size fits
        by parts, so when the count is less than ``len(batch) - start``,
        flush() and call again with `start` advanced by it::

            i = 0
            while i < len(batch):
                i += sb.send_batch(batch, i)   # BufferFull: nothing fitted
                if i < len(batch):
                    transport.write(sb.flush())

        (``Session.send_batch`` runs this loop with its transport.)
        Raises BufferFull, queueing nothing, when not even the first packet
        fits now (flush and retry); ValueError, before queueing anything,
        when one of the packets is larger than max_bytes (no flush makes
        room for it) or the batch's layout is not this buffer's."""
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"send_batch needs a fastpacket.PacketBatch, not {type(batch).__name__!r}")
        cdef PacketBatch b = <PacketBatch>batch
        # Layouts, not dtypes: two layouts with one dtype may frame the same
        # bytes differently (whether the length counts the header, its
        # adjustment), and the receiver frames by this buffer's layout.
        if b._layout is not self._layout and b._layout != self._layout:
            raise ValueError(f"the batch's layout {b._layout.name} is not this SendBuffer's layout "
                             f"{self._layout.name}: relayed byte for byte, its packets would be framed "
                             f"differently")
        cdef Py_ssize_t first = ssize_arg(start, "start", 0, b._count), i
        cdef size_t queued
        for i in range(first, b._count):
            if b._cols.sizes[i] > self._max:
                raise ValueError(f"packet {i} of the batch needs {b._cols.sizes[i]} bytes, more than "
                                 f"max_bytes={self._max}: it can never fit one flush")
        if first == b._count:
            return 0
        queued = self._c.append_frames_fitting(b._base, b._cols.offsets + first, b._cols.sizes + first,
                                               b._count - first)
        if queued == 0:
            raise BufferFull(f"packet {first} of the batch needs {b._cols.sizes[first]} bytes but only "
                             f"{self._c.free_bytes()} of {self._max} are free; flush() and retry")
        return queued

    def broadcast(self, type, payload, player_ids):
        """broadcast(type, payload, player_ids) -> int

        Queue the same payload once per player id (any integer sequence or
        numpy integer array), each packet with the next automatic seq;
        returns the first seq used. All or nothing: BufferFull when the
        packets do not fit now, ValueError when together they exceed
        max_bytes or an id does not fit the player_id field.
        """
        cdef Py_buffer pv, iv
        cdef bint have_ids = False
        cdef uint64_t first = 0
        cdef size_t bad = 0, count = 0
        cdef EncodeError err = EncodeError.none
        cdef SendStatus st
        cdef uint64_t* scratch = NULL
        cdef Py_ssize_t i
        cdef uint64_t type_ = u64_arg(type, "type")
        if self._layout.c.player_id_index < 0:
            raise ValueError(f"layout {self._layout.name} has no player_id field to broadcast to")
        get_contiguous_buffer(payload, &pv, "SendBuffer.broadcast")
        try:
            ids_obj = player_ids
            if PyObject_CheckBuffer(player_ids) and not isinstance(player_ids, (bytes, bytearray)):
                try:
                    PyObject_GetBuffer(player_ids, &iv, PyBUF_FORMAT | PyBUF_ND)
                except (BufferError, ValueError):  # not C-contiguous
                    ids_obj = np.ascontiguousarray(player_ids)
                    PyObject_GetBuffer(ids_obj, &iv, PyBUF_FORMAT | PyBUF_ND)
                have_ids = True
                if iv.ndim > 1:
                    raise ValueError(f"player_ids must be one-dimensional, got {iv.ndim} dimensions")
                count = iv.len // iv.itemsize if iv.itemsize else 0
                st = _broadcast_typed(self._c, type_, <const uint8_t*>pv.buf, pv.len, iv.buf, count,
                                      _int_kind(iv.format, iv.itemsize), &first, &bad, &err)
            else:
                ids_obj = player_ids if isinstance(player_ids, (list, tuple)) else list(player_ids)
                count = len(ids_obj)
                scratch = <uint64_t*>malloc(count * sizeof(uint64_t) + 1)
                if scratch == NULL:
                    raise MemoryError(f"cannot allocate {count} player ids")
                _ids_from_sequence(ids_obj, scratch, count)
                st = self._c.broadcast[uint64_t](type_, <const uint8_t*>pv.buf, pv.len, scratch, count,
                                                 &first, &bad, &err)
            if st == SendStatus.encode_error and err == EncodeError.player_id_range:
                raise ValueError(f"player_ids[{bad}] = {ids_obj[bad]} does not fit field "
                                 f"{self._layout.field_names[self._layout.c.player_id_index]!r} "
                                 f"(max {self._layout.c.field_max(self._layout.c.player_id_index)})")
            if st != SendStatus.ok:
                self._fail(st, err, (self._layout.c.header_size + pv.len) * count,
                           f"a broadcast to {count} players", type_, first, 0, pv.len)
            return first
        finally:
            free(scratch)
            if have_ids:
                PyBuffer_Release(&iv)
            PyBuffer_Release(&pv)

    def should_flush(self, min_packets=kDefaultFlushMinPackets, fill_ratio=kDefaultFlushFillRatio):
        """should_flush(min_packets=10, fill_ratio=0.8) -> bool: True when at
        least `min_packets` packets or fill_ratio * max_bytes bytes are
        queued; never when empty. min_packets is an int >= 0, fill_ratio a
        number in [0, 1]."""
        return self._c.should_flush(ssize_arg(min_packets, "min_packets", 0, PY_SSIZE_T_MAX),
                                    double_arg(fill_ratio, "fill_ratio", 0.0, 1.0))

    def flush(self):
        """flush() -> memoryview: the queued packets as one read-only view,
        and an empty buffer for the next sends. Empty view when nothing is
        queued. The view stays intact as long as it is referenced (see the
        class docstring); write it to the transport and drop it."""
        return self._flush_view()

    cdef object _flush_view(self):
        if self._c.count() == 0:
            return memoryview(b"")  # a new one: a caller may release() it
        cdef _SendChunk done = self._active
        done._len = self._c.size()
        view = memoryview(done)
        cdef _SendChunk spare = self._flushed
        if spare is None or spare._exports > 0:
            spare = _new_chunk(self._max)  # the last flush is still held: never reuse it
        self._flushed = done
        self._active = spare
        self._c.attach(spare._mem)
        return view

    def clear(self):
        """Drop every queued packet (the seq counter keeps going)."""
        self._c.attach(self._active._mem)


cdef int _ids_from_sequence(object seq, uint64_t* out, Py_ssize_t count) except -1:
    """Player ids of a list or tuple into out[0, count): exact ints read
    directly, anything else through __index__."""
    cdef PyObject** items = PySequence_Fast_ITEMS(seq)
    cdef PyObject* v
    cdef unsigned long long x
    cdef Py_ssize_t i
    for i in range(count):
        v = items[i]
        if _is_exact_int(v):
            x = _as_u64_unchecked(v)
            if x == <unsigned long long>-1 and PyErr_Occurred() != NULL:
                PyErr_Clear()
                x = _player_id_value(<object>v, i)  # raises the ValueError
        else:
            x = _player_id_value(<object>v, i)
        out[i] = x
    return 0


cdef uint64_t _player_id_value(object v, Py_ssize_t i) except? 0xFFFFFFFFFFFFFFFF:
    try:
        return PyLong_AsUnsignedLongLong(v if type(v) is int else PyNumber_Index(v))
    except OverflowError:
        raise ValueError(f"player_ids[{i}] = {v} is out of range (ids are unsigned integers)") from None
    except TypeError:
        raise TypeError(f"player_ids must be integers, got {type(v).__name__!r} at index {i}") from None


# Integer kinds of a player_ids buffer.
cdef enum IntKind:
    KIND_BAD = 0
    KIND_U8, KIND_U16, KIND_U32, KIND_U64, KIND_I8, KIND_I16, KIND_I32, KIND_I64


cdef IntKind _int_kind(const char* fmt, Py_ssize_t itemsize):
    """The integer kind of a buffer's struct format (native or little-endian
    byte order; one item code), KIND_BAD for anything else."""
    if fmt == NULL:
        return KIND_U8 if itemsize == 1 else KIND_BAD
    cdef Py_ssize_t k = 0
    if fmt[0] == b'@' or fmt[0] == b'=' or fmt[0] == b'<':
        k = 1
    elif fmt[0] == b'>' or fmt[0] == b'!':
        if itemsize > 1:
            return KIND_BAD
        k = 1
    cdef char c = fmt[k]
    if c == 0 or fmt[k + 1] != 0:
        return KIND_BAD
    cdef bint unsigned = c == b'B' or c == b'H' or c == b'I' or c == b'L' or c == b'Q' or c == b'N'
    cdef bint signed = c == b'b' or c == b'h' or c == b'i' or c == b'l' or c == b'q' or c == b'n'
    if not (unsigned or signed):
        return KIND_BAD
    if itemsize == 1:
        return KIND_U8 if unsigned else KIND_I8
    if itemsize == 2:
        return KIND_U16 if unsigned else KIND_I16
    if itemsize == 4:
        return KIND_U32 if unsigned else KIND_I32
    if itemsize == 8:
        return KIND_U64 if unsigned else KIND_I64
    return KIND_BAD


cdef SendStatus _broadcast_typed(CppSendBuffer* c, uint64_t type_, const uint8_t* p, size_t n,
                                 const void* ids, size_t count, IntKind kind, uint64_t* first,
                                 size_t* bad, EncodeError* err) except *:
    if kind == KIND_U8:
        return c.broadcast[uint8_t](type_, p, n, <const uint8_t*>ids, count, first, bad, err)
    if kind == KIND_U16:
        return c.broadcast[uint16_t](type_, p, n, <const uint16_t*>ids, count, first, bad, err)
    if kind == KIND_U32:
        return c.broadcast[uint32_t](type_, p, n, <const uint32_t*>ids, count, first, bad, err)
    if kind == KIND_U64:
        return c.broadcast[uint64_t](type_, p, n, <const uint64_t*>ids, count, first, bad, err)
    if kind == KIND_I8:
        return c.broadcast[int8_t](type_, p, n, <const int8_t*>ids, count, first, bad, err)
    if kind == KIND_I16:
        return c.broadcast[int16_t](type_, p, n, <const int16_t*>ids, count, first, bad, err)
    if kind == KIND_I32:
        return c.broadcast[int32_t](type_, p, n, <const int32_t*>ids, count, first, bad, err)
    if kind == KIND_I64:
        return c.broadcast[int64_t](type_, p, n, <const int64_t*>ids, count, first, bad, err)
    raise TypeError("player_ids must be a sequence of integers or a 1-d integer array")
