# Groups (_group.pxi): the sessions of one server that share a name (a
# room), the native fan-out that copies packets into each member's send
# buffer, and the publish buffer a bus carries to other servers.

# Fan-outs moving at least this many bytes in all (packet bytes times
# members) run with the GIL released.
cdef enum:
    FANOUT_NOGIL_MIN_BYTES = 65536
# Bytes a group gathers for the bus within one loop iteration before it
# publishes early (a publish never waits for the end of the iteration
# past this).
cdef enum:
    PUBLISH_BUFFER_BYTES = 256 << 10
# The bus message header (fastpacket.cluster documents the format): magic,
# version, flags, run count, sender id; then one u32 per run.
cdef enum:
    BUS_MAGIC = 0x4650           # "PF" little-endian: a fastpacket bus message
    BUS_VERSION = 1
    BUS_FLAG_AGGREGATED = 1      # the body is aggregate frames (else plain packets)
    BUS_HEADER_BYTES = 16
    BUS_RUN_RENUMBER = 0x80000000  # run bit: the packets get each member's own seq
    BUS_MAX_RUNS = 0xFFFF


@cython.final
cdef class Group:
    cdef readonly object name           # str or int
    cdef readonly object channel        # the bus channel (bytes), or None without a bus
    cdef Hub _hub
    cdef list _members                  # SessionBase, in no particular order (swap-remove)
    cdef dict _index                    # session -> its position in _members
    cdef object __weakref__             # the hub maps names to live groups only
    # the fan-out's scratch arrays, one slot per member (grown, never per packet)
    cdef CppSendBuffer** _targets
    cdef Py_ssize_t* _picked
    cdef SendStatus* _status
    cdef Py_ssize_t _capacity
    # what this loop iteration sent to the group, for the bus
    cdef SendBuffer _pub                # None without a bus
    cdef list _runs                     # [count | BUS_RUN_RENUMBER?, ...] over _pub's packets
    cdef bint _dirty                    # on the hub's dirty group list
    cdef bint _subscribed               # the bus was asked to subscribe (local members)

    cdef int _reserve(self, Py_ssize_t n) except -1
    cdef Py_ssize_t _fanout(self, const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                            Py_ssize_t count, uint64_t nbytes, bint renumber, SessionBase exclude) except -1
    cdef Py_ssize_t _fanout_batch(self, PacketBatch b, Py_ssize_t begin, Py_ssize_t end, bint renumber,
                                  SessionBase exclude, bint gather) except -1
    cdef int _gather(self, const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                     Py_ssize_t count, bint renumber) except -1
    cdef int _mark_dirty(self) except -1
    cdef bytes _take_message(self)
    cdef int _remove(self, SessionBase session) except -1
