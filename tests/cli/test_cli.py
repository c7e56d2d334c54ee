"""The command line end to end (``python -m fastpacket demo | serve | load``
as subprocesses, short runs, 127.0.0.1, free ports picked by the kernel),
and the relay application in process. Every wait is bounded."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.cli import format_markdown, main
from fastpacket.cli.bench import Row
from fastpacket.cli.loadgen import move_dtype, move_load
from fastpacket.apps.relay import MOVE, MOVE_FORMAT, Relay
from tests.scrape import fetch, samples, total
from tests.served import CMD, Served


def run_cli(args, tmp_path, timeout=60):
    return subprocess.run(CMD + args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


# ---------------------------------------------------------------------------
# demo


def test_demo_short_run_prints_the_table(tmp_path):
    r = run_cli(["demo", "--seconds", "2", "--connections", "10"], tmp_path)
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for row in ("packets/s in", "packets/s out", "MB/s in / out", "RTT p50 / p95 / p99 / max",
                "server CPU per packet", "server RSS", "compression savings", "closes by reason"):
        assert row in out, f"{row!r} missing from:\n{out}"
    assert "peer_closed: 10" in out
    assert "fan-out 10.0" in out  # 10 players in one room, every MOVE goes to all 10
    assert "\r" not in out  # no progress line when stdout is not a TTY


def test_demo_compressed_json(tmp_path):
    r = run_cli(["demo", "--seconds", "1", "--connections", "4", "--compress", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["packets_in_per_s"] > 0 and d["packets_out_per_s"] > 0 and not d["errors"]
    stats = d["load"]["compression"]
    assert stats["compressed"] > 0 and stats["bytes_out"] < stats["bytes_in"]


def test_demo_rejects_bad_arguments(tmp_path):
    assert main(["demo", "--seconds", "0"]) == 2
    assert main(["demo", "--payload", "8"]) == 2
    assert main(["demo", "--app", "tick", "--hz", "0"]) == 2
    assert main(["demo", "--app", "tick", "--radius", "-1"]) == 2
    with pytest.raises(SystemExit):
        main(["demo", "--no-such-flag"])


# ---------------------------------------------------------------------------
# serve + load


def test_serve_one_worker_and_load_json(served, tmp_path):
    s = served()
    assert s.metrics_port is None
    r = run_cli(["load", "--port", str(s.port), "--seconds", "1", "--connections", "6", "--rooms", "2", "--json"],
                tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("packets_per_s", "p50", "p95", "p99", "max", "sent_per_s", "received_per_s"):
        assert isinstance(d[key], float) and d[key] > 0, key
    assert d["p50"] <= d["p95"] <= d["p99"] <= d["max"] * 1.01
    assert d["ok"] and d["sent"] == d["echoed"] > 0
    assert d["received"] == 3 * d["sent"]  # rooms of 3: each MOVE reaches its 3 players
    code, out, err = s.stop(signal.SIGTERM)
    assert code == 0, err
    assert "stopped" in out


def test_load_rate_mode_table_against_echo(served, tmp_path):
    s = served("--app", "echo", "--uvloop")
    r = run_cli(["load", "--port", str(s.port), "--seconds", "1", "--connections", "3", "--rate", "200",
                 "--payload", "48"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "200 packets/s per connection" in r.stdout and "round trips/s" in r.stdout
    m = re.search(r"packets/s sent\s+([\d.]+)", r.stdout)
    assert m and 300 <= float(m.group(1)) <= 900  # 3 x 200/s, loosely: a busy machine may lag
    code, _, err = s.stop()
    assert code == 0, err


@pytest.mark.parametrize("compress", [False, True])
def test_load_with_a_deep_window_of_large_payloads_against_echo(served, tmp_path, compress):
    """Issue 14, finding 1: ``load --window 128 --payload 1000`` exited 1
    (a read burst larger than the echo's 64 KiB send buffer closed the
    session with "handler error"), with --compress on both ends too."""
    flags = ["--compress"] if compress else []
    s = served("--app", "echo", *flags)
    r = run_cli(["load", "--port", str(s.port), "--seconds", "1", "--connections", "2", "--window", "128",
                 "--payload", "1000", "--json", *flags], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["sent"] == d["echoed"] > 0
    code, _, err = s.stop()
    assert code == 0, err


def test_demo_tick_json(tmp_path):
    r = run_cli(["demo", "--app", "tick", "--seconds", "1.5", "--connections", "40", "--hz", "50", "--json"],
                tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["players"] == 40 and d["hz"] == 50 and not d["errors"]
    assert d["ticks"] > 0 and d["packets_in_per_s"] > 0 and d["packets_out_per_s"] > 0
    t = d["tick_ms"]
    assert 0 < t["step_p50"] <= t["p50"] <= t["p99"] <= t["max"] * 1.01 and t["period"] == 20.0
    assert d["load"]["acked"] > 0 and d["load"]["latency_us"]["count"] > 0
    assert d["closes"] == {"peer_closed": 40}  # by class (#14)


def test_demo_tick_table_with_a_radius(tmp_path):
    r = run_cli(["demo", "--app", "tick", "--seconds", "1", "--connections", "20", "--radius", "300000"],
                tmp_path, timeout=120)
    assert r.returncode == 0, r.stderr
    for row in ("tick duration p50 / p99 / max", "tick CPU p50 / p99", "of which inputs + step", "ticks",
                "packets/s in / out", "input -> STATE", "server CPU", "states within 300000"):
        assert row in r.stdout, f"{row!r} missing from:\n{r.stdout}"


def test_serve_tick_and_input_load(served, tmp_path):
    s = served("--app", "tick", "--hz", "40")
    r = run_cli(["load", "--mode", "input", "--port", str(s.port), "--seconds", "1", "--connections", "12",
                 "--rate", "20", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["connections"] == 12 and d["rate"] == 20
    assert d["sent"] > 0 and d["states"] > 0 and 0 < d["acked"] <= d["sent"]
    assert d["closes"] == {"peer closed": 12}  # half-closed by the load, closed by the server
    code, _, err = s.stop()
    assert code == 0, err


def test_load_without_a_server_fails_with_the_reason(tmp_path):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = run_cli(["load", "--port", str(port), "--seconds", "1", "--connections", "1"], tmp_path)
    assert r.returncode == 1
    assert "cannot connect" in r.stderr


def test_serve_two_workers_share_metrics_and_stop_on_sigint(served):
    if not hasattr(socket, "SO_REUSEPORT"):
        pytest.skip("no SO_REUSEPORT here")
    s = served("echo", "--workers", "2", "--metrics-port", "0")
    assert "2 workers" in s.line and s.metrics_port

    async def exchange():
        clients = [await aio.connect("127.0.0.1", s.port) for _ in range(8)]
        for i, c in enumerate(clients):
            c.send_batch(fp.PacketBatch.build([MOVE] * 25, [b"m" * 20] * 25, seqs=range(25), player_ids=[i] * 25))
        for i, c in enumerate(clients):
            got = 0
            while got < 25:
                batch = await c.recv(10.0)
                assert batch is not None
                assert (batch.player_ids == i).all()
                got += len(batch)
        for c in clients:
            c.close()
        return clients

    asyncio.run(asyncio.wait_for(exchange(), 30))
    url = f"http://127.0.0.1:{s.metrics_port}/metrics"
    text = ""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the closes land in the shared registry a moment later
        text = fetch(url)
        if total(text, "fastpacket_closes_total", reason="peer_closed") == 8:
            break
        time.sleep(0.05)
    assert total(text, "fastpacket_packets_in_total") == 200, text
    assert total(text, "fastpacket_packets_out_total") == 200
    assert total(text, "fastpacket_connections_accepted_total") == 8 and total(text, "fastpacket_workers") == 2
    assert total(text, "fastpacket_closes_total", reason="peer_closed") == 8
    assert total(text, "fastpacket_connections") == 0
    # per-worker series, and every worker's process metrics
    workers = {labels["worker"] for labels, _ in samples(text)["fastpacket_connections"]}
    assert workers == {"0", "1"}
    cpu = {labels["worker"] for labels, _ in samples(text)["process_cpu_seconds_total"]}
    assert cpu == {"0", "1", "supervisor"}
    code, out, err = s.stop(signal.SIGINT)
    assert code == 0, err
    assert "stopped" in out


def test_serve_refuses_a_metrics_file_that_exists(tmp_path):
    taken = tmp_path / "taken.metrics"
    taken.write_bytes(b"")
    for workers in ("1", "2"):
        r = run_cli(["serve", "--port", "0", "--workers", workers, "--metrics-file", str(taken)], tmp_path)
        assert r.returncode == 1 and "exists: another server uses it" in r.stderr, r.stderr
    assert taken.read_bytes() == b""  # left alone


def test_serve_rejects_bad_limits(tmp_path):
    r = run_cli(["serve", "--port", "0", "--rate-policy", "close", "--write-timeout", "-1"], tmp_path)
    assert r.returncode == 2 and "write_timeout" in r.stderr


# ---------------------------------------------------------------------------
# the load generator in process


def move(x, t=0, pad=0):
    return MOVE_FORMAT.pack(x, 0, 0, t) + b"\0" * pad


def test_move_load_in_process_counts_and_rtt():
    async def main_():
        reg = fp.Registry()
        relay = Relay()
        server = await aio.serve(host="127.0.0.1", port=0, registry=reg, handlers=relay.handlers, on_close=relay.on_close)
        starts, stops, progress = [], [], []
        r = await move_load("127.0.0.1", server.port, connections=4, rooms=2, seconds=0.6, window=4,
                            payload_size=32, on_start=lambda: starts.append(1), on_stop=lambda: stops.append(1),
                            on_progress=progress.append, progress_interval=0.2)
        server.close()
        await server.wait_closed()
        return r, reg.snapshot(), starts, stops, progress

    r, snap, starts, stops, progress = asyncio.run(asyncio.wait_for(main_(), 30))
    assert r.ok, r.errors
    assert starts == [1] and stops == [1] and progress and progress[-1]["connections"] == 4
    assert r.sent == r.echoed == r.rtt_us["count"] > 0
    assert r.received == 2 * r.sent  # rooms of 2
    assert snap["packets_in_total"]["value"] == r.sent + 4  # the MOVEs and one JOIN each
    assert r.closes == {"load done": 4}
    assert 0 < r.rtt_us["p50"] <= r.rtt_us["p99"] <= r.rtt_us["max"] * 1.01


def test_move_dtype_matches_the_relay_format():
    dt = move_dtype(20)
    assert dt.itemsize == 12 + MOVE_FORMAT.size
    rec = np.zeros(1, dt)
    rec["size"], rec["type"], rec["player_id"], rec["x"], rec["sent_ns"] = 32, MOVE, 9, -3, 12345
    p = fp.FrameDecoder().feed(rec.tobytes())[0]
    assert (p.type, p.player_id) == (MOVE, 9)
    assert MOVE_FORMAT.unpack_from(p.payload) == (-3, 0, 0, 12345)
    assert move_dtype(64).itemsize == 76
    with pytest.raises(ValueError):
        move_dtype(19)


# ---------------------------------------------------------------------------
# bench output


def test_bench_markdown_table():
    rows = [Row("framing", "decode 64 B", "plain-python", 1.5e6, "packets/s"),
            Row("framing", "decode 64 B", "fastpacket", 3.0e7, "packets/s", 20.0, "1.9 GB/s", ">= 10x")]
    md = format_markdown(rows).splitlines()
    assert md[0].startswith("| section | case |") and md[1].startswith("|---|")
    assert md[2].count("|") == md[0].count("|") and "1.00x (base)" in md[2]
    assert "20.00x" in md[3] and "30.00M" in md[3]


# ---------------------------------------------------------------------------
# fastpacket.examples: shipped in the package, run as python -m


@pytest.fixture
def example(tmp_path):
    started = []

    def start(name, *args):
        s = Served([], tmp_path, cmd=[sys.executable, "-m", f"fastpacket.examples.{name}"] + list(args))
        started.append(s)
        return s

    yield start
    for s in started:
        s.kill()


def test_example_echo_server_and_client(example, tmp_path):
    import fastpacket.examples.echo_server as echo_server  # its main() runs only as __main__

    with open(echo_server.__file__) as f:
        assert len(f.read().splitlines()) <= 15
    s = example("echo_server", "0")
    r = subprocess.run([sys.executable, "-m", "fastpacket.examples.client", str(s.port), "5", "0"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("my move") == 10 and "round trip" in r.stdout


def test_example_relay_under_load(example, tmp_path):
    s = example("relay", "0", "0")
    assert "metrics at" in s._readline(10)
    r = run_cli(["load", "--port", str(s.port), "--seconds", "0.5", "--connections", "4", "--rooms", "2", "--json"],
                tmp_path)
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["ok"] and d["received"] == 2 * d["sent"] > 0
