#!/usr/bin/env python3
"""Memory of a real ``fastpacket serve`` process under connection churn and
connection waves: does RSS come back, does it grow?

    python tools/soak.py churn --minutes 30 --csv soak.csv     # growth per 10 minutes after warm-up
    python tools/soak.py wave --connections 20000              # RSS idle, at the peak, after the wave

``churn`` starts ``fastpacket serve echo`` (``--compress``, limits on) and
keeps opening short-lived connections against it: well-behaved clients
whose echoes are checked byte for byte, with plain and compressed bursts,
and a share of bad ones (a distinct oversize length each, garbage, a drip
cut by the idle timeout). It samples the server's RSS (/proc/PID/status)
every ``--interval`` seconds into the CSV and ends with the growth per ten
minutes after the warm-up (a least-squares slope over the samples after it),
exit 1 when above ``--max-growth-kib`` (default 1024 KiB per 10 minutes).

``wave`` opens ``--connections`` connections at once, each echoing one
packet and staying open, then closes them all, and prints the server's RSS
idle, with the wave open, right after it closed and once the pools had
time to give memory back (``--settle`` seconds). It raises the open-files
limits it needs (as root, the hard limit too).

Linux only (/proc). Every wait is bounded; the server is stopped on exit.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import random
import re
import resource
import signal
import socket
import struct
import subprocess
import sys
import time
from typing import Dict, List, Optional, Tuple

import fastpacket as fp
from fastpacket.system import raise_nofile, read_line

#: Seconds to wait for the server's ready line.
READY_TIMEOUT_S = 30.0
#: Seconds any one client operation may take before it counts as an error.
OP_TIMEOUT_S = 10.0
#: max_packet_size of the soak's server and clients, bytes.
MAX_PACKET = 1024
#: Idle timeout of the soak's server, seconds (drips are cut by it).
IDLE_TIMEOUT_S = 2.0
#: Connections the wave opens at once (connects in flight).
WAVE_CONNECT_BATCH = 500
#: File descriptors kept beside the wave's connections (stdio, the loop, ...).
FD_MARGIN = 256
#: Seconds per growth figure: growth is reported per ten minutes.
GROWTH_PERIOD_S = 600.0


# -- the server -----------------------------------------------------------------

class Server:
    """``fastpacket serve echo`` in a subprocess: its port and pid from the
    ready line."""

    def __init__(self, extra: List[str], nofile: int = 0) -> None:
        cmd = [sys.executable, "-m", "fastpacket", "serve", "echo", "--host", "127.0.0.1", "--port", "0"] + extra

        def limits() -> None:  # the child's open-files limit, before it execs
            if nofile:
                soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
                try:
                    resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, max(hard, nofile)))
                except (ValueError, OSError):
                    pass

        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=limits)
        line = self._readline(READY_TIMEOUT_S)
        m = re.search(r" on 127\.0\.0\.1:(\d+), pid (\d+)", line)
        if not m:
            self.stop()
            raise RuntimeError(f"no ready line from the server: {line!r}")
        self.port, self.pid = int(m.group(1)), int(m.group(2))

    def _readline(self, timeout: float) -> str:
        return read_line(self.proc.stdout.fileno(), timeout)  # type: ignore[union-attr]

    def rss_kib(self) -> Tuple[int, int]:
        """(VmRSS, VmHWM) of the server, KiB."""
        fields: Dict[str, int] = {}
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0])
        return fields["VmRSS"], fields["VmHWM"]

    def fds(self) -> int:
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate()


# -- clients ----------------------------------------------------------------------

class Tally:
    def __init__(self) -> None:
        self.good = self.bad = self.errors = self.packets = 0
        self.last_error = ""


async def _connect(loop: asyncio.AbstractEventLoop, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setblocking(False)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.wait_for(loop.sock_connect(sock, ("127.0.0.1", port)), OP_TIMEOUT_S)
    except BaseException:
        sock.close()
        raise
    return sock


async def _echo_round(loop: asyncio.AbstractEventLoop, sock: socket.socket, payload: bytes,
                      dec: fp.FrameDecoder) -> int:
    """Sends `payload` (whole packets, plain or aggregated) and reads until
    every packet came back; returns how many (byte-exact or ValueError)."""
    expected = [p.to_bytes() for p in dec_for_check(payload)]
    await asyncio.wait_for(loop.sock_sendall(sock, payload), OP_TIMEOUT_S)
    got: List[bytes] = []
    while len(got) < len(expected):
        data = await asyncio.wait_for(loop.sock_recv(sock, 1 << 16), OP_TIMEOUT_S)
        if not data:
            raise ValueError(f"closed after {len(got)} of {len(expected)} echoes")
        got.extend(p.to_bytes() for p in dec.feed(data))
    if got != expected:
        raise ValueError("echo differs from what was sent")
    return len(got)


def dec_for_check(payload: bytes) -> fp.PacketBatch:
    return fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator()).feed(payload)


async def good_client(loop: asyncio.AbstractEventLoop, port: int, rng: random.Random, tally: Tally) -> None:
    sock = await _connect(loop, port)
    try:
        dec = fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator())
        agg = fp.Aggregator("lz4", threshold=0)
        for _ in range(rng.randrange(1, 6)):
            n = rng.randrange(1, 200)
            payloads = [rng.randbytes(rng.randrange(0, 60)) + bytes(rng.randrange(0, 300)) for _ in range(n)]
            batch = fp.PacketBatch.build([rng.randrange(1, 100) for _ in range(n)], payloads,
                                         seqs=list(range(n)), player_ids=[rng.randrange(1 << 20)] * n)
            wire = b"".join(agg.pack_many(batch)) if rng.random() < 0.5 else batch.to_bytes()
            tally.packets += await _echo_round(loop, sock, wire, dec)
        tally.good += 1
    finally:
        sock.close()


async def bad_client(loop: asyncio.AbstractEventLoop, port: int, rng: random.Random, tally: Tally,
                     serial: int) -> None:
    sock = await _connect(loop, port)
    try:
        kind = serial % 3
        if kind == 0:  # a distinct oversize length each time: a distinct close text
            data = struct.pack("<HHII", MAX_PACKET + 1 + serial % (65535 - MAX_PACKET), 1, serial, 0)
        elif kind == 1:
            data = b"\x03\x00" + rng.randbytes(64)  # below the header size
        else:
            data = fp.encode(1, bytes(100))[:20]  # a partial packet, then silence: the idle timeout
        await asyncio.wait_for(loop.sock_sendall(sock, data), OP_TIMEOUT_S)
        # the server closes it: read until EOF (bounded by the idle timeout for the drip)
        while await asyncio.wait_for(loop.sock_recv(sock, 4096), OP_TIMEOUT_S):
            pass
        tally.bad += 1
    except ConnectionResetError:
        tally.bad += 1
    finally:
        sock.close()


async def churn(port: int, seconds: float, concurrency: int, bad_share: float, seed: int, tally: Tally,
                stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    rng = random.Random(seed)
    serial = 0

    async def worker(k: int) -> None:
        nonlocal serial
        wrng = random.Random(seed * 1000 + k)
        while not stop.is_set():
            serial += 1
            try:
                if wrng.random() < bad_share:
                    await bad_client(loop, port, wrng, tally, serial)
                else:
                    await good_client(loop, port, wrng, tally)
            except (OSError, ValueError, asyncio.TimeoutError, fp.FastpacketError) as exc:
                tally.errors += 1
                tally.last_error = f"{type(exc).__name__}: {exc}"
                await asyncio.sleep(0.1)
            await asyncio.sleep(rng.random() * 0.01)

    workers = [asyncio.ensure_future(worker(k)) for k in range(concurrency)]
    try:
        await asyncio.wait_for(stop.wait(), seconds)
    except asyncio.TimeoutError:
        pass
    stop.set()
    await asyncio.wait(workers, timeout=OP_TIMEOUT_S * 2)
    for w in workers:
        w.cancel()


def growth_per_period(samples: List[Tuple[float, int]], warmup_s: float) -> Optional[float]:
    """Least-squares slope of RSS (KiB) against time after the warm-up, in
    KiB per GROWTH_PERIOD_S; None with fewer than 3 samples after it."""
    pts = [(t, r) for t, r in samples if t >= warmup_s]
    if len(pts) < 3:
        return None
    n = len(pts)
    mt = sum(t for t, _ in pts) / n
    mr = sum(r for _, r in pts) / n
    var = sum((t - mt) ** 2 for t, _ in pts)
    cov = sum((t - mt) * (r - mr) for t, r in pts)
    return cov / var * GROWTH_PERIOD_S if var else None


def cmd_churn(args: argparse.Namespace) -> int:
    extra = ["--compress", "--max-packet-size", str(MAX_PACKET), "--idle-timeout", str(IDLE_TIMEOUT_S)]
    if args.uvloop:
        extra.append("--uvloop")
    server = Server(extra)
    seconds = args.minutes * 60.0
    warmup = args.warmup_minutes * 60.0 if args.warmup_minutes is not None else seconds / 3
    samples: List[Tuple[float, int]] = []
    tally = Tally()
    out = open(args.csv, "w", newline="") if args.csv else None
    writer = csv.writer(out) if out else None
    if writer:
        writer.writerow(["elapsed_s", "rss_kib", "hwm_kib", "server_fds", "good_connections", "bad_connections",
                         "client_errors", "packets_echoed"])
    print(f"soak: server pid {server.pid} on port {server.port}; {args.minutes:g} min, sampling every "
          f"{args.interval:g} s, warm-up {warmup / 60:g} min", flush=True)

    async def main() -> None:
        stop = asyncio.Event()
        t0 = time.monotonic()

        async def sampler() -> None:
            while not stop.is_set():
                elapsed = time.monotonic() - t0
                rss, hwm = server.rss_kib()
                samples.append((elapsed, rss))
                row = [f"{elapsed:.1f}", rss, hwm, server.fds(), tally.good, tally.bad, tally.errors, tally.packets]
                if writer:
                    writer.writerow(row)
                    out.flush()  # type: ignore[union-attr]
                if args.verbose:
                    print(",".join(map(str, row)), flush=True)
                try:
                    await asyncio.wait_for(stop.wait(), args.interval)
                except asyncio.TimeoutError:
                    pass

        sampling = asyncio.ensure_future(sampler())
        await churn(server.port, seconds, args.concurrency, args.bad_share, args.seed, tally, stop)
        await sampling

    try:
        asyncio.run(main())
    finally:
        server.stop()
        if out:
            out.close()
    growth = growth_per_period(samples, warmup)
    first = next((r for t, r in samples if t >= warmup), None)
    print(f"connections: {tally.good} good ({tally.packets} packets echoed byte for byte), {tally.bad} bad, "
          f"{tally.errors} client errors{' (last: ' + tally.last_error + ')' if tally.errors else ''}")
    if samples:
        print(f"server RSS: {samples[0][1] / 1024:.1f} MiB at start, {first / 1024 if first else float('nan'):.1f} MiB "
              f"after warm-up, {samples[-1][1] / 1024:.1f} MiB at the end, peak "
              f"{max(r for _, r in samples) / 1024:.1f} MiB")
    if growth is None:
        print("growth: too few samples after the warm-up")
        return 1
    print(f"growth after warm-up: {growth:+.0f} KiB per 10 minutes (limit {args.max_growth_kib} KiB)")
    return 0 if growth <= args.max_growth_kib and tally.errors == 0 else 1


def cmd_wave(args: argparse.Namespace) -> int:
    need = args.connections + FD_MARGIN
    got = raise_nofile(need)
    if got < need and os.geteuid() == 0:  # root may raise the hard limit too
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (need, need))
            got = need
        except (ValueError, OSError):
            pass
    if got < need:
        print(f"wave: the open-files limit is {got}, {need} needed", file=sys.stderr)
        return 1
    extra = ["--max-connections", str(args.connections + FD_MARGIN)]
    if args.compress:
        extra += ["--compress", "--max-packet-size", str(MAX_PACKET)]
    if args.uvloop:
        extra.append("--uvloop")
    server = Server(extra, nofile=need)
    try:
        time.sleep(1.0)
        idle, _ = server.rss_kib()
        report: Dict[str, float] = {}

        async def main() -> None:
            loop = asyncio.get_running_loop()
            socks: List[socket.socket] = []
            gate = asyncio.Semaphore(WAVE_CONNECT_BATCH)
            packet = fp.encode(1, bytes(100))
            errors = 0

            async def one() -> None:
                nonlocal errors
                async with gate:
                    try:
                        sock = await _connect(loop, server.port)
                    except (OSError, asyncio.TimeoutError):
                        errors += 1
                        return
                    socks.append(sock)
                    try:
                        await asyncio.wait_for(loop.sock_sendall(sock, packet), OP_TIMEOUT_S)
                        dec = fp.FrameDecoder(max_packet_size=MAX_PACKET, aggregator=fp.Aggregator())
                        n = 0
                        while n < 1:
                            data = await asyncio.wait_for(loop.sock_recv(sock, 4096), OP_TIMEOUT_S)
                            if not data:
                                raise ValueError("closed")
                            n += len(dec.feed(data))
                    except (OSError, ValueError, asyncio.TimeoutError):
                        errors += 1

            t0 = time.monotonic()
            await asyncio.gather(*(one() for _ in range(args.connections)))
            report["open_s"] = time.monotonic() - t0
            report["open"] = len(socks)
            report["errors"] = errors
            await asyncio.sleep(1.0)
            report["peak"], report["hwm"] = server.rss_kib()
            for sock in socks:
                sock.close()
            deadline = time.monotonic() + 60
            while server.fds() > FD_MARGIN // 4 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            await asyncio.sleep(1.0)
            report["closed"], _ = server.rss_kib()
            await asyncio.sleep(args.settle)
            report["settled"], _ = server.rss_kib()

        asyncio.run(main())
    finally:
        server.stop()
    mib = lambda kib: f"{kib / 1024:.1f} MiB"  # noqa: E731
    print(f"wave of {args.connections} connections ({int(report['open'])} opened and echoed in "
          f"{report['open_s']:.1f} s, {int(report['errors'])} errors), server "
          f"{'with --compress' if args.compress else 'plain'}, {'uvloop' if args.uvloop else 'asyncio'}:")
    print(f"  RSS idle {mib(idle)}, wave open {mib(report['peak'])} (peak {mib(report['hwm'])}), "
          f"1 s after it closed {mib(report['closed'])}, {args.settle:g} s later {mib(report['settled'])}")
    print(f"  per open connection: {(report['peak'] - idle) * 1024 / max(report['open'], 1):.0f} bytes; "
          f"left after settling: {mib(report['settled'] - idle)}")
    return 0 if report["errors"] == 0 else 1


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("churn", help="connection churn, RSS sampled into a CSV")
    c.add_argument("--minutes", type=float, default=30.0)
    c.add_argument("--warmup-minutes", type=float, default=None, help="default: a third of the run")
    c.add_argument("--interval", type=float, default=10.0, help="seconds between RSS samples")
    c.add_argument("--concurrency", type=int, default=16, help="clients at once")
    c.add_argument("--bad-share", type=float, default=0.2, help="share of bad connections")
    c.add_argument("--csv", default=None)
    c.add_argument("--max-growth-kib", type=float, default=1024.0, help="per 10 minutes after warm-up")
    c.add_argument("--seed", type=int, default=1)
    c.add_argument("--uvloop", action="store_true")
    c.add_argument("-v", "--verbose", action="store_true", help="print every sample")
    w = sub.add_parser("wave", help="many connections at once, then none")
    w.add_argument("--connections", type=int, default=20000)
    w.add_argument("--settle", type=float, default=15.0, help="seconds after the wave before the last reading")
    w.add_argument("--compress", action="store_true")
    w.add_argument("--uvloop", action="store_true")
    args = parser.parse_args(argv)
    return cmd_churn(args) if args.command == "churn" else cmd_wave(args)


if __name__ == "__main__":
    sys.exit(main())
