"""Lock-free metrics: a Registry of metrics, counters, gauges and timers,
with percentiles, a text report, alerts on real process readings, a
shared-memory mode spanning processes, and the Prometheus exposition
(through prometheus_client)::

    import fastpacket as fp
    reg = fp.Registry()
    m = reg.metric("packet_processing_ns")
    m.record(120_000); m.record_many(np.array([80_000, 95_000, 130_000]))
    with reg.timer("packet_processing_ns"):
        handle(batch)
    reg.counter("closes_total", {"reason": "peer_closed"}).inc()
    m.percentile(99.0); reg.report(); reg.exposition()

**Metric** (``reg.metric(name)``): non-negative integers in the unit the
name ends with (``_ns``, ``_us``, ``_ms``, ``_s``, ``_bytes``...).
``record(v)`` is a few relaxed atomic adds in C++
(csrc/fastpacket/metrics.hpp): count, 128-bit sum and sum of squares, min
and max by compare-exchange, and a log-linear histogram of 7424 atomic
buckets over the whole u64 range (128 per power of two), so any percentile
is within 0.4% of the numpy ``inverted_cdf`` value. 59,968 bytes per
metric, whatever is recorded. ``record()`` takes ints >= 0 and floats
(rounded to nearest, ties to even); negatives, NaN, infinities and values
>= 2**64 raise ValueError; bools and non-numbers raise TypeError (a
recorded ``True`` is almost always a bug). ``record_many(array)`` releases
the GIL and is all or nothing. Record durations in nanoseconds: integer
microseconds round most sub-microsecond handler calls to 0.

**Labels**: ``reg.counter("closes_total", {"reason": "peer_closed"})`` is
one series of the family ``closes_total``; every call with the same name
and labels returns the same object. Keep label values to a small known
set (``reason_label`` folds unknown close and drop reasons into
``"other"``). ``reg.with_labels(worker="0")`` is a view of the same
registry that adds those labels to every series it creates (what each
worker of ``fastpacket serve --workers N`` records through).

**Shared mode** (``Registry(shared=path, slots=256)``): every series lives
in one memory-mapped file that any number of processes map; they record
into the same atomic counters and any of them reads the merged totals. A
series (its name with its labels) maps to a slot by FNV-1a hash modulo the
slot count, then linear probing; a free slot is claimed by
compare-exchange and its name written in the slot, so processes creating
the same series agree on one slot. When every slot holds another series,
creating a new one raises FastpacketError (existing ones keep working);
make the file with more slots. ``slots`` counts only when the file is
created (it is sparse: each slot reserves 60,096 bytes, pages are used as
they are touched); later openers use the file's own count. Slots are never
freed; ``reset()`` zeroes values and keeps names. Delete the file to start
afresh.

**Prometheus** (``reg.exposition()``, ``PrometheusCollector(reg)``,
``start_http_server(reg, port)``): prometheus_client writes the text, so
both the 0.0.4 text format and OpenMetrics (content negotiation) come from
it. Names follow Prometheus' conventions: a namespace prefix
(``fastpacket_`` by default, ``Registry(namespace=...)``), base units (a
metric recorded in ``_ns``/``_us``/``_ms`` is exposed as ``_seconds``,
values and ``_sum`` converted), ``_total`` on every counter, and
histograms with a fixed ``le`` set chosen by unit (DEFAULT_TIME_BUCKETS,
DEFAULT_BYTES_BUCKETS, DEFAULT_COUNT_BUCKETS; ``reg.metric(name,
buckets=...)`` sets another), identical from the first scrape on, so
``histogram_quantile`` over ``rate()`` of the buckets is sound. A bucket
counts a value when the value's native bucket starts at or below ``le``:
exact below 128 recorded units and for every value that starts a native
bucket (powers of two among them), otherwise a value up to 1/128 (0.8%)
above ``le`` may be counted under it. Empty metrics expose zero counts (no
NaN); min and max are not exposed (``snapshot()`` has them).
"""

from __future__ import annotations

import functools
import math
import mmap
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from fractions import Fraction
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence,
                    Tuple, Union)

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

if TYPE_CHECKING:  # prometheus_client is imported when first needed: it costs ~0.1 s at import
    from prometheus_client.core import Metric as PromFamily

__all__ = [
    "Alert",
    "CLOSE_REASONS",
    "Counter",
    "DEFAULT_BYTES_BUCKETS",
    "DEFAULT_COUNT_BUCKETS",
    "DEFAULT_NAMESPACE",
    "DEFAULT_PERCENTILES",
    "DEFAULT_PERCENTILE_ALERTS",
    "DEFAULT_SLOTS",
    "DEFAULT_TIME_BUCKETS",
    "DROP_REASONS",
    "Gauge",
    "METRIC_BYTES",
    "Metric",
    "MetricInfo",
    "MetricsServer",
    "ProcessCollector",
    "PrometheusCollector",
    "Registry",
    "SERVER_METRICS",
    "BUS_METRICS",
    "BUS_DROP_REASONS",
    "Series",
    "Timer",
    "exposition_le",
    "exposition_name",
    "process_readings",
    "reason_label",
    "MAX_TYPE_LABELS",
    "start_http_server",
    "unit_of",
]

#: Slots in a new shared metrics file (series of metrics, counters and gauges together).
DEFAULT_SLOTS = 256
#: Prefix of every exposed family name (``fastpacket_connections``).
DEFAULT_NAMESPACE = "fastpacket"
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

#: Histogram bounds (``le``, seconds) of metrics recorded in a time unit:
#: 1-2.5-5 steps from 100 ns to 10 s. Any quantile Prometheus interpolates
#: from them lies in the same bucket as the true value, which is at most
#: 2.5x its lower bound.
DEFAULT_TIME_BUCKETS: Tuple[float, ...] = (
    1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4,
    1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)
#: Histogram bounds (bytes) of metrics whose name ends in ``_bytes``: powers
#: of two from 16 B to 16 MiB.
DEFAULT_BYTES_BUCKETS: Tuple[float, ...] = tuple(float(1 << k) for k in range(4, 25))
#: Histogram bounds of other metrics (counts: packets per batch...): powers
#: of two from 1 to 65536.
DEFAULT_COUNT_BUCKETS: Tuple[float, ...] = tuple(float(1 << k) for k in range(0, 17))
#: Most ``le`` bounds a histogram may have (each is one series per label set).
MAX_BUCKETS = 64

# Prometheus metric and label name syntax; also what names may be here, so
# that the exposition is always valid.
_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_NAME_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")
_RESERVED_LABELS = ("le", "quantile")

# name suffix -> nanoseconds per unit, for timers, reports and the exposition
_TIME_UNITS = {
    "ns": 1, "nanoseconds": 1,
    "us": 1_000, "microseconds": 1_000,
    "ms": 1_000_000, "milliseconds": 1_000_000,
    "s": 1_000_000_000, "seconds": 1_000_000_000,
}
_UNIT_SHORT = {"nanoseconds": "ns", "microseconds": "us", "milliseconds": "ms", "seconds": "s"}
_NS_PER_S = 1_000_000_000

Threshold = Union[None, float, Tuple[float, float]]
Labels = Optional[Mapping[str, str]]

# ---------------------------------------------------------------------------
# the series a fastpacket server records (fastpacket.aio with registry=, and
# the runtime's supervisor); the exposition's HELP text and README's table


@dataclass(frozen=True)
class MetricInfo:
    """One family a fastpacket server records: its registry name, kind
    ("metric" = histogram, "counter", "gauge"), label names and HELP text."""

    name: str
    kind: str
    labels: Tuple[str, ...]
    help: str


#: Every family fastpacket.aio (``registry=``) and ``fastpacket serve`` record.
#: Workers of ``fastpacket serve --workers N`` add the label ``worker``.
SERVER_METRICS: Tuple[MetricInfo, ...] = (
    MetricInfo("connections", "gauge", (), "Open connections."),
    MetricInfo("connections_accepted_total", "counter", (), "Connections accepted (refused ones included)."),
    MetricInfo("packets_in_total", "counter", (), "Packets received and admitted (after rate limiting)."),
    MetricInfo("packets_by_type_total", "counter", ("type",),
               "Packets received and admitted, by type (servers with handlers by type; the first "
               "MAX_TYPE_LABELS handled types each have a series, every other type counts under \"other\")."),
    MetricInfo("packets_out_total", "counter", (), "Packets written."),
    MetricInfo("bytes_in_total", "counter", (), "Bytes received."),
    MetricInfo("bytes_out_total", "counter", (),
               "Bytes written to the transports (aggregate frames when aggregating)."),
    MetricInfo("batch_packets", "metric", (), "Packets per handler call."),
    MetricInfo("flush_bytes", "metric", (), "Bytes per flush of a send buffer, before aggregation."),
    MetricInfo("handler_duration_ns", "metric", (), "Time in one handler call."),
    MetricInfo("closes_total", "counter", ("reason",), "Connections closed, by reason."),
    MetricInfo("drops_total", "counter", ("reason",),
               "Packets dropped (rate limit, unhandled type) and connections cut off or refused "
               "(slow consumer, too many connections), by reason."),
    MetricInfo("workers", "gauge", (), "Worker processes configured (fastpacket serve --workers)."),
    MetricInfo("worker_restarts_total", "counter", (), "Workers that died and were started again."),
)
#: Every family a server's bus (fastpacket.cluster.RedisBus) records into
#: the server's registry. "Published" counts what this server sent to other
#: servers, "delivered" what it received from them (per packet received,
#: before the fan-out to its members).
BUS_METRICS: Tuple[MetricInfo, ...] = (
    MetricInfo("bus_publishes_total", "counter", (), "Messages published on the bus (one per group per loop "
                                                     "iteration with sends)."),
    MetricInfo("bus_published_packets_total", "counter", (), "Packets published on the bus."),
    MetricInfo("bus_published_bytes_total", "counter", (), "Bytes published on the bus (messages, compressed)."),
    MetricInfo("bus_delivered_packets_total", "counter", (),
               "Packets received from other servers over the bus, delivered to this server's members."),
    MetricInfo("bus_delivered_bytes_total", "counter", (), "Bytes of the messages received from other servers."),
    MetricInfo("bus_dropped_packets_total", "counter", ("reason",),
               "Packets not carried to other servers: the bus was disconnected, its publish backlog full, "
               "or Redis refused the publish."),
    MetricInfo("bus_dropped_bytes_total", "counter", ("reason",), "Bytes of the messages dropped, by reason."),
    MetricInfo("bus_rejected_total", "counter", (), "Malformed messages received from the bus (none delivered)."),
    MetricInfo("bus_publish_batch_packets", "metric", (), "Packets per message published."),
    MetricInfo("bus_rtt_ns", "metric", (), "Bus round trip: a probe published and received back."),
    MetricInfo("bus_subscriptions", "gauge", (), "Group channels subscribed (groups with members here)."),
    MetricInfo("bus_connected", "gauge", (), "1 while every Redis connection of the bus is up, else 0."),
    MetricInfo("bus_outages_total", "counter", (), "Times the bus lost Redis."),
)
#: The label values ``bus_dropped_packets_total{reason}`` takes.
BUS_DROP_REASONS = frozenset({"disconnected", "backlog", "error"})
_SERVER_HELP = {m.name: m.help for m in SERVER_METRICS + BUS_METRICS}

#: Most packet types ``packets_by_type_total{type}`` labels one by one (the
#: lowest handled types); the others count under ``type="other"``.
MAX_TYPE_LABELS = 64
#: The label values ``closes_total{reason}`` takes (reason_label folds any other into "other").
CLOSE_REASONS = frozenset({
    "peer_closed", "server_shutdown", "idle_timeout", "rate_limit_exceeded", "protocol_error",
    "handler_error", "slow_consumer", "too_many_connections", "connection_lost", "worker_lost",
    "send_error", "internal_error", "closed", "aborted", "other",
})
#: The label values ``drops_total{reason}`` takes.
DROP_REASONS = frozenset({"rate_limit", "unhandled_type", "send_error", "slow_consumer", "too_many_connections",
                          "session_closed", "other"})


def reason_label(reason: Optional[str], allowed: Iterable[str] = CLOSE_REASONS) -> str:
    """The bounded label value of a close or drop reason: its words before
    any ":" in snake case ("protocol error: size 3 ..." -> "protocol_error")
    when that is in `allowed`, else "other"."""
    head = (reason or "closed").split(":", 1)[0]
    slug = re.sub(r"[^a-z0-9]+", "_", head.lower()).strip("_")
    return slug if slug in allowed else "other"


def _time_unit_of(name: str) -> Optional[str]:
    suffix = name.rsplit("_", 1)[-1] if "_" in name else ""
    if suffix in _TIME_UNITS:
        return _UNIT_SHORT.get(suffix, suffix)
    return None


def unit_of(name: str) -> Optional[str]:
    """The unit a metric name ends with: a time unit ("ns", "us", "ms",
    "s"), "bytes", or None."""
    unit = _time_unit_of(name)
    if unit is None and name.endswith("_bytes"):
        return "bytes"
    return unit


def _family_name(name: str, kind: str) -> str:
    """The exposed family name without namespace: base units for metrics,
    no ``_total`` for counters (the sample gets it back)."""
    if kind == "metric":
        unit = _time_unit_of(name)
        if unit is not None:
            return name.rsplit("_", 1)[0] + "_seconds"
        return name
    if kind == "counter" and name.endswith("_total"):
        return name[: -len("_total")]
    return name


def exposition_name(name: str, kind: str, namespace: str = DEFAULT_NAMESPACE) -> str:
    """The name a registry series is exposed (and queried in PromQL) under:
    ``exposition_name("handler_duration_ns", "metric")`` is
    ``fastpacket_handler_duration_seconds`` (its samples add ``_bucket``,
    ``_sum``, ``_count``), ``exposition_name("closes_total", "counter")``
    is ``fastpacket_closes_total``."""
    fam = _family_name(name, kind)
    full = f"{namespace}_{fam}" if namespace else fam
    return full + "_total" if kind == "counter" else full


def exposition_le(bound: float) -> str:
    """The ``le`` label value a histogram bound is exposed with: Go's float
    format, as prometheus_client writes it ("1e-06", "0.25", "1024.0")."""
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


def _check_name(name: Any) -> str:
    if not isinstance(name, str):
        raise TypeError(f"a metric name is a str, not {type(name).__name__}")
    if not _NAME_RE.match(name):
        raise ValueError(f"metric name {name!r} must match [a-zA-Z_:][a-zA-Z0-9_:]* (Prometheus syntax)")
    return name


def _check_namespace(namespace: Any) -> str:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace is a str, not {type(namespace).__name__}")
    if namespace and not _LABEL_NAME_RE.match(namespace):
        raise ValueError(f"namespace {namespace!r} must match [a-zA-Z_][a-zA-Z0-9_]* or be empty")
    return namespace


def _label_items(labels: Labels) -> Tuple[Tuple[str, str], ...]:
    """Checked (name, value) pairs sorted by name."""
    if not labels:
        return ()
    if not isinstance(labels, Mapping):
        raise TypeError(f"labels is a mapping of str to str, not {type(labels).__name__}")
    out = []
    for k, v in labels.items():
        if not isinstance(k, str) or not _LABEL_NAME_RE.match(k) or k.startswith("__") or k in _RESERVED_LABELS:
            raise ValueError(f"label name {k!r} must match [a-zA-Z_][a-zA-Z0-9_]*, not start with '__' "
                             f"and not be one of {_RESERVED_LABELS}")
        if not isinstance(v, str):
            raise TypeError(f"label {k!r}: values are str, not {type(v).__name__}")
        out.append((k, v))
    return tuple(sorted(out))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _unescape(value: str) -> str:
    return re.sub(r"\\(.)", lambda m: "\n" if m.group(1) == "n" else m.group(1), value)


def _series_key(name: str, labels: Tuple[Tuple[str, str], ...]) -> str:
    if not labels:
        return name
    return name + "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in labels) + "}"


_KEY_RE = re.compile(r'([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\Z', re.S)
_PAIR_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"(?:,|\Z)', re.S)


def _parse_series_key(key: str) -> Optional[Tuple[str, Tuple[Tuple[str, str], ...]]]:
    """(name, labels) of a series key, None when it is not one we write."""
    m = _KEY_RE.match(key)
    if m is None:
        return None
    body = m.group(2)
    if not body:
        return (m.group(1), ()) if body is None else None
    pairs = []
    pos = 0
    while pos < len(body):
        p = _PAIR_RE.match(body, pos)
        if p is None:
            return None
        pairs.append((p.group(1), _unescape(p.group(2))))
        pos = p.end()
    return m.group(1), tuple(sorted(pairs))


def _check_buckets(name: str, bounds: Any) -> Tuple[float, ...]:
    try:
        values = tuple(float(b) for b in bounds)
    except (TypeError, ValueError):
        raise TypeError(f"buckets of {name!r} are a sequence of numbers, not {bounds!r}") from None
    if not 1 <= len(values) <= MAX_BUCKETS:
        raise ValueError(f"buckets of {name!r}: 1..{MAX_BUCKETS} bounds, got {len(values)}")
    if any(not math.isfinite(b) or b <= 0 for b in values) or any(a >= b for a, b in zip(values, values[1:])):
        raise ValueError(f"buckets of {name!r} must be finite, > 0 and increasing, got {values}")
    return values


@dataclass(frozen=True)
class Alert:
    """A reading above its threshold. severity is "warning" or "critical";
    timestamp is time.time() when the alert was raised."""

    component: str
    description: str
    severity: str
    timestamp: float


@dataclass(frozen=True)
class Series:
    """One series of a registry: ``key`` (name and labels, as the shared
    file names it), ``name``, ``labels``, ``kind`` ("metric", "counter",
    "gauge") and the Metric, Counter or Gauge itself."""

    key: str
    name: str
    labels: Dict[str, str]
    kind: str
    item: Any


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


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return repr(v)
    return str(v)


# ---------------------------------------------------------------------------
# histogram exposition


class _Family:
    """What the exposition needs to know of one family: its kind, exposed
    name, base-unit scale and (metrics) bucket bounds."""

    __slots__ = ("name", "kind", "family", "scale", "bounds", "_cuts")

    def __init__(self, name: str, kind: str) -> None:
        self.name = name
        self.kind = kind
        self.family = _family_name(name, kind)
        unit = _time_unit_of(name) if kind == "metric" else None
        # recorded units per base unit (ns per s for a _ns metric), exact
        self.scale = Fraction(_NS_PER_S, _TIME_UNITS[unit]) if unit is not None else Fraction(1)
        if kind != "metric":
            self.bounds: Tuple[float, ...] = ()
        elif unit is not None:
            self.bounds = DEFAULT_TIME_BUCKETS
        elif name.endswith("_bytes"):
            self.bounds = DEFAULT_BYTES_BUCKETS
        else:
            self.bounds = DEFAULT_COUNT_BUCKETS
        self._cuts: Optional[np.ndarray] = None

    def reserved(self) -> List[str]:
        """Every sample name this family writes."""
        if self.kind == "metric":
            return [self.family] + [self.family + s for s in ("_bucket", "_sum", "_count", "_created")]
        if self.kind == "counter":
            return [self.family, self.family + "_total", self.family + "_created"]
        return [self.family]

    def set_bounds(self, bounds: Tuple[float, ...]) -> None:
        self.bounds = bounds
        self._cuts = None

    def cuts(self) -> np.ndarray:
        """For each bound, how many native buckets start at or below it (in
        recorded units, exactly: the bound is read as the decimal it prints as)."""
        if self._cuts is None:
            limits = [math.floor(Fraction(repr(b)) * self.scale) for b in self.bounds]
            self._cuts = np.searchsorted(_BUCKET_LOWER, np.array(limits, dtype=np.uint64), side="right")
        return self._cuts


# ---------------------------------------------------------------------------


class _Store:
    """What a Registry and its label views share."""

    def __init__(self, file: Optional[MetricsFile], namespace: str) -> None:
        self.lock = threading.RLock()  # creation and enumeration only; recording never locks
        self.items: Dict[str, Any] = {}
        self.series: Dict[str, Series] = {}
        self.families: Dict[str, _Family] = {}
        self.owners: Dict[str, str] = {}  # exposed sample name -> registry name that writes it
        self.help: Dict[str, str] = {}
        self.file = file
        self.namespace = namespace
        self.cpu = _CpuMeter()


class Registry:
    """Named metrics, counters and gauges (optionally labelled), in this
    process or (``shared=path``) in one shared-memory file for several
    processes; ``namespace`` prefixes every exposed name. See the module docs."""

    def __init__(self, shared: Union[None, str, "os.PathLike[str]"] = None, *, slots: int = DEFAULT_SLOTS,
                 namespace: str = DEFAULT_NAMESPACE, create: bool = True) -> None:
        if not isinstance(slots, int) or isinstance(slots, bool) or not 1 <= slots <= 1 << 20:
            raise ValueError(f"slots must be an int in [1, 2**20], got {slots!r}")
        _check_namespace(namespace)
        file = _open_shared(os.fspath(shared), slots, create) if shared is not None else None
        self._store = _Store(file, namespace)
        self._labels: Tuple[Tuple[str, str], ...] = ()

    @classmethod
    def open(cls, path: Union[str, "os.PathLike[str]"], *, namespace: str = DEFAULT_NAMESPACE) -> "Registry":
        """The registry of an existing shared file (FileNotFoundError when
        there is none: a reader such as ``fastpacket top`` never creates one)."""
        return cls(path, namespace=namespace, create=False)

    def with_labels(self, **labels: str) -> "Registry":
        """A view of this registry that adds `labels` to every series it
        creates (``reg.with_labels(worker="0").gauge("connections")`` is the
        series ``connections{worker="0"}``). Reading from a view (snapshot,
        report, exposition) shows the whole registry."""
        view = Registry.__new__(Registry)
        view._store = self._store
        view._labels = tuple(sorted(dict(self._labels, **dict(_label_items(labels))).items()))
        return view

    @property
    def labels(self) -> Dict[str, str]:
        """The labels this view adds ({} for the registry itself)."""
        return dict(self._labels)

    @property
    def namespace(self) -> str:
        """The prefix of every exposed family name ("" for none)."""
        return self._store.namespace

    @property
    def path(self) -> Optional[str]:
        """The shared file's path, or None for a process-private registry."""
        f = self._store.file
        return f.path if f is not None else None

    @property
    def slots(self) -> Optional[int]:
        """Slots of the shared file (None when private)."""
        f = self._store.file
        return f.slots if f is not None else None

    def _get(self, name: str, kind: str, labels: Labels = None, help: Optional[str] = None) -> Any:
        store = self._store
        pairs = self._labels
        if labels:
            extra = _label_items(labels)
            pairs = tuple(sorted(dict(pairs, **dict(extra)).items())) if pairs else extra
        key = _series_key(name, pairs) if pairs else name
        item = store.items.get(key)
        if item is not None:
            if store.series[key].kind != kind:
                raise ValueError(f"{key!r} is a {store.series[key].kind} in this registry, not a {kind}")
            if help is not None:
                store.help[name] = help
            return item
        with store.lock:
            item = store.items.get(key)
            if item is None:
                item = self._create(key, name, pairs, kind)
            elif store.series[key].kind != kind:
                raise ValueError(f"{key!r} is a {store.series[key].kind} in this registry, not a {kind}")
            if help is not None:
                store.help[name] = help
        return item

    def _create(self, key: str, name: str, pairs: Tuple[Tuple[str, str], ...], kind: str) -> Any:
        store = self._store
        _check_name(name)
        if kind != "counter" and name.endswith("_total"):
            raise ValueError(f"{name!r}: only counters end in _total (Prometheus reads _total as a counter)")
        fam = store.families.get(name)
        if fam is None:
            fam = _Family(name, kind)
            clash = next((store.owners[s] for s in fam.reserved() if s in store.owners), None)
            if clash is not None:
                raise ValueError(f"{kind} {name!r} would be exposed as {fam.family!r}, which clashes with "
                                 f"{store.families[clash].kind} {clash!r}; rename one of them")
        elif fam.kind != kind:
            raise ValueError(f"{name!r} is a {fam.kind} in this registry, not a {kind}")
        unit = unit_of(name)
        if store.file is not None:
            item = store.file.lookup(key, kind, unit)
        elif kind == "metric":
            item = Metric(key, unit)
        elif kind == "counter":
            item = Counter(key)
        else:
            item = Gauge(key)
        if name not in store.families:
            store.families[name] = fam
            for s in fam.reserved():
                store.owners[s] = name
        # series first: _get's lock-free path reads items, then series
        store.series[key] = Series(key, name, dict(pairs), kind, item)
        store.items[key] = item
        return item

    def metric(self, name: str, labels: Labels = None, *, buckets: Optional[Sequence[float]] = None,
               help: Optional[str] = None) -> Metric:
        """The metric (histogram) `name` with `labels`, created empty on
        first use. `buckets`: the family's ``le`` bounds in base units
        (seconds, bytes), replacing the default for its unit."""
        m = self._get(name, "metric", labels, help)
        if buckets is not None:
            self.set_buckets(name, buckets)
        return m

    def counter(self, name: str, labels: Labels = None, *, help: Optional[str] = None) -> Counter:
        """The counter `name` with `labels`, created at 0 on first use
        (exposed with ``_total``, added when the name lacks it)."""
        return self._get(name, "counter", labels, help)

    def gauge(self, name: str, labels: Labels = None, *, help: Optional[str] = None) -> Gauge:
        """The gauge `name` with `labels`, created at 0.0 on first use."""
        return self._get(name, "gauge", labels, help)

    def timer(self, name: str, unit: Optional[str] = None, *, labels: Labels = None) -> Timer:
        """A Timer recording elapsed time into metric `name`, in the unit its
        name ends with (``_ns``, ``_us``, ``_ms``, ``_s``) or `unit`. Use as
        ``with reg.timer(name):`` or as a decorator (sync or async)."""
        if unit is None:
            unit = _time_unit_of(name)
            if unit is None:
                raise ValueError(f"timer {name!r}: the name ends with no time unit "
                                 f"(_ns, _us, _ms, _s); pass unit=")
        elif unit not in _TIME_UNITS:
            raise ValueError(f"unit must be one of {sorted(_TIME_UNITS)}, got {unit!r}")
        return Timer(self.metric(name, labels), _TIME_UNITS[unit])

    def set_buckets(self, name: str, bounds: Sequence[float]) -> None:
        """Use `bounds` (``le`` values in base units: seconds for a metric
        recorded in _ns, bytes, counts) for metric family `name` in this
        registry's exposition. In shared mode this is the exposing process's
        choice: the bounds are not stored in the file."""
        store = self._store
        fam = store.families.get(name)
        if fam is None or fam.kind != "metric":
            raise ValueError(f"set_buckets: {name!r} is not a metric of this registry")
        fam.set_bounds(_check_buckets(name, bounds))

    def buckets(self, name: str) -> Tuple[float, ...]:
        """The ``le`` bounds metric family `name` is exposed with."""
        fam = self._store.families.get(name)
        if fam is None or fam.kind != "metric":
            raise ValueError(f"{name!r} is not a metric of this registry")
        return fam.bounds

    # -- enumeration -------------------------------------------------------

    def series(self) -> List[Series]:
        """Every series, sorted by key; in shared mode including those other
        processes created."""
        store = self._store
        with store.lock:
            if store.file is not None:
                for key, kind in store.file.entries():
                    if key in store.items or kind not in ("metric", "counter", "gauge"):
                        continue
                    parsed = _parse_series_key(key)
                    if parsed is None:
                        continue
                    view = Registry.__new__(Registry)
                    view._store = store
                    view._labels = parsed[1]
                    try:
                        view._get(parsed[0], kind)
                    except ValueError:
                        continue  # a clash another process created: not exposable here
            return [store.series[k] for k in sorted(store.series)]

    def names(self) -> List[str]:
        """Keys of every series (``name`` or ``name{label="value",...}``), sorted."""
        return [s.key for s in self.series()]

    def __contains__(self, key: object) -> bool:
        return key in self.names()

    def __len__(self) -> int:
        return len(self.series())

    def __repr__(self) -> str:
        where = f"shared={self.path!r}" if self._store.file is not None else "private"
        extra = f" labels={self.labels}" if self._labels else ""
        return f"<Registry {where} items={len(self)}{extra}>"

    # -- reading ------------------------------------------------------------

    def snapshot(self, percentiles: Sequence[float] = DEFAULT_PERCENTILES) -> Dict[str, Dict[str, Any]]:
        """{key: dict}: for metrics Metric.snapshot() (type, unit, count,
        sum, min, max, mean, stddev, p50, ...), for counters and gauges
        {"type": "counter"/"gauge", "value": v}."""
        out: Dict[str, Dict[str, Any]] = {}
        for s in self.series():
            if s.kind == "metric":
                out[s.key] = s.item.snapshot(tuple(percentiles))
            else:
                out[s.key] = {"type": s.kind, "value": s.item.value}
        return out

    def report(self) -> str:
        """A text table of every metric (count, min, mean, p50, p95, p99,
        max, stddev in its unit), then counters and gauges."""
        header = ("metric", "unit", "count", "min", "mean", "p50", "p95", "p99", "max", "stddev")
        rows: List[Tuple[str, ...]] = [header]
        others: List[Tuple[str, ...]] = []
        for s in self.series():
            item = s.item
            if s.kind == "metric":
                snap = item.snapshot((50.0, 95.0, 99.0))
                num = lambda v: "-" if v is None else (f"{v:.1f}" if isinstance(v, float) else str(v))  # noqa: E731
                rows.append((s.key, item.unit or "", str(snap["count"]), num(snap["min"]), num(snap["mean"]),
                             num(snap["p50"]), num(snap["p95"]), num(snap["p99"]), num(snap["max"]),
                             num(snap["stddev"])))
            else:
                others.append((s.kind, s.key, _fmt(item.value)))
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
        for s in self.series():
            s.item.reset()

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
        or None to skip that check. `percentiles` maps a series key to
        (percentile, warning[, critical]); default DEFAULT_PERCENTILE_ALERTS
        (packet_processing_us p95 > 10,000). `readings` replaces measured
        readings (keys cpu_percent, rss_bytes, memory_percent), for tests
        or readings taken elsewhere. Returns the alerts, worst first."""
        now = time.time()
        measured = process_readings(self._store.cpu)
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
        series = {s.key: s for s in self.series()}  # shared mode: with what other processes created
        for key, rule in rules.items():
            s = series.get(key)
            if s is None or s.kind != "metric":
                continue
            p = float(rule[0])
            threshold = (rule[1], rule[2]) if len(rule) > 2 else rule[1]
            value = s.item.percentile(p)
            unit = s.item.unit or ""
            check(key, value, threshold, f"p{p:g}", "{:,.0f}" + (f" {unit}" if unit else ""))
        out.sort(key=lambda a: a.severity != "critical")
        return out

    # -- Prometheus -----------------------------------------------------------

    def _collect(self, namespace: Optional[str] = None) -> List["PromFamily"]:
        """prometheus_client metric families of every series: histograms with
        their family's fixed bounds, counters, gauges."""
        from prometheus_client.core import Metric as PromMetric

        store = self._store
        ns = store.namespace if namespace is None else _check_namespace(namespace)
        by_family: Dict[str, List[Series]] = {}
        for s in self.series():
            by_family.setdefault(s.name, []).append(s)
        out = []
        for name in sorted(by_family, key=lambda n: store.families[n].family):
            fam = store.families[name]
            full = f"{ns}_{fam.family}" if ns else fam.family
            ptype = {"metric": "histogram", "counter": "counter", "gauge": "gauge"}[fam.kind]
            pm = PromMetric(full, store.help.get(name) or _SERVER_HELP.get(name) or _default_help(name, fam.kind),
                            ptype)
            if fam.kind == "metric":
                cuts = fam.cuts()
                les = [exposition_le(b) for b in fam.bounds]
                scale = float(fam.scale)
                for s in by_family[name]:
                    cum = np.cumsum(s.item._buckets(), dtype=np.uint64)
                    total = float(cum[-1])
                    for le, cut in zip(les, cuts):
                        pm.add_sample(full + "_bucket", dict(s.labels, le=le), float(cum[cut - 1]))
                    pm.add_sample(full + "_bucket", dict(s.labels, le="+Inf"), total)
                    pm.add_sample(full + "_count", dict(s.labels), total)
                    pm.add_sample(full + "_sum", dict(s.labels), float(s.item.sum) / scale)
            elif fam.kind == "counter":
                for s in by_family[name]:
                    pm.add_sample(full + "_total", dict(s.labels), float(s.item.value))
            else:
                for s in by_family[name]:
                    pm.add_sample(full, dict(s.labels), float(s.item.value))
            out.append(pm)
        return out

    def exposition(self, namespace: Optional[str] = None) -> str:
        """Every series in the Prometheus text format (0.0.4), written by
        prometheus_client: metrics as histograms in base units with their
        family's fixed ``le`` set, counters (``_total``), gauges. `namespace`
        overrides the registry's prefix."""
        from prometheus_client import CollectorRegistry, generate_latest

        preg = CollectorRegistry(auto_describe=False)
        preg.register(PrometheusCollector(self, namespace=namespace))
        return generate_latest(preg).decode("utf-8")


def _default_help(name: str, kind: str) -> str:
    if kind == "metric":
        unit = unit_of(name)
        return f"fastpacket metric {name}" + (f" (recorded in {unit})" if unit else "")
    return f"fastpacket {kind} {name}"


class PrometheusCollector:
    """Plugs a Registry into a prometheus_client registry:
    ``prometheus_client.REGISTRY.register(fp.metrics.PrometheusCollector(reg))``
    then exposes the same families as Registry.exposition()."""

    def __init__(self, registry: Registry, namespace: Optional[str] = None) -> None:
        if not isinstance(registry, Registry):
            raise TypeError(f"PrometheusCollector takes a fastpacket Registry, not {type(registry).__name__}")
        self.registry = registry
        self.namespace = None if namespace is None else _check_namespace(namespace)

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector hook: the registry's metric families."""
        return iter(self.registry._collect(self.namespace))


class ProcessCollector:
    """prometheus_client's process metrics (``process_cpu_seconds_total``,
    ``process_resident_memory_bytes``, ``process_open_fds``,
    ``process_start_time_seconds``...) for several processes at once, one
    series per process labelled ``label=<key>``: ``pids()`` returns
    {key: pid} at each scrape (a supervisor's workers, replaced ones
    included). A process that is gone is left out. Linux (/proc) only;
    elsewhere it exposes nothing."""

    def __init__(self, pids: Callable[[], Mapping[str, int]], label: str = "worker") -> None:
        _label_items({label: ""})  # checks the label name
        self.pids = pids
        self.label = label

    def collect(self) -> Iterator[Any]:
        """prometheus_client's collector hook."""
        from prometheus_client import ProcessCollector as OneProcess
        from prometheus_client.core import Metric as PromMetric

        merged: Dict[str, Any] = {}
        for key, pid in sorted(self.pids().items()):
            for fam in OneProcess(pid=functools.partial(int, pid), registry=None).collect():
                out = merged.get(fam.name)
                if out is None:
                    out = merged[fam.name] = PromMetric(fam.name, fam.documentation, fam.type)
                for s in fam.samples:
                    out.add_sample(s.name, dict(s.labels, **{self.label: key}), s.value)
        return iter(merged.values())


class MetricsServer:
    """A running /metrics endpoint (prometheus_client's HTTP server, in a
    daemon thread): ``host``, ``port``, ``url``; ``close()`` stops it."""

    def __init__(self, httpd: Any, thread: threading.Thread, host: str) -> None:
        self._httpd = httpd
        self._thread = thread
        self.host = host
        self.port: int = httpd.server_address[1]

    @property
    def url(self) -> str:
        """The scrape URL, ``http://host:port/metrics``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/metrics"

    def close(self) -> None:
        """Stop serving and close the listening socket (waits for the
        server thread, at most its 0.5 s poll interval)."""
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5.0)
            self._httpd = None

    def __enter__(self) -> "MetricsServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<MetricsServer {self.url}>"


def start_http_server(registry: Registry, port: int = 0, host: str = "127.0.0.1", *,
                      processes: Optional[Callable[[], Mapping[str, int]]] = None,
                      namespace: Optional[str] = None) -> MetricsServer:
    """Serve `registry` at ``http://host:port/metrics`` with
    prometheus_client's HTTP server (text format or OpenMetrics by the
    scraper's Accept header, gzip when asked), from a daemon thread: scrapes
    read the lock-free counters and never block the event loop. Process
    metrics come with it: this process's, or with `processes` (a callable
    returning {worker label: pid}) each listed process's, labelled
    ``worker``. Port 0 picks a free port (``server.port``)."""
    from prometheus_client import CollectorRegistry
    from prometheus_client import ProcessCollector as OneProcess
    from prometheus_client import start_http_server as prom_start

    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535:
        raise ValueError(f"port must be an int in [0, 65535], got {port!r}")
    preg = CollectorRegistry(auto_describe=False)
    preg.register(PrometheusCollector(registry, namespace=namespace))
    if processes is None:
        OneProcess(registry=preg)
    else:
        preg.register(ProcessCollector(processes))
    httpd, thread = prom_start(port, addr=host, registry=preg)
    return MetricsServer(httpd, thread, host)


# ---------------------------------------------------------------------------
# shared file


def _open_shared(path: str, slots: int, create: bool = True) -> MetricsFile:
    """Map the metrics file at `path`, creating it with `slots` slots when
    absent (and `create`). Creation is race-free without locks: the file is
    built and its header written under a temporary name in the same
    directory, then hard-linked to `path`; a process that loses the race
    uses the winner's."""
    try:
        fd = os.open(path, os.O_RDWR)
    except FileNotFoundError:
        if not create:
            raise FileNotFoundError(f"no fastpacket metrics file at {path!r}") from None
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
