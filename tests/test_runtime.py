"""The runtime's supervision seen from outside: ``fastpacket serve
--workers 2`` as a subprocess, one worker killed with SIGKILL, and the
/metrics the supervisor serves checked against the connections really
open. Real processes and sockets on 127.0.0.1; every wait bounded; on
asyncio's default loop and on uvloop."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.system import new_event_loop, read_line
from tests.scrape import fetch, samples, total
from tests.served import Served

pytestmark = [pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")]

#: Most connections opened while looking for some on each worker (SO_REUSEPORT
#: spreads by hash: 64 all on one of 2 workers has probability 2^-63).
MAX_CONNECTIONS = 64
WAIT_S = 20.0


def per_worker(text, name, **labels):
    """{worker label: value} of the samples `name` with `labels`."""
    out = {}
    for got, v in samples(text).get(name, []):
        if all(got.get(k) == want for k, want in labels.items()):
            out[got["worker"]] = out.get(got["worker"], 0.0) + v
    return out


async def wait_metrics(url, ok, what):
    """The first scrape for which ok(text) holds (fails after WAIT_S); the
    event loop keeps running the clients meanwhile."""
    deadline = time.monotonic() + WAIT_S
    text = ""
    while time.monotonic() < deadline:
        text = await asyncio.to_thread(fetch, url)
        if ok(text):
            return text
        await asyncio.sleep(0.05)
    pytest.fail(f"{what}: not seen within {WAIT_S} s; last scrape:\n{text}")


async def open_clients(port, n):
    clients = [await aio.connect("127.0.0.1", port) for _ in range(n)]
    for i, c in enumerate(clients):  # one round trip each: the server side is surely open
        c.send(1, b"hello", player_id=i)
    for c in clients:
        batch = await c.recv(10.0)
        assert batch is not None and len(batch) == 1
    return clients


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_kill_9_of_one_of_two_workers(tmp_path, loop):
    args = ["--workers", "2", "--metrics-port", "0", "echo"] + (["--uvloop"] if loop == "uvloop" else [])
    s = Served(args, tmp_path)
    try:
        assert len(s.worker_pids) == 2 and s.metrics_url
        url = s.metrics_url

        async def scenario():
            clients = []
            counts = {}
            while len(clients) < MAX_CONNECTIONS:
                clients += await open_clients(s.port, 8)
                text = await wait_metrics(url, lambda t: total(t, "fastpacket_connections") == len(clients),
                                    f"{len(clients)} open connections")
                counts = per_worker(text, "fastpacket_connections")
                if counts.get("0", 0) > 0 and counts.get("1", 0) > 0:
                    break
            n0, n1 = int(counts["0"]), int(counts["1"])
            assert n0 > 0 and n1 > 0 and n0 + n1 == len(clients)

            os.kill(s.worker_pids[0], signal.SIGKILL)
            # the peers of worker 0 see their connection end; the others do not
            gone = set()
            deadline = time.monotonic() + WAIT_S
            while len(gone) < n0 and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
                gone = {c for c in clients if c.closed}
            assert len(gone) == n0

            text = await wait_metrics(url, lambda t: per_worker(t, "fastpacket_worker_restarts_total").get("0") == 1
                                and total(t, "fastpacket_connections") == n1
                                and total(t, "fastpacket_closes_total", reason="worker_lost") == n0,
                                "the supervisor's accounting of the lost worker")
            assert per_worker(text, "fastpacket_connections") == {"0": 0, "1": n1}
            assert per_worker(text, "fastpacket_closes_total", reason="worker_lost") == {"0": n0, "1": 0}
            assert total(text, "fastpacket_closes_total", reason="peer_closed") == 0
            assert per_worker(text, "fastpacket_worker_restarts_total") == {"0": 1, "1": 0}

            # the replacement serves and counts into the same series
            survivors = [c for c in clients if not c.closed]
            more = await open_clients(s.port, 8)
            for c in survivors:
                c.send(1, b"still here")
                assert len(await c.recv(10.0)) == 1
            text = await wait_metrics(url, lambda t: total(t, "fastpacket_connections") == n1 + 8,
                                "connections after the restart")
            for c in survivors + more:
                c.close()
            text = await wait_metrics(url, lambda t: total(t, "fastpacket_connections") == 0
                                and total(t, "fastpacket_closes_total", reason="peer_closed") == n1 + 8,
                                "every connection closed")
            assert total(text, "fastpacket_closes_total", reason="worker_lost") == n0
            assert total(text, "fastpacket_connections_accepted_total") >= n1 + 8
            return n0

        if loop == "uvloop":
            pytest.importorskip("uvloop")
        ev = new_event_loop(loop)
        try:
            n0 = ev.run_until_complete(asyncio.wait_for(scenario(), 120))
        finally:
            ev.close()
        code, out, err = s.stop(signal.SIGINT)
        assert code == 0, err
        assert f"worker 0 (pid {s.worker_pids[0]}) died with exit code -9, {n0} connections lost" in err
    finally:
        s.kill()


def test_account_lost_worker_in_process(tmp_path):
    from fastpacket.runtime import account_lost_worker
    reg = fp.Registry(shared=tmp_path / "m")
    w0, w1 = reg.with_labels(worker="0"), reg.with_labels(worker="1")
    w0.gauge("connections").set(9)
    w0.gauge("queue_depth").set(4)
    w1.gauge("connections").set(11)
    assert account_lost_worker(reg, 0) == 9
    snap = reg.snapshot()
    assert snap['connections{worker="0"}']["value"] == 0 and snap['queue_depth{worker="0"}']["value"] == 0
    assert snap['connections{worker="1"}']["value"] == 11
    assert snap['closes_total{reason="worker_lost",worker="0"}']["value"] == 9
    assert account_lost_worker(reg, 0) == 0  # nothing more to count
    assert reg.snapshot()['closes_total{reason="worker_lost",worker="0"}']["value"] == 9


def test_read_line_reads_a_ready_line_and_is_bounded():
    # the first line of a child's output, in pieces or whole; a silent child
    # gives what came (nothing) once the timeout passes; EOF ends it too
    code = "import sys, time; sys.stdout.write('ready on'); sys.stdout.flush(); time.sleep(0.2); print(' 7791'); " \
           "sys.stdout.flush(); time.sleep(30)"
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE)
    try:
        assert read_line(p.stdout.fileno(), 20.0) == "ready on 7791\n"
        assert read_line(p.stdout.fileno(), 0.2) == ""  # nothing more: bounded by the timeout
    finally:
        p.kill()
        p.wait()
        p.stdout.close()
    r, w = os.pipe()
    os.write(w, b"partial")
    os.close(w)
    try:
        assert read_line(r, 20.0) == "partial"  # end of file before a newline
    finally:
        os.close(r)
