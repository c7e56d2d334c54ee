"""README.md: every ```python block runs as printed, so the README cannot
drift from the API.

Convention (stated in README.md, "Development"):

- each block runs alone, in a fresh interpreter whose working directory is
  an empty temporary folder (so ``fastpacket`` is the installed package),
  must exit 0 within BLOCK_TIMEOUT_S and print nothing on stderr (no
  traceback, no warning);
- a block right after the line ``<!-- readme-test: server -->`` is a server
  that runs until stopped: it is started as printed except that
  ``fastpacket.aio.serve`` listens on a kernel-chosen port instead of the
  one printed (tests never take a fixed port), then the client and load
  commands the README gives for it (``python -m fastpacket.examples.client
  PORT``, ``fastpacket load --port PORT``) are run against it, and it is
  stopped with SIGINT and must end within STOP_TIMEOUT_S, without a
  traceback (Ctrl-C must look like a clean stop).

README.md is found beside the tests directory (the repository root, or the
folder cibuildwheel copies README.md and tests/ into), so the same test runs
against an installed wheel.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List, NamedTuple

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
SERVER_MARK = "<!-- readme-test: server -->"
BLOCK_TIMEOUT_S = 60.0
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 10.0
LOAD_SECONDS = 0.5
# Run before a server block: the same server on port 0, its port announced on stderr.
SERVER_PRELUDE = '''\
import sys as _sys
import fastpacket.aio as _aio
_real_serve = _aio.serve
async def _serve_on_free_port(handler=None, host="127.0.0.1", port=0, **options):
    server = await _real_serve(handler, host, 0, **options)
    print("readme-test: serving on port", server.port, file=_sys.stderr, flush=True)
    return server
_aio.serve = _serve_on_free_port
'''


class Block(NamedTuple):
    line: int       # 1-based line of the opening fence
    code: str
    server: bool


def python_blocks(text: str) -> List[Block]:
    """Every ```python block of `text`, in order."""
    blocks = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == "```python":
            start = i
            previous = next((lines[k].strip() for k in range(i - 1, -1, -1) if lines[k].strip()), "")
            i += 1
            body = []
            while i < len(lines) and lines[i].strip() != "```":
                body.append(lines[i])
                i += 1
            assert i < len(lines), f"README.md:{start + 1}: unclosed ```python block"
            blocks.append(Block(start + 1, "\n".join(body) + "\n", previous == SERVER_MARK))
        i += 1
    return blocks


def _readme_text() -> str:
    if not README.is_file():
        raise FileNotFoundError(f"README.md not found at {README} (it must sit beside the tests directory)")
    return README.read_text(encoding="utf-8")


BLOCKS = python_blocks(_readme_text())


def test_readme_has_python_blocks():
    # the library, layouts, buffers, aggregation, metrics and the server
    assert len(BLOCKS) >= 6
    assert sum(b.server for b in BLOCKS) >= 1


@pytest.mark.parametrize("block", [b for b in BLOCKS if not b.server], ids=lambda b: f"line{b.line}")
def test_block_runs_as_printed(block, tmp_path):
    script = tmp_path / "snippet.py"
    script.write_text(block.code, encoding="utf-8")
    r = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True,
                       timeout=BLOCK_TIMEOUT_S)
    assert r.returncode == 0, f"README.md:{block.line} failed:\n{r.stderr}"
    assert r.stderr == "", f"README.md:{block.line} wrote to stderr:\n{r.stderr}"


def _wait_for_port(proc: subprocess.Popen, timeout: float) -> int:
    """The port the server block announces on stderr (fails after `timeout` s)."""
    deadline = time.monotonic() + timeout
    fd = proc.stderr.fileno()
    buf = b""
    while True:
        m = re.search(rb"readme-test: serving on port (\d+)\n", buf)
        if m:
            return int(m.group(1))
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            pytest.fail(f"the server block did not start within {timeout:g} s: {buf.decode()!r}")
        chunk = os.read(fd, 4096)
        if not chunk:
            pytest.fail(f"the server block exited ({proc.wait()}) before serving: {buf.decode()!r}")
        buf += chunk


def _command_after(text: str, block: Block, pattern: str) -> re.Match:
    """The first match of `pattern` in the README text after `block`."""
    offset = len("\n".join(text.splitlines()[:block.line]))
    m = re.compile(pattern).search(text, offset)
    assert m, f"README.md: no `{pattern}` after the server block at line {block.line}"
    return m


@pytest.mark.skipif(sys.platform == "win32", reason="stopped with SIGINT")
@pytest.mark.parametrize("block", [b for b in BLOCKS if b.server], ids=lambda b: f"line{b.line}")
def test_server_block_serves_the_readme_client(block, tmp_path):
    text = _readme_text()
    client = _command_after(text, block, r"`python -m (fastpacket\.examples\.client) (\d+)`")
    load = _command_after(text, block, r"`fastpacket (load) --port (\d+)`")
    script = tmp_path / "server.py"
    script.write_text(SERVER_PRELUDE + block.code, encoding="utf-8")
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        port = _wait_for_port(proc, START_TIMEOUT_S)
        r = subprocess.run([sys.executable, "-m", client.group(1), str(port)], cwd=tmp_path,
                           capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        assert r.stdout.count("my move") == 10 and "round trip" in r.stdout, r.stdout
        r = subprocess.run([sys.executable, "-m", "fastpacket", load.group(1), "--port", str(port),
                            "--seconds", str(LOAD_SECONDS), "--connections", "2", "--json"],
                           cwd=tmp_path, capture_output=True, text=True, timeout=BLOCK_TIMEOUT_S)
        assert r.returncode == 0, r.stderr
        d = json.loads(r.stdout)
        assert d["ok"] and d["echoed"] == d["sent"] > 0, d   # every MOVE came back
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=STOP_TIMEOUT_S)
        err = proc.stderr.read().decode()
        assert "Traceback" not in err, f"Ctrl-C on the README server printed a traceback:\n{err}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=STOP_TIMEOUT_S)
        proc.stdout.close()
        proc.stderr.close()
