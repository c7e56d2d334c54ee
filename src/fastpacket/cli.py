"""The ``fastpacket`` command line:

- ``fastpacket demo``: a game relay server and a load generator (another
  process) on 127.0.0.1 for a bounded time, then a table of what the server
  did (packets/s in and out, MB/s, RTT percentiles, server CPU per packet,
  RSS, compression savings, closes by reason);
- ``fastpacket serve``: the relay (or echo) server, on N worker processes
  sharing the port with SO_REUSEPORT and one metrics registry, /metrics over
  HTTP, stopped cleanly by SIGINT or SIGTERM;
- ``fastpacket load``: the movement load generator against any such server;
- ``fastpacket bench``: side-by-side benchmarks against the plain-Python way.

Progress and tables are printed here only; library code logs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import multiprocessing as mp
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastpacket.benchmarks import SECTIONS, Row, run_sections

#: exit codes
OK, FAILED, USAGE = 0, 1, 2


def _format_rate(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.2f}{suffix}"
    return f"{v:.1f}"


def _bench_cells(rows: List[Row]) -> Tuple[Tuple[str, ...], List[Tuple[str, ...]]]:
    header: Tuple[str, ...] = ("section", "case", "implementation", "rate", "unit", "also", "vs plain", "target")
    lines: List[Tuple[str, ...]] = []
    compared = {(r.section, r.case) for r in rows if r.ratio is not None}
    for r in rows:
        if r.ratio is not None:
            vs = f"{r.ratio:.2f}x"
        else:  # the baseline of a compared case, or a row that stands alone
            vs = "1.00x (base)" if (r.section, r.case) in compared else ""
        lines.append((r.section, r.case, r.impl, _format_rate(r.rate), r.unit, r.extra, vs, r.target))
    return header, lines


def format_table(rows: List[Row]) -> str:
    """The bench rows as a fixed-width text table."""
    header, body = _bench_cells(rows)
    lines = [header] + body
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown(rows: List[Row]) -> str:
    """The bench rows as a GitHub markdown table."""
    header, body = _bench_cells(rows)
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(esc(c) for c in line) + " |" for line in body)
    return "\n".join(out)


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


# ---------------------------------------------------------------------------
# shared by demo / load: the report table


def _us(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def _mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def format_report(title: str, rows: List[Tuple[str, str]]) -> str:
    """A titled two-column table."""
    w = max(len(k) for k, _ in rows)
    lines = [title, ""] + [f"{k.ljust(w)}  {v}" for k, v in rows]
    return "\n".join(lines)


def _closes(d: Dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def _savings(stats: Optional[Dict[str, int]]) -> str:
    if stats is None:
        return "off (--compress turns it on)"
    if not stats.get("bytes_in"):
        return "on, nothing packed"
    saved = 1 - stats["bytes_out"] / stats["bytes_in"]
    return (f"{saved:.1%} ({_mib(stats['bytes_in'])} of packets -> {_mib(stats['bytes_out'])} of frames; "
            f"{stats['compressed']} frames compressed, {stats['raw']} raw)")


def _rtt_row(rtt: Dict[str, float]) -> str:
    return (f"{_us(rtt['p50'])} / {_us(rtt['p95'])} / {_us(rtt['p99'])} / {_us(rtt['max'])} us "
            f"over {int(rtt.get('count', 0)):,} round trips")


class _Progress:
    """One self-rewriting line on a TTY, nothing elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.on = self.stream.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.on:
            self.width = max(self.width, len(text))
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()

    def clear(self) -> None:
        if self.on and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def _load_kwargs(args: argparse.Namespace) -> Dict[str, Any]:
    return {"connections": args.connections, "seconds": args.seconds, "rate": args.rate, "window": args.window,
            "payload_size": args.payload, "rooms": args.rooms,
            "compress": args.compress, "compress_threshold": args.compress_threshold}


def _check_load_args(args: argparse.Namespace) -> Optional[str]:
    if args.connections < 1:
        return f"--connections must be >= 1, got {args.connections}"
    if not args.seconds > 0:
        return f"--seconds must be > 0, got {args.seconds}"
    if args.rate < 0:
        return f"--rate must be >= 0, got {args.rate}"
    if args.window < 1:
        return f"--window must be >= 1, got {args.window}"
    from fastpacket.relay import MOVE_SIZE

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


# ---------------------------------------------------------------------------
# load


def _cmd_load(args: argparse.Namespace) -> int:
    from fastpacket.loadgen import move_load, new_event_loop

    problem = _check_load_args(args)
    if problem:
        print(f"fastpacket load: {problem}", file=sys.stderr)
        return USAGE
    progress = _Progress()

    def on_progress(p: Dict[str, Any]) -> None:
        rate = p["sent"] / p["elapsed"] if p["elapsed"] else 0.0
        progress.show(f"{p['elapsed']:5.1f}/{args.seconds:g} s  {_format_rate(rate)} packets/s sent  "
                      f"{_format_rate(p['received'] / p['elapsed'] if p['elapsed'] else 0)} received  "
                      f"{p['connections']} connections")

    loop = new_event_loop(args.uvloop)
    try:
        result = loop.run_until_complete(move_load(args.host, args.port, on_progress=on_progress,
                                                   **_load_kwargs(args)))
    except ConnectionError as exc:
        progress.clear()
        print(f"fastpacket load: {exc}", file=sys.stderr)
        return FAILED
    finally:
        loop.close()
    progress.clear()
    if args.json:
        print(json.dumps(result.to_dict()))
    else:
        r = result
        rows = [
            ("load", f"{r.connections} players in {r.rooms} rooms, {r.mode}, {r.seconds:.1f} s"),
            ("packets/s sent", f"{_format_rate(r.sent_per_s)} (MOVEs)"),
            ("packets/s received", f"{_format_rate(r.received_per_s)} (own echoes and relayed MOVEs)"),
            ("round trips/s", _format_rate(r.echoed_per_s)),
            ("MB/s sent / received", f"{r.bytes_sent / r.seconds / 1e6:.1f} / {r.bytes_received / r.seconds / 1e6:.1f}"),
            ("RTT p50 / p95 / p99 / max", _rtt_row(r.rtt_us)),
            ("compression savings", _savings(r.compression)),
            ("closes by reason", _closes(r.closes)),
        ]
        print(format_report(f"fastpacket load against {args.host}:{args.port}", rows))
    for e in result.errors[:10]:
        print(f"fastpacket load: {e}", file=sys.stderr)
    return OK if result.ok else FAILED


# ---------------------------------------------------------------------------
# demo


def _demo_load_process(port: int, kwargs: Dict[str, Any], uvloop: bool, conn: Any) -> None:
    """The demo's load generator (a spawned process): reports start, stop and the result."""
    from fastpacket.loadgen import run_move_load

    try:
        result = run_move_load("127.0.0.1", port, uvloop=uvloop, on_start=lambda: conn.send(("start",)),
                               on_stop=lambda: conn.send(("stop",)), **kwargs)
        conn.send(("result", result.to_dict()))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _rss() -> Tuple[int, int]:
    """(current, peak) resident set size of this process in bytes."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    try:
        with open("/proc/self/statm") as f:
            current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            return current, max(current, peak)
    except OSError:
        return peak, peak


def _counters(reg: Any, agg: Any = None) -> Dict[str, float]:
    t = os.times()
    out = reg.counter("bytes_out_total").value
    if agg is not None:  # the adapter counts output before aggregation: make it the frames' bytes
        stats = agg.stats
        out += stats["bytes_out"] - stats["bytes_in"]
    return {"time": time.monotonic(), "cpu": t.user + t.system,
            "packets_in": reg.counter("packets_in_total").value, "packets_out": reg.counter("packets_out_total").value,
            "bytes_in": reg.counter("bytes_in_total").value, "bytes_out": out}


#: server close reasons that are not failures in the demo
_NORMAL_CLOSES = ("peer closed", "server shutdown")


async def _demo(args: argparse.Namespace, progress: _Progress) -> Tuple[int, str]:
    import fastpacket as fp
    from fastpacket.server import ServerConfig, start_server

    reg = fp.Registry()
    config = ServerConfig(host="127.0.0.1", port=0, app="relay", rooms=args.rooms or max(1, -(-args.connections // 10)),
                          uvloop=args.uvloop, compress=args.compress, compress_threshold=args.compress_threshold)
    server = await start_server(config, reg)
    agg = server._hub.options.aggregator
    port = server.port
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    kwargs = _load_kwargs(args)
    kwargs["rooms"] = config.rooms
    load = ctx.Process(target=_demo_load_process, args=(port, kwargs, args.uvloop, child), daemon=True,
                       name="fastpacket-demo-load")
    load.start()
    child.close()
    marks: Dict[str, Dict[str, float]] = {}
    result: Optional[Dict[str, Any]] = None
    failure: Optional[str] = None
    last = _counters(reg, agg)
    t_start = time.monotonic()
    deadline = t_start + args.seconds + 90.0  # start-up (spawn, imports), the run, the drain
    try:
        while result is None and failure is None:
            while result is None and failure is None and parent.poll():
                try:
                    msg = parent.recv()
                except EOFError:
                    failure = f"the load generator exited (code {load.exitcode}) without a result"
                    break
                if msg[0] in ("start", "stop"):
                    marks[msg[0]] = _counters(reg, agg)
                elif msg[0] == "result":
                    result = msg[1]
                else:
                    failure = f"the load generator failed: {msg[1]}"
            if result is not None or failure is not None:
                break
            if not load.is_alive() and not parent.poll():
                failure = f"the load generator exited (code {load.exitcode}) without a result"
                break
            if time.monotonic() > deadline:
                failure = "the load generator did not finish in time"
                break
            now = _counters(reg, agg)
            if progress.on and now["time"] - last["time"] >= 0.5:
                dt = now["time"] - last["time"]
                elapsed = now["time"] - marks["start"]["time"] if "start" in marks else 0.0
                progress.show(f"{min(elapsed, args.seconds):5.1f}/{args.seconds:g} s  "
                              f"{_format_rate((now['packets_in'] - last['packets_in']) / dt)} packets/s in  "
                              f"{_format_rate((now['packets_out'] - last['packets_out']) / dt)} out  "
                              f"{len(server.sessions)} connections")
                last = now
            await asyncio.sleep(0.05)
    finally:
        progress.clear()
        rss = _rss()
        server.close()
        await server.wait_closed()
        load.join(10)
        if load.is_alive():
            load.kill()
    if failure is not None:
        return FAILED, failure
    assert result is not None
    a, b = marks.get("start"), marks.get("stop")
    if a is None or b is None or b["time"] <= a["time"]:
        return FAILED, "the load generator never reported its sending phase"
    dt = b["time"] - a["time"]
    pin, pout = b["packets_in"] - a["packets_in"], b["packets_out"] - a["packets_out"]
    cpu = b["cpu"] - a["cpu"]
    closes = server.closes
    loop_name = "uvloop" if args.uvloop else "asyncio"
    rows = [
        ("load", f"{args.connections} players in {config.rooms} rooms, {result['mode']}, {dt:.1f} s, "
                 f"{args.payload}-byte MOVE payloads"),
        ("packets/s in", f"{_format_rate(pin / dt)} (MOVEs from the players)"),
        ("packets/s out", f"{_format_rate(pout / dt)} (relayed to every player of the room, sender included: "
                          f"fan-out {pout / pin if pin else 0:.1f})"),
        ("MB/s in / out", f"{(b['bytes_in'] - a['bytes_in']) / dt / 1e6:.1f} / "
                          f"{(b['bytes_out'] - a['bytes_out']) / dt / 1e6:.1f} (on the wire)"),
        ("RTT p50 / p95 / p99 / max", _rtt_row(result["rtt_us"])),
        ("server CPU per packet", f"{cpu * 1e6 / pin if pin else float('nan'):.2f} us per packet in, "
                                  f"{cpu * 1e6 / (pin + pout) if pin + pout else float('nan'):.3f} us per "
                                  f"packet in or out ({cpu / dt:.0%} of one core)"),
        ("server RSS", f"{_mib(rss[0])} (peak {_mib(rss[1])})"),
        ("compression savings", _savings(dict(agg.stats) if agg is not None else None)
         + ("" if agg is None else f"; players -> server: {_savings(result['compression'])}")),
        ("closes by reason", _closes(closes)),
    ]
    report = format_report(f"fastpacket demo: game relay on 127.0.0.1:{port}, {loop_name} loop, "
                           f"server and load generator in separate processes", rows)
    problems = list(result["errors"])
    bad = {k: v for k, v in closes.items() if k not in _NORMAL_CLOSES}
    if bad:
        problems.append(f"server closed connections for: {_closes(bad)}")
    if pin == 0:
        problems.append("the server received no packet")
    if args.json:
        report = json.dumps({"seconds": dt, "packets_in_per_s": pin / dt, "packets_out_per_s": pout / dt,
                             "bytes_in_per_s": (b["bytes_in"] - a["bytes_in"]) / dt,
                             "bytes_out_per_s": (b["bytes_out"] - a["bytes_out"]) / dt,
                             "cpu_us_per_packet_in": cpu * 1e6 / pin if pin else None,
                             "rss_bytes": rss[0], "closes": closes, "load": result, "errors": problems})
    print(report)
    return (FAILED if problems else OK), "; ".join(problems)


def _cmd_demo(args: argparse.Namespace) -> int:
    from fastpacket.loadgen import new_event_loop

    problem = _check_load_args(args)
    if problem:
        print(f"fastpacket demo: {problem}", file=sys.stderr)
        return USAGE
    loop = new_event_loop(args.uvloop)
    asyncio.set_event_loop(loop)
    try:
        code, reason = loop.run_until_complete(_demo(args, _Progress()))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if code != OK:
        print(f"fastpacket demo failed: {reason}", file=sys.stderr)
    return code


# ---------------------------------------------------------------------------
# serve


def _cmd_serve(args: argparse.Namespace) -> int:
    from fastpacket.server import ServerConfig, run

    options: Dict[str, Any] = {}
    for name in ("max_packet_size", "packets_per_s", "bytes_per_s", "rate_burst", "rate_policy", "idle_timeout",
                 "max_connections", "max_pending_bytes", "write_timeout"):
        value = getattr(args, name)
        if value is not None:
            options[name] = value
    if "max_packet_size" in options:
        options.setdefault("recv_buffer", max(65536, options["max_packet_size"]))
        options.setdefault("send_buffer", max(65536, options["max_packet_size"]))
        options.setdefault("max_pending_bytes", max(1 << 20, options["send_buffer"]))
    config = ServerConfig(host=args.host, port=args.port, app=args.app, rooms=args.rooms, uvloop=args.uvloop,
                          compress=args.compress, compress_threshold=args.compress_threshold, options=options)
    try:
        config.check()
    except (ValueError, TypeError) as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return USAGE
    if args.workers < 1:
        print(f"fastpacket serve: --workers must be >= 1, got {args.workers}", file=sys.stderr)
        return USAGE
    metrics = (args.metrics_host, args.metrics_port) if args.metrics_port is not None else None

    def on_ready(info: Dict[str, Any]) -> None:
        workers = info.get("workers")
        where = f"{len(workers)} workers (pids {' '.join(map(str, workers))})" if workers else f"pid {info['pid']}"
        line = f"fastpacket serve: {args.app} on {info['host']}:{info['port']}, {where}"
        if "metrics_port" in info:
            line += f", metrics at http://{args.metrics_host}:{info['metrics_port']}/metrics"
        print(line + "; Ctrl-C to stop", flush=True)

    try:
        code = run(config, args.workers, metrics, on_ready)
    except OSError as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return FAILED
    except RuntimeError as exc:
        print(f"fastpacket serve: {exc}", file=sys.stderr)
        return FAILED
    print("fastpacket serve: stopped" if code == OK else "fastpacket serve: stopped with errors", flush=True)
    return code


# ---------------------------------------------------------------------------


def _add_load_args(p: argparse.ArgumentParser, connections: int, seconds: float) -> None:
    p.add_argument("--connections", type=int, default=connections, help=f"simulated players (default {connections})")
    p.add_argument("--seconds", type=float, default=seconds, help=f"sending time (default {seconds:g})")
    p.add_argument("--rate", type=float, default=0.0,
                   help="MOVE packets/s per connection; 0 (default): pipelined, --window in flight")
    p.add_argument("--window", type=int, default=16, help="own MOVEs in flight per connection when pipelined (default 16)")
    p.add_argument("--payload", type=int, default=20, help="MOVE payload bytes, >= 20 (default 20)")
    p.add_argument("--rooms", type=int, default=None, help="rooms the players join (default: one per 10 players)")
    p.add_argument("--compress", action="store_true", help="lz4 aggregation on both ends")
    p.add_argument("--compress-threshold", type=int, default=256,
                   help="compress a burst of at least this many bytes (default 256)")
    p.add_argument("--uvloop", action="store_true", help="run on uvloop")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")


def build_parser() -> argparse.ArgumentParser:
    from fastpacket.aio import Options

    parser = argparse.ArgumentParser(prog="fastpacket", description="fastpacket: the packet core for Python real-time servers")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="a game relay and a load generator on 127.0.0.1, then a table",
                          description="Starts a game relay server (this process) and a load generator (another "
                                      "process) on 127.0.0.1, runs for --seconds, prints what the server did.")
    _add_load_args(demo, connections=50, seconds=10.0)
    demo.set_defaults(func=_cmd_demo)

    d = Options()
    serve = sub.add_parser("serve", help="run the relay (or echo) server until Ctrl-C / SIGTERM",
                           description="Serve until SIGINT or SIGTERM. Limits default to fastpacket.aio.Options.")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0: all)")
    serve.add_argument("--port", type=int, default=7777, help="TCP port (default 7777; 0: any free one)")
    serve.add_argument("--workers", type=int, default=1,
                       help="worker processes sharing the port with SO_REUSEPORT (default 1: in this process)")
    serve.add_argument("--app", choices=["relay", "echo"], default="relay", help="what to serve (default relay)")
    serve.add_argument("--rooms", type=int, default=16, help="relay rooms for players that move before joining (default 16)")
    serve.add_argument("--uvloop", action="store_true", help="run on uvloop")
    serve.add_argument("--compress", action="store_true", help="lz4 aggregation of outgoing bursts")
    serve.add_argument("--compress-threshold", type=int, default=256,
                       help="compress a burst of at least this many bytes (default 256)")
    serve.add_argument("--metrics-port", type=int, default=None, help="serve Prometheus text at /metrics on this port")
    serve.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics (default 127.0.0.1)")
    limits = serve.add_argument_group("per-connection limits")
    limits.add_argument("--max-packet-size", type=int, default=None, help=f"bytes (default {d.max_packet_size})")
    limits.add_argument("--packets-per-s", type=float, default=None, help="token-bucket rate, 0: unlimited (default 0)")
    limits.add_argument("--bytes-per-s", type=float, default=None, help="token-bucket rate, 0: unlimited (default 0)")
    limits.add_argument("--rate-burst", type=float, default=None, help=f"seconds of rate in the bucket (default {d.rate_burst:g})")
    limits.add_argument("--rate-policy", choices=["drop", "close"], default=None, help="over the rate (default drop)")
    limits.add_argument("--idle-timeout", type=float, default=None, help="seconds without a packet (default: none)")
    limits.add_argument("--max-connections", type=int, default=None, help="per worker (default: none)")
    limits.add_argument("--max-pending-bytes", type=int, default=None,
                        help=f"output queued for a slow peer before it is cut off (default {d.max_pending_bytes})")
    limits.add_argument("--write-timeout", type=float, default=None,
                        help=f"seconds a peer may not read before it is cut off (default {d.write_timeout:g})")
    serve.set_defaults(func=_cmd_serve)

    load = sub.add_parser("load", help="movement load against a relay or echo server",
                          description="Simulated players against a fastpacket relay (or any echo server speaking "
                                      "the GAME layout); RTT is measured per MOVE from a timestamp in its payload.")
    load.add_argument("--host", default="127.0.0.1", help="server address (default 127.0.0.1)")
    load.add_argument("--port", type=int, default=7777, help="server port (default 7777)")
    _add_load_args(load, connections=50, seconds=10.0)
    load.set_defaults(func=_cmd_load)

    bench = sub.add_parser("bench", help="side-by-side benchmarks against the plain-Python way")
    bench.add_argument("sections", nargs="*", help=f"sections to run (default: all of {list(SECTIONS)})")
    bench.add_argument("--quick", action="store_true", help="smaller inputs, fewer repetitions")
    out = bench.add_mutually_exclusive_group()
    out.add_argument("--json", action="store_true", help="print the rows as JSON")
    out.add_argument("--markdown", action="store_true", help="print the rows as a markdown table (README)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print(f"\nfastpacket {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
