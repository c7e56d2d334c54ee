"""WebSocket listener and client: the same handlers, sessions, groups,
limits and metrics as ``fastpacket.aio``, for peers that cannot open a TCP
socket (browsers).

::

    server = await fp.ws.serve_ws(handler, "127.0.0.1", 8765)   # ws://127.0.0.1:8765/
    # also fp.aio.serve_ws (the same function)

The WebSocket protocol (handshake, framing, masking, ping/pong, close
handshake) is picows's (the ``fastpacket[ws]`` extra): a Cython, asyncio
library whose frames arrive as views of its read buffer; no framing is
written here. What this module adds is the mapping between WebSocket
messages and packets:

- each binary message carries one or more whole packets of the layout; its
  bytes go through the session's receive ring and FrameDecoder exactly as
  bytes read from a TCP socket (``Session.feed_message``), so the handler
  gets every packet of a message in one batch. A message may be sent in
  fragments; a packet may span fragments, never messages.
- a session's output is flushed as on TCP (end of its read burst, end of
  the loop iteration, ``max_delay``) and each flush is one binary message.
- what a peer may not send closes the session with a WebSocket close code
  and a reason (``session.close_reason`` says the same):

  =========================================  ====  =====================================
  what happened                              code  close_reason
  =========================================  ====  =====================================
  a text message                             1003  protocol error: text message ...
  a message (all its fragments) over         1009  protocol error: message of N bytes...
  ``max_message_size``; a frame over it
  (picows refuses it from its header)
  more than MAX_FRAGMENTS fragments          1009  protocol error: more than ... fragments
  a message that ends inside a packet,       1002  protocol error: ...
  a bad packet (size out of range), an
  unmasked frame, a bad opcode (picows),
  RSV bits set (say, a compressed message:
  no extension is negotiated)
  rate limit with ``rate_policy="close"``,   1008  rate limit exceeded / slow consumer
  a peer that does not read its output
  server shutdown, idle timeout, no pong     1001  server shutdown / idle timeout ...
  ``max_connections`` reached                1013  too many connections
  a handler or on_connect error              1011  handler error: ...
  the peer's own close                       1000  peer closed
  =========================================  ====  =====================================

Keepalive: the server pings a connection idle for ``ping_interval``
seconds and drops it ("idle timeout: no pong ...") when no pong comes
within ``ping_timeout``; ``idle_timeout`` (no packet for that long) applies
as on TCP. TLS (wss://) through ``ssl=``, as for ``serve()``. Plain HTTP
GETs of a path in ``pages`` get that page (the relay's live view is served
this way, on the WebSocket port); any other non-upgrade request gets 404.
"""

from __future__ import annotations

import socket
import ssl as _ssl
from typing import Any, Mapping, Optional, Tuple, Union

from fastpacket.aio import (BusArg, Handler, PacketServer, Session, SessionHook, _bus_arg, _new_hub, _start_bus,
                            Options, DEFAULT_HOST)

__all__ = ["serve_ws", "connect_ws", "close_code", "DEFAULT_MAX_MESSAGE_SIZE", "MAX_FRAGMENTS",
           "DEFAULT_PING_INTERVAL", "DEFAULT_PING_TIMEOUT", "DEFAULT_HANDSHAKE_TIMEOUT", "Page"]

#: Largest binary message (all its fragments together) a peer may send, in
#: bytes: 1 MiB, many max-size packets; larger closes with 1009.
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20
#: Most fragments one message may arrive in: a browser never fragments, a
#: library splits a large message into a few; thousands of tiny fragments
#: are a peer making us work per byte (1009).
MAX_FRAGMENTS = 1024
#: Seconds without any frame from a peer before the server pings it.
DEFAULT_PING_INTERVAL = 20.0
#: Seconds the server waits for the pong before dropping the peer.
DEFAULT_PING_TIMEOUT = 20.0
#: Seconds a new connection has to complete its HTTP upgrade.
DEFAULT_HANDSHAKE_TIMEOUT = 5.0
#: A close frame's reason is at most this many bytes (RFC 6455 5.5: a
#: control frame's payload is at most 125, two of which are the code).
MAX_CLOSE_REASON_BYTES = 123

#: What ``pages`` maps a path to: (content type, body).
Page = Tuple[str, bytes]

# close_reason prefix -> WebSocket close code (RFC 6455 7.4.1)
_CODES = (
    ("peer closed", 1000),
    ("server shutdown", 1001),
    ("idle timeout", 1001),
    ("protocol error", 1002),
    ("rate limit", 1008),
    ("slow consumer", 1008),
    ("too many connections", 1013),
    ("handler error", 1011),
    ("on_connect error", 1011),
    ("send error", 1011),
    ("internal error", 1011),
)


def close_code(reason: Optional[str]) -> int:
    """The WebSocket close code a session closed with `reason` sends (see
    the module docstring's table; 1000 for a reason of the application's)."""
    if reason:
        for prefix, code in _CODES:
            if reason.startswith(prefix):
                return code
    return 1000


def _picows() -> Any:
    try:
        import picows
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("WebSocket support needs picows: pip install 'fastpacket[ws]'") from exc
    return picows


class _Link:
    """The transport a Session writes to, over one picows WSTransport: each
    write is one binary message; close sends the close code that the
    session's close reason maps to."""

    __slots__ = ("ws", "raw", "session", "code", "_binary")

    def __init__(self, ws: Any, session: Session, binary: Any) -> None:
        self.ws = ws
        self.raw = ws.underlying_transport
        self.session = session
        self.code: Optional[int] = None  # set by the listener for the WebSocket-level reasons
        self._binary = binary

    def write(self, data: Any) -> None:
        self.ws.send(self._binary, data)

    def close(self) -> None:
        if not self.ws.is_close_frame_sent:
            reason = self.session.close_reason or "closed"
            code = self.code if self.code is not None else close_code(reason)
            self.ws.send_close(_picows().WSCloseCode(code),
                               reason.encode("utf-8", "replace")[:MAX_CLOSE_REASON_BYTES])
        self.ws.disconnect(True)  # what is queued (the close frame included) goes out first

    def abort(self) -> None:
        self.ws.disconnect(False)

    def is_closing(self) -> bool:
        return bool(self.raw.is_closing())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.raw.get_extra_info(name, default)

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def get_write_buffer_size(self) -> int:
        return int(self.raw.get_write_buffer_size())

    def set_write_buffer_limits(self, high: Optional[int] = None, low: Optional[int] = None) -> None:
        self.raw.set_write_buffer_limits(high, low)


def _listener_class() -> Any:
    picows = _picows()
    binary, continuation, text, close = (picows.WSMsgType.BINARY, picows.WSMsgType.CONTINUATION,
                                         picows.WSMsgType.TEXT, picows.WSMsgType.CLOSE)

    class Listener(picows.WSListener):  # type: ignore[misc,name-defined]
        """One WebSocket connection: frames in, a Session's packets out."""

        def __init__(self, session: Session, max_message_size: int) -> None:
            self.session = session
            self.link: Optional[_Link] = None
            self.max_message_size = max_message_size
            self.fragments = 0       # of the message being received in fragments; 0: none
            self.message_bytes = 0

        def on_ws_connected(self, transport: Any) -> None:
            self.link = _Link(transport, self.session, binary)
            self.session.connection_made(self.link)

        def fail(self, code: int, reason: str) -> None:
            assert self.link is not None
            self.link.code = code
            self.session.close(reason)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            s = self.session
            if s.closed:
                return
            kind = frame.msg_type
            if frame.rsv1 or frame.rsv2 or frame.rsv3:  # RFC 6455 5.2: no extension is negotiated
                self.fail(1002, "protocol error: a frame with RSV bits set (no extension was negotiated)")
                return
            if kind is binary and frame.fin and not self.fragments:  # the common case: a whole message
                left = s.feed_message(frame.get_payload_as_memoryview())
                if left and not s.closed:
                    self.fail(1002, f"protocol error: a message ended inside a packet ({left} bytes of it)")
                return
            if kind is binary or kind is continuation:
                if (kind is binary) == bool(self.fragments):
                    self.fail(1002, "protocol error: " + ("a new message before the last one's final fragment"
                                                          if self.fragments else "a continuation of no message"))
                    return
                self.fragments += 1
                self.message_bytes += frame.payload_size
                if self.message_bytes > self.max_message_size:
                    self.fail(1009, f"protocol error: message of {self.message_bytes}+ bytes over "
                                    f"max_message_size ({self.max_message_size})")
                    return
                if self.fragments > MAX_FRAGMENTS:
                    self.fail(1009, f"protocol error: more than {MAX_FRAGMENTS} fragments in one message")
                    return
                left = s.feed_message(frame.get_payload_as_memoryview())
                if frame.fin:
                    self.fragments = self.message_bytes = 0
                    if left and not s.closed:
                        self.fail(1002, f"protocol error: a message ended inside a packet ({left} bytes of it)")
            elif kind is text:
                self.fail(1003, "protocol error: text message (packets travel in binary messages)")
            elif kind is close:
                s.close("peer closed")

        def on_ws_disconnected(self, transport: Any) -> None:
            s = self.session
            if self.link is None:
                return  # never connected: no session to end
            handshake = transport.close_handshake
            if not s.closed and handshake is not None and handshake.sent is not None and handshake.recv is None:
                # picows closed the connection for what the peer sent (or did not answer)
                sent = handshake.sent
                code = int(getattr(sent.code, "value", sent.code))
                if code == 1001:
                    s.close(f"idle timeout: {sent.reason}")
                else:
                    s.close(f"protocol error: {sent.reason} (websocket close {code})")
            s.connection_lost(None)

        def pause_writing(self) -> None:
            self.session.pause_writing()

        def resume_writing(self) -> None:
            self.session.resume_writing()

    return Listener


_LISTENER: Any = None


def _listener(session: Session, max_message_size: int) -> Any:
    global _LISTENER
    if _LISTENER is None:
        _LISTENER = _listener_class()
    return _LISTENER(session, max_message_size)


def _check_ws_args(max_message_size: int, ping_interval: Optional[float], ping_timeout: float,
                   handshake_timeout: Optional[float], options: Options) -> None:
    if not isinstance(max_message_size, int) or max_message_size < options.layout.size:
        raise ValueError(f"max_message_size must be an int >= the layout's header size "
                         f"({options.layout.size}), got {max_message_size!r}")
    if ping_interval is not None and ping_interval <= 0:
        raise ValueError(f"ping_interval must be > 0 or None, got {ping_interval}")
    if ping_timeout <= 0:
        raise ValueError(f"ping_timeout must be > 0, got {ping_timeout}")
    if ping_interval is not None and ping_timeout > ping_interval:
        raise ValueError(f"ping_timeout ({ping_timeout}) must be at most ping_interval ({ping_interval})")
    if handshake_timeout is not None and handshake_timeout <= 0:
        raise ValueError(f"handshake_timeout must be > 0 or None, got {handshake_timeout}")


async def serve_ws(
    handler: Optional[Handler] = None, host: Optional[str] = None, port: Optional[int] = None, *,
    path: str = "/", handlers: Optional[Mapping[int, Handler]] = None,
    on_connect: Optional[SessionHook] = None, on_close: Optional[SessionHook] = None,
    ssl: Optional[_ssl.SSLContext] = None, sock: Optional[socket.socket] = None,
    reuse_port: bool = False, backlog: int = 1024, start_serving: bool = True,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE, ping_interval: Optional[float] = DEFAULT_PING_INTERVAL,
    ping_timeout: float = DEFAULT_PING_TIMEOUT, handshake_timeout: Optional[float] = DEFAULT_HANDSHAKE_TIMEOUT,
    pages: Optional[Mapping[str, Page]] = None, bus: BusArg = None, server: Optional[PacketServer] = None,
    **options: Any,
) -> PacketServer:
    """Start a packet server on WebSocket (``ws://host:port{path}``, or
    ``wss://`` with ``ssl``) and return it: the same handlers, hooks,
    groups, bus and Options keywords (limits, buffers, aggregator,
    registry) as ``fastpacket.aio.serve``; see the module docstring for
    how messages carry packets and which close codes end a session.

    ``path``: the path clients upgrade on (others get 404).
    ``max_message_size``: the largest binary message, in bytes.
    ``ping_interval``/``ping_timeout`` (seconds; ``ping_interval=None``:
    no pings): keepalive. ``handshake_timeout``: seconds for the HTTP
    upgrade. ``pages``: ``{path: (content_type, body)}`` served to plain
    HTTP GETs on the same port. ``host`` defaults to 127.0.0.1, ``port``
    to 0 (a free one: ``server.port``).

    ``server``: an existing PacketServer (TCP, say) whose handlers,
    options, groups, bus and metrics the WebSocket sessions share: a TCP
    client and a browser then meet in the same groups. Handlers, hooks,
    bus and Options keywords are then the server's (passing them is a
    TypeError); the listener returned stops accepting on ``close()``,
    while closing `server` closes every session, WebSocket ones included.
    """
    picows = _picows()
    if server is not None:
        given = [name for name, value in (("handler", handler), ("handlers", handlers), ("on_connect", on_connect),
                                          ("on_close", on_close), ("bus", bus)) if value is not None]
        if given or options:
            raise TypeError(f"serve_ws(server=...) shares that server's handlers and options; do not pass "
                            f"{sorted(given + list(options))}")
        if not isinstance(server, PacketServer):
            raise TypeError(f"server must be a fastpacket.aio.PacketServer, not {type(server).__name__!r}")
        opts = server.options
    else:
        opts = Options.from_kwargs(options)
    _check_ws_args(max_message_size, ping_interval, ping_timeout, handshake_timeout, opts)
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must be a str starting with '/', got {path!r}")
    routes = {}
    for page_path, page in (pages or {}).items():
        if not (isinstance(page_path, str) and isinstance(page, tuple) and len(page) == 2
                and isinstance(page[0], str) and isinstance(page[1], bytes)):
            raise TypeError(f"pages maps a path (str) to (content_type: str, body: bytes), got "
                            f"{page_path!r}: {type(page).__name__}")
        routes[page_path.encode()] = page
    if sock is not None:
        if host is not None or port is not None:
            raise ValueError("host/port and sock can not be specified at the same time")
    else:
        host = DEFAULT_HOST if host is None else host
        port = 0 if port is None else port
    if server is not None:
        hub = server._hub
    elif handler is None and not handlers:
        raise TypeError("serve_ws() needs a handler or handlers")
    else:
        hub = _new_hub(handler, handlers, opts, on_connect, on_close, _bus_arg(bus))
    ws_path = path.encode()

    def route(request: Any) -> Any:
        target = request.path.split(b"?", 1)[0]
        if "upgrade" not in request.headers:  # a plain HTTP request
            page = routes.get(target)
            if page is None:
                return None  # 404
            response = picows.WSUpgradeResponse.create_ok_response(page[1], {"Content-Type": page[0],
                                                                             "Cache-Control": "no-store"})
            return picows.WSUpgradeResponseWithListener(response, None)
        if target != ws_path:
            return None
        return _listener(Session(hub), max_message_size)

    listener = await picows.ws_create_server(
        route, host, port, websocket_handshake_timeout=handshake_timeout,
        enable_auto_ping=ping_interval is not None,
        auto_ping_idle_timeout=ping_interval if ping_interval is not None else DEFAULT_PING_INTERVAL,
        auto_ping_reply_timeout=ping_timeout, max_frame_size=max_message_size, use_aiofastnet=False,
        logger_name="ws", ssl=ssl, sock=sock, reuse_port=reuse_port or None, backlog=backlog,
        start_serving=start_serving)
    if server is not None:
        return _SharedListener(listener, hub)
    return await _start_bus(PacketServer(listener, hub))


class _SharedListener(PacketServer):
    """A WebSocket listener whose sessions belong to another PacketServer
    (``serve_ws(server=...)``): closing it stops accepting; the owner's
    close() closes the sessions and the bus."""

    def close(self) -> None:
        """Stop accepting WebSocket connections (the sessions stay with their server)."""
        self._server.close()

    async def wait_closed(self, timeout: float = 0.0) -> None:
        """Wait until the listener is closed."""
        await self._server.wait_closed()

    async def shutdown(self, timeout: float = 0.0) -> bool:
        """Stop accepting (see close()); True."""
        self.close()
        await self.wait_closed()
        return True


async def connect_ws(
    url: str, handler: Optional[Handler] = None, *, handlers: Optional[Mapping[int, Handler]] = None,
    ssl: Union[_ssl.SSLContext, None] = None, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    handshake_timeout: Optional[float] = DEFAULT_HANDSHAKE_TIMEOUT, **options: Any,
) -> Session:
    """Open a WebSocket client connection to `url` (``ws://`` or
    ``wss://``; ``ssl`` overrides the default context) and return its
    Session, as ``fastpacket.aio.connect`` does for TCP: without a handler,
    batches queue for ``await session.recv()``. Sends go out at the end of
    the loop iteration (``max_delay`` defaults to 0), one binary message
    per flush. The other keywords are the fields of ``Options``."""
    picows = _picows()
    options.setdefault("max_delay", 0.0)
    opts = Options.from_kwargs(options)
    _check_ws_args(max_message_size, None, DEFAULT_PING_TIMEOUT, handshake_timeout, opts)
    session = Session(_new_hub(handler, handlers, opts))
    await picows.ws_connect(lambda: _listener(session, max_message_size), url, ssl_context=ssl,
                            websocket_handshake_timeout=handshake_timeout, max_frame_size=max_message_size,
                            use_aiofastnet=False, logger_name="ws.client")
    return session

