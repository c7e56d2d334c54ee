"""Metrics: record() per call beside a plain-Python class, prometheus_client
and hdrhistogram; record_many by thread count (the GIL is released);
p50 + p95 + p99 beside sorting and numpy.percentile; one /metrics
exposition of a server's series by worker count."""

import threading
from collections import deque

import numpy as np

from fastpacket.cli.bench.metrics import MAX_VALUE, PCTS, PlainMetric, _hdr_histogram, _prometheus_histogram
from fastpacket.metrics import SERVER_METRICS, Metric, Registry

CALLS = 100_000


class RecordOne:
    """One record() call per value, 100,000 values (time / 1e5 = per call)."""

    params = ["python", "prometheus", "hdrhistogram", "fastpacket"]
    param_names = ["impl"]

    def setup(self, impl):
        self.values = np.random.default_rng(1).integers(0, MAX_VALUE, CALLS).tolist()
        if impl == "python":
            self.record = PlainMetric().record
        elif impl == "prometheus":
            hist = _prometheus_histogram()
            if hist is None:
                raise NotImplementedError("prometheus_client not installed")
            self.record = hist.observe
        elif impl == "hdrhistogram":
            hdr = _hdr_histogram()
            if hdr is None:
                raise NotImplementedError("hdrhistogram not installed")
            self.record = hdr.record_value
        else:
            self.record = Metric("bench_us").record

    def time_record(self, impl):
        deque(map(self.record, self.values), 0)


class RecordMany:
    """record_many of 4M int64 values split over 1, 2 or 4 threads into one
    metric: with the GIL released the time falls with threads (up to cores)."""

    params = [[1, 2, 4]]
    param_names = ["threads"]

    def setup(self, threads):
        arr = np.random.default_rng(2).integers(0, MAX_VALUE, 4_000_000)
        self.parts = np.array_split(arr, threads)
        self.metric = Metric("bench_us")

    def time_record_many(self, threads):
        if threads == 1:
            self.metric.record_many(self.parts[0])
            return
        ts = [threading.Thread(target=self.metric.record_many, args=(p,)) for p in self.parts]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


class Percentiles:
    """p50, p95 and p99 of 1,000 values."""

    params = ["sort", "numpy", "hdrhistogram", "fastpacket"]
    param_names = ["impl"]

    def setup(self, impl):
        values = np.random.default_rng(3).integers(0, MAX_VALUE, 1000)
        self.values = values
        self.as_list = values.tolist()
        self.ranks = [max(1, -(-1000 * int(p * 10) // 1000)) - 1 for p in PCTS]
        if impl == "hdrhistogram":
            self.hdr = _hdr_histogram()
            if self.hdr is None:
                raise NotImplementedError("hdrhistogram not installed")
            for v in self.as_list:
                self.hdr.record_value(v)
        self.metric = Metric("bench_us")
        self.metric.record_many(values)
        self.fn = {
            "sort": self._sort,
            "numpy": lambda: np.percentile(self.values, PCTS, method="inverted_cdf"),
            "hdrhistogram": lambda: [self.hdr.get_value_at_percentile(p) for p in PCTS],
            "fastpacket": lambda: self.metric.percentiles(PCTS),
        }[impl]

    def _sort(self):
        s = sorted(self.as_list)
        return [s[k] for k in self.ranks]

    def time_percentiles(self, impl):
        self.fn()


class Exposition:
    """Registry.exposition() of every series a server records (the adapter's
    and the supervisor's, reasons included), with 1 or 8 workers' labels and
    values in every histogram: the cost of one scrape."""

    params = [[1, 8]]
    param_names = ["workers"]

    def setup(self, workers):
        self.reg = Registry()
        values = np.random.default_rng(4).integers(0, 10**7, 10_000)
        for w in range(workers):
            view = self.reg.with_labels(worker=str(w))
            for info in SERVER_METRICS:
                item = getattr(view, info.kind)(info.name, {k: "other" for k in info.labels})
                if info.kind == "metric":
                    item.record_many(values)
        self.reg.exposition()  # prometheus_client is imported on first use: not part of a scrape

    def time_exposition(self, workers):
        self.reg.exposition()
