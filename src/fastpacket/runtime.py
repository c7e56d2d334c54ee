"""The runtime: serving an application in one process or in N worker
processes until SIGINT or SIGTERM. ``fastpacket.run(app, ...)`` is its
public entry point and ``fastpacket serve`` a thin argument parser over it.

**An app** is an object with ``handler(session, batch)`` or ``handlers``
(a dict ``{type: handler}``; handlers are plain or ``async def``
functions, see fastpacket.aio), and optionally ``on_connect(session)``,
``on_close(session)``, ``async startup(server)`` and ``async
shutdown(server)``; a plain function is taken as the handler. ``app`` is
the object itself or an import string ``"package.module:attr"`` (``attr``
may be dotted; with ``factory=True`` it is called, with ``app_args``, to
make the app). With ``workers > 1`` it must be an import string: worker
processes are spawned and import it (uvicorn's rule).

**Lifecycle.** Each process loads the app, creates its server without
accepting yet, awaits ``startup(server)`` (a failure stops the start with
the error), then accepts connections. On SIGINT or SIGTERM it stops
accepting, awaits ``shutdown(server)``, flushes and closes every session
("server shutdown"; a session whose async handler is running first
finishes what it received), waits at most ``graceful_timeout`` seconds in
all, aborts what is left and exits 0.

**Listening.** TCP on (host, port), a Unix socket (``uds``) or an
inherited, already bound socket (``fd``, as systemd socket activation
passes one; TCP or Unix); TLS with ``ssl_certfile``/``ssl_keyfile``
(``ssl_ca_certs``: require client certificates signed by those CAs). One
server per address: before serving, the address is bound once without
SO_REUSEPORT, which fails if any other process listens there
(``fastpacket.AddressInUse`` naming it); a Unix socket path where a server
answers is refused the same way (a stale socket file is replaced).

**Workers.** ``workers=N`` spawns N processes. On TCP each listens on the
same port with SO_REUSEPORT (the kernel spreads new connections over them;
Linux, and BSDs with their own balancing); the parent reserves the port
for them between its check and their start. On a Unix socket or an
inherited socket the parent binds it once and every worker accepts from
it. The parent supervises: it restarts a worker that dies, and on
SIGINT/SIGTERM sends SIGTERM to every worker, each of which stops as
above; one still running ``graceful_timeout`` + STOP_MARGIN_S seconds
later is killed. Where SO_REUSEPORT is missing, ``workers > 1`` on TCP
falls back to one worker with a logged warning.

**Metrics.** The workers of one server record into one shared-memory
Registry (``fp.Registry(shared=path)``: ``metrics_file``, or a file in a
private temporary directory, removed at exit), each through a view
labelled ``worker="<index>"``, so ``metrics_port`` serves the whole
server, per worker, at ``http://metrics_host:metrics_port/metrics``
(prometheus_client's HTTP server, ``fastpacket.metrics.start_http_server``,
started before any worker: a busy metrics port fails at once, named as
such) with every worker's process metrics. When a worker dies, the
supervisor counts its open connections as closed with reason
``worker_lost``, resets its gauges and starts a new worker with the same
index, which records into the same series.
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import inspect
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import ssl
import stat
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import (TYPE_CHECKING, Any, Awaitable, Callable, Dict, List, Literal, Mapping, Optional, Tuple,
                    Union)

from fastpacket.errors import AddressInUse
from fastpacket.layout import GAME, HeaderLayout
from fastpacket.system import LOOPS, new_event_loop, raise_nofile

if TYPE_CHECKING:
    from fastpacket.aio import BusArg, Handler, PacketServer, SessionHook

__all__ = ["run", "ServerConfig", "load_app", "app_kwargs", "app_hooks", "start_server", "run_config",
           "reuse_port_available", "account_lost_worker", "format_address", "server_ssl_context",
           "DEFAULT_GRACEFUL_TIMEOUT_S", "STOP_MARGIN_S"]

log = logging.getLogger("fastpacket.runtime")

#: Slots of the shared metrics file per worker: the adapter's families,
#: every close and drop reason, and room for the application's own.
SLOTS_PER_WORKER = 64
#: Seconds a stopping server gives its shutdown hook and its sessions
#: before aborting what is left (``--graceful-timeout``).
DEFAULT_GRACEFUL_TIMEOUT_S = 10.0
#: Seconds past the graceful timeout the supervisor waits for a worker to
#: exit after SIGTERM before killing it (process exit, interpreter teardown).
STOP_MARGIN_S = 5.0
#: Seconds a worker may take to import the app, run startup and listen.
WORKER_START_TIMEOUT_S = 60.0
#: The supervisor looks at its workers this often, in seconds.
SUPERVISE_POLL_S = 0.2
#: A worker checks this often, in seconds, that its parent is alive.
PARENT_POLL_S = 1.0
#: Worker restarts allowed within RESTART_WINDOW_S seconds before the supervisor gives up.
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
#: Listen backlog of the sockets the runtime binds itself.
BACKLOG = 1024

#: A lifecycle hook: ``async def startup(server)`` / ``async def shutdown(server)``.
LifecycleHook = Callable[["PacketServer"], Awaitable[None]]


def format_address(host: str, port: int) -> str:
    """``host:port``, with an IPv6 host in brackets (``[::1]:7777``)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------
# the application


def load_app(spec: Any, factory: bool = False, app_args: Optional[Dict[str, Any]] = None) -> Any:
    """The application `spec` names: an import string ``"package.module:attr"``
    (``attr`` may be dotted) or the app object itself; with `factory`,
    ``it(**app_args)``. ValueError when the string is malformed or names
    nothing."""
    if isinstance(spec, str):
        module_name, sep, attr = spec.partition(":")
        if not sep or not module_name or not attr:
            raise ValueError(f"app must be 'module:attribute', got {spec!r}")
        try:
            obj: Any = importlib.import_module(module_name)
        except ImportError as exc:
            raise ValueError(f"app {spec!r}: cannot import module {module_name!r}: {exc}") from exc
        for part in attr.split("."):
            try:
                obj = getattr(obj, part)
            except AttributeError:
                raise ValueError(f"app {spec!r}: module {module_name!r} has no attribute {attr!r}") from None
    else:
        obj = spec
    if factory:
        if not callable(obj):
            raise ValueError(f"app {spec!r} is not callable, so it cannot be a factory")
        obj = obj(**(app_args or {}))
    elif app_args:
        raise ValueError(f"app {spec!r}: app_args are only for factories")
    return obj


def app_kwargs(app: Any) -> Dict[str, Any]:
    """The ``fp.aio.serve`` keyword arguments that serve `app` (a handler
    function, or an object with handler/handlers and on_connect/on_close).
    TypeError when `app` is none of these."""
    handler = getattr(app, "handler", None)
    handlers = getattr(app, "handlers", None)
    if handler is None and handlers is None:
        if not callable(app) or isinstance(app, type):
            raise TypeError(f"{app!r} is not an app: it has no handler or handlers and is not a function "
                            f"(a class or another factory of apps needs factory=True, --factory)")
        return {"handler": app}
    kwargs: Dict[str, Any] = {"handler": handler, "handlers": handlers}
    for hook in ("on_connect", "on_close"):
        fn = getattr(app, hook, None)
        if fn is not None:
            kwargs[hook] = fn
    return kwargs


def app_hooks(app: Any) -> Tuple[Optional[LifecycleHook], Optional[LifecycleHook]]:
    """The app's ``startup`` and ``shutdown`` hooks (None where absent);
    TypeError for one that is not an ``async def``."""
    if getattr(app, "handler", None) is None and getattr(app, "handlers", None) is None:
        return None, None  # a plain handler function: no hooks
    hooks = []
    for name in ("startup", "shutdown"):
        fn = getattr(app, name, None)
        if fn is not None and not inspect.iscoroutinefunction(fn):
            raise TypeError(f"the app's {name} must be an async function taking the server, got {fn!r}")
        hooks.append(fn)
    return hooks[0], hooks[1]


def server_ssl_context(certfile: str, keyfile: Optional[str] = None, password: Optional[str] = None,
                       ca_certs: Optional[str] = None) -> ssl.SSLContext:
    """A server-side TLS context from PEM files (uvicorn's ``--ssl-*``
    options): the certificate chain and its key; with `ca_certs`, clients
    must present a certificate signed by one of those CAs. ValueError
    naming the file that cannot be used."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        ctx.load_cert_chain(certfile, keyfile, password)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TLS certificate {certfile!r}"
                         f"{f' with key {keyfile!r}' if keyfile else ''}: {exc}") from exc
    if ca_certs is not None:
        try:
            ctx.load_verify_locations(ca_certs)
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"cannot load the CA certificates {ca_certs!r}: {exc}") from exc
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class ServerConfig:
    """What ``run_config`` serves (``fastpacket.run`` builds one). ``app``
    is an import string ``"module:attr"`` or (one process only) the app
    object; ``factory``/``app_args`` as for ``load_app``. Where: ``uds``
    (a Unix socket path), else ``fd`` (an inherited bound socket), else
    (host, port). ``options`` are fastpacket.aio.Options fields (limits,
    buffers) passed to the server. Must pickle for workers."""

    host: str = "127.0.0.1"
    port: int = 7777
    app: Any = "fastpacket.apps.relay:Relay"
    factory: bool = True
    app_args: Dict[str, Any] = field(default_factory=dict)
    loop: str = "asyncio"
    compress: bool = False
    compress_threshold: int = 256     # bytes: a relay's bursts are small, the Aggregator's default is 1024
    options: Dict[str, Any] = field(default_factory=dict)
    uds: Optional[str] = None
    fd: Optional[int] = None
    ssl_certfile: Optional[str] = None
    ssl_keyfile: Optional[str] = None
    ssl_keyfile_password: Optional[str] = None
    ssl_ca_certs: Optional[str] = None
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT_S
    bus: Any = None                   # a bus URL (workers: a URL only), or a fastpacket.aio.Bus
    ws_port: Optional[int] = None     # also serve the app over WebSocket on this port (fastpacket.ws)
    ws_path: str = "/"                # ... at this path

    def check(self) -> "ServerConfig":
        """Validates the settings (ValueError/TypeError naming the bad one),
        loading the app and the TLS files once; returns self."""
        if not isinstance(self.port, int) or not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port!r}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ValueError("uvloop is not installed (pip install uvloop)") from None
        if not self.graceful_timeout >= 0:
            raise ValueError(f"graceful_timeout must be >= 0 seconds, got {self.graceful_timeout!r}")
        if self.fd is not None and (not isinstance(self.fd, int) or self.fd < 0):
            raise ValueError(f"fd must be a file descriptor (int >= 0), got {self.fd!r}")
        if self.ws_port is not None and (not isinstance(self.ws_port, int) or not 0 <= self.ws_port <= 65535):
            raise ValueError(f"ws_port must be in [0, 65535] or None, got {self.ws_port!r}")
        if self.ws_port is not None and self.uds is not None:
            raise ValueError("ws_port serves beside a TCP port, not beside a Unix socket (uds)")
        if self.ssl_certfile is None and (self.ssl_keyfile or self.ssl_ca_certs):
            raise ValueError("ssl_keyfile and ssl_ca_certs need ssl_certfile")
        from fastpacket.aio import Options

        Options.from_kwargs(dict(self.options))  # unknown or bad limits raise here, before any process starts
        if self.bus is not None:
            from fastpacket.aio import _bus_arg

            _bus_arg(self.bus)  # a bad URL raises here too
        app = load_app(self.app, self.factory, self.app_args)  # so does an app that cannot be served
        app_kwargs(app)
        app_hooks(app)
        self.ssl_context()
        return self

    def ssl_context(self) -> Optional[ssl.SSLContext]:
        """The server's TLS context, or None for plain TCP."""
        if self.ssl_certfile is None:
            return None
        return server_ssl_context(self.ssl_certfile, self.ssl_keyfile, self.ssl_keyfile_password, self.ssl_ca_certs)


async def start_server(config: ServerConfig, registry: Any = None, reuse_port: bool = False,
                       port: Optional[int] = None, app: Any = None, sock: Optional[socket.socket] = None,
                       start_serving: bool = True) -> "PacketServer":
    """Start the configured application (or `app`, already loaded) on the
    running loop, on `sock` when given; the PacketServer."""
    from fastpacket import aio

    options = dict(config.options)
    if config.compress:
        from fastpacket.aggregate import Aggregator

        options["aggregator"] = agg = Aggregator("lz4", threshold=config.compress_threshold)
        # a packet echoed or relayed must fit one aggregate frame (aio.Options refuses more)
        options.setdefault("max_packet_size", agg.frame_capacity())
    if registry is not None:
        options["registry"] = registry
    if app is None:
        app = load_app(config.app, config.factory, config.app_args)
    kwargs = app_kwargs(app)
    tls = config.ssl_context()
    bus = config.bus
    if sock is not None and sock.family == getattr(socket, "AF_UNIX", None):
        return await aio.serve_unix(sock=sock, ssl=tls, start_serving=start_serving, bus=bus, **kwargs, **options)
    if sock is not None:
        return await aio.serve(sock=sock, ssl=tls, start_serving=start_serving, bus=bus, **kwargs, **options)
    return await aio.serve(host=config.host, port=config.port if port is None else port, reuse_port=reuse_port,
                           ssl=tls, start_serving=start_serving, bus=bus, **kwargs, **options)


# ---------------------------------------------------------------------------
# addresses: one server per address


def reuse_port_available() -> bool:
    """True when this platform lets several sockets listen on one port."""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return True
    except OSError:
        return False


def _tcp_family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def bind_tcp(host: str, port: int, what: str = "server", reuse_port: bool = False) -> socket.socket:
    """A TCP socket bound to (host, port), not listening. Without
    `reuse_port` (the check of one server per address) the bind fails if
    any process listens there, SO_REUSEPORT or not: AddressInUse naming
    the address. SO_REUSEADDR is set, so a port in TIME_WAIT is free."""
    sock = socket.socket(_tcp_family(host), socket.SOCK_STREAM)
    try:
        if os.name == "posix":
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # "::" is IPv6 only, as asyncio binds it
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            address = format_address(host, port)
            raise AddressInUse(f"{what} address {address} is already in use: another process listens there "
                               f"(stop it, or choose another port)", address) from None
        raise
    return sock


def bind_unix(path: str) -> socket.socket:
    """A listening Unix socket at `path`. A socket file where a server
    answers is AddressInUse; a stale one (nobody answers) is replaced; a
    file of another kind is left alone (FileExistsError)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if st is not None:
        if not stat.S_ISSOCK(st.st_mode):
            raise FileExistsError(f"{path!r} exists and is not a socket: not replacing it")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
            try:
                probe.connect(path)
            except OSError:
                os.unlink(path)  # stale: its server is gone
            else:
                raise AddressInUse(f"Unix socket {path} is already in use: a server answers there", path)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(path)
        sock.listen(BACKLOG)
    except OSError:
        sock.close()
        raise
    return sock


def _describe(sock: socket.socket) -> Dict[str, Any]:
    name = sock.getsockname()
    if isinstance(name, str) or isinstance(name, bytes):
        return {"path": name if isinstance(name, str) else name.decode(errors="replace")}
    return {"host": name[0], "port": name[1]}


def _inherited_socket(fd: int) -> socket.socket:
    """The bound socket inherited as file descriptor `fd` (family and type
    read from it), listening."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError as exc:
        raise ValueError(f"fd {fd} is not a usable socket: {exc}") from None
    if sock.type != socket.SOCK_STREAM:
        sock.detach()
        raise ValueError(f"fd {fd} is not a stream socket")
    sock.listen(BACKLOG)
    return sock


# ---------------------------------------------------------------------------
# one process


async def _serve_until_stopped(config: ServerConfig, registry: Any, reuse_port: bool, port: Optional[int],
                               sock: Optional[socket.socket], on_ready: Callable[[Dict[str, Any]], Any],
                               stop: "asyncio.Future[Any]", metrics_server: Any = None) -> Dict[str, int]:
    app = load_app(config.app, config.factory, config.app_args)
    startup, shutdown = app_hooks(app)
    server = await start_server(config, registry, reuse_port=reuse_port, port=port, app=app, sock=sock,
                                start_serving=False)
    loop = asyncio.get_running_loop()
    ws_listener = None
    try:
        if config.ws_port is not None:
            ws_listener = await start_ws_listener(config, server, app, reuse_port)
        if startup is not None:
            await startup(server)
        await server.start_serving()
        info: Dict[str, Any] = {"pid": os.getpid(), "tls": config.ssl_certfile is not None}
        info.update(_describe(server.sockets[0]))
        if ws_listener is not None:
            await ws_listener.start_serving()
            info["ws_port"] = ws_listener.port
        if metrics_server is not None:
            info["metrics_port"] = metrics_server.port
        if registry is not None and registry.path is not None:
            info["metrics_file"] = registry.path
        on_ready(info)
        await stop
    finally:
        if ws_listener is not None:
            ws_listener.close()
        await _stop_gracefully(server, shutdown, config.graceful_timeout, loop)
    return server.closes


async def start_ws_listener(config: ServerConfig, server: "PacketServer", app: Any,
                            reuse_port: bool) -> "PacketServer":
    """The WebSocket listener beside `server` (config.ws_port), its
    sessions in `server`'s groups; the app's ``pages`` (``{path:
    (content_type, body)}``, if it has them) are served to plain HTTP GETs
    there. Not yet accepting: call start_serving()."""
    from fastpacket.ws import serve_ws

    pages = getattr(app, "pages", None)
    try:
        return await serve_ws(host=config.host, port=config.ws_port, path=config.ws_path, server=server,
                              ssl=config.ssl_context(), reuse_port=reuse_port, start_serving=False, pages=pages)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            address = format_address(config.host, config.ws_port or 0)
            raise AddressInUse(f"WebSocket address {address} (the ws port) is already in use: another "
                               f"process listens there", address) from None
        raise


async def _stop_gracefully(server: "PacketServer", shutdown: Optional[LifecycleHook], timeout: float,
                           loop: asyncio.AbstractEventLoop) -> None:
    """Stop accepting, run the shutdown hook, flush and close every
    session, all within `timeout` seconds; then abort what is left."""
    deadline = loop.time() + timeout
    server.stop_listening()
    if shutdown is not None:
        try:
            await asyncio.wait_for(shutdown(server), timeout)
        except asyncio.TimeoutError:
            log.warning("the app's shutdown hook did not finish within %g s", timeout)
        except Exception:
            log.exception("the app's shutdown hook failed")
    if not await server.shutdown(max(0.0, deadline - loop.time())):
        log.warning("sessions still open after the graceful timeout (%g s) were aborted", timeout)


def _on_signals(loop: asyncio.AbstractEventLoop, stop: "asyncio.Future[Any]", signals: Tuple[int, ...]) -> None:
    def fire(signum: int) -> None:
        if not stop.done():
            log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set_result(signum)

    for sig in signals:
        loop.add_signal_handler(sig, fire, sig)


def _start_metrics(registry: Any, metrics: Optional[Tuple[str, int]],
                   processes: Optional[Callable[[], Mapping[str, int]]] = None) -> Any:
    """The /metrics server (None without `metrics`); a busy port is
    AddressInUse naming the metrics address."""
    if metrics is None:
        return None
    from fastpacket.metrics import start_http_server

    host, port = metrics
    try:
        return start_http_server(registry, port, host, processes=processes)
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            address = format_address(host, port)
            raise AddressInUse(f"metrics address {address} (the metrics port) is already in use: another "
                               f"process listens there", address) from None
        raise


def _listening_socket(config: ServerConfig, shared: bool) -> Optional[socket.socket]:
    """The socket this server serves on when it is not one per worker: the
    Unix socket, the inherited one, or (one process, `shared` False) the
    TCP address bound here, which also checks that it is free."""
    if config.uds is not None:
        return bind_unix(config.uds)
    if config.fd is not None:
        return _inherited_socket(config.fd)
    if shared:
        return None
    return bind_tcp(config.host, config.port)


def run_single(config: ServerConfig, metrics: Optional[Tuple[str, int]] = None,
               on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None,
               metrics_file: Optional[str] = None) -> int:
    """Serve in this process until SIGINT/SIGTERM; 0 after a clean stop.
    With `metrics_file`, the registry is a shared file there (created here,
    removed at exit) that ``fastpacket top`` can read."""
    from fastpacket.metrics import Registry

    raise_nofile()
    if metrics_file:
        _new_metrics_file(metrics_file)  # before anything that the exit path removes
    sock = _listening_socket(config, shared=False)
    created = config.uds
    metrics_server = None
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    try:
        registry = Registry(shared=metrics_file) if metrics_file else Registry()
        metrics_server = _start_metrics(registry, metrics)
        stop = loop.create_future()
        _on_signals(loop, stop, (signal.SIGINT, signal.SIGTERM))
        loop.run_until_complete(_serve_until_stopped(config, registry, False, None, sock, on_ready, stop,
                                                     metrics_server))
        return 0
    finally:
        if metrics_server is not None:
            metrics_server.close()
        if sock is not None:
            sock.close()
        asyncio.set_event_loop(None)
        loop.close()
        if metrics_file:
            _remove(metrics_file)
        if created:
            _remove(created)


def _new_metrics_file(path: str) -> str:
    """`path`, checked to be free: a metrics file there belongs to another
    server, or was left by one that crashed (FileExistsError saying so)."""
    if os.path.exists(path):
        raise FileExistsError(f"metrics file {path!r} exists: another server uses it, or one that crashed "
                              f"left it (delete it then)")
    return path


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# worker processes


def _worker_main(config: Dict[str, Any], registry_path: str, port: int, index: int, conn: Any,
                 sock: Optional[socket.socket]) -> None:
    """A worker: serve on the shared port (or the shared socket) until SIGTERM (or the parent dies)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole group: the parent decides
    from fastpacket.metrics import Registry

    raise_nofile()
    cfg = ServerConfig(**config)
    loop = new_event_loop(cfg.loop)
    asyncio.set_event_loop(loop)
    parent = os.getppid()
    stop = loop.create_future()
    _on_signals(loop, stop, (signal.SIGTERM,))

    def watch_parent() -> None:
        if os.getppid() != parent and not stop.done():
            log.warning("worker %d: parent %d is gone, stopping", index, parent)
            stop.set_result(None)
        else:
            loop.call_later(PARENT_POLL_S, watch_parent)

    loop.call_later(PARENT_POLL_S, watch_parent)
    registry = Registry(shared=registry_path).with_labels(worker=str(index))
    try:
        loop.run_until_complete(_serve_until_stopped(
            cfg, registry, sock is None, port, sock, lambda info: conn.send(("ready", index, info)), stop))
    except Exception as exc:  # tell the parent why, then fail
        try:
            conn.send(("error", index, f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise
    finally:
        loop.close()


class _Supervisor:
    def __init__(self, config: ServerConfig, workers: int, registry_path: str, port: int,
                 sock: Optional[socket.socket]) -> None:
        self.config = config
        self.n = workers
        self.registry_path = registry_path
        self.port = port
        self.sock = sock
        self.ctx = mp.get_context("spawn")
        self.procs: List[Any] = [None] * workers
        self.conns: List[Any] = [None] * workers
        self.restarts: List[float] = []

    def start(self, index: int) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        # a shared socket travels as a file descriptor the spawned child inherits
        p = self.ctx.Process(target=_worker_main, name=f"fastpacket-worker-{index}",
                             args=(asdict(self.config), self.registry_path, self.port, index, child, self.sock))
        p.start()
        child.close()
        self.procs[index] = p
        self.conns[index] = parent

    def pids(self) -> Dict[str, int]:
        """{worker label: pid} of the workers and of this supervisor
        ("supervisor"), for the process metrics (called from the metrics
        server's thread: it reads pids only, never polls a process, which
        would race the supervisor's own waitpid)."""
        out = {"supervisor": os.getpid()}
        for i, p in enumerate(list(self.procs)):
            if p is not None and p.pid is not None:
                out[str(i)] = p.pid
        return out

    def wait_ready(self, index: int, timeout: float) -> Dict[str, Any]:
        conn = self.conns[index]
        if not conn.poll(timeout):
            raise RuntimeError(f"worker {index} did not start within {timeout:g} s")
        try:
            kind, _, info = conn.recv()
        except EOFError:
            raise RuntimeError(f"worker {index} exited during start-up (exit code "
                               f"{self.procs[index].exitcode})") from None
        if kind != "ready":
            raise RuntimeError(f"worker {index} failed to start: {info}")
        return dict(info)

    def stop_all(self, timeout: float) -> List[Optional[int]]:
        for p in self.procs:
            if p is not None and p.is_alive():
                try:
                    os.kill(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + timeout
        codes = []
        for i, p in enumerate(self.procs):
            if p is None:
                continue
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                log.warning("worker %d (pid %d) did not stop within %g s: killing it", i, p.pid, timeout)
                p.kill()
                p.join(STOP_MARGIN_S)
            codes.append(p.exitcode)
        return codes


def run_workers(config: ServerConfig, workers: int, metrics: Optional[Tuple[str, int]] = None,
                on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None,
                start_timeout: float = WORKER_START_TIMEOUT_S, metrics_file: Optional[str] = None) -> int:
    """Serve with `workers` processes sharing the port (SO_REUSEPORT) or
    one listening socket (Unix or inherited), and one metrics registry (at
    `metrics_file`, else in a temporary directory; removed at exit), until
    SIGINT/SIGTERM; 0 after a clean stop."""
    from fastpacket.metrics import DEFAULT_SLOTS, Registry

    if metrics_file:
        _new_metrics_file(metrics_file)
    if isinstance(config.bus, str):  # fail at once, not once per worker
        from fastpacket.cluster import check_reachable

        asyncio.run(check_reachable(config.bus))
    shared = _listening_socket(config, shared=True)
    created = config.uds
    reserve: Optional[socket.socket] = None
    port = 0
    if shared is None:
        # One server per port: bind without SO_REUSEPORT (fails if anyone
        # listens there), then reserve the port with a bound, non-listening
        # SO_REUSEPORT socket until every worker listens on it.
        probe = bind_tcp(config.host, config.port)
        port = probe.getsockname()[1]
        probe.close()
        reserve = bind_tcp(config.host, port, reuse_port=True)
    tmpdir = tempfile.mkdtemp(prefix="fastpacket-serve-")
    registry_path = metrics_file or os.path.join(tmpdir, "metrics")
    sup: Optional[_Supervisor] = None
    metrics_server = None
    loop = new_event_loop()
    try:
        registry = Registry(shared=registry_path, slots=max(DEFAULT_SLOTS, SLOTS_PER_WORKER * (workers + 1)))
        sup = _Supervisor(config, workers, registry_path, port, shared)
        metrics_server = _start_metrics(registry, metrics, processes=sup.pids)
        for i in range(workers):
            sup.start(i)
        infos = [sup.wait_ready(i, start_timeout) for i in range(workers)]
        if reserve is not None:
            reserve.close()
        registry.gauge("workers").set(workers)
        for i in range(workers):  # at 0 from the start, like every series the workers create
            registry.with_labels(worker=str(i)).counter("worker_restarts_total")
        asyncio.set_event_loop(loop)
        stop = loop.create_future()
        _on_signals(loop, stop, (signal.SIGINT, signal.SIGTERM))
        info: Dict[str, Any] = dict(infos[0])
        info.update({"pid": os.getpid(), "workers": [i["pid"] for i in infos], "metrics_file": registry_path})
        if metrics_server is not None:
            info["metrics_port"] = metrics_server.port
        on_ready(info)
        loop.run_until_complete(_supervise(sup, registry, stop))
        if metrics_server is not None:
            metrics_server.close()
            metrics_server = None
        codes = sup.stop_all(config.graceful_timeout + STOP_MARGIN_S)
        sup = None
        bad = [c for c in codes if c != 0]
        if bad:
            log.error("workers exited with codes %s", codes)
            return 1
        return 0
    finally:
        if reserve is not None:
            reserve.close()
        if metrics_server is not None:
            metrics_server.close()
        if sup is not None:
            sup.stop_all(config.graceful_timeout + STOP_MARGIN_S)
        if shared is not None:
            shared.close()
        asyncio.set_event_loop(None)
        loop.close()
        if metrics_file:
            _remove(metrics_file)
        if created:
            _remove(created)
        shutil.rmtree(tmpdir, ignore_errors=True)


def account_lost_worker(registry: Any, index: int) -> int:
    """Worker `index` died without closing its sessions: count its open
    connections as closes with reason "worker_lost" and zero every gauge
    labelled with it, so that the series its replacement records into
    start from the truth. Returns the connections it lost."""
    label = str(index)
    view = registry.with_labels(worker=label)
    lost = max(0, int(round(view.gauge("connections").value)))
    if lost:
        view.counter("closes_total", {"reason": "worker_lost"}).inc(lost)
    for s in registry.series():
        if s.kind == "gauge" and s.labels.get("worker") == label:
            s.item.reset()
    return lost


async def _supervise(sup: _Supervisor, registry: Any, stop: "asyncio.Future[Any]",
                     max_restarts: int = MAX_RESTARTS, window: float = RESTART_WINDOW_S) -> None:
    """Restart workers that die, until `stop` (or too many restarts)."""
    while not stop.done():
        await asyncio.wait([stop], timeout=SUPERVISE_POLL_S)
        if stop.done():
            return
        for i, p in enumerate(sup.procs):
            if p.is_alive():
                continue
            lost = account_lost_worker(registry, i)
            now = time.monotonic()
            sup.restarts = [t for t in sup.restarts if now - t < window] + [now]
            if len(sup.restarts) > max_restarts:
                log.error("worker %d died (exit code %s); %d restarts within %g s: giving up",
                          i, p.exitcode, max_restarts, window)
                stop.set_result(None)
                return
            log.warning("worker %d (pid %d) died with exit code %s, %d connections lost: restarting it",
                        i, p.pid, p.exitcode, lost)
            registry.with_labels(worker=str(i)).counter("worker_restarts_total").inc()
            sup.start(i)
            try:
                await asyncio.get_running_loop().run_in_executor(None, sup.wait_ready, i, WORKER_START_TIMEOUT_S)
            except RuntimeError as exc:
                log.error("%s", exc)


def run_config(config: ServerConfig, workers: int = 1, metrics: Optional[Tuple[str, int]] = None,
               on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None,
               metrics_file: Optional[str] = None) -> int:
    """Serve `config` until SIGINT/SIGTERM: in this process for one worker,
    else in `workers` processes (one when SO_REUSEPORT is missing on TCP).
    `metrics` is (host, port) for the /metrics endpoint, or None;
    `metrics_file` a path for the shared registry (which must not exist;
    removed at exit). ``on_ready(info)`` gets host and port (or path), pid,
    workers (pids), metrics_port and metrics_file once serving. 0 after a
    clean stop, 1 when workers failed."""
    config.check()
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    if workers > 1 and not isinstance(config.app, str):
        raise ValueError(f"with workers > 1 the app must be an import string 'module:attr' (each worker "
                         f"process imports it), not {config.app!r}")
    if workers > 1 and config.bus is not None and not isinstance(config.bus, str):
        raise ValueError("with workers > 1 the bus must be a URL (each worker connects its own), not "
                         f"{config.bus!r}")
    if workers > 1 and config.ws_port == 0:
        raise ValueError("with workers > 1 the ws_port must be a fixed port (the workers share it with "
                         "SO_REUSEPORT), not 0")
    if workers > 1 and config.uds is None and config.fd is None and not reuse_port_available():
        log.warning("SO_REUSEPORT is not available on this platform: serving with 1 worker instead of %d", workers)
        workers = 1
    if workers == 1:
        return run_single(config, metrics, on_ready, metrics_file)
    return run_workers(config, workers, metrics, on_ready, metrics_file=metrics_file)


def run(
    app: Union[str, "Handler", Any], host: str = "127.0.0.1", port: int = 7777, *,
    workers: int = 1, factory: bool = False, app_args: Optional[Dict[str, Any]] = None,
    uds: Optional[str] = None, fd: Optional[int] = None,
    ssl_certfile: Optional[str] = None, ssl_keyfile: Optional[str] = None,
    ssl_keyfile_password: Optional[str] = None, ssl_ca_certs: Optional[str] = None,
    loop: Literal["asyncio", "uvloop"] = "asyncio",
    metrics_port: Optional[int] = None, metrics_host: str = "127.0.0.1", metrics_file: Optional[str] = None,
    graceful_timeout: float = DEFAULT_GRACEFUL_TIMEOUT_S,
    compress: bool = False, compress_threshold: int = 256,
    on_ready: Optional[Callable[[Dict[str, Any]], None]] = None,
    ws_port: Optional[int] = None, ws_path: str = "/",
    layout: HeaderLayout = GAME, max_packet_size: Optional[int] = None,
    recv_buffer: Optional[int] = None, send_buffer: Optional[int] = None,
    fill_ratio: Optional[float] = None, max_delay: Optional[float] = None,
    max_pending_bytes: Optional[int] = None, write_timeout: Optional[float] = None,
    packets_per_s: Optional[float] = None, bytes_per_s: Optional[float] = None,
    rate_burst: Optional[float] = None, rate_policy: Optional[Literal["drop", "close"]] = None,
    idle_timeout: Optional[float] = None, max_connections: Optional[int] = None,
    packet_timeout: Optional[float] = None,
    handler_queue_packets: Optional[int] = None, handler_queue_bytes: Optional[int] = None,
    max_inflate_bytes: Optional[int] = None,
    bus: "BusArg" = None,
) -> None:
    """Serve `app` until SIGINT or SIGTERM, then stop gracefully; the
    ``fastpacket serve`` command in code (see the module docstring for the
    app interface, the lifecycle, workers and metrics)::

        import fastpacket as fp

        def echo(session, batch):
            session.send_batch(batch)

        if __name__ == "__main__":
            fp.run(echo, port=7777)           # or fp.run("mymodule:app", workers=4)

    Args:
        app: the app object (a handler function, or an object with
            handler/handlers and the optional hooks) or an import string
            ``"module:attr"``, which ``workers > 1`` requires.
        host, port: the TCP address (IPv6 hosts too); port 0 picks one
            (``on_ready`` tells which).
        workers: processes serving (SO_REUSEPORT on TCP).
        factory, app_args: call the app (with app_args) to make it.
        uds: serve on this Unix socket path instead of TCP.
        fd: serve on this inherited, bound socket (TCP or Unix) instead.
        ssl_certfile, ssl_keyfile, ssl_keyfile_password: TLS (PEM files).
        ssl_ca_certs: require client certificates signed by these CAs.
        loop: "asyncio" or "uvloop".
        metrics_port, metrics_host: serve /metrics there (port 0: any).
        metrics_file: the shared metrics file (``fastpacket top`` reads it).
        graceful_timeout: seconds a stop may take before what is left is aborted.
        compress, compress_threshold: lz4 aggregation of outgoing bursts.
        on_ready: called once serving with a dict: host and port (or
            path), pid, workers, metrics_port, metrics_file, ws_port.
        ws_port, ws_path: also serve the app over WebSocket
            (``ws://host:ws_port/ws_path``, wss with TLS; fastpacket.ws,
            the ``fastpacket[ws]`` extra), its sessions in the same groups
            as the TCP ones; the app's ``pages`` are served there to plain
            HTTP GETs. Port 0 picks one (one process only).
        layout, max_packet_size, ...: per-connection options
            (fastpacket.aio.Options; None keeps the default).
        bus: a Redis URL (``redis://host:port/db``, ``redis+cluster://host:port``)
            or (one process) a fastpacket.cluster.RedisBus: the app's groups
            span every worker and server sharing it (fastpacket.cluster).

    Raises:
        fastpacket.AddressInUse: another process serves the address (or the metrics port).
        fastpacket.BusUnavailable: the bus cannot reach Redis (one process; with
            workers, a RuntimeError saying so).
        ValueError, TypeError: a bad argument or an app that cannot be served.
        RuntimeError: a worker failed to start, or workers exited with errors.
    """
    limits = {"layout": layout, "max_packet_size": max_packet_size, "recv_buffer": recv_buffer,
              "send_buffer": send_buffer, "fill_ratio": fill_ratio, "max_delay": max_delay,
              "max_pending_bytes": max_pending_bytes, "write_timeout": write_timeout,
              "packets_per_s": packets_per_s, "bytes_per_s": bytes_per_s, "rate_burst": rate_burst,
              "rate_policy": rate_policy, "idle_timeout": idle_timeout, "max_connections": max_connections,
              "packet_timeout": packet_timeout, "handler_queue_packets": handler_queue_packets,
              "handler_queue_bytes": handler_queue_bytes, "max_inflate_bytes": max_inflate_bytes}
    options = {k: v for k, v in limits.items() if v is not None and not (k == "layout" and v is GAME)}
    config = ServerConfig(host=host, port=port, app=app, factory=factory, app_args=dict(app_args or {}),
                          loop=loop, compress=compress, compress_threshold=compress_threshold, options=options,
                          uds=uds, fd=fd, ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile,
                          ssl_keyfile_password=ssl_keyfile_password, ssl_ca_certs=ssl_ca_certs,
                          graceful_timeout=graceful_timeout, bus=bus, ws_port=ws_port, ws_path=ws_path)
    metrics = (metrics_host, metrics_port) if metrics_port is not None else None
    code = run_config(config, workers, metrics, on_ready or (lambda info: None), metrics_file=metrics_file)
    if code != 0:
        raise RuntimeError("workers exited with errors (see the log)")
