# Groups: named sets of sessions of one server (rooms) and their native
# fan-out. A send to a group is encoded (or taken from a batch) once and
# copied into every member's send buffer in one C++ loop
# (fastpacket::fanout_frames), like SendBuffer.broadcast copies once and
# patches; each member is then written once at the end of the loop
# iteration however many sends fed it (the hub's dirty list). With a bus,
# what a loop iteration sent to the group is also gathered into one publish
# buffer, which the hub hands to the bus as one message per group at the
# end of that iteration (fastpacket.cluster). fastpacket.aio documents the
# behaviour.

import struct as _struct

# The bus message header: magic u16, version u8, flags u8, run count u32,
# sender id u64 (little-endian), BUS_HEADER_BYTES in all.
_BUS_HEADER = _struct.Struct("<HBBIQ")
assert _BUS_HEADER.size == BUS_HEADER_BYTES


cdef object _group_name(object name):
    """`name` checked: a str or an int (not a bool)."""
    if isinstance(name, bool) or not isinstance(name, (str, int)):
        raise TypeError(f"a group name is a str or an int, not {type(name).__name__!r}")
    return name


cdef class Group:
    """A named set of sessions of one server: ``server.group(name)``.

    ``add(session)``, ``discard(session)``, ``session in group``,
    ``len(group)`` (the members on this server); ``send(type, payload, *,
    player_id=0)`` and ``send_batch(batch, exclude=None)`` reach every
    member, and with a bus every member on every server sharing it. A
    session leaves its groups when it closes. fastpacket.aio documents
    groups; instances come from ``PacketServer.group()`` only.
    """

    def __cinit__(self):
        self._members = []
        self._index = {}
        self._runs = []

    def __init__(self):
        raise TypeError("groups come from server.group(name)")

    def __dealloc__(self):
        free(self._targets)
        free(self._picked)
        free(self._status)

    def __repr__(self):
        return f"<Group {self.name!r} {len(self._members)} members>"

    def __len__(self):
        """Members on this server."""
        return len(self._members)

    def __contains__(self, session):
        return session in self._index

    def __iter__(self):
        """The members on this server (a snapshot)."""
        return iter(list(self._members))

    @property
    def server_members(self):
        """The members on this server, as a list (a snapshot)."""
        return list(self._members)

    def ready(self, timeout=2.0):
        """ready(timeout=2.0) -> awaitable[bool]

        ``await group.ready()``: wait until what other servers send to the
        group reaches its members here, that is until the bus confirmed
        this server's subscription (at most `timeout` seconds, a number >=
        0). True at once without a bus or for a group with no member here. A
        server that acknowledges a join after it (the relay does) lets a
        client start sending knowing the room is complete."""
        cdef double seconds = double_arg(timeout, "timeout", 0.0, INFINITY)
        bus = self._hub.bus
        if bus is not None and hasattr(bus, "wait_subscribed"):
            return bus.wait_subscribed(self, seconds)
        done = self._hub.loop.create_future()
        done.set_result(True)
        return done

    # -- membership -------------------------------------------------------------

    def add(self, session):
        """add(session): make `session` (a session of this server) a member.
        A closed session is not added (it would leave at once); adding a
        member again changes nothing. The first member on this server
        subscribes the server to the group's bus channel."""
        if not isinstance(session, SessionBase):
            raise TypeError(f"group members are sessions, not {type(session).__name__!r}")
        cdef SessionBase s = <SessionBase>session
        if s._hub is not self._hub:
            raise ValueError(f"{session!r} is a session of another server than group {self.name!r}'s")
        if s._closing or session in self._index:
            return
        self._index[session] = len(self._members)
        self._members.append(session)
        if s._groups is None:
            s._groups = []
        s._groups.append(self)
        if len(self._members) == 1 and self._hub.bus is not None and not self._subscribed:
            self._subscribed = True
            self._hub.bus.subscribe(self)

    def discard(self, session):
        """discard(session): `session` leaves the group (nothing if it is not
        a member). The last member leaving this server unsubscribes it from
        the group's bus channel."""
        if session not in self._index:
            return
        cdef SessionBase s = <SessionBase>session
        self._remove(s)
        if s._groups is not None:
            try:
                s._groups.remove(self)
            except ValueError:
                pass

    cdef int _remove(self, SessionBase session) except -1:
        """Takes `session` out of the member list (swap-remove: O(1)); the
        bus unsubscribes with the last member."""
        cdef Py_ssize_t i = self._index.pop(session)
        last = self._members.pop()
        if last is not session:
            self._members[i] = last
            self._index[last] = i
        if not self._members and self._subscribed:
            self._subscribed = False
            bus = self._hub.bus
            if bus is not None:
                bus.unsubscribe(self)
        return 0

    # -- sends ---------------------------------------------------------------------

    def send(self, type, payload, *, player_id=0):
        """send(type, payload, *, player_id=0) -> int

        Send one packet to every member (each with its own connection's next
        seq, as Session.send numbers it), and with a bus to every member on
        the other servers too. Encoded once, copied into each member's send
        buffer natively; each member gets one write per loop iteration.
        Returns how many members on this server got it queued (a member
        whose peer does not keep up is cut off and counted as in
        Session.send). Bad arguments raise ValueError/TypeError as
        SendBuffer.send does, before anything is sent.
        """
        cdef Hub hub = self._hub
        cdef int64_t offset = 0
        cdef uint32_t size
        if hub._scratch is None:  # made on first use: a client's hub never needs one
            hub._scratch = SendBuffer(hub._send_buffer, hub._layout)
        cdef SendBuffer scratch = hub._scratch
        scratch.clear()
        scratch.send(type, payload, player_id=player_id, seq=0)  # checks and encodes once
        size = <uint32_t>scratch._c.size()
        cdef Py_ssize_t got = self._fanout(scratch._active._mem, &offset, &size, 1, size, True, None)
        if self._pub is not None:
            self._gather(scratch._active._mem, &offset, &size, 1, True)
        scratch.clear()
        return got

    def send_batch(self, batch, exclude=None):
        """send_batch(batch, exclude=None)

        Relay a PacketBatch to every member but `exclude` (a session, or
        None), byte-for-byte as Session.send_batch does (headers, seq
        included, as they are), and with a bus to every member on the other
        servers. A batch larger than a send buffer is relayed in pieces that
        fit, in order; a single packet larger than one is a ValueError.
        """
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"send_batch needs a fastpacket.PacketBatch, not {type(batch).__name__!r}")
        if exclude is not None and not isinstance(exclude, SessionBase):
            raise TypeError(f"exclude must be a session or None, not {type(exclude).__name__!r}")
        cdef PacketBatch b = <PacketBatch>batch
        cdef Hub hub = self._hub
        if b._layout is not hub._layout and b._layout != hub._layout:
            raise ValueError(f"the batch's layout {b._layout.name} is not this server's layout "
                             f"{hub._layout.name}: relayed byte for byte, its packets would be framed "
                             f"differently")
        if b._count == 0:
            return
        self._fanout_batch(b, 0, b._count, False, <SessionBase>exclude if exclude is not None else None,
                           self._pub is not None)

    cdef Py_ssize_t _fanout_batch(self, PacketBatch b, Py_ssize_t begin, Py_ssize_t end, bint renumber,
                                  SessionBase exclude, bint gather) except -1:
        """Fans out packets [begin, end) of `b` (and with `gather`, gathers
        them for the bus) in pieces no larger than a member's send buffer,
        in order."""
        cdef Hub hub = self._hub
        cdef Py_ssize_t i = begin, j
        cdef uint64_t piece
        cdef uint64_t limit = <uint64_t>hub._send_buffer
        while i < end:
            piece = 0
            j = i
            while j < end and piece + b._cols.sizes[j] <= limit:
                piece += b._cols.sizes[j]
                j += 1
            if j == i:
                raise ValueError(f"packet {i} of the batch ({b._cols.sizes[i]} bytes) is larger than a "
                                 f"send buffer ({limit} bytes): it can never be sent")
            self._fanout(b._base, b._cols.offsets + i, b._cols.sizes + i, j - i, piece, renumber, exclude)
            if gather:
                self._gather(b._base, b._cols.offsets + i, b._cols.sizes + i, j - i, renumber)
            i = j
        return end - begin

    cdef int _reserve(self, Py_ssize_t n) except -1:
        if n <= self._capacity:
            return 0
        cdef Py_ssize_t cap = max(n, 2 * self._capacity, 8)
        cdef CppSendBuffer** t = <CppSendBuffer**>realloc(self._targets, cap * sizeof(CppSendBuffer*))
        if t == NULL:
            raise MemoryError()
        self._targets = t
        cdef Py_ssize_t* p = <Py_ssize_t*>realloc(self._picked, cap * sizeof(Py_ssize_t))
        if p == NULL:
            raise MemoryError()
        self._picked = p
        cdef SendStatus* st = <SendStatus*>realloc(self._status, cap * sizeof(SendStatus))
        if st == NULL:
            raise MemoryError()
        self._status = st
        self._capacity = cap
        return 0

    cdef Py_ssize_t _fanout(self, const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                            Py_ssize_t count, uint64_t nbytes, bint renumber, SessionBase exclude) except -1:
        """Appends the `count` frames (`nbytes` in all, at most a send
        buffer) to every member's send buffer but `exclude`'s: one native
        loop, then per member the adapter's usual after-send step (flush
        past the fill threshold, else onto the hub's dirty list). A member
        whose buffer is full is flushed (or cut off as a slow consumer) and
        retried alone; one that still cannot take the frames counts them
        in dropped_out. Returns how many members got them queued."""
        cdef Py_ssize_t n = len(self._members)
        cdef Py_ssize_t i, k = 0, got = 0
        cdef SessionBase s
        cdef SendStatus st
        if n == 0 or count == 0:
            return 0
        # a snapshot: a member cut off below leaves the group (and the list) at once
        members = list(self._members)
        self._reserve(n)
        for i in range(n):
            s = <SessionBase>members[i]
            if s is exclude:
                continue
            if s._closing:
                s.dropped_out += count
                continue
            self._targets[k] = s._out()._c
            self._picked[k] = i
            k += 1
        if nbytes * <uint64_t>k >= FANOUT_NOGIL_MIN_BYTES:
            with nogil:
                fanout_frames(self._targets, k, base, offsets, sizes, count, renumber, self._status)
        else:
            fanout_frames(self._targets, k, base, offsets, sizes, count, renumber, self._status)
        for i in range(k):
            s = <SessionBase>members[self._picked[i]]
            st = self._status[i]
            if st == SendStatus.full:
                if s._make_room():
                    st = s._sendbuf._c.append_frames(base, offsets, sizes, count, renumber)
            if st != SendStatus.ok:
                s.dropped_out += count
                continue
            got += 1
            s._after_send()
        return got

    # -- the bus -------------------------------------------------------------------

    cdef int _gather(self, const uint8_t* base, const int64_t* offsets, const uint32_t* sizes,
                     Py_ssize_t count, bint renumber) except -1:
        """Adds frames to what this loop iteration publishes for the group;
        a full publish buffer is published at once (order is kept: the
        message before this one goes first)."""
        cdef SendStatus st = self._pub._c.append_frames(base, offsets, sizes, count, renumber)
        if st == SendStatus.full:
            self._hub._publish_group(self)
            st = self._pub._c.append_frames(base, offsets, sizes, count, renumber)
        if st != SendStatus.ok:  # never: a piece is at most a send buffer, the publish buffer more
            raise ValueError(f"{count} packets do not fit a group's publish buffer")
        cdef uint32_t flag = BUS_RUN_RENUMBER if renumber else 0
        cdef uint32_t last
        cdef Py_ssize_t n = len(self._runs)
        if n and (<uint32_t>self._runs[n - 1] & BUS_RUN_RENUMBER) == flag:  # no [-1]: wraparound is off
            last = <uint32_t>self._runs[n - 1]
            self._runs[n - 1] = last + <uint32_t>count
        else:
            self._runs.append(flag | <uint32_t>count)
        self._mark_dirty()
        return 0

    cdef int _mark_dirty(self) except -1:
        cdef Hub hub = self._hub
        if not self._dirty:
            self._dirty = True
            hub._dirty_groups.append(self)
            if not hub._in_burst:
                hub._schedule_flush(False)  # as a send outside a read burst: max_delay at most
        return 0

    cdef bytes _take_message(self):
        """The bus message of what was gathered (None when nothing was), and
        an empty publish buffer: header, runs, then the packets, packed
        into aggregate frames (lz4 when it pays) where the layout allows."""
        cdef Hub hub = self._hub
        cdef Py_ssize_t count = self._pub._c.count()
        cdef uint32_t r
        self._dirty = False
        if count == 0:
            return None
        runs = self._runs
        self._runs = []
        if len(runs) > BUS_MAX_RUNS:  # never in practice: a run flips only between send and send_batch
            raise ValueError(f"{len(runs)} runs in one publish")
        raw = bytes(self._pub._flush_view())
        flags = BUS_FLAG_AGGREGATED if hub._bus_agg is not None else 0
        parts = [_BUS_HEADER.pack(BUS_MAGIC, BUS_VERSION, flags, len(runs), hub._bus_sender),
                 _struct.pack(f"<{len(runs)}I", *runs)]
        if hub._bus_agg is not None:
            parts.extend(hub._bus_agg._pack_many(_batch_over(hub._layout, raw, count), 0, 0))
        else:
            parts.append(raw)
        return b"".join(parts)


cdef Group _new_group(Hub hub, object name):
    cdef Group g = Group.__new__(Group)
    g.name = name
    g._hub = hub
    if hub.bus is not None:
        g.channel = hub.bus.channel(name)
        g._pub = SendBuffer(max(<Py_ssize_t>PUBLISH_BUFFER_BYTES, hub._send_buffer), hub._layout)
    return g
