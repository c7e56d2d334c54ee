"""Lock-free metrics: a Registry of metrics, counters, gauges and timers,
with percentiles, a text report, alerts on real process readings, the
Prometheus text format and a shared-memory mode spanning processes::

    import fastpacket as fp
    reg = fp.Registry()
    m = reg.metric("packet_processing_us")
    m.record(120); m.record_many(np.array([80, 95, 130]))
    with reg.timer("packet_processing_us"):
        handle(batch)
    m.percentile(99.0); reg.report(); reg.exposition()

**Metric** (``reg.metric(name)``): non-negative integers in the unit the
name ends with (``_ns``, ``_us``, ``_ms``, ``_s``...). ``record(v)`` is a few
relaxed atomic adds in C++ (csrc/fastpacket/metrics.hpp): count, 128-bit sum
and sum of squares, min and max by compare-exchange, and a log-linear
histogram of 7424 atomic buckets over the whole u64 range (128 per power of
two), so any percentile is within 0.4% of the numpy ``inverted_cdf`` value.
59,968 bytes per metric, whatever is recorded. ``record()`` takes ints >= 0
and floats (rounded to nearest, ties to even); negatives, NaN, infinities and
values >= 2**64 raise ValueError; bools and non-numbers raise TypeError (a
recorded ``True`` is almost always a bug). ``record_many(array)`` releases
the GIL and is all or nothing.

**Shared mode** (``Registry(shared=path, slots=256)``): every metric, counter
and gauge lives in one memory-mapped file that any number of processes map;
they record into the same atomic counters and any of them reads the merged
totals. A name maps to a slot by FNV-1a hash modulo the slot count, then
linear probing; a free slot is claimed by compare-exchange and its name
written in the slot, so processes creating the same name agree on one slot.
When every slot holds another name, creating a new name raises
FastpacketError (existing names keep working); make the file with more
slots. ``slots`` counts only when the file is created (it is sparse: each
slot reserves 60,096 bytes, pages are used as they are touched); later
openers use the file's own count. Slots are never freed; ``reset()`` zeroes
values and keeps names. Delete the file to start afresh.
"""

from __future__ import annotations

import asyncio
import math
import mmap
import os
import re
import tempfile
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from fastpacket._native import (
    METRIC_BYTES,
    Counter,
    Gauge,
    Metric,
    MetricsFile,
    Timer,
    _BUCKET_LOWER,
)
from fastpacket.errors import FastpacketError
from fastpacket.system import cpu_seconds, memory_percent, rss_bytes

__all__ = [
    "Alert",
    "Counter",
    "DEFAULT_PERCENTILES",
    "DEFAULT_PERCENTILE_ALERTS",
    "DEFAULT_SLOTS",
    "Gauge",
    "METRIC_BYTES",
    "Metric",
    "PrometheusCollector",
    "Registry",
    "Timer",
    "process_readings",
    "serve_metrics",
]

#: Slots in a new shared metrics file (metrics, counters and gauges together).
DEFAULT_SLOTS = 256
#: Percentiles in snapshot() and report().
DEFAULT_PERCENTILES: Tuple[float, ...] = (50.0, 90.0, 95.0, 99.0, 99.9)
#: alerts(): metric name -> (percentile, warning threshold, critical threshold).
DEFAULT_PERCENTILE_ALERTS: Dict[str, Tuple[float, float, float]] = {
    "packet_processing_us": (95.0, 10_000, 50_000),
}
#: alerts(): process CPU % (of one core; may exceed 100 with threads) and
#: system memory % thresholds, (warning, critical).
DEFAULT_CPU_PERCENT = (80.0, 95.0)
DEFAULT_MEMORY_PERCENT = (85.0, 95.0)

# Prometheus metric name syntax; also what names may be here, so that the
# exposition is always valid.
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")

# name suffix -> (unit, nanoseconds per unit) for timers and reports
_UNITS = {
    "ns": 1, "nanoseconds": 1,
    "us": 1_000, "microseconds": 1_000,
    "ms": 1_000_000, "milliseconds": 1_000_000,
    "s": 1_000_000_000, "seconds": 1_000_000_000,
}
_UNIT_SHORT = {"nanoseconds": "ns", "microseconds": "us", "milliseconds": "ms", "seconds": "s"}

Threshold = Union[None, float, Tuple[float, float]]


def unit_of(name: str) -> Optional[str]:
    """The time unit a metric name ends with ("ns", "us", "ms", "s"), or None."""
    suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
    if suffix in _UNITS:
        return _UNIT_SHORT.get(suffix, suffix)
    return None


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a metric name is a str, not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]* (Prometheus syntax)")
    return name


@dataclass(frozen=True)
class Alert:
    """A reading above its threshold. severity is "warning" or "critical";
    timestamp is time.time() when the alert was raised."""

    component: str
    description: str
    severity: str
    timestamp: float


# ---------------------------------------------------------------------------
# process readings


#: Shortest interval a CPU % is measured over; a reading asked for sooner
#: repeats the previous one (None before the first).
MIN_CPU_INTERVAL_S = 0.1


class _CpuMeter:
    """Process CPU % between two readings (user + system CPU time of all
    threads over the monotonic clock, so > 100 with several busy threads)."""

    def __init__(self) -> None:
        self._wall = time.monotonic()
        self._cpu = cpu_seconds()
        self._last: Optional[float] = None

    def read(self) -> Optional[float]:
        wall, cpu = time.monotonic(), cpu_seconds()
        dw, dc = wall - self._wall, cpu - self._cpu
        if dw < MIN_CPU_INTERVAL_S:
            return self._last
        self._wall, self._cpu = wall, cpu
        self._last = 100.0 * dc / dw
        return self._last


def process_readings(cpu: Optional[_CpuMeter] = None) -> Dict[str, Optional[float]]:
    """Real readings: {"cpu_percent", "rss_bytes", "memory_percent"} (None
    where the platform cannot say). cpu_percent is measured since the
    meter's previous reading (Registry keeps one, started at its creation),
    over at least MIN_CPU_INTERVAL_S."""
    return {
        "cpu_percent": cpu.read() if cpu is not None else None,
        "rss_bytes": rss_bytes(),
        "memory_percent": memory_percent(),
    }


def _levels(threshold: Threshold, what: str) -> Optional[Tuple[float, float]]:
    if threshold is None:
        return None
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool):
        return float(threshold), math.inf
    try:
        warn, crit = threshold  # type: ignore[misc]
        return float(warn), float(crit)
    except (TypeError, ValueError):
        raise TypeError(f"{what} threshold is a number or (warning, critical), not {threshold!r}") from None


# ---------------------------------------------------------------------------
# Prometheus buckets: le = b - 1 for b = 2^e * (1, 1.25, 1.5, 1.75). Every b
# is an edge of our histogram, so "values <= b - 1" is an exact count.

def _exposition_edges() -> np.ndarray:
    edges = set()
    for e in range(64):
        for j in range(4):
            edges.add(((4 + j) << e) >> 2)
    return np.array(sorted(b for b in edges if b >= 1), dtype=np.uint64)


_EDGES = _exposition_edges()
_EDGE_INDEX = np.searchsorted(_BUCKET_LOWER, _EDGES)  # bucket starting at each edge
assert np.array_equal(_BUCKET_LOWER[_EDGE_INDEX], _EDGES)


def _histogram_buckets(metric: Metric) -> Tuple[List[Tuple[int, int]], int]:
    """([(le, cumulative count)], total) from one copy of the buckets, from
    the bound just at or above min to the first at or above max."""
    counts = metric._buckets()
    total = int(counts.sum())
    if total == 0:
        return [], 0
    nz = np.flatnonzero(counts)
    lo_bucket, hi_bucket = int(nz[0]), int(nz[-1])
    cum = np.cumsum(counts, dtype=np.uint64)
    first = int(np.searchsorted(_EDGE_INDEX, lo_bucket, side="right"))  # first edge above the min bucket
    out = []
    for k in range(first, len(_EDGES)):
        idx = int(_EDGE_INDEX[k])
        out.append((int(_EDGES[k]) - 1, int(cum[idx - 1])))
        if idx > hi_bucket:
            break
    return out, total


def _fmt(v: Any) -> str:
    if v is None:
        return "NaN"
    if isinstance(v, float):
        if math.isnan(v):
            return "NaN"
        if math.isinf(v):
            return "+Inf" if v > 0 else "-Inf"
        return repr(v)
    return str(v)


# ---------------------------------------------------------------------------


class Registry:
    """Named metrics, counters and gauges, in this process or (``shared=path``)
    in one shared-memory file for several processes. See the module docs."""

    def __init__(self, shared: Union[None, str, "os.PathLike[str]"] = None, *, slots: int = DEFAULT_SLOTS) -> None:
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1 << 20:
            raise ValueError(f"slots must be an int in [1, 2**20], got {slots!r}")
        self._items: Dict[str, Any] = {}
        self._kinds: Dict[str, str] = {}
        self._file: Optional[MetricsFile] = None
        self._cpu = _CpuMeter()
        if shared is not None:
            self._file = _open_shared(os.fspath(shared), slots)

    @property
    def path(self) -> Optional[str]:
        """The shared file's path, or None for a process-private registry."""
        return self._file.path if self._file is not None else None

    @property
    def slots(self) -> Optional[int]:
        """Slots of the shared file (None when private)."""
        return self._file.slots if self._file is not None else None

    def _get(self, name: str, kind: str, unit: Optional[str] = None) -> Any:
        item = self._items.get(name)
        if item is not None:
            if self._kinds[name] != kind:
                raise ValueError(f"{name!r} is a {self._kinds[name]} in this registry, not a {kind}")
            return item
        _check_name(name)
        if self._file is not None:
            item = self._file.lookup(name, kind, unit if unit is not None else unit_of(name))
        elif kind == "metric":
            item = Metric(name, unit if unit is not None else unit_of(name))
        elif kind == "counter":
            item = Counter(name)
        else:
            item = Gauge(name)
        self._items[name] = item
        self._kinds[name] = kind
        return item

    def metric(self, name: str) -> Metric:
        """The metric called `name`, created empty on first use."""
        return self._get(name, "metric")

    def counter(self, name: str) -> Counter:
        """The counter called `name`, created at 0 on first use."""
        return self._get(name, "counter")

    def gauge(self, name: str) -> Gauge:
        """The gauge called `name`, created at 0.0 on first use."""
        return self._get(name, "gauge")

    def timer(self, name: str, unit: Optional[str] = None) -> Timer:
        """A Timer recording elapsed time into metric `name`, in the unit its
        name ends with (``_ns``, ``_us``, ``_ms``, ``_s``) or `unit`. Use as
        ``with reg.timer(name):`` or as a decorator (sync or async)."""
        if unit is None:
            unit = unit_of(name)
            if unit is None:
                raise ValueError(f"timer {name!r}: the name ends with no time unit "
                                 f"(_ns, _us, _ms, _s); pass unit=")
        elif unit not in _UNITS:
            raise ValueError(f"unit must be one of {sorted(_UNITS)}, got {unit!r}")
        return Timer(self.metric(name), _UNITS[unit])

    # -- enumeration -------------------------------------------------------

    def _entries(self) -> List[Tuple[str, str, Any]]:
        """(name, kind, object) of every item, sorted by name; in shared mode
        including those other processes created."""
        if self._file is not None:
            for name, kind in self._file.entries():
                if name not in self._items and kind in ("metric", "counter", "gauge"):
                    try:
                        self._get(name, kind)
                    except ValueError:
                        continue
        return [(n, self._kinds[n], self._items[n]) for n in sorted(self._items)]

    def names(self) -> List[str]:
        """Names of every metric, counter and gauge, sorted."""
        return [n for n, _, _ in self._entries()]

    def __contains__(self, name: object) -> bool:
        return name in self.names()

    def __len__(self) -> int:
        return len(self._entries())

    def __repr__(self) -> str:
        where = f"shared={self.path!r}" if self._file is not None else "private"
        return f"<Registry {where} items={len(self)}>"

    # -- reading ------------------------------------------------------------

    def snapshot(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Dict[str, Dict[str, Any]]:
        """{name: dict}: for metrics Metric.snapshot() (type, unit, count,
        sum, min, max, mean, stddev, p50, ...), for counters and gauges
        {"type": "counter"/"gauge", "value": v}."""
        out: Dict[str, Dict[str, Any]] = {}
        for name, kind, item in self._entries():
            if kind == "metric":
                out[name] = item.snapshot(tuple(percentiles))
            else:
                out[name] = {"type": kind, "value": item.value}
        return out

    def report(self) -> str:
        """A text table of every metric (count, min, mean, p50, p95, p99,
        max, stddev in its unit), then counters and gauges."""
        header = ("metric", "unit", "count", "min", "mean", "p50", "p95", "p99", "max", "stddev")
        rows: List[Tuple[str, ...]] = [header]
        others: List[Tuple[str, ...]] = []
        for name, kind, item in self._entries():
            if kind == "metric":
                s = item.snapshot((50.0, 95.0, 99.0))
                num = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
                rows.append((name, item.unit or "", str(s["count"]), num(s["min"]), num(s["mean"]),
                             num(s["p50"]), num(s["p95"]), num(s["p99"]), num(s["max"]), num(s["stddev"])))
            else:
                others.append((kind, name, _fmt(item.value)))
        widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
        lines = []
        for k, r in enumerate(rows):
            cells = [r[0].ljust(widths[0]), r[1].ljust(widths[1])] + [c.rjust(w) for c, w in zip(r[2:], widths[2:])]
            lines.append("  ".join(cells).rstrip())
            if k == 0:
                lines.append("  ".join("-" * w for w in widths))
        if others:
            w0 = max(len(o[0]) for o in others)
            w1 = max(len(o[1]) for o in others)
            lines.append("")
            lines.extend(f"{o[0].ljust(w0)}  {o[1].ljust(w1)}  {o[2]}".rstrip() for o in others)
        return "\n".join(lines)

    def reset(self) -> None:
        """Zero every metric, counter and gauge (names stay)."""
        for _, _, item in self._entries():
            item.reset()

    # -- alerts ---------------------------------------------------------------

    def alerts(
        self,
        *,
        cpu_percent: Threshold = DEFAULT_CPU_PERCENT,
        memory_percent: Threshold = DEFAULT_MEMORY_PERCENT,
        rss_bytes: Threshold = None,
        percentiles: Optional[Mapping[str, Tuple[float, ...]]] = None,
        readings: Optional[Mapping[str, Optional[float]]] = None,
    ) -> List[Alert]:
        """Bottleneck detection on real readings: process CPU % (since the
        previous alerts() call, or the registry's creation), process RSS,
        system memory %, and metric percentiles.

        Each threshold is a number (warning level) or (warning, critical),
        or None to skip that check. `percentiles` maps a metric name to
        (percentile, warning[, critical]); default DEFAULT_PERCENTILE_ALERTS
        (packet_processing_us p95 > 10,000). `readings` replaces measured
        readings (keys cpu_percent, rss_bytes, memory_percent), for tests
        or readings taken elsewhere. Returns the alerts, worst first."""
        now = time.time()
        measured = process_readings(self._cpu)
        if readings:
            unknown = set(readings) - set(measured)
            if unknown:
                raise ValueError(f"unknown readings {sorted(unknown)}; expected {sorted(measured)}")
            measured.update(readings)
        out: List[Alert] = []

        def check(component: str, value: Optional[float], threshold: Threshold, what: str, fmt: str) -> None:
            levels = _levels(threshold, component)
            if levels is None or value is None:
                return
            warn, crit = levels
            if value > warn:
                severity = "critical" if value > crit else "warning"
                limit = crit if severity == "critical" else warn
                out.append(Alert(component, f"{what} {fmt.format(value)} above {fmt.format(limit)}", severity, now))

        check("cpu", measured["cpu_percent"], cpu_percent, "process CPU", "{:.1f}%")
        check("memory", measured["memory_percent"], memory_percent, "system memory in use", "{:.1f}%")
        check("rss", measured["rss_bytes"], rss_bytes, "process RSS", "{:,.0f} bytes")
        rules = DEFAULT_PERCENTILE_ALERTS if percentiles is None else percentiles
        if self._file is not None:
            self._entries()  # pick up metrics other processes created
        for name, rule in rules.items():
            if self._kinds.get(name) != "metric":
                continue
            p = float(rule[0])
            threshold = (rule[1], rule[2]) if len(rule) > 2 else rule[1]
            value = self._items[name].percentile(p)
            unit = self._items[name].unit or ""
            check(name, value, threshold, f"p{p:g}", "{:,.0f}" + (f" {unit}" if unit else ""))
        out.sort(key=lambda a: a.severity != "critical")
        return out

    # -- Prometheus -----------------------------------------------------------

    def _families(self) -> Iterator[Tuple[str, str, str, Any]]:
        """(name, type, help, data) for exposition and PrometheusCollector."""
        for name, kind, item in self._entries():
            if kind == "metric":
                unit = f" ({item.unit})" if item.unit else ""
                buckets, total = _histogram_buckets(item)
                yield name, "histogram", f"fastpacket metric {name}{unit}", (buckets, total, item.sum)
                yield f"{name}_min", "gauge", f"smallest value of {name}{unit}", item.min
                yield f"{name}_max", "gauge", f"largest value of {name}{unit}", item.max
            elif kind == "counter":
                yield name, "counter", f"fastpacket counter {name}", item.value
            else:
                yield name, "gauge", f"fastpacket gauge {name}", item.value

    def exposition(self) -> str:
        """Every item in the Prometheus text format (version 0.0.4): metrics
        as histograms (le = 2^e * (1, 1.25, 1.5, 1.75) - 1, exact for
        integer values, from the minimum to the maximum seen) with _sum and
        _count, plus <name>_min and <name>_max gauges; counters as counters,
        gauges as gauges. No dependency needed."""
        lines: List[str] = []
        for name, ptype, help_text, data in self._families():
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {ptype}")
            if ptype == "histogram":
                buckets, total, total_sum = data
                for le, cum in buckets:
                    lines.append(f'{name}_bucket{{le="{le}"}} {cum}')
                lines.append(f'{name}_bucket{{le="+Inf"}} {total}')
                lines.append(f"{name}_sum {total_sum}")
                lines.append(f"{name}_count {total}")
            else:
                lines.append(f"{name} {_fmt(data)}")
        return "\n".join(lines) + "\n" if lines else ""


class PrometheusCollector:
    """Plugs a Registry into prometheus_client (an optional extra):
    ``prometheus_client.REGISTRY.register(fp.metrics.PrometheusCollector(reg))``
    then exposes the same families as Registry.exposition()."""

    def __init__(self, registry: Registry) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"PrometheusCollector takes a fastpacket Registry, not {type(registry).__name__}")
        self.registry = registry

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector hook: the registry's metric families."""
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

        for name, ptype, help_text, data in self.registry._families():
            if ptype == "histogram":
                buckets, total, total_sum = data
                pairs = [(str(le), cum) for le, cum in buckets] + [("+Inf", total)]
                yield HistogramMetricFamily(name, help_text, buckets=pairs, sum_value=total_sum)
            elif ptype == "counter":
                yield CounterMetricFamily(name, help_text, value=data)
            else:
                yield GaugeMetricFamily(name, help_text, value=math.nan if data is None else data)


# ---------------------------------------------------------------------------
# shared file


# ---------------------------------------------------------------------------
# /metrics over HTTP


async def serve_metrics(registry: Any, host: str = "127.0.0.1", port: int = 9100) -> asyncio.Server:
    """Serve ``registry.exposition()`` (Prometheus text format 0.0.4) at
    ``GET /metrics`` on the running loop; the asyncio.Server."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, path = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"GET /metrics\n"
            elif path.split("?", 1)[0] in ("/metrics", "/metrics/"):
                status, ctype = "200 OK", "text/plain; version=0.0.4; charset=utf-8"
                body = registry.exposition().encode()
            else:
                status, ctype, body = "404 Not Found", "text/plain", b"try /metrics\n"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + (body if method != "HEAD" else b""))
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port)


def _open_shared(path: str, slots: int) -> MetricsFile:
    """Map the metrics file at `path`, creating it with `slots` slots when
    absent. Creation is race-free without locks: the file is built and its
    header written under a temporary name in the same directory, then
    hard-linked to `path`; a process that loses the race uses the winner's."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        _create_shared(path, slots)
        fd = os.open(path, os.O_RDWR)
    try:
        size = os.fstat(fd).st_size
        if size < MetricsFile.file_bytes(1):
            raise FastpacketError(f"metrics file {path!r} ({size} bytes) is too short to be a fastpacket metrics file")
        mapping = mmap.mmap(fd, size)
    finally:
        os.close(fd)
    return MetricsFile(mapping, path)


def _create_shared(path: str, slots: int) -> None:
    size = MetricsFile.file_bytes(slots)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".fastpacket-metrics-")
    try:
        os.ftruncate(fd, size)  # sparse and zero-filled: zero bytes are empty slots
        mapping = mmap.mmap(fd, size)
        try:
            MetricsFile.init_header(mapping, slots)
        finally:
            mapping.close()
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
    finally:
        os.close(fd)
        os.unlink(tmp)
