"""``fastpacket top``: a live terminal view of a running server, read from
its ``/metrics`` URL or its shared metrics file (``fastpacket serve
--metrics-file PATH``): per worker, packets/s and MB/s in and out, open
connections, handler p50/p99, CPU and RSS; closes and drops by reason;
packets by type and the bus (published, delivered, round trip, drops) where the server has them.

Both sources go through one path: the file is read through
``Registry.open(path).exposition()``, the same text the URL serves, and
parsed with prometheus_client's parser. Rates and percentiles are over the
last refresh interval (the difference of two readings); a percentile with
no handler call in the interval is the one since the start, marked ``*``.
Plain ANSI (home + clear screen) that works over ssh; ``--once`` prints one
frame without escape codes and exits.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

from fastpacket.cli.report import FAILED, OK, USAGE, format_rate
from fastpacket.errors import FastpacketError

__all__ = ["Reading", "cmd_top", "open_source", "parse_exposition", "render"]

#: Longest wait for one scrape of a /metrics URL.
FETCH_TIMEOUT_S = 5.0
#: Shortest refresh interval accepted.
MIN_INTERVAL_S = 0.1
#: ANSI: cursor home, clear the screen (what `clear` prints).
CLEAR = "\x1b[H\x1b[2J"

Labels = Tuple[Tuple[str, str], ...]


@dataclass
class Reading:
    """One scrape: when (monotonic seconds) and every sample, by sample name,
    as (sorted labels, value) pairs."""

    time: float
    samples: Dict[str, List[Tuple[Labels, float]]] = field(default_factory=dict)

    def values(self, name: str) -> List[Tuple[Dict[str, str], float]]:
        """(labels, value) of every sample called `name`."""
        return [(dict(labels), v) for labels, v in self.samples.get(name, [])]


def parse_exposition(text: str, at: float) -> Reading:
    """A Reading of Prometheus text (prometheus_client's parser)."""
    from prometheus_client.parser import text_string_to_metric_families

    r = Reading(at)
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            r.samples.setdefault(s.name, []).append((tuple(sorted(s.labels.items())), float(s.value)))
    return r


def open_source(target: str, namespace: str) -> Tuple[str, Callable[[], str]]:
    """(what to call it, a function returning the exposition text) for a
    URL or a shared metrics file path."""
    if target.startswith(("http://", "https://")):
        def fetch() -> str:
            with urllib.request.urlopen(target, timeout=FETCH_TIMEOUT_S) as resp:
                return resp.read().decode("utf-8")
        return target, fetch
    from fastpacket.metrics import Registry

    reg = Registry.open(target, namespace=namespace)
    return target, lambda: reg.exposition()


# ---------------------------------------------------------------------------
# what a frame shows


def _group(labels: Dict[str, str]) -> str:
    return labels.get("worker", "")


def _sum_by_worker(r: Reading, name: str, where: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for labels, v in r.values(name):
        if where and any(labels.get(k) != want for k, want in where.items()):
            continue
        w = _group(labels)
        out[w] = out.get(w, 0.0) + v
    return out


def _by_label(r: Reading, name: str, label: str) -> Dict[str, float]:
    out: Dict[str, float] = {}
    for labels, v in r.values(name):
        k = labels.get(label, "")
        out[k] = out.get(k, 0.0) + v
    return out


def _buckets_by_worker(r: Reading, name: str) -> Dict[str, Dict[float, float]]:
    """{worker: {le: cumulative count}} of a histogram's _bucket samples."""
    out: Dict[str, Dict[float, float]] = {}
    for labels, v in r.values(name + "_bucket"):
        le = float(labels["le"])
        per = out.setdefault(_group(labels), {})
        per[le] = per.get(le, 0.0) + v
    return out


def _merge(groups: List[Dict[float, float]]) -> Dict[float, float]:
    out: Dict[float, float] = {}
    for g in groups:
        for le, v in g.items():
            out[le] = out.get(le, 0.0) + v
    return out


def quantile(q: float, buckets: Dict[float, float]) -> Optional[float]:
    """Prometheus' histogram_quantile on {le: cumulative count}: linear
    interpolation inside the bucket holding the rank (the lowest bucket
    starts at 0; a rank in +Inf gives the highest finite bound). None when
    empty."""
    items = sorted(buckets.items())
    if not items or items[-1][1] <= 0:
        return None
    total = items[-1][1]
    rank = q * total
    prev_le, prev_count = 0.0, 0.0
    for le, count in items:
        if count >= rank:
            if math.isinf(le):
                return prev_le
            if count == prev_count:
                return le
            return prev_le + (le - prev_le) * (rank - prev_count) / (count - prev_count)
        prev_le, prev_count = le, count
    return items[-1][0]


def _delta(b1: Dict[float, float], b0: Dict[float, float]) -> Dict[float, float]:
    return {le: v - b0.get(le, 0.0) for le, v in b1.items()}


def fmt_seconds(v: Optional[float]) -> str:
    """A duration in s, ms, µs or ns with 3 significant digits; "-" for None."""
    if v is None:
        return "-"
    for scale, unit in ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs")):
        if v >= scale:
            return f"{v / scale:.3g} {unit}"
    return f"{v / 1e-9:.3g} ns"


def _worker_order(w: str) -> Tuple[int, str]:
    return (int(w), "") if w.isdigit() else (1 << 30, w)


def render(title: str, r0: Reading, r1: Reading, namespace: str = "fastpacket") -> str:
    """One frame from two readings (rates over r1.time - r0.time)."""
    ns = f"{namespace}_" if namespace else ""
    dt = max(r1.time - r0.time, 1e-9)

    def rate(name: str) -> Dict[str, Optional[float]]:
        v1, v0 = _sum_by_worker(r1, ns + name), _sum_by_worker(r0, ns + name)
        return {w: ((v - v0[w]) / dt if w in v0 and v >= v0[w] else None) for w, v in v1.items()}

    conns = _sum_by_worker(r1, ns + "connections")
    workers = sorted(set(conns) | set(_sum_by_worker(r1, ns + "packets_in_total")), key=_worker_order)
    p_in, p_out = rate("packets_in_total"), rate("packets_out_total")
    b_in, b_out = rate("bytes_in_total"), rate("bytes_out_total")
    h1 = _buckets_by_worker(r1, ns + "handler_duration_seconds")
    h0 = _buckets_by_worker(r0, ns + "handler_duration_seconds")
    cpu1, cpu0 = _sum_by_worker(r1, "process_cpu_seconds_total"), _sum_by_worker(r0, "process_cpu_seconds_total")
    rss = _sum_by_worker(r1, "process_resident_memory_bytes")
    stale = False

    def pcts(now: Dict[float, float], before: Dict[float, float]) -> Tuple[str, str]:
        nonlocal stale
        window = _delta(now, before)
        mark = ""
        if not window or max(window.values()) <= 0:
            window, mark = now, "*"
            if now and max(now.values()) > 0:
                stale = True
        p50, p99 = quantile(0.50, window), quantile(0.99, window)
        return (fmt_seconds(p50) + mark if p50 is not None else "-",
                fmt_seconds(p99) + mark if p99 is not None else "-")

    def num(v: Optional[float], f: Callable[[float], str]) -> str:
        return "-" if v is None else f(v)

    header = ("worker", "conns", "pkts/s in", "pkts/s out", "MB/s in", "MB/s out", "handler p50", "handler p99",
              "CPU %", "RSS MiB")
    rows: List[Tuple[str, ...]] = []

    def row(label: str, ws: List[str]) -> Tuple[str, ...]:
        def total(d: Dict[str, Optional[float]]) -> Optional[float]:
            vals = [d.get(w) for w in ws]
            return None if any(v is None for v in vals) else sum(v for v in vals if v is not None)

        c = sum(conns.get(w, 0.0) for w in ws)
        p50, p99 = pcts(_merge([h1.get(w, {}) for w in ws]), _merge([h0.get(w, {}) for w in ws]))
        cpu = [(cpu1[w] - cpu0[w]) / dt * 100 for w in ws if w in cpu1 and w in cpu0]
        mem = [rss[w] for w in ws if w in rss]
        return (label, f"{c:.0f}", num(total(p_in), format_rate), num(total(p_out), format_rate),
                num(total(b_in), lambda v: f"{v / 1e6:.2f}"), num(total(b_out), lambda v: f"{v / 1e6:.2f}"),
                p50, p99, f"{sum(cpu):.1f}" if cpu else "-", f"{sum(mem) / (1 << 20):.1f}" if mem else "-")

    for w in workers:
        rows.append(row(w or "server", [w]))
    if len(workers) > 1:
        rows.append(row("all", workers))
    table = [header] + rows
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    lines = [f"fastpacket top  {title}  {time.strftime('%H:%M:%S')}  (rates over {dt:.1f} s)", ""]
    for k, r in enumerate(table):
        lines.append("  ".join([r[0].ljust(widths[0])] + [c.rjust(wd) for c, wd in zip(r[1:], widths[1:])]).rstrip())
        if k == 0:
            lines.append("  ".join("-" * wd for wd in widths))
    if not workers:
        lines.append("(no fastpacket series yet: is this a fastpacket server's /metrics?)")
    for what, name in (("closes by reason", "closes_total"), ("drops by reason", "drops_total")):
        now, before = _by_label(r1, ns + name, "reason"), _by_label(r0, ns + name, "reason")
        parts = [f"{k} {v:.0f} (+{v - before.get(k, 0.0):.0f})"
                 for k, v in sorted(now.items(), key=lambda kv: -kv[1]) if v > 0]
        lines.append(f"{what}: {', '.join(parts) if parts else 'none'}")
    by_type1, by_type0 = _by_label(r1, ns + "packets_by_type_total", "type"), \
        _by_label(r0, ns + "packets_by_type_total", "type")
    if by_type1:
        rates = {t: (v - by_type0.get(t, 0.0)) / dt for t, v in by_type1.items()}
        order = sorted(rates, key=lambda t: (-rates[t], t))
        lines.append("packets/s in by type: " + ", ".join(f"{t} {format_rate(rates[t])}" for t in order))
    connected = _sum_by_worker(r1, ns + "bus_connected")
    if connected:
        pub, dlv = rate("bus_published_packets_total"), rate("bus_delivered_packets_total")
        rtt1, rtt0 = _buckets_by_worker(r1, ns + "bus_rtt_seconds"), _buckets_by_worker(r0, ns + "bus_rtt_seconds")
        window = _delta(_merge(list(rtt1.values())), _merge(list(rtt0.values())))
        if not window or max(window.values()) <= 0:
            window = _merge(list(rtt1.values()))  # no probe came back in the interval: since the start
        rtt50, rtt99 = (fmt_seconds(quantile(q, window)) if window and max(window.values()) > 0 else "-"
                        for q in (0.50, 0.99))
        drops = sum(_by_label(r1, ns + "bus_dropped_packets_total", "reason").values())
        drops0 = sum(_by_label(r0, ns + "bus_dropped_packets_total", "reason").values())
        outages = sum(_sum_by_worker(r1, ns + "bus_outages_total").values())

        def total_rate(d: Dict[str, Optional[float]]) -> str:
            vals = list(d.values())
            return "-" if not vals or any(v is None for v in vals) else format_rate(sum(v for v in vals if v))

        lines.append(f"bus: connected {sum(1 for v in connected.values() if v >= 1)}/{len(connected)}, "
                     f"published {total_rate(pub)} pkts/s, delivered from other servers {total_rate(dlv)} pkts/s, "
                     f"rtt p50 {rtt50} p99 {rtt99}, dropped {drops:.0f} (+{drops - drops0:.0f}), "
                     f"outages {outages:.0f}")
    if stale:
        lines.append("* since the start: no handler call in the last interval")
    return "\n".join(lines)


# ---------------------------------------------------------------------------


def cmd_top(args: argparse.Namespace) -> int:
    """``fastpacket top TARGET [--once] [--interval S]``."""
    if not args.interval >= MIN_INTERVAL_S:
        print(f"fastpacket top: --interval must be >= {MIN_INTERVAL_S} s, got {args.interval}", file=sys.stderr)
        return USAGE
    try:
        title, fetch = open_source(args.target, args.namespace)
    except (OSError, ValueError, FastpacketError) as exc:
        print(f"fastpacket top: cannot open {args.target}: {exc}", file=sys.stderr)
        return FAILED

    def read() -> Reading:
        return parse_exposition(fetch(), time.monotonic())

    failures = (OSError, urllib.error.URLError, ValueError)
    try:
        prev = read()
    except failures as exc:
        print(f"fastpacket top: cannot read {title}: {exc}", file=sys.stderr)
        return FAILED
    try:
        while True:
            time.sleep(args.interval)
            try:
                cur = read()
            except failures as exc:
                if args.once:
                    print(f"fastpacket top: cannot read {title}: {exc}", file=sys.stderr)
                    return FAILED
                sys.stdout.write(f"{CLEAR}fastpacket top  {title}: cannot read it ({exc}); retrying\n")
                sys.stdout.flush()
                continue
            frame = render(title, prev, cur, args.namespace)
            if args.once:
                print(frame)
                return OK
            sys.stdout.write(CLEAR + frame + "\n")
            sys.stdout.flush()
            prev = cur
    except KeyboardInterrupt:  # the way to leave the live view: not an error
        print()
        return OK
