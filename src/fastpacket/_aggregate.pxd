# Aggregation (_aggregate.pxi): batches packed into aggregate frames and the
# checks that open them again.

@cython.final
cdef class _ByteWindow:
    cdef object _owner
    cdef const uint8_t* _ptr
    cdef Py_ssize_t _len


cdef class Aggregator:
    cdef AggregateStats* _stats
    cdef int _codec
    cdef int _level
    cdef dict _lz4_kwargs
    cdef int _acceleration
    cdef size_t _threshold
    cdef double _min_saving
    cdef uint64_t _max_raw_size
    cdef int64_t _max_frame_size        # 0: the layout's length field is the only limit
    cdef HeaderLayout _layout           # the layout unpack() reads frames in

    cdef int64_t _frame_limit(self, HeaderLayout nl)
    cdef int _check_layout(self, HeaderLayout nl) except -1
    cdef uint64_t _body_limit(self, HeaderLayout nl)
    cdef bytes _pack_run(self, PacketBatch b, Py_ssize_t begin, Py_ssize_t end, uint64_t seq,
                         uint64_t player_id)
    cdef list _pack_many(self, PacketBatch b, uint64_t seq, uint64_t player_id)
    cdef bytes _compress(self, object owner, const uint8_t* body, size_t n)
    cdef bytes _open(self, HeaderLayout nl, bytes owner, const uint8_t* frame, size_t n,
                     int64_t where, const uint8_t** body_out, size_t* count_out, size_t* nbytes_out,
                     PacketBatch into, int64_t max_packet_size)
    cdef int64_t _outer_frame_limit(self, HeaderLayout nl, uint64_t budget)
    cdef bytes _decompress(self, int codec, object owner, const uint8_t* src, size_t n, uint32_t raw_size,
                           int64_t where)


@cython.final
cdef class _Unwrapper:
    cdef Aggregator _agg
    cdef HeaderLayout _layout
    cdef int64_t _max_packet_size       # every packet delivered, alone or inner
    cdef uint64_t _budget               # max_inflate_bytes per call; 0: none
    cdef list _held                     # [(PacketBatch of frames, first row, stream offset of its data)]
    cdef readonly size_t _held_bytes    # bytes of the held frames

    cdef int _hold(self, PacketBatch b, Py_ssize_t row, uint64_t stream_base) except -1
    cdef Py_ssize_t _drop_held(self)
    cdef bint _plain(self, PacketBatch b)
    cdef int _fail(self, list segments, object error, uint64_t where) except -1
    cdef PacketBatch unwrap(self, PacketBatch frames, uint64_t stream_base)


cdef Aggregator _aggregator_arg(object aggregator)
cdef PacketBatch _concat_segments(HeaderLayout nl, list segments)
cdef int _add_run(list segments, PacketBatch b, Py_ssize_t begin, Py_ssize_t end) except -1
cdef size_t _frames_bytes(PacketBatch b, Py_ssize_t row)
cdef object _budget_error(uint64_t raw_size, uint64_t budget, uint64_t where, size_t hs)
cdef object _oversize_error(HeaderLayout nl, PacketBatch b, Py_ssize_t i, uint64_t where, int64_t limit)
