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

    cdef int _fail(self, SendStatus st, EncodeError err, uint64_t frame, str what, uint64_t type_,
                   uint64_t seq, uint64_t player_id, size_t payload_len) except -1
    cdef object _flush_view(self)
