"""asyncio adapter: ``serve()``, ``connect()``, ``Session``.

A server in a few lines::

    import asyncio, fastpacket as fp

    def echo(session, batch):          # called once per read burst
        session.send_batch(batch)      # byte-for-byte relay, one copy

    async def main():
        server = await fp.aio.serve(echo, "127.0.0.1", 7777)
        async with server:
            await server.serve_forever()

    asyncio.run(main())

Receive path: the protocol is an ``asyncio.BufferedProtocol`` whose
``get_buffer`` lends the connection a RingBuffer from a pool (idle
connections hold none) and whose ``buffer_updated`` (Cython) commits the
bytes, decodes every complete packet with ``FrameDecoder.feed_from`` and
calls ``handler(session, batch)`` once per read burst (or the per-type
``handlers``). The only copy is the one into the batch.

Send path: ``session.send``/``send_batch``/``send_array``/``broadcast`` append to the
session's SendBuffer and are written with one ``transport.write`` per
session, never one per packet: the reading session's own output at the end
of its read burst (no added latency), output a burst produced for other
sessions (broadcasts, relays) once at the end of the loop iteration
(coalescing every burst of that iteration), any buffer as soon as it passes
its fill threshold, and sends made outside a read burst ``max_delay`` later
(servers: 10 ms, short enough for a 60 Hz tick, long enough to coalesce the
sends of a timer callback; clients from ``connect()``: 0, the end of the
loop iteration).

Limits (each ends in ``session.close_reason`` and a metric):

============================  =====================  ==========================================
option                        default                what happens
============================  =====================  ==========================================
``max_packet_size``           65535                  a larger header: closed before its payload
                                                     arrives ("protocol error: ...")
``packets_per_s``,            0 (unlimited)          token bucket (``rate_burst`` seconds of
``bytes_per_s``                                      capacity): ``rate_policy`` "drop" drops the
                                                     excess packets, "close" closes
                                                     ("rate limit exceeded"). The bucket must
                                                     hold one packet: ``rate_burst *
                                                     packets_per_s >= 1`` and ``rate_burst *
                                                     bytes_per_s >= max_packet_size``
``idle_timeout``              None                   no packet for that long: "idle timeout"
``max_connections``           None                   further connections: "too many connections"
``max_pending_bytes``         1 MiB                  output queued for a peer (send buffer +
                                                     transport) past this: "slow consumer"
``write_timeout``             10 s                   output paused (peer not reading) that long:
                                                     "slow consumer"
============================  =====================  ==========================================

With an ``aggregator``, ``max_packet_size`` must be at most
``aggregator.frame_capacity()`` (65515 for GAME): a larger packet, echoed or
relayed, could not be sent. ``Options.check()`` refuses these impossible
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
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Set

from fastpacket._native import Hub, SessionBase, _broadcast, _broadcast_array, _scatter
from fastpacket.aggregate import Aggregator
from fastpacket.framing import DEFAULT_MAX_PACKET_SIZE, PacketBatch
from fastpacket.layout import GAME, HeaderLayout
from fastpacket.metrics import CLOSE_REASONS, DROP_REASONS
from fastpacket.sendbuf import DEFAULT_FILL_RATIO, DEFAULT_MAX_BYTES

__all__ = ["serve", "connect", "Session", "PacketServer", "Options", "Handler", "scatter", "broadcast_array"]

#: A handler: called as handler(session, batch) once per read burst.
Handler = Callable[["Session", PacketBatch], Any]

#: PacketServer.wait_closed() waits at most this long, in seconds, for the
#: sessions to finish closing.
WAIT_CLOSED_TIMEOUT = 5.0
#: ... polling this often, in seconds.
WAIT_CLOSED_POLL = 0.005


@dataclass
class Options:
    """Per-connection settings shared by a server's sessions (see the
    module docstring for what each limit does)."""

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
    idle_timeout: Optional[float] = None
    max_connections: Optional[int] = None
    aggregator: Any = None            # fastpacket.Aggregator: pack outgoing, unwrap incoming
    registry: Any = None              # fastpacket.metrics.Registry

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
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {self.idle_timeout}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")
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
        return self

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


def _adapter_metrics(registry: Any) -> Optional[Dict[str, Any]]:
    """The registry metrics the adapter records into, by role (None without a registry)."""
    if registry is None:
        return None
    return {
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


def _new_hub(handler: Optional[Handler], handlers: Optional[Dict[int, Handler]], options: Dict[str, Any],
             on_connect: Optional[Callable[["Session"], Any]] = None,
             on_close: Optional[Callable[["Session"], Any]] = None) -> Hub:
    checked = Options.from_kwargs(options)
    return Hub(asyncio.get_running_loop(), checked, handler, handlers, on_connect=on_connect, on_close=on_close,
               metrics=_adapter_metrics(checked.registry))


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


class PacketServer(asyncio.AbstractServer):
    """What ``serve()`` returns: the loop's listening ``asyncio.Server``
    plus the sessions. ``close()`` stops listening, flushes every session's
    pending output and closes it with reason "server shutdown"."""

    def __init__(self, server: Any, hub: Hub) -> None:  # the loop's asyncio.Server
        self._server = server
        self._hub = hub

    @property
    def options(self) -> Options:
        """The server's checked options (shared by its sessions; do not change them)."""
        return self._hub.options

    @property
    def sessions(self) -> Set[Session]:
        """The open sessions."""
        return self._hub.sessions

    @property
    def sockets(self) -> Any:
        """The listening sockets."""
        return self._server.sockets

    @property
    def closes(self) -> Dict[str, int]:
        """How many sessions ended, by reason."""
        return dict(self._hub.closes)

    @property
    def drops(self) -> Dict[str, int]:
        """Packets (or connections) dropped, by reason."""
        return dict(self._hub.drops)

    def broadcast(self, type: int, payload: Any, sessions: Optional[Iterable[Session]] = None, *,
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
        """Stop listening; flush and close every session ("server shutdown")."""
        self._server.close()
        self._hub.shutdown("server shutdown")

    async def wait_closed(self) -> None:
        """Wait until the listener is closed and the sessions are gone (5 s at most)."""
        await self._server.wait_closed()
        loop = self._hub.loop
        deadline = loop.time() + WAIT_CLOSED_TIMEOUT
        while self._hub.sessions and loop.time() < deadline:
            await asyncio.sleep(WAIT_CLOSED_POLL)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The event loop the server runs on."""
        return self._server.get_loop()

    def is_serving(self) -> bool:
        """True while the server accepts connections."""
        return self._server.is_serving()

    async def start_serving(self) -> None:
        """Start accepting connections (serve() already did)."""
        await self._server.start_serving()

    async def serve_forever(self) -> None:
        """Serve until cancelled or closed."""
        await self._server.serve_forever()

    @property
    def port(self) -> int:
        """The TCP port of the first listening socket."""
        return self._server.sockets[0].getsockname()[1]


async def serve(handler: Optional[Handler] = None, host: str = "127.0.0.1", port: int = 0, *,
                handlers: Optional[Dict[int, Handler]] = None,
                on_connect: Optional[Callable[[Session], Any]] = None,
                on_close: Optional[Callable[[Session], Any]] = None,
                reuse_port: bool = False, backlog: int = 1024, **options: Any) -> PacketServer:
    """Start a packet server on (host, port) and return it (already serving).

    ``handler(session, batch)`` is called synchronously once per read burst
    with every packet that burst completed; ``handlers={type: fn}`` calls
    ``fn(session, group)`` per packet type instead (``handler`` then takes
    the types not listed). ``on_connect(session)`` / ``on_close(session)``
    are called as accepted connections come and go (never for one refused
    by ``max_connections``). ``options`` are the fields of ``Options``
    (limits, buffers, aggregator, registry).
    """
    if handler is None and not handlers:
        raise TypeError("serve() needs a handler or handlers")
    hub = _new_hub(handler, handlers, options, on_connect, on_close)
    server = await hub.loop.create_server(lambda: Session(hub), host, port, backlog=backlog,
                                          reuse_port=reuse_port or None)
    return PacketServer(server, hub)


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


async def connect(host: str, port: int, handler: Optional[Handler] = None, **options: Any) -> Session:
    """Open a client connection and return its Session. Without a handler,
    received batches queue up for ``await session.recv()``. A client's
    ``max_delay`` defaults to 0: what it sends outside a read burst goes out
    at the end of the loop iteration (requests are not held back)."""
    options.setdefault("max_delay", 0.0)
    handlers = options.pop("handlers", None)
    hub = _new_hub(handler, handlers, options)
    session = Session(hub)
    await hub.loop.create_connection(lambda: session, host, port)
    return session
