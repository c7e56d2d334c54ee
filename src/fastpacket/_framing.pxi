# Framing: header layouts, packets, packet batches, the stream decoder.

#: Field kinds a header may use, and their widths in bytes.
FIELD_KINDS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
#: Largest header a layout may describe, in bytes.
MAX_HEADER_SIZE = kMaxHeaderBytes
#: Default max_packet_size: the largest size GAME's u16 size field can hold.
DEFAULT_MAX_PACKET_SIZE = kDefaultMaxPacketSize
#: Largest max_packet_size, in bytes (2**32 - 1: a batch's sizes are u32).
MAX_PACKET_SIZE = kMaxPacketSizeLimit

_STRUCT_CODES = {"u8": "B", "u16": "H", "u32": "I", "u64": "Q"}
_ROLES = ("type", "seq", "player_id")
#: length_adjustment's bound (either sign): far beyond any real protocol,
#: and frame sizes computed with it stay far from int64 overflow.
_MAX_LENGTH_ADJUSTMENT = 1 << 32


cdef class HeaderLayout:
    """HeaderLayout(fields, length_field, length_includes_header=True, byteorder="little", *, length_adjustment=0, type_field=None, seq_field=None, player_id_field=None, name=None)

    The unsigned fields of a packet header and which one holds the frame
    length (docs/wire-format.md). Immutable, hashable, comparable by value
    and picklable.

    Args:
        fields: ``[(name, kind), ...]`` in wire order; kind is one of
            ``"u8" "u16" "u32" "u64"``. Names are unique identifiers.
        length_field: the name of the field that holds the frame length.
        length_includes_header: True when the length counts the header too
            (GAME), False when it counts the payload only.
        byteorder: ``"little"`` or ``"big"`` for every field.
        length_adjustment: added to the length field's value (Netty's
            lengthAdjustment), for protocols whose length counts something
            else; usually 0.
        type_field, seq_field, player_id_field: the fields with those roles;
            default: the field of that name if there is one.
        name: a label for messages and repr.

    Raises:
        ValueError: no fields, a bad kind, duplicate or non-identifier names,
            a missing length field, a header over 64 bytes, a bad role name.

    Attributes: ``size`` (header bytes), ``dtype`` (numpy structured dtype
    of one header), ``struct_format``, ``fields``, ``field_names``,
    ``length_field``, ``length_includes_header``, ``byteorder``,
    ``length_adjustment``, ``roles``, ``name``.
    """

    def __cinit__(self, fields, length_field, length_includes_header=True, byteorder="little", *,
                  length_adjustment=0, type_field=None, seq_field=None, player_id_field=None, name=None):
        fields = tuple(tuple(f) for f in fields)
        if not fields:
            raise ValueError("a header layout needs at least one field")
        names = []
        for f in fields:
            if len(f) != 2:
                raise ValueError(f"each field is (name, kind), got {f!r}")
            fname, kind = f
            if not isinstance(fname, str) or not fname.isidentifier():
                raise ValueError(f"field names must be identifiers, got {fname!r}")
            if kind not in FIELD_KINDS:
                raise ValueError(f"field {fname!r}: kind must be one of {sorted(FIELD_KINDS)}, got {kind!r}")
            if fname in names:
                raise ValueError(f"duplicate field name {fname!r}")
            names.append(fname)
        size = sum(FIELD_KINDS[k] for _, k in fields)
        if size > kMaxHeaderBytes:
            raise ValueError(f"a header is at most {kMaxHeaderBytes} bytes, these fields take {size}")
        if length_field not in names:
            raise ValueError(f"length_field {length_field!r} is not one of the fields {names}")
        if byteorder not in ("little", "big"):
            raise ValueError(f"byteorder must be 'little' or 'big', got {byteorder!r}")
        length_adjustment = _as_index(length_adjustment, "length_adjustment")
        if abs(length_adjustment) > _MAX_LENGTH_ADJUSTMENT:
            raise ValueError(f"length_adjustment must be an int within ±2**32, got {length_adjustment!r}")
        if name is not None and not isinstance(name, str):
            raise TypeError(f"name must be a str or None, not {type(name).__name__!r}")
        roles = {}
        for role, given in zip(_ROLES, (type_field, seq_field, player_id_field)):
            if given is not None and given not in names:
                raise ValueError(f"{role}_field {given!r} is not one of the fields {names}")
            chosen = given if given is not None else (role if role in names else None)
            if chosen == length_field:
                raise ValueError(f"the length field {length_field!r} cannot also be the {role} field")
            for other, taken in roles.items():
                if chosen is not None and chosen == taken:
                    raise ValueError(f"field {chosen!r} cannot be both the {other} field and the {role} field "
                                     f"(encoding would write one over the other)")
            roles[role] = chosen

        cdef bint big = byteorder == "big"
        cdef uint16_t offset = 0
        cdef int i
        cdef uint8_t width
        order = ">" if big else "<"
        formats = []
        self.c.nfields = len(fields)
        for i, (_, kind) in enumerate(fields):
            width = FIELD_KINDS[kind]
            self.c.fields[i].offset = offset
            self.c.fields[i].width = width
            offset += width
            formats.append(np.dtype(f"{order}u{width}"))
        self.c.header_size = offset
        self.c.big_endian = big
        self.c.length_index = names.index(length_field)
        self.c.length_includes_header = bool(length_includes_header)
        self.c.length_adjustment = length_adjustment
        self.c.type_index = names.index(roles["type"]) if roles["type"] else -1
        self.c.seq_index = names.index(roles["seq"]) if roles["seq"] else -1
        self.c.player_id_index = names.index(roles["player_id"]) if roles["player_id"] else -1
        if not self.c.valid():
            raise ValueError("invalid header layout")  # the checks above come first
        self.fields = fields
        self.field_names = tuple(names)
        self.length_field = length_field
        self.length_includes_header = self.c.length_includes_header
        self.byteorder = byteorder
        self.length_adjustment = length_adjustment
        self.name = name or "HeaderLayout(" + ",".join(f"{n}:{k}" for n, k in fields) + ")"
        self.struct_format = order + "".join(_STRUCT_CODES[k] for _, k in fields)
        self._roles = roles
        self._field_dtypes = tuple(formats)
        self.dtype = np.dtype({"names": names, "formats": formats})
        self._key = (fields, length_field, self.length_includes_header, byteorder, length_adjustment,
                     tuple(sorted((k, v or "") for k, v in roles.items())))

    @property
    def size(self):
        """Header size in bytes."""
        return self.c.header_size

    @property
    def roles(self):
        """{"type": field, "seq": field, "player_id": field}, None where the
        layout has no field of that role."""
        return dict(self._roles)

    def __eq__(self, other):
        if not isinstance(other, HeaderLayout):
            return NotImplemented
        return self._key == (<HeaderLayout>other)._key

    def __hash__(self):
        return hash(self._key)

    def __repr__(self):
        return (f"HeaderLayout(fields={list(self.fields)!r}, length_field={self.length_field!r}, "
                f"length_includes_header={self.length_includes_header}, byteorder={self.byteorder!r}"
                + (f", length_adjustment={self.length_adjustment}" if self.length_adjustment else "")
                + (f", name={self.name!r}" if not self.name.startswith("HeaderLayout(") else "")
                + ")")

    def __reduce__(self):  # layouts pickle by value (worker processes)
        return (_rebuild_layout, (self.fields, self.length_field, self.length_includes_header, self.byteorder,
                                  self.length_adjustment, self.roles, self.name))


def _rebuild_layout(fields, length_field, includes, byteorder, adjustment, roles, name):
    """Unpickles a HeaderLayout."""
    return HeaderLayout(fields, length_field, includes, byteorder, length_adjustment=adjustment,
                        type_field=roles.get("type"), seq_field=roles.get("seq"),
                        player_id_field=roles.get("player_id"), name=name)


#: The default layout ``<HHII``: size (u16, whole packet), type (u16),
#: seq (u32), player_id (u32); 12 bytes.
GAME = HeaderLayout(
    [("size", "u16"), ("type", "u16"), ("seq", "u32"), ("player_id", "u32")],
    length_field="size",
    length_includes_header=True,
    byteorder="little",
    name="GAME",
)

cdef HeaderLayout _DEFAULT_LAYOUT = GAME


cdef HeaderLayout _layout_arg(object layout):
    if layout is None:
        return _DEFAULT_LAYOUT
    if not isinstance(layout, HeaderLayout):
        raise TypeError(f"layout must be a fastpacket.HeaderLayout, not {type(layout).__name__!r}")
    return <HeaderLayout>layout


cdef str _encode_error_text(EncodeError err, HeaderLayout layout, uint64_t type_, uint64_t seq,
                            uint64_t player_id, size_t payload_len):
    cdef Layout* c = &layout.c
    if err == EncodeError.too_large:
        return (f"a payload of {payload_len} bytes does not fit the length field "
                f"{layout.field_names[c.length_index]!r} of {layout.name}")
    if err == EncodeError.no_type_field:
        return f"layout {layout.name} has no type field to encode a packet type into"
    if err == EncodeError.type_range:
        return f"type {type_} does not fit field {layout.field_names[c.type_index]!r} (max {c.field_max(c.type_index)})"
    if err == EncodeError.seq_range:
        return f"seq {seq} does not fit field {layout.field_names[c.seq_index]!r} (max {c.field_max(c.seq_index)})"
    return (f"player_id {player_id} does not fit field "
            f"{layout.field_names[c.player_id_index]!r} (max {c.field_max(c.player_id_index)})")


cdef int _type_arg(HeaderLayout nl, object type, uint64_t* out) except -1:
    """The type value to encode: `type` (an int) on a layout with a type
    field; on a layout without one (length + body), `type` must be None and
    the payload is framed alone (encoded as 0, the core's "no type")."""
    if type is None:
        if nl.c.type_index >= 0:
            raise TypeError(f"type must be an int: layout {nl.name} has a type field "
                            f"({nl.field_names[nl.c.type_index]!r})")
        out[0] = 0
    elif nl.c.type_index < 0:
        raise ValueError(f"layout {nl.name} has no type field: pass type=None (the payload is sent as "
                         f"one frame), got type={type!r}")
    else:
        out[0] = u64_arg(type, "type")
    return 0


def encode(type, payload, *, seq=0, player_id=0, layout=None):
    """encode(type, payload, *, seq=0, player_id=0, layout=GAME) -> bytes

    One packet on the wire: the layout's header (length, type, seq,
    player_id) followed by `payload` (any contiguous bytes-like object).
    On a layout without a type field (length + body), `type` must be None:
    the payload is framed alone. Raises ValueError when a value does not
    fit its field.
    """
    cdef HeaderLayout nl = _layout_arg(layout)
    cdef Py_buffer view
    cdef EncodeError err
    cdef HeaderValues values
    _type_arg(nl, type, &values.type)
    values.seq = u64_arg(seq, "seq")
    values.player_id = u64_arg(player_id, "player_id")
    get_contiguous_buffer(payload, &view, "encode")
    try:
        out = PyBytes_FromStringAndSize(NULL, nl.c.header_size + view.len)
        err = encode_header(nl.c, <uint8_t*>PyBytes_AS_STRING(out), values, view.len)
        if err != EncodeError.none:
            raise ValueError(_encode_error_text(err, nl, values.type, values.seq, values.player_id, view.len))
        memcpy(PyBytes_AS_STRING(out) + nl.c.header_size, view.buf, view.len)
        return out
    finally:
        PyBuffer_Release(&view)


cdef object _no_field(Packet p, str role):
    raise AttributeError(f"layout {p._batch._layout.name} has no {role} field; use packet.header, "
                         f"packet.field(name) or packet.payload")


cdef inline object _packet_field(Packet p, int field, str role):
    """Header field `field` of packet p; AttributeError naming `role` for a
    layout without it (-1), so the property's type is int, as the stub
    says. Inline: it is every Packet property's whole work."""
    if field < 0:
        return _no_field(p, role)
    cdef PacketBatch b = p._batch
    return b._layout.c.read(b._cols.headers + p._index * b._layout.c.header_size, field)


# One spare index block, kept when a batch with a large index goes away and
# handed to the next batch whose index fits it: a server decoding large
# feeds (a tick's burst of thousands of packets) would otherwise get fresh
# pages from the kernel for each index (malloc serves blocks past 128 KiB
# with mmap), and page faults would cost more than the decoding. Only
# blocks between these sizes are kept, and one at most: bounded memory.
cdef enum:
    SPARE_INDEX_MIN_BYTES = 65536
    SPARE_INDEX_MAX_BYTES = 4194304
cdef void* _spare_block = NULL
cdef size_t _spare_bytes = 0


cdef void* _take_index_block(size_t nbytes) noexcept:
    """An index block of at least nbytes: the spare one when it fits (and is
    not more than twice too large), else malloc's; NULL when out of memory.
    Called with the GIL held, as _release_index_block: they share the spare."""
    global _spare_block, _spare_bytes
    cdef void* block
    if _spare_block != NULL and nbytes <= _spare_bytes <= 2 * nbytes:
        block = _spare_block
        _spare_block = NULL
        _spare_bytes = 0
        return block
    return malloc(nbytes)


cdef void _release_index_block(void* block, size_t nbytes) noexcept:
    global _spare_block, _spare_bytes
    if block == NULL:
        return
    if SPARE_INDEX_MIN_BYTES <= nbytes <= SPARE_INDEX_MAX_BYTES and nbytes >= _spare_bytes:
        free(_spare_block)  # keep the larger one
        _spare_block = block
        _spare_bytes = nbytes
        return
    free(block)


@cython.freelist(256)
@cython.final
@cython.no_gc  # holds only its batch: it can be in no reference cycle, so the GC need not track it
cdef class Packet:
    """One packet of a PacketBatch: header fields and a zero-copy payload.

    `type`, `seq` and `player_id` are the values of the layout's fields with
    those roles (AttributeError where the layout has no such field, as for
    the batch's columns: ``hasattr(p, "type")`` tells); `payload` is a
    read-only memoryview into the batch's memory, valid as long as you hold
    it. Create packets with fp.encode() or PacketBatch.build().
    """

    def __cinit__(self):
        self._index = 0

    def __init__(self, *args, **kwargs):
        raise TypeError("Packet objects come from a PacketBatch; build packets with "
                        "fastpacket.encode() or PacketBatch.build()")

    @property
    def type(self):
        """The packet type (the layout's type field)."""
        return _packet_field(self, self._batch._layout.c.type_index, "type")

    @property
    def seq(self):
        """The sequence number (the layout's seq field)."""
        return _packet_field(self, self._batch._layout.c.seq_index, "seq")

    @property
    def player_id(self):
        """The player id (the layout's player_id field)."""
        return _packet_field(self, self._batch._layout.c.player_id_index, "player_id")

    @property
    def size(self):
        """Whole packet size in bytes, header included."""
        return self._batch._cols.sizes[self._index]

    @property
    def payload(self):
        """The payload as a read-only memoryview (zero copy)."""
        return self._batch._payload(self._index)

    @property
    def header(self):
        """All header fields as a dict (field name -> int)."""
        cdef PacketBatch b = self._batch
        cdef const uint8_t* h = b._cols.headers + self._index * b._layout.c.header_size
        return {name: b._layout.c.read(h, i) for i, name in enumerate(b._layout.field_names)}

    def field(self, str name):
        """The value of the header field called `name`."""
        cdef PacketBatch b = self._batch
        cdef int i = b._layout.field_names.index(name) if name in b._layout.field_names else -1
        if i < 0:
            raise KeyError(f"layout {b._layout.name} has no field {name!r}")
        return _packet_field(self, i, name)

    def to_bytes(self):
        """The packet as it was on the wire (header and payload)."""
        cdef PacketBatch b = self._batch
        cdef int64_t off = b._cols.offsets[self._index]
        return PyBytes_FromStringAndSize(<const char*>b._base + off, b._cols.sizes[self._index])

    def __eq__(self, other):
        if not isinstance(other, Packet):
            return NotImplemented
        return self.to_bytes() == (<Packet>other).to_bytes()

    def __hash__(self):
        return hash(self.to_bytes())

    def __repr__(self):
        cdef Layout* c = &self._batch._layout.c
        roles = ""
        for role, i in (("type", c.type_index), ("seq", c.seq_index), ("player_id", c.player_id_index)):
            if i >= 0:  # the fields this layout has
                roles += f"{role}={_packet_field(self, i, role)}, "
        return (f"Packet({roles}"
                f"payload={bytes(self.payload[:16])!r}{'...' if self.size - c.header_size > 16 else ''})")


@cython.freelist(64)
@cython.final
@cython.no_gc  # holds only its batch
cdef class _PacketIterator:
    def __iter__(self):
        return self

    def __next__(self):
        cdef Py_ssize_t i = self._next
        if i >= self._batch._count:
            raise StopIteration
        self._next = i + 1
        return self._batch._packet(i)


@cython.freelist(64)
@cython.final
@cython.no_gc  # holds a HeaderLayout (immutable, no __dict__) and a bytes object: it can be in no cycle
cdef class PacketBatch:
    """Packets decoded from (or built into) one buffer that the batch keeps
    alive.

    Columns are numpy arrays over the batch's own index, built without a
    Python object per packet: `types`, `seqs`, `player_ids`, `sizes`,
    `offsets` and `headers` (a structured array of the layout's dtype). Each
    access returns a new read-only view; hold on to it in a loop. Indexing
    and iteration create `Packet` objects lazily; payloads are zero-copy
    memoryviews. A batch stays valid after the decoder that made it is fed
    again, reset or dropped. ``memoryview(batch)`` is a read-only view of
    the buffer the packets lie in.
    """

    def __cinit__(self):
        self._block = NULL
        self._count = 0
        self._export_ptr = NULL

    def __dealloc__(self):
        _release_index_block(self._block, self._block_bytes)

    def __getbuffer__(self, Py_buffer* view, int flags):
        if self._export_ptr != NULL:
            PyBuffer_FillInfo(view, self, <void*>self._export_ptr, self._export_len, 1, flags)
        else:
            PyBuffer_FillInfo(view, self, <void*>self._base, self._nbytes, 1, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass

    def __init__(self, *args, **kwargs):
        raise TypeError("PacketBatch objects come from FrameDecoder.feed() or PacketBatch.build()")

    cdef int _alloc_index(self, Py_ssize_t count) except -1:
        self._count = count
        if count == 0:
            return 0
        cdef size_t nbytes = index_bytes(count, self._layout.c.header_size)
        self._block = _take_index_block(nbytes)
        if self._block == NULL:
            raise MemoryError(f"cannot allocate the index of {count} packets ({nbytes} bytes)")
        self._block_bytes = nbytes
        self._cols = index_view(self._block, count, self._layout.c.header_size)
        return 0

    cdef void _set_data(self, bytes data):
        self._data = data
        self._base = <const uint8_t*>PyBytes_AS_STRING(data)
        self._nbytes = len(data)

    cdef void _share_data(self, PacketBatch other):
        """Over the same bytes as `other` (bytes or an outside buffer)."""
        self._data = other._data
        self._base = other._base
        self._nbytes = other._nbytes

    @staticmethod
    def over(owner, *, layout=None, max_packet_size=DEFAULT_MAX_PACKET_SIZE):
        """over(owner, *, layout=GAME, max_packet_size=65535) -> PacketBatch

        A batch over the whole frames that fill `owner`'s buffer (any
        C-contiguous buffer: bytes, bytearray, memoryview, numpy, a C++
        object's buffer), without a copy: the batch holds the buffer
        exported, and so the owner alive, for as long as it (or a batch or
        payload view made from it) lives. For servers that own the sockets
        and hand a read burst to Python (examples/cpp/embed.cpp). The owner
        must not change those bytes while the batch lives.

        Every frame is checked as FrameDecoder checks a stream (size within
        [header, max_packet_size], inside the buffer); an empty buffer is an
        empty batch.

        Raises:
            TypeError: `owner` has no contiguous buffer.
            ValueError: the bytes are not whole frames (a frame too small,
                too large, or cut off at the end: its offset is named), or
                max_packet_size is out of range.
        """
        cdef HeaderLayout nl = _layout_arg(layout)
        cdef int64_t max_size = ssize_arg(max_packet_size, "max_packet_size", nl.c.header_size,
                                          kMaxPacketSizeLimit)
        cdef _HeldBuffer held = _HeldBuffer.__new__(_HeldBuffer)
        get_contiguous_buffer(owner, &held._view, "PacketBatch.over()")
        held._held = True
        cdef const uint8_t* base = <const uint8_t*>held._view.buf
        cdef Py_ssize_t n = held._view.len, pos = 0, count = 0
        cdef int64_t frame
        cdef size_t hs = nl.c.header_size
        while pos < n:
            if <size_t>(n - pos) < hs:
                raise ValueError(f"PacketBatch.over(): {n - pos} bytes at offset {pos} are not a whole header "
                                 f"({hs} bytes)")
            frame = nl.c.frame_size(base + pos)
            if not frame_size_ok(frame, hs, max_size):
                raise ValueError(f"PacketBatch.over(): the frame at offset {pos} declares {frame} bytes, outside "
                                 f"[{hs}, max_packet_size={max_size}]")
            if frame > n - pos:
                raise ValueError(f"PacketBatch.over(): the frame at offset {pos} declares {frame} bytes, "
                                 f"{n - pos} are left: cut off")
            pos += frame
            count += 1
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        b._layout = nl
        b._data = held
        b._base = base
        b._nbytes = n
        b._alloc_index(count)
        if count:
            index_frames(nl.c, base, count, 0, b._cols)
        return b

    @staticmethod
    def build(types, payloads, *, seqs=None, player_ids=None, layout=None):
        """build(types, payloads, *, seqs=None, player_ids=None, layout=GAME) -> PacketBatch

        Encode one packet per (type, payload) pair into one buffer. `types`,
        `seqs` and `player_ids` are integer sequences or numpy arrays of the
        same length as `payloads` (seqs and player_ids default to 0);
        payloads are bytes-like objects. On a layout without a type field
        (length + body), `types` must be None: each payload is one frame.
        """
        return _build_batch(_layout_arg(layout), types, payloads, seqs, player_ids)

    @property
    def layout(self):
        """The HeaderLayout of these packets."""
        return self._layout

    def __len__(self):
        return self._count

    @property
    def nbytes(self):
        """Bytes of all packets, headers included."""
        cdef Py_ssize_t i
        cdef int64_t total = 0
        for i in range(self._count):
            total += self._cols.sizes[i]
        return total

    cdef Packet _packet(self, Py_ssize_t i):
        cdef Packet p = Packet.__new__(Packet)
        p._batch = self
        p._index = i
        return p

    def __getitem__(self, index):
        cdef Py_ssize_t i
        if isinstance(index, slice):
            start, stop, step = index.indices(self._count)
            rows = np.arange(start, stop, step, dtype=np.uint32)
            return self._take(rows)
        i = _index_arg(index, self._count, "index")
        return self._packet(i)

    def __iter__(self):
        cdef _PacketIterator it = _PacketIterator.__new__(_PacketIterator)
        it._batch = self
        it._next = 0
        return it

    def __repr__(self):
        return f"<PacketBatch of {self._count} packets, {self.nbytes} bytes, layout {self._layout.name}>"

    # -- columns -----------------------------------------------------------

    cdef object _field_column(self, int field, str role):
        if field < 0:
            raise AttributeError(f"layout {self._layout.name} has no {role} field; "
                                 f"use batch.field(name) or batch.headers")
        return readonly_view(self, self._layout._field_dtypes[field], self._count,
                             self._layout.c.header_size,
                             self._cols.headers + self._layout.c.fields[field].offset)

    @property
    def types(self):
        """Packet types as a read-only numpy array (the layout's type field)."""
        return self._field_column(self._layout.c.type_index, "type")

    @property
    def seqs(self):
        """Sequence numbers as a read-only numpy array."""
        return self._field_column(self._layout.c.seq_index, "seq")

    @property
    def player_ids(self):
        """Player ids as a read-only numpy array."""
        return self._field_column(self._layout.c.player_id_index, "player_id")

    @property
    def sizes(self):
        """Whole packet sizes (header included) as a read-only uint32 array."""
        return readonly_view(self, _U32, self._count, 4, self._cols.sizes)

    @property
    def offsets(self):
        """Byte offset of each packet in the batch's buffer (int64 array)."""
        return readonly_view(self, _I64, self._count, 8, self._cols.offsets)

    @property
    def headers(self):
        """Every header as a read-only structured array of layout.dtype."""
        return readonly_view(self, self._layout.dtype, self._count, self._layout.c.header_size,
                             self._cols.headers)

    def field(self, str name):
        """The column of the header field called `name` (read-only array)."""
        if name not in self._layout.field_names:
            raise KeyError(f"layout {self._layout.name} has no field {name!r}")
        return self._field_column(self._layout.field_names.index(name), name)

    # -- payloads ----------------------------------------------------------

    def payload(self, i):
        """payload(i) -> memoryview: packet i's payload, zero copy."""
        return self._payload(_index_arg(i, self._count, "i"))

    def payload_array(self, dtype, *, on_short="raise", bint copy=False, out=None):
        """payload_array(dtype, *, on_short="raise", copy=False, out=None) -> numpy.ndarray

        One record of `dtype` per packet, read from the first
        ``dtype.itemsize`` bytes of each payload (the fields in the byte
        order the dtype gives them; any bytes after the record are
        ignored). `dtype` is anything numpy.dtype() accepts: a structured
        dtype, ``"<f4"``, ``("u1", 16)``, ...

        When the packets all have the same size and lie back to back (a
        feed of one message type, a PacketBatch.build from an array) the
        result is a zero-copy strided view into the batch, which it keeps
        alive; otherwise the records are gathered in one native pass. Either
        way the array is read-only unless ``copy=True``, which always
        returns a new writable array.

        A payload shorter than the record raises ValueError naming the
        first such packet; with ``on_short="mask"`` the call returns
        ``(array, valid)`` instead, where ``valid`` is a bool array and the
        records of short payloads are zeros.

        With `out` (a writable, C-contiguous array of `dtype` with one
        element per packet, such as a slice of a larger buffer) the records
        are gathered into it and `out` is returned: a server collecting
        many bursts into one array between ticks allocates nothing per burst.
        """
        dt = np.dtype(dtype)
        if dt.hasobject:
            raise TypeError(f"dtype {dt} holds Python objects; payload records are plain bytes")
        if on_short != "raise" and on_short != "mask":
            raise ValueError(f"on_short must be 'raise' or 'mask', got {on_short!r}")
        cdef Py_ssize_t itemsize = dt.itemsize
        if itemsize <= 0:
            raise ValueError(f"dtype {dt} has no bytes (itemsize 0): a record needs at least one")
        cdef bint mask = on_short == "mask"
        cdef size_t hs = self._layout.c.header_size
        cdef Py_ssize_t n = self._count
        # equal sizes back to back (one pass) decide the short check in O(1)
        cdef size_t stride = uniform_frame_stride(self._cols.offsets, self._cols.sizes, n) if n else 0
        cdef size_t first
        if stride:
            first = 0 if stride < hs + itemsize else n
        else:
            first = first_short_payload(self._cols.sizes, n, hs, itemsize) if n else 0
        if <Py_ssize_t>first < n and not mask:
            raise ValueError(f"packet {first}'s payload is {self._cols.sizes[first] - hs} bytes, shorter than a "
                             f"record of dtype {dt} ({itemsize} bytes); payload_array(dtype, on_short='mask') "
                             f"returns a validity mask instead")
        if out is not None:
            if (not isinstance(out, np.ndarray) or out.dtype != (dt.subdtype[0] if dt.subdtype else dt)
                    or out.shape != (n,) + dt.shape or not out.flags.c_contiguous or not out.flags.writeable):
                raise ValueError(f"out must be a writable C-contiguous array of dtype {dt} with one element per "
                                 f"packet ({n}), got {out.dtype if isinstance(out, np.ndarray) else type(out).__name__}"
                                 f"{' ' + str(out.shape) if isinstance(out, np.ndarray) else ''}")
            copy = True
        elif <Py_ssize_t>first == n and stride and not copy:
            arr = readonly_view(self, dt, n, stride, self._base + self._cols.offsets[0] + hs)
            return (arr, np.ones(n, dtype=np.bool_)) if mask else arr
        if out is None:
            out = np.empty(n, dtype=dt)
        valid = np.empty(n, dtype=np.bool_) if mask else None
        cdef uint8_t* dst = <uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>out)
        cdef uint8_t* vdst = <uint8_t*>cnp.PyArray_DATA(<cnp.ndarray>valid) if mask else NULL
        if n * itemsize >= NOGIL_MIN_BYTES:
            with nogil:
                gather_payload_records(self._base, self._cols.offsets, self._cols.sizes, n, hs, itemsize, dst, vdst)
        elif n:
            gather_payload_records(self._base, self._cols.offsets, self._cols.sizes, n, hs, itemsize, dst, vdst)
        if not copy:
            out.flags.writeable = False
        return (out, valid) if mask else out

    cdef object _payload(self, Py_ssize_t i):
        cdef size_t hs = self._layout.c.header_size
        self._export_ptr = self._base + self._cols.offsets[i] + hs
        self._export_len = self._cols.sizes[i] - hs
        try:
            return PyMemoryView_FromObject(self)  # the view keeps this batch alive
        finally:
            self._export_ptr = NULL

    # -- regrouping and re-encoding ----------------------------------------

    cdef PacketBatch _take(self, cnp.uint32_t[::1] rows):
        """A batch of the given rows (same buffer, new index)."""
        cdef Py_ssize_t n = rows.shape[0], k, r
        cdef size_t hs = self._layout.c.header_size
        cdef PacketBatch out = PacketBatch.__new__(PacketBatch)
        out._layout = self._layout
        out._share_data(self)
        out._alloc_index(n)
        for k in range(n):
            r = rows[k]
            out._cols.offsets[k] = self._cols.offsets[r]
            out._cols.sizes[k] = self._cols.sizes[r]
            memcpy(out._cols.headers + k * hs, self._cols.headers + r * hs, hs)
        return out

    cdef bint _one_type(self, uint64_t* type_) noexcept:
        """True when the batch has packets and all of one type (set in
        *type_); the layout must have a type field."""
        cdef const Layout* lc = &self._layout.c
        cdef const uint8_t* hdr = self._cols.headers
        cdef size_t hs = lc.header_size
        cdef Py_ssize_t i = 1
        if self._count == 0 or lc.type_index < 0:
            return False
        cdef uint64_t first = lc.read(hdr, lc.type_index)
        while i < self._count and lc.read(hdr + i * hs, lc.type_index) == first:
            i += 1
        type_[0] = first
        return i == self._count

    def by_type(self):
        """by_type() -> dict[int, PacketBatch]

        The packets grouped by type: keys in order of first appearance,
        packets in their original order within each type.
        """
        if self._layout.c.type_index < 0:
            raise AttributeError(f"layout {self._layout.name} has no type field")
        # One type only (a burst of MOVEs, say: the common case of a
        # per-type dispatch): the batch itself, without the numpy grouping.
        cdef uint64_t first
        if self._count == 0:
            return {}
        if self._one_type(&first):
            return {first: self}
        # const: the types column is read-only, and numpy hands it back
        # uncopied when it already is contiguous uint64 (a u64 type field)
        keys = np.ascontiguousarray(self.types, dtype=np.uint64)
        cdef const cnp.uint64_t[::1] kv = keys
        order = np.empty(self._count, dtype=np.uint32)
        starts = np.empty(self._count + 1, dtype=np.uint32)
        cdef cnp.uint32_t[::1] ov = order
        cdef cnp.uint32_t[::1] sv = starts
        cdef size_t groups = 0
        if self._count:
            groups = group_by_key(&kv[0], self._count, &ov[0], &sv[0])
        result = {}
        cdef size_t g
        for g in range(groups):
            result[int(keys[order[sv[g]]])] = self._take(ov[sv[g]:sv[g + 1]])
        return result

    def to_bytes(self):
        """The packets re-encoded on the wire, back to back (one copy)."""
        cdef Py_ssize_t i
        cdef int64_t total = 0, pos = 0
        cdef bint contiguous = True
        for i in range(self._count):
            if i and self._cols.offsets[i] != self._cols.offsets[i - 1] + self._cols.sizes[i - 1]:
                contiguous = False
            total += self._cols.sizes[i]
        if self._count == 0:
            return b""
        if contiguous:
            if self._cols.offsets[0] == 0 and total == self._nbytes and type(self._data) is bytes:
                return self._data
            return PyBytes_FromStringAndSize(<const char*>self._base + self._cols.offsets[0], total)
        out = PyBytes_FromStringAndSize(NULL, total)
        cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(out)
        for i in range(self._count):
            memcpy(dst + pos, self._base + self._cols.offsets[i], self._cols.sizes[i])
            pos += self._cols.sizes[i]
        return out


# C-level references: a column built per property access needs no lookup
cdef object _U32 = np.dtype(np.uint32)
cdef object _I64 = np.dtype(np.int64)


cdef PacketBatch _build_batch(HeaderLayout nl, object types, object payloads, object seqs,
                              object player_ids):
    if types is None and nl.c.type_index >= 0:
        raise TypeError(f"types must be given: layout {nl.name} has a type field "
                        f"({nl.field_names[nl.c.type_index]!r})")
    if types is not None and nl.c.type_index < 0:
        raise ValueError(f"layout {nl.name} has no type field: pass types=None (each payload is one frame)")
    if types is None:
        types = 0  # a layout without a type field: the core's "no type"
    if isinstance(payloads, np.ndarray) and not payloads.dtype.hasobject and payloads.ndim >= 1:
        return _build_from_records(nl, types, payloads, seqs, player_ids)
    payloads = list(payloads)
    cdef Py_ssize_t n = len(payloads), i
    cdef U64Values tv, sv, pv
    keep = (u64_values(types, n, "types", &tv), u64_values(seqs, n, "seqs", &sv),
            u64_values(player_ids, n, "player_ids", &pv))
    if tv.values == NULL:
        raise TypeError("types must be an integer or one integer per payload, not None")
    cdef size_t hs = nl.c.header_size, total = 0, pos = 0
    cdef Py_buffer view
    cdef HeaderValues values
    cdef EncodeError err
    cdef uint8_t* dst
    for p in payloads:
        if not PyObject_CheckBuffer(p):
            raise TypeError(f"payloads must be bytes-like, got {type(p).__name__!r}")
        total += hs + len(memoryview(p).cast("B"))
    data = PyBytes_FromStringAndSize(NULL, total)
    dst = <uint8_t*>PyBytes_AS_STRING(data)
    for i in range(n):
        get_contiguous_buffer(payloads[i], &view, "PacketBatch.build")
        try:
            values.type = tv.values[i * tv.stride]
            values.seq = sv.values[i * sv.stride] if sv.values != NULL else 0
            values.player_id = pv.values[i * pv.stride] if pv.values != NULL else 0
            if pos + hs + <size_t>view.len > total:
                raise ValueError("a payload changed size during PacketBatch.build")
            err = encode_header(nl.c, dst + pos, values, view.len)
            if err != EncodeError.none:
                raise ValueError(f"packet {i}: " + _encode_error_text(err, nl, values.type, values.seq,
                                                                      values.player_id, view.len))
            memcpy(dst + pos + hs, view.buf, view.len)
            pos += hs + view.len
        finally:
            PyBuffer_Release(&view)
    return _batch_over(nl, data, n)


cdef inline ValueColumn _column(U64Values* v) noexcept nogil:
    cdef ValueColumn c
    c.values = v.values
    c.stride = v.stride
    return c


cdef PacketBatch _build_from_records(HeaderLayout nl, object types, object records, object seqs,
                                     object player_ids):
    """PacketBatch.build with a numpy array of payloads: one packet per row,
    encoded in one native pass (every header value checked first)."""
    arr = records_array(records, "PacketBatch.build")
    cdef RecordsView rv
    records_view(arr, &rv)
    cdef U64Values tv, sv, pv
    keep = (u64_values(types, rv.count, "types", &tv), u64_values(seqs, rv.count, "seqs", &sv),
            u64_values(player_ids, rv.count, "player_ids", &pv))
    if tv.values == NULL:
        raise TypeError("types must be an integer or one integer per payload, not None")
    cdef size_t hs = nl.c.header_size
    cdef uint64_t frame = hs + <uint64_t>rv.row_bytes
    cdef uint64_t total = frame * <uint64_t>rv.count
    if rv.count and total // <uint64_t>rv.count != frame:
        raise ValueError(f"{rv.count} packets of {frame} bytes do not fit in memory")
    data = PyBytes_FromStringAndSize(NULL, total)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(data)
    cdef RecordsFault f
    if total >= NOGIL_MIN_BYTES:
        with nogil:
            f = encode_records(nl.c, rv.data, rv.count, rv.row_bytes, rv.row_stride, _column(&tv), _column(&sv),
                               _column(&pv), dst)
    else:
        f = encode_records(nl.c, rv.data, rv.count, rv.row_bytes, rv.row_stride, _column(&tv), _column(&sv),
                           _column(&pv), dst)
    if f.error != EncodeError.none:
        raise ValueError(f"packet {f.index}: " + _encode_error_text(
            f.error, nl, f.value if f.error == EncodeError.type_range else 0,
            f.value if f.error == EncodeError.seq_range else 0,
            f.value if f.error == EncodeError.player_id_range else 0, rv.row_bytes))
    return _batch_over(nl, data, rv.count)


@cython.final
cdef class _HeldBuffer:
    """An outside buffer a PacketBatch lies over (PacketBatch.over)."""

    def __dealloc__(self):
        if self._held:
            PyBuffer_Release(&self._view)


cdef PacketBatch _batch_over(HeaderLayout nl, bytes data, Py_ssize_t count):
    """A batch over `count` frames known to lie back to back in `data`."""
    cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
    b._layout = nl
    b._set_data(data)
    b._alloc_index(count)
    if count:
        index_frames(nl.c, b._base, count, 0, b._cols)
    return b


cdef Py_ssize_t _index_arg(object index, Py_ssize_t count, str name) except -1:
    """A packet index (negative from the end) as a row of a batch of
    `count`: TypeError naming `name` for what is not an int, IndexError
    outside the batch (as a list does, huge values included)."""
    given = _as_index(index, name)
    index = given + count if given < 0 else given
    if not 0 <= index < count:
        raise IndexError(f"packet index {given} out of range for a batch of {count}")
    return index

# The scratch index of _decode_span's one-pass plan (grown on demand, held
# for the life of the process: at most the index of NOGIL_MIN_BYTES of
# one-byte headers, about 213 KB). Used only with the GIL held.
cdef void* _scratch_block = NULL
cdef size_t _scratch_bytes = 0


cdef IndexColumns _scan_scratch(size_t capacity, size_t header_size) except *:
    global _scratch_block, _scratch_bytes
    cdef size_t need = index_bytes(capacity, header_size)
    cdef void* grown
    if need > _scratch_bytes:
        grown = realloc(_scratch_block, need)
        if grown == NULL:
            raise MemoryError(f"cannot allocate a scan index of {need} bytes")
        _scratch_block = grown
        _scratch_bytes = need
    return index_view(_scratch_block, capacity, header_size)


cdef bytes _EMPTY_BYTES = b""


cdef class FrameDecoder:
    """FrameDecoder(layout=GAME, max_packet_size=65535, aggregator=None, *, max_inflate_bytes=None)

    Incremental stream framing: feed() takes any contiguous bytes-like chunk
    of a TCP stream and returns a PacketBatch of every packet it completes,
    keeping an incomplete tail (`pending` bytes) for the next feed.

    A header announcing a size below the header size or above
    max_packet_size (at most MAX_PACKET_SIZE, 2**32 - 1) raises
    ProtocolError naming the value, the limit and the stream offset; the
    packets of that feed before the bad one are delivered on the exception
    as `exc.batch`. The decoder then refuses input until reset(). Oversize
    headers fail as soon as the header arrives, before the payload is
    buffered, so a decoder holds at most `frame_limit` bytes.

    With an `aggregator` (fastpacket.Aggregator), aggregate frames (type
    0xFFFF) are unwrapped in place: the batch holds the packets in stream
    order, each aggregate replaced by its inner packets. Every packet
    delivered, alone or inside an aggregate, is at most max_packet_size
    (an inner one over it fails the aggregate's "max_packet_size" check),
    while the aggregate frames themselves may be as large as a peer packs
    them (header + aggregate header + max_raw_size, within what the length
    field announces: `frame_limit`); a plain packet over max_packet_size is
    still refused at its header. A bad aggregate
    raises AggregateError with the packets before it as `exc.batch` and
    fails the decoder until reset(). Without an aggregator, aggregates pass
    through as ordinary packets.

    `max_inflate_bytes` (with an aggregator; None: no budget but each
    frame's max_raw_size) bounds what one feed inflates, checked against
    the raw_size each aggregate declares before anything is decompressed:
    an aggregate declaring more on its own is refused (AggregateError,
    check "max_inflate_bytes"); the frames from the one that would take a
    feed past the budget on wait in the decoder (`deferred` bytes) and the
    next feed delivers them first, before its own; ``feed(b"")`` delivers
    them without new input. A bad header in a feed that left frames
    waiting drops them (the stream is broken anyway) and says so.
    """

    def __cinit__(self, layout=None, max_packet_size=kDefaultMaxPacketSize, aggregator=None, *,
                  max_inflate_bytes=None):
        cdef HeaderLayout nl = _layout_arg(layout)
        # at most 2**32 - 1: batch sizes are u32 (and every announced size,
        # saturated or not, then compares exactly: framing.hpp)
        cdef Py_ssize_t max_size = ssize_arg(max_packet_size, "max_packet_size", nl.c.header_size,
                                             kMaxPacketSizeLimit)
        cdef uint64_t budget = 0
        cdef Py_ssize_t frame_limit = 0
        self._layout = nl
        self._aggregator = _aggregator_arg(aggregator)
        if max_inflate_bytes is not None:
            if self._aggregator is None:
                raise ValueError("max_inflate_bytes bounds what an aggregator inflates: it needs aggregator=")
            budget = u64_arg(max_inflate_bytes, "max_inflate_bytes")
            if budget == 0:
                raise ValueError("max_inflate_bytes must be >= 1 (None: no budget)")
        if self._aggregator is not None:
            self._unwrapper = _Unwrapper(self._aggregator, nl, max_size, budget)
            frame_limit = self._aggregator._outer_frame_limit(nl, budget)
        self._dec = new CppFrameDecoder(nl.c, max_size, frame_limit)

    def __dealloc__(self):
        del self._dec

    cdef int _allow_aggregates(self, Py_ssize_t limit) except -1:
        """Let aggregate frames up to `limit` bytes through the scan, for a
        caller that unwraps them itself (the asyncio adapter, which charges
        the rate limit in between). Only on a fresh decoder."""
        cdef CppFrameDecoder* dec = new CppFrameDecoder(self._layout.c, self._dec.max_packet_size(), limit)
        del self._dec
        self._dec = dec
        return 0

    @property
    def layout(self):
        """The HeaderLayout this decoder frames."""
        return self._layout

    @property
    def max_packet_size(self):
        """Largest packet delivered, header included, in bytes."""
        return self._dec.max_packet_size()

    @property
    def frame_limit(self):
        """Largest frame the stream may carry, in bytes: max_packet_size, or
        with an aggregator the larger of it and the largest aggregate frame
        (what the decoder may hold while a frame arrives)."""
        return self._dec.frame_limit()

    @property
    def deferred(self):
        """Bytes of frames decoded but not yet delivered because the feed
        that completed them reached max_inflate_bytes; the next feed
        delivers them first."""
        return self._unwrapper._held_bytes if self._unwrapper is not None else 0

    @property
    def pending(self):
        """Bytes held for an incomplete packet."""
        return self._dec.pending()

    @property
    def stream_offset(self):
        """Stream offset of the first byte not yet delivered in a batch."""
        return self._dec.stream_offset()

    @property
    def failed(self):
        """True after a ProtocolError, until reset()."""
        return self._dec.failed() or self._aggregate_failed

    @property
    def aggregator(self):
        """The Aggregator unwrapping aggregate frames, or None."""
        return self._aggregator

    def reset(self):
        """Forget any pending bytes and a previous error; start a new stream."""
        self._dec.reset()
        self._aggregate_failed = False
        if self._unwrapper is not None:
            self._unwrapper._drop_held()

    def feed(self, data):
        """feed(data) -> PacketBatch: every packet completed by `data`."""
        cdef Py_buffer view
        get_contiguous_buffer(data, &view, "FrameDecoder.feed")
        try:
            return self._feed(<const uint8_t*>view.buf, view.len, data if type(data) is bytes else None)
        finally:
            PyBuffer_Release(&view)

    def feed_from(self, ring):
        """feed_from(ring) -> PacketBatch: every complete packet readable in
        `ring` (a fastpacket.RingBuffer), decoded in place.

        The packets are copied once, into the batch, and consumed from the
        ring; an incomplete packet at the end is left in the ring for the
        next call (on a ring without the double map, a packet straddling the
        wrap point moves into the decoder's pending buffer instead). Errors
        as feed(): the packets before a bad header are on `exc.batch` and
        consumed; the bad bytes stay in the ring. Call it from the ring's
        consumer thread. Implemented in _ring.pxi.
        """
        return _feed_from_ring(self, ring)

    cdef int _check_usable(self) except -1:
        if self._aggregate_failed:
            raise ProtocolError(f"the decoder failed on a bad aggregate frame before stream offset "
                                f"{self._dec.stream_offset()}; call reset() before feeding a new stream",
                                offset=self._dec.stream_offset())
        return 0

    cdef PacketBatch _decode_span(self, const uint8_t* p, size_t n, bytes immutable, bint keep_tail,
                                  size_t* taken, ErrorInfo* error, object lender=None):
        """One plan/emit over p[0, n): the batch of its complete frames
        (aggregates not yet unwrapped). With keep_tail the incomplete tail
        moves into the decoder's pending buffer (feed()); without it the tail
        stays where it is (feed_from(): it stays in the ring). *taken is the
        number of input bytes the decoder took; *error the bad header, if any.
        An immutable `bytes` input holding exactly whole frames is kept as the
        batch's data instead of being copied; so are the frames at the tail
        of a `lender` RingBuffer whose readable bytes p[0, n) are (a pinned
        view of them: _lend_frames)."""
        cdef CppFrameDecoder.FeedPlan plan
        cdef uint8_t* out = NULL
        cdef size_t emit_n
        cdef size_t hs = self._layout.c.header_size
        cdef IndexColumns scratch
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        b._layout = self._layout
        if FUSED_SCAN_MIN_BYTES <= n < NOGIL_MIN_BYTES:
            # Small feeds, where the fixed cost per feed counts: one pass
            # that scans and indexes into the module's scratch index (the
            # GIL is held from here to the copy below, and nothing between
            # runs Python code: no other feed can touch the scratch), then
            # the exact index is allocated and the columns copied in bulk.
            # (Larger feeds scan, then index straight into the batch: their
            # columns would not stay in cache between a scratch and a copy.
            # So do feeds of a packet or two, for which the copies cost more
            # than the second pass.)
            scratch = _scan_scratch(self._dec.index_capacity(n), hs)
            plan = self._dec.plan_indexed(p, n, scratch)
            if plan.error.kind != FrameError.failed:
                b._alloc_index(plan.count)
                if plan.count:
                    memcpy(b._cols.offsets, scratch.offsets, plan.count * sizeof(int64_t))
                    memcpy(b._cols.sizes, scratch.sizes, plan.count * sizeof(uint32_t))
                    memcpy(b._cols.headers, scratch.headers, plan.count * hs)
        else:
            if n >= NOGIL_MIN_BYTES:
                with nogil:
                    plan = self._dec.plan(p, n)
            else:
                plan = self._dec.plan(p, n)
            if plan.error.kind != FrameError.failed:
                b._alloc_index(plan.count)
        if plan.error.kind == FrameError.failed:
            raise ProtocolError(f"the decoder failed at stream offset {plan.error.stream_offset}; "
                                f"call reset() before feeding a new stream",
                                offset=plan.error.stream_offset)
        if plan.count == 0:
            b._set_data(_EMPTY_BYTES)
        elif immutable is not None and CppFrameDecoder.zero_copy(plan):
            b._set_data(immutable)  # frames are input[0, scan_end): keep the input itself
        elif lender is not None and plan.data_bytes >= LEND_MIN_BYTES and CppFrameDecoder.zero_copy(plan):
            _lend_frames(b, <RingBuffer>lender, p, plan.scan_end)  # the frames where they lie, in the ring
        else:
            b._set_data(PyBytes_FromStringAndSize(NULL, plan.data_bytes))
            out = <uint8_t*>b._base
        emit_n = n if keep_tail and plan.error.kind == FrameError.none else plan.scan_end
        if plan.data_bytes >= NOGIL_MIN_BYTES:
            with nogil:
                self._dec.emit(p, emit_n, plan, out, b._cols)
        else:
            self._dec.emit(p, emit_n, plan, out, b._cols)
        taken[0] = emit_n
        error[0] = plan.error
        return b

    cdef PacketBatch _finish(self, PacketBatch b, ErrorInfo error):
        """Unwraps aggregates (with an aggregator: what waited from the
        previous feed first), then raises the decode error, if any, with the
        packets before it as exc.batch."""
        cdef Py_ssize_t i, dropped = 0
        cdef size_t nbytes = 0
        if self._unwrapper is not None:
            for i in range(b._count):
                nbytes += b._cols.sizes[i]
            b = self._unwrap(b, nbytes)
            if error.kind != FrameError.none and self._unwrapper._held:
                dropped = self._unwrapper._drop_held()  # past the budget, before a broken stream: dropped
        if error.kind != FrameError.none:
            exc = self._protocol_error(error, b)
            if dropped:
                exc.args = (f"{exc.args[0]}; the {dropped} frames before it past max_inflate_bytes were "
                            f"dropped, not unwrapped",)
            raise exc
        return b

    cdef PacketBatch _feed(self, const uint8_t* p, size_t n, bytes immutable):
        cdef size_t taken
        cdef ErrorInfo error
        self._check_usable()
        return self._finish(self._decode_span(p, n, immutable, True, &taken, &error), error)

    cdef PacketBatch _unwrap(self, PacketBatch b, size_t data_bytes):
        # the batch's bytes end where the decoder's stream offset now is
        try:
            return self._unwrapper.unwrap(b, self._dec.stream_offset() - data_bytes)
        except ProtocolError:
            self._aggregate_failed = True
            raise

    cdef object _protocol_error(self, ErrorInfo e, PacketBatch delivered):
        cdef Layout* c = &self._layout.c
        field = self._layout.field_names[c.length_index]
        if e.kind == FrameError.too_small:
            msg = (f"packet size {e.frame_size} at stream offset {e.stream_offset} is below the "
                   f"header size {c.header_size} (length field {field!r} = {e.length_value})")
            limit = c.header_size
        elif e.frame_size <= self._dec.frame_limit():  # a plain packet over max_packet_size
            msg = (f"packet size {e.frame_size} at stream offset {e.stream_offset} exceeds "
                   f"max_packet_size {self._dec.max_packet_size()} (length field {field!r} = {e.length_value})")
            limit = self._dec.max_packet_size()
        else:
            msg = (f"packet size {e.frame_size} at stream offset {e.stream_offset} exceeds "
                   f"max_packet_size {self._dec.max_packet_size()} and the largest aggregate frame "
                   f"{self._dec.frame_limit()} (length field {field!r} = {e.length_value})")
            limit = self._dec.frame_limit()
        return ProtocolError(msg, offset=e.stream_offset, value=e.frame_size, limit=limit,
                             batch=delivered)
