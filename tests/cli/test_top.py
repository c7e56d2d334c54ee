"""``fastpacket top``: one frame (--once) of a running ``fastpacket serve
--workers 2`` read from its /metrics URL and from its metrics file while
clients talk to it; the live view's refreshes and Ctrl-C; bad targets; the
frame arithmetic on hand-made readings. Every wait bounded."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys

import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.cli.top import CLEAR, Reading, parse_exposition, quantile, render
from tests.served import CMD, Served

CLIENTS = 6


def frame_rows(out):
    """{first cell: the row's cells} of the table in a frame."""
    rows = {}
    for line in out.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if len(cells) >= 8:
            rows[cells[0]] = cells
    return rows


async def top_while_talking(port, target, extra=()):
    """Runs `fastpacket top --once TARGET` while CLIENTS sessions echo
    packets; (exit code, stdout, stderr)."""
    clients = [await aio.connect("127.0.0.1", port) for _ in range(CLIENTS)]
    proc = await asyncio.create_subprocess_exec(*CMD, "top", "--once", "--interval", "0.5", target, *extra,
                                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    waiter = asyncio.ensure_future(proc.communicate())
    while not waiter.done():
        for c in clients:
            c.send_batch(fp.PacketBatch.build([1] * 20, [b"m" * 20] * 20))
        for c in clients:
            got = 0
            while got < 20:
                got += len(await c.recv(10.0))
        await asyncio.sleep(0.01)
    out, err = await waiter
    for c in clients:
        c.close()
    await asyncio.sleep(0.05)
    return proc.returncode, out.decode(), err.decode()


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")
def test_top_once_from_url_and_from_file(tmp_path):
    path = str(tmp_path / "server.metrics")
    s = Served(["--workers", "2", "--metrics-port", "0", "--metrics-file", path, "echo"], tmp_path)
    try:
        assert s.metrics_file == path
        for target in (s.metrics_url, path):
            code, out, err = asyncio.run(asyncio.wait_for(top_while_talking(s.port, target), 60))
            assert code == 0, err
            assert CLEAR not in out  # --once: no escape codes, fit for scripts
            assert out.startswith(f"fastpacket top  {target}")
            rows = frame_rows(out)
            header = rows["worker"]
            assert header[:8] == ["worker", "conns", "pkts/s in", "pkts/s out", "MB/s in", "MB/s out",
                                  "handler p50", "handler p99"]
            assert {"0", "1", "all"} <= set(rows)
            assert int(rows["all"][1]) == CLIENTS == int(rows["0"][1]) + int(rows["1"][1])
            assert rows["all"][2] not in ("-", "0.0") and rows["all"][3] not in ("-", "0.0")  # packets flowed
            assert re.fullmatch(r"[\d.]+ (ns|µs|ms|s)\*?", rows["all"][6]), rows["all"]
            assert re.search(r"^closes by reason: ", out, re.M) and re.search(r"^drops by reason: ", out, re.M)
            if target == s.metrics_url:  # process metrics come with /metrics
                assert rows["0"][8] != "-" and float(rows["0"][9]) > 1
        assert "peer_closed 6 " in out or "peer_closed 12 " in out
    finally:
        code, _, err = s.stop()
    assert code == 0, err


def test_top_live_view_refreshes_until_ctrl_c(tmp_path):
    s = Served(["--metrics-port", "0", "echo"], tmp_path)
    try:
        proc = subprocess.Popen(CMD + ["top", "--interval", "0.2", s.metrics_url], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, cwd=tmp_path)
        out = b""
        try:
            import select
            import time
            deadline = time.monotonic() + 30
            while out.count(CLEAR.encode()) < 3 and time.monotonic() < deadline:
                if select.select([proc.stdout], [], [], 1.0)[0]:
                    out += proc.stdout.read1(65536)
            proc.send_signal(signal.SIGINT)
            rest, err = proc.communicate(timeout=20)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        out += rest
        assert proc.returncode == 0, err
        assert out.count(CLEAR.encode()) >= 3 and b"server" in out and b"Traceback" not in err
    finally:
        s.stop()


def test_top_bad_targets(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = subprocess.run(CMD + ["top", "--once", f"http://127.0.0.1:{port}/metrics"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 1 and "cannot read" in r.stderr
    r = subprocess.run(CMD + ["top", "--once", str(tmp_path / "none")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "no fastpacket metrics file" in r.stderr
    (tmp_path / "junk").write_bytes(b"\0" * 70000)
    r = subprocess.run(CMD + ["top", "--once", str(tmp_path / "junk")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "not a fastpacket metrics file" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run(CMD + ["top", "--once", "--interval", "0", "x"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "--interval" in r.stderr


def test_quantile_is_prometheus_interpolation():
    b = {0.1: 10.0, 0.2: 30.0, 0.5: 40.0, float("inf"): 40.0}
    assert quantile(0.25, b) == pytest.approx(0.1 * 10 / 10)     # inside the first bucket, from 0
    assert quantile(0.5, b) == pytest.approx(0.1 + 0.1 * 10 / 20)
    assert quantile(1.0, b) == pytest.approx(0.5)
    assert quantile(0.99, {1.0: 1.0, float("inf"): 10.0}) == 1.0  # rank in +Inf: highest finite bound
    assert quantile(0.5, {1.0: 0.0, float("inf"): 0.0}) is None and quantile(0.5, {}) is None


def test_render_rates_percentiles_and_reasons():
    reg = fp.Registry()
    w0, w1 = reg.with_labels(worker="0"), reg.with_labels(worker="1")
    for w in (w0, w1):
        w.gauge("connections").set(3)
        w.counter("packets_in_total").inc(100)
        w.metric("handler_duration_ns")
    w0.counter("closes_total", {"reason": "peer_closed"}).inc(2)
    r0 = parse_exposition(reg.exposition(), 10.0)
    w0.counter("packets_in_total").inc(1000)
    w1.counter("packets_in_total").inc(3000)
    w0.metric("handler_duration_ns").record_many([2000] * 99 + [400_000])
    w0.counter("closes_total", {"reason": "worker_lost"}).inc(5)
    r1 = parse_exposition(reg.exposition(), 12.0)
    out = render("test", r0, r1)
    rows = frame_rows(out)
    assert rows["0"][2] == "500.0" and rows["1"][2] == "1.50k" and rows["all"][2] == "2.00k"  # per 2 s
    assert rows["all"][1] == "6"
    assert rows["0"][6].endswith("µs") and rows["1"][6] == "-"
    assert "closes by reason: worker_lost 5 (+5), peer_closed 2 (+0)" in out
    # no handler call in the window: percentiles since the start, marked
    out = render("test", r1, parse_exposition(reg.exposition(), 13.0))
    assert frame_rows(out)["0"][6].endswith("µs*") and "* since the start" in out
    assert isinstance(r1, Reading)
    assert "no fastpacket series" in render("empty", Reading(0.0), Reading(1.0))


def test_render_packet_types_and_the_bus():
    reg = fp.Registry()
    w0, w1 = reg.with_labels(worker="0"), reg.with_labels(worker="1")
    for w in (w0, w1):
        w.gauge("connections").set(1)
        w.counter("packets_in_total")
        w.gauge("bus_connected").set(1)
        w.counter("bus_published_packets_total")
        w.counter("bus_delivered_packets_total")
        w.metric("bus_rtt_ns")
    w1.gauge("bus_connected").set(0)
    r0 = parse_exposition(reg.exposition(), 10.0)
    w0.counter("packets_by_type_total", {"type": "1"}).inc(400)
    w1.counter("packets_by_type_total", {"type": "other"}).inc(20)
    w0.counter("bus_published_packets_total").inc(300)
    w1.counter("bus_delivered_packets_total").inc(100)
    w0.metric("bus_rtt_ns").record_many([500_000] * 10)
    w1.counter("bus_dropped_packets_total", {"reason": "disconnected"}).inc(7)
    r1 = parse_exposition(reg.exposition(), 12.0)
    out = render("test", r0, r1)
    assert "packets/s in by type: 1 200.0, other 10.0" in out
    bus = [line for line in out.splitlines() if line.startswith("bus: ")]
    assert len(bus) == 1, out
    assert "connected 1/2" in bus[0] and "published 150.0 pkts/s" in bus[0] and "other servers 50.0 pkts/s" in bus[0]
    assert "rtt p50 " in bus[0] and "rtt p50 -" not in bus[0] and "dropped 7 (+7)" in bus[0]
    # a server without a bus or handlers by type shows neither line
    plain = fp.Registry()
    plain.counter("packets_in_total")
    out = render("plain", parse_exposition(plain.exposition(), 0.0), parse_exposition(plain.exposition(), 1.0))
    assert "bus:" not in out and "by type" not in out


def test_top_help_lists_the_command():
    r = subprocess.run([sys.executable, "-m", "fastpacket", "--help"], capture_output=True, text=True, timeout=60)
    assert "top" in r.stdout
