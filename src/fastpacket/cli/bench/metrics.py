"""Metrics: the cost of recording and reading a latency metric.

(a) record() one value per call from Python (values 0..10^6 µs) through a
    plain-Python class keeping count/sum/min/max (the baseline),
    prometheus_client's Histogram.observe, hdrhistogram's record_value and
    fastpacket's Metric.record. Calls are driven by
    ``deque(map(record, values), 0)`` for every implementation, so the
    per-call figure is the call itself plus a few ns of iteration.
(b) record_many of a numpy array against the plain class's loop (values/s).
(c) p50 + p95 + p99 of 1,000 recorded values: sorting the values (the
    baseline), numpy.percentile, hdrhistogram, fastpacket percentiles().

hdrhistogram is optional: its rows are skipped, with a note in the case
name, when it is not installed (prometheus_client is a dependency).
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from fastpacket.cli.bench._harness import Row, interleaved_medians
from fastpacket.metrics import Metric

MAX_VALUE = 1_000_000
CALLS = 200_000
QUICK_CALLS = 20_000
MANY = 10_000_000
QUICK_MANY = 1_000_000
PLAIN_MANY = 200_000
PCT_VALUES = 1000
PCT_REPEAT = 10_000
QUICK_PCT_REPEAT = 1000
PCTS = (50.0, 95.0, 99.0)


class PlainMetric:
    """The plain-Python way: count, sum, min and max in attributes."""

    __slots__ = ("count", "sum", "min", "max")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0
        self.min: Optional[int] = None
        self.max: Optional[int] = None

    def record(self, v: int) -> None:
        self.count += 1
        self.sum += v
        if self.min is None or v < self.min:
            self.min = v
        if self.max is None or v > self.max:
            self.max = v


def _prometheus_histogram():
    try:
        from prometheus_client import CollectorRegistry, Histogram
    except ImportError:
        return None
    return Histogram("bench_latency_us", "bench", registry=CollectorRegistry())


def _hdr_histogram():
    try:
        from hdrh.histogram import HdrHistogram
    except ImportError:
        return None
    return HdrHistogram(1, 10 * MAX_VALUE, 2)


def record_impls(values: List[int]) -> Dict[str, Callable[[], object]]:
    """name -> callable recording every value once, one call per value."""
    impls: Dict[str, Callable[[], object]] = {}
    plain = PlainMetric()
    impls["plain-python class"] = lambda: deque(map(plain.record, values), 0)
    hist = _prometheus_histogram()
    if hist is not None:
        impls["prometheus Histogram.observe"] = lambda: deque(map(hist.observe, values), 0)
    hdr = _hdr_histogram()
    if hdr is not None:
        impls["hdrhistogram record_value"] = lambda: deque(map(hdr.record_value, values), 0)
    metric = Metric("bench_us")
    impls["fastpacket record()"] = lambda: deque(map(metric.record, values), 0)
    return impls


def percentile_impls(values: np.ndarray, repeat: int) -> Dict[str, Callable[[], object]]:
    """name -> callable computing p50, p95, p99 of `values` `repeat` times."""
    as_list = values.tolist()
    n = len(as_list)
    ranks = [max(1, -(-n * int(p * 10) // 1000)) - 1 for p in PCTS]  # inverted_cdf ranks

    def by_sorting():
        for _ in range(repeat):
            s = sorted(as_list)
            r = [s[k] for k in ranks]
        return r

    def by_numpy():
        for _ in range(repeat):
            r = np.percentile(values, PCTS, method="inverted_cdf")
        return r

    impls: Dict[str, Callable[[], object]] = {"sort 1,000 values": by_sorting, "numpy.percentile": by_numpy}
    hdr = _hdr_histogram()
    if hdr is not None:
        for v in as_list:
            hdr.record_value(v)

        def by_hdr():
            for _ in range(repeat):
                r = [hdr.get_value_at_percentile(p) for p in PCTS]
            return r

        impls["hdrhistogram"] = by_hdr
    metric = Metric("bench_us")
    metric.record_many(values)
    pct = metric.percentiles

    def by_fastpacket():
        for _ in range(repeat):
            r = pct(PCTS)
        return r

    impls["fastpacket percentiles()"] = by_fastpacket
    return impls


def _check_record(values: List[int]) -> None:
    plain, metric = PlainMetric(), Metric("check")
    for v in values:
        plain.record(v)
        metric.record(v)
    got = (metric.count, metric.sum, metric.min, metric.max)
    if got != (plain.count, plain.sum, plain.min, plain.max):
        raise RuntimeError(f"fastpacket metric {got} disagrees with the plain class")


def run(quick: bool = False) -> List[Row]:
    rng = np.random.default_rng(7)
    rows: List[Row] = []

    # (a) record() per call
    calls = QUICK_CALLS if quick else CALLS
    values = rng.integers(0, MAX_VALUE, calls).tolist()
    _check_record(values[:5000])
    impls = record_impls(values)
    medians = interleaved_medians(impls, repeat=5 if quick else 11)
    base = medians["plain-python class"]
    observe = medians.get("prometheus Histogram.observe")
    missing = [n for n in ("prometheus Histogram.observe", "hdrhistogram record_value") if n not in impls]
    case = f"record() x{calls:,}" + (f" (not installed: {', '.join(missing)})" if missing else "")
    targets = {"fastpacket record()": "<= 30 ns; >= 2.5x plain, >= 25x observe"}
    for name, t in medians.items():
        extra = f"{t / calls * 1e9:.1f} ns/call"
        if observe is not None and name == "fastpacket record()":
            extra += f", {observe / t:.1f}x observe"
        rows.append(Row("metrics", case, name, calls / t, "calls/s",
                        None if name == "plain-python class" else base / t, extra, targets.get(name, "")))

    # (b) record_many
    many = QUICK_MANY if quick else MANY
    arr = rng.integers(0, MAX_VALUE, many)
    plain_values = arr[:PLAIN_MANY].tolist()
    check = Metric("check")
    check.record_many(arr)
    if (check.count, check.sum, check.min, check.max) != (many, int(arr.sum()), int(arr.min()), int(arr.max())):
        raise RuntimeError("record_many totals disagree with numpy")
    metric = Metric("bench_us")

    def plain_loop():
        p = PlainMetric()
        for v in plain_values:
            p.record(v)

    medians = interleaved_medians({"plain-python loop": plain_loop,
                                   "fastpacket record_many": lambda: metric.record_many(arr)},
                                  repeat=3 if quick else 7)
    base_rate = PLAIN_MANY / medians["plain-python loop"]
    ours_rate = many / medians["fastpacket record_many"]
    rows.append(Row("metrics", f"record_many int64 x{many:,}", "plain-python loop", base_rate, "values/s",
                    None, f"(over {PLAIN_MANY:,} values)"))
    rows.append(Row("metrics", f"record_many int64 x{many:,}", "fastpacket record_many", ours_rate, "values/s",
                    ours_rate / base_rate, "GIL released", ">= 100M values/s"))

    # (c) p50 + p95 + p99
    repeat = QUICK_PCT_REPEAT if quick else PCT_REPEAT
    pvalues = rng.integers(0, MAX_VALUE, PCT_VALUES)
    impls = percentile_impls(pvalues, repeat)
    exact = [int(v) for v in np.percentile(pvalues, PCTS, method="inverted_cdf")]
    for name, fn in impls.items():
        result: Any = fn()
        got = [int(v) for v in result]
        if any(abs(g - e) > 0.01 * e + 1 for g, e in zip(got, exact)):
            raise RuntimeError(f"{name} percentiles {got} are not within 1% of {exact}")
    medians = interleaved_medians(impls, repeat=3 if quick else 7)
    base = medians["sort 1,000 values"]
    for name, t in medians.items():
        rows.append(Row("metrics", f"p50+p95+p99 of {PCT_VALUES:,} values", name, repeat / t, "queries/s",
                        None if name == "sort 1,000 values" else base / t,
                        f"{t / repeat * 1e6:.2f} µs/query",
                        "<= 2 µs; >= 25x sort" if name == "fastpacket percentiles()" else ""))
    return rows
