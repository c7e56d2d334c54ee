# The asyncio adapter's native half (_aio.pxi): the state the sessions of
# one server share (Hub) and the protocol itself (SessionBase, completed by
# fastpacket.aio.Session).

cdef class SessionBase
cdef class Group


@cython.final
cdef class Hub:
    cdef readonly object loop
    cdef readonly object options        # the checked fastpacket.aio.Options
    cdef readonly set sessions          # the open (accepted) sessions
    cdef readonly dict closes           # close reason class (slug) -> sessions
    cdef readonly dict drops            # drop reason -> packets (or connections)
    # handed in
    cdef object _handler                # handler(session, batch), or None
    cdef dict _handlers                 # {type: handler}, or None
    cdef object _on_connect
    cdef object _on_close
    cdef object _metrics                # {name: registry metric}, or None
    cdef dict _type_counters            # {type: packets_by_type_total counter}, or None
    cdef object _type_other             # the counter of every other type
    cdef bint _any_async                # some handler is async: bursts go through the ordered path
    cdef bint _handler_async            # _handler is an async function
    cdef frozenset _async_types         # the types whose _handlers entry is async
    # the options, read once
    cdef HeaderLayout _layout
    cdef Aggregator _aggregator
    cdef Py_ssize_t _max_packet_size
    cdef Py_ssize_t _send_buffer
    cdef Py_ssize_t _ring_capacity
    cdef Py_ssize_t _frame_limit        # the decoders' limit: max_packet_size, or aggregate frames'
    cdef uint64_t _inflate_budget       # max_inflate_bytes per read and connection; 0: none
    cdef Py_ssize_t _max_pending_bytes
    cdef Py_ssize_t _max_connections    # -1: no limit
    cdef double _fill_ratio
    cdef double _max_delay
    cdef double _write_timeout
    cdef double _packets_per_s
    cdef double _bytes_per_s
    cdef double _rate_burst
    cdef bint _rate_close
    cdef uint64_t _idle_timeout_ns      # 0: no idle timeout
    cdef uint64_t _packet_timeout_ns    # 0: no packet timeout
    cdef Py_ssize_t _queue_packets      # handler_queue_packets: received, not yet handled, per session
    cdef Py_ssize_t _queue_bytes        # handler_queue_bytes
    # state
    cdef bint _in_burst                 # a handler is running
    cdef list _dirty                    # sessions with output queued outside their own read burst
    cdef list _rings                    # receive rings to lend: _rings[:_nrings], None past it
    cdef Py_ssize_t _nrings
    cdef object _flush_handle
    cdef bint _flush_soon               # _flush_handle runs at the end of this loop iteration
    cdef object _idle_handle
    cdef object _trim_handle            # the pool trim timer, or None
    cdef Py_ssize_t _rings_low          # fewest rings pooled since the last trim (never needed: spare)
    cdef Py_ssize_t _closes_since_trim
    # groups and the bus
    cdef object _groups                 # weakref.WeakValueDictionary: name -> Group
    cdef list _dirty_groups             # groups with packets gathered for the bus this iteration
    cdef readonly object bus            # the bus (fastpacket.aio.Bus), or None
    cdef uint64_t _bus_sender           # the bus's sender id: this server's own publishes
    cdef Aggregator _bus_agg            # packs publishes (None: the layout has no type field)
    cdef FrameDecoder _bus_decoder      # opens messages from the bus
    cdef SendBuffer _scratch            # Group.send encodes its packet here, once (made on first use)

    cdef RingBuffer _lend_ring(self)
    cdef int _return_ring(self, RingBuffer ring) except -1
    cdef int _arm_trim(self) except -1
    cdef int _count_type(self, object ptype, Py_ssize_t n) except -1
    cdef int _call_handler(self, object fn, SessionBase session, PacketBatch batch) except -1
    cdef int _flush_dirty(self) except -1
    cdef int _schedule_flush(self, bint soon) except -1
    cdef Py_ssize_t _write(self, SessionBase session, object view, Py_ssize_t nbytes,
                           Py_ssize_t count) except -1
    cdef bint _open(self, SessionBase session) except -1
    cdef int _count_close(self, SessionBase session, str reason, bint was_open) except -1
    cdef int _count_drop(self, str reason, Py_ssize_t n) except -1
    cdef int _slow_consumer(self, SessionBase session) except -1
    cdef int _arm_idle_sweep(self) except -1
    cdef int _schedule_session_flush(self, SessionBase session) except -1
    cdef int _publish_group(self, Group group) except -1
    cdef int _publish_groups(self) except -1


cdef class SessionBase:
    cdef readonly object transport
    cdef readonly uint64_t packets_in, bytes_in, batches_in, packets_out, bytes_out, flushes
    cdef readonly uint64_t dropped_in, dropped_out
    cdef Hub _hub
    cdef object _handler
    cdef dict _handlers
    cdef FrameDecoder _decoder          # no aggregator: _unwrapper unwraps, after the rate limit
    cdef _Unwrapper _unwrapper          # with an aggregator, else None
    cdef RingBuffer _ring               # lent while data is pending, else None
    cdef _RingHead _head                # what get_buffer() lends: _ring's free space (made on first read)
    cdef bint _lend_batches             # batches lie over the ring's bytes (sync handlers, no aggregator)
    cdef SendBuffer _sendbuf            # made on the first send (idle connections hold none): _out() makes it
    cdef object _close_reason
    cdef bint _opened                   # accepted by the hub (not refused)
    cdef bint _closing
    cdef bint _writing_paused
    cdef bint _in_burst                 # this session's own read burst is being handled
    cdef bint _dirty                    # on the hub's dirty list
    cdef uint64_t _last_packet_ns       # when the last complete packet arrived (idle_timeout)
    cdef uint64_t _partial_since_ns     # when the partial packet pending began; 0: none (packet_timeout)
    cdef bint _inflate_paused           # reading paused: aggregate frames wait for the next inflate budget
    cdef object _unwrap_handle          # the loop callback unwrapping them, or None
    cdef TokenBucket _bucket
    cdef bint _rate_close
    cdef object _inbox                  # asyncio.Queue of batches for a client without a handler
    cdef object _closed                 # future: the close reason
    cdef object _write_timer
    # async handlers: the bursts of one session are handled in order
    cdef object _task                   # the task running this session's pending handlers, or None
    cdef object _work                   # collections.deque of (handler, batch, is_async) waiting for it
    cdef Py_ssize_t _work_packets       # packets in _work
    cdef Py_ssize_t _work_bytes         # bytes in _work
    cdef bint _queue_paused             # reading paused: _work is over the handler queue's bounds
    cdef bint _lost                     # the connection is gone; closing is finished once _task ends
    cdef object _drain_reason           # close with this reason once _task ends (graceful shutdown)
    cdef list _groups                   # the groups it is a member of, or None
    # the native write path (asyncio's selector loop): flushes go straight to the socket
    cdef int _fd                        # the socket's fd while writes may bypass the transport, else -1
    cdef bint _transport_buffered       # the transport may hold bytes: write through it until it is empty
    # the native read path (asyncio's selector loop): the transport's read callback is _read_ready
    cdef int _rfd                       # the socket's fd while reads bypass get_buffer(), else -1

    cdef int _received(self, RingBuffer ring, Py_ssize_t nbytes) except -1
    cdef PacketBatch _admit(self, PacketBatch frames, uint64_t now)
    cdef RingBuffer _keep_pinned_ring(self, RingBuffer ring)
    cdef int _deliver(self, PacketBatch frames, uint64_t base, object error) except -1
    cdef int _drop_held(self) except -1
    cdef int _dispatch(self, PacketBatch batch) except -1
    cdef int _dispatch_ordered(self, PacketBatch batch) except -1
    cdef int _handle(self, object fn, PacketBatch batch, bint is_async) except -1
    cdef object _next_work(self)
    cdef int _drop_work(self) except -1
    cdef int _drained(self) except -1
    cdef int _finish_close(self) except -1
    cdef bint _may_read(self)
    cdef object _send(self, object type, object payload, object player_id, object seq)
    cdef Py_ssize_t _send_rows(self, uint64_t type_, const uint8_t* rows, Py_ssize_t count, Py_ssize_t row_bytes,
                               Py_ssize_t row_stride, const uint64_t* ids, size_t id_stride) except -1
    cdef bint _make_room(self) except -1
    cdef int _after_send(self) except -1
    cdef SendBuffer _out(self)
    cdef int _flush(self) except -1
    cdef Py_ssize_t _write_through(self, size_t nbytes, size_t count) except -2
    cdef int _write_out(self) except -1
    cdef int _send_failed(self, BaseException exc, size_t n) except -1
    cdef int _close(self, object reason) except -1
    cdef int _abort(self, object reason) except -1
    cdef int _leave_groups(self) except -1
