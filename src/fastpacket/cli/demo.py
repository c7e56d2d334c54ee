"""``fastpacket demo``: the relay (or, with ``--app tick``, the tick app) in
this process and its load generator (movement or input load) in a spawned
process on 127.0.0.1 for a bounded time, then a table of what the server
did."""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import time
from typing import Any, Callable, Dict, Optional, Tuple

from fastpacket.cli.report import (FAILED, OK, USAGE, Progress, fmt_closes, fmt_latency, fmt_mib, fmt_rtt,
                                   fmt_savings, format_rate, format_report)
from fastpacket.cli.main import check_load_args, input_load_kwargs, load_kwargs
from fastpacket.system import cpu_seconds, new_event_loop, peak_rss_bytes, rss_bytes

__all__ = ["cmd_demo"]


def _demo_load_process(port: int, kwargs: Dict[str, Any], loop: str, conn: Any, kind: str = "move") -> None:
    """The demo's load generator (a spawned process): reports start, stop and
    the result. `kind`: "move" (the relay's players) or "input" (the tick app's)."""
    from fastpacket.cli.loadgen import run_input_load, run_move_load

    run_load = run_input_load if kind == "input" else run_move_load
    try:
        result = run_load("127.0.0.1", port, loop=loop, on_start=lambda: conn.send(("start",)),
                          on_stop=lambda: conn.send(("stop",)), **kwargs)
        conn.send(("result", result.to_dict()))
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))


def _counters(reg: Any, agg: Any = None) -> Dict[str, float]:
    out = reg.counter("bytes_out_total").value
    if agg is not None:  # the adapter counts output before aggregation: make it the frames' bytes
        stats = agg.stats
        out += stats["bytes_out"] - stats["bytes_in"]
    return {"time": time.monotonic(), "cpu": cpu_seconds(),
            "packets_in": reg.counter("packets_in_total").value, "packets_out": reg.counter("packets_out_total").value,
            "bytes_in": reg.counter("bytes_in_total").value, "bytes_out": out}


#: Seconds the demo waits, after the load generator's result, for the
#: server to see the connections it closed.
PEER_CLOSE_SETTLE_S = 2.0
#: server close reasons that are not failures in the demo
NORMAL_CLOSES = ("peer_closed", "server_shutdown")  # server.closes counts by class (slug)


async def _demo(args: argparse.Namespace, progress: Progress) -> Tuple[int, str]:
    import fastpacket as fp
    from fastpacket.apps.relay import Relay
    from fastpacket.runtime import ServerConfig, start_server, start_ws_listener

    reg = fp.Registry()
    rooms = args.rooms or max(1, -(-args.connections // 10))
    config = ServerConfig(host="127.0.0.1", port=0, app="fastpacket.apps.relay:Relay", factory=True,
                          app_args={"rooms": rooms}, loop=_loop_kind(args), compress=args.compress,
                          compress_threshold=args.compress_threshold, ws_port=args.ws_port)
    relay = Relay(rooms=rooms)
    server = await start_server(config, reg, app=relay)
    await relay.startup(server)
    view = None
    if args.browser:
        view = await start_ws_listener(config, server, relay, False)
        await view.start_serving()
        print(f"fastpacket demo: live view on 127.0.0.1:{view.port}, open http://127.0.0.1:{view.port}/ in a "
              f"browser (the load starts now and runs {args.seconds:g} s)", flush=True)
    agg = server.options.aggregator
    port = server.port
    kwargs = load_kwargs(args)
    kwargs["rooms"] = rooms
    try:
        marks, result, failure, rss = await _drive_load(args, server, reg, agg, kwargs, "move", progress)
    finally:
        if view is not None:
            view.close()
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
    loop_name = _loop_kind(args)
    rows = [
        ("load", f"{args.connections} players in {rooms} rooms, {result['mode']}, {dt:.1f} s, "
                 f"{args.payload}-byte MOVE payloads"),
        ("packets/s in", f"{format_rate(pin / dt)} (MOVEs from the players)"),
        ("packets/s out", f"{format_rate(pout / dt)} (relayed to every player of the room, sender included: "
                          f"fan-out {pout / pin if pin else 0:.1f})"),
        ("MB/s in / out", f"{(b['bytes_in'] - a['bytes_in']) / dt / 1e6:.1f} / "
                          f"{(b['bytes_out'] - a['bytes_out']) / dt / 1e6:.1f} (on the wire)"),
        ("RTT p50 / p95 / p99 / max", fmt_rtt(result["rtt_us"])),
        ("server CPU per packet", f"{cpu * 1e6 / pin if pin else float('nan'):.2f} us per packet in, "
                                  f"{cpu * 1e6 / (pin + pout) if pin + pout else float('nan'):.3f} us per "
                                  f"packet in or out ({cpu / dt:.0%} of one core)"),
        ("server RSS", f"{fmt_mib(rss[0])} (peak {fmt_mib(rss[1])})"),
        ("compression savings", fmt_savings(dict(agg.stats) if agg is not None else None)
         + ("" if agg is None else f"; players -> server: {fmt_savings(result['compression'])}")),
        ("closes by reason", fmt_closes(closes)),
    ]
    report = format_report(f"fastpacket demo: game relay on 127.0.0.1:{port}, {loop_name} loop, "
                           f"server and load generator in separate processes", rows)
    problems = list(result["errors"])
    bad = {k: v for k, v in closes.items() if k not in NORMAL_CLOSES}
    if bad:
        problems.append(f"server closed connections for: {fmt_closes(bad)}")
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


async def _demo_tick(args: argparse.Namespace, progress: Progress) -> Tuple[int, str]:
    """The tick app (fastpacket.apps.tick) under the input load."""
    import fastpacket as fp
    from fastpacket.apps.tick import Tick
    from fastpacket.runtime import ServerConfig, start_server

    reg = fp.Registry()
    app = Tick(hz=args.hz, radius=args.radius, registry=reg)
    config = ServerConfig(host="127.0.0.1", port=0, app="fastpacket.apps.tick:Tick", factory=True,
                          loop=_loop_kind(args), compress=args.compress, compress_threshold=args.compress_threshold)
    server = await start_server(config, reg, app=app)
    port = server.port
    at: Dict[str, Dict[str, int]] = {}

    def on_mark(name: str) -> None:
        if name == "start":
            for metric in (app.tick_ns, app.step_ns, app.cpu_ns):
                metric.reset()  # ticks of the sending phase only
        at[name] = {"ticks": app.ticks, "late": app.late_ticks, "players": len(server.sessions)}

    marks, result, failure, rss = await _drive_load(args, server, reg, server.options.aggregator,
                                                    input_load_kwargs(args), "input", progress, on_mark)
    if failure is not None:
        return FAILED, failure
    assert result is not None
    a, b = marks.get("start"), marks.get("stop")
    if a is None or b is None or b["time"] <= a["time"] or "stop" not in at:
        return FAILED, "the load generator never reported its sending phase"
    dt = b["time"] - a["time"]
    pin, pout = b["packets_in"] - a["packets_in"], b["packets_out"] - a["packets_out"]
    cpu = b["cpu"] - a["cpu"]
    ticks = at["stop"]["ticks"] - at["start"]["ticks"]
    late = at["stop"]["late"] - at["start"]["late"]
    m = app.tick_ns
    period_ms = app.period * 1e3
    p50, p99, top = ((m.percentile(50.0) or 0) / 1e6, (m.percentile(99.0) or 0) / 1e6, (m.max or 0) / 1e6)
    step50, step99 = ((app.step_ns.percentile(50.0) or 0) / 1e6, (app.step_ns.percentile(99.0) or 0) / 1e6)
    cpu50, cpu99 = ((app.cpu_ns.percentile(50.0) or 0) / 1e6, (app.cpu_ns.percentile(99.0) or 0) / 1e6)
    closes = server.closes
    rows = [
        ("load", f"{args.connections} players, {result['rate']:g} INPUTs/s each, {app.hz:g} Hz ticks, "
                 f"{f'states within {app.radius}' if app.radius else 'own state'}, {dt:.1f} s"),
        ("players", f"{at['start']['players']} connected when the load started"),
        ("tick duration p50 / p99 / max", f"{p50:.2f} / {p99:.2f} / {top:.2f} ms of a {period_ms:.1f} ms period "
                                          f"(headroom at p99: {1 - p99 / period_ms:.0%}; wall clock)"),
        ("tick CPU p50 / p99", f"{cpu50:.2f} / {cpu99:.2f} ms (headroom at p99: {1 - cpu99 / period_ms:.0%}; "
                               f"the tick's own CPU time, whatever else runs)"),
        ("  of which inputs + step", f"{step50:.2f} / {step99:.2f} ms; the rest queues the STATEs and writes "
                                    f"them, one socket write per player"),
        ("ticks", f"{ticks} run, {late} skipped (a tick past the next one's time)"),
        ("packets/s in / out", f"{format_rate(pin / dt)} INPUTs / {format_rate(pout / dt)} STATEs and WELCOMEs"),
        ("input -> STATE p50 / p95 / p99 / max", fmt_latency(result["latency_us"])),
        ("server CPU", f"{cpu / dt:.0%} of one core, {cpu * 1e3 / ticks if ticks else float('nan'):.2f} ms per "
                       f"tick (receive, tick, send)"),
        ("server RSS", f"{fmt_mib(rss[0])} (peak {fmt_mib(rss[1])})"),
        ("closes by reason", fmt_closes(closes)),
    ]
    report = format_report(f"fastpacket demo: tick server on 127.0.0.1:{port}, {_loop_kind(args)} loop, "
                           f"server and load generator in separate processes", rows)
    problems = list(result["errors"])
    bad = {k: v for k, v in closes.items() if k not in NORMAL_CLOSES}
    if bad:
        problems.append(f"server closed connections for: {fmt_closes(bad)}")
    if pin == 0 or ticks == 0:
        problems.append("the server received no INPUT or ran no tick")
    if args.json:
        report = json.dumps({"seconds": dt, "players": at["start"]["players"], "hz": app.hz, "radius": app.radius,
                             "tick_ms": {"p50": p50, "p99": p99, "max": top, "period": period_ms,
                                         "step_p50": step50, "step_p99": step99, "cpu_p50": cpu50,
                                         "cpu_p99": cpu99},
                             "ticks": ticks, "late_ticks": late, "packets_in_per_s": pin / dt,
                             "packets_out_per_s": pout / dt, "cpu_fraction": cpu / dt, "rss_bytes": rss[0],
                             "closes": closes, "load": result, "errors": problems})
    print(report)
    return (FAILED if problems else OK), "; ".join(problems)


async def _drive_load(args: argparse.Namespace, server: Any, reg: Any, agg: Any, kwargs: Dict[str, Any], kind: str,
                      progress: Progress, on_mark: Optional[Callable[[str], Any]] = None
                      ) -> Tuple[Dict[str, Dict[str, float]], Optional[Dict[str, Any]], Optional[str], Tuple[int, int]]:
    """Runs the load generator (a spawned process) against `server` until
    its result: (counter marks at its start and stop, its result, why it
    failed or None, (RSS, peak RSS) of this process at the end). Closes the
    server. ``on_mark("start" | "stop")`` runs as each mark is taken."""
    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe(duplex=False)
    load = ctx.Process(target=_demo_load_process, args=(server.port, kwargs, _loop_kind(args), child, kind),
                       daemon=True, name="fastpacket-demo-load")
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
                    if on_mark is not None:
                        on_mark(msg[0])
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
                              f"{format_rate((now['packets_in'] - last['packets_in']) / dt)} packets/s in  "
                              f"{format_rate((now['packets_out'] - last['packets_out']) / dt)} out  "
                              f"{len(server.sessions)} connections")
                last = now
            await asyncio.sleep(0.05)
    finally:
        progress.clear()
        rss = (rss_bytes() or 0, peak_rss_bytes() or 0)
        # The load generator closed every connection before it sent its
        # result; let the server see those closes (bounded) rather than
        # count them as "server shutdown" when the result wins the race.
        settle_until = time.monotonic() + PEER_CLOSE_SETTLE_S
        while result is not None and server.sessions and time.monotonic() < settle_until:
            await asyncio.sleep(0.01)
        server.close()
        await server.wait_closed()
        load.join(10)
        if load.is_alive():
            load.kill()
    return marks, result, failure, rss


def _loop_kind(args: argparse.Namespace) -> str:
    return "uvloop" if args.uvloop else "asyncio"


def cmd_demo(args: argparse.Namespace) -> int:
    """``fastpacket demo``: the exit code."""
    problem = check_load_args(args)
    if problem:
        print(f"fastpacket demo: {problem}", file=sys.stderr)
        return USAGE
    loop = new_event_loop(_loop_kind(args))
    asyncio.set_event_loop(loop)
    try:
        demo = _demo_tick if args.app == "tick" else _demo
        code, reason = loop.run_until_complete(demo(args, Progress()))
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    if code != OK:
        print(f"fastpacket demo failed: {reason}", file=sys.stderr)
    return code
