"""Cluster: the relay load with each room's players split over 2 servers
(2 ``fastpacket serve relay --bus`` processes) sharing one redis-server,
beside the same load on 1 server (no bus), at a fixed rate (not
saturating), in interleaved repetitions.

Reported per setup (medians): MOVE packets/s in and out, RTT p50/p99, the
CPU time of every process over the load phase (each server and
redis-server, read from /proc/PID/stat) per packet delivered, and the
delivery check of ``fastpacket load``. For the 2-server setup, the CPU the
bus adds: (both servers + Redis) - (the single server), per MOVE delivered
to a player on another server than its sender's. Goals (issue 12): at most
1 µs per such packet; RTT p50 at most 2x the single server's.

Needs redis-server (Debian's package) and redis-py (``fastpacket[redis]``);
without them the section reports why it measured nothing.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

from fastpacket.cli.bench._harness import Row
from fastpacket.system import read_line

#: Seconds a process may take to print its ready line (or answer PING).
START_TIMEOUT_S = 30.0
#: Seconds a stopping server may take.
STOP_TIMEOUT_S = 15.0


def _clock_ticks() -> int:
    return os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_times_of(pid: int) -> Tuple[float, float]:
    """(user, system) CPU seconds of process `pid` (Linux /proc/PID/stat)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return int(fields[11]) / _clock_ticks(), int(fields[12]) / _clock_ticks()  # utime, stime (fields 14, 15)


def cpu_seconds_of(pid: int) -> float:
    """User + system CPU seconds of process `pid` (Linux /proc/PID/stat)."""
    return sum(cpu_times_of(pid))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Proc:
    """A child process; for a server, its port from its ready line."""

    def __init__(self, args: List[str], cwd: str, ready: Optional[str] = None) -> None:
        self.proc = subprocess.Popen(args, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.port = 0
        self.metrics_port = 0
        if ready is not None:
            line = self._readline(START_TIMEOUT_S)
            m = re.search(ready, line)
            if not m:
                self.stop()
                raise RuntimeError(f"{args[:4]} did not start: {line!r}")
            self.port = int(m.group(1))
            metrics = re.search(r"metrics at http://127\.0\.0\.1:(\d+)/", line)
            self.metrics_port = int(metrics.group(1)) if metrics else 0

    def _readline(self, timeout: float) -> str:
        assert self.proc.stdout is not None
        return read_line(self.proc.stdout.fileno(), timeout)

    @property
    def pid(self) -> int:
        return int(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def _redis(workdir: str) -> _Proc:
    port = _free_port()
    p = _Proc(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", workdir, "--protected-mode", "no", "--loglevel", "warning"], workdir)
    p.port = port
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=5).stdout
        if out.strip() == b"PONG":
            return p
        if time.monotonic() > deadline or p.proc.poll() is not None:
            p.stop()
            raise RuntimeError("redis-server did not start")
        time.sleep(0.02)


def _serve(workdir: str, bus: Optional[str]) -> _Proc:
    args = [sys.executable, "-m", "fastpacket", "serve", "relay", "--port", "0"]
    if bus:  # its /metrics tell how many messages the bus published
        args += ["--bus", bus, "--metrics-port", "0"]
    return _Proc(args, workdir, ready=r" on 127\.0\.0\.1:(\d+)")


def _published(server: _Proc) -> Tuple[float, float]:
    """(messages, packets) the bus of `server` published so far, from its /metrics."""
    import urllib.request

    if not server.metrics_port:
        return 0.0, 0.0
    url = f"http://127.0.0.1:{server.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=START_TIMEOUT_S) as page:
        text = page.read().decode()
    out = []
    for name in ("bus_publishes_total", "bus_published_packets_total"):
        m = re.search(rf"^fastpacket_{name} (\S+)$", text, re.M)
        out.append(float(m.group(1)) if m else 0.0)
    return out[0], out[1]


def _measure(servers: List[_Proc], others: List[_Proc], load: Dict[str, Any]) -> Dict[str, Any]:
    """One fixed-rate load against `servers`; the CPU seconds of every
    process (servers, then `others`) over the sending phase: "cpu" user +
    system, "user" and "sys" apart."""
    from fastpacket.cli.loadgen import run_move_load

    procs = servers + others

    marks: Dict[str, List[Tuple[float, float]]] = {}

    def start() -> None:
        marks["p0"] = [_published(s) for s in servers]
        marks["t0"] = [cpu_times_of(p.pid) for p in procs]

    def stop() -> None:
        marks["t1"] = [cpu_times_of(p.pid) for p in procs]
        marks["p1"] = [_published(s) for s in servers]

    r = run_move_load("127.0.0.1", 0, servers=[("127.0.0.1", s.port) for s in servers], on_start=start,
                      on_stop=stop, **load)
    user = [b[0] - a[0] for a, b in zip(marks["t0"], marks["t1"])]
    sys_ = [b[1] - a[1] for a, b in zip(marks["t0"], marks["t1"])]
    messages = sum(b[0] - a[0] for a, b in zip(marks["p0"], marks["p1"]))
    packets = sum(b[1] - a[1] for a, b in zip(marks["p0"], marks["p1"]))
    return {"result": r, "cpu": [u + k for u, k in zip(user, sys_)], "user": user, "sys": sys_,
            "messages": messages, "packets": packets}


def run(quick: bool = False) -> List[Row]:
    """The cluster section's rows (see the module docstring)."""
    why = None
    if not sys.platform.startswith("linux"):
        why = "Linux only (reads /proc/PID/stat)"
    elif shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
        why = "redis-server not installed (apt-get install redis-server)"
    else:
        try:
            import redis  # noqa: F401
        except ImportError:
            why = "redis-py not installed (pip install 'fastpacket[redis]')"
    if why is not None:
        return [Row("cluster", "relay on 2 servers + Redis vs 1 server", "not measured", 0.0, "-",
                    extra=why)]
    connections, rooms, rate = (20, 4, 100.0) if quick else (40, 4, 200.0)
    seconds = 1.0 if quick else 3.0
    repeat = 1 if quick else 3
    load = {"connections": connections, "rooms": rooms, "rate": rate, "seconds": seconds, "loop": "uvloop"}
    try:
        import uvloop  # noqa: F401
    except ImportError:
        load["loop"] = "asyncio"
    workdir = tempfile.mkdtemp(prefix="fastpacket-bench-cluster-")
    procs: List[_Proc] = []
    runs: Dict[str, List[Dict[str, Any]]] = {"1 server": [], "2 servers + Redis": []}
    try:
        redis_proc = _redis(workdir)
        procs.append(redis_proc)
        url = f"redis://127.0.0.1:{redis_proc.port}/0"
        single = _serve(workdir, None)
        procs.append(single)
        pair = [_serve(workdir, url), _serve(workdir, url)]
        procs.extend(pair)
        for _ in range(repeat):  # interleaved: noise hits both setups alike
            runs["1 server"].append(_measure([single], [], load))
            runs["2 servers + Redis"].append(_measure(pair, [redis_proc], load))
    finally:
        for p in reversed(procs):
            p.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return _rows(runs, connections, rooms, rate)


def _median(values: List[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rows(runs: Dict[str, List[Dict[str, Any]]], connections: int, rooms: int, rate: float) -> List[Row]:
    case = f"relay, {connections} players in {rooms} rooms at {rate:g} MOVE/s each"
    per_room = connections // rooms
    rows = []
    summary: Dict[str, Dict[str, float]] = {}
    per_rep: Dict[str, List[float]] = {}
    for name, measured in runs.items():
        ins = _median([m["result"].sent_per_s for m in measured])
        outs = _median([m["result"].received_per_s for m in measured])
        p50 = _median([m["result"].rtt_us["p50"] for m in measured])
        p99 = _median([m["result"].rtt_us["p99"] for m in measured])
        delivered = [max(1, m["result"].sent * per_room) for m in measured]
        cpu_total = _median([sum(m["cpu"]) / d * 1e6 for m, d in zip(measured, delivered)])
        per_proc = [{k: _median([m[k][i] / d * 1e6 for m, d in zip(measured, delivered)])
                     for k in ("cpu", "user", "sys")} for i in range(len(measured[0]["cpu"]))]
        bad = sum(m["result"].missing + m["result"].duplicates + m["result"].out_of_order for m in measured)
        check = "ok" if all(m["result"].delivery_checked for m in measured) and not bad else f"FAILED ({bad})"
        names = ["server"] if len(per_proc) == 1 else ["server A", "server B", "redis"]
        cpu_text = ", ".join(f"{n} {v['cpu']:.2f} = user {v['user']:.2f} + sys {v['sys']:.2f}"
                             for n, v in zip(names, per_proc))
        summary[name] = {"p50": p50, "cpu": cpu_total}
        per_rep[name] = [sum(m["cpu"]) / d * 1e6 for m, d in zip(measured, delivered)]
        messages = sum(m.get("messages", 0.0) for m in measured)
        bus_text = ""
        if messages:
            seconds = sum(m["result"].seconds for m in measured)
            packets = sum(m.get("packets", 0.0) for m in measured)
            bus_text = f"; bus {messages / seconds:,.0f} messages/s, {packets / messages:.1f} packets each"
        base = summary.get("1 server")
        # vs the single server: packets delivered per CPU-second of every process
        ratio = base["cpu"] / cpu_total if base is not None and name != "1 server" and cpu_total else None
        rows.append(Row("cluster", case, name, outs, "packets/s out", ratio=ratio,
                        extra=f"in {ins:,.0f}/s; RTT p50/p99 {p50:,.0f}/{p99:,.0f} µs; CPU µs per delivered "
                              f"packet {cpu_total:.2f} ({cpu_text}){bus_text}; delivery {check}"))
    one, two = summary["1 server"], summary["2 servers + Redis"]
    # a MOVE reaches the per_room / 2 players of its room on the other server
    cross_share = (per_room // 2) / per_room
    added = (two["cpu"] - one["cpu"]) / cross_share if cross_share else float("nan")
    # each repetition's own difference (the setups ran interleaved): the spread the median hides
    reps = [(b - a) / cross_share for a, b in zip(per_rep["1 server"], per_rep["2 servers + Redis"])]
    spread = f" (repetitions {min(reps):.1f}-{max(reps):.1f})" if len(reps) > 1 and cross_share else ""
    rows.append(Row("cluster", case, "bus cost", added, "CPU µs/packet across",
                    ratio=two["p50"] / one["p50"] if one["p50"] else None,
                    extra=f"CPU added by the bus (both servers + Redis, less the single server) per MOVE "
                          f"delivered to a player on the other server{spread}; ratio: RTT p50, 2 servers / 1",
                    target="<= 1 µs; p50 ratio <= 2"))
    return rows
