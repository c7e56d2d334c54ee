"""fastpacket against the C++ reference (examples/cpp): the echo and relay
apps served by fastpacket on asyncio's loop and on uvloop, and by
``fastpacket_server`` (fastpacket::core + epoll, one thread), all driven by
``fastpacket_loadgen`` (C++, so the client does not cap the server). With
``fastpacket_embed`` built too (``-DFASTPACKET_BUILD_EMBED_EXAMPLE=ON``), the
echo section adds the C++ server calling a Python handler per read burst
(pybind11 embedding, fastpacket.examples.embed_echo).

Each server runs in its own process pinned to one core, the load generator
pinned to another (on a machine with two cores or more); the server's user
and system CPU over the load phase come from /proc/PID/stat. The cases run
in interleaved rounds; reported: medians per case and, per round, the
fastpacket / C++ ratio of user, system and total CPU per packet (the range
over rounds beside the median).

Found when built with ``-DFASTPACKET_BUILD_EXAMPLES=ON``: in
``$FASTPACKET_EXAMPLES_DIR``, else ``build/examples/examples/cpp`` of the
source tree or of the working directory. Without them the section says so
and is skipped (no row pretends to be measured).

``python -m fastpacket.cli.bench.parity serve echo|relay asyncio|uvloop``
runs one fastpacket server the way this module measures it (prints
"port N", serves until SIGTERM).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fastpacket.cli.bench._harness import Row

__all__ = ["find_examples", "measure", "run"]

#: The C++ reference's programs (examples/cpp/CMakeLists.txt).
SERVER_EXE = "fastpacket_server"
LOADGEN_EXE = "fastpacket_loadgen"
EMBED_EXE = "fastpacket_embed"
#: The Python handler fastpacket_embed calls per read burst in the echo rows.
EMBED_HANDLER = "fastpacket.examples.embed_echo:on_burst"
#: Where a CMake build of the examples puts them, under the source tree.
EXAMPLES_SUBDIR = Path("build") / "examples" / "examples" / "cpp"
#: Seconds a server or the load generator gets to start, and the load to report after its run.
START_TIMEOUT_S = 30.0
REPORT_MARGIN_S = 60.0
#: The cores the server and the load generator are pinned to.
SERVER_CORE = 0
LOAD_CORE = 1
#: The loads: pipelined echo (connections, blocks of packets, blocks in flight per connection) and the relay's
#: MOVEs (players, rooms of PLAYERS / ROOMS = 10: a fan-out of 10, own MOVEs in flight per player).
ECHO_CONNECTIONS = 32
ECHO_BLOCK_PACKETS = 64
ECHO_WINDOW_BLOCKS = 4
RELAY_PLAYERS = 100
RELAY_ROOMS = 10
RELAY_WINDOW = 8

CPP = "C++ (fastpacket::core + epoll)"
EMBED = "C++ server + Python handler (pybind11 embed)"


def find_examples() -> Optional[Path]:
    """The directory holding the built C++ examples, or None."""
    candidates = []
    env = os.environ.get("FASTPACKET_EXAMPLES_DIR")
    if env:
        candidates.append(Path(env))
    source_root = Path(__file__).resolve().parents[4]  # src/fastpacket/cli/bench/parity.py -> the tree
    candidates += [source_root / EXAMPLES_SUBDIR, Path.cwd() / EXAMPLES_SUBDIR]
    for d in candidates:
        if (d / SERVER_EXE).is_file() and (d / LOADGEN_EXE).is_file():
            return d
    return None


def _pin(pid: int, core: int) -> None:
    if hasattr(os, "sched_setaffinity") and (os.cpu_count() or 1) > max(SERVER_CORE, LOAD_CORE):
        os.sched_setaffinity(pid, {core})


def _cpu_ticks(pid: int) -> Tuple[int, int]:
    """(utime, stime) of process `pid`, in clock ticks (/proc/PID/stat fields 14 and 15)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        stat = f.read()
    fields = stat[stat.rindex(b")") + 2:].split()  # after "pid (comm) ": field 3 onwards
    return int(fields[11]), int(fields[12])


def _start_server(impl: str, app: str) -> Tuple[subprocess.Popen, int]:
    """Starts one server (impl: "cpp", "asyncio" or "uvloop") pinned to
    SERVER_CORE; returns (process, port)."""
    env = None
    d = find_examples()
    if impl == "cpp":
        assert d is not None
        cmd = [str(d / SERVER_EXE), app, "0"]
    elif impl == "embed":
        assert d is not None and app == "echo"
        import site

        cmd = [str(d / EMBED_EXE), "0", EMBED_HANDLER]
        # the embedded interpreter finds this environment's fastpacket (a virtual environment's site-packages)
        env = {**os.environ, "FASTPACKET_EMBED_PATH": os.pathsep.join(site.getsitepackages())}
    else:
        cmd = [sys.executable, "-m", "fastpacket.cli.bench.parity", "serve", app, impl]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, env=env)
    _pin(proc.pid, SERVER_CORE)
    line = _readline(proc, START_TIMEOUT_S)
    if not line.startswith("port "):
        proc.kill()
        raise RuntimeError(f"{impl} {app} server did not start: {line!r}")
    return proc, int(line.split()[1])


def _readline(proc: subprocess.Popen, timeout: float) -> str:
    import selectors

    assert proc.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        if not sel.select(timeout):
            proc.kill()
            raise RuntimeError(f"{proc.args!r} said nothing within {timeout} s")
    return proc.stdout.readline().strip()


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def measure(impl: str, app: str, seconds: float) -> Dict[str, Any]:
    """One server, one run of the C++ load: its figures and the server's
    CPU per packet (echo) or per MOVE sent (relay), in µs."""
    d = find_examples()
    if d is None:
        raise RuntimeError("the C++ examples are not built (cmake -DFASTPACKET_BUILD_EXAMPLES=ON)")
    server, port = _start_server(impl, app)
    try:
        if app == "echo":
            args = ["echo", "127.0.0.1", str(port), str(ECHO_CONNECTIONS), str(seconds), str(ECHO_BLOCK_PACKETS),
                    str(ECHO_WINDOW_BLOCKS)]
        else:
            args = ["move", "127.0.0.1", str(port), str(RELAY_PLAYERS), str(seconds), str(RELAY_ROOMS),
                    str(RELAY_WINDOW)]
        load = subprocess.Popen([str(d / LOADGEN_EXE), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                text=True)
        try:
            _pin(load.pid, LOAD_CORE)
            if _readline(load, START_TIMEOUT_S) != "ready":
                raise RuntimeError(f"the load generator did not connect to the {impl} {app} server")
            u0, s0 = _cpu_ticks(server.pid)
            assert load.stdin is not None
            load.stdin.write("go\n")
            load.stdin.flush()
            result = json.loads(_readline(load, seconds + REPORT_MARGIN_S))
            u1, s1 = _cpu_ticks(server.pid)
            load.wait(10)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait(10)
    finally:
        _stop(server)
    if not result["ok"]:
        raise RuntimeError(f"the {impl} {app} server lost or corrupted data: {result}")
    n = max(result["packets"] if app == "echo" else result["moves"], 1)
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    user = (u1 - u0) * tick_us / n
    system = (s1 - s0) * tick_us / n
    rate = result["packets_per_s"] if app == "echo" else result["moves_per_s"]
    return {"user": user, "sys": system, "total": user + system, "rate": rate, "n": n, "result": result}


def _ratios(rounds: List[Dict[str, Dict[str, Any]]], impl: str, key: str) -> Tuple[float, float, float]:
    """impl's `key` CPU per packet / the C++ server's: pooled over all
    rounds (CPU summed, packets summed: /proc's user/system split is
    sampled at the kernel's tick, so a server with little user time needs
    the samples of every round), then the min and max of the per-round
    ratios (rounds where the C++ server had no user sample left out)."""
    def pooled(name: str) -> float:
        return (sum(r[name][key] * r[name]["n"] for r in rounds) / max(sum(r[name]["n"] for r in rounds), 1))

    base = pooled("cpp")
    rs = [r[impl][key] / r["cpp"][key] for r in rounds if r["cpp"][key] > 0]
    ratio = pooled(impl) / base if base > 0 else float("inf")
    return ratio, min(rs, default=float("nan")), max(rs, default=float("nan"))


def _loops() -> List[str]:
    try:
        import uvloop  # noqa: F401

        return ["asyncio", "uvloop"]
    except ImportError:
        return ["asyncio"]


#: The issue's goals (#16): fastpacket / C++ CPU per packet.
GOALS = {"echo": {"user": 1.5, "total": 0.9}, "relay": {"user": 2.0}}


def run(quick: bool = False, apps: Sequence[str] = ("echo", "relay")) -> List[Row]:
    """The C++ reference rows and fastpacket's ratios to them (none when the examples are not built)."""
    if find_examples() is None:
        print("bench echo: the C++ reference is not built (cmake -S . -B build/examples "
              "-DFASTPACKET_BUILD_EXAMPLES=ON && cmake --build build/examples); its rows are left out",
              file=sys.stderr)
        return []
    seconds = 1.0 if quick else 3.0
    repeat = 1 if quick else 5
    rows: List[Row] = []
    examples = find_examples()
    embed = examples is not None and (examples / EMBED_EXE).is_file()
    for app in apps:
        impls = ["cpp", *_loops(), *(["embed"] if embed and app == "echo" else [])]
        rounds: List[Dict[str, Dict[str, Any]]] = []
        for _ in range(repeat):  # interleaved: machine noise hits every server alike
            rounds.append({impl: measure(impl, app, seconds) for impl in impls})
        unit = "packet" if app == "echo" else "MOVE in"
        load = (f"{ECHO_CONNECTIONS} conns pipelined" if app == "echo"
                else f"{RELAY_PLAYERS} players, fan-out {RELAY_PLAYERS // RELAY_ROOMS}")
        for impl in impls:
            med = {k: statistics.median(r[impl][k] for r in rounds) for k in ("user", "sys", "total", "rate")}
            name = {"cpp": CPP, "embed": EMBED}.get(impl, f"fastpacket, {impl}")
            detail = (f"{med['total']:.3f} us/{unit} (user {med['user']:.3f}, sys {med['sys']:.3f}), "
                      f"{med['rate'] / 1e6:.2f}M/s")
            ratio = None
            target = ""
            if impl != "cpp":
                t, u, s = (_ratios(rounds, impl, k) for k in ("total", "user", "sys"))
                ratio = 1.0 / t[0]
                detail += (f"; vs C++: total {t[0]:.2f}x ({t[1]:.2f}-{t[2]:.2f}), user {u[0]:.2f}x "
                           f"({u[1]:.2f}-{u[2]:.2f}), sys {s[0]:.2f}x ({s[1]:.2f}-{s[2]:.2f})")
                if impl != "embed":  # the goals are the Python servers'
                    target = ", ".join(f"{k} <= {v}x C++" for k, v in GOALS[app].items())
            rows.append(Row("echo", f"{app} vs C++: server CPU per {unit}, C++ load, {load}", name,
                            1e6 / med["total"], f"{unit}s/CPU-s", ratio, detail, target))
    return rows


def _serve(app: str, loop_kind: str) -> None:
    import fastpacket as fp
    from fastpacket.system import new_event_loop, raise_nofile

    raise_nofile(16384)
    loop = new_event_loop(loop_kind)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        if app == "echo":
            from fastpacket.apps.echo import echo

            server = await fp.aio.serve(echo, "127.0.0.1", 0)
        else:
            from fastpacket.apps.relay import Relay

            relay = Relay()
            server = await fp.aio.serve(None, "127.0.0.1", 0, handlers=relay.handlers, on_close=relay.on_close)
        print("port", server.sockets[0].getsockname()[1], flush=True)
        stop = loop.create_future()
        loop.add_signal_handler(signal.SIGTERM, stop.set_result, None)
        await stop
        server.close()

    loop.run_until_complete(main())
    loop.close()


if __name__ == "__main__":
    if len(sys.argv) != 4 or sys.argv[1] != "serve" or sys.argv[2] not in ("echo", "relay"):
        print("usage: python -m fastpacket.cli.bench.parity serve echo|relay asyncio|uvloop", file=sys.stderr)
        sys.exit(2)
    _serve(sys.argv[2], sys.argv[3])
