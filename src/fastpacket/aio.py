"""asyncio adapter: ``serve()``, ``serve_unix()``, ``connect()``,
``connect_unix()``, ``Session``.

A server in a few lines::

    import asyncio, fastpacket as fp

    def echo(session, batch):          # called once per read burst
        session.send_batch(batch)      # byte-for-byte relay, one copy

    async def main():
        server = await fp.aio.serve(echo, "127.0.0.1", 7777)
        async with server:
            await server.serve_forever()

    asyncio.run(main())

Browsers: ``serve_ws(handler, host, port, *, path="/", ssl=None, ...)``
and ``connect_ws(url)`` serve and reach the same sessions over WebSocket
(fastpacket.ws, the ``fastpacket[ws]`` extra).

Listening mirrors asyncio's ``start_server`` family: ``serve(handler,
host, port, *, ssl=None, sock=None, ...)`` (TCP; ``ssl`` an
``ssl.SSLContext`` for TLS, ``sock`` an already bound socket, as systemd
socket activation passes one), ``serve_unix(handler, path, *, ssl=None,
sock=None, ...)``, ``connect(host, port, *, ssl=None,
server_hostname=None, ...)`` and ``connect_unix(path, *, ssl=None, ...)``.
Every per-connection option is a typed keyword argument of each (the
fields of ``Options``).

Handlers: ``handler(session, batch)`` (or per type, ``handlers={type:
fn}``) is a plain function, called synchronously once per read burst: the
fast path. An ``async def`` handler runs as a task; the bursts of one
session are handled in order (the next one's handler starts when the
previous one finished, sync handlers of the same server included), and
while one is pending the session keeps decoding into a bounded queue
(``handler_queue_packets``, ``handler_queue_bytes``) past which it stops
reading from the peer until the handler catches up: backpressure, bounded
memory. Replies an async handler sends go out at the end of the loop
iteration and when it returns. If the peer closes meanwhile, what it sent
before is still handled (replies are dropped) and ``on_close`` runs after;
if this side closes the session, what is still queued is dropped (counted
in ``dropped_in`` and ``drops["session closed"]``). Anything that is not
callable raises TypeError at ``serve()``.

Receive path: each connection reads into a RingBuffer lent from a pool
(idle connections hold none). On asyncio's selector loop the selector
calls the session's native reader (one ``recv(2)`` into the ring per
readiness; ``Session.read_path`` is "native"); elsewhere (uvloop, TLS) the
protocol is an ``asyncio.BufferedProtocol`` whose ``get_buffer`` lends the
ring's free space and whose ``buffer_updated`` (Cython) commits the bytes.
Either way every complete packet is decoded in place and
``handler(session, batch)`` runs once per read burst (or the per-type
``handlers``). A sync handler's batch of 2 KiB or more lies over the ring's
own bytes (no copy; a batch or payload view kept past the handler keeps
that ring, and the session reads on in a fresh one); a smaller burst, and
every burst for async handlers or ``recv()``, is copied once into the
batch.

Send path: ``session.send``/``send_batch``/``send_array``/``broadcast`` append to the
session's SendBuffer and are written with one write per session, never
one per packet (one ``send(2)`` from native code while the transport holds
nothing, on asyncio's selector loop and uvloop over TCP or a Unix socket;
what the kernel does not take, and every write over TLS, through
``transport.write``; ``Session.write_path`` says which): the reading session's own output at the end
of its read burst (no added latency), output a burst produced for other
sessions (broadcasts, relays) once at the end of the loop iteration
(coalescing every burst of that iteration), any buffer as soon as it passes
its fill threshold, and sends made outside a read burst ``max_delay`` later
(servers: 10 ms, short enough for a 60 Hz tick, long enough to coalesce the
sends of a timer callback; clients from ``connect()``: 0, the end of the
loop iteration).

Groups: ``server.group(name)`` (a str or an int; the same Group object for
the same name while it lives) is a named set of this server's sessions, a
room: ``group.add(session)``, ``group.discard(session)``, ``session in
group``, ``len(group)``; a session leaves its groups when it closes.
``group.send(type, payload, *, player_id=0)`` encodes one packet once and
copies it into every member's send buffer in one native loop, each copy
with that member's own next seq; ``group.send_batch(batch,
exclude=None)`` relays a batch byte for byte (as Session.send_batch). Each
member is written once per loop iteration however many sends fed it. With
``bus=`` (fastpacket.cluster) a group spans every server sharing the bus.

Limits (each ends in ``session.close_reason`` and a metric):

============================  =====================  ==========================================
option                        default                what happens
============================  =====================  ==========================================
``max_packet_size``           65535                  a larger header: closed before its payload
                                                     arrives ("protocol error: ...")
``packets_per_s``,            0 (unlimited)          token bucket (``rate_burst`` seconds of
``bytes_per_s``                                      capacity), charged before anything is
                                                     inflated (an aggregate frame: the count
                                                     and raw_size it declares): ``rate_policy``
                                                     "drop" drops the excess packets, "close"
                                                     closes ("rate limit exceeded"). The bucket must
                                                     hold one packet: ``rate_burst *
                                                     packets_per_s >= 1`` and ``rate_burst *
                                                     bytes_per_s >= max_packet_size``
``idle_timeout``              None                   no complete packet for that long: "idle timeout"
                                                     (bytes that complete no packet, such as a
                                                     drip into one, do not count)
``packet_timeout``            None                   a packet begun (its first bytes received)
                                                     but not complete for that long: "packet
                                                     timeout" (a bound on partial packets
                                                     independent of idle_timeout)
``max_inflate_bytes``         4 * recv_buffer, at    with an aggregator: the raw_size the
                              least one aggregate    aggregate frames of one read declare, at
                              frame's capacity       most this (checked before anything is
                                                     decompressed, per read and connection). A
                                                     frame declaring more alone: "protocol
                                                     error: ... (max_inflate_bytes) ..."; the
                                                     frames past it wait for the next loop
                                                     iteration, reading paused meanwhile
``max_connections``           None                   further connections: "too many connections"
``max_pending_bytes``         1 MiB                  output queued for a peer (send buffer +
                                                     transport) past this: "slow consumer"
``write_timeout``             10 s                   output paused (peer not reading) that long:
                                                     "slow consumer"
``handler_queue_packets``,    1024, 1 MiB            received while an async handler of the
``handler_queue_bytes``                              session is pending, past this: reading
                                                     pauses until the handler catches up
============================  =====================  ==========================================

With an ``aggregator``, ``max_packet_size`` must be at most
``aggregator.frame_capacity()`` (65515 for GAME): a larger packet, echoed or
relayed, could not be sent. It bounds every packet delivered, alone or
inside an aggregate frame (the frames themselves may be as large as the
peer's aggregator packs them, within ``recv_buffer``). ``Options.check()`` refuses these impossible
combinations with a ValueError naming the option.

While a peer's output is paused the server also stops reading from it. A
handler exception is logged, closes that session ("handler error: ...") and
the server keeps serving. An error while packing or writing one session's
output (say a packet an aggregate frame cannot carry) closes that session
("send error: ...") and counts its packets in ``drops["send error"]`` and
``dropped_out``; it never reaches the event loop nor holds up other
sessions' output. ``on_connect``/``on_close`` run only for accepted
connections; an exception in on_connect closes the session ("on_connect
error: ..."). Works on asyncio's default loop and on uvloop.

``server.closes`` counts the sessions that ended by the class of their
reason, the words before any ":" in snake case ("protocol error: packet
size 70000 ..." counts under ``"protocol_error"``), as the
``closes_total{reason}`` metric does; the full text is the session's
``close_reason`` and goes to the ``fastpacket.aio`` logger (DEBUG). A peer
cannot grow it: it holds at most 64 classes, ``"other"`` taking the rest.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import socket
import ssl as _ssl
from dataclasses import dataclass
from typing import Any, Awaitable, Callable, Dict, Iterable, Literal, Mapping, Optional, Sequence, Set, Tuple, Union

from fastpacket._native import Group, Hub, SessionBase, _broadcast, _broadcast_array, _scatter
from fastpacket.aggregate import MAX_RAW_SIZE, Aggregator
from fastpacket.framing import DEFAULT_MAX_PACKET_SIZE, MAX_PACKET_SIZE, PacketBatch
from fastpacket.layout import GAME, HeaderLayout
from fastpacket.metrics import CLOSE_REASONS, DROP_REASONS, MAX_TYPE_LABELS, Registry
from fastpacket.sendbuf import DEFAULT_FILL_RATIO, DEFAULT_MAX_BYTES

__all__ = ["serve", "serve_unix", "connect", "connect_unix", "Session", "PacketServer", "Options", "Handler",
           "SyncHandler", "AsyncHandler", "SessionHook", "is_async_handler", "scatter", "broadcast_array", "Group",
           "Bus", "BusArg", "serve_ws", "connect_ws"]

#: A synchronous handler: ``handler(session, batch)``, called once per read
#: burst (or per type group of one with ``handlers=``). The fast path.
SyncHandler = Callable[["Session", PacketBatch], None]
#: An asynchronous handler: ``async def handler(session, batch)``, run as a
#: task; the bursts of one session are handled in order.
AsyncHandler = Callable[["Session", PacketBatch], Awaitable[None]]
#: Either kind of handler.
Handler = Union[SyncHandler, AsyncHandler]
#: ``on_connect(session)`` / ``on_close(session)``: plain functions.
SessionHook = Callable[["Session"], None]
#: What ``ssl=`` takes: an ``ssl.SSLContext`` (a client may pass True for
#: the default context), or None for plain TCP.
SSLArg = Union[_ssl.SSLContext, bool, None]

#: PacketServer.wait_closed() waits at most this long, in seconds, for the
#: sessions to finish closing.
WAIT_CLOSED_TIMEOUT = 5.0
#: ... polling this often, in seconds.
WAIT_CLOSED_POLL = 0.005
#: After aborting the sessions left at the end of a graceful timeout,
#: PacketServer.shutdown() waits at most this long, in seconds, for the
#: loop to deliver their connection_lost.
ABORT_WAIT_S = 1.0
#: Default host of serve(): the loopback interface, not every interface
#: (asyncio's None): a server is exposed only when asked.
DEFAULT_HOST = "127.0.0.1"
#: Default max_inflate_bytes, in receive buffers: one read may inflate this
#: many times what it can carry (a compression ratio of 4 averaged over a
#: full ring); more waits for the next loop iteration.
INFLATE_BUDGET_READS = 4
#: Largest max_inflate_bytes, in bytes (what max_raw_size allows one frame).
MAX_INFLATE_BYTES = MAX_RAW_SIZE


def _check_int(name: str, value: Any, low: int, high: int) -> None:
    """TypeError unless `value` is an int (not a bool), ValueError naming
    `name` unless low <= value <= high."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{name} must be an int, not {type(value).__name__}")
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass
class Options:
    """Per-connection settings shared by a server's sessions (see the
    module docstring for what each limit does). ``serve``, ``serve_unix``,
    ``connect``, ``connect_unix`` and ``fastpacket.run`` take each field as
    a keyword argument."""

    layout: HeaderLayout = GAME
    max_packet_size: int = DEFAULT_MAX_PACKET_SIZE
    recv_buffer: int = 65536          # RingBuffer capacity (>= max_packet_size)
    send_buffer: int = DEFAULT_MAX_BYTES  # SendBuffer max_bytes
    fill_ratio: float = DEFAULT_FILL_RATIO  # flush a send buffer this full at once
    max_delay: float = 0.010          # seconds before sends made outside a read burst are flushed
    max_pending_bytes: int = 1 << 20  # send buffer + transport buffer per peer
    write_timeout: float = 10.0       # seconds a peer's output may stay paused
    packets_per_s: float = 0.0        # 0: unlimited
    bytes_per_s: float = 0.0          # 0: unlimited
    rate_burst: float = 1.0           # seconds of rate the token bucket holds
    rate_policy: str = "drop"         # or "close"
    idle_timeout: Optional[float] = None  # seconds without a complete packet
    packet_timeout: Optional[float] = None  # seconds a begun packet may take to complete
    max_connections: Optional[int] = None
    handler_queue_packets: int = 1024  # received while an async handler is pending, before reading pauses
    handler_queue_bytes: int = 1 << 20  # ... in bytes
    aggregator: Optional[Aggregator] = None  # pack outgoing, unwrap incoming
    max_inflate_bytes: Optional[int] = None  # with an aggregator: raw bytes one read inflates (None: the default)
    registry: Optional[Registry] = None

    @classmethod
    def from_kwargs(cls, kwargs: Dict[str, Any]) -> "Options":
        """Checked Options from keyword arguments (TypeError naming unknown
        ones, ValueError/TypeError naming a bad value)."""
        known = set(cls.__dataclass_fields__)
        unknown = set(kwargs) - known
        if unknown:
            raise TypeError(f"unknown option(s) {sorted(unknown)}; options are {sorted(known)}")
        return cls(**kwargs).check()

    def check(self) -> "Options":
        """Validates the settings, alone and together (ValueError/TypeError
        naming the bad one); returns self."""
        if not isinstance(self.layout, HeaderLayout):
            raise TypeError(f"layout must be a HeaderLayout, not {type(self.layout).__name__}")
        _check_int("max_packet_size", self.max_packet_size, self.layout.size, MAX_PACKET_SIZE)
        if self.recv_buffer < self.max_packet_size:
            raise ValueError(f"recv_buffer ({self.recv_buffer}) must hold a max-size packet ({self.max_packet_size})")
        if self.send_buffer < self.max_packet_size:
            raise ValueError(f"send_buffer ({self.send_buffer}) must hold a max-size packet ({self.max_packet_size})")
        if not 0 < self.fill_ratio <= 1:
            raise ValueError(f"fill_ratio must be in (0, 1], got {self.fill_ratio}")
        for name in ("max_delay", "write_timeout", "packets_per_s", "bytes_per_s", "rate_burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        self._check_rate()
        if self.rate_policy not in ("drop", "close"):
            raise ValueError(f"rate_policy must be 'drop' or 'close', got {self.rate_policy!r}")
        if self.max_pending_bytes < self.send_buffer:
            raise ValueError("max_pending_bytes must be at least send_buffer")
        for name in ("idle_timeout", "packet_timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:  # NaN too
                raise ValueError(f"{name} must be > 0 or None, got {value}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")
        for name in ("handler_queue_packets", "handler_queue_bytes"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if self.registry is not None and not isinstance(self.registry, Registry):
            raise TypeError(f"registry must be a fastpacket.Registry or None, not {type(self.registry).__name__}")
        if self.aggregator is not None:
            if not isinstance(self.aggregator, Aggregator):
                raise TypeError(f"aggregator must be a fastpacket.Aggregator or None, "
                                f"not {type(self.aggregator).__name__}")
            capacity = self.aggregator.frame_capacity(self.layout)
            if self.max_packet_size > capacity:
                raise ValueError(
                    f"max_packet_size ({self.max_packet_size}) is more than one aggregate frame carries with "
                    f"this aggregator ({capacity} bytes: the frame-size limit less the packet and aggregate "
                    f"headers, or max_raw_size); a packet echoed or relayed at that size could never be sent. "
                    f"Set max_packet_size to at most {capacity}")
            if self.max_inflate_bytes is not None:
                _check_int("max_inflate_bytes", self.max_inflate_bytes, capacity, MAX_INFLATE_BYTES)
        elif self.max_inflate_bytes is not None:
            raise ValueError("max_inflate_bytes bounds what an aggregator inflates: it needs aggregator=")
        return self

    @property
    def inflate_budget(self) -> Optional[int]:
        """The max_inflate_bytes in force: the one given, or by default
        INFLATE_BUDGET_READS * recv_buffer, at least what one aggregate
        frame of the aggregator carries (a peer packing with it is never
        refused); None without an aggregator."""
        if self.aggregator is None:
            return None
        if self.max_inflate_bytes is not None:
            return self.max_inflate_bytes
        return max(INFLATE_BUDGET_READS * self.recv_buffer, self.aggregator.frame_capacity(self.layout))

    def _check_rate(self) -> None:
        # A token bucket that cannot hold one packet drops every packet, forever.
        if not (self.packets_per_s or self.bytes_per_s):
            return
        if self.rate_burst == 0:
            raise ValueError("rate_burst must be > 0 when packets_per_s or bytes_per_s is set: a bucket of "
                             "0 seconds admits nothing")
        if self.packets_per_s and self.rate_burst * self.packets_per_s < 1:
            raise ValueError(f"rate_burst * packets_per_s must be >= 1 (the bucket must hold one packet), "
                             f"got {self.rate_burst} * {self.packets_per_s}")
        if self.bytes_per_s and self.rate_burst * self.bytes_per_s < self.max_packet_size:
            raise ValueError(f"rate_burst * bytes_per_s must be >= max_packet_size (the bucket must hold one "
                             f"max-size packet), got {self.rate_burst} * {self.bytes_per_s} < "
                             f"{self.max_packet_size}")


#: The Options fields, which every serve/connect function takes as keywords.
OPTION_NAMES: Tuple[str, ...] = tuple(Options.__dataclass_fields__)
_DEFAULTS = Options()


def _options(arguments: Mapping[str, Any]) -> Options:
    """The checked Options among a function's arguments (its ``locals()``
    taken on entry: every Options field is one of its keyword parameters)."""
    return Options(**{name: arguments[name] for name in OPTION_NAMES}).check()


def is_async_handler(fn: object) -> bool:
    """True when calling `fn` returns an awaitable to run as a task: an
    ``async def`` function or method (also behind functools.partial), or an
    object whose ``__call__`` is one."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    if inspect.iscoroutinefunction(fn):
        return True
    if inspect.isfunction(fn) or inspect.ismethod(fn) or inspect.isbuiltin(fn) or isinstance(fn, type):
        return False
    return inspect.iscoroutinefunction(getattr(type(fn), "__call__", None))


def _check_callable(fn: object, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be a function (def or async def), not {type(fn).__name__!r}")


def _check_hook(fn: Optional[SessionHook], what: str) -> None:
    if fn is None:
        return
    _check_callable(fn, what)
    if is_async_handler(fn):
        raise TypeError(f"{what} must be a plain function (it runs inside the connection callback); "
                        f"start a task from it for async work")


def _adapter_metrics(registry: Optional[Registry],
                     handlers: Optional[Mapping[int, Handler]] = None) -> Optional[Dict[str, Any]]:
    """The registry metrics the adapter records into, by role (None without a
    registry). With `handlers` by type, ``packets_by_type_total{type}`` has a
    series per handled type (the first MAX_TYPE_LABELS of them in order) and
    one, ``type="other"``, for every other type: a bounded label set."""
    if registry is None:
        return None
    by_type: Dict[str, Any] = {}
    if handlers:
        family = "packets_by_type_total"
        by_type = {
            "types": {t: registry.counter(family, {"type": str(t)}) for t in sorted(handlers)[:MAX_TYPE_LABELS]},
            "type_other": registry.counter(family, {"type": "other"}),
        }
    return {**by_type,
        "connections": registry.gauge("connections"),
        "connections_total": registry.counter("connections_accepted_total"),
        "packets_in": registry.counter("packets_in_total"),
        "bytes_in": registry.counter("bytes_in_total"),
        "packets_out": registry.counter("packets_out_total"),
        "bytes_out": registry.counter("bytes_out_total"),
        "batch": registry.metric("batch_packets"),
        "flush": registry.metric("flush_bytes"),
        "handler": registry.metric("handler_duration_ns"),
        # every reason's series exists from the start, at 0 (a scrape sees the
        # whole label set, rate() has a first sample); reasons outside the
        # bounded label sets count under "other"
        "closes": {r: registry.counter("closes_total", {"reason": r}) for r in CLOSE_REASONS},
        "drops": {r: registry.counter("drops_total", {"reason": r}) for r in DROP_REASONS},
    }


def _new_hub(handler: Optional[Handler], handlers: Optional[Mapping[int, Handler]], options: Options,
             on_connect: Optional[SessionHook] = None, on_close: Optional[SessionHook] = None,
             bus: Optional[Bus] = None) -> Hub:
    """A Hub for these handlers, each checked and classified (sync or
    async) here: TypeError for anything that is not callable."""
    if handler is not None:
        _check_callable(handler, "handler")
    async_types = []
    if handlers is not None:
        if not isinstance(handlers, Mapping):
            raise TypeError(f"handlers must be a mapping {{type: handler}}, not {type(handlers).__name__!r}")
        for ptype, fn in handlers.items():
            if not isinstance(ptype, int) or isinstance(ptype, bool):
                raise TypeError(f"handlers keys are packet types (int), got {ptype!r}")
            _check_callable(fn, f"handlers[{ptype}]")
            if is_async_handler(fn):
                async_types.append(ptype)
        if handlers and options.layout.roles.get("type") is None:
            raise ValueError(f"handlers by type need a layout with a type field; {options.layout.name} has "
                             f"none: pass one handler")
    _check_hook(on_connect, "on_connect")
    _check_hook(on_close, "on_close")
    return Hub(asyncio.get_running_loop(), options, handler, handlers, on_connect=on_connect, on_close=on_close,
               metrics=_adapter_metrics(options.registry, handlers),
               async_handler=handler is not None and is_async_handler(handler), async_types=async_types,
               bus=bus)


class Session(SessionBase, asyncio.BufferedProtocol):
    """One connection: the protocol asyncio drives and the handle a handler
    gets. ``send``/``send_batch``/``send_array``/``broadcast`` queue packets (coalesced),
    ``close(reason)`` ends it; ``close_reason`` says why it ended; the
    counters ``packets_in``, ``bytes_in``, ``packets_out``, ``bytes_out``,
    ``dropped_in``, ``dropped_out`` are per session (``metrics`` has them as
    a dict). Each connection gets its own Session; set your own attributes
    freely. The hot path is native (fastpacket._native.SessionBase); this
    class adds asyncio.BufferedProtocol so asyncio's checks see a protocol.
    """


class Bus:
    """What ``serve(bus=...)`` takes besides a URL: the link that makes the
    groups of one name on several servers one group.
    fastpacket.cluster.RedisBus is the implementation; this is the contract
    between it and the server's native half.

    The server calls ``channel(name)`` once per group, ``subscribe(group)``
    when a group gets its first member on this server and
    ``unsubscribe(group)`` when its last one leaves, and ``publish(group,
    message, packets)`` at most once per group per loop iteration with
    every packet sent to that group in that iteration (a publish buffer
    filling up publishes early), then ``flush()`` once. A message from another server goes to
    ``server.deliver(group, message)``. ``publish`` must not block or
    raise: a bus that cannot carry a message drops and counts it.
    ``sender_id`` (a u64) is written into every message this server
    publishes, so that it skips its own; ``aggregator`` (or None) packs
    messages.
    """

    sender_id: int = 0
    aggregator: Optional[Aggregator] = None

    def channel(self, name: Union[str, int]) -> bytes:
        """The channel of the group `name`."""
        raise NotImplementedError

    async def start(self, server: "PacketServer") -> None:
        """Connect and start carrying `server`'s groups; raise if the bus
        cannot be reached (serve() then fails)."""
        raise NotImplementedError

    async def close(self) -> None:
        """Publish what is queued (briefly), then disconnect."""
        raise NotImplementedError

    def subscribe(self, group: Group) -> None:
        """Deliver the group's messages from other servers to this server (from now on)."""
        raise NotImplementedError

    def unsubscribe(self, group: Group) -> None:
        """Stop delivering the group's messages to this server."""
        raise NotImplementedError

    def publish(self, group: Group, message: bytes, packets: int) -> None:
        """Carry `message` (`packets` packets sent to `group`) to the other servers."""
        raise NotImplementedError

    def flush(self) -> None:
        """Called after the server published what a loop iteration sent to
        its groups (one ``publish`` per group): a bus that buffers may send
        it all now, in one write. Must not block or raise. The default does
        nothing."""


#: What ``serve(bus=...)`` takes: a Redis URL (a fastpacket.cluster.RedisBus
#: is made from it), a Bus, or None (no bus: groups are this server's only).
BusArg = Union[str, Bus, None]


def _bus_arg(bus: BusArg) -> Optional[Bus]:
    """The Bus `bus` names: a URL (``redis://...``, ``redis+cluster://...``:
    a fastpacket.cluster.RedisBus), a Bus, or None."""
    if bus is None or isinstance(bus, Bus):
        return bus
    if isinstance(bus, str):
        from fastpacket.cluster import RedisBus

        return RedisBus(bus)
    raise TypeError(f"bus must be a URL (redis://host:port/db, redis+cluster://host:port), a "
                    f"fastpacket.aio.Bus or None, not {type(bus).__name__!r}")


async def _start_bus(server: "PacketServer") -> "PacketServer":
    """Starts the server's bus; on failure the server is closed and the error raised."""
    bus = server.bus
    if bus is None:
        return server
    try:
        await bus.start(server)
    except BaseException:
        server.close()
        await server.wait_closed(0)
        raise
    return server


class PacketServer(asyncio.AbstractServer):
    """What ``serve()`` and ``serve_unix()`` return: the loop's listening
    ``asyncio.Server`` plus the sessions. ``close()`` stops listening,
    flushes every session's pending output and closes it with reason
    "server shutdown" (a session whose async handler is running first
    finishes what it received); ``shutdown(timeout)`` does that and aborts
    what is left after `timeout` seconds."""

    def __init__(self, server: asyncio.AbstractServer, hub: Hub) -> None:
        self._server: Any = server  # the loop's asyncio.Server (uvloop's has no common base with sockets)
        self._hub = hub
        self._bus_closed: Optional["asyncio.Task[None]"] = None

    @property
    def options(self) -> Options:
        """The server's checked options (shared by its sessions; do not change them)."""
        options: Options = self._hub.options
        return options

    @property
    def sessions(self) -> Set[Session]:
        """The open sessions."""
        return self._hub.sessions

    @property
    def sockets(self) -> Tuple[socket.socket, ...]:
        """The listening sockets."""
        return tuple(self._server.sockets or ())

    @property
    def closes(self) -> Dict[str, int]:
        """How many sessions ended, by reason."""
        return dict(self._hub.closes)

    @property
    def drops(self) -> Dict[str, int]:
        """Packets (or connections) dropped, by reason."""
        return dict(self._hub.drops)

    def group(self, name: Union[str, int]) -> Group:
        """The group `name` (a str or an int) of this server: made on first
        use, the same object for the same name while it lives. With a bus,
        groups of one name on every server sharing the bus are one group."""
        group: Group = self._hub.group(name)
        return group

    @property
    def bus(self) -> Optional["Bus"]:
        """The bus this server's groups span servers over, or None."""
        bus: Optional[Bus] = self._hub.bus
        return bus

    def broadcast(self, type: Optional[int], payload: Any, sessions: Optional[Iterable[Session]] = None, *,
                  player_id: int = 0) -> int:
        """Send one packet to the given sessions (default: all); returns how
        many got it queued. Coalesced like any send."""
        return _broadcast(self._hub.sessions if sessions is None else sessions, type, payload, player_id, None)

    def scatter(self, type: int, records: Any, sessions: Sequence[Optional[Session]], *, player_ids: Any = None,
                index: Any = None, starts: Any = None, flush: bool = False) -> int:
        """``fastpacket.aio.scatter(sessions, type, records, ...)``: rows of
        one array to many sessions; how many sessions got rows queued."""
        return _scatter(sessions, type, records, player_ids, index, starts, flush)

    def broadcast_array(self, type: int, records: Any, sessions: Optional[Iterable[Session]] = None, *,
                        player_ids: Any = None, flush: bool = False) -> int:
        """``fastpacket.aio.broadcast_array``: every row of `records` to each
        of `sessions` (default: all); how many sessions got them queued."""
        return _broadcast_array(self._hub.sessions if sessions is None else sessions, type, records, player_ids,
                                None, flush)

    def close(self) -> None:
        """Stop listening; flush and close every session ("server shutdown");
        publish what the groups gathered, then close the bus."""
        self._server.close()
        self._hub.shutdown("server shutdown")
        self._close_bus()

    def _close_bus(self) -> None:
        bus = self._hub.bus
        if bus is not None and self._bus_closed is None:
            self._bus_closed = self._hub.loop.create_task(bus.close())

    async def _wait_bus(self, timeout: float) -> None:
        if self._bus_closed is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._bus_closed), max(timeout, ABORT_WAIT_S))
            except asyncio.TimeoutError:
                pass
            except Exception:  # the bus logs its own errors; a close that failed is closed
                pass

    def deliver(self, group: Group, message: bytes) -> int:
        """A bus message from another server for `group`: its packets go to
        the group's members here (see Bus). Returns the packets delivered
        (0 for this server's own messages); ProtocolError for a malformed
        message, of which nothing is delivered."""
        delivered: int = self._hub.deliver(group, message)
        return delivered

    def stop_listening(self) -> None:
        """Stop accepting connections; the sessions go on (close() closes them too)."""
        self._server.close()

    def close_clients(self) -> None:
        """Flush and close every session ("server shutdown"), still listening (asyncio 3.13's name)."""
        self._hub.shutdown("server shutdown")

    def abort_clients(self) -> None:
        """Abort every session now ("server shutdown"): running async
        handlers are cancelled, queued output is dropped."""
        self._hub.abort_all("server shutdown")

    async def wait_closed(self, timeout: float = WAIT_CLOSED_TIMEOUT) -> None:
        """Wait until the listener is closed and the sessions are gone (`timeout` seconds at most)."""
        await self._server.wait_closed()
        await self._wait_sessions(timeout)
        await self._wait_bus(timeout)

    async def _wait_sessions(self, timeout: float) -> bool:
        loop = self._hub.loop
        deadline = loop.time() + timeout
        while self._hub.sessions and loop.time() < deadline:
            await asyncio.sleep(WAIT_CLOSED_POLL)
        return not self._hub.sessions

    async def shutdown(self, timeout: float = WAIT_CLOSED_TIMEOUT) -> bool:
        """Graceful stop: stop listening, flush and close every session
        ("server shutdown"; running async handlers first finish what their
        session received), wait at most `timeout` seconds, then abort the
        sessions left. True when every session closed in time."""
        if timeout < 0:
            raise ValueError(f"timeout must be >= 0, got {timeout}")
        self.close()
        clean = await self._wait_sessions(timeout)
        if not clean:
            self.abort_clients()
            await self._wait_sessions(ABORT_WAIT_S)
        try:  # bounded: since Python 3.12 it also waits for the connections, which abort ended
            await asyncio.wait_for(self._server.wait_closed(), ABORT_WAIT_S)
        except asyncio.TimeoutError:
            pass
        await self._wait_bus(ABORT_WAIT_S)
        return clean

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        loop: asyncio.AbstractEventLoop = self._server.get_loop()
        return loop

    def is_serving(self) -> bool:
        """True while the server accepts connections."""
        return bool(self._server.is_serving())

    async def start_serving(self) -> None:
        """Start accepting connections (serve() does unless start_serving=False)."""
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed."""
        await self._server.serve_forever()

    @property
    def port(self) -> int:
        """The TCP port of the first listening socket (AttributeError for a Unix socket server)."""
        name = self.sockets[0].getsockname()
        if not isinstance(name, tuple):
            raise AttributeError(f"a Unix socket server has no port; its path is {name!r}")
        port: int = name[1]
        return port

    @property
    def path(self) -> Optional[str]:
        """The path of a Unix socket server (None for TCP)."""
        name = self.sockets[0].getsockname()
        return name if isinstance(name, str) else None


async def serve(
    handler: Optional[Handler] = None, host: Optional[str] = None, port: Optional[int] = None, *,
    handlers: Optional[Mapping[int, Handler]] = None,
    on_connect: Optional[SessionHook] = None, on_close: Optional[SessionHook] = None,
    ssl: Optional[_ssl.SSLContext] = None, sock: Optional[socket.socket] = None,
    reuse_port: bool = False, backlog: int = 1024, ssl_handshake_timeout: Optional[float] = None,
    start_serving: bool = True,
    layout: HeaderLayout = _DEFAULTS.layout, max_packet_size: int = _DEFAULTS.max_packet_size,
    recv_buffer: int = _DEFAULTS.recv_buffer, send_buffer: int = _DEFAULTS.send_buffer,
    fill_ratio: float = _DEFAULTS.fill_ratio, max_delay: float = _DEFAULTS.max_delay,
    max_pending_bytes: int = _DEFAULTS.max_pending_bytes, write_timeout: float = _DEFAULTS.write_timeout,
    packets_per_s: float = _DEFAULTS.packets_per_s, bytes_per_s: float = _DEFAULTS.bytes_per_s,
    rate_burst: float = _DEFAULTS.rate_burst, rate_policy: Literal["drop", "close"] = "drop",
    idle_timeout: Optional[float] = _DEFAULTS.idle_timeout, max_connections: Optional[int] = _DEFAULTS.max_connections,
    packet_timeout: Optional[float] = _DEFAULTS.packet_timeout,
    handler_queue_packets: int = _DEFAULTS.handler_queue_packets,
    handler_queue_bytes: int = _DEFAULTS.handler_queue_bytes,
    aggregator: Optional[Aggregator] = None, max_inflate_bytes: Optional[int] = _DEFAULTS.max_inflate_bytes,
    registry: Optional[Registry] = None,
    bus: BusArg = None,
) -> PacketServer:
    """Start a packet server on TCP (host, port) and return it (serving,
    unless ``start_serving=False``).

    ``handler(session, batch)`` is called once per read burst with every
    packet that burst completed: a plain function synchronously (the fast
    path), an ``async def`` one as a task, one session's bursts in order
    (see the module docstring); ``handlers={type: fn}`` calls ``fn(session,
    group)`` per packet type instead (``handler`` then takes the types not
    listed). ``on_connect(session)`` / ``on_close(session)`` (plain
    functions) are called as accepted connections come and go (never for
    one refused by ``max_connections``).

    ``host`` defaults to 127.0.0.1 (pass "0.0.0.0" or "::" for every
    interface) and ``port`` to 0 (a free one: ``server.port``). ``ssl``: an
    ``ssl.SSLContext`` for TLS; ``sock``: an already bound socket to serve
    on instead of host and port; ``reuse_port``, ``backlog``,
    ``ssl_handshake_timeout`` and ``start_serving`` as in
    ``loop.create_server``. ``bus``: a URL (``"redis://host:port/db"``,
    ``"redis+cluster://host:port"``) or a fastpacket.cluster.RedisBus: the
    server's groups then span every server sharing it (fastpacket.cluster);
    a bus that cannot be reached fails serve() at once (BusUnavailable).
    The remaining keywords are the fields of ``Options`` (limits, buffers,
    aggregator, registry).
    """
    options = _options(locals())
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
    else:
        host = DEFAULT_HOST if host is None else host
        port = 0 if port is None else port
    if handler is None and not handlers:
        raise TypeError("serve() needs a handler or handlers")
    hub = _new_hub(handler, handlers, options, on_connect, on_close, _bus_arg(bus))
    loop: Any = hub.loop  # typeshed's overloads split (host, port) from sock; the checks above keep them apart
    server = await loop.create_server(lambda: Session(hub), host, port, ssl=ssl, sock=sock, backlog=backlog,
                                      reuse_port=reuse_port or None, ssl_handshake_timeout=ssl_handshake_timeout,
                                      start_serving=start_serving)
    return await _start_bus(PacketServer(server, hub))


def scatter(sessions: Sequence[Optional[Session]], type: int, records: Any, *, player_ids: Any = None,
            index: Any = None, starts: Any = None, flush: bool = False) -> int:
    """Rows of one numpy array to many sessions, in one native pass.

    Without `index`: row i of `records` (one row per session) is one packet
    to ``sessions[i]`` (each player its own state). With `index` and
    `starts` (compressed sparse rows, as numpy and scipy spell neighbour
    lists): ``sessions[k]`` gets the rows ``index[starts[k]:starts[k+1]]``,
    in that order (each player the states of the players near it).
    `player_ids`: None (0), one integer, or one per row of `records` (each
    packet carries its row's id). ``None`` entries of `sessions` are
    skipped. Packets are queued as ``Session.send_array`` queues them (seq
    per session, dropped and counted for a closed session); ``flush=True``
    writes each session's output now instead of at the usual flush point
    (a tick timer's sends otherwise wait ``max_delay``). Bad arguments
    (shapes, a value that does not fit its header field) raise before
    anything is queued. Returns how many sessions got rows queued.
    """
    return _scatter(sessions, type, records, player_ids, index, starts, flush)


def broadcast_array(sessions: Iterable[Optional[Session]], type: int, records: Any, *, player_ids: Any = None,
                    flush: bool = False) -> int:
    """Every row of `records` (a numpy array) as one packet to each of
    `sessions`, in one native pass; otherwise as ``scatter``. Returns how
    many sessions got them queued."""
    return _broadcast_array(sessions, type, records, player_ids, None, flush)


async def serve_unix(
    handler: Optional[Handler] = None, path: Optional[str] = None, *,
    handlers: Optional[Mapping[int, Handler]] = None,
    on_connect: Optional[SessionHook] = None, on_close: Optional[SessionHook] = None,
    ssl: Optional[_ssl.SSLContext] = None, sock: Optional[socket.socket] = None,
    backlog: int = 1024, ssl_handshake_timeout: Optional[float] = None, start_serving: bool = True,
    layout: HeaderLayout = _DEFAULTS.layout, max_packet_size: int = _DEFAULTS.max_packet_size,
    recv_buffer: int = _DEFAULTS.recv_buffer, send_buffer: int = _DEFAULTS.send_buffer,
    fill_ratio: float = _DEFAULTS.fill_ratio, max_delay: float = _DEFAULTS.max_delay,
    max_pending_bytes: int = _DEFAULTS.max_pending_bytes, write_timeout: float = _DEFAULTS.write_timeout,
    packets_per_s: float = _DEFAULTS.packets_per_s, bytes_per_s: float = _DEFAULTS.bytes_per_s,
    rate_burst: float = _DEFAULTS.rate_burst, rate_policy: Literal["drop", "close"] = "drop",
    idle_timeout: Optional[float] = _DEFAULTS.idle_timeout, max_connections: Optional[int] = _DEFAULTS.max_connections,
    packet_timeout: Optional[float] = _DEFAULTS.packet_timeout,
    handler_queue_packets: int = _DEFAULTS.handler_queue_packets,
    handler_queue_bytes: int = _DEFAULTS.handler_queue_bytes,
    aggregator: Optional[Aggregator] = None, max_inflate_bytes: Optional[int] = _DEFAULTS.max_inflate_bytes,
    registry: Optional[Registry] = None,
    bus: BusArg = None,
) -> PacketServer:
    """Start a packet server on the Unix socket `path` (or `sock`, a bound
    AF_UNIX socket) and return it: ``serve()`` for local clients (no TCP
    stack, file permissions as access control). As asyncio's
    ``start_unix_server``, an existing socket file at `path` is replaced
    (fastpacket.run first checks that no server answers there). ``ssl`` and
    the other keywords as for ``serve()``."""
    options = _options(locals())
    if (path is None) == (sock is None):
        raise ValueError("serve_unix() needs a path or a sock (one of them)")
    if handler is None and not handlers:
        raise TypeError("serve_unix() needs a handler or handlers")
    hub = _new_hub(handler, handlers, options, on_connect, on_close, _bus_arg(bus))
    server = await hub.loop.create_unix_server(lambda: Session(hub), path, sock=sock, ssl=ssl, backlog=backlog,
                                               ssl_handshake_timeout=ssl_handshake_timeout,
                                               start_serving=start_serving)
    return await _start_bus(PacketServer(server, hub))


def _client_session(handler: Optional[Handler], handlers: Optional[Mapping[int, Handler]],
                    options: Options) -> Session:
    return Session(_new_hub(handler, handlers, options))


async def connect(
    host: Optional[str], port: Optional[int], handler: Optional[Handler] = None, *,
    handlers: Optional[Mapping[int, Handler]] = None,
    ssl: SSLArg = None, server_hostname: Optional[str] = None, sock: Optional[socket.socket] = None,
    local_addr: Optional[Tuple[str, int]] = None, ssl_handshake_timeout: Optional[float] = None,
    layout: HeaderLayout = _DEFAULTS.layout, max_packet_size: int = _DEFAULTS.max_packet_size,
    recv_buffer: int = _DEFAULTS.recv_buffer, send_buffer: int = _DEFAULTS.send_buffer,
    fill_ratio: float = _DEFAULTS.fill_ratio, max_delay: float = 0.0,
    max_pending_bytes: int = _DEFAULTS.max_pending_bytes, write_timeout: float = _DEFAULTS.write_timeout,
    packets_per_s: float = _DEFAULTS.packets_per_s, bytes_per_s: float = _DEFAULTS.bytes_per_s,
    rate_burst: float = _DEFAULTS.rate_burst, rate_policy: Literal["drop", "close"] = "drop",
    idle_timeout: Optional[float] = _DEFAULTS.idle_timeout, max_connections: Optional[int] = _DEFAULTS.max_connections,
    packet_timeout: Optional[float] = _DEFAULTS.packet_timeout,
    handler_queue_packets: int = _DEFAULTS.handler_queue_packets,
    handler_queue_bytes: int = _DEFAULTS.handler_queue_bytes,
    aggregator: Optional[Aggregator] = None, max_inflate_bytes: Optional[int] = _DEFAULTS.max_inflate_bytes,
    registry: Optional[Registry] = None,
) -> Session:
    """Open a client connection to TCP (host, port) and return its Session.
    Without a handler, received batches queue up for ``await
    session.recv()``. ``ssl``: an ``ssl.SSLContext`` (or True for the
    default one) for TLS, ``server_hostname`` the name to check the
    server's certificate against (default: host); ``sock``, ``local_addr``
    and ``ssl_handshake_timeout`` as in ``loop.create_connection`` (with
    ``sock``, pass None for host and port). A client's ``max_delay``
    defaults to 0: what it sends outside a read burst goes out at the end
    of the loop iteration (requests are not held back). The remaining
    keywords are the fields of ``Options``."""
    session = _client_session(handler, handlers, _options(locals()))
    loop: Any = asyncio.get_running_loop()  # typeshed's overloads split (host, port) from sock
    await loop.create_connection(lambda: session, host, port, ssl=ssl, server_hostname=server_hostname, sock=sock,
                                 local_addr=local_addr, ssl_handshake_timeout=ssl_handshake_timeout)
    return session


async def connect_unix(
    path: Optional[str] = None, handler: Optional[Handler] = None, *,
    handlers: Optional[Mapping[int, Handler]] = None,
    ssl: SSLArg = None, server_hostname: Optional[str] = None, sock: Optional[socket.socket] = None,
    ssl_handshake_timeout: Optional[float] = None,
    layout: HeaderLayout = _DEFAULTS.layout, max_packet_size: int = _DEFAULTS.max_packet_size,
    recv_buffer: int = _DEFAULTS.recv_buffer, send_buffer: int = _DEFAULTS.send_buffer,
    fill_ratio: float = _DEFAULTS.fill_ratio, max_delay: float = 0.0,
    max_pending_bytes: int = _DEFAULTS.max_pending_bytes, write_timeout: float = _DEFAULTS.write_timeout,
    packets_per_s: float = _DEFAULTS.packets_per_s, bytes_per_s: float = _DEFAULTS.bytes_per_s,
    rate_burst: float = _DEFAULTS.rate_burst, rate_policy: Literal["drop", "close"] = "drop",
    idle_timeout: Optional[float] = _DEFAULTS.idle_timeout, max_connections: Optional[int] = _DEFAULTS.max_connections,
    packet_timeout: Optional[float] = _DEFAULTS.packet_timeout,
    handler_queue_packets: int = _DEFAULTS.handler_queue_packets,
    handler_queue_bytes: int = _DEFAULTS.handler_queue_bytes,
    aggregator: Optional[Aggregator] = None, max_inflate_bytes: Optional[int] = _DEFAULTS.max_inflate_bytes,
    registry: Optional[Registry] = None,
) -> Session:
    """Open a client connection to the Unix socket `path` (or over `sock`)
    and return its Session; ``ssl`` (TLS over the Unix socket needs a
    ``server_hostname``) and the other keywords as for ``connect()``."""
    session = _client_session(handler, handlers, _options(locals()))
    loop = asyncio.get_running_loop()
    await loop.create_unix_connection(lambda: session, path, ssl=ssl, server_hostname=server_hostname, sock=sock,
                                      ssl_handshake_timeout=ssl_handshake_timeout)
    return session


async def serve_ws(handler: Optional[Handler] = None, host: Optional[str] = None, port: Optional[int] = None,
                   **kwargs: Any) -> PacketServer:
    """``fastpacket.ws.serve_ws``: the same server on WebSocket (needs the
    ``fastpacket[ws]`` extra); see that module for its keywords."""
    from fastpacket.ws import serve_ws as _serve_ws

    return await _serve_ws(handler, host, port, **kwargs)


async def connect_ws(url: str, handler: Optional[Handler] = None, **kwargs: Any) -> Session:
    """``fastpacket.ws.connect_ws``: a client Session over WebSocket (needs
    the ``fastpacket[ws]`` extra)."""
    from fastpacket.ws import connect_ws as _connect_ws

    return await _connect_ws(url, handler, **kwargs)
