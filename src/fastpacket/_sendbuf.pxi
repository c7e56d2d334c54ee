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
        returns the first seq used. `type` as for send() (None on a layout
        without a type field). All or nothing: BufferFull when the
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
        cdef uint64_t type_
        if self._layout.c.player_id_index < 0:
            raise ValueError(f"layout {self._layout.name} has no player_id field to broadcast to")
        _type_arg(self._layout, type, &type_)
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

    def send_array(self, type, records, *, player_ids=None):
        """send_array(type, records, *, player_ids=None) -> int

        Queue one packet per row of `records` (a numpy array: structured,
        2-d uint8, or any array whose rows are the payloads), each with the
        next automatic seq, in one native call; returns the first seq used.
        `player_ids`: None (0), one integer for every packet, or one per
        row. All or nothing: BufferFull when the packets do not fit now,
        ValueError when together they exceed max_bytes or a value does not
        fit its header field.
        """
        cdef uint64_t type_
        _type_arg(self._layout, type, &type_)
        arr = records_array(records, "SendBuffer.send_array")
        cdef RecordsView rv
        records_view(arr, &rv)
        cdef U64Values ids
        keep = u64_values(player_ids, rv.count, "player_ids", &ids)
        return self._append_rows(type_, rv.data, rv.count, rv.row_bytes, rv.row_stride, ids.values, ids.stride)

    cdef uint64_t _append_rows(self, uint64_t type_, const uint8_t* rows, size_t count, size_t row_bytes,
                               Py_ssize_t row_stride, const uint64_t* ids, size_t id_stride) except? 0xFFFFFFFFFFFFFFFF:
        """Rows as packets (SendBuffer.append_records): the first seq used,
        or BufferFull / ValueError with nothing queued."""
        cdef uint64_t first = 0
        cdef size_t bad = 0
        cdef EncodeError err = EncodeError.none
        cdef SendStatus st
        cdef Layout* c = &self._layout.c
        if count * row_bytes >= NOGIL_MIN_BYTES:
            with nogil:
                st = self._c.append_records[uint64_t](type_, rows, count, row_bytes, row_stride, ids, id_stride,
                                                      &first, &bad, &err)
        else:
            st = self._c.append_records[uint64_t](type_, rows, count, row_bytes, row_stride, ids, id_stride,
                                                  &first, &bad, &err)
        if st == SendStatus.ok:
            return first
        if st == SendStatus.encode_error and err == EncodeError.player_id_range:
            raise ValueError(f"player_ids[{bad}] = {ids[bad * id_stride]} does not fit field "
                             f"{self._layout.field_names[c.player_id_index]!r} (max {c.field_max(c.player_id_index)})")
        self._fail(st, err, (c.header_size + row_bytes) * count, f"{count} packets of {c.header_size + row_bytes} bytes",
                   type_, first, 0, row_bytes)

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


cdef int check_player_ids(HeaderLayout layout, U64Values* ids, Py_ssize_t n) except -1:
    """ValueError naming the first id that does not fit the layout's
    player_id field (ids of a layout without one are ignored, as by every
    send)."""
    cdef Layout* c = &layout.c
    if ids.values == NULL or c.player_id_index < 0:
        return 0
    cdef uint64_t top = c.field_max(c.player_id_index)
    cdef Py_ssize_t i, m = n if ids.stride else min(n, 1)
    for i in range(m):
        if ids.values[i * ids.stride] > top:
            raise ValueError(f"player_ids[{i}] = {ids.values[i * ids.stride]} does not fit field "
                             f"{layout.field_names[c.player_id_index]!r} (max {top})")
    return 0


def scatter(buffers, type, records, *, player_ids=None):
    """scatter(buffers, type, records, *, player_ids=None) -> int

    Row i of `records` (a numpy array, one row per buffer) as one packet
    queued to ``buffers[i]`` (a sequence of SendBuffers sharing one
    layout; None entries are skipped), each with that buffer's next
    automatic seq: one native call for a whole tick's worth of per-player
    state. `player_ids` as in SendBuffer.send_array. All or nothing: every
    buffer's room is checked first (BufferFull naming the first without
    room; nothing queued); ValueError when a buffer could never hold the
    packet or a value does not fit its header field. Returns the number of
    packets queued.
    """
    cdef uint64_t type_ = 0 if type is None else u64_arg(type, "type")  # the layout's own check below
    arr = records_array(records, "scatter")
    cdef RecordsView rv
    records_view(arr, &rv)
    targets = buffers if isinstance(buffers, (list, tuple)) else list(buffers)
    cdef Py_ssize_t n = len(targets), i
    if n != rv.count:
        raise ValueError(f"scatter needs one row per buffer: {n} buffers, {rv.count} rows")
    cdef U64Values ids
    keep = u64_values(player_ids, n, "player_ids", &ids)
    if n == 0:
        return 0
    cdef PyObject** items = PySequence_Fast_ITEMS(targets)
    cdef SendBuffer sb
    cdef HeaderLayout nl = None
    for i in range(n):
        if <object>items[i] is None:
            continue
        if not isinstance(<object>items[i], SendBuffer):
            raise TypeError(f"scatter targets are SendBuffers (or None), not "
                            f"{(<object>items[i]).__class__.__name__!r} (index {i})")
        if nl is None:
            nl = (<SendBuffer>items[i])._layout
    if nl is None:
        return 0
    cdef uint64_t frame = nl.c.header_size + <uint64_t>rv.row_bytes
    cdef uint8_t scratch[kMaxHeaderBytes]
    cdef HeaderValues hv
    _type_arg(nl, type, &type_)
    hv.type = type_
    cdef EncodeError err = encode_header(nl.c, scratch, hv, rv.row_bytes)
    if err != EncodeError.none:
        raise ValueError(_encode_error_text(err, nl, type_, 0, 0, rv.row_bytes))
    check_player_ids(nl, &ids, n)
    # first pass: room in every buffer, a buffer listed twice counted twice
    cdef Py_ssize_t failed = -1
    cdef bint never = False
    for i in range(n):
        if <object>items[i] is None:
            continue
        sb = <SendBuffer>items[i]
        if sb._layout is not nl and sb._layout != nl:
            failed = i
            break
        sb._reserved += frame
        if sb._reserved > sb._c.free_bytes():
            failed = i
            never = frame > sb._max
            break
    for i in range(n):
        if <object>items[i] is not None:
            (<SendBuffer>items[i])._reserved = 0
    if failed >= 0:
        sb = <SendBuffer>items[failed]
        if sb._layout is not nl and sb._layout != nl:
            raise ValueError(f"scatter: buffer {failed}'s layout {sb._layout.name} is not the first buffer's "
                             f"{nl.name}")
        if never:
            raise ValueError(f"scatter: a packet of {frame} bytes can never fit buffer {failed} "
                             f"(max_bytes={sb._max})")
        raise BufferFull(f"scatter: buffer {failed} has no room for its {frame}-byte packet now "
                         f"({sb._c.free_bytes()} of {sb._max} bytes free); nothing was queued")
    # second pass: the header encoded once (above, into scratch), each
    # buffer patching in its own seq and the row's player id; every room
    # was checked, so none fails
    cdef Py_ssize_t queued = 0
    for i in range(n):
        if <object>items[i] is None:
            continue
        (<SendBuffer>items[i])._c.append_with_header(scratch, rv.data + i * rv.row_stride, rv.row_bytes,
                                                     ids.values[i * ids.stride] if ids.values != NULL else 0)
        queued += 1
    return queued


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
