"""Metrics: exact totals under threads and processes, percentiles against
numpy, bad values, timers, alerts, Prometheus exposition, shared files."""

from __future__ import annotations

import asyncio
import math
import multiprocessing
import os
import threading
import time
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpacket as fp
from fastpacket.errors import FastpacketError
from fastpacket.metrics import Alert, Counter, Gauge, Metric, PrometheusCollector, Registry, Timer

# worst relative error of a percentile: half a bucket of 1/128 of its lower
# bound (the bound is 1%)
REL_TOL = 1 / 256
PS = [0.0, 0.1, 1.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0]


def exact(values):
    v = [int(x) for x in values]
    return len(v), sum(v), min(v), max(v)


def check_percentiles(m: Metric, values: np.ndarray, ps=PS) -> None:
    ref = np.percentile(values, ps, method="inverted_cdf")
    got = m.percentiles(ps)
    for p, r, g in zip(ps, ref, got):
        r = int(r)
        assert abs(g - r) <= REL_TOL * r + 1e-9, (p, g, r)
        assert abs(g - r) <= 0.01 * r
    for p, r in zip(ps, ref):
        g = m.percentile(p)
        assert abs(g - int(r)) <= REL_TOL * int(r)


# ---------------------------------------------------------------------------
# single metric


def test_empty_metric():
    m = Metric("x_us")
    assert (m.count, m.sum, m.min, m.max, m.mean, m.stddev) == (0, 0, None, None, None, None)
    assert m.percentile(50) is None and m.percentiles([50, 99]) == [None, None]
    assert m.unit == "x_us" or m.unit is None
    snap = m.snapshot()
    assert snap["count"] == 0 and snap["p99"] is None


def test_record_totals_and_moments():
    values = np.random.default_rng(3).integers(0, 10**9, 5000)
    m = Metric("lat_ns")
    for v in values.tolist():
        m.record(v)
    n, s, lo, hi = exact(values)
    assert (m.count, m.sum, m.min, m.max) == (n, s, lo, hi)
    assert m.mean == pytest.approx(s / n, rel=1e-12)
    assert m.stddev == pytest.approx(float(np.std(values.astype(np.float64))), rel=1e-9)


def test_stddev_exact_no_cancellation():
    # values near 1e12 with a tiny spread: float sums of squares would cancel
    m = Metric("x")
    base = 10**12
    vals = [base + d for d in (0, 1, 2, 3, 4)]
    m.record_many(np.array(vals, dtype=np.uint64))
    assert m.stddev == pytest.approx(math.sqrt(2.0), rel=1e-12)


def test_record_accepts_numbers_and_rounds():
    m = Metric("x")
    m.record(np.int32(5))
    m.record(np.uint64(2**64 - 1))
    m.record(2.5)      # ties to even
    m.record(3.5)
    m.record(0.4)
    m.record(np.float32(7.6))
    m.record(-0.0)
    m.record(Fraction(9, 2))  # __float__: 4.5 -> 4
    assert m.count == 8
    assert m.sum == 5 + (2**64 - 1) + 2 + 4 + 0 + 8 + 0 + 4
    assert m.min == 0 and m.max == 2**64 - 1


@pytest.mark.parametrize("bad, exc, words", [
    (-1, ValueError, ">= 0, got -1"),
    (-(2**70), ValueError, ">= 0"),
    (2**64, ValueError, "below 2**64"),
    (-0.5, ValueError, "got -0.5"),
    (float("nan"), ValueError, "nan"),
    (float("inf"), ValueError, "inf"),
    (1e20, ValueError, "below 2**64"),
    (np.int64(-3), ValueError, "-3"),
    (True, TypeError, "bool True"),
    (np.bool_(False), TypeError, "bool"),
    ("12", TypeError, "str '12'"),
    (None, TypeError, "NoneType"),
    (b"1", TypeError, "bytes"),
])
def test_record_rejects(bad, exc, words):
    m = Metric("x")
    m.record(7)
    with pytest.raises(exc) as info:
        m.record(bad)
    assert words in str(info.value)
    assert (m.count, m.sum) == (1, 7)


@pytest.mark.parametrize("arr, words", [
    (np.array([1, 2, -3, 4], dtype=np.int64), "element 2 is -3"),
    (np.array([1, 2, -3], dtype=np.int8), "element 2 is -3"),
    (np.array([1.0, np.nan]), "element 1 is nan"),
    (np.array([1.0, -np.inf]), "element 1 is -inf"),
    (np.array([np.inf]), "must be finite"),
    (np.array([1.0, 2.0**64]), "below 2**64"),
    (np.array([-0.6] + [1.0] * 5000), "element 0"),
    (np.concatenate([np.arange(5000), [-1]]), "element 5000 is -1"),
])
def test_record_many_all_or_nothing(arr, words):
    m = Metric("x")
    with pytest.raises(ValueError) as info:
        m.record_many(arr)
    assert words in str(info.value) and "nothing was recorded" in str(info.value)
    assert m.count == 0 and m.sum == 0


@pytest.mark.parametrize("arr", [np.array([True, False]), np.array(["1"]), np.array([object()])])
def test_record_many_rejects_dtypes(arr):
    with pytest.raises(TypeError, match="dtype"):
        Metric("x").record_many(arr)


@pytest.mark.parametrize("dtype", ["u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", "f4", "f8"])
@pytest.mark.parametrize("n", [0, 7, 1023, 1024, 5000])
def test_record_many_dtypes(dtype, n):
    rng = np.random.default_rng(n)
    arr = (rng.integers(0, 100, n) + rng.random(n) * (dtype[0] == "f")).astype(dtype)
    m = Metric("x")
    m.record_many(arr)
    ints = np.rint(arr.astype(np.float64)).astype(np.int64) if dtype[0] == "f" else arr.astype(np.int64)
    assert m.count == n
    assert m.sum == int(ints.sum())
    if n:
        assert (m.min, m.max) == (int(ints.min()), int(ints.max()))


def test_record_many_accepts_sequences_and_2d():
    m = Metric("x")
    m.record_many([1, 2, 3])
    m.record_many(np.arange(6).reshape(2, 3)[:, ::2])  # not contiguous
    assert (m.count, m.sum) == (7, 6 + 0 + 2 + 3 + 5)


def test_record_many_matches_record():
    values = np.random.default_rng(5).integers(0, 2**40, 20000, dtype=np.uint64)
    a, b = Metric("a"), Metric("b")
    a.record_many(values)
    for v in values.tolist():
        b.record(v)
    assert np.array_equal(a._buckets(), b._buckets())
    assert (a.count, a.sum, a.min, a.max, a.stddev) == (b.count, b.sum, b.min, b.max, b.stddev)


def test_sum_does_not_wrap_at_2_64():
    # documented: sum and sum of squares are 128-bit; the sum is exact
    m = Metric("x")
    m.record(2**64 - 1)
    m.record(2**64 - 1)
    m.record_many(np.full(5000, 2**64 - 1, dtype=np.uint64))
    assert m.sum == 5002 * (2**64 - 1)
    assert m.mean == pytest.approx(float(2**64 - 1))
    assert m.stddev == 0.0


def test_sum_of_squares_wrap_falls_back_to_histogram():
    # Σv² passes 2^128 after 64 values of 2^61: stddev comes from the buckets
    rng = np.random.default_rng(9)
    values = (rng.integers(2**60, 2**62, 200, dtype=np.uint64))
    m = Metric("x")
    m.record_many(values)
    assert m.sum == sum(int(v) for v in values)
    ref = float(np.std([float(v) for v in values]))
    assert m.stddev == pytest.approx(ref, rel=0.01)


# ---------------------------------------------------------------------------
# percentiles against numpy.percentile(method="inverted_cdf")


def _bimodal(rng, n):
    return np.concatenate([rng.normal(1000, 50, n // 2), rng.normal(200_000, 5000, n - n // 2)]).clip(0)


DISTRIBUTIONS = {
    "uniform": lambda rng, n: rng.integers(0, 1_000_000, n),
    "lognormal": lambda rng, n: np.rint(rng.lognormal(8, 2, n)),
    "bimodal": lambda rng, n: np.rint(_bimodal(rng, n)),
    "constant": lambda rng, n: np.full(n, 123_457, dtype=np.int64),
    "small": lambda rng, n: rng.integers(0, 200, n),
    "huge": lambda rng, n: rng.integers(2**61 - 2**58, 2**61 + 2**58, n, dtype=np.uint64),
    "full-range": lambda rng, n: rng.integers(0, 2**64 - 1, n, dtype=np.uint64, endpoint=True),
}


@pytest.mark.parametrize("dist", sorted(DISTRIBUTIONS))
@pytest.mark.parametrize("n", [1, 2, 10, 1001, 100_000])
def test_percentiles_within_one_percent(dist, n):
    rng = np.random.default_rng(n)
    values = DISTRIBUTIONS[dist](rng, n).astype(np.uint64)
    m = Metric("x")
    m.record_many(values)
    check_percentiles(m, values)


@settings(max_examples=100)
@given(st.lists(st.integers(0, 2**64 - 1), min_size=1, max_size=300),
       st.floats(0, 100, allow_nan=False))
def test_percentile_property(values, p):
    m = Metric("x")
    for v in values:
        m.record(v)
    arr = np.array(values, dtype=np.uint64)
    ref = int(np.percentile(arr, p, method="inverted_cdf"))
    got = m.percentile(p)
    assert abs(got - ref) <= REL_TOL * ref
    assert m.min <= got <= m.max
    assert (m.count, m.sum, m.min, m.max) == exact(values)


def test_percentile_bad_arguments():
    m = Metric("x")
    for p in (-1, 100.5, float("nan")):
        with pytest.raises(ValueError, match="percentile"):
            m.percentile(p)
    with pytest.raises(ValueError):
        m.percentiles([50, 101])


def test_bucket_layout():
    from fastpacket._native import _BUCKET_LOWER, _BUCKET_UPPER, _bucket_index
    assert len(_BUCKET_LOWER) == 7424 and fp.metrics.METRIC_BYTES == 59968
    assert _BUCKET_LOWER[0] == 0 and _BUCKET_UPPER[-1] == 2**64 - 1
    assert np.array_equal(_BUCKET_UPPER[:-1] + np.uint64(1), _BUCKET_LOWER[1:])
    widths = (_BUCKET_UPPER - _BUCKET_LOWER + np.uint64(1)).astype(np.float64)
    assert np.all(widths[128:] / _BUCKET_LOWER[128:].astype(np.float64) <= 1 / 128)
    for v in (0, 127, 128, 129, 1000, 2**32, 2**63, 2**64 - 1):
        i = _bucket_index(v)
        assert _BUCKET_LOWER[i] <= v <= _BUCKET_UPPER[i]


# ---------------------------------------------------------------------------
# concurrency: threads with the GIL released


def test_threads_record_many_exact():
    rng = np.random.default_rng(11)
    arrays = [rng.integers(0, 2**40, 2_000_000, dtype=np.uint64) for _ in range(4)]
    arrays[2][123] = 0
    arrays[3][456] = 2**40 + 7
    m = Metric("x")
    barrier = threading.Barrier(4)

    def work(a):
        barrier.wait()
        m.record_many(a)

    threads = [threading.Thread(target=work, args=(a,)) for a in arrays]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    allv = np.concatenate(arrays)
    assert m.count == 8_000_000
    assert m.sum == sum(int(a.sum(dtype=np.uint64)) for a in arrays)  # each < 2^64
    assert (m.min, m.max) == (0, 2**40 + 7)
    assert int(m._buckets().sum()) == 8_000_000
    check_percentiles(m, allv, ps=[1.0, 50.0, 99.0])


def test_threads_record_and_counters_exact():
    reg = Registry()
    m, c = reg.metric("x"), reg.counter("n_total")

    def work(k):
        for i in range(20000):
            m.record(i)
            c.inc()
        m.record_many(np.arange(1000, dtype=np.int64))

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert m.count == 4 * 21000
    assert m.sum == 4 * (sum(range(20000)) + sum(range(1000)))
    assert c.value == 80000


# ---------------------------------------------------------------------------
# counters, gauges, registry


def test_counter_and_gauge():
    reg = Registry()
    c = reg.counter("packets_total")
    c.inc()
    c.inc(41)
    c.inc(n=np.uint16(8))
    assert c.value == 50 and reg.counter("packets_total") is c
    for bad, exc in ((-1, ValueError), (1.5, TypeError), ("1", TypeError), (True, TypeError)):
        with pytest.raises(exc):
            c.inc(bad)
    g = reg.gauge("connections")
    g.set(10)
    g.inc()
    g.dec(3.5)
    assert g.value == 7.5
    c.reset()
    g.reset()
    assert (c.value, g.value) == (0, 0.0)


def test_registry_names_and_kinds():
    reg = Registry()
    m = reg.metric("a_us")
    assert reg.metric("a_us") is m and m.unit == "us"
    assert reg.metric("b").unit is None and reg.metric("c_seconds").unit == "s"
    with pytest.raises(ValueError, match="is a metric"):
        reg.counter("a_us")
    for bad in ("", "1abc", "a-b", "a b", "é"):
        with pytest.raises(ValueError, match="must match"):
            reg.metric(bad)
    with pytest.raises(TypeError):
        reg.metric(3)
    assert reg.names() == ["a_us", "b", "c_seconds"] and "b" in reg and len(reg) == 3
    with pytest.raises(ValueError):
        Registry(slots=0)


def test_snapshot_report_reset():
    reg = Registry()
    m = reg.metric("packet_processing_us")
    m.record_many(np.arange(1, 101))
    reg.counter("packets_total").inc(100)
    reg.gauge("connections").set(2)
    reg.metric("idle_us")
    snap = reg.snapshot()
    assert snap["packets_total"] == {"type": "counter", "value": 100}
    assert snap["connections"] == {"type": "gauge", "value": 2.0}
    s = snap["packet_processing_us"]
    assert (s["type"], s["unit"], s["count"], s["sum"], s["min"], s["max"], s["p50"], s["p99"]) == (
        "metric", "us", 100, 5050, 1, 100, 50, 99)
    assert s["mean"] == 50.5
    text = reg.report()
    assert "packet_processing_us" in text and "p95" in text and "packets_total" in text and "idle_us" in text
    line = next(l for l in text.splitlines() if l.startswith("packet_processing_us"))
    assert line.split()[1:5] == ["us", "100", "1", "50.5"]
    reg.reset()
    assert reg.snapshot()["packet_processing_us"]["count"] == 0
    assert reg.snapshot()["packets_total"]["value"] == 0


# ---------------------------------------------------------------------------
# timers


def test_timer_context_manager_units():
    reg = Registry()
    with reg.timer("block_us") as t:
        time.sleep(0.002)
    assert isinstance(t, Timer)
    m = reg.metric("block_us")
    assert m.count == 1 and m.min >= 2000  # sleep never returns early
    with reg.timer("nap_ns"):
        time.sleep(0.001)
    assert reg.metric("nap_ns").min >= 1_000_000
    with reg.timer("plain", unit="ms"):
        time.sleep(0.001)
    assert reg.metric("plain").min >= 1
    with pytest.raises(ValueError, match="no time unit"):
        reg.timer("plain")
    with pytest.raises(ValueError, match="unit must be"):
        reg.timer("x", unit="fortnights")


def test_timer_records_on_exception_and_decorates():
    reg = Registry()
    with pytest.raises(KeyError):
        with reg.timer("fail_us"):
            raise KeyError("x")
    assert reg.metric("fail_us").count == 1

    @reg.timer("work_us")
    def work(a, *, b=1):
        """doc"""
        return a + b

    assert work(1, b=2) == 3 and work(1) == 2
    assert work.__name__ == "work" and work.__doc__ == "doc"
    assert reg.metric("work_us").count == 2

    @reg.timer("coro_us")
    async def coro(x):
        await asyncio.sleep(0.002)
        return x

    assert asyncio.run(coro(5)) == 5
    assert reg.metric("coro_us").count == 1 and reg.metric("coro_us").min >= 2000


# ---------------------------------------------------------------------------
# alerts


def test_alerts_injected_readings():
    reg = Registry()
    got = reg.alerts(readings={"cpu_percent": 97.0, "memory_percent": 50.0, "rss_bytes": 3 << 30},
                     rss_bytes=1 << 30)
    assert [(a.component, a.severity) for a in got] == [("cpu", "critical"), ("rss", "warning")]
    assert all(isinstance(a, Alert) and abs(a.timestamp - time.time()) < 3600 for a in got)
    assert "97.0%" in got[0].description
    got = reg.alerts(readings={"cpu_percent": 81.0, "memory_percent": 99.0, "rss_bytes": 1})
    assert {(a.component, a.severity) for a in got} == {("cpu", "warning"), ("memory", "critical")}
    assert reg.alerts(readings={"cpu_percent": 10.0, "memory_percent": 10.0, "rss_bytes": 1}) == []
    assert reg.alerts(cpu_percent=None, memory_percent=None,
                      readings={"cpu_percent": 500.0, "memory_percent": 100.0}) == []
    assert [a.component for a in reg.alerts(cpu_percent=5, readings={"cpu_percent": 6.0, "memory_percent": 1.0})] == ["cpu"]
    with pytest.raises(ValueError, match="unknown readings"):
        reg.alerts(readings={"gpu": 1.0})
    with pytest.raises(TypeError):
        reg.alerts(cpu_percent="high", readings={"cpu_percent": 1.0})


def test_alerts_percentile_default_and_custom():
    reg = Registry()
    quiet = {"cpu_percent": 1.0, "memory_percent": 1.0}
    m = reg.metric("packet_processing_us")
    m.record_many(np.full(100, 500))
    assert reg.alerts(readings=quiet) == []
    m.record_many(np.full(20, 20_000))  # p95 now 20,000 > 10,000
    got = reg.alerts(readings=quiet)
    assert [(a.component, a.severity) for a in got] == [("packet_processing_us", "warning")]
    assert "p95" in got[0].description and "20,000" in got[0].description
    m.record_many(np.full(100, 60_000))
    assert reg.alerts(readings=quiet)[0].severity == "critical"
    reg.metric("queue_ns").record(5)
    got = reg.alerts(readings=quiet, percentiles={"queue_ns": (50, 4), "missing": (50, 1)})
    assert [a.component for a in got] == ["queue_ns"]


def test_alerts_real_readings():
    reg = Registry()
    r = fp.metrics.process_readings(fp.metrics._CpuMeter())
    if os.path.exists("/proc/self/statm"):
        assert r["rss_bytes"] > 1 << 20
        assert 0.0 <= r["memory_percent"] <= 100.0
    time.sleep(fp.metrics.MIN_CPU_INTERVAL_S)
    got = reg.alerts(cpu_percent=(0.0, 1e9), memory_percent=None)  # any CPU use is a warning
    assert [a.component for a in got] in (["cpu"], [])


# ---------------------------------------------------------------------------
# Prometheus


def _parse(text):
    from prometheus_client.parser import text_string_to_metric_families
    return {f.name: f for f in text_string_to_metric_families(text)}


def _buckets(fam, **labels):
    """[(le, cumulative count)] of one histogram series, +Inf last."""
    out = [(float(s.labels["le"]), s.value) for s in fam.samples
           if s.name.endswith("_bucket") and all(s.labels.get(k) == v for k, v in labels.items())]
    return sorted(out)


def _value_bucket_floor(v):
    from fastpacket._native import _BUCKET_LOWER, _bucket_index
    return int(_BUCKET_LOWER[_bucket_index(int(v))])


def test_exposition_base_units_and_fixed_buckets():
    reg = Registry()
    values = np.random.default_rng(2).integers(0, 5_000_000_000, 3000)  # ns, up to 5 s
    values[:3] = (0, 100, 2_500_000)  # on bounds: 100 ns, 2.5 ms
    reg.metric("packet_processing_ns").record_many(values)
    reg.metric("empty_ns")
    reg.metric("flush_bytes").record_many([1024, 1025, 4096, 70000])
    reg.counter("packets_total").inc(12)
    reg.gauge("connections").set(3.5)
    fams = _parse(reg.exposition())
    assert set(fams) == {"fastpacket_packet_processing_seconds", "fastpacket_empty_seconds", "fastpacket_flush_bytes",
                         "fastpacket_packets", "fastpacket_connections"}
    h = fams["fastpacket_packet_processing_seconds"]
    assert h.type == "histogram"
    samples = {(s.name, s.labels.get("le")): s.value for s in h.samples}
    assert samples[("fastpacket_packet_processing_seconds_count", None)] == 3000
    assert samples[("fastpacket_packet_processing_seconds_sum", None)] == pytest.approx(values.sum() / 1e9)
    assert samples[("fastpacket_packet_processing_seconds_bucket", "+Inf")] == 3000
    buckets = _buckets(h)
    assert [le for le, _ in buckets[:-1]] == list(fp.metrics.DEFAULT_TIME_BUCKETS)
    floors = np.array([_value_bucket_floor(v) for v in values])
    for le, cum in buckets[:-1]:
        # the documented rule: a value counts under le when its native bucket starts at or below le
        assert cum == np.count_nonzero(floors <= round(le * 1e9)), le
        # ... so never more than 1/128 above le, and exact for values < 128 ns
        assert np.count_nonzero(values <= le * 1e9) <= cum <= np.count_nonzero(values <= le * 1e9 * (1 + 1 / 128))
    # empty: every bucket present, zero counts, no NaN anywhere
    e = fams["fastpacket_empty_seconds"]
    assert [le for le, _ in _buckets(e)[:-1]] == list(fp.metrics.DEFAULT_TIME_BUCKETS)
    assert all(s.value == 0 for s in e.samples)
    assert "NaN" not in reg.exposition() and "_min" not in reg.exposition()
    f = dict(_buckets(fams["fastpacket_flush_bytes"]))
    # 1025 shares its native bucket [1024, 1031] with 1024: counted under le=1024 (documented, < 0.8% off)
    assert f[512.0] == 0 and f[1024.0] == 2 and f[2048.0] == 2 and f[4096.0] == 3 and f[65536.0] == 3
    assert f[131072.0] == 4
    assert fams["fastpacket_packets"].type == "counter"
    assert fams["fastpacket_packets"].samples[0].name == "fastpacket_packets_total"
    assert fams["fastpacket_packets"].samples[0].value == 12
    assert fams["fastpacket_connections"].samples[0].value == 3.5
    assert Registry().exposition() == ""


def test_le_set_is_the_same_before_and_after_recording():
    reg = Registry()
    m = reg.metric("handler_duration_ns")
    before = [s.labels["le"] for s in _parse(reg.exposition())["fastpacket_handler_duration_seconds"].samples
              if s.name.endswith("_bucket")]
    m.record_many(np.random.default_rng(1).integers(0, 10**10, 10000))
    after = [s.labels["le"] for s in _parse(reg.exposition())["fastpacket_handler_duration_seconds"].samples
             if s.name.endswith("_bucket")]
    assert before == after and len(before) == len(fp.metrics.DEFAULT_TIME_BUCKETS) + 1


def test_prometheus_quantile_within_one_bucket_of_ours():
    # what histogram_quantile computes from the exposition lands in the
    # bucket (or the next) holding the registry's own percentile
    from fastpacket.cli.top import quantile
    rng = np.random.default_rng(4)
    for values in (np.rint(rng.lognormal(8, 1, 50000)), rng.integers(500, 4000, 50000)):
        reg = Registry()
        m = reg.metric("handler_duration_ns")
        m.record_many(values)
        bounds = list(fp.metrics.DEFAULT_TIME_BUCKETS) + [math.inf]
        cum = dict(_buckets(_parse(reg.exposition())["fastpacket_handler_duration_seconds"]))
        for q in (0.5, 0.9, 0.99):
            ours = m.percentile(q * 100) / 1e9
            theirs = quantile(q, cum)
            i_ours = next(i for i, b in enumerate(bounds) if ours <= b * (1 + 1 / 128))
            i_theirs = next(i for i, b in enumerate(bounds) if theirs <= b)
            assert abs(i_ours - i_theirs) <= 1, (q, ours, theirs)


def test_custom_buckets_and_namespace():
    reg = Registry(namespace="game")
    m = reg.metric("tick_us", buckets=[0.001, 0.005, 0.02])
    m.record_many([500, 1000, 1001, 4000, 30000])
    assert reg.buckets("tick_us") == (0.001, 0.005, 0.02)
    b = dict(_buckets(_parse(reg.exposition())["game_tick_seconds"]))
    assert b == {0.001: 3, 0.005: 4, 0.02: 4, math.inf: 5}  # 1001 µs is in the native bucket [1000, 1003]
    assert "other_tick_seconds_bucket" in reg.exposition(namespace="other")
    assert "\ntick_seconds_count" in "\n" + reg.exposition(namespace="")
    for bad in ([], [0.0, 1.0], [2.0, 1.0], [float("nan")], list(range(1, 70))):
        with pytest.raises(ValueError, match="buckets of 'tick_us'"):
            reg.set_buckets("tick_us", bad)
    with pytest.raises(ValueError, match="not a metric"):
        reg.set_buckets("nothing_us", [1.0])
    for bad in ("9lives", "a-b"):
        with pytest.raises(ValueError, match="namespace"):
            Registry(namespace=bad)


def test_labels_and_views():
    reg = Registry()
    a = reg.counter("closes_total", {"reason": "peer_closed"})
    assert reg.counter("closes_total", {"reason": "peer_closed"}) is a
    a.inc(2)
    w = reg.with_labels(worker="1")
    assert w.labels == {"worker": "1"} and reg.labels == {}
    w.counter("closes_total", {"reason": "peer_closed"}).inc()
    w.gauge("connections").set(4)
    odd = 'quote " slash \\ newline \n'
    reg.gauge("g", {"v": odd}).set(1)
    assert sorted(reg.names()) == reg.names()
    assert set(reg.names()) == {'closes_total{reason="peer_closed"}', 'closes_total{reason="peer_closed",worker="1"}',
                                'connections{worker="1"}', 'g{v="quote \\" slash \\\\ newline \\n"}'}
    fams = _parse(reg.exposition())
    closes = {tuple(sorted(s.labels.items())): s.value for s in fams["fastpacket_closes"].samples}
    assert closes == {(("reason", "peer_closed"),): 2, (("reason", "peer_closed"), ("worker", "1")): 1}
    assert fams["fastpacket_g"].samples[0].labels == {"v": odd}
    for bad in ({"le": "1"}, {"quantile": "x"}, {"__x": "y"}, {"a-b": "c"}):
        with pytest.raises(ValueError, match="label name"):
            reg.counter("x_total", bad)
    with pytest.raises(TypeError, match="values are str"):
        reg.counter("x_total", {"a": 1})
    with pytest.raises(TypeError):
        reg.counter("x_total", ["a"])


def test_no_duplicate_families():
    reg = Registry()
    reg.gauge("connections")
    with pytest.raises(ValueError, match="only counters end in _total"):
        reg.gauge("open_total")
    reg.counter("connections_accepted_total")
    with pytest.raises(ValueError, match="clashes with counter 'connections_accepted_total'"):
        reg.counter("connections_accepted")  # both would be fastpacket_connections_accepted_total
    reg.metric("rtt_us")
    with pytest.raises(ValueError, match="clashes with metric 'rtt_us'"):
        reg.metric("rtt_ns")  # both fastpacket_rtt_seconds
    with pytest.raises(ValueError, match="clashes"):
        reg.gauge("rtt_seconds_count")
    names = [f.name for f in _parse(reg.exposition()).values()]
    assert len(names) == len(set(names))


def test_reason_label_folds_unknown_reasons():
    from fastpacket.metrics import CLOSE_REASONS, DROP_REASONS, reason_label
    assert reason_label("peer closed") == "peer_closed"
    assert reason_label("protocol error: packet size 3 at stream offset 14") == "protocol_error"
    assert reason_label("handler error: KeyError: 'x'") == "handler_error"
    assert reason_label("connection lost: [Errno 104] reset") == "connection_lost"
    assert reason_label("kicked: cheating") == "other" and reason_label(None) == "closed"
    assert reason_label("rate limit", DROP_REASONS) == "rate_limit"
    assert reason_label("rate limit") == "other"  # not a close reason
    assert "worker_lost" in CLOSE_REASONS and "other" in CLOSE_REASONS and "other" in DROP_REASONS


def test_server_metrics_table_is_exposable():
    # every family the adapter and the runtime record, created at once, is
    # valid, distinct and typed as documented
    reg = Registry()
    for info in fp.metrics.SERVER_METRICS:
        getattr(reg, info.kind)(info.name, {k: "x" for k in info.labels})
    fams = _parse(reg.exposition())
    types = {"metric": "histogram", "counter": "counter", "gauge": "gauge"}
    for info in fp.metrics.SERVER_METRICS:
        name = fp.metrics.exposition_name(info.name, info.kind)
        fam = fams[name[: -len("_total")] if info.kind == "counter" else name]
        assert fam.type == types[info.kind] and fam.documentation == info.help


def test_prometheus_collector():
    from prometheus_client import CollectorRegistry, generate_latest
    reg = Registry()
    reg.metric("rtt_us").record_many(np.arange(1, 1001))
    reg.counter("frames_total").inc(3)
    reg.gauge("load").set(0.25)
    preg = CollectorRegistry()
    preg.register(PrometheusCollector(reg))
    assert generate_latest(preg).decode() == reg.exposition()
    preg = CollectorRegistry()
    preg.register(PrometheusCollector(reg, namespace="x"))
    assert "x_rtt_seconds_count 1000.0" in generate_latest(preg).decode()
    with pytest.raises(TypeError):
        PrometheusCollector(object())


def test_promtool_check_metrics_is_clean():
    import subprocess

    from tests.scrape import require_tool
    promtool = require_tool("promtool")
    reg = Registry()
    for info in fp.metrics.SERVER_METRICS:
        labels = {k: "x" for k in info.labels}
        for worker in ("0", "1"):
            getattr(reg.with_labels(worker=worker), info.kind)(info.name, labels)
    reg.metric("handler_duration_ns").record_many([50, 5000, 5_000_000])
    reg.metric("packet_processing_us").record(3)
    text = reg.exposition()
    r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)


def test_http_server_serves_text_openmetrics_and_process_metrics():
    from tests.scrape import fetch, samples
    import gzip
    import urllib.request
    reg = Registry()
    reg.counter("packets_in_total").inc(5)
    with fp.metrics.start_http_server(reg, 0) as server:
        assert server.port > 0 and server.url == f"http://127.0.0.1:{server.port}/metrics"
        text = fetch(server.url)
        assert samples(text)["fastpacket_packets_in_total"] == [({}, 5.0)]
        assert samples(text)["process_resident_memory_bytes"][0][1] > 1 << 20 or not os.path.exists("/proc")
        req = urllib.request.Request(server.url, headers={"Accept": "application/openmetrics-text; version=1.0.0",
                                                          "Accept-Encoding": "gzip"})
        with urllib.request.urlopen(req, timeout=5) as resp:
            assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
            body = gzip.decompress(resp.read()).decode() if resp.headers.get("Content-Encoding") == "gzip" \
                else resp.read().decode()
        assert "fastpacket_packets_in_total 5.0" in body and body.endswith("# EOF\n")
    with pytest.raises(OSError):
        fetch(server.url, timeout=2)
    with pytest.raises(ValueError, match="port"):
        fp.metrics.start_http_server(reg, -1)


@pytest.mark.skipif(not os.path.exists("/proc/self/stat"), reason="process metrics read /proc (Linux)")
def test_process_collector_labels_each_process():
    from prometheus_client import CollectorRegistry, generate_latest
    from tests.scrape import samples
    preg = CollectorRegistry()
    preg.register(fp.metrics.ProcessCollector(lambda: {"0": os.getpid(), "gone": 2**22 + 12345}))
    got = samples(generate_latest(preg).decode())
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds",
                 "process_start_time_seconds"):
        assert [labels for labels, _ in got[name]] == [{"worker": "0"}], name


# ---------------------------------------------------------------------------
# shared file, several processes


def _worker(path: str, k: int, n: int) -> None:
    reg = Registry(shared=path)
    m = reg.metric("packet_processing_us")
    for v in range(n):
        m.record(v * 3 + k)
    m.record_many(np.arange(n, dtype=np.uint64) * 5 + k)
    reg.counter("packets_total").inc(n)
    reg.metric(f"only_{k}_ns").record(k)
    for i in range(20):  # every process creates the same names at once
        reg.counter(f"c{i}_total").inc()
    view = reg.with_labels(worker=str(k))
    view.counter("closes_total", {"reason": "peer_closed"}).inc(k + 1)
    view.gauge("connections").set(10 * k)


def test_shared_three_processes_exact(tmp_path):
    path = str(tmp_path / "metrics.fp")
    n = 20000
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(path, k, n)) for k in range(3)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=60)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join(timeout=5)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    reg = Registry(shared=path)
    m = reg.metric("packet_processing_us")
    vals = [v * 3 + k for k in range(3) for v in range(n)] + [v * 5 + k for k in range(3) for v in range(n)]
    assert (m.count, m.sum, m.min, m.max) == exact(vals)
    check_percentiles(m, np.array(vals), ps=[50.0, 99.0])
    assert reg.counter("packets_total").value == 3 * n
    snap = reg.snapshot()
    assert all(snap[f"c{i}_total"]["value"] == 3 for i in range(20))
    assert {snap[f"only_{k}_ns"]["sum"] for k in range(3)} == {0, 1, 2}
    assert len(reg) == 1 + 1 + 3 + 20 + 3 + 3
    text = reg.exposition()
    assert "fastpacket_packet_processing_seconds_count 120000.0" in text
    # labelled series other processes created: read back from the file's slot names
    for k in range(3):
        assert f'fastpacket_closes_total{{reason="peer_closed",worker="{k}"}} {k + 1}.0' in text
        assert f'fastpacket_connections{{worker="{k}"}} {10.0 * k}' in text
    reader = Registry.open(path)  # a reader (fastpacket top) sees the same
    assert reader.exposition() == text


def test_shared_file_in_one_process(tmp_path):
    path = tmp_path / "m.fp"
    a = Registry(shared=path, slots=4)
    b = Registry(shared=str(path), slots=999)  # slots count only at creation
    assert a.slots == b.slots == 4 and a.path == str(path)
    a.metric("x_us").record(5)
    b.metric("x_us").record(7)
    a.counter("n_total").inc(2)
    assert (b.metric("x_us").count, b.metric("x_us").sum) == (2, 12)
    assert b.counter("n_total").value == 2
    with pytest.raises(ValueError, match="is a metric in metrics file"):
        Registry(shared=path).gauge("x_us")
    a.gauge("g").set(1.5)
    b.metric("y")
    with pytest.raises(FastpacketError, match="is full: all 4 slots"):
        a.metric("z")
    assert a.metric("x_us").count == 2  # existing names keep working
    with pytest.raises(ValueError, match="1..112 bytes"):
        a.metric("q" * 113)
    a.reset()
    assert b.metric("x_us").count == 0 and sorted(b.names()) == ["g", "n_total", "x_us", "y"]
    del a, b
    assert os.path.getsize(path) == 4096 + 4 * 60096


def test_open_never_creates(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fastpacket metrics file"):
        Registry.open(tmp_path / "absent")
    assert not (tmp_path / "absent").exists()


def test_shared_file_rejects_other_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\0" * 70000)
    with pytest.raises(FastpacketError, match="bad magic"):
        Registry(shared=bad)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(FastpacketError, match="too short"):
        Registry(shared=empty)
    ok = tmp_path / "ok"
    Registry(shared=ok, slots=2)
    with open(ok, "r+b") as f:
        f.truncate(4096 + 60096 + 10)
    with pytest.raises(FastpacketError, match="truncated"):
        Registry(shared=ok)


def test_top_level_exports():
    assert fp.Registry is Registry and fp.metrics.Registry is Registry
    for name in ("Registry", "Metric", "Counter", "Gauge", "Timer", "Alert", "PrometheusCollector"):
        assert getattr(fp.metrics, name).__doc__
    assert isinstance(Registry().counter("a"), Counter) and isinstance(Registry().gauge("a"), Gauge)


@pytest.mark.parametrize("cls", [Metric, Counter, Gauge])
def test_objects_made_with_new_do_not_crash(cls):
    obj = cls.__new__(cls)
    with pytest.raises(TypeError, match="holds no storage"):
        obj.reset()
    with pytest.raises(TypeError, match="holds no storage"):
        obj.value if cls is not Metric else obj.record(1)


def test_readme_lists_every_server_metric():
    readme = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
    if not os.path.exists(readme):
        pytest.skip("README.md not beside the tests")
    with open(readme, encoding="utf-8") as f:
        text = f.read()
    for info in fp.metrics.SERVER_METRICS:
        name = fp.metrics.exposition_name(info.name, info.kind)
        assert f"| `{name}` |" in text, name
    for reason in fp.metrics.CLOSE_REASONS | fp.metrics.DROP_REASONS:
        assert reason in text, reason
