# asyncio adapter hot path: the receive burst (get_buffer -> buffer_updated
# -> decode -> handler -> coalesced flush) and the send calls. The asyncio
# callbacks that are not hot (connection_made/lost, pause/resume_writing)
# live in the Python subclass fastpacket.aio.Session, which also derives
# from asyncio.BufferedProtocol so asyncio's isinstance checks see it
# (picows's pattern).

cdef extern from "fastpacket/limits.hpp" namespace "fastpacket" nogil:
    cdef cppclass TokenBucket:
        TokenBucket()
        TokenBucket(double packets_per_s, double bytes_per_s, double burst_s)
        bint enabled()
        size_t admit(double now, const uint32_t* sizes, size_t n)

cdef extern from "<time.h>" nogil:
    ctypedef long time_t
    cdef struct timespec:
        time_t tv_sec
        long tv_nsec
    int clock_gettime(int clk, timespec* ts)
    int CLOCK_MONOTONIC

import logging as _logging

_aio_log = _logging.getLogger("fastpacket.aio")


cdef inline double _monotonic() noexcept nogil:
    # the same clock as time.monotonic() and asyncio's loop.time()
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef class ProtocolCore:
    """Native half of fastpacket.aio.Session (see there for the docs)."""

    cdef public object transport
    cdef public object _hub             # aio._Hub: options, pools, sessions, dirty list
    cdef public object _handler         # handler(session, batch) or None
    cdef public dict _handlers          # {type: handler} or None
    cdef public object _decoder         # FrameDecoder
    cdef public object _ring            # RingBuffer lent while data is pending, else None
    cdef public object _sendbuf         # SendBuffer
    cdef public object _close_reason
    cdef public bint _closing
    cdef public bint _writing_paused
    cdef public bint _in_burst
    cdef public bint _dirty
    cdef public double _last_activity
    cdef public uint64_t packets_in, bytes_in, packets_out, bytes_out, batches_in, flushes, dropped_in
    cdef public uint64_t dropped_out
    cdef TokenBucket _bucket
    cdef public str _rate_policy
    cdef public object _inbox            # asyncio.Queue of batches for clients without a handler

    def _configure_core(self, hub, handler, handlers, decoder, sendbuf, double packets_per_s,
                        double bytes_per_s, double burst_s, str rate_policy):
        self._hub = hub
        self._handler = handler
        self._handlers = handlers
        self._decoder = decoder
        self._sendbuf = sendbuf
        self._ring = None
        self._close_reason = None
        self._closing = False
        self._writing_paused = False
        self._in_burst = False
        self._dirty = False
        self._last_activity = _monotonic()
        self.packets_in = self.bytes_in = self.packets_out = self.bytes_out = 0
        self.batches_in = self.flushes = self.dropped_in = self.dropped_out = 0
        self._bucket = TokenBucket(packets_per_s, bytes_per_s, burst_s)
        self._rate_policy = rate_policy

    # -- receive -----------------------------------------------------------

    def get_buffer(self, Py_ssize_t size_hint):
        if self._ring is None:
            self._ring = self._hub.lend_ring()
        return self._ring.writable()

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef object error = None
        cdef PacketBatch batch
        cdef size_t admitted
        cdef double now = _monotonic()
        self._ring.commit(nbytes)
        self.bytes_in += nbytes
        self._last_activity = now
        try:
            batch = self._decoder.feed_from(self._ring)
        except ProtocolError as exc:
            error = exc
            batch = exc.batch
        if batch is not None and batch._count:
            if self._bucket.enabled():
                admitted = self._bucket.admit(now, batch._cols.sizes, batch._count)
                if admitted < <size_t>batch._count:
                    self.dropped_in += batch._count - admitted
                    self._hub.count_drop("rate limit", batch._count - admitted)
                    if self._rate_policy == "close":
                        self.close("rate limit exceeded")
                        return
                    batch = batch[:admitted]
            if batch._count:
                self.packets_in += batch._count
                self.batches_in += 1
                self._dispatch(batch)
        self._hub.end_burst(self)
        if error is not None:
            self.close(f"protocol error: {error}")
        elif self._ring is not None and len(self._ring) == 0 and not self._closing:
            self._hub.return_ring(self._ring)  # idle connections hold no buffer
            self._ring = None

    cdef _dispatch(self, PacketBatch batch):
        self._in_burst = True
        try:
            if self._handlers is None:
                if self._handler is not None:
                    self._hub.call_handler(self._handler, self, batch)
                elif self._inbox is not None:
                    self._inbox.put_nowait(batch)
            else:
                for ptype, group in batch.by_type().items():
                    fn = self._handlers.get(ptype, self._handler)
                    if fn is None:
                        self._hub.count_drop("unhandled type", len(group))
                        continue
                    self._hub.call_handler(fn, self, group)
                    if self._closing:
                        break
        except Exception as exc:
            _aio_log.exception("handler failed for %r", self)
            self.close(f"handler error: {type(exc).__name__}: {exc}")
        finally:
            self._in_burst = False

    # -- send --------------------------------------------------------------

    def send(self, type, payload, *, player_id=0, seq=None):
        """send(type, payload, *, player_id=0, seq=None) -> int | None

        Queue one packet; returns the seq used, or None when the session is
        closed or the packet was dropped by the slow-consumer policy.
        Flushed at the end of the current read burst, when the send buffer
        passes its fill threshold, or after max_delay for sends made outside
        a read burst.
        """
        if self._closing:
            self.dropped_out += 1
            return None
        try:
            s = self._sendbuf.send(type, payload, player_id=player_id, seq=seq)
        except BufferFull:
            if not self._make_room():
                return None
            s = self._sendbuf.send(type, payload, player_id=player_id, seq=seq)
        self._after_send()
        return s

    def send_batch(self, batch):
        """Relay a PacketBatch byte-for-byte (headers, seq included, as they are)."""
        if self._closing:
            self.dropped_out += len(batch)
            return
        try:
            self._sendbuf.send_batch(batch)
        except BufferFull:
            if not self._make_room():
                return
            self._sendbuf.send_batch(batch)
        self._after_send()

    cdef bint _make_room(self) except -1:
        """The send buffer is full: flush it if the peer is writable, else
        apply the slow-consumer policy. True when there is room now."""
        if not self._writing_paused:
            self._flush()
            return True
        self._hub.slow_consumer(self)
        return False

    cdef _after_send(self):
        if self._in_burst or self._hub.in_burst:
            # flushed at the end of the burst; flush early past the fill threshold
            if self._sendbuf.should_flush(1 << 30, self._hub.fill_ratio):
                self._flush()
            elif not self._dirty:
                self._dirty = True
                self._hub.mark_dirty(self)
        elif not self._dirty:
            self._dirty = True
            self._hub.mark_dirty(self)
            self._hub.schedule_flush()
        elif self._sendbuf.should_flush(1 << 30, self._hub.fill_ratio):
            self._flush()

    def flush(self):
        """Write what is queued now (normally automatic)."""
        self._flush()

    cdef _flush(self):
        self._dirty = False
        if self._writing_paused or self.transport is None or len(self._sendbuf) == 0:
            return
        n = len(self._sendbuf)
        view = self._sendbuf.flush()
        self.packets_out += n
        self.bytes_out += len(view)
        self.flushes += 1
        self._hub.write(self, view)

    # -- close -------------------------------------------------------------

    def close(self, reason=None):
        """Flush what is queued (if the peer is writable) and close with `reason`."""
        if self._closing:
            return
        self._closing = True
        if self._close_reason is None:
            self._close_reason = reason or "closed"
        if self.transport is not None:
            if self._writing_paused:
                self.transport.abort()  # a peer that does not read gets nothing more
                return
            if not self._writing_paused and len(self._sendbuf):
                n = len(self._sendbuf)
                view = self._sendbuf.flush()
                self.packets_out += n
                self.bytes_out += len(view)
                self._hub.write(self, view)
            self.transport.close()
