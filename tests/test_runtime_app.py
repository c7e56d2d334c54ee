"""A user's own server through the runtime, seen from outside: README's
app file (``game.py``) served by ``fastpacket serve game:app --workers N``
as README prints the command, over TCP, TLS and a Unix socket; an
inherited socket (``--fd``); one server per address; SIGTERM with
connections open; ``fastpacket.run`` in a script; ``mypy --strict`` on a
user script. Real processes and sockets, every wait bounded, both loops."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.system import new_event_loop
from tests.certs import certs  # noqa: F401  (the session's certificates)
from tests.loops import recv_packets
from tests.served import CMD, Served

pytestmark = [pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="workers need SO_REUSEPORT")]

README = Path(__file__).resolve().parent.parent / "README.md"
WAIT_S = 20.0
MOVE, WHOIS = 1, 2


def readme_app() -> str:
    """The app file of README's "Run your own server" (the python block that defines `app = Game()`)."""
    text = README.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    (block,) = [b for b in blocks if "\napp = Game()" in b]
    return block


def readme_serve_command() -> list:
    """README's command that serves game.py, as arguments after ``fastpacket``."""
    m = re.search(r"^fastpacket (serve game:app [^\n]*)$", README.read_text(encoding="utf-8"), re.M)
    assert m, "README has no `fastpacket serve game:app ...` command"
    return shlex.split(m.group(1))


def with_args(args, **replace):
    """`args` with each --option's value replaced (None: the option and its value removed)."""
    out = list(args)
    for name, value in replace.items():
        flag = "--" + name.replace("_", "-")
        if flag in out:
            i = out.index(flag)
            del out[i:i + 2]
        if value is not None:
            out += [flag, str(value)]
    return out


@pytest.fixture
def game_dir(tmp_path):
    (tmp_path / "game.py").write_text(readme_app(), encoding="utf-8")
    return tmp_path


def run_loop(coro, loop_kind, timeout=WAIT_S * 2):
    """Runs `coro` on a fresh loop of `loop_kind` ("asyncio" or "uvloop"), bounded by `timeout` seconds."""
    loop = new_event_loop(loop_kind)
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, timeout))
    finally:
        loop.close()


async def talk_to_game(connect):
    """Several clients, each pipelining MOVEs (echoed by the sync handler)
    and WHOIS requests (answered by the async one after the names the
    startup hook loaded); each client's replies in order."""
    clients = [await connect() for _ in range(6)]
    for i, c in enumerate(clients):
        for k in range(20):
            c.send(MOVE, b"m%d" % k, player_id=7)
            c.send(WHOIS, b"", player_id=7 + (k + i) % 3)  # 7 ada, 8 grace, 9 unknown
    names = {7: b"ada", 8: b"grace", 9: b"?"}
    for i, c in enumerate(clients):
        got = await recv_packets(c, 40, WAIT_S)
        # handlers by type: a burst is grouped by type, each type in order
        assert [bytes(p.payload) for p in got if p.type == MOVE] == [b"m%d" % k for k in range(20)]
        assert [bytes(p.payload) for p in got if p.type == WHOIS] == [names[7 + (k + i) % 3] for k in range(20)]
    for c in clients:  # and closed before the loop is (a TLS close takes a few loop iterations)
        c.close()
    await asyncio.wait_for(asyncio.gather(*(c.wait_closed() for c in clients)), WAIT_S)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_readme_app_on_workers_over_tls_with_metrics(game_dir, certs, loop):
    # README's command as printed, on free ports, with the test's certificates, 2 workers on 2 cores
    args = with_args(readme_serve_command(), port=0, metrics_port=0, ssl_certfile=certs.server_cert,
                     ssl_keyfile=certs.server_key, workers=2) + (["--uvloop"] if loop == "uvloop" else [])
    s = Served(args, game_dir, cmd=CMD + args)
    try:
        assert "game:app" in s.line and "(TLS)" in s.line and len(s.worker_pids) == 2 and s.metrics_url
        run_loop(talk_to_game(lambda: aio.connect("127.0.0.1", s.port, ssl=certs.client_context())), loop)
        from tests.scrape import fetch, total

        assert total(fetch(s.metrics_url), "fastpacket_packets_in_total") == 6 * 40
        code, out, err = s.stop(signal.SIGTERM)
        assert code == 0 and "Traceback" not in err, err
        assert "fastpacket serve: stopped" in out
    finally:
        s.kill()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_user_app_on_two_workers_over_a_unix_socket(game_dir, loop, tmp_path):
    path = str(tmp_path / "game.sock")
    args = ["serve", "game:app", "--workers", "2", "--uds", path] + (["--uvloop"] if loop == "uvloop" else [])
    s = Served(args, game_dir, cmd=CMD + args)
    try:
        assert s.path == path and len(s.worker_pids) == 2
        run_loop(talk_to_game(lambda: aio.connect_unix(path)), loop)
        # a second server on the same socket path: refused, the first one untouched
        r = subprocess.run(CMD + args, cwd=game_dir, capture_output=True, text=True, timeout=WAIT_S * 3)
        assert r.returncode == 1 and f"Unix socket {path} is already in use" in r.stderr, r.stderr
        run_loop(talk_to_game(lambda: aio.connect_unix(path)), loop)
        code, _, err = s.stop(signal.SIGTERM)
        assert code == 0, err
        assert not os.path.exists(path)  # removed at exit
    finally:
        s.kill()


def test_tls_with_required_client_certificates_from_the_cli(game_dir, certs):
    args = ["serve", "game:app", "--port", "0", "--ssl-certfile", str(certs.server_cert), "--ssl-keyfile",
            str(certs.server_key), "--ssl-ca-certs", str(certs.ca)]
    s = Served(args, game_dir, cmd=CMD + args)
    try:
        run_loop(talk_to_game(lambda: aio.connect("127.0.0.1", s.port, ssl=certs.client_context(with_cert=True))),
                 "asyncio")

        async def anonymous():
            try:
                c = await aio.connect("127.0.0.1", s.port, ssl=certs.client_context())
                c.send(MOVE, b"no certificate")
                return await c.recv(WAIT_S)
            except (OSError, ConnectionError) as exc:  # ssl.SSLError is an OSError
                return exc

        assert not isinstance(run_loop(anonymous(), "asyncio"), fp.PacketBatch)
        assert s.stop(signal.SIGTERM)[0] == 0
    finally:
        s.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_inherited_socket_fd(game_dir, workers):
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))  # bound, not listening, as systemd may hand it over
    port = listener.getsockname()[1]
    fd = listener.fileno()
    args = CMD + ["serve", "game:app", "--fd", str(fd), "--workers", workers]
    proc = subprocess.Popen(args, cwd=game_dir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=[fd])
    listener.close()
    s = Served.__new__(Served)
    s.proc, s.buf = proc, b""
    try:
        line = s._readline(WAIT_S * 3)
        assert f"on 127.0.0.1:{port}" in line, line + (proc.stderr.read().decode() if proc.poll() is not None else "")
        run_loop(talk_to_game(lambda: aio.connect("127.0.0.1", port)), "asyncio")
        assert s.stop(signal.SIGTERM)[0] == 0
    finally:
        s.kill()


@pytest.mark.parametrize("workers", ["1", "2"])
def test_a_second_server_on_a_busy_port_exits_1_naming_the_address(tmp_path, workers):
    first = Served(["echo", "--workers", "2"], tmp_path)
    try:
        for second_workers in ("1", workers):
            r = subprocess.run(CMD + ["serve", "echo", "--port", str(first.port), "--workers", second_workers],
                               cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S * 3)
            assert r.returncode == 1, (r.stdout, r.stderr)
            assert f"address 127.0.0.1:{first.port} is already in use" in r.stderr, r.stderr
            assert "Traceback" not in r.stderr

        async def still_all_first():  # every connection still reaches the first server's workers
            for _ in range(16):
                c = await aio.connect("127.0.0.1", first.port)
                c.send(1, b"x")
                assert len(await recv_packets(c, 1, WAIT_S)) == 1
                c.close()

        run_loop(still_all_first(), "asyncio")
    finally:
        first.kill()


def test_a_busy_metrics_port_is_named_as_such(tmp_path):
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    try:
        for workers in ("1", "2"):
            r = subprocess.run(CMD + ["serve", "echo", "--port", "0", "--workers", workers, "--metrics-port",
                                      str(taken.getsockname()[1])],
                               cwd=tmp_path, capture_output=True, text=True, timeout=WAIT_S * 3)
            assert r.returncode == 1, r.stderr
            assert f"metrics address 127.0.0.1:{taken.getsockname()[1]} (the metrics port) is already in use" \
                in r.stderr, r.stderr
    finally:
        taken.close()


SLOW_APP = '''
import asyncio

replies_sent = 0


class Slow:
    """Answers MOVE at once (sync) and HANG never (async, until cancelled)."""

    def __init__(self):
        self.handlers = {1: self.move, 2: self.hang}

    def move(self, session, batch):
        session.send_batch(batch)

    async def hang(self, session, batch):
        await asyncio.Event().wait()

    async def shutdown(self, server):
        server.broadcast(3, b"going down")


app = Slow()
'''


@pytest.mark.parametrize("workers", ["1", "2"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_sigterm_with_connections_open_exits_0_within_the_graceful_timeout(tmp_path, workers, loop):
    (tmp_path / "slow.py").write_text(SLOW_APP, encoding="utf-8")
    graceful = 1.0
    args = ["serve", "slow:app", "--port", "0", "--workers", workers, "--graceful-timeout", str(graceful)] + \
        (["--uvloop"] if loop == "uvloop" else [])
    s = Served(args, tmp_path, cmd=CMD + args)

    async def scenario():
        idle = [await aio.connect("127.0.0.1", s.port) for _ in range(4)]
        for c in idle:  # a round trip each: the server side is surely open
            c.send(1, b"hello")
            assert len(await recv_packets(c, 1, WAIT_S)) == 1
        stuck = await aio.connect("127.0.0.1", s.port)
        stuck.send(2, b"never answered")
        await asyncio.sleep(0.2)  # let it reach the handler
        s.proc.send_signal(signal.SIGTERM)
        for c in idle:  # the shutdown hook's broadcast, then the close
            got = await recv_packets(c, 1, WAIT_S)
            assert [bytes(p.payload) for p in got] == [b"going down"]
            assert await c.recv(WAIT_S) is None
        assert [bytes(p.payload) for p in await recv_packets(stuck, 1, WAIT_S)] == [b"going down"]
        assert await stuck.recv(WAIT_S) is None  # aborted at the graceful timeout

    try:
        run_loop(scenario(), loop)
        # bounded: graceful timeout plus process exit, never the 10 s default
        s.proc.wait(timeout=graceful + 15)
        code, out, err = s.stop(signal.SIGTERM)
        assert code == 0, err
        assert "Traceback" not in err
    finally:
        s.kill()


RUN_SCRIPT = '''
import sys
import fastpacket as fp


async def echo(session: fp.aio.Session, batch: fp.PacketBatch) -> None:
    session.send_batch(batch)


def ready(info):
    print("ready", info["port"], flush=True)


if __name__ == "__main__":
    fp.run(echo, port=0, on_ready=ready, idle_timeout=30.0)
    print("returned", flush=True)
'''


def test_fastpacket_run_in_a_script_and_ctrl_c(tmp_path):
    script = tmp_path / "server.py"
    script.write_text(RUN_SCRIPT, encoding="utf-8")
    s = Served.__new__(Served)
    s.proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    s.buf = b""
    try:
        line = s._readline(WAIT_S * 3)
        assert line.startswith("ready "), line + (s.proc.stderr.read().decode() if s.proc.poll() is not None else "")
        port = int(line.split()[1])

        async def echo_once():
            c = await aio.connect("127.0.0.1", port)
            try:
                c.send(5, b"through fp.run")
                (p,) = await recv_packets(c, 1, WAIT_S)
                assert (p.type, bytes(p.payload)) == (5, b"through fp.run")
            finally:
                c.close()
                await asyncio.wait_for(c.wait_closed(), WAIT_S)

        run_loop(echo_once(), "asyncio")
        code, out, err = s.stop(signal.SIGINT)
        assert code == 0 and "returned" in out and "Traceback" not in err, (out, err)
    finally:
        s.kill()


def test_run_refuses_what_it_cannot_serve():
    with pytest.raises(ValueError, match="import string"):
        fp.run(lambda s, b: None, port=0, workers=2)
    with pytest.raises(TypeError, match="not an app"):
        fp.run(42, port=0)
    with pytest.raises(ValueError, match="cannot import module"):
        fp.run("no_such_module_here:app", port=0)
    with pytest.raises(ValueError, match="ssl_keyfile and ssl_ca_certs need ssl_certfile"):
        fp.run("fastpacket.apps.echo:echo", port=0, ssl_keyfile="key.pem")
    with pytest.raises(ValueError, match="cannot load the TLS certificate"):
        fp.run("fastpacket.apps.echo:echo", port=0, ssl_certfile="/nonexistent/cert.pem")

    class NotAsyncHooks:
        handler = staticmethod(lambda s, b: None)

        def startup(self, server):
            pass

    with pytest.raises(TypeError, match="startup must be an async function"):
        fp.run(NotAsyncHooks(), port=0)


def test_ipv6_hosts_print_with_brackets():
    from fastpacket.runtime import format_address

    assert format_address("::1", 7777) == "[::1]:7777"
    assert format_address("127.0.0.1", 7777) == "127.0.0.1:7777"


def test_version_flag():
    import fastpacket

    for cmd in (CMD, [str(Path(sys.executable).parent / "fastpacket")]):
        r = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=WAIT_S)
        assert r.returncode == 0 and r.stdout.strip() == f"fastpacket {fastpacket.__version__}", r


MYPY_CLIENT = '''
import asyncio
import ssl

import fastpacket as fp
from fastpacket.aio import Session


async def main(port: int) -> None:
    tls = ssl.create_default_context(cafile="cert.pem")
    session: Session = await fp.aio.connect("127.0.0.1", port, ssl=tls, idle_timeout=30.0)
    session.send(1, b"move", player_id=7)
    batch = await session.recv(5.0)
    if batch is not None:
        for p in batch:
            forwarded: int = p.type + p.seq + p.player_id   # int, not Optional[int]: no casts
            session.send(p.type, p.payload, player_id=p.player_id)
            print(forwarded, batch.types.tolist())
    unix = await fp.aio.connect_unix("/tmp/game.sock", max_delay=0.0)
    unix.close()
    length_only = fp.HeaderLayout([("len", "u32")], "len", length_includes_header=False, byteorder="big")
    sb = fp.SendBuffer(layout=length_only)
    sb.send(None, b"one frame")
    session.close("done")


def serve_it() -> None:
    fp.run("game:app", port=7777, workers=4, ssl_certfile="cert.pem", ssl_keyfile="key.pem", metrics_port=9100,
           graceful_timeout=5.0, rate_policy="close")


if __name__ == "__main__":
    asyncio.run(main(7777))
'''


def test_readme_app_and_a_client_pass_mypy_strict(game_dir):
    pytest.importorskip("mypy", reason="mypy is a test dependency (pip install '.[test]')")
    (game_dir / "client.py").write_text(MYPY_CLIENT, encoding="utf-8")
    env = dict(os.environ)
    package_dir = Path(fp.__file__).resolve().parent.parent
    if "site-packages" not in package_dir.parts:  # an editable install: mypy cannot follow its import hook
        env["MYPYPATH"] = str(package_dir)
    r = subprocess.run([sys.executable, "-m", "mypy", "--strict", "--no-incremental", "--cache-dir", os.devnull,
                        "game.py", "client.py"], cwd=game_dir, capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found in 2 source files" in r.stdout


MYPY_PACKAGE_CONFIG = """[mypy]
[mypy-lz4,lz4.*,hdrh.*,zstandard]
ignore_missing_imports = True
"""


def test_the_package_itself_type_checks(tmp_path):
    # the library, its apps and CLI agree with their own stubs (.pyi) and
    # annotations: mypy -p fastpacket on the installed package finds nothing
    pytest.importorskip("mypy", reason="mypy is a test dependency (pip install '.[test]')")
    (tmp_path / "mypy.ini").write_text(MYPY_PACKAGE_CONFIG, encoding="utf-8")
    env = dict(os.environ)
    package_dir = Path(fp.__file__).resolve().parent.parent
    if "site-packages" not in package_dir.parts:  # an editable install: mypy cannot follow its import hook
        env["MYPYPATH"] = str(package_dir)
    r = subprocess.run([sys.executable, "-m", "mypy", "--config-file", "mypy.ini", "--no-incremental",
                        "--cache-dir", os.devnull, "-p", "fastpacket"], cwd=tmp_path, capture_output=True,
                       text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout
