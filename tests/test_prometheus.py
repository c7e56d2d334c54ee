"""Against a real Prometheus (Debian's `prometheus` package; .ci/run
installs it): it scrapes ``fastpacket serve --workers 2`` every second
while ``fastpacket load`` runs, and

- the ``le`` set it sees is the same before and after the load (the
  configured bounds, for every worker);
- ``histogram_quantile`` over the buckets lands within one bucket of the
  registry's own percentiles (per worker and for the whole server), and
  the buckets' increase over the run is monotonic in ``le``;
- every expression of the Grafana dashboard evaluates;
- ``promtool check metrics`` finds nothing to say about the live /metrics.

Prometheus listens on a free loopback port and keeps its data under
tmp_path; both processes are stopped by the test, every wait bounded.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request

import numpy as np
import pytest

import fastpacket as fp
from tests.scrape import fetch, require_tool
from tests.served import CMD, Served
from tests.test_dashboard import expressions, load_dashboard

pytestmark = [pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")]

SCRAPE_INTERVAL_S = 1
START_WAIT_S = 60.0
START_ATTEMPTS = 3
SCRAPE_WAIT_S = 30.0
LOAD_SECONDS = 3
HISTOGRAM = "fastpacket_handler_duration_seconds"
BOUNDS = list(fp.metrics.DEFAULT_TIME_BUCKETS) + [math.inf]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Prometheus:
    """A Prometheus process scraping one target every SCRAPE_INTERVAL_S."""

    def __init__(self, binary, target, tmp_path):
        tmp_path.mkdir()
        self.port = free_port()
        config = tmp_path / "prometheus.yml"
        config.write_text(f"""
global:
  scrape_interval: {SCRAPE_INTERVAL_S}s
  evaluation_interval: {SCRAPE_INTERVAL_S}s
scrape_configs:
  - job_name: fastpacket
    static_configs:
      - targets: ["{target}"]
""")
        self.log = open(tmp_path / "prometheus.log", "wb")
        self.proc = subprocess.Popen(
            [binary, f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=tmp_path)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "prometheus.log"

    def wait_ready(self):
        """True once /-/ready answers; False when Prometheus exited (its
        free port taken meanwhile: the caller tries another)."""
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                    if r.status == 200:
                        return True
            except OSError:
                pass
            time.sleep(0.2)
        pytest.fail(f"prometheus not ready within {START_WAIT_S} s: {self.log_path.read_text()}")

    def query(self, expr):
        """The result vector of an instant query: [(labels, value)]."""
        url = self.url + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=10) as r:
            body = json.load(r)
        assert body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body)
        return [(item["metric"], float(item["value"][1])) for item in body["data"]["result"]]

    def wait_for(self, expr, ok, what):
        deadline = time.monotonic() + SCRAPE_WAIT_S
        result = None
        while time.monotonic() < deadline:
            result = self.query(expr)
            if ok(result):
                return result
            time.sleep(0.2)
        pytest.fail(f"{what}: {expr} gave {result} for {SCRAPE_WAIT_S} s")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()


def bucket_index(v):
    """Index of the first bound >= v (a value a hair over a bound by the native
    resolution, 1/128, counts under it)."""
    return next(i for i, b in enumerate(BOUNDS) if v <= b * (1 + 1 / 128))


def merged_percentile(metrics, p):
    """The registry's percentile over several series of one family: the
    native rule (rank ceil(n p / 100), middle of its bucket, clamped to
    [min, max]) on the summed buckets."""
    from fastpacket._native import _BUCKET_MIDDLE
    counts = sum(m._buckets() for m in metrics)
    n = int(counts.sum())
    rank = max(1, math.ceil(n * p / 100))
    idx = int(np.searchsorted(np.cumsum(counts), rank))
    lo = min(m.min for m in metrics if m.count)
    hi = max(m.max for m in metrics if m.count)
    return min(max(int(_BUCKET_MIDDLE[idx]), lo), hi)


def le_set(prom):
    result = prom.query(f"count by (le) ({HISTOGRAM}_bucket)")
    assert all(v == 2 for _, v in result), result  # every le on both workers
    return {labels["le"] for labels, _ in result}


def test_real_prometheus_reads_the_histograms_right(tmp_path):
    binary = require_tool("prometheus")
    promtool = require_tool("promtool")
    metrics_file = tmp_path / "server.metrics"
    s = Served(["--workers", "2", "--metrics-port", "0", "--metrics-file", str(metrics_file), "echo"],
               tmp_path)
    prom = None
    try:
        for attempt in range(START_ATTEMPTS):
            prom = Prometheus(binary, f"127.0.0.1:{s.metrics_port}", tmp_path / f"prometheus-{attempt}")
            if prom.wait_ready():
                break
            prom.stop()
        else:
            pytest.fail(f"prometheus exited at start {START_ATTEMPTS} times: {prom.log_path.read_text()}")
        prom.wait_for('up{job="fastpacket"}', lambda r: r and r[0][1] == 1, "the target is up")
        prom.wait_for(f"count({HISTOGRAM}_bucket)", lambda r: bool(r), "the histogram is scraped")
        before = le_set(prom)
        assert before == {fp.metrics.exposition_le(b) for b in fp.metrics.DEFAULT_TIME_BUCKETS} | {"+Inf"}

        load = subprocess.run(CMD + ["load", "--port", str(s.port), "--seconds", str(LOAD_SECONDS),
                                     "--connections", "8", "--json"],
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert load.returncode == 0, load.stderr
        assert json.loads(load.stdout)["sent"] > 0

        reg = fp.Registry.open(metrics_file)
        per_worker = {w: reg.metric("handler_duration_ns", {"worker": w}) for w in ("0", "1")}
        calls = sum(m.count for m in per_worker.values())
        assert calls > 100 and all(m.count for m in per_worker.values())
        # the load is over: wait for a scrape that has every handler call
        prom.wait_for(f"sum({HISTOGRAM}_count)", lambda r: r and r[0][1] == calls, "the last handler calls")
        assert le_set(prom) == before

        for q in (0.5, 0.9, 0.99):
            for w, m in per_worker.items():
                (theirs,) = prom.query(f'histogram_quantile({q}, sum by (le) ({HISTOGRAM}_bucket{{worker="{w}"}}))')
                ours = m.percentile(q * 100) / 1e9
                assert abs(bucket_index(theirs[1]) - bucket_index(ours)) <= 1, (q, w, theirs[1], ours)
            (theirs,) = prom.query(f"histogram_quantile({q}, sum by (le) ({HISTOGRAM}_bucket))")
            ours = merged_percentile(list(per_worker.values()), q * 100) / 1e9
            assert abs(bucket_index(theirs[1]) - bucket_index(ours)) <= 1, (q, theirs[1], ours)
            (theirs,) = prom.query(f"histogram_quantile({q}, sum by (le) (increase({HISTOGRAM}_bucket[5m])))")
            assert abs(bucket_index(theirs[1]) - bucket_index(ours)) <= 1, (q, "increase", theirs[1], ours)

        # what broke before: bucket rates that fall as le grows
        increase = prom.query(f"sum by (le) (increase({HISTOGRAM}_bucket[5m]))")
        ordered = [v for _, v in sorted(increase, key=lambda lv: float(lv[0]["le"]))]
        assert ordered == sorted(ordered) and ordered[-1] > 0, ordered

        grafana = {"$job": ".*", "$instance": ".*", "$__rate_interval": "5s", "$__range": "5m"}
        for title, expr in expressions(load_dashboard()):
            for var, value in grafana.items():
                expr = expr.replace(var, value)
            prom.query(expr)  # asserts success

        text = fetch(s.metrics_url)
        r = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and r.stdout == "" and r.stderr == "", (r.stdout, r.stderr)
    finally:
        if prom is not None:
            prom.stop()
        code, out, err = s.stop()
    assert code == 0, err
    assert not os.path.exists(metrics_file)  # serve removes its metrics file at exit
