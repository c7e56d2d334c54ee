# Framing (_framing.pxi): header layouts, packets, packet batches, the
# stream decoder.

cdef class PacketBatch
cdef class Aggregator
cdef class _Unwrapper


cdef class HeaderLayout:
    cdef Layout c                       # what the C++ core reads
    cdef readonly str name
    cdef readonly tuple fields          # ((name, kind), ...) in wire order
    cdef readonly tuple field_names
    cdef readonly str length_field
    cdef readonly bint length_includes_header
    cdef readonly str byteorder
    cdef readonly object length_adjustment
    cdef readonly str struct_format
    cdef readonly object dtype          # numpy structured dtype of a header
    cdef dict _roles                    # {"type"|"seq"|"player_id": field name or None}
    cdef tuple _field_dtypes            # numpy dtype of each field
    cdef tuple _key                     # what equality and hash compare


@cython.final
cdef class Packet:
    cdef PacketBatch _batch
    cdef Py_ssize_t _index


@cython.final
cdef class _PacketIterator:
    cdef PacketBatch _batch
    cdef Py_ssize_t _next


@cython.final
cdef class PacketBatch:
    cdef HeaderLayout _layout
    # Owns the packet bytes: a bytes object (PyBytes_AS_STRING(_data) is
    # _base), or a _HeldBuffer over an outside buffer (PacketBatch.over).
    cdef object _data
    cdef const uint8_t* _base           # the first byte of _data's buffer
    cdef Py_ssize_t _nbytes             # bytes of _data's buffer
    cdef Py_ssize_t _count
    # The range __getbuffer__ exports: one payload while _payload() builds a
    # memoryview (synchronously, under the GIL), else all the batch's bytes.
    cdef const uint8_t* _export_ptr
    cdef Py_ssize_t _export_len
    cdef void* _block                   # the index columns (malloc'd, owned)
    cdef size_t _block_bytes
    cdef IndexColumns _cols

    cdef int _alloc_index(self, Py_ssize_t count) except -1
    cdef void _set_data(self, bytes data)
    cdef void _share_data(self, PacketBatch other)
    cdef Packet _packet(self, Py_ssize_t i)
    cdef object _field_column(self, int field, str role)
    cdef object _payload(self, Py_ssize_t i)
    cdef PacketBatch _take(self, cnp.uint32_t[::1] rows)
    cdef bint _one_type(self, uint64_t* type_) noexcept  # every packet of one type (at least one packet)


@cython.final
cdef class _HeldBuffer:
    # An outside object's buffer, held (exported) for as long as a batch
    # over it lives: the owner stays alive and, for exporters that lock
    # (bytearray, numpy), cannot be resized under the batch.
    cdef Py_buffer _view
    cdef bint _held                     # _view was acquired (released at dealloc)


cdef class FrameDecoder:
    cdef CppFrameDecoder* _dec
    cdef HeaderLayout _layout
    cdef Aggregator _aggregator         # unwraps aggregate frames, or None
    cdef _Unwrapper _unwrapper          # with an aggregator: unwraps them (and holds what waits)
    cdef bint _aggregate_failed         # a bad aggregate frame: the stream is untrustworthy until reset()

    cdef int _allow_aggregates(self, Py_ssize_t limit) except -1
    cdef int _check_usable(self) except -1
    cdef PacketBatch _decode_span(self, const uint8_t* p, size_t n, bytes immutable, bint keep_tail,
                                  size_t* taken, ErrorInfo* error, object lender=*)
    cdef PacketBatch _finish(self, PacketBatch b, ErrorInfo error)
    cdef PacketBatch _feed(self, const uint8_t* p, size_t n, bytes immutable)
    cdef PacketBatch _unwrap(self, PacketBatch b, size_t data_bytes)
    cdef object _protocol_error(self, ErrorInfo e, PacketBatch delivered)


cdef HeaderLayout _layout_arg(object layout)
cdef int _type_arg(HeaderLayout nl, object type, uint64_t* out) except -1
cdef str _encode_error_text(EncodeError err, HeaderLayout layout, uint64_t type_, uint64_t seq,
                            uint64_t player_id, size_t payload_len)
cdef PacketBatch _batch_over(HeaderLayout nl, bytes data, Py_ssize_t count)
cdef Py_ssize_t _index_arg(object index, Py_ssize_t count, str name) except -1
