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

Send path: ``session.send``/``send_batch``/``broadcast`` append to the
session's SendBuffer and are written with one ``transport.write`` per
session, never one per packet: the reading session's own output at the end
of its read burst (no added latency), output a burst produced for other
sessions (broadcasts, relays) once at the end of the loop iteration
(coalescing every burst of that iteration), any buffer as soon as it passes
its fill threshold, and sends made outside a read burst ``max_delay`` later
(servers: 10 ms, the seed's timer; clients from ``connect()``: 0, the end of
the loop iteration).

Limits (each ends in ``session.close_reason`` and a metric):

============================  =====================  ==========================================
option                        default                what happens
============================  =====================  ==========================================
``max_packet_size``           65535                  a larger header: closed before its payload
                                                     arrives ("protocol error: ...")
``packets_per_s``,            0 (unlimited)          token bucket (``rate_burst`` seconds of
``bytes_per_s``                                      capacity): ``rate_policy`` "drop" drops the
                                                     excess packets, "close" closes
                                                     ("rate limit exceeded")
``idle_timeout``              None                   no packet for that long: "idle timeout"
``max_connections``           None                   further connections: "too many connections"
``max_pending_bytes``         1 MiB                  output queued for a peer (send buffer +
                                                     transport) past this: "slow consumer"
``write_timeout``             10 s                   output paused (peer not reading) that long:
                                                     "slow consumer"
============================  =====================  ==========================================

While a peer's output is paused the server also stops reading from it. A
handler exception is logged, closes that session ("handler error: ...") and
the server keeps serving. Works on asyncio's default loop and on uvloop.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Set, Type, cast

from fastpacket._native import HubCore, ProtocolCore
from fastpacket.framing import FrameDecoder, PacketBatch
from fastpacket.layout import GAME, HeaderLayout
from fastpacket.metrics import CLOSE_REASONS, DROP_REASONS, reason_label
from fastpacket.sendbuf import SendBuffer

__all__ = ["serve", "connect", "Session", "PacketServer", "Options", "Handler"]

log = logging.getLogger("fastpacket.aio")

#: A handler: called as handler(session, batch) once per read burst.
Handler = Callable[["Session", PacketBatch], Any]

#: Sessions kept for reuse, and receive rings kept for lending, per server.
POOL_SIZE = 1024


@dataclass
class Options:
    """Per-connection settings shared by a server's sessions (see the
    module docstring for what each limit does)."""

    layout: HeaderLayout = GAME
    max_packet_size: int = 65535
    recv_buffer: int = 65536          # RingBuffer capacity (>= max_packet_size)
    send_buffer: int = 65536          # SendBuffer max_bytes
    fill_ratio: float = 0.8           # flush a send buffer this full at once
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
        """Validates the settings (ValueError/TypeError naming the bad one); returns self."""
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
        if self.rate_policy not in ("drop", "close"):
            raise ValueError(f"rate_policy must be 'drop' or 'close', got {self.rate_policy!r}")
        if self.max_pending_bytes < self.send_buffer:
            raise ValueError("max_pending_bytes must be at least send_buffer")
        if self.idle_timeout is not None and self.idle_timeout <= 0:
            raise ValueError(f"idle_timeout must be > 0 or None, got {self.idle_timeout}")
        if self.max_connections is not None and self.max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 or None, got {self.max_connections}")
        return self


class _Hub(HubCore):
    """State shared by the sessions of one server (or one client session):
    options, pools, the dirty list for end-of-burst flushes, metrics. The
    hot-path half is native (HubCore)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, options: Options, handler: Optional[Handler],
                 handlers: Optional[Dict[int, Handler]]) -> None:
        self.loop = loop
        self.options = options
        self.handler = handler
        self.handlers = dict(handlers) if handlers else None
        self.fill_ratio = options.fill_ratio
        self.in_burst = False
        self.dirty = []
        self.rings = []
        self.ring_capacity = options.recv_buffer
        self.pool_size = POOL_SIZE
        self.aggregator = options.aggregator
        self.flush_handle = None
        self.flush_soon = False
        self.max_pending_bytes = options.max_pending_bytes
        self.sessions: Set[Session] = set()
        self._session_pool: List[Session] = []
        self._idle_handle: Optional[asyncio.TimerHandle] = None
        self.on_close: Optional[Callable[[Session], Any]] = None
        self.closes: Dict[str, int] = {}
        self.drops: Dict[str, int] = {}
        self.accepted = 0
        reg = options.registry
        self.metrics = None
        if reg is not None:
            self.metrics = {
                "connections": reg.gauge("connections"),
                "connections_total": reg.counter("connections_accepted_total"),
                "packets_in": reg.counter("packets_in_total"),
                "bytes_in": reg.counter("bytes_in_total"),
                "packets_out": reg.counter("packets_out_total"),
                "bytes_out": reg.counter("bytes_out_total"),
                "batch": reg.metric("batch_packets"),
                "flush": reg.metric("flush_bytes"),
                "handler": reg.metric("handler_duration_ns"),
            }
            # every reason's series exists from the start, at 0: a scrape
            # sees the whole label set, and rate() has a first sample
            for reason in CLOSE_REASONS:
                reg.counter("closes_total", {"reason": reason})
            for reason in DROP_REASONS:
                reg.counter("drops_total", {"reason": reason})
        if options.idle_timeout:
            self._arm_idle_sweep()

    def new_session(self, cls: Type["Session"]) -> "Session":
        # reuse a closed session only when nothing else still refers to it
        while self._session_pool:
            s = self._session_pool.pop()
            if sys.getrefcount(s) <= 2:
                return s
        return cls.__new__(cls)

    def recycle(self, session: "Session") -> None:
        if len(self._session_pool) < POOL_SIZE and type(session) is Session:
            self._session_pool.append(session)

    # -- policies and accounting ---------------------------------------------------------

    def slow_consumer(self, session: "Session") -> None:
        """The policy for a peer that does not keep up: cut it off, dropping its queued output."""
        self.count_drop("slow consumer", 1)
        session.abort("slow consumer")

    def count_drop(self, reason: str, n: int) -> None:
        self.drops[reason] = self.drops.get(reason, 0) + n
        if self.options.registry is not None:
            self.options.registry.counter("drops_total", {"reason": reason_label(reason, DROP_REASONS)}).inc(n)

    def opened(self, session: "Session") -> bool:
        """Registers a new connection; False when it must be refused."""
        limit = self.options.max_connections
        self.accepted += 1
        if limit is not None and len(self.sessions) >= limit:
            return False
        self.sessions.add(session)
        if self.metrics is not None:
            # inc/dec, not set(len): the workers of one server share the gauge
            self.metrics["connections"].inc()
            self.metrics["connections_total"].inc()
        return True

    def closed(self, session: "Session", reason: str) -> None:
        was_open = session in self.sessions
        self.sessions.discard(session)
        self.closes[reason] = self.closes.get(reason, 0) + 1
        m = self.metrics
        if m is not None:
            if was_open:
                m["connections"].dec()
            self.options.registry.counter("closes_total", {"reason": reason_label(reason)}).inc()

    def _arm_idle_sweep(self) -> None:
        period = min(max(self.options.idle_timeout / 4, 0.01), 1.0)
        self._idle_handle = self.loop.call_later(period, self._idle_sweep)

    def _idle_sweep(self) -> None:
        deadline = time.monotonic() - self.options.idle_timeout
        for s in list(self.sessions):
            if s._last_activity < deadline:
                s.close("idle timeout")
        self._arm_idle_sweep()

    def shutdown(self, reason: str) -> None:
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self.flush_dirty()
        for s in list(self.sessions):
            s.close(reason)


class Session(ProtocolCore, asyncio.BufferedProtocol):
    """One connection: the protocol asyncio drives and the handle a handler
    gets. ``send``/``send_batch``/``broadcast`` queue packets (coalesced),
    ``close(reason)`` ends it; ``close_reason`` says why it ended; the
    counters ``packets_in``, ``bytes_in``, ``packets_out``, ``bytes_out``,
    ``dropped_in``, ``dropped_out`` are per session (``metrics`` has them as
    a dict). Sessions of a server are pooled: do not keep one after it
    closed. Set your own attributes freely (cleared when it is reused).
    """

    def _setup(self, hub: _Hub) -> "Session":
        o = hub.options
        decoder = FrameDecoder(o.layout, o.max_packet_size, aggregator=o.aggregator) if o.aggregator is not None \
            else FrameDecoder(o.layout, o.max_packet_size)
        self.__dict__.clear()
        self._configure_core(hub, hub.handler, hub.handlers, decoder, SendBuffer(o.send_buffer, o.layout),
                             o.packets_per_s, o.bytes_per_s, o.rate_burst, o.rate_policy)
        self.transport = None
        self._inbox = None
        self._write_timer = None
        self._closed_future = hub.loop.create_future()
        return self

    # asyncio callbacks that are not on the hot path -----------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        """asyncio callback: a new connection (TCP_NODELAY, write limits, max_connections)."""
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # we coalesce ourselves
            except OSError:
                pass
        o = self._hub.options
        cast(asyncio.Transport, transport).set_write_buffer_limits(high=max(o.send_buffer, min(o.max_pending_bytes // 2, 256 << 10)))
        if not self._hub.opened(self):
            self._close_reason = "too many connections"
            self._closing = True
            self._hub.count_drop("too many connections", 1)
            transport.close()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        """asyncio callback: the connection is gone; records the close reason, frees the ring."""
        if self._close_reason is None:
            self._close_reason = f"connection lost: {exc}" if exc else "peer closed"
        self._closing = True
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        hub = self._hub
        if self._ring is not None:
            self._ring = None  # not pooled: asyncio may still hold a view of it
        if self in hub.sessions:
            hub.closed(self, self._close_reason)
        else:
            hub.closes[self._close_reason] = hub.closes.get(self._close_reason, 0) + 1
        if self._inbox is not None:
            self._inbox.put_nowait(None)
        if not self._closed_future.done():
            self._closed_future.set_result(self._close_reason)
        self.transport = None
        cb = getattr(hub, "on_close", None)
        if cb is not None:
            cb(self)
        hub.recycle(self)

    def eof_received(self) -> bool:
        """asyncio callback: the peer closed its side; the session closes ("peer closed")."""
        self._close_reason = self._close_reason or "peer closed"
        return False  # close the transport

    def pause_writing(self) -> None:
        """asyncio callback: the peer is not reading; stop reading from it and start write_timeout."""
        self._writing_paused = True
        if self.transport is not None:
            self.transport.pause_reading()  # no new work from a peer we cannot answer
        o = self._hub.options
        self._write_timer = self._hub.loop.call_later(o.write_timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        """asyncio callback: the peer reads again; resume reading and flush what was held."""
        self._writing_paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        if self.transport is not None and not self._closing:
            self.transport.resume_reading()
            self.flush()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if self._writing_paused:
            self._hub.slow_consumer(self)

    # public API ----------------------------------------------------------------------

    def broadcast(self, type: int, payload: Any, sessions: Optional[Iterable["Session"]] = None, *,
                  player_id: int = 0, include_self: bool = False) -> int:
        """Send one packet to many sessions (default: every session of this
        server but this one); returns how many got it queued."""
        return _broadcast(self._hub.sessions if sessions is None else sessions, type, payload, player_id,
                          None if include_self else self)

    @property
    def close_reason(self) -> Optional[str]:
        """Why the session ended (None while it is open)."""
        return self._close_reason if self._closing or self.transport is None else None

    @property
    def closed(self) -> bool:
        """True once close() was called or the connection was lost."""
        return bool(self._closing)

    @property
    def peername(self) -> Any:
        """The peer's address, or None once closed."""
        return self.transport.get_extra_info("peername") if self.transport is not None else None

    @property
    def metrics(self) -> Dict[str, int]:
        """This session's counters."""
        return {
            "packets_in": self.packets_in, "bytes_in": self.bytes_in, "batches_in": self.batches_in,
            "packets_out": self.packets_out, "bytes_out": self.bytes_out, "flushes": self.flushes,
            "dropped_in": self.dropped_in, "dropped_out": self.dropped_out,
        }

    async def recv(self, timeout: Optional[float] = None) -> Optional[PacketBatch]:
        """Next received batch, for a client connected without a handler;
        None once the connection is closed."""
        if self._inbox is None:
            raise RuntimeError("recv() is for sessions connected without a handler")
        return await asyncio.wait_for(self._inbox.get(), timeout)

    async def wait_closed(self) -> Optional[str]:
        """Wait until the connection is closed; returns the close reason."""
        return await self._closed_future

    def __repr__(self) -> str:
        state = f"closed: {self._close_reason}" if self._closing else "open"
        return f"<Session {self.peername} {state} in={self.packets_in} out={self.packets_out}>"


def _broadcast(targets: Iterable[Session], type: int, payload: Any, player_id: int,
               skip: Optional[Session]) -> int:
    """Sends one packet to every target but `skip`; how many got it queued."""
    n = 0
    for s in targets:
        if s is not skip and s.send(type, payload, player_id=player_id) is not None:
            n += 1
    return n


class PacketServer(asyncio.AbstractServer):
    """What ``serve()`` returns: the loop's listening ``asyncio.Server``
    plus the sessions. ``close()`` stops listening, flushes every session's
    pending output and closes it with reason "server shutdown"."""

    def __init__(self, server: Any, hub: _Hub) -> None:  # the loop's asyncio.Server
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

    def close(self) -> None:
        """Stop listening; flush and close every session ("server shutdown")."""
        self._server.close()
        self._hub.shutdown("server shutdown")

    async def wait_closed(self) -> None:
        """Wait until the listener is closed and the sessions are gone (5 s at most)."""
        await self._server.wait_closed()
        deadline = self._hub.loop.time() + 5.0
        while self._hub.sessions and self._hub.loop.time() < deadline:
            await asyncio.sleep(0.005)

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
    are called as connections come and go. ``options`` are the fields of
    ``Options`` (limits, buffers, aggregator, registry).
    """
    if handler is None and not handlers:
        raise TypeError("serve() needs a handler or handlers")
    loop = asyncio.get_running_loop()
    hub = _Hub(loop, Options.from_kwargs(options), handler, handlers)
    hub.on_close = on_close

    def factory() -> Session:
        s = hub.new_session(Session)._setup(hub)
        if on_connect is not None:
            loop.call_soon(on_connect, s)
        return s

    server = await loop.create_server(factory, host, port, backlog=backlog,
                                      reuse_port=reuse_port or None)
    return PacketServer(server, hub)


async def connect(host: str, port: int, handler: Optional[Handler] = None, **options: Any) -> Session:
    """Open a client connection and return its Session. Without a handler,
    received batches queue up for ``await session.recv()``. A client's
    ``max_delay`` defaults to 0: what it sends outside a read burst goes out
    at the end of the loop iteration (requests are not held back)."""
    loop = asyncio.get_running_loop()
    options.setdefault("max_delay", 0.0)
    handlers = options.pop("handlers", None)
    hub = _Hub(loop, Options.from_kwargs(options), handler, handlers)
    session = Session.__new__(Session)._setup(hub)
    if handler is None:
        session._inbox = asyncio.Queue()
    await loop.create_connection(lambda: session, host, port)
    return session
