"""The ``fastpacket`` command: argument parsing and the serve, load and
bench commands (demo lives in fastpacket.cli.demo, top in fastpacket.cli.top)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any, Coroutine, Dict, Literal, Optional, Sequence, Tuple, TypeVar

from fastpacket import __version__

from fastpacket.cli.bench import SECTIONS, run_sections
from fastpacket.system import new_event_loop
from fastpacket.cli.report import (FAILED, OK, USAGE, Progress, fmt_closes, fmt_latency, fmt_rtt, fmt_savings,
                                   format_markdown, format_rate, format_report, format_table)

__all__ = ["build_parser", "main", "load_kwargs", "input_load_kwargs", "check_load_args", "parse_address",
           "fmt_delivery"]

#: Players a load (and the demo) plays when --connections is not given: the
#: relay's movement load, the tick app's input load.
T = TypeVar("T")

DEFAULT_CONNECTIONS = {"move": 50, "input": 1000}
#: INPUTs per second per player of the input load when --rate is not given.
DEFAULT_INPUT_RATE = 30.0


def loop_kind(args: argparse.Namespace) -> Literal["asyncio", "uvloop"]:
    """The event loop kind the --uvloop flag asks for."""
    return "uvloop" if getattr(args, "uvloop", False) else "asyncio"


def _cmd_bench(args: argparse.Namespace) -> int:
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return USAGE
    progress = (lambda s: print(f"measuring {s} ...", file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda s: None)
    rows = run_sections(names, quick=args.quick, progress=progress)
    note = ("rates are medians of interleaved repetitions; 'vs plain' is the same-run ratio "
            "to the plain-Python way of doing the same job")
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    elif args.markdown:
        print(format_markdown(rows))
        print(f"\n{note} (`fastpacket bench{' --quick' if args.quick else ''}`, Python "
              f"{sys.version.split()[0]}, {os.cpu_count()} CPUs)")
    else:
        print(format_table(rows))
        print(f"\n{note}")
    return OK


def load_mode(args: argparse.Namespace) -> str:
    """The load the options ask for: "input" (the tick app's players: ``load
    --mode input``, ``demo --app tick``) or "move" (the relay's)."""
    return "input" if getattr(args, "mode", "move") == "input" or getattr(args, "app", None) == "tick" else "move"


def input_load_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``input_load`` keyword arguments from the load options."""
    return {"connections": args.connections, "seconds": args.seconds, "rate": args.rate or DEFAULT_INPUT_RATE}


def load_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    """``move_load`` keyword arguments from the load options."""
    return {"connections": args.connections, "seconds": args.seconds, "rate": args.rate, "window": args.window,
            "payload_size": args.payload, "rooms": args.rooms,
            "compress": args.compress, "compress_threshold": args.compress_threshold}


def check_load_args(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the load options, or None (a missing
    --connections is set to the default of the load's mode here)."""
    if args.connections is None:
        args.connections = DEFAULT_CONNECTIONS[load_mode(args)]
    from fastpacket.apps.tick import MAX_HZ

    if not 0 < getattr(args, "hz", 1.0) <= MAX_HZ:
        return f"--hz must be in (0, {MAX_HZ:g}], got {args.hz}"
    if getattr(args, "radius", 0) < 0:
        return f"--radius must be >= 0, got {args.radius}"
    if args.connections < 1:
        return f"--connections must be >= 1, got {args.connections}"
    if not args.seconds > 0:
        return f"--seconds must be > 0, got {args.seconds}"
    if args.rate < 0:
        return f"--rate must be >= 0, got {args.rate}"
    if args.window < 1:
        return f"--window must be >= 1, got {args.window}"
    from fastpacket.apps.relay import MOVE_SIZE

    if not MOVE_SIZE <= args.payload <= 65535 - 12:
        return f"--payload must be in [{MOVE_SIZE}, {65535 - 12}] bytes, got {args.payload}"
    if args.rooms is not None and args.rooms < 1:
        return f"--rooms must be >= 1, got {args.rooms}"
    if getattr(args, "uvloop", False):
        try:
            import uvloop  # noqa: F401
        except ImportError:
            return "--uvloop: uvloop is not installed (pip install uvloop)"
    return None


def _run_load(args: argparse.Namespace, progress: Progress, load: Coroutine[Any, Any, T]) -> Optional[T]:
    """Runs a load coroutine on the loop --uvloop asks for; None (the reason
    printed) when it could not connect."""
    loop = new_event_loop(loop_kind(args))
    try:
        return loop.run_until_complete(load)
    except ConnectionError as exc:
        progress.clear()
        print(f"fastpacket load: {exc}", file=sys.stderr)
        return None
    finally:
        progress.clear()
        loop.close()


def _cmd_load(args: argparse.Namespace) -> int:
    from fastpacket.cli.loadgen import move_load

    problem = check_load_args(args)
    if problem:
        print(f"fastpacket load: {problem}", file=sys.stderr)
        return USAGE
    if load_mode(args) == "input":
        return _cmd_input_load(args)
    progress = Progress()

    def on_progress(p: Dict[str, Any]) -> None:
        rate = p["sent"] / p["elapsed"] if p["elapsed"] else 0.0
        progress.show(f"{p['elapsed']:5.1f}/{args.seconds:g} s  {format_rate(rate)} packets/s sent  "
                      f"{format_rate(p['received'] / p['elapsed'] if p['elapsed'] else 0)} received  "
                      f"{p['connections']} connections")

    try:
        servers = [parse_address(a) for a in args.server] if args.server else None
    except ValueError as exc:
        print(f"fastpacket load: {exc}", file=sys.stderr)
        return USAGE
    result = _run_load(args, progress, move_load(args.host, args.port, on_progress=on_progress, servers=servers,
                                                 **load_kwargs(args)))
    if result is None:
        return FAILED
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        r = result
        rows = [
            ("load", f"{r.connections} players in {r.rooms} rooms, {r.mode}, {r.seconds:.1f} s"),
            ("packets/s sent", f"{format_rate(r.sent_per_s)} (MOVEs)"),
            ("packets/s received", f"{format_rate(r.received_per_s)} (own echoes and relayed MOVEs)"),
            ("round trips/s", format_rate(r.echoed_per_s)),
            ("MB/s sent / received", f"{r.bytes_sent / r.seconds / 1e6:.1f} / {r.bytes_received / r.seconds / 1e6:.1f}"),
            ("RTT p50 / p95 / p99 / max", fmt_rtt(r.rtt_us)),
            ("delivery check", fmt_delivery(r)),
            ("compression savings", fmt_savings(r.compression)),
            ("closes by reason", fmt_closes(r.closes)),
        ]
        against = ", ".join(args.server) if args.server else f"{args.host}:{args.port}"
        print(format_report(f"fastpacket load against {against}", rows))
    for e in result.errors[:10]:
        print(f"fastpacket load: {e}", file=sys.stderr)
    return OK if result.ok else FAILED


def parse_address(text: str) -> Tuple[str, int]:
    """(host, port) of ``HOST:PORT`` (``[::1]:PORT`` for IPv6); ValueError naming it."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"--server takes HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def fmt_delivery(r: Any) -> str:
    """The delivery check of a move load, as a table cell."""
    if not r.delivery_checked:
        return "not checked (no player heard another: an echo server, not a relay)"
    verdict = "ok" if not (r.missing or r.duplicates or r.out_of_order) else "FAILED"
    return (f"{verdict}: {r.delivered:,} of {r.expected:,} MOVEs delivered; {r.missing:,} missing, "
            f"{r.duplicates:,} duplicated, {r.out_of_order:,} out of order")


def _resolve_app(args: argparse.Namespace) -> Tuple[str, bool, Dict[str, Any]]:
    """(import string, factory, app_args) of the APP argument: a built-in
    short name (relay, echo, ...) or ``module:attr``."""
    from fastpacket.apps import BUILTIN

    name = args.app or args.app_flag or "relay"
    if args.app and args.app_flag and args.app != args.app_flag:
        raise ValueError(f"APP {args.app!r} and --app {args.app_flag!r} disagree: give one")
    if name in BUILTIN:
        spec, factory = BUILTIN[name]
        app_args = {"relay": {"rooms": args.rooms}, "tick": {"hz": args.hz, "radius": args.radius}}.get(name, {})
        return spec, factory, app_args
    if ":" not in name:
        raise ValueError(f"APP must be one of {sorted(BUILTIN)} or 'module:attr', got {name!r}")
    return name, args.factory, {}


def _cmd_input_load(args: argparse.Namespace) -> int:
    """``fastpacket load --mode input``: players against the tick app."""
    from fastpacket.cli.loadgen import input_load

    progress = Progress()

    def on_progress(p: Dict[str, Any]) -> None:
        e = p["elapsed"] or 1.0
        progress.show(f"{p['elapsed']:5.1f}/{args.seconds:g} s  {format_rate(p['sent'] / e)} INPUTs/s sent  "
                      f"{format_rate(p['states'] / e)} STATEs/s received  {p['connections']} connections")

    result = _run_load(args, progress, input_load(args.host, args.port, on_progress=on_progress,
                                                  **input_load_kwargs(args)))
    if result is None:
        return FAILED
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        r = result
        rows = [
            ("load", f"{r.connections} players, {r.rate:g} INPUTs/s each, {r.seconds:.1f} s"),
            ("packets/s sent", f"{format_rate(r.sent_per_s)} (INPUTs)"),
            ("packets/s received", f"{format_rate(r.states_per_s)} (the players' own STATEs)"),
            ("input -> STATE p50 / p95 / p99 / max", fmt_latency(r.latency_us)),
            ("closes by reason", fmt_closes(r.closes)),
        ]
        print(format_report(f"fastpacket load (input) against {args.host}:{args.port}", rows))
    for e in result.errors[:10]:
        print(f"fastpacket load: {e}", file=sys.stderr)
    return OK if result.ok else FAILED


def _cmd_serve(args: argparse.Namespace) -> int:
    from fastpacket.errors import AddressInUse
    from fastpacket.runtime import format_address, run

    options: Dict[str, Any] = {}
    for name in ("max_packet_size", "packets_per_s", "bytes_per_s", "rate_burst", "rate_policy", "idle_timeout",
                 "packet_timeout", "max_connections", "max_pending_bytes", "write_timeout", "handler_queue_packets",
                 "handler_queue_bytes", "max_inflate_bytes"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if "max_packet_size" in options:
        options.setdefault("recv_buffer", max(65536, options["max_packet_size"]))
        options.setdefault("send_buffer", max(65536, options["max_packet_size"]))
        options.setdefault("max_pending_bytes", max(1 << 20, options["send_buffer"]))
    # `fastpacket serve mod:app` imports from the current directory, as uvicorn does
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        spec, factory, app_args = _resolve_app(args)
    except ValueError as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return USAGE
    label = args.app or args.app_flag or "relay"

    def on_ready(info: Dict[str, Any]) -> None:
        workers = info.get("workers")
        where = f"{len(workers)} workers (pids {' '.join(map(str, workers))})" if workers else f"pid {info['pid']}"
        address = f"unix:{info['path']}" if "path" in info else format_address(info["host"], info["port"])
        line = f"fastpacket serve: {label} on {address}{' (TLS)' if info.get('tls') else ''}, {where}"
        if args.bus:
            from fastpacket.cluster import mask_url

            line += f", bus {mask_url(args.bus)}"
        if "ws_port" in info:
            scheme = "wss" if info.get("tls") else "ws"
            line += f", WebSocket at {scheme}://{format_address(info['host'], info['ws_port'])}{args.ws_path}"
        if "metrics_port" in info:
            line += f", metrics at http://{format_address(args.metrics_host, info['metrics_port'])}/metrics"
        if "metrics_file" in info:
            line += f", metrics file {info['metrics_file']}"
        print(line + "; Ctrl-C to stop", flush=True)

    try:
        run(spec, args.host, args.port, workers=args.workers, factory=factory, app_args=app_args, uds=args.uds,
            fd=args.fd, ssl_certfile=args.ssl_certfile, ssl_keyfile=args.ssl_keyfile,
            ssl_keyfile_password=args.ssl_keyfile_password, ssl_ca_certs=args.ssl_ca_certs, loop=loop_kind(args),
            metrics_port=args.metrics_port, metrics_host=args.metrics_host, metrics_file=args.metrics_file,
            graceful_timeout=args.graceful_timeout, compress=args.compress,
            compress_threshold=args.compress_threshold, on_ready=on_ready, bus=args.bus, ws_port=args.ws_port,
            ws_path=args.ws_path, **options)
    except (ValueError, TypeError) as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return USAGE
    except AddressInUse as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return FAILED
    except (OSError, RuntimeError) as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return FAILED
    print("fastpacket serve: stopped", flush=True)
    return OK


def _add_load_args(p: argparse.ArgumentParser, seconds: float) -> None:
    p.add_argument("--connections", type=int, default=None,
                   help=f"simulated players (default {DEFAULT_CONNECTIONS['move']}; "
                        f"{DEFAULT_CONNECTIONS['input']} for the tick app)")
    p.add_argument("--seconds", type=float, default=seconds, help=f"sending time (default {seconds:g})")
    p.add_argument("--rate", type=float, default=0.0,
                   help="MOVE packets/s per connection; 0 (default): pipelined, --window in flight "
                        f"(tick app: INPUTs/s per player, default {DEFAULT_INPUT_RATE:g})")
    p.add_argument("--window", type=int, default=16, help="own MOVEs in flight per connection when pipelined (default 16)")
    p.add_argument("--payload", type=int, default=20, help="MOVE payload bytes, >= 20 (default 20)")
    p.add_argument("--rooms", type=int, default=None, help="rooms the players join (default: one per 10 players)")
    p.add_argument("--compress", action="store_true", help="lz4 aggregation on both ends")
    p.add_argument("--compress-threshold", type=int, default=256,
                   help="compress a burst of at least this many bytes (default 256)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def _add_tick_args(p: argparse.ArgumentParser) -> None:
    from fastpacket.apps.tick import DEFAULT_HZ

    p.add_argument("--hz", type=float, default=DEFAULT_HZ, help=f"tick app: ticks per second (default {DEFAULT_HZ:g})")
    p.add_argument("--radius", type=int, default=0,
                   help="tick app: send each player the states within this distance (default 0: its own state)")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fastpacket`` command."""
    from fastpacket.aio import Options

    parser = argparse.ArgumentParser(prog="fastpacket", description="fastpacket: the packet core for Python real-time servers")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a game relay (or tick server) and a load generator on 127.0.0.1, then a table",
                          description="Starts a game relay server (--app tick: the authoritative tick server) in "
                                      "this process and a load generator in another on 127.0.0.1, runs for "
                                      "--seconds, prints what the server did.")
    _add_load_args(demo, seconds=10.0)
    demo.add_argument("--app", choices=["relay", "tick"], default="relay",
                      help="relay (default): MOVEs relayed to rooms; tick: the authoritative tick server")
    _add_tick_args(demo)
    demo.add_argument("--browser", action="store_true",
                      help="also serve the relay's live view (a page over WebSocket, needs 'fastpacket[ws]') and "
                           "print its URL: open it to watch the players move")
    demo.add_argument("--ws-port", type=int, default=0, metavar="N",
                      help="the live view's port with --browser (default 0: any free one)")
    from fastpacket.cli.demo import cmd_demo

    demo.set_defaults(func=cmd_demo)

    d = Options()
    from fastpacket.apps import BUILTIN
    from fastpacket.runtime import DEFAULT_GRACEFUL_TIMEOUT_S

    serve = sub.add_parser("serve", help="serve an app (yours, or the relay or echo) until Ctrl-C / SIGTERM",
                           description="Serve APP until SIGINT or SIGTERM, then stop gracefully (stop accepting, "
                                       "the app's shutdown hook, flush and close every session, at most "
                                       "--graceful-timeout seconds). Limits default to fastpacket.aio.Options.")
    serve.add_argument("app", nargs="?", default=None, metavar="APP",
                       help=f"module:attr (an app object, or a handler function; --factory: a callable making "
                            f"one), imported from the current directory, or a built-in app: "
                            f"{', '.join(sorted(BUILTIN))} (default relay)")
    serve.add_argument("--app", dest="app_flag", default=None, help=argparse.SUPPRESS)  # the former spelling
    serve.add_argument("--factory", action="store_true", help="APP names a callable that returns the app")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1; 0.0.0.0 or :: for all)")
    serve.add_argument("--port", type=int, default=7777, help="TCP port (default 7777; 0: any free one)")
    serve.add_argument("--uds", default=None, metavar="PATH", help="serve on this Unix socket instead of TCP")
    serve.add_argument("--ws-port", type=int, default=None, metavar="N",
                       help="also serve the app over WebSocket on this port, in the same rooms (browsers; "
                            "needs pip install 'fastpacket[ws]'; 0: any free one)")
    serve.add_argument("--ws-path", default="/", metavar="PATH", help="the WebSocket path (default /)")
    serve.add_argument("--fd", type=int, default=None, metavar="N",
                       help="serve on this inherited, bound socket (as systemd socket activation passes it)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port with SO_REUSEPORT (default 1: in this process)")
    serve.add_argument("--ssl-certfile", default=None, metavar="PEM", help="TLS: the server's certificate chain")
    serve.add_argument("--ssl-keyfile", default=None, metavar="PEM", help="TLS: its private key")
    serve.add_argument("--ssl-keyfile-password", default=None, help="TLS: the key's password, if encrypted")
    serve.add_argument("--ssl-ca-certs", default=None, metavar="PEM",
                       help="TLS: require client certificates signed by these CAs")
    serve.add_argument("--graceful-timeout", type=float, default=DEFAULT_GRACEFUL_TIMEOUT_S, metavar="S",
                       help=f"seconds a stop may take before open sessions are aborted "
                            f"(default {DEFAULT_GRACEFUL_TIMEOUT_S:g})")
    serve.add_argument("--bus", default=None, metavar="URL",
                       help="share the app's groups (the relay's rooms) with every worker and server on this "
                            "Redis: redis://host:port/db, or redis+cluster://host:port for a Redis Cluster "
                            "(needs pip install 'fastpacket[redis]')")
    serve.add_argument("--rooms", type=int, default=16, help="relay rooms for players that move before joining (default 16)")
    _add_tick_args(serve)
    serve.add_argument("--uvloop", action="store_true", help="run on uvloop")
    serve.add_argument("--compress", action="store_true", help="lz4 aggregation of outgoing bursts")
    serve.add_argument("--compress-threshold", type=int, default=256,
                       help="compress a burst of at least this many bytes (default 256)")
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus text at /metrics on this port")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    serve.add_argument("--metrics-file", default=None,
                       help="shared metrics file to create (fastpacket top reads it; must not exist; removed at exit)")
    limits = serve.add_argument_group("per-connection limits")
    limits.add_argument("--max-packet-size", type=int, default=None, help=f"bytes (default {d.max_packet_size})")
    limits.add_argument("--packets-per-s", type=float, default=None, help="token-bucket rate, 0: unlimited (default 0)")
    limits.add_argument("--bytes-per-s", type=float, default=None, help="token-bucket rate, 0: unlimited (default 0)")
    limits.add_argument("--rate-burst", type=float, default=None, help=f"seconds of rate in the bucket (default {d.rate_burst:g})")
    limits.add_argument("--rate-policy", choices=["drop", "close"], default=None, help="over the rate (default drop)")
    limits.add_argument("--idle-timeout", type=float, default=None,
                        help="seconds without a complete packet (default: none)")
    limits.add_argument("--packet-timeout", type=float, default=None,
                        help="seconds a begun packet may take to complete (default: none)")
    limits.add_argument("--max-inflate-bytes", type=int, default=None,
                        help="with --compress: raw bytes one read may inflate (default: 4 receive buffers)")
    limits.add_argument("--max-connections", type=int, default=None, help="per worker (default: none)")
    limits.add_argument("--max-pending-bytes", type=int, default=None,
                        help=f"output queued for a slow peer before it is cut off (default {d.max_pending_bytes})")
    limits.add_argument("--write-timeout", type=float, default=None,
                        help=f"seconds a peer may not read before it is cut off (default {d.write_timeout:g})")
    limits.add_argument("--handler-queue-packets", type=int, default=None,
                        help=f"packets held for a busy async handler before reading pauses "
                             f"(default {d.handler_queue_packets})")
    limits.add_argument("--handler-queue-bytes", type=int, default=None,
                        help=f"bytes held for a busy async handler before reading pauses "
                             f"(default {d.handler_queue_bytes})")
    serve.set_defaults(func=_cmd_serve)

    load = sub.add_parser("load", help="movement load against a relay or echo server, input load against the "
                                       "tick app",
                          description="Simulated players against a fastpacket relay (or any echo server speaking "
                                      "the GAME layout); RTT is measured per MOVE from a timestamp in its payload. "
                                      "--mode input: players against the tick app, sending INPUTs at --rate per "
                                      "second; latency is from an INPUT to the STATE that acknowledges it.")
    load.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    load.add_argument("--port", type=int, default=7777, help="server port (default 7777)")
    load.add_argument("--mode", choices=["move", "input"], default="move",
                      help="move (default): MOVEs to a relay or echo server; input: INPUTs to the tick app")
    load.add_argument("--server", action="append", default=None, metavar="HOST:PORT",
                      help="spread the players over these servers instead (repeat it; each room's players "
                           "are split over them): servers sharing a bus form one relay")
    _add_load_args(load, seconds=10.0)
    load.set_defaults(func=_cmd_load)

    top = sub.add_parser("top", help="live view of a running server (its /metrics URL or metrics file)",
                         description="Per worker: packets/s and MB/s in and out, connections, handler p50/p99, "
                                     "CPU, RSS; closes and drops by reason. Refreshes every --interval seconds "
                                     "until Ctrl-C; --once prints one frame and exits.")
    top.add_argument("target", help="http://HOST:PORT/metrics, or the path of serve --metrics-file")
    top.add_argument("--once", action="store_true", help="print one frame (rates over one interval) and exit")
    top.add_argument("--interval", type=float, default=1.0, help="seconds between readings (default 1)")
    top.add_argument("--namespace", default="fastpacket", help="metric name prefix (default fastpacket)")
    from fastpacket.cli.top import cmd_top

    top.set_defaults(func=cmd_top)

    bench = sub.add_parser("bench", help="side-by-side benchmarks against the plain-Python way")
    bench.add_argument("sections", nargs="*", help=f"sections to run (default: all of {list(SECTIONS)})")
    bench.add_argument("--quick", action="store_true", help="smaller inputs, fewer repetitions")
    out = bench.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as JSON")
    out.add_argument("--markdown", action="store_true", help="print the rows as a markdown table (README)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line with `argv` (default: sys.argv[1:]); the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\nfastpacket {args.command}: interrupted", file=sys.stderr)
        return 130
