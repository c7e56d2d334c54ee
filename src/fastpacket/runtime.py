"""The runtime: serving an application in one process or in N worker
processes, until SIGINT or SIGTERM (``fastpacket serve`` is a thin argument
parser over it).

An application is named by an import string ``"package.module:attr"`` (the
built-in ones live in ``fastpacket.apps``): ``attr`` is a handler function
``handler(session, batch)``, or an object with ``handler`` or ``handlers``
(a dict ``{type: handler}``) and optionally ``on_connect(session)`` and
``on_close(session)``; with ``factory=True`` it is a callable that returns
such an object, called with ``app_args``. Worker processes import it by
that name, so it must be importable from a fresh interpreter.

``run(config, workers)`` serves in this process (``workers=1``) or in N
worker processes that each listen on the same port with SO_REUSEPORT (the
kernel spreads new connections over them; Linux, and BSDs with their own
balancing). The parent supervises: it restarts a worker that dies, and on
SIGINT/SIGTERM sends SIGTERM to every worker, each of which stops
listening, flushes and closes its sessions ("server shutdown") and exits 0.

Metrics: the workers of one server record into one shared-memory Registry
(``fp.Registry(shared=path)``: ``metrics_file``, or a file in a private
temporary directory, removed at exit), each through a view labelled
``worker="<index>"``, so ``metrics`` serves the whole server, per worker,
at ``http://metrics_host:metrics_port/metrics`` (prometheus_client's HTTP
server, ``fastpacket.metrics.start_http_server``) with every worker's
process metrics. When a worker dies, the supervisor counts its open
connections as closed with reason ``worker_lost``, resets its gauges and
starts a new worker with the same index, which records into the same
series.

Where SO_REUSEPORT is missing, ``workers > 1`` falls back to one worker with
a logged warning.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import multiprocessing as mp
import os
import shutil
import signal
import socket
import tempfile
import time
from dataclasses import dataclass, field, asdict
from typing import Any, Callable, Dict, List, Optional

from fastpacket.system import LOOPS, new_event_loop, raise_nofile

__all__ = ["ServerConfig", "load_app", "app_kwargs", "start_server", "run", "reuse_port_available",
           "account_lost_worker"]

log = logging.getLogger("fastpacket.runtime")

#: Slots of the shared metrics file per worker: the adapter's families,
#: every close and drop reason, and room for the application's own.
SLOTS_PER_WORKER = 64


@dataclass
class ServerConfig:
    """What ``run`` serves. ``app`` is an import string ``"module:attr"``
    (with ``factory=True``, attr is called with ``app_args`` to make the
    app); ``options`` are fastpacket.aio.Options fields (limits, buffers)
    passed to ``fp.aio.serve``."""

    host: str = "127.0.0.1"
    port: int = 7777
    app: str = "fastpacket.apps.relay:Relay"
    factory: bool = True
    app_args: Dict[str, Any] = field(default_factory=dict)
    loop: str = "asyncio"
    compress: bool = False
    compress_threshold: int = 256     # bytes: a relay's bursts are small, the Aggregator's default is 1024
    options: Dict[str, Any] = field(default_factory=dict)

    def check(self) -> "ServerConfig":
        """Validates the settings (ValueError naming the bad one); returns self."""
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be in [0, 65535], got {self.port}")
        if self.loop not in LOOPS:
            raise ValueError(f"loop must be one of {LOOPS}, got {self.loop!r}")
        if self.loop == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                raise ValueError("uvloop is not installed (pip install uvloop)") from None
        from fastpacket.aio import Options

        Options.from_kwargs(dict(self.options))  # unknown or bad limits raise here, before any process starts
        app_kwargs(load_app(self.app, self.factory, self.app_args))  # so does an app that cannot be served
        return self


def load_app(spec: str, factory: bool = False, app_args: Optional[Dict[str, Any]] = None) -> Any:
    """The application an import string ``"package.module:attr"`` names
    (``attr`` may be dotted); with ``factory``, ``attr(**app_args)``.
    ValueError when the string is malformed or names nothing."""
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
    if factory:
        if not callable(obj):
            raise ValueError(f"app {spec!r} is not callable, so it cannot be a factory")
        obj = obj(**(app_args or {}))
    elif app_args:
        raise ValueError(f"app {spec!r}: app_args are only for factories")
    return obj


def app_kwargs(app: Any) -> Dict[str, Any]:
    """The ``fp.aio.serve`` keyword arguments that serve `app` (a handler
    function, or an object with handler/handlers and on_connect/on_close)."""
    handler = getattr(app, "handler", None)
    handlers = getattr(app, "handlers", None)
    if handler is None and handlers is None:
        if not callable(app):
            raise ValueError(f"{app!r} is not an app: it has no handler or handlers and is not callable")
        return {"handler": app}
    kwargs: Dict[str, Any] = {"handler": handler, "handlers": handlers}
    for hook in ("on_connect", "on_close"):
        fn = getattr(app, hook, None)
        if fn is not None:
            kwargs[hook] = fn
    return kwargs


async def start_server(config: ServerConfig, registry: Any = None, reuse_port: bool = False,
                       port: Optional[int] = None, app: Any = None) -> Any:
    """Start the configured application (or `app`, already loaded) on the
    running loop; the PacketServer."""
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
    return await aio.serve(host=config.host, port=config.port if port is None else port, reuse_port=reuse_port,
                           **app_kwargs(app), **options)


# ---------------------------------------------------------------------------
# one process


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


async def _serve_until_stopped(config: ServerConfig, registry: Any, reuse_port: bool, port: Optional[int],
                               metrics: Optional[tuple], on_ready: Callable[[Dict[str, Any]], Any],
                               stop: asyncio.Future) -> Dict[str, int]:
    server = await start_server(config, registry, reuse_port=reuse_port, port=port)
    metrics_server = None
    info: Dict[str, Any] = {"host": config.host, "port": server.port, "pid": os.getpid()}
    if metrics is not None:
        from fastpacket.metrics import start_http_server

        metrics_server = start_http_server(registry, metrics[1], metrics[0])
        info["metrics_port"] = metrics_server.port
    if registry is not None and registry.path is not None:
        info["metrics_file"] = registry.path
    on_ready(info)
    try:
        await stop
    finally:
        if metrics_server is not None:
            metrics_server.close()
        server.close()  # stop listening, flush and close every session ("server shutdown")
        await server.wait_closed()
    return server.closes


def _on_signals(loop: asyncio.AbstractEventLoop, stop: asyncio.Future, signals: tuple) -> None:
    def fire(signum: int) -> None:
        if not stop.done():
            log.info("signal %s: stopping", signal.Signals(signum).name)
            stop.set_result(signum)

    for sig in signals:
        loop.add_signal_handler(sig, fire, sig)


def run_single(config: ServerConfig, metrics: Optional[tuple] = None,
               on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None,
               metrics_file: Optional[str] = None) -> int:
    """Serve in this process until SIGINT/SIGTERM; 0 after a clean stop.
    With `metrics_file`, the registry is a shared file there (created here,
    removed at exit) that ``fastpacket top`` can read."""
    from fastpacket.metrics import Registry

    raise_nofile()
    registry = Registry(shared=_new_metrics_file(metrics_file)) if metrics_file else Registry()
    loop = new_event_loop(config.loop)
    asyncio.set_event_loop(loop)
    try:
        stop = loop.create_future()
        _on_signals(loop, stop, (signal.SIGINT, signal.SIGTERM))
        loop.run_until_complete(_serve_until_stopped(config, registry, False, None, metrics, on_ready, stop))
        return 0
    finally:
        asyncio.set_event_loop(None)
        loop.close()
        if metrics_file:
            _remove(metrics_file)


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


def _worker_main(config: Dict[str, Any], registry_path: str, port: int, index: int, conn: Any) -> None:
    """A worker: serve on the shared port until SIGTERM (or the parent dies)."""
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
            loop.call_later(1.0, watch_parent)

    loop.call_later(1.0, watch_parent)
    registry = Registry(shared=registry_path).with_labels(worker=str(index))
    try:
        loop.run_until_complete(_serve_until_stopped(
            cfg, registry, True, port, None, lambda info: conn.send(("ready", index, info)), stop))
    except Exception as exc:  # tell the parent why, then fail
        try:
            conn.send(("error", index, f"{type(exc).__name__}: {exc}"))
        except OSError:
            pass
        raise
    finally:
        loop.close()


class _Supervisor:
    def __init__(self, config: ServerConfig, workers: int, registry_path: str, port: int) -> None:
        self.config = config
        self.n = workers
        self.registry_path = registry_path
        self.port = port
        self.ctx = mp.get_context("spawn")
        self.procs: List[Any] = [None] * workers
        self.conns: List[Any] = [None] * workers
        self.restarts: List[float] = []

    def start(self, index: int) -> None:
        parent, child = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(target=_worker_main, name=f"fastpacket-worker-{index}",
                             args=(asdict(self.config), self.registry_path, self.port, index, child))
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
        return info

    def stop_all(self, timeout: float = 10.0) -> List[Optional[int]]:
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
                p.join(5)
            codes.append(p.exitcode)
        return codes


def run_workers(config: ServerConfig, workers: int, metrics: Optional[tuple] = None,
                on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None,
                start_timeout: float = 60.0, metrics_file: Optional[str] = None) -> int:
    """Serve with `workers` processes sharing the port (SO_REUSEPORT) and
    one metrics registry (at `metrics_file`, else in a temporary directory;
    removed at exit), until SIGINT/SIGTERM; 0 after a clean stop."""
    from fastpacket.metrics import DEFAULT_SLOTS, Registry

    if metrics_file:
        _new_metrics_file(metrics_file)
    tmpdir = tempfile.mkdtemp(prefix="fastpacket-serve-")
    registry_path = metrics_file or os.path.join(tmpdir, "metrics")
    registry = Registry(shared=registry_path, slots=max(DEFAULT_SLOTS, SLOTS_PER_WORKER * (workers + 1)))
    # Reserve the port (port 0: pick one) with a bound, non-listening
    # SO_REUSEPORT socket, so that every worker binds the same one.
    family = socket.AF_INET6 if ":" in config.host else socket.AF_INET
    reserve = socket.socket(family, socket.SOCK_STREAM)
    sup: Optional[_Supervisor] = None
    metrics_server = None
    loop = new_event_loop()
    try:
        reserve.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        reserve.bind((config.host, config.port))
        port = reserve.getsockname()[1]
        sup = _Supervisor(config, workers, registry_path, port)
        for i in range(workers):
            sup.start(i)
        infos = [sup.wait_ready(i, start_timeout) for i in range(workers)]
        reserve.close()
        registry.gauge("workers").set(workers)
        for i in range(workers):  # at 0 from the start, like every series the workers create
            registry.with_labels(worker=str(i)).counter("worker_restarts_total")
        asyncio.set_event_loop(loop)
        stop = loop.create_future()
        _on_signals(loop, stop, (signal.SIGINT, signal.SIGTERM))
        info: Dict[str, Any] = {"host": config.host, "port": port, "pid": os.getpid(),
                                "workers": [i["pid"] for i in infos], "metrics_file": registry_path}
        if metrics is not None:
            from fastpacket.metrics import start_http_server

            metrics_server = start_http_server(registry, metrics[1], metrics[0], processes=sup.pids)
            info["metrics_port"] = metrics_server.port
        on_ready(info)
        loop.run_until_complete(_supervise(sup, registry, stop))
        if metrics_server is not None:
            metrics_server.close()
            metrics_server = None
        codes = sup.stop_all()
        sup = None
        bad = [c for c in codes if c != 0]
        if bad:
            log.error("workers exited with codes %s", codes)
            return 1
        return 0
    finally:
        reserve.close()
        if metrics_server is not None:
            metrics_server.close()
        if sup is not None:
            sup.stop_all()
        asyncio.set_event_loop(None)
        loop.close()
        if metrics_file:
            _remove(metrics_file)
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


async def _supervise(sup: _Supervisor, registry: Any, stop: asyncio.Future, max_restarts: int = 5,
                     window: float = 60.0) -> None:
    """Restart workers that die, until `stop` (or too many restarts)."""
    while not stop.done():
        await asyncio.wait([stop], timeout=0.2)
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
                await asyncio.get_running_loop().run_in_executor(None, sup.wait_ready, i, 60.0)
            except RuntimeError as exc:
                log.error("%s", exc)


def run(config: ServerConfig, workers: int = 1, metrics: Optional[tuple] = None,
        on_ready: Callable[[Dict[str, Any]], Any] = lambda info: None, metrics_file: Optional[str] = None) -> int:
    """Serve until SIGINT/SIGTERM: in this process for one worker, else in
    `workers` processes (one when SO_REUSEPORT is missing). `metrics` is
    (host, port) for the /metrics endpoint, or None; `metrics_file` a path
    for the shared registry (which must not exist; removed at exit).
    ``on_ready(info)`` gets host, port, pid, workers (pids), metrics_port
    and metrics_file once serving."""
    config.check()
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if workers > 1 and not reuse_port_available():
        log.warning("SO_REUSEPORT is not available on this platform: serving with 1 worker instead of %d", workers)
        workers = 1
    if workers == 1:
        return run_single(config, metrics, on_ready, metrics_file)
    return run_workers(config, workers, metrics, on_ready, metrics_file=metrics_file)
