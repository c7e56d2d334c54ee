# asyncio adapter: the receive burst (get_buffer -> buffer_updated -> decode
# -> handler -> coalesced flush), the send calls, and the protocol callbacks
# asyncio makes. SessionBase is completed by the Python class
# fastpacket.aio.Session, which also derives from asyncio.BufferedProtocol
# so asyncio's isinstance checks see it (picows's pattern); nothing here
# calls into that subclass. Hub holds what the sessions of one server (or
# one client session) share. fastpacket.aio documents the behaviour.

import asyncio as _asyncio
import collections as _collections
import logging as _logging
import os as _os
import re as _re
import socket as _socket
import sys as _sys
import weakref as _weakref

from cpython.sequence cimport PySequence_Fast_ITEMS


from libc.errno cimport errno

cdef extern from *:
    """
    #include <sys/socket.h>
    /* macOS has no MSG_NOSIGNAL: CPython ignores SIGPIPE at start-up, so a
       send to a reset peer fails with EPIPE there as here. */
    #ifndef MSG_NOSIGNAL
    #define MSG_NOSIGNAL 0
    #endif
    #include <errno.h>
    /* A read or write to retry at the next readiness (EWOULDBLOCK may or
       may not equal EAGAIN). */
    static int fastpacket_would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK || e == EINTR; }
    """
    bint _would_block "fastpacket_would_block"(int e) nogil
cdef extern from "<sys/socket.h>" nogil:
    Py_ssize_t c_send "send"(int fd, const void* buf, size_t n, int flags)  # ssize_t
    Py_ssize_t c_recv "recv"(int fd, void* buf, size_t n, int flags)  # ssize_t
    enum: MSG_NOSIGNAL
    enum: MSG_DONTWAIT

try:  # asyncio's own socket transport (selector loop): its write() is Python; ours is one send(2)
    from asyncio.selector_events import _SelectorSocketTransport as _SELECTOR_SOCKET_TRANSPORT
except ImportError:  # pragma: no cover - every CPython since 3.4 has it
    _SELECTOR_SOCKET_TRANSPORT = None
# The native read path replaces that transport's read callback
# (_read_ready_cb, which it calls from _read_ready, and _read_ready, which
# resume_reading() registers; _add_reader registers it while the transport
# reads) and hands it what it handles itself: end of file
# (_read_ready__on_eof) and read errors (_fatal_error). CPython 3.7 to 3.13
# have all of them; without them the transport reads as usual
# (get_buffer/buffer_updated).
_NATIVE_READ = (_SELECTOR_SOCKET_TRANSPORT is not None
                and hasattr(_SELECTOR_SOCKET_TRANSPORT, "_read_ready__on_eof")
                and hasattr(_SELECTOR_SOCKET_TRANSPORT, "_fatal_error")
                and hasattr(_SELECTOR_SOCKET_TRANSPORT, "_add_reader")
                and hasattr(_SELECTOR_SOCKET_TRANSPORT, "_read_ready")
                and hasattr(_SELECTOR_SOCKET_TRANSPORT, "_read_ready__get_buffer"))

_aio_log = _logging.getLogger("fastpacket.aio")

# uvloop's plain TCP and Unix transports, once uvloop is imported (never
# imported from here: a uvloop transport exists only where the program did).
cdef tuple _uvloop_transports = None


cdef bint _writes_natively(object transport):
    """A transport whose socket the native write path may write to while
    the transport holds nothing (get_write_buffer_size() == 0, so nothing of
    ours is queued in it): asyncio's selector socket transport, and
    uvloop's TCP and Unix transports, whose write() also ends in a write to
    the socket and whose get_write_buffer_size() counts libuv's queue."""
    global _uvloop_transports
    cdef object kind = type(transport)
    if kind is _SELECTOR_SOCKET_TRANSPORT:
        return True
    if _uvloop_transports is None:
        module = _sys.modules.get("uvloop.loop")
        if module is None:
            return False
        _uvloop_transports = (getattr(module, "TCPTransport", None), getattr(module, "UnixTransport", None))
    return kind is _uvloop_transports[0] or kind is _uvloop_transports[1]

# Receive rings a hub keeps for lending (idle connections hold none): at
# most RING_POOL_SIZE; past RING_POOL_FLOOR, the rings no connection needed
# for a whole POOL_TRIM_S period are released (memory comes back after a
# wave of connections).
cdef enum:
    RING_POOL_SIZE = 1024
    RING_POOL_FLOOR = 16
# After this many closes, the next pool trim also hands the allocator's free
# memory back to the system (malloc_trim, glibc).
cdef enum:
    TRIM_AFTER_CLOSES = 256
# Seconds between pool trims (while there is something to trim).
cdef double POOL_TRIM_S = 5.0
# Distinct close-reason classes (slugs) server.closes keeps, "other"
# included: any further class counts under "other", so it cannot grow.
cdef enum:
    MAX_CLOSE_CLASSES = 64
# Cap on a transport's high-water mark, in bytes: past it asyncio pauses
# writing (pause_writing), well before max_pending_bytes cuts the peer off.
cdef enum:
    WRITE_HIGH_WATER_MAX_BYTES = 256 << 10
# The idle sweep runs IDLE_SWEEPS_PER_TIMEOUT times per idle_timeout (a
# quiet peer is closed within 1.25 timeouts), every IDLE_SWEEP_MIN_S to
# IDLE_SWEEP_MAX_S seconds.
cdef enum:
    IDLE_SWEEPS_PER_TIMEOUT = 4
cdef double IDLE_SWEEP_MIN_S = 0.01
cdef double IDLE_SWEEP_MAX_S = 1.0

cdef uint64_t _NS_PER_S = 1000000000
# Largest message the bus decoder accepts per frame, in bytes: an aggregate
# frame's raw body is at most the aggregator's max_raw_size (1 MiB) plus headers.
cdef enum:
    BUS_MAX_FRAME_BYTES = 2 << 20

cdef extern from *:
    """
    #if defined(__GLIBC__)
    #include <malloc.h>
    /* glibc keeps freed heap pages until its top chunk is freed; malloc_trim
       madvises every free page back to the system. */
    static void fastpacket_release_free_memory(void) { malloc_trim(0); }
    #else
    static void fastpacket_release_free_memory(void) {}
    #endif
    """
    void _release_free_memory "fastpacket_release_free_memory"() nogil


cdef inline double _seconds(uint64_t ns) noexcept nogil:
    return <double>ns * 1e-9


cdef str _slug(str reason):
    """The label value of a close or drop reason: its text before ':' in
    snake case ("protocol error: size 3 ..." -> "protocol_error"); the same
    rule as fastpacket.metrics.reason_label."""
    head = reason.split(":", 1)[0]
    return _re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_") or "closed"


cdef object _reason_counter(dict counters, str reason):
    """The counter of `reason`'s bounded label (its slug, else "other")."""
    counter = counters.get(_slug(reason))
    return counter if counter is not None else counters["other"]


cdef str _error_text(BaseException exc):
    return f"{type(exc).__name__}: {exc}"


cdef int _refuse_awaitable(object fn, object result) except -1:
    """A handler taken as sync (not an ``async def``) returned an awaitable:
    it would never run. Closes it (no "never awaited" warning) and raises,
    which closes the session with the reason."""
    close = getattr(result, "close", None)
    if close is not None:
        close()
    raise TypeError(f"handler {fn!r} returned {type(result).__name__}, which would never be awaited: declare "
                    f"the handler `async def` (fastpacket.aio runs those as tasks) or return None")


cdef class Hub:
    """Hub(loop, options, handler, handlers, *, on_connect=None, on_close=None, metrics=None, async_handler=False, async_types=(), bus=None)

    What the sessions of one server (or one client session) share: the
    checked options, the handlers, the pools, the list of sessions with
    output waiting for the end of the loop iteration, and the accounting
    (``sessions``, ``closes``, ``drops``). Made by fastpacket.aio.serve()
    and connect(); `metrics` is a dict of registry metrics by role, or None.
    `async_handler` says that `handler` is an async function, `async_types`
    which types of `handlers` have one (fastpacket.aio classifies them).
    `bus` (a fastpacket.aio.Bus) carries group sends to other servers.
    """

    @cython.embedsignature(False)  # Cython 3.3 misplaces the `*` of an __init__; the docstring has it
    def __init__(self, loop, options, handler, handlers, *, on_connect=None, on_close=None, metrics=None,
                 async_handler=False, async_types=(), bus=None):
        self.loop = loop
        self.options = options
        self.sessions = set()
        self.closes = {}
        self.drops = {}
        self._handler = handler
        self._handlers = dict(handlers) if handlers else None
        self._handler_async = bool(async_handler) and handler is not None
        self._async_types = frozenset(async_types)
        self._any_async = self._handler_async or bool(self._async_types)
        self._queue_packets = options.handler_queue_packets
        self._queue_bytes = options.handler_queue_bytes
        self._on_connect = on_connect
        self._on_close = on_close
        self._metrics = metrics
        if metrics is not None and "types" in metrics:
            self._type_counters = metrics["types"]
            self._type_other = metrics["type_other"]
        self._layout = _layout_arg(options.layout)
        self._aggregator = _aggregator_arg(options.aggregator)
        self._max_packet_size = options.max_packet_size
        self._send_buffer = options.send_buffer
        self._ring_capacity = options.recv_buffer
        # With an aggregator the decoders take aggregate frames as large as a
        # peer packs them (within the receive ring); every packet delivered,
        # alone or unwrapped, stays within max_packet_size (_Unwrapper).
        self._inflate_budget = options.inflate_budget or 0
        self._frame_limit = self._max_packet_size
        if self._aggregator is not None:
            self._frame_limit = max(self._max_packet_size,
                                    min(self._aggregator._outer_frame_limit(self._layout, self._inflate_budget),
                                        self._ring_capacity))
        self._max_pending_bytes = options.max_pending_bytes
        self._max_connections = -1 if options.max_connections is None else options.max_connections
        self._fill_ratio = options.fill_ratio
        self._max_delay = options.max_delay
        self._write_timeout = options.write_timeout
        self._packets_per_s = options.packets_per_s
        self._bytes_per_s = options.bytes_per_s
        self._rate_burst = options.rate_burst
        self._rate_close = options.rate_policy == "close"
        self._idle_timeout_ns = <uint64_t>(options.idle_timeout * _NS_PER_S) if options.idle_timeout else 0
        self._packet_timeout_ns = <uint64_t>(options.packet_timeout * _NS_PER_S) if options.packet_timeout else 0
        self._in_burst = False
        self._dirty = []
        self._rings = []
        self._flush_handle = None
        self._flush_soon = False
        self._idle_handle = None
        self._groups = _weakref.WeakValueDictionary()
        self._dirty_groups = []
        self.bus = bus
        if bus is not None:
            self._bus_sender = bus.sender_id
            if self._layout.c.type_index >= 0 and bus.aggregator is not None:
                self._bus_agg = _aggregator_arg(bus.aggregator)
            limit = BUS_MAX_FRAME_BYTES if self._bus_agg is not None else max(self._send_buffer, self._max_packet_size)
            self._bus_decoder = FrameDecoder(self._layout, limit, self._bus_agg)
        self._trim_handle = None
        self._rings_low = 0
        self._closes_since_trim = 0
        if self._idle_timeout_ns or self._packet_timeout_ns:
            self._arm_idle_sweep()

    # -- pools ----------------------------------------------------------------

    cdef RingBuffer _lend_ring(self):
        # The pool is _rings[:_nrings]; the slots past it hold None, so a
        # ring lent and returned on every read never resizes the list (a
        # list.pop() to empty and an append cost a realloc each: 4% of the
        # relay's instructions).
        cdef Py_ssize_t n = self._nrings
        if n:
            n -= 1
            ring = self._rings[n]
            self._rings[n] = None
            self._nrings = n
            if n < self._rings_low:
                self._rings_low = n
            return <RingBuffer>ring
        self._rings_low = 0
        return RingBuffer(self._ring_capacity)

    cdef int _return_ring(self, RingBuffer ring) except -1:
        # only empty rings come back (buffer_updated checks); a ring that
        # still holds bytes stays with its session and is dropped with it
        cdef Py_ssize_t n = self._nrings
        if n < RING_POOL_SIZE:
            if n < len(self._rings):
                self._rings[n] = ring
            else:
                self._rings.append(ring)
            self._nrings = n + 1
            if n + 1 > RING_POOL_FLOOR:
                self._arm_trim()
        return 0

    cdef int _arm_trim(self) except -1:
        if self._trim_handle is None and not self.loop.is_closed():
            self._trim_handle = self.loop.call_later(POOL_TRIM_S, self._trim_pools)
        return 0

    def _trim_pools(self):
        """Timer callback: releases the pooled rings no connection needed
        during the last period (down to RING_POOL_FLOOR), and after many
        closes hands the allocator's free memory back to the system."""
        cdef Py_ssize_t spare = min(self._rings_low, self._nrings - RING_POOL_FLOOR)
        self._trim_handle = None
        if spare > 0:
            del self._rings[:spare]  # the least recently used: rings are lent from the end
            self._nrings -= spare
            del self._rings[self._nrings:]  # the empty slots too
        self._rings_low = self._nrings
        if spare > 0 or self._closes_since_trim >= TRIM_AFTER_CLOSES:
            self._closes_since_trim = 0
            with nogil:
                _release_free_memory()
        if self._nrings > RING_POOL_FLOOR:
            self._arm_trim()

    @property
    def pooled_rings(self):
        """Receive rings pooled for lending now (tests, diagnostics)."""
        return self._nrings

    # -- the burst and its flushes --------------------------------------------

    cdef int _count_type(self, object ptype, Py_ssize_t n) except -1:
        # packets_by_type_total: one series per handled type, the rest under "other"
        if self._type_counters is not None:
            c = self._type_counters.get(ptype)
            (self._type_other if c is None else c).inc(n)
        return 0

    cdef int _call_handler(self, object fn, SessionBase session, PacketBatch batch) except -1:
        cdef uint64_t t0
        self._in_burst = True
        try:
            if self._metrics is None:
                result = fn(session, batch)
            else:
                t0 = monotonic_ns()
                result = fn(session, batch)
                self._metrics["handler"].record(monotonic_ns() - t0)  # ns: sub-µs calls are not 0
                self._metrics["batch"].record(batch._count)
        finally:
            self._in_burst = False
        if result is not None and hasattr(result, "__await__"):
            _refuse_awaitable(fn, result)
        return 0

    cdef int _flush_dirty(self) except -1:
        cdef SessionBase s
        cdef Py_ssize_t i = 0
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush_soon = False
        if self._dirty_groups:
            self._publish_groups()
        dirty = self._dirty
        self._dirty = []
        try:
            for i in range(len(dirty)):
                s = <SessionBase>dirty[i]
                if s._dirty:
                    s._flush()  # a session's own send errors close it and stay inside _flush()
        except BaseException:
            # Nothing is stranded: the sessions not yet flushed go back on
            # the list, flushed at the end of this loop iteration.
            self._dirty.extend(dirty[i + 1:])
            if self._dirty:
                self._schedule_flush(True)
            raise
        return 0

    def flush_dirty(self):
        """Flush every session with queued output and publish what the
        groups gathered for the bus (end of loop iteration or timer)."""
        self._flush_dirty()

    # -- groups and the bus ------------------------------------------------------

    def group(self, name):
        """group(name) -> Group: the group of that name (str or int), made on
        first use; the same object while it lives."""
        name = _group_name(name)
        g = self._groups.get(name)
        if g is None:
            g = _new_group(self, name)
            self._groups[name] = g
        return g

    @property
    def groups(self):
        """{name: Group} of the groups alive (a snapshot)."""
        return dict(self._groups)

    cdef int _publish_group(self, Group group) except -1:
        """Hands what `group` gathered to the bus, as one message. A bus
        error is logged, never raised into the caller (a send or the loop's
        flush): the bus counts what it could not publish."""
        cdef Py_ssize_t packets = group._pub._c.count()
        msg = group._take_message()
        if msg is None:
            return 0
        try:
            self.bus.publish(group, msg, packets)
        except Exception:
            _aio_log.exception("the bus failed to take a publish for group %r", group.name)
        return 0

    cdef int _publish_groups(self) except -1:
        cdef Group g
        dirty = self._dirty_groups
        self._dirty_groups = []
        for g in dirty:
            if g._dirty:
                self._publish_group(g)
        if self.bus is not None:
            try:
                self.bus.flush()  # this iteration's publishes, written together now
            except Exception:
                _aio_log.exception("the bus failed to flush its publishes")
        return 0

    def deliver(self, group, data):
        """deliver(group, data) -> int

        A message from the bus for `group` (a Group of this hub): its packets
        go to the group's members here, as the sending server sent them (in
        order; send() packets with each member's own seq, send_batch()
        packets as they are), written at the end of this loop iteration.
        Returns the packets delivered: 0 for this server's own messages
        (its members got them directly). A malformed message raises
        ProtocolError and delivers nothing."""
        if not isinstance(group, Group) or (<Group>group)._hub is not self:
            raise TypeError("deliver() takes a group of this server")
        cdef Group g = <Group>group
        cdef const uint8_t* p
        cdef Py_ssize_t n, nruns, i, begin, total = 0
        cdef uint32_t run
        cdef PacketBatch batch
        if not isinstance(data, bytes):
            data = bytes(data)
        n = len(<bytes>data)
        if n < BUS_HEADER_BYTES:
            raise ProtocolError(f"bus message of {n} bytes: shorter than its {BUS_HEADER_BYTES}-byte header")
        magic, version, flags, nruns, sender = _BUS_HEADER.unpack_from(data)
        if magic != BUS_MAGIC or version != BUS_VERSION:
            raise ProtocolError(f"not a fastpacket bus message of version {BUS_VERSION} "
                                f"(magic {magic:#06x}, version {version})")
        if sender == self._bus_sender:
            return 0
        if nruns > BUS_MAX_RUNS or n < BUS_HEADER_BYTES + 4 * nruns:
            raise ProtocolError(f"bus message of {n} bytes cannot hold its {nruns} runs")
        runs = _struct.unpack_from(f"<{nruns}I", data, BUS_HEADER_BYTES)
        for run in runs:
            total += run & ~BUS_RUN_RENUMBER
        if bool(flags & BUS_FLAG_AGGREGATED) != (self._bus_agg is not None):
            raise ProtocolError("bus message packed differently from this server's bus (aggregated or "
                                "not): the servers sharing a bus need the same layout")
        self._bus_decoder.reset()
        try:
            batch = self._bus_decoder.feed(memoryview(data)[BUS_HEADER_BYTES + 4 * nruns:])
        finally:
            pending = self._bus_decoder.pending
            self._bus_decoder.reset()
        if pending or batch._count != total:
            raise ProtocolError(f"bus message announces {total} packets, holds {batch._count}"
                                f"{f' and {pending} bytes of an incomplete one' if pending else ''}")
        if not g._members:
            return 0
        begin = 0
        self._in_burst = True  # one flush at the end of this iteration, not one schedule per member
        try:
            for run in runs:
                i = run & ~BUS_RUN_RENUMBER
                g._fanout_batch(batch, begin, begin + i, (run & BUS_RUN_RENUMBER) != 0, None, False)
                begin += i
        finally:
            self._in_burst = False
        if self._dirty:
            self._schedule_flush(True)
        return total

    cdef int _schedule_flush(self, bint soon) except -1:
        """Flush the dirty sessions at the end of this loop iteration (soon),
        or max_delay from now, whichever is asked for first."""
        if soon or self._max_delay <= 0:
            if not self._flush_soon:
                if self._flush_handle is not None:
                    self._flush_handle.cancel()
                self._flush_soon = True
                self._flush_handle = self.loop.call_soon(self.flush_dirty)
        elif self._flush_handle is None:
            self._flush_handle = self.loop.call_later(self._max_delay, self.flush_dirty)
        return 0

    cdef int _schedule_session_flush(self, SessionBase session) except -1:
        """`session` has output queued outside its own read burst: write it
        at the end of this loop iteration when an async handler of it is
        running (a reply, not held back), else max_delay from now."""
        if not self._in_burst:
            self._schedule_flush(session._task is not None)
        return 0

    cdef Py_ssize_t _write(self, SessionBase session, object view, Py_ssize_t nbytes,
                           Py_ssize_t count) except -1:
        """Writes `count` flushed packets; returns the bytes put on the wire.
        Packing every frame before writing any keeps a failure all-or-nothing."""
        cdef Py_ssize_t wire = nbytes
        transport = session.transport
        if self._aggregator is not None:
            # the flushed bytes are `count` whole packets back to back
            frames = self._aggregator._pack_many(_batch_over(self._layout, bytes(view), count), 0, 0)
            wire = 0
            for frame in frames:
                transport.write(frame)
                wire += len(<bytes>frame)
        else:
            transport.write(view)
        if transport.get_write_buffer_size() > self._max_pending_bytes:
            self._slow_consumer(session)  # the peer reads slower than we write: bounded memory
        if self._metrics is not None:
            self._metrics["flush"].record(nbytes)
            self._metrics["packets_out"].inc(count)
            self._metrics["bytes_out"].inc(wire)
        return wire

    # -- accounting and policies ----------------------------------------------

    cdef bint _open(self, SessionBase session) except -1:
        """Registers a new connection; False when it must be refused."""
        if self._max_connections >= 0 and len(self.sessions) >= self._max_connections:
            return False
        self.sessions.add(session)
        if self._metrics is not None:
            # inc/dec, not set(len): the workers of one server share the gauge
            self._metrics["connections"].inc()
            self._metrics["connections_total"].inc()
        return True

    cdef int _count_close(self, SessionBase session, str reason, bint was_open) except -1:
        # counted by class (the metrics' slug), not by text: a reason's text
        # holds what the peer sent (sizes, offsets), and a peer must not be
        # able to grow this dict; the text stays on the session and in the log
        _aio_log.debug("%r closed: %s", session, reason)
        key = _slug(reason)
        if key not in self.closes and len(self.closes) >= MAX_CLOSE_CLASSES - 1:  # "other" is the last
            key = "other"
        self.closes[key] = self.closes.get(key, 0) + 1
        self._closes_since_trim += 1
        if self._closes_since_trim >= TRIM_AFTER_CLOSES:
            self._arm_trim()
        if not was_open:
            return 0
        self.sessions.discard(session)
        if self._metrics is not None:
            self._metrics["connections"].dec()
            _reason_counter(self._metrics["closes"], reason).inc()
        return 0

    cdef int _count_drop(self, str reason, Py_ssize_t n) except -1:
        self.drops[reason] = self.drops.get(reason, 0) + n
        if self._metrics is not None:
            _reason_counter(self._metrics["drops"], reason).inc(n)
        return 0

    cdef int _slow_consumer(self, SessionBase session) except -1:
        """The policy for a peer that does not keep up: cut it off, dropping its queued output."""
        self._count_drop("slow consumer", 1)
        session._abort("slow consumer")
        return 0

    # -- idle sweep and shutdown ----------------------------------------------

    cdef int _arm_idle_sweep(self) except -1:
        cdef uint64_t shortest = self._idle_timeout_ns
        if self._packet_timeout_ns and (not shortest or self._packet_timeout_ns < shortest):
            shortest = self._packet_timeout_ns
        cdef double period = _seconds(shortest) / IDLE_SWEEPS_PER_TIMEOUT
        period = min(max(period, IDLE_SWEEP_MIN_S), IDLE_SWEEP_MAX_S)
        self._idle_handle = self.loop.call_later(period, self._sweep_idle)
        return 0

    def _sweep_idle(self):
        """Timer callback: closes the sessions that completed no packet for
        idle_timeout ("idle timeout": bytes that complete nothing, such as a
        drip into one packet, do not count) and those whose partial packet
        has waited packet_timeout for the rest ("packet timeout")."""
        cdef SessionBase s
        cdef uint64_t now = monotonic_ns()
        cdef uint64_t idle_before = now - self._idle_timeout_ns if now > self._idle_timeout_ns else 0
        cdef uint64_t partial_before = now - self._packet_timeout_ns if now > self._packet_timeout_ns else 0
        for session in list(self.sessions):
            s = <SessionBase>session
            if s._task is not None or s._closing or not s._may_read():
                continue  # being handled, or not read from by our choice (write_timeout's case): not idle
            if self._idle_timeout_ns and s._last_packet_ns < idle_before:
                s._close("idle timeout")
            elif self._packet_timeout_ns and s._partial_since_ns and s._partial_since_ns < partial_before:
                s._close("packet timeout")
        self._arm_idle_sweep()

    def shutdown(self, str reason):
        """Stop the idle sweep, flush every session's output and close them
        with `reason`. A session whose async handler is still running stops
        reading and is closed once it has handled what it received."""
        cdef SessionBase s
        if self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        if self._trim_handle is not None:
            self._trim_handle.cancel()
            self._trim_handle = None
        self._flush_dirty()
        for session in list(self.sessions):
            s = <SessionBase>session
            if s._task is not None and not s._closing:
                s._drain_reason = reason
                if s.transport is not None and not s._queue_paused and not s._writing_paused:
                    s.transport.pause_reading()  # nothing new: finish what was received, then close
            else:
                s._close(reason)

    def abort_all(self, str reason):
        """Abort every session now with `reason`: running async handlers are
        cancelled, queued output is dropped (the end of a graceful timeout)."""
        cdef SessionBase s
        for session in list(self.sessions):
            s = <SessionBase>session
            s._drop_work()
            if s._task is not None:
                s._task.cancel()
            if not s._closing:
                s._abort(reason)
            elif s.transport is not None:
                s.transport.abort()  # closed, but its last output is stuck with a peer that does not read


cdef class SessionBase:
    """Native part of fastpacket.aio.Session (see there for the docs)."""

    def __init__(self, Hub hub not None):
        self._hub = hub
        self._handler = hub._handler
        self._handlers = hub._handlers
        # aggregates are unwrapped by _unwrapper, after the rate limit charged what they declare
        self._decoder = FrameDecoder(hub._layout, hub._max_packet_size)
        if hub._aggregator is not None:
            self._decoder._allow_aggregates(hub._frame_limit)
            self._unwrapper = _Unwrapper(hub._aggregator, hub._layout, hub._max_packet_size, hub._inflate_budget)
        # no send buffer yet: _out() makes it on the first send (idle connections hold none)
        self._bucket = TokenBucket(hub._packets_per_s, hub._bytes_per_s, hub._rate_burst)
        self._rate_close = hub._rate_close
        self._last_packet_ns = monotonic_ns()
        self._fd = -1
        self._rfd = -1
        self._closed = hub.loop.create_future()
        # a client connected without a handler reads with recv()
        self._inbox = _asyncio.Queue() if self._handler is None and self._handlers is None else None
        # A sync handler's batch lies over the receive ring's bytes (no copy);
        # batches that are queued (async handlers, recv()) or inflated own theirs.
        self._lend_batches = hub._aggregator is None and not hub._any_async and self._inbox is None

    # -- asyncio callbacks ----------------------------------------------------

    def connection_made(self, transport):
        """asyncio callback: a new connection (TCP_NODELAY, write limits,
        max_connections, then on_connect)."""
        cdef Hub hub = self._hub
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (_socket.AF_INET, _socket.AF_INET6):
            try:
                sock.setsockopt(_socket.IPPROTO_TCP, _socket.TCP_NODELAY, 1)  # we coalesce ourselves
            except OSError:
                pass
        transport.set_write_buffer_limits(
            high=max(hub._send_buffer, min(hub._max_pending_bytes // 2, WRITE_HIGH_WATER_MAX_BYTES)))
        if (sock is not None and hub._aggregator is None and _writes_natively(transport)
                and sock.family in (_socket.AF_INET, _socket.AF_INET6, _socket.AF_UNIX)):
            # the native write path: a flush is one send(2) from here while the
            # transport holds nothing (what the kernel does not take goes to
            # transport.write, which buffers it and handles errors and backpressure)
            self._fd = sock.fileno()
        if (_NATIVE_READ and sock is not None and type(transport) is _SELECTOR_SOCKET_TRANSPORT
                and getattr(transport, "_read_ready_cb", None) is not None):
            # the native read path: the transport's read callback becomes
            # _read_ready (one recv(2) into the ring, no get_buffer() call, no
            # view); pause_reading/resume_reading and close stay the transport's
            self._rfd = sock.fileno()
            transport._read_ready_cb = self._read_ready  # what transport._read_ready calls
            transport._read_ready = self._read_ready     # what resume_reading() registers
            hub.loop.call_soon(self._take_reader)        # after the transport registers its own
        if not hub._open(self):
            self._close_reason = "too many connections"
            self._closing = True
            hub._count_drop("too many connections", 1)
            transport.close()
            return
        self._opened = True
        if hub._on_connect is not None:
            try:
                hub._on_connect(self)
            except Exception as exc:
                _aio_log.exception("on_connect failed for %r", self)
                self._close(f"on_connect error: {_error_text(exc)}")

    def connection_lost(self, exc):
        """asyncio callback: the connection is gone; records the close reason,
        frees the ring, then on_close (only for an accepted connection).
        While an async handler is running, the bursts received before the
        end are still handled (as a sync handler would have handled them on
        arrival; replies are dropped) and the close completes after them."""
        if self._close_reason is None:
            self._close_reason = f"connection lost: {exc}" if exc else "peer closed"
        self._closing = True
        self._fd = -1  # asyncio closes the socket after this callback: its fd may be reused
        self._rfd = -1
        self._leave_groups()
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        self._drop_held()
        self._ring = None  # not pooled: asyncio may still hold a view of it
        self.transport = None
        if self._task is not None:
            self._lost = True  # _drained() finishes the close
            return
        self._finish_close()

    cdef int _finish_close(self) except -1:
        """The accounting of a close, then on_close: after the connection is
        gone and no handler of this session runs any more."""
        cdef Hub hub = self._hub
        hub._count_close(self, self._close_reason, self._opened)
        if self._inbox is not None:
            self._inbox.put_nowait(None)
        if not self._closed.done():
            self._closed.set_result(self._close_reason)
        if self._opened and hub._on_close is not None:
            try:
                hub._on_close(self)
            except Exception:
                _aio_log.exception("on_close failed for %r", self)
        return 0

    def eof_received(self):
        """asyncio callback: the peer closed its side; the session closes ("peer closed")."""
        if self._close_reason is None:
            self._close_reason = "peer closed"
        return False  # close the transport

    def pause_writing(self):
        """asyncio callback: the peer is not reading; stop reading from it and start write_timeout."""
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # no new work from a peer we cannot answer
        self._write_timer = self._hub.loop.call_later(self._hub._write_timeout, self._write_timed_out)

    def resume_writing(self):
        """asyncio callback: the peer reads again; resume reading (unless
        the handler queue is full) and flush what was held."""
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self.transport is not None and not self._closing:
            if self._may_read():
                self.transport.resume_reading()
            self._flush()

    cdef bint _may_read(self):
        """Nothing holds reading paused: the peer reads our output, the
        handler queue has room, no aggregate frames wait for the next
        inflate budget, no graceful close is waiting for the handler."""
        return not (self._writing_paused or self._queue_paused or self._inflate_paused or
                    self._drain_reason is not None)

    def _write_timed_out(self):
        self._write_timer = None
        if self._writing_paused:
            self._hub._slow_consumer(self)

    # -- receive -------------------------------------------------------------

    def get_buffer(self, size_hint):
        """asyncio callback: the receive ring's free space (size_hint, an
        int, ignored)."""
        ssize_arg(size_hint, "size_hint", PY_SSIZE_T_MIN, PY_SSIZE_T_MAX)
        if self._ring is None:
            self._ring = self._hub._lend_ring()
        cdef _RingHead head = self._head
        if head is None:
            head = self._head = _RingHead.__new__(_RingHead)
        head._ring = self._ring
        return head  # the same object every read: exports the ring's free space (no view made)

    def _take_reader(self):
        """The selector calls _read_ready directly, not through the
        transport's Python method (one Python frame less per read): runs
        once, just after the transport registered its reader."""
        transport = self.transport
        if self._rfd >= 0 and transport is not None:
            transport._add_reader(self._rfd, self._read_ready)  # only while it reads (not paused or closing)

    def _read_ready(self):
        """The native read path (asyncio's selector loop; the transport's
        read callback): one recv(2) into the receive ring, then as
        buffer_updated(). What asyncio's _read_ready__get_buffer does, in
        native code: EAGAIN/EINTR wait for the next readiness; end of file
        and errors go to the transport, which handles them as it always did
        (eof_received, or a close with connection_lost(exc))."""
        cdef int fd = self._rfd
        if fd < 0 or self.transport is None:
            return
        cdef bint lent = self._ring is None
        if lent:
            self._ring = self._hub._lend_ring()
        cdef RingBuffer ring = self._ring
        cdef RingSpan span = ring._c.write_span()
        cdef Py_ssize_t n
        cdef int err = 0
        if span.size == 0:  # never: the ring holds a max-size packet; asyncio fails the same way
            self.transport._fatal_error(RuntimeError("get_buffer() returned an empty buffer"),
                                        "Fatal error: protocol.get_buffer() call failed.")
            return
        # The GIL stays held: recv(2) on a non-blocking socket returns at once
        # with what the kernel has queued (microseconds, far below the
        # interpreter's 5 ms switch interval), and dropping and retaking it
        # cost 6% of the relay's instructions per MOVE (callgrind).
        n = c_recv(fd, span.data, span.size, 0)
        if n < 0:
            err = errno
        if n > 0:
            try:
                self._received(ring, n)
            except Exception as exc:
                _aio_log.exception("receive failed for %r", self)
                self._abort(f"internal error: {_error_text(exc)}")
            return
        if lent and ring._c.readable() == 0:
            self._ring = None  # nothing read: idle connections hold no receive buffer
            self._hub._return_ring(ring)
        if n == 0:
            self.transport._read_ready__on_eof()
        elif not _would_block(err):
            # OSError(errno, text) is the errno's subclass (ConnectionResetError, ...)
            self.transport._fatal_error(OSError(err, _os.strerror(err)), "Fatal read error on socket transport")

    def buffer_updated(self, nbytes):
        """asyncio callback: `nbytes` arrived; decode, dispatch, flush.
        Never raises into the event loop: whatever goes wrong closes this
        session with the reason."""
        cdef RingBuffer ring = self._ring
        if ring is None:
            raise ValueError(f"buffer_updated({nbytes!r}) without a buffer lent by get_buffer()")  # asyncio's bug
        cdef Py_ssize_t n = ssize_arg(nbytes, "nbytes (at most the buffer lent)", 0, ring._c.free_space())
        try:
            self._received(ring, n)
        except Exception as exc:
            _aio_log.exception("receive failed for %r", self)
            self._abort(f"internal error: {_error_text(exc)}")

    def feed_message(self, data):
        """Bytes from a message-based transport (a WebSocket message or
        fragment, fastpacket.ws), handled exactly as bytes read from a
        socket: copied into the receive ring, decoded, dispatched, flushed.
        Returns the bytes left over that do not make a whole packet yet
        (the caller decides whether a message may end inside a packet).
        Never raises into the caller for what the peer sent: that closes the
        session with the reason, as buffer_updated does."""
        cdef Py_buffer view
        cdef Py_ssize_t off = 0, k
        cdef RingSpan span
        cdef RingBuffer ring
        get_contiguous_buffer(data, &view, "feed_message()")
        try:
            while off < view.len and not self._closing:
                if self._ring is None:
                    self._ring = self._hub._lend_ring()
                ring = self._ring
                span = ring._c.write_span()
                # the ring holds a max-size packet, so a partial one never fills it
                k = min(<Py_ssize_t>span.size, view.len - off)
                if k <= 0:
                    self._close("protocol error: no room in the receive buffer")
                    break
                memcpy(span.data, <const uint8_t*>view.buf + off, k)
                off += k
                try:
                    self._received(ring, k)
                except Exception as exc:
                    _aio_log.exception("receive failed for %r", self)
                    self._abort(f"internal error: {_error_text(exc)}")
        finally:
            PyBuffer_Release(&view)
        return self._ring._c.readable() if self._ring is not None else 0

    cdef int _received(self, RingBuffer ring, Py_ssize_t nbytes) except -1:
        cdef object error = None
        cdef PacketBatch frames
        cdef Hub hub = self._hub
        cdef uint64_t now = monotonic_ns()
        cdef uint64_t base
        cdef Py_ssize_t i
        ring._c.commit(nbytes)
        self.bytes_in += nbytes
        if hub._metrics is not None:
            hub._metrics["bytes_in"].inc(nbytes)
        try:
            frames = _feed_from_ring_lent(self._decoder, ring) if self._lend_batches else \
                _feed_from_ring(self._decoder, ring)
        except ProtocolError as exc:
            error = exc
            frames = exc.batch
        base = self._decoder._dec.stream_offset()  # the frames end here
        if frames is not None:
            for i in range(frames._count):
                base -= frames._cols.sizes[i]
            if frames._count:
                self._last_packet_ns = now  # idle_timeout counts complete packets, not bytes
                if self._bucket.enabled():
                    frames = self._admit(frames, now)
                    if frames is None:
                        return 0  # closed by the rate policy
        # a partial packet's age (packet_timeout): from its first byte, or
        # from the last packet completed while bytes kept arriving
        if ring._c.readable() or self._decoder._dec.pending():
            if self._partial_since_ns == 0 or (frames is not None and frames._count):
                self._partial_since_ns = now
        else:
            self._partial_since_ns = 0
        self._deliver(frames, base, error)
        frames = None
        if self._lend_batches and ring._c.read_pins() and self._ring is ring:
            ring = self._keep_pinned_ring(ring)
        if (error is None and not self._closing and ring is not None and ring._c.readable() == 0
                and not self._inflate_paused):
            hub._return_ring(ring)  # idle connections hold no receive buffer
            self._ring = None
        return 0

    cdef RingBuffer _keep_pinned_ring(self, RingBuffer ring):
        """A batch of the last burst (or a payload view of one) outlives its
        handler: its bytes stay pinned in `ring`, which this session gives
        up (it is freed with the last of them, never pooled); the bytes not
        yet decoded move to a fresh ring, returned (or None)."""
        cdef RingSpan a, b
        cdef RingBuffer fresh
        self._ring = None
        if ring._c.readable() == 0:
            return None
        fresh = self._hub._lend_ring()
        cdef uint64_t head = fresh._c.head_index()
        ring._c.read_segments(&a, &b)
        if ring._c.double_mapped():  # the second mapping continues the first
            fresh._c.store(head, a.data, a.size + b.size)
        else:
            fresh._c.store(head, a.data, a.size)
            if b.size:
                fresh._c.store(head + a.size, b.data, b.size)
        fresh._c.commit(ring._c.readable())
        ring._c.consume(ring._c.readable())
        self._ring = fresh
        return fresh

    cdef PacketBatch _admit(self, PacketBatch frames, uint64_t now):
        """The frames the rate limit admits (the longest prefix it can pay
        for), charged before anything is inflated: a plain packet one packet
        and its size, an aggregate frame the count and raw_size it declares.
        The rest is dropped (counted), or with rate_policy "close" the
        session closes: None."""
        cdef Py_ssize_t i, n = frames._count, dropped = 0
        cdef AggregateHeader declared
        cdef Layout* c = &frames._layout.c
        cdef const uint8_t* frame
        self._bucket.refill(_seconds(now))
        for i in range(n + 1):
            if i == n:
                return frames
            frame = frames._base + frames._cols.offsets[i]
            if self._unwrapper is not None and declared_aggregate(c[0], frame, frames._cols.sizes[i], &declared):
                if not self._bucket.take(declared.count, declared.raw_size):
                    break
            elif not self._bucket.take(1, frames._cols.sizes[i]):
                break
        cdef Py_ssize_t admitted = i
        for i in range(admitted, n):
            frame = frames._base + frames._cols.offsets[i]
            if self._unwrapper is not None and declared_aggregate(c[0], frame, frames._cols.sizes[i], &declared):
                dropped += declared.count
            else:
                dropped += 1
        self.dropped_in += dropped
        self._hub._count_drop("rate limit", dropped)
        if self._rate_close:
            self._close("rate limit exceeded")
            return None
        return frames[:admitted]

    cdef int _deliver(self, PacketBatch frames, uint64_t base, object error) except -1:
        """The packets of `frames` (whose data starts at stream offset
        `base`; None: only what waits for the inflate budget) unwrapped and
        handled, the burst's output flushed; then the close an error asks
        for, or, while frames wait for the next inflate budget, reading
        paused and their turn scheduled (bounded memory: one budget
        inflated per turn, what waits is what one read brought)."""
        cdef Hub hub = self._hub
        cdef PacketBatch batch = frames
        if self._unwrapper is not None:
            try:
                batch = self._unwrapper.unwrap(frames, base)
            except ProtocolError as exc:  # before any decode error: that one is after every frame
                error = exc
                batch = exc.batch
            if error is not None:
                self._drop_held()
        if batch is not None and batch._count:
            self.packets_in += batch._count
            self.batches_in += 1
            if hub._metrics is not None:
                hub._metrics["packets_in"].inc(batch._count)
            self._dispatch(batch)
        # end of the read burst: this session's replies go out now (no added
        # latency); output it produced for other sessions (broadcasts) goes
        # out once at the end of this loop iteration, coalesced with what
        # other bursts of the same iteration add for them
        self._flush()
        if hub._dirty or hub._dirty_groups:
            hub._schedule_flush(True)
        if error is not None:
            self._close(f"protocol error: {error}")
        elif self._unwrapper is not None and self._unwrapper._held and not self._closing:
            if not self._inflate_paused:
                self._inflate_paused = True
                if self.transport is not None and not self._queue_paused and not self._writing_paused:
                    self.transport.pause_reading()
            if self._unwrap_handle is None:
                self._unwrap_handle = hub.loop.call_soon(self._unwrap_more)
        elif self._inflate_paused:
            self._inflate_paused = False
            if self.transport is not None and not self._closing and self._may_read():
                self.transport.resume_reading()
        return 0

    def _unwrap_more(self):
        """Loop callback: the next inflate budget's worth of the aggregate
        frames that wait (see _deliver)."""
        self._unwrap_handle = None
        if self._closing or self.transport is None:
            return
        try:
            self._deliver(None, 0, None)
        except Exception as exc:
            _aio_log.exception("receive failed for %r", self)
            self._abort(f"internal error: {_error_text(exc)}")

    cdef int _drop_held(self) except -1:
        """Forgets the aggregate frames waiting for an inflate budget (the
        session is closing); they count as dropped_in."""
        if self._unwrap_handle is not None:
            self._unwrap_handle.cancel()
            self._unwrap_handle = None
        if self._unwrapper is not None and self._unwrapper._held:
            self.dropped_in += self._unwrapper._drop_held()
        return 0

    cdef int _dispatch(self, PacketBatch batch) except -1:
        cdef uint64_t one
        if self._hub._any_async:
            return self._dispatch_ordered(batch)
        self._in_burst = True
        try:
            if self._handlers is None:
                if self._handler is not None:
                    self._hub._call_handler(self._handler, self, batch)
                elif self._inbox is not None:
                    self._inbox.put_nowait(batch)
            elif batch._one_type(&one):  # a burst of one type (the usual case): no grouping
                ptype = one
                self._hub._count_type(ptype, batch._count)
                fn = self._handlers.get(ptype, self._handler)
                if fn is None:
                    self._hub._count_drop("unhandled type", batch._count)
                else:
                    self._hub._call_handler(fn, self, batch)
            else:
                for ptype, group in batch.by_type().items():
                    self._hub._count_type(ptype, len(group))
                    fn = self._handlers.get(ptype, self._handler)
                    if fn is None:
                        self._hub._count_drop("unhandled type", len(group))
                        continue
                    self._hub._call_handler(fn, self, group)
                    if self._closing:
                        break
        except Exception as exc:
            _aio_log.exception("handler failed for %r", self)
            self._close(f"handler error: {_error_text(exc)}")
        finally:
            self._in_burst = False
        return 0

    # -- async handlers: one session's bursts in order --------------------------

    cdef int _dispatch_ordered(self, PacketBatch batch) except -1:
        """_dispatch for a server with an async handler: each (handler, burst
        or type group) runs after the previous one of this session finished;
        sync ones run at once when nothing is pending."""
        cdef Hub hub = self._hub
        self._in_burst = True
        try:
            if self._handlers is None:
                self._handle(self._handler, batch, hub._handler_async)
            else:
                for ptype, group in batch.by_type().items():
                    hub._count_type(ptype, len(group))
                    fn = self._handlers.get(ptype)
                    is_async = ptype in hub._async_types
                    if fn is None:
                        fn = self._handler
                        is_async = hub._handler_async
                    if fn is None:
                        hub._count_drop("unhandled type", len(group))
                        continue
                    self._handle(fn, group, is_async)
                    if self._closing:
                        break
        except Exception as exc:
            _aio_log.exception("handler failed for %r", self)
            self._close(f"handler error: {_error_text(exc)}")
        finally:
            self._in_burst = False
        return 0

    cdef int _handle(self, object fn, PacketBatch batch, bint is_async) except -1:
        cdef Hub hub = self._hub
        if self._task is not None:
            # an async handler of this session is pending: wait behind it
            if self._work is None:
                self._work = _collections.deque()
            self._work.append((fn, batch, is_async))
            self._work_packets += batch._count
            self._work_bytes += batch.nbytes
            if (not self._queue_paused and self.transport is not None and
                    (self._work_packets >= hub._queue_packets or self._work_bytes >= hub._queue_bytes)):
                # backpressure: the peer's further bytes wait in the kernel
                # until the handler catches up (bounded memory)
                self._queue_paused = True
                if not self._writing_paused:
                    self.transport.pause_reading()
        elif is_async:
            self._task = hub.loop.create_task(_run_async_handlers(self, fn, batch))
        else:
            hub._call_handler(fn, self, batch)
        return 0

    cdef object _next_work(self):
        """The next (handler, batch, is_async) waiting, or None. Reading
        resumes once the queue is empty: the handler then still has the
        last batch in hand while new bytes arrive."""
        cdef PacketBatch batch
        if not self._work:
            return None
        item = self._work.popleft()
        batch = <PacketBatch>item[1]
        self._work_packets -= batch._count
        self._work_bytes -= batch.nbytes
        if self._queue_paused and not self._work:
            self._queue_paused = False
            if self.transport is not None and not self._closing and self._may_read():
                self.transport.resume_reading()
        return item

    cdef int _drop_work(self) except -1:
        """Drops the bursts waiting for an async handler (this session is
        closed by this side: like a sync burst cut short, the rest is not
        handled); they count as dropped_in."""
        if self._work:
            self.dropped_in += self._work_packets
            self._hub._count_drop("session closed", self._work_packets)
            self._work.clear()
        self._work_packets = 0
        self._work_bytes = 0
        return 0

    cdef int _drained(self) except -1:
        """The async handler task ended: reading resumes, and a close that
        waited for it completes."""
        cdef bint was_paused = self._queue_paused
        self._task = None
        self._queue_paused = False
        self._drop_work()  # only after an error or a cancellation: the task empties the queue otherwise
        if self._lost:
            self._lost = False
            self._finish_close()
        elif self._drain_reason is not None:
            self._close(self._drain_reason)
        elif was_paused and self.transport is not None and not self._closing and self._may_read():
            self.transport.resume_reading()
        return 0

    # -- send ------------------------------------------------------------------

    def send(self, type, payload, *, player_id=0, seq=None):
        """send(type, payload, *, player_id=0, seq=None) -> int | None

        Queue one packet; returns the seq used, or None when the packet was
        dropped: the session is closed, the slow-consumer policy cut the
        peer off, or the flush it caused failed (which closes the session
        with the error as its reason). Dropped packets are counted in
        ``dropped_out``. Flushed at the end of the current read burst, when
        the send buffer passes its fill threshold, or after max_delay for
        sends made outside a read burst. Bad arguments (a value that does
        not fit its header field, a payload larger than send_buffer) raise
        ValueError/TypeError as SendBuffer.send does.
        """
        return self._send(type, payload, player_id, seq)

    cdef object _send(self, object type, object payload, object player_id, object seq):
        if self._closing:
            self.dropped_out += 1
            return None
        try:
            s = self._out().send(type, payload, player_id=player_id, seq=seq)
        except BufferFull:
            if not self._make_room():
                self.dropped_out += 1
                return None
            s = self._sendbuf.send(type, payload, player_id=player_id, seq=seq)
        self._after_send()
        if self._closing:
            return None  # its own flush failed or cut the peer off: dropped and counted there
        return s

    def send_batch(self, batch):
        """send_batch(batch): relay a PacketBatch byte-for-byte (headers, seq
        included, as they are), of any size: what does not fit the send
        buffer is written in as many flushes as it takes, packets whole and
        in order. Dropped (and counted) like send() when the session is
        closed or the peer is cut off meanwhile; a batch in another layout
        or with a packet larger than send_buffer raises ValueError, sending
        nothing."""
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"send_batch needs a fastpacket.PacketBatch, not {type(batch).__name__!r}")
        cdef Py_ssize_t n = (<PacketBatch>batch)._count, done = 0
        cdef SendBuffer sb = self._out()
        while done < n and not self._closing:
            try:
                done += sb.send_batch(batch, done)
            except BufferFull:  # nothing fitted: write what is queued, then go on
                if not self._make_room():
                    break
                continue
            if done < n and not self._make_room():  # the buffer is full: write it, then go on
                break
        if done < n:
            self.dropped_out += n - done
        if done:
            self._after_send()

    def send_array(self, type, records, *, player_ids=None):
        """send_array(type, records, *, player_ids=None) -> int

        Queue one packet per row of `records` (a numpy array, as
        SendBuffer.send_array: seq assigned as usual, `player_ids` None, one
        integer, or one per row) in native code. Any number of rows: what
        does not fit the send buffer goes out in as many flushes as needed.
        Returns the packets queued: fewer when the session closes or the
        peer is cut off meanwhile (the rest dropped and counted, as by
        send()). Bad arguments raise before anything is queued.
        """
        cdef uint64_t type_
        _type_arg(self._hub._layout, type, &type_)
        arr = records_array(records, "Session.send_array")
        cdef RecordsView rv
        records_view(arr, &rv)
        cdef U64Values ids
        keep = u64_values(player_ids, rv.count, "player_ids", &ids)
        check_player_ids(self._hub._layout, &ids, rv.count)
        return self._send_rows(type_, rv.data, rv.count, rv.row_bytes, rv.row_stride, ids.values, ids.stride)

    cdef Py_ssize_t _send_rows(self, uint64_t type_, const uint8_t* rows, Py_ssize_t count, Py_ssize_t row_bytes,
                               Py_ssize_t row_stride, const uint64_t* ids, size_t id_stride) except -1:
        """Queues rows as packets, flushing between runs that fill the
        buffer; the number queued (the rest dropped and counted)."""
        cdef SendBuffer sb = self._out()
        cdef size_t frame = sb._layout.c.header_size + <size_t>row_bytes
        cdef Py_ssize_t done = 0, k
        if frame > sb._max:
            raise ValueError(f"a packet of {frame} bytes can never fit this session's send buffer "
                             f"(send_buffer={sb._max})")
        while done < count:
            if self._closing:
                break
            k = min(count - done, <Py_ssize_t>(sb._c.free_bytes() // frame))
            if k == 0:
                if not self._make_room():
                    break
                continue
            sb._append_rows(type_, rows + done * row_stride, k, row_bytes, row_stride,
                            ids + done * id_stride if ids != NULL else NULL, id_stride)
            done += k
            self._after_send()
        if done < count:
            self.dropped_out += count - done
        return done

    def group(self, name):
        """group(name) -> Group: the group `name` of this session's server
        (``server.group(name)``), for handlers that have the session only."""
        return self._hub.group(name)

    def broadcast(self, type, payload, sessions=None, *, player_id=0, include_self=False):
        """broadcast(type, payload, sessions=None, *, player_id=0, include_self=False) -> int

        Send one packet to many sessions (default: every session of this
        server but this one); returns how many got it queued."""
        return _broadcast(self._hub.sessions if sessions is None else sessions, type, payload, player_id,
                          None if include_self else self)

    cdef bint _make_room(self) except -1:
        """The send buffer is full: write it out. While the peer's output is
        paused (it reads slower than we write) it is written all the same
        as long as what may be pending for the peer, the transport's buffer
        with it and a send buffer filled again, stays within
        max_pending_bytes (the bound; the paused state only signals that
        the transport passed its high-water mark); past it, the
        slow-consumer policy. True when there is room now."""
        self._out()  # callers have queued (or are about to queue) into it
        if self.transport is not None and (
                not self._writing_paused or
                self.transport.get_write_buffer_size() + <Py_ssize_t>self._sendbuf._c.size()
                + <Py_ssize_t>self._sendbuf._max <= self._hub._max_pending_bytes):
            self._write_out()
            return not self._closing
        self._hub._slow_consumer(self)
        return False

    cdef int _after_send(self) except -1:
        if self._sendbuf is None:
            return 0  # nothing was queued: a send path never made the buffer
        if self._sendbuf._c.should_flush(<size_t>-1, self._hub._fill_ratio):
            self._flush()  # past the fill threshold: write now, whatever the burst
        elif self._in_burst:
            pass  # this session's own read burst: buffer_updated flushes it at its end
        elif not self._dirty:
            self._dirty = True
            self._hub._dirty.append(self)
            self._hub._schedule_session_flush(self)  # a send outside any read burst
        return 0

    def flush(self):
        """Write what is queued now (normally automatic)."""
        self._flush()

    cdef int _flush(self) except -1:
        """Writes what is queued. A failure to pack or write this session's
        output (an error, not a bug of the caller's arguments: those raise
        at send()) closes this session with the error as its reason and
        counts the packets as dropped; it never propagates, so no caller
        (the read burst, the hub's end-of-iteration flush) is interrupted."""
        self._dirty = False
        if self._writing_paused:
            return 0  # held until resume_writing(), or written by _make_room() within max_pending_bytes
        return self._write_out()

    cdef int _write_out(self) except -1:
        """_flush() even while the peer's output is paused."""
        if self._sendbuf is None:
            return 0  # nothing was ever sent
        cdef size_t n = self._sendbuf._c.count()
        if self.transport is None or n == 0:
            return 0
        cdef size_t nbytes = self._sendbuf._c.size()
        cdef Py_ssize_t sent = 0
        if self._fd >= 0:
            sent = self._write_through(nbytes, n)
            if sent < 0:
                return 0  # all of it went out
        view = self._sendbuf._flush_view()
        if sent > 0:
            view = view[sent:]  # the kernel took the start: the transport writes the rest after it
        try:
            wire = self._hub._write(self, view, nbytes - sent, n) + sent
        except Exception as exc:
            self._send_failed(exc, n)
            return 0
        self.packets_out += n
        self.flushes += 1
        self.bytes_out += wire
        return 0

    cdef SendBuffer _out(self):
        """This session's send buffer, made on first use: an idle connection
        holds none (its chunk, send_buffer bytes, is most of an idle
        session's memory). Every path that writes into it calls this first."""
        if self._sendbuf is None:
            self._sendbuf = SendBuffer(self._hub._send_buffer, self._hub._layout)
        return self._sendbuf

    cdef Py_ssize_t _write_through(self, size_t nbytes, size_t count) except -2:
        """The native write path: one send(2) of the queued bytes while the
        transport holds nothing (asyncio's _SelectorSocketTransport.write
        does the same first, in Python). Returns -1 when all of it went out
        (the buffer is cleared and counted), else how many bytes the kernel
        took (0 on EAGAIN or an error): the caller hands the rest to the
        transport, which buffers it (and pauses us past its high-water mark)
        or meets the error again and closes the connection as it would have."""
        cdef Hub hub = self._hub
        cdef SendBuffer sb = self._sendbuf
        cdef Py_ssize_t w
        cdef int fd = self._fd
        cdef const uint8_t* data = sb._active._mem  # the chunk sb._c fills
        if self._transport_buffered:
            if self.transport.get_write_buffer_size():
                return 0  # bytes wait in the transport: ours go behind them
            self._transport_buffered = False
        if nbytes >= NOGIL_MIN_BYTES:  # a large copy into the kernel: other threads run meanwhile
            with nogil:
                w = c_send(fd, data, nbytes, MSG_NOSIGNAL | MSG_DONTWAIT)
        else:  # a small non-blocking send: dropping and retaking the GIL costs more (see _read_ready)
            w = c_send(fd, data, nbytes, MSG_NOSIGNAL | MSG_DONTWAIT)
        if w == <Py_ssize_t>nbytes:
            sb._c.attach(sb._active._mem)  # nothing holds these bytes now: refill the same chunk
            self.packets_out += count
            self.flushes += 1
            self.bytes_out += nbytes
            if hub._metrics is not None:
                hub._metrics["flush"].record(nbytes)
                hub._metrics["packets_out"].inc(count)
                hub._metrics["bytes_out"].inc(nbytes)
            return -1
        self._transport_buffered = True
        return w if w > 0 else 0

    cdef int _send_failed(self, BaseException exc, size_t n) except -1:
        _aio_log.error("send error on %r, closing it: %s", self, _error_text(exc), exc_info=exc)
        self.dropped_out += n
        self._hub._count_drop("send error", n)
        if self._close_reason is None:
            self._close_reason = f"send error: {_error_text(exc)}"
        self._closing = True
        self._leave_groups()
        if self.transport is not None:
            self.transport.close()  # what was written before goes out; nothing more is queued
        return 0

    # -- close -----------------------------------------------------------------

    def abort(self, reason=None):
        """Close at once with `reason`, dropping whatever is queued for the peer."""
        self._abort(reason)

    cdef int _abort(self, object reason) except -1:
        if self._closing:
            return 0
        self._drop_work()
        self._drop_held()
        self._closing = True
        self._leave_groups()
        if self._close_reason is None:
            self._close_reason = reason or "aborted"
        if self.transport is not None:
            self.transport.abort()
        return 0

    def close(self, reason=None):
        """Flush what is queued (if the peer is writable) and close with `reason`."""
        self._close(reason)

    cdef int _close(self, object reason) except -1:
        if self._closing:
            return 0
        self._drop_work()
        self._drop_held()
        self._closing = True
        self._leave_groups()
        if self._close_reason is None:
            self._close_reason = reason or "closed"
        if self.transport is not None:
            if self._writing_paused:
                self.transport.abort()  # a peer that does not read gets nothing more
                return 0
            self._closing = False       # let the final flush through
            self._flush()
            self._closing = True
            if self.transport is not None:
                self.transport.close()
        return 0

    cdef int _leave_groups(self) except -1:
        """The session is closing: it leaves every group it is in."""
        cdef Group g
        groups = self._groups
        if groups:
            self._groups = None
            for g in groups:
                if self in g._index:
                    g._remove(self)
        return 0

    @property
    def groups(self):
        """The groups this session is a member of (a snapshot)."""
        return list(self._groups) if self._groups else []

    # -- state -------------------------------------------------------------------

    @property
    def options(self):
        """The checked fastpacket.aio.Options this session runs with."""
        return self._hub.options

    @property
    def close_reason(self):
        """Why the session ended (None while it is open)."""
        return self._close_reason if self._closing or self.transport is None else None

    @property
    def closed(self):
        """True once close() was called or the connection was lost."""
        return bool(self._closing)

    @property
    def peername(self):
        """The peer's address, or None once closed."""
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    @property
    def write_path(self):
        """How flushes reach the socket: "native" (one send(2) from native
        code while the transport holds nothing: asyncio's selector loop or
        uvloop, over TCP or a Unix socket, no TLS, no aggregation),
        "transport" (transport.write: TLS, aggregation, other transports),
        or None once the connection is gone."""
        if self.transport is None:
            return None
        return "native" if self._fd >= 0 else "transport"

    @property
    def read_path(self):
        """How bytes come in: "native" (one recv(2) into the receive ring from
        native code per readiness: asyncio's selector loop over TCP or a Unix
        socket, no TLS), "transport" (the transport calls get_buffer() and
        buffer_updated(): uvloop, TLS, other transports), or None once the
        connection is gone."""
        if self.transport is None:
            return None
        return "native" if self._rfd >= 0 else "transport"

    @property
    def queued_bytes(self):
        """Bytes queued in this session's send buffer, not yet written."""
        return self._sendbuf._c.size() if self._sendbuf is not None else 0

    @property
    def send_buffer_bytes(self):
        """Memory held by this session's send buffer (send_buffer bytes per
        chunk: the one being filled, and the one last flushed while it is
        kept for reuse); 0 until the first send: an idle connection holds
        none."""
        if self._sendbuf is None:
            return 0
        return <Py_ssize_t>self._sendbuf._max * (2 if self._sendbuf._flushed is not None else 1)

    @property
    def unhandled_packets(self):
        """Packets received and waiting for this session's async handler
        (bounded by handler_queue_packets, past which reading pauses)."""
        return self._work_packets

    @property
    def unhandled_bytes(self):
        """Bytes of the packets waiting for this session's async handler."""
        return self._work_bytes

    @property
    def metrics(self):
        """This session's counters."""
        return {
            "packets_in": self.packets_in, "bytes_in": self.bytes_in, "batches_in": self.batches_in,
            "packets_out": self.packets_out, "bytes_out": self.bytes_out, "flushes": self.flushes,
            "dropped_in": self.dropped_in, "dropped_out": self.dropped_out,
        }

    async def recv(self, timeout=None):
        """recv(timeout=None) -> PacketBatch | None

        The next received batch, for a client connected without a handler;
        None once the connection is closed."""
        if self._inbox is None:
            raise RuntimeError("recv() is for sessions connected without a handler")
        return await _asyncio.wait_for(self._inbox.get(), timeout)

    def __repr__(self):
        state = f"closed: {self._close_reason}" if self._closing else "open"
        return (f"<{type(self).__name__} {self.peername} {state} in={self.packets_in} "
                f"out={self.packets_out}>")

    async def wait_closed(self):
        """wait_closed() -> str: wait until the connection is closed; returns the close reason."""
        return await _asyncio.shield(self._closed)


def _broadcast(targets, ptype, payload, player_id, SessionBase skip):
    """Sends one packet to every session of `targets` but `skip`; how many
    got it queued (fastpacket.aio's Session.broadcast and PacketServer.broadcast)."""
    cdef Py_ssize_t n = 0
    # checked once here, so a bad value raises even with no session to send to
    if ptype is not None:
        u64_arg(ptype, "type")
    u64_arg(player_id, "player_id")
    for s in targets:
        if s is skip:
            continue
        if not isinstance(s, SessionBase):
            raise TypeError(f"broadcast targets are sessions, not {type(s).__name__!r}")
        if (<SessionBase>s)._send(ptype, payload, player_id, None) is not None:
            n += 1
    return n


async def _run_async_handlers(SessionBase s, object fn, PacketBatch batch):
    """The task of a session with an async handler pending: awaits it, then
    handles the bursts that arrived meanwhile, in order (sync handlers
    called, async ones awaited), flushing the session's output after each
    (a handler's replies are not held back). A handler error closes the
    session ("handler error: ...") and drops what was waiting."""
    cdef Hub hub = s._hub
    cdef bint is_async = True
    cdef uint64_t t0
    try:
        while True:
            if is_async:
                t0 = monotonic_ns()
                await fn(s, batch)
                if hub._metrics is not None:
                    hub._metrics["handler"].record(monotonic_ns() - t0)  # wall time, awaits included
                    hub._metrics["batch"].record(batch._count)
            else:
                s._in_burst = True
                try:
                    hub._call_handler(fn, s, batch)
                finally:
                    s._in_burst = False
            s._flush()
            if hub._dirty or hub._dirty_groups:
                hub._schedule_flush(True)
            item = s._next_work()
            if item is None:
                break
            fn, batch, is_async = item
    except Exception as exc:
        _aio_log.exception("handler failed for %r", s)
        if not s._closing:
            s._close(f"handler error: {_error_text(exc)}")
    finally:
        s._drained()


cdef uint64_t _rows_type_arg(object type) except? 0xFFFFFFFFFFFFFFFF:
    """The packet type of scatter/broadcast_array before any session's
    layout is known: an int in the u64 range, or None (a layout without a
    type field); _type_arg then checks it against each session's layout."""
    return 0 if type is None else u64_arg(type, "type")


cdef Py_ssize_t _session_rows(object s, uint64_t type_, const uint8_t* rows, Py_ssize_t count,
                              Py_ssize_t row_bytes, Py_ssize_t row_stride, const uint64_t* ids,
                              size_t id_stride, bint flush) except -1:
    if not isinstance(s, SessionBase):
        raise TypeError(f"targets are sessions, not {type(s).__name__!r}")
    cdef SessionBase session = <SessionBase>s
    cdef Py_ssize_t done = session._send_rows(type_, rows, count, row_bytes, row_stride, ids, id_stride)
    if flush and done:
        session._flush()
    return done


def _scatter(sessions, type, records, player_ids, index, starts, bint flush):
    """fastpacket.aio.scatter (documented there): per-session rows of one
    array, one native pass."""
    cdef uint64_t type_ = _rows_type_arg(type)
    arr = records_array(records, "scatter")
    cdef RecordsView rv
    records_view(arr, &rv)
    targets = sessions if isinstance(sessions, (list, tuple)) else list(sessions)
    cdef Py_ssize_t n = len(targets), i, j, k, begin, end, queued = 0
    cdef U64Values ids
    keep = u64_values(player_ids, rv.count, "player_ids", &ids)
    cdef PyObject** items = PySequence_Fast_ITEMS(targets)
    cdef cnp.int64_t[::1] rows_of
    cdef cnp.int64_t[::1] bounds
    cdef uint8_t* scratch = NULL
    cdef uint64_t* scratch_ids = NULL
    if (index is None) != (starts is None):
        raise TypeError("scatter: index and starts go together (rows index[starts[k]:starts[k+1]] to session k)")
    for i in range(n):  # the layouts and ids checked once, before anything is queued
        if <object>items[i] is not None:
            if not isinstance(<object>items[i], SessionBase):
                raise TypeError(f"scatter targets are sessions (or None), not {(<object>items[i]).__class__.__name__!r} "
                                f"(index {i})")
            _type_arg((<SessionBase>items[i])._hub._layout, type, &type_)
            check_player_ids((<SessionBase>items[i])._hub._layout, &ids, rv.count)
    if index is None:
        if n != rv.count:
            raise ValueError(f"scatter needs one row per session: {n} sessions, {rv.count} rows")
        for i in range(n):
            if <object>items[i] is None:
                continue
            queued += _session_rows(<object>items[i], type_, rv.data + i * rv.row_stride, 1, rv.row_bytes, 0,
                                    ids.values + i * ids.stride if ids.values != NULL else NULL, 0, flush) > 0
        return queued
    rows_idx = np.ascontiguousarray(index, dtype=np.int64)
    bounds_arr = np.ascontiguousarray(starts, dtype=np.int64)
    if rows_idx.ndim != 1 or bounds_arr.ndim != 1 or bounds_arr.shape[0] != n + 1:
        raise ValueError(f"scatter: index must be 1-d and starts must have one entry per session plus one "
                         f"({n + 1}), got shapes {rows_idx.shape} and {bounds_arr.shape}")
    rows_of = rows_idx
    bounds = bounds_arr
    cdef Py_ssize_t m = rows_idx.shape[0]
    if bounds[0] != 0 or bounds[n] != m:
        raise ValueError(f"scatter: starts must begin at 0 and end at len(index) ({m}), got {bounds[0]} .. {bounds[n]}")
    cdef Py_ssize_t most = 0
    for k in range(n):
        if bounds[k + 1] < bounds[k]:
            raise ValueError(f"scatter: starts must not decrease (starts[{k + 1}] = {bounds[k + 1]} < "
                             f"starts[{k}] = {bounds[k]})")
        most = max(most, bounds[k + 1] - bounds[k])
    for j in range(m):
        if rows_of[j] < 0 or rows_of[j] >= rv.count:
            raise ValueError(f"scatter: index[{j}] = {rows_of[j]} is not a row of records ({rv.count} rows)")
    scratch = <uint8_t*>malloc(most * rv.row_bytes + 1)
    scratch_ids = <uint64_t*>malloc(most * sizeof(uint64_t) + 1)
    if scratch == NULL or scratch_ids == NULL:
        free(scratch)
        free(scratch_ids)
        raise MemoryError(f"scatter: cannot allocate {most} rows of {rv.row_bytes} bytes")
    try:
        for k in range(n):
            begin = bounds[k]
            end = bounds[k + 1]
            if end == begin or <object>items[k] is None:
                continue
            for j in range(begin, end):  # gathered in one buffer: one append per session
                memcpy(scratch + (j - begin) * rv.row_bytes, rv.data + rows_of[j] * rv.row_stride, rv.row_bytes)
                if ids.values != NULL:
                    scratch_ids[j - begin] = ids.values[rows_of[j] * ids.stride]
            queued += _session_rows(<object>items[k], type_, scratch, end - begin, rv.row_bytes, rv.row_bytes,
                                    scratch_ids if ids.values != NULL else NULL, 1, flush) > 0
    finally:
        free(scratch)
        free(scratch_ids)
    return queued


def _broadcast_array(sessions, type, records, player_ids, SessionBase skip, bint flush):
    """fastpacket.aio.broadcast_array (documented there): every row to every session."""
    cdef uint64_t type_ = _rows_type_arg(type)
    arr = records_array(records, "broadcast_array")
    cdef RecordsView rv
    records_view(arr, &rv)
    cdef U64Values ids
    keep = u64_values(player_ids, rv.count, "player_ids", &ids)
    targets = sessions if isinstance(sessions, (list, tuple)) else list(sessions)
    for s in targets:
        if s is not None and s is not skip:
            if not isinstance(s, SessionBase):
                raise TypeError(f"broadcast targets are sessions, not {s.__class__.__name__!r}")
            _type_arg((<SessionBase>s)._hub._layout, type, &type_)
            check_player_ids((<SessionBase>s)._hub._layout, &ids, rv.count)
    cdef Py_ssize_t queued = 0
    for s in targets:
        if s is None or s is skip:
            continue
        queued += _session_rows(s, type_, rv.data, rv.count, rv.row_bytes, rv.row_stride, ids.values, ids.stride,
                                flush) > 0
    return queued
