# Metrics: lock-free metrics (count, sum, min, max, sum of squares, log-linear
# histogram), counters, gauges, timers, and the shared-memory metrics file.
# The algorithms are in csrc/fastpacket/metrics.hpp; fastpacket.metrics holds
# the Registry, alerts and Prometheus exposition.

from cpython.float cimport PyFloat_AS_DOUBLE, PyFloat_Check, PyFloat_CheckExact
from cpython.long cimport PyLong_CheckExact
from cpython.exc cimport PyErr_Clear, PyErr_Occurred
from cpython.buffer cimport PyBUF_WRITABLE
from libc.math cimport isnan, nearbyint, sqrt

import functools as _functools
import inspect as _inspect
import operator as _operator


cdef extern from "Python.h":
    # Declared without an exception spec: record() checks PyErr_Occurred
    # itself to turn OverflowError into the ValueError it documents.
    unsigned long long _pylong_as_u64 "PyLong_AsUnsignedLongLong"(object) noexcept


# record_many releases the GIL from this many values on; below it the
# release/re-acquire costs more than the recording.
cdef enum:
    METRICS_NOGIL_MIN_VALUES = 256

cdef double _TWO64 = 18446744073709551616.0


def _bucket_bounds():
    """(lower, upper, middle) numpy uint64 arrays of the histogram buckets."""
    cdef unsigned i
    lower = np.empty(kMetricBuckets, dtype=np.uint64)
    upper = np.empty(kMetricBuckets, dtype=np.uint64)
    middle = np.empty(kMetricBuckets, dtype=np.uint64)
    cdef uint64_t[::1] lo = lower, hi = upper, mid = middle
    for i in range(kMetricBuckets):
        lo[i] = bucket_lower(i)
        hi[i] = bucket_upper(i)
        mid[i] = bucket_middle(i)
    return lower, upper, middle


def _bucket_index(uint64_t value):
    """Histogram bucket of a value (for tests and exposition)."""
    return bucket_index(value)


METRIC_BYTES = kMetricCoreBytes
MAX_NAME_BYTES = kMaxNameBytes


_BOOL_TYPES = (type(True), np.bool_)


cdef object _describe(object value):
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


cdef uint64_t _value_arg(object value, str where) except? 0xFFFFFFFFFFFFFFFF:
    """A metric value: an int in [0, 2**64) or a finite float >= 0 rounded to
    the nearest integer (ties to even); bools are refused (a True recorded
    as 1 is almost always a bug)."""
    cdef double d, r
    if isinstance(value, _BOOL_TYPES):
        raise TypeError(f"{where} takes a non-negative int or float, not {_describe(value)}")
    if PyFloat_Check(value):
        d = PyFloat_AS_DOUBLE(value)
        if isnan(d) or d < 0.0 or d == float("inf"):
            raise ValueError(f"{where} takes a finite value >= 0, got {value!r}")
        r = nearbyint(d)
        if r >= _TWO64:
            raise ValueError(f"{where} takes values below 2**64, got {value!r}")
        return <uint64_t>r
    try:
        ivalue = _operator.index(value)
    except TypeError:
        if hasattr(value, "__float__") and not isinstance(value, (str, bytes)):
            return _value_arg(float(value), where)
        raise TypeError(f"{where} takes a non-negative int or float, not {_describe(value)}") from None
    if ivalue < 0:
        raise ValueError(f"{where} takes values >= 0, got {ivalue}")
    if ivalue >= (1 << 64):
        raise ValueError(f"{where} takes values below 2**64, got {ivalue}")
    return <uint64_t>ivalue


cdef int _unattached(obj) except -1:
    raise TypeError(f"this {type(obj).__name__} was made with __new__ and holds no storage; "
                    f"use Registry.{type(obj).__name__.lower()}(name) or {type(obj).__name__}(name)")


cdef inline object _u128(U128 v):
    return (<object>v.hi << 64) | <object>v.lo


@cython.final
cdef class Metric:
    """A lock-free metric of non-negative integers in one unit.

    record(v) adds a value: count, sum, min, max, sum of squares and a
    log-linear histogram (7424 buckets, percentiles within 0.4%) are
    updated with atomic operations only, from any thread, with or without
    the GIL, and across processes when the metric lives in a shared file.

    Create metrics with Registry.metric(name); Metric(name) makes a
    standalone one in process-private memory.
    """

    def __cinit__(self):
        self.c = NULL
        self._owns = False

    def __init__(self, str name, unit=None):
        self.c = create_zeroed[MetricCore]()
        self._owns = True
        self.name = name
        self.unit = unit

    def __dealloc__(self):
        if self._owns and self.c != NULL:
            destroy_zeroed[MetricCore](self.c)
            self.c = NULL

    def __repr__(self):
        return f"<Metric {self.name!r} count={self.count}>"

    @cython.always_allow_keywords(False)
    def record(self, value):
        """record(value): add one value (int >= 0; a float is rounded to the
        nearest integer). Raises ValueError for negative, NaN, infinite or
        >= 2**64 values and TypeError for non-numbers (and bools)."""
        cdef uint64_t v
        cdef double d
        if self.c == NULL:
            _unattached(self)
        if PyLong_CheckExact(value):
            v = _pylong_as_u64(value)
            if v == <uint64_t>0xFFFFFFFFFFFFFFFF and PyErr_Occurred() != NULL:
                PyErr_Clear()
                v = _value_arg(value, "record(value)")  # raises the ValueError
            self.c.record(v)
            return
        if PyFloat_CheckExact(value):
            d = PyFloat_AS_DOUBLE(value)
            if d >= 0.0:
                d = nearbyint(d)
                if d < _TWO64:
                    self.c.record(<uint64_t>d)
                    return
        self.c.record(_value_arg(value, "record(value)"))

    def record_many(self, values):
        """record_many(values): add every value of an array (or sequence) of
        ints or floats, all or nothing: one bad value (negative, NaN,
        infinite, >= 2**64) raises ValueError naming its index and records
        none. The GIL is released while recording."""
        if self.c == NULL:
            _unattached(self)
        arr = np.asarray(values)
        kind = arr.dtype.kind
        if kind == "u":
            arr = np.ascontiguousarray(arr, dtype=np.uint64).reshape(-1)
        elif kind == "i":
            arr = np.ascontiguousarray(arr, dtype=np.int64).reshape(-1)
        elif kind == "f":
            arr = np.ascontiguousarray(arr, dtype=np.float64).reshape(-1)
        elif arr.size == 0:
            return
        else:
            raise TypeError(f"record_many() takes an array of ints or floats, not dtype {arr.dtype}")
        cdef size_t n = arr.shape[0]
        cdef void* data = cnp.PyArray_DATA(<cnp.ndarray>arr)
        cdef ManyResult r
        cdef char k = ord(kind)
        if n >= METRICS_NOGIL_MIN_VALUES:
            with nogil:
                r = self._many(k, data, n)
        else:
            r = self._many(k, data, n)
        if r.error != ManyError.none:
            bad = arr[r.index].item()
            reason = {
                ManyError.negative: "values must be >= 0",
                ManyError.not_finite: "values must be finite",
                ManyError.too_large: "values must be below 2**64",
            }[r.error]
            raise ValueError(f"record_many(): element {r.index} is {bad!r} ({reason}); nothing was recorded")

    cdef ManyResult _many(self, char kind, void* data, size_t n) noexcept nogil:
        if kind == b"u":
            return record_many[uint64_t](self.c[0], <const uint64_t*>data, n)
        if kind == b"i":
            return record_many[int64_t](self.c[0], <const int64_t*>data, n)
        return record_many[double](self.c[0], <const double*>data, n)

    cdef void _record_elapsed(self, uint64_t start_ns, uint64_t ns_per_unit) noexcept:
        cdef uint64_t elapsed = monotonic_ns() - start_ns
        self.c.record((elapsed + ns_per_unit // 2) // ns_per_unit)

    @property
    def count(self):
        """Number of values recorded."""
        if self.c == NULL:
            _unattached(self)
        return self.c.count()

    @property
    def sum(self):
        """Exact sum of the values (a Python int; kept in 128 bits)."""
        if self.c == NULL:
            _unattached(self)
        return _u128(self.c.sum())

    @property
    def min(self):
        """Smallest value, or None when empty."""
        if self.c == NULL:
            _unattached(self)
        return self.c.min_value() if self.c.count() else None

    @property
    def max(self):
        """Largest value, or None when empty."""
        if self.c == NULL:
            _unattached(self)
        return self.c.max_value() if self.c.count() else None

    @property
    def mean(self):
        """Mean of the values (float), or None when empty."""
        if self.c == NULL:
            _unattached(self)
        n = self.c.count()
        return _u128(self.c.sum()) / n if n else None

    @property
    def stddev(self):
        """Population standard deviation (float), or None when empty. Exact
        from Σv and Σv² while Σv² < 2**128, else from the histogram (≈0.4%)."""
        if self.c == NULL:
            _unattached(self)
        cdef uint64_t n = self.c.count()
        if n == 0:
            return None
        s1 = _u128(self.c.sum())
        if self.c.flag_bits() & kFlagSumSqWrapped:
            counts = self._buckets().astype(np.float64)
            total = counts.sum()
            mean = float(s1) / n
            # bucket middles clamped to [min, max] (a constant stream is exact)
            mid = np.clip(_BUCKET_MIDDLE, self.c.min_value(), self.c.max_value()).astype(np.float64)
            return float(np.sqrt((counts * (mid - mean) ** 2).sum() / total)) if total else 0.0
        s2 = _u128(self.c.sumsq())
        num = n * s2 - s1 * s1  # exact integers: no cancellation
        return sqrt(<double>float(max(num, 0))) / <double>n

    def percentile(self, p):
        """Value at percentile p (0..100) within 0.4% relative error, the
        numpy "inverted_cdf" definition (an observed value); None when empty."""
        if self.c == NULL:
            _unattached(self)
        cdef double pv = double_arg(p, "p (the percentile)", 0.0, 100.0)
        cdef uint64_t out = 0
        if self.c.percentiles(&pv, 1, &out) == 0:
            return None
        return out

    def percentiles(self, ps):
        """[value at p for p in ps] in one pass over the histogram (None
        entries when empty)."""
        if self.c == NULL:
            _unattached(self)
        cdef double buf_p[16]
        cdef uint64_t buf_v[16]
        cdef Py_ssize_t i, k = len(ps)
        if k > 16:
            return [self.percentile(p) for p in ps]
        for i in range(k):
            buf_p[i] = ps[i]
            if not (0.0 <= buf_p[i] <= 100.0):
                raise ValueError(f"percentile takes p in [0, 100], got {ps[i]!r}")
        if self.c.percentiles(buf_p, k, buf_v) == 0:
            return [None] * k
        return [buf_v[i] for i in range(k)]

    def snapshot(self, ps=(50.0, 90.0, 95.0, 99.0, 99.9)):
        """A dict: count, sum, min, max, mean, stddev, unit and p50/p90/...
        for the percentiles ps."""
        snap = {
            "type": "metric",
            "unit": self.unit,
            "count": self.count,
            "sum": self.sum,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "stddev": self.stddev,
        }
        for p, v in zip(ps, self.percentiles(ps)):
            snap[f"p{p:g}"] = v
        return snap

    def reset(self):
        """Zero the metric (not atomic as a whole: values recorded by other
        threads during the reset may be partly kept)."""
        if self.c == NULL:
            _unattached(self)
        self.c.reset()

    def _buckets(self):
        """Copy of the 7424 bucket counters (numpy uint64)."""
        if self.c == NULL:
            _unattached(self)
        out = np.empty(kMetricBuckets, dtype=np.uint64)
        cdef uint64_t[::1] view = out
        self.c.copy_buckets(&view[0])
        return out


_BUCKET_LOWER, _BUCKET_UPPER, _BUCKET_MIDDLE = _bucket_bounds()


@cython.final
cdef class Counter:
    """A lock-free counter: a u64 that only goes up (wraps at 2**64)."""

    def __cinit__(self):
        self.c = NULL
        self._owns = False

    def __init__(self, str name):
        self.c = create_zeroed[CounterCore]()
        self._owns = True
        self.name = name

    def __dealloc__(self):
        if self._owns and self.c != NULL:
            destroy_zeroed[CounterCore](self.c)
            self.c = NULL

    def __repr__(self):
        return f"<Counter {self.name!r} value={self.value}>"

    def inc(self, n=1):
        """inc(n=1): add n (an int >= 0)."""
        if self.c == NULL:
            _unattached(self)
        cdef uint64_t v
        if PyLong_CheckExact(n):
            v = _pylong_as_u64(n)
            if v == <uint64_t>0xFFFFFFFFFFFFFFFF and PyErr_Occurred() != NULL:
                PyErr_Clear()
                v = _value_arg(n, "inc(n)")
        else:
            if PyFloat_Check(n):
                raise TypeError(f"inc(n) takes an int >= 0, not {_describe(n)}")
            v = _value_arg(n, "inc(n)")
        self.c.add(v)

    @property
    def value(self):
        """The count."""
        if self.c == NULL:
            _unattached(self)
        return self.c.get()

    def reset(self):
        """Set the counter back to 0."""
        if self.c == NULL:
            _unattached(self)
        self.c.reset()


@cython.final
cdef class Gauge:
    """A lock-free gauge: one float, set() by the last writer, inc()/dec()
    by compare-exchange so concurrent adds all count."""

    def __cinit__(self):
        self.c = NULL
        self._owns = False

    def __init__(self, str name):
        self.c = create_zeroed[GaugeCore]()
        self._owns = True
        self.name = name

    def __dealloc__(self):
        if self._owns and self.c != NULL:
            destroy_zeroed[GaugeCore](self.c)
            self.c = NULL

    def __repr__(self):
        return f"<Gauge {self.name!r} value={self.value}>"

    def set(self, value):
        """set(value): the gauge now reads value (a real number, not NaN)."""
        if self.c == NULL:
            _unattached(self)
        self.c.set(double_arg(value, "value", -INFINITY, INFINITY))

    def inc(self, n=1.0):
        """inc(n=1): add n."""
        if self.c == NULL:
            _unattached(self)
        self.c.add(double_arg(n, "n", -INFINITY, INFINITY))

    def dec(self, n=1.0):
        """dec(n=1): subtract n."""
        if self.c == NULL:
            _unattached(self)
        self.c.add(-double_arg(n, "n", -INFINITY, INFINITY))

    @property
    def value(self):
        """The current value (float)."""
        if self.c == NULL:
            _unattached(self)
        return self.c.get()

    def reset(self):
        """Set the gauge back to 0.0."""
        if self.c == NULL:
            _unattached(self)
        self.c.reset()


@cython.final
cdef class Timer:
    """Times a block (``with timer:``) or every call of a function (used as
    a decorator) and records the elapsed time into a metric in its unit
    (ns_per_unit: 1 for ns, 1000 for µs, ...), rounded to the nearest unit.
    The time is recorded even when the block raises. One Timer object times
    one ``with`` block at a time; the decorator is safe from many threads."""

    def __init__(self, Metric metric not None, ns_per_unit):
        ns_per_unit = u64_arg(ns_per_unit, "ns_per_unit")
        if ns_per_unit == 0:
            raise ValueError("ns_per_unit must be >= 1")
        if metric.c == NULL:
            _unattached(metric)
        self.metric = metric
        self._ns_per_unit = ns_per_unit

    def __enter__(self):
        self._start = monotonic_ns()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.metric._record_elapsed(self._start, self._ns_per_unit)
        return False

    def __call__(self, fn):
        cdef Metric metric = self.metric
        cdef uint64_t ns_per_unit = self._ns_per_unit
        if _inspect.iscoroutinefunction(fn):
            @_functools.wraps(fn)
            async def timed_async(*args, **kwargs):
                cdef uint64_t start = monotonic_ns()
                try:
                    return await fn(*args, **kwargs)
                finally:
                    metric._record_elapsed(start, ns_per_unit)
            return timed_async

        @_functools.wraps(fn)
        def timed(*args, **kwargs):
            cdef uint64_t start = monotonic_ns()
            try:
                return fn(*args, **kwargs)
            finally:
                metric._record_elapsed(start, ns_per_unit)
        return timed


_KIND_NAMES = {MetricKind.metric: "metric", MetricKind.counter: "counter", MetricKind.gauge: "gauge"}
_KINDS = {"metric": MetricKind.metric, "counter": MetricKind.counter, "gauge": MetricKind.gauge}


@cython.final
cdef class MetricsFile:
    """MetricsFile(mapping, str path)

    The slot table of a shared metrics file, over a writable mapping
    (an mmap.mmap) that it keeps exported, hence open, while it lives.
    fastpacket.metrics.Registry(shared=path) creates and maps the file."""

    def __cinit__(self, mapping, str path):
        self._has_view = False
        PyObject_GetBuffer(mapping, &self._view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        self._has_view = True
        self.mapping = mapping
        self.path = path
        cdef TableError err = self.t.attach(<uint8_t*>self._view.buf, self._view.len)
        if err != TableError.none:
            reason = {
                TableError.too_small: "shorter than its header",
                TableError.bad_magic: "not a fastpacket metrics file (bad magic)",
                TableError.bad_version: "written by another version of fastpacket",
                TableError.bad_size: "truncated or its header's sizes disagree",
            }[err]
            nbytes = self._view.len
            PyBuffer_Release(&self._view)
            self._has_view = False
            raise FastpacketError(f"metrics file {path!r} ({nbytes} bytes): {reason}")

    def __dealloc__(self):
        if self._has_view:
            PyBuffer_Release(&self._view)
            self._has_view = False

    @staticmethod
    def file_bytes(slots):
        """Size of a metrics file with `slots` slots."""
        return file_bytes_for(u64_arg(slots, "slots", 0xFFFFFFFF))  # a u32 in the file

    @staticmethod
    def init_header(mapping, slots):
        """Write the header of a new zero-filled file (before it is linked
        into place, so nobody sees it half written)."""
        slots = u64_arg(slots, "slots", 0xFFFFFFFF)  # a u32 in the file
        cdef Py_buffer view
        PyObject_GetBuffer(mapping, &view, PyBUF_SIMPLE | PyBUF_WRITABLE)
        try:
            if <size_t>view.len < file_bytes_for(slots):
                raise ValueError(f"mapping of {view.len} bytes is too small for {slots} slots")
            SharedTable.init(<uint8_t*>view.buf, slots)
        finally:
            PyBuffer_Release(&view)

    @property
    def slots(self):
        """Number of slots (metrics, counters and gauges together)."""
        return self.t.slot_count()

    def lookup(self, str name, str kind, unit=None):
        """The Metric, Counter or Gauge named `name` in the file, claiming a
        slot for it when no process has yet."""
        cdef bytes raw = name.encode("utf-8")
        cdef uint32_t slot = 0
        cdef SlotStatus st
        cdef MetricKind k = _KINDS[kind]
        if len(raw) == 0 or <size_t>len(raw) > kMaxNameBytes:
            raise ValueError(f"metric names in a shared file take 1..{kMaxNameBytes} bytes, got {len(raw)}")
        st = self.t.lookup(raw, len(raw), k, &slot)
        if st == SlotStatus.bad_name:
            raise ValueError(f"metric names in a shared file take 1..{kMaxNameBytes} bytes, got {len(raw)}")
        if st == SlotStatus.full:
            raise FastpacketError(
                f"metrics file {self.path!r} is full: all {self.t.slot_count()} slots hold other names; "
                f"cannot add {kind} {name!r} (create the file with more slots)")
        if st == SlotStatus.busy:
            raise FastpacketError(f"metrics file {self.path!r}: slot {slot} stayed half-claimed "
                                  f"(a process died while creating a metric?)")
        if st == SlotStatus.kind_mismatch:
            other = _KIND_NAMES.get(<MetricKind>self.t.header(slot).kind, "unknown")
            raise ValueError(f"{name!r} is a {other} in metrics file {self.path!r}, not a {kind}")
        return self._wrap(slot, k, name, unit)

    cdef object _wrap(self, uint32_t slot, MetricKind k, str name, unit):
        cdef Metric m
        cdef Counter c
        cdef Gauge g
        if k == MetricKind.metric:
            m = Metric.__new__(Metric)
            m.c = <MetricCore*>self.t.data(slot)
            m._keepalive = self
            m.name = name
            m.unit = unit
            return m
        if k == MetricKind.counter:
            c = Counter.__new__(Counter)
            c.c = <CounterCore*>self.t.data(slot)
            c._keepalive = self
            c.name = name
            return c
        g = Gauge.__new__(Gauge)
        g.c = <GaugeCore*>self.t.data(slot)
        g._keepalive = self
        g.name = name
        return g

    def entries(self):
        """[(name, kind)] of every ready slot, in slot order."""
        cdef uint32_t i
        cdef SlotHeader* h
        out = []
        for i in range(self.t.slot_count()):
            if self.t.state(i) != SlotState.ready:
                continue
            h = self.t.header(i)
            if h.name_len > kMaxNameBytes:
                continue  # never written by us; do not read past the name field
            name = h.name[:h.name_len].decode("utf-8", "replace")
            out.append((name, _KIND_NAMES.get(<MetricKind>h.kind, "unknown")))
        return out
