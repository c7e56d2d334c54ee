# SendBuffer (_sendbuf.pxi): coalesced sends into one of two buffers.

#: Largest SendBuffer, in bytes: one flush is one transport.write.
cdef enum:
    SENDBUF_MAX_BYTES = 1 << 30


@cython.final
cdef class _SendChunk:
    cdef uint8_t* _mem
    cdef Py_ssize_t _len
    cdef Py_ssize_t _exports


cdef class SendBuffer:
    cdef CppSendBuffer* _c
    cdef HeaderLayout _layout
    cdef _SendChunk _active             # being filled
    cdef _SendChunk _flushed            # returned by the last flush(); reused when released
    cdef size_t _max
    cdef size_t _reserved               # bytes scatter() has promised this buffer, during its first pass

    cdef int _fail(self, SendStatus st, EncodeError err, uint64_t frame, str what, uint64_t type_,
                   uint64_t seq, uint64_t player_id, size_t payload_len) except -1
    cdef object _flush_view(self)
    cdef uint64_t _append_rows(self, uint64_t type_, const uint8_t* rows, size_t count, size_t row_bytes,
                               Py_ssize_t row_stride, const uint64_t* ids, size_t id_stride) except? 0xFFFFFFFFFFFFFFFF


cdef int check_player_ids(HeaderLayout layout, U64Values* ids, Py_ssize_t n) except -1
