"""``fastpacket serve relay --bus URL`` on a real redis-server: several
servers (and the workers of one server) form one relay, which ``fastpacket
load`` checks (every MOVE to every member of its room exactly once, in each
sender's order); a worker killed with -9 leaves the others delivering;
Redis unreachable at start is exit 1 naming the URL."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import struct
import subprocess
import time

import pytest

from fastpacket import aio
from fastpacket.apps.relay import JOIN, MOVE, MOVE_FORMAT
from tests.loops import run  # noqa: F401  (the fixture)
from tests.redis_server import RedisServer, free_port, require_redis
from tests.scrape import fetch, total
from tests.served import CMD



@pytest.fixture
def redis_server(tmp_path):
    server = RedisServer(str(tmp_path / "redis")).start()
    yield server
    server.stop()


def run_cli(args, tmp_path, timeout=120):
    return subprocess.run(CMD + args, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)


def _load_json(args, tmp_path):
    r = run_cli(["load", "--seconds", "2", "--json", *args], tmp_path)
    assert r.stdout, r.stderr
    return r, json.loads(r.stdout)


def test_two_servers_form_one_relay(served, redis_server, tmp_path):
    a = served("relay", "--bus", redis_server.url)
    b = served("relay", "--bus", redis_server.url, "--uvloop")
    assert f"bus {redis_server.url}" in a.line
    r, d = _load_json(["--server", f"127.0.0.1:{a.port}", "--server", f"127.0.0.1:{b.port}",
                       "--connections", "12", "--rooms", "3", "--rate", "100"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert d["servers"] == 2 and d["delivery_checked"]
    assert d["missing"] == d["duplicates"] == d["out_of_order"] == 0
    assert d["expected"] == d["delivered"] == 4 * d["sent"] > 0  # rooms of 4, split 2 + 2
    r, d = _load_json(["--server", f"127.0.0.1:{a.port}", "--server", f"127.0.0.1:{b.port}",
                       "--connections", "10", "--rooms", "2"], tmp_path)  # pipelined: full speed
    assert r.returncode == 0, r.stderr
    assert d["missing"] == d["duplicates"] == d["out_of_order"] == 0 and d["delivered"] == 5 * d["sent"]
    r = run_cli(["load", "--server", f"127.0.0.1:{a.port}", "--server", f"127.0.0.1:{b.port}", "--seconds", "1",
                 "--connections", "4", "--rooms", "1"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert "delivery check" in r.stdout and "ok:" in r.stdout and "0 missing" in r.stdout
    for s in (a, b):
        code, out, err = s.stop(signal.SIGTERM)
        assert code == 0, err


def test_workers_of_one_server_form_one_relay(served, redis_server, tmp_path):
    s = served("relay", "--workers", "2", "--bus", redis_server.url, "--metrics-port", "0")
    assert len(s.worker_pids) == 2
    r, d = _load_json(["--port", str(s.port), "--connections", "16", "--rooms", "2", "--rate", "100"], tmp_path)
    assert r.returncode == 0, r.stderr
    assert d["missing"] == d["duplicates"] == d["out_of_order"] == 0 and d["delivered"] == 8 * d["sent"] > 0
    text = fetch(s.metrics_url)
    for w in ("0", "1"):  # both workers had players, and each heard the other's through Redis
        assert total(text, "fastpacket_bus_delivered_packets_total", worker=w) > 0
        assert total(text, "fastpacket_bus_published_packets_total", worker=w) > 0
    assert total(text, "fastpacket_bus_dropped_packets_total") == 0
    assert total(text, "fastpacket_bus_rtt_seconds_count") > 0
    code, _, err = s.stop(signal.SIGTERM)
    assert code == 0, err


def test_unreachable_redis_is_exit_1_naming_the_url(tmp_path):
    require_redis()
    url = f"redis://127.0.0.1:{free_port()}/0"
    for extra in ([], ["--workers", "2"]):
        t0 = time.monotonic()
        r = run_cli(["serve", "relay", "--port", "0", "--bus", url, *extra], tmp_path, timeout=60)
        assert r.returncode == 1, (r.stdout, r.stderr)
        assert url in r.stderr and "cannot reach Redis" in r.stderr
        assert "Traceback" not in r.stderr
        assert time.monotonic() - t0 < 30
    r = run_cli(["serve", "relay", "--port", "0", "--bus", "http://nowhere"], tmp_path)
    assert r.returncode == 2 and "redis://" in r.stderr


async def _player(port, pid, room, timeout=10.0):
    c = await aio.connect("127.0.0.1", port)
    c.send(JOIN, struct.pack("<I", room), player_id=pid)
    got = await c.recv(timeout)  # the JOIN comes back once the room is joined on every server
    assert got is not None and [(p.type, p.player_id) for p in got] == [(JOIN, pid)]
    c.pid = pid
    return c


async def _exchange(players, rounds):
    """Every player sends `rounds` MOVEs (header seq 0..rounds-1); each must
    receive every player's, exactly once, in order."""
    for i in range(rounds):
        for c in players:
            c.send(MOVE, MOVE_FORMAT.pack(i, 0, 0, 0), player_id=c.pid, seq=i)
        await asyncio.sleep(0.002)
    for c in players:
        seen = {}
        n = 0
        while n < rounds * len(players):
            batch = await c.recv(10.0)
            assert batch is not None, "closed"
            for p in batch:
                if p.type == MOVE:
                    seen.setdefault(p.player_id, []).append(p.seq)
                    n += 1
        assert {k: v for k, v in seen.items()} == {q.pid: list(range(rounds)) for q in players}


def test_worker_killed_the_rest_keep_delivering(run, served, redis_server):
    s = served("relay", "--workers", "2", "--bus", redis_server.url, "--metrics-port", "0")

    def per_worker():
        text = fetch(s.metrics_url)
        return [total(text, "fastpacket_connections", worker=w) for w in ("0", "1")]

    async def main():
        # The kernel spreads connections over the workers by a hash of the
        # address pair, so 8 players all land on one worker about 1 run in
        # 128: more join until each worker has some (bounded).
        players = [await _player(s.port, 100 + i, 9) for i in range(8)]
        while 0 in per_worker() and len(players) < 64:
            players.append(await _player(s.port, 100 + len(players), 9))
        assert 0 not in per_worker(), per_worker()
        await _exchange(players, 20)
        os.kill(s.worker_pids[0], signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(c.closed for c in players):
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.2)
        alive = [c for c in players if not c.closed]
        assert 0 < len(alive) < len(players)  # the dead worker's players are gone ...
        newcomers = [await _player(s.port, 200 + i, 9) for i in range(4)]  # some land on its replacement
        await _exchange(alive + newcomers, 20)  # ... and the rest, old and new, keep delivering
        for c in players + newcomers:
            c.close()

    run(main())
    code, _, err = s.stop(signal.SIGTERM)
    assert code == 0, err
