# Metrics (_metrics.pxi): lock-free metrics, counters, gauges, timers and
# the shared-memory metrics file.

@cython.final
cdef class Metric:
    cdef MetricCore* c
    cdef bint _owns
    cdef object _keepalive              # the MetricsFile whose mapping holds c
    cdef readonly str name
    cdef readonly object unit

    cdef ManyResult _many(self, char kind, void* data, size_t n) noexcept nogil
    cdef void _record_elapsed(self, uint64_t start_ns, uint64_t ns_per_unit) noexcept


@cython.final
cdef class Counter:
    cdef CounterCore* c
    cdef bint _owns
    cdef object _keepalive
    cdef readonly str name


@cython.final
cdef class Gauge:
    cdef GaugeCore* c
    cdef bint _owns
    cdef object _keepalive
    cdef readonly str name


@cython.final
cdef class Timer:
    cdef readonly Metric metric
    cdef uint64_t _ns_per_unit
    cdef uint64_t _start


@cython.final
cdef class MetricsFile:
    cdef Py_buffer _view
    cdef bint _has_view
    cdef SharedTable t
    cdef readonly object mapping
    cdef readonly str path

    cdef object _wrap(self, uint32_t slot, MetricKind k, str name, unit)
