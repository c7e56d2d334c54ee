"""contrib/grafana/fastpacket.json: a Grafana dashboard (Grafana's
dashboard JSON model) whose every PromQL expression names only series a
real ``fastpacket serve --workers 2`` exposes, and that covers every family
the server records. (tests/test_prometheus.py also runs each expression on
a real Prometheus.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket

import pytest

import fastpacket as fp
from fastpacket import aio
from tests.scrape import fetch, samples, total
from tests.served import Served

pytestmark = pytest.mark.filterwarnings("ignore::ResourceWarning")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DASHBOARD = os.path.join(ROOT, "contrib", "grafana", "fastpacket.json")

# PromQL words that are not series names (functions are told by the "(" after them)
KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool",
            "offset", "inf", "nan"}


def load_dashboard():
    if not os.path.exists(DASHBOARD):
        pytest.skip("contrib/ not beside the tests")
    with open(DASHBOARD, encoding="utf-8") as f:
        return json.load(f)


def panels(dash):
    for p in dash["panels"]:
        yield p
        yield from p.get("panels", [])


def expressions(dash):
    """(panel title, expr) of every query target."""
    for p in panels(dash):
        for t in p.get("targets", []):
            yield p["title"], t["expr"]


def metric_names(expr):
    """The series names a PromQL expression selects."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)              # strings (label values, Grafana variables)
    e = re.sub(r"\{[^}]*\}", "", e)                             # label matchers
    e = re.sub(r"\[[^\]]*\]", "", e)                            # range selectors
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)  # label lists
    names = set()
    for m in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[m.end():].lstrip().startswith("(") or m.group(0).lower() in KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(m.group(0))
    return names


def test_metric_names_parser():
    assert metric_names('histogram_quantile(0.99, sum by (le) (rate(a_bucket{job=~"$job"}[$__rate_interval])))') \
        == {"a_bucket"}
    assert metric_names('sum(rate(x_total{a="b"}[5m])) / sum(rate(y_count[1m])) > 0') == {"x_total", "y_count"}
    assert metric_names("sum by (instance, worker) (process_open_fds)") == {"process_open_fds"}


def test_dashboard_model():
    dash = load_dashboard()
    assert dash["title"] and dash["uid"] and dash["schemaVersion"] >= 30
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids))
    for p in panels(dash):
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
    for title, expr in expressions(dash):
        assert expr.count("(") == expr.count(")") and expr.count("{") == expr.count("}"), (title, expr)
        assert 'job=~"$job"' in expr and 'instance=~"$instance"' in expr, (title, expr)


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_every_query_names_a_series_the_server_exposes(tmp_path):
    dash = load_dashboard()
    s = Served(["--workers", "2", "--metrics-port", "0", "echo"], tmp_path)
    try:
        async def traffic():
            clients = [await aio.connect("127.0.0.1", s.port) for _ in range(4)]
            for c in clients:
                c.send_batch(fp.PacketBatch.build([1] * 10, [b"x" * 20] * 10))
            for c in clients:
                got = 0
                while got < 10:
                    got += len(await c.recv(10.0))
                c.close()

        asyncio.run(asyncio.wait_for(traffic(), 30))
        text = fetch(s.metrics_url)
        assert total(text, "fastpacket_packets_in_total") == 40
    finally:
        s.kill()
    exposed = set(samples(text))
    used = set()
    for title, expr in expressions(dash):
        names = metric_names(expr)
        assert names, (title, expr)
        assert names <= exposed, f"panel {title!r}: {sorted(names - exposed)} not exposed by the server"
        used |= names
    for v in dash["templating"]["list"]:
        if v["type"] == "query":
            m = re.match(r"label_values\(\s*([a-zA-Z_:][\w:]*)", v["query"]["query"])
            assert m and m.group(1) in exposed, v["name"]
    # every family the server records is on the dashboard
    for info in fp.metrics.SERVER_METRICS:
        name = fp.metrics.exposition_name(info.name, info.kind)
        wanted = {name + "_bucket"} if info.kind == "metric" else {name}
        assert wanted <= used, f"{name} is on no panel"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= used
