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


cdef inline uint64_t _clock_ns() noexcept nogil:
    # the same clock as time.monotonic() and asyncio's loop.time()
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline double _monotonic() noexcept nogil:
    return _clock_ns() * 1e-9


cdef class ProtocolCore


cdef class HubCore:
    """Native half of fastpacket.aio._Hub: the state every session of a
    server touches on the hot path (pools, the dirty list, the burst flag)."""

    cdef public object loop
    cdef public object options
    cdef public object handler
    cdef public dict handlers
    cdef public double fill_ratio
    cdef public bint in_burst
    cdef public list dirty
    cdef public list rings
    cdef public Py_ssize_t ring_capacity
    cdef public Py_ssize_t pool_size
    cdef public object metrics          # dict of registry metrics, or None
    cdef public object aggregator
    cdef public object flush_handle
    cdef public Py_ssize_t max_pending_bytes
    cdef public bint flush_soon         # flush_handle runs at the end of this loop iteration

    cdef RingBuffer _lend_ring(self):
        if self.rings:
            return <RingBuffer>self.rings.pop()
        return RingBuffer(self.ring_capacity)

    cdef _return_ring(self, RingBuffer ring):
        # only empty rings come back (buffer_updated checks); a ring that
        # still holds bytes stays with its session and is dropped with it
        if len(self.rings) < self.pool_size:
            self.rings.append(ring)

    cdef _call_handler(self, object fn, ProtocolCore session, PacketBatch batch):
        cdef uint64_t t0
        self.in_burst = True
        try:
            if self.metrics is None:
                fn(session, batch)
            else:
                t0 = _clock_ns()
                fn(session, batch)
                self.metrics["handler"].record(_clock_ns() - t0)  # ns: sub-µs calls are not 0
                self.metrics["batch"].record(batch._count)
        finally:
            self.in_burst = False

    cdef _flush_dirty(self):
        cdef ProtocolCore s
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        self.flush_soon = False
        dirty = self.dirty
        self.dirty = []
        for s in dirty:
            if s._dirty:
                s._flush()

    def flush_dirty(self):
        """Flush every session with queued output (end of loop iteration or timer)."""
        self._flush_dirty()

    cdef _schedule_flush(self, bint soon):
        """Flush the dirty sessions at the end of this loop iteration (soon),
        or max_delay from now, whichever is asked for first."""
        delay = self.options.max_delay
        if soon or delay <= 0:
            if not self.flush_soon:
                if self.flush_handle is not None:
                    self.flush_handle.cancel()
                self.flush_soon = True
                self.flush_handle = self.loop.call_soon(self.flush_dirty)
        elif self.flush_handle is None:
            self.flush_handle = self.loop.call_later(delay, self.flush_dirty)

    cdef Py_ssize_t _write(self, ProtocolCore session, object view, Py_ssize_t nbytes,
                           Py_ssize_t count) except -1:
        """Writes `count` flushed packets; returns the bytes put on the wire."""
        cdef Py_ssize_t wire = nbytes
        if self.aggregator is not None:
            # the flushed bytes are `count` whole packets back to back
            batch = _batch_over(<NativeLayout>session._sendbuf._layout, bytes(view), count)
            wire = 0
            for frame in self.aggregator.pack_many(batch):
                session.transport.write(frame)
                wire += len(frame)
        else:
            session.transport.write(view)
        if session.transport.get_write_buffer_size() > self.max_pending_bytes:
            self.slow_consumer(session)  # the peer reads slower than we write: bounded memory
        if self.metrics is not None:
            self.metrics["flush"].record(nbytes)
            self.metrics["packets_out"].inc(count)
            self.metrics["bytes_out"].inc(wire)
        return wire


cdef class ProtocolCore:
    """Native half of fastpacket.aio.Session (see there for the docs)."""

    cdef public object transport
    cdef public HubCore _hub            # options, pools, sessions, dirty list
    cdef public object _handler         # handler(session, batch) or None
    cdef public dict _handlers          # {type: handler} or None
    cdef public FrameDecoder _decoder
    cdef public RingBuffer _ring        # lent while data is pending, else None
    cdef public SendBuffer _sendbuf
    cdef public object _close_reason
    cdef public bint _closing
    cdef public bint _writing_paused
    cdef public bint _in_burst
    cdef public bint _dirty
    cdef public double _last_activity
    cdef public uint64_t packets_in, bytes_in, packets_out, bytes_out, batches_in, flushes, dropped_in
    cdef public uint64_t dropped_out
    cdef TokenBucket _bucket
    cdef public bint _rate_close
    cdef public object _inbox            # asyncio.Queue of batches for clients without a handler

    def _configure_core(self, HubCore hub, handler, handlers, FrameDecoder decoder, SendBuffer sendbuf,
                        double packets_per_s, double bytes_per_s, double burst_s, str rate_policy):
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
        self._rate_close = rate_policy == "close"

    # -- receive -----------------------------------------------------------

    def get_buffer(self, Py_ssize_t size_hint):
        if self._ring is None:
            self._ring = self._hub._lend_ring()
        return self._ring.writable()

    def buffer_updated(self, Py_ssize_t nbytes):
        cdef object error = None
        cdef PacketBatch batch
        cdef size_t admitted
        cdef double now = _monotonic()
        cdef RingBuffer ring = self._ring
        if nbytes < 0 or <size_t>nbytes > ring._c.free_space():
            raise ValueError(f"buffer_updated({nbytes}): more than the buffer lent")
        ring._c.commit(nbytes)
        self.bytes_in += nbytes
        self._last_activity = now
        if self._hub.metrics is not None:
            self._hub.metrics["bytes_in"].inc(nbytes)
        try:
            batch = _feed_from_ring(self._decoder, ring)
        except ProtocolError as exc:
            error = exc
            batch = exc.batch
        if batch is not None and batch._count:
            if self._bucket.enabled():
                admitted = self._bucket.admit(now, batch._cols.sizes, batch._count)
                if admitted < <size_t>batch._count:
                    self.dropped_in += batch._count - admitted
                    self._hub.count_drop("rate limit", batch._count - admitted)
                    if self._rate_close:
                        self.close("rate limit exceeded")
                        return
                    batch = batch[:admitted]
            if batch._count:
                self.packets_in += batch._count
                self.batches_in += 1
                if self._hub.metrics is not None:
                    self._hub.metrics["packets_in"].inc(batch._count)
                self._dispatch(batch)
        # end of the read burst: this session's replies go out now (no added
        # latency); output it produced for other sessions (broadcasts) goes
        # out once at the end of this loop iteration, coalesced with what
        # other bursts of the same iteration add for them
        self._flush()
        if self._hub.dirty:
            self._hub._schedule_flush(True)
        if error is not None:
            self.close(f"protocol error: {error}")
        elif self._ring is not None and ring._c.readable() == 0 and not self._closing:
            self._hub._return_ring(ring)  # idle connections hold no receive buffer
            self._ring = None

    cdef _dispatch(self, PacketBatch batch):
        self._in_burst = True
        try:
            if self._handlers is None:
                if self._handler is not None:
                    self._hub._call_handler(self._handler, self, batch)
                elif self._inbox is not None:
                    self._inbox.put_nowait(batch)
            else:
                for ptype, group in batch.by_type().items():
                    fn = self._handlers.get(ptype, self._handler)
                    if fn is None:
                        self._hub.count_drop("unhandled type", len(group))
                        continue
                    self._hub._call_handler(fn, self, group)
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
                self.dropped_out += 1
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
                self.dropped_out += len(batch)
                return
            self._sendbuf.send_batch(batch)
        self._after_send()

    cdef bint _make_room(self) except -1:
        """The send buffer is full: flush it if the peer is writable, else
        apply the slow-consumer policy. True when there is room now."""
        if not self._writing_paused and self.transport is not None:
            self._flush()
            return True
        self._hub.slow_consumer(self)
        return False

    cdef _after_send(self):
        if self._sendbuf._c.should_flush(<size_t>-1, self._hub.fill_ratio):
            self._flush()  # past the fill threshold: write now, whatever the burst
        elif self._in_burst:
            pass  # this session's own read burst: buffer_updated flushes it at its end
        elif not self._dirty:
            self._dirty = True
            self._hub.dirty.append(self)
            if not self._hub.in_burst:
                self._hub._schedule_flush(False)  # a send outside any read burst

    def flush(self):
        """Write what is queued now (normally automatic)."""
        self._flush()

    cdef _flush(self):
        self._dirty = False
        cdef size_t n = self._sendbuf._c.count()
        if self._writing_paused or self.transport is None or n == 0:
            return
        cdef size_t nbytes = self._sendbuf._c.size()
        view = self._sendbuf.flush()
        self.packets_out += n
        self.flushes += 1
        self.bytes_out += self._hub._write(self, view, nbytes, n)

    # -- close -------------------------------------------------------------

    def abort(self, reason=None):
        """Close at once with `reason`, dropping whatever is queued for the peer."""
        if self._closing:
            return
        self._closing = True
        if self._close_reason is None:
            self._close_reason = reason or "aborted"
        if self.transport is not None:
            self.transport.abort()

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
            self._closing = False       # let the final flush through
            self._flush()
            self._closing = True
            self.transport.close()
