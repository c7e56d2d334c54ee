"""contrib/grafana/fastpacket.json: a Grafana dashboard (Grafana's
dashboard JSON model) whose every PromQL expression names only series a
real ``fastpacket serve --workers 2 --bus URL relay`` exposes, and that covers every family
the server records. (tests/test_prometheus.py also runs each expression on
a real Prometheus.)"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import struct

import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.apps.relay import JOIN, MOVE, MOVE_FORMAT
from tests.redis_server import RedisServer, require_redis
from tests.scrape import fetch, samples, total
from tests.served import Served


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
    # the relay (handlers by type) on a real Redis bus: every family a server
    # can record is exposed, bus and packet types included
    dash = load_dashboard()
    require_redis()
    redis_server = RedisServer(str(tmp_path / "redis")).start()
    s = Served(["--workers", "2", "--metrics-port", "0", "--bus", redis_server.url, "relay"], tmp_path)
    try:
        async def traffic():
            clients = []
            for pid in range(1, 5):
                c = await aio.connect("127.0.0.1", s.port)
                c.send(JOIN, struct.pack("<I", 1), player_id=pid)
                got = await c.recv(10.0)  # the JOIN comes back once the room is joined on every server
                assert got is not None and [p.type for p in got] == [JOIN]
                clients.append(c)
            for c in clients:
                for i in range(10):
                    c.send(MOVE, MOVE_FORMAT.pack(i, 0, 0, 0), player_id=1, seq=i)
            for c in clients:  # each sees the 30 MOVEs of the other three
                got = 0
                while got < 30:
                    batch = await c.recv(10.0)
                    assert batch is not None
                    got += len(batch)
            for c in clients:
                c.close()

        asyncio.run(asyncio.wait_for(traffic(), 60))
        text = fetch(s.metrics_url)
        assert total(text, "fastpacket_packets_in_total") == 44
        assert total(text, "fastpacket_packets_by_type_total") == 44
    finally:
        s.kill()
        redis_server.stop()
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
    for info in fp.metrics.SERVER_METRICS + fp.metrics.BUS_METRICS:
        name = fp.metrics.exposition_name(info.name, info.kind)
        wanted = {name + "_bucket"} if info.kind == "metric" else {name}
        assert wanted <= used, f"{name} is on no panel"
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds"} <= used
