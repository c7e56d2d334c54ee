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
                     PacketBatch into)
    cdef bytes _decompress(self, int codec, object owner, const uint8_t* src, size_t n, uint32_t raw_size,
                           int64_t where)


cdef Aggregator _aggregator_arg(object aggregator)
cdef PacketBatch _unwrap_aggregates(Aggregator agg, PacketBatch b, uint64_t stream_base)
