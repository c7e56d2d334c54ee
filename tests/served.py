"""``fastpacket serve`` in a subprocess for tests: its port, metrics port,
worker pids and metrics file read from its ready line; every wait bounded."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time

import pytest

CMD = [sys.executable, "-m", "fastpacket"]


class Served:
    """``fastpacket serve`` in a subprocess, its port and metrics port read
    from its ready line."""

    def __init__(self, args, tmp_path, timeout=60.0, cmd=None):
        self.proc = subprocess.Popen(cmd or CMD + ["serve", "--port", "0"] + args, cwd=tmp_path,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.buf = b""
        self.line = self._readline(timeout)
        m = re.search(r" on (?:127\.0\.0\.1:(\d+)|unix:(\S+?))(?:[ ,]|$)", self.line)
        assert m, f"no ready line: {self.line!r} {self.proc.stderr.read().decode() if self.proc.poll() is not None else ''}"
        self.port = int(m.group(1)) if m.group(1) else None
        self.path = m.group(2)  # a Unix socket server's
        m = re.search(r"http://127\.0\.0\.1:(\d+)/metrics", self.line)
        self.metrics_port = int(m.group(1)) if m else None
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics" if m else None
        m = re.search(r"WebSocket at wss?://127\.0\.0\.1:(\d+)", self.line)
        self.ws_port = int(m.group(1)) if m else None
        m = re.search(r"\(pids ([\d ]+)\)", self.line)
        self.worker_pids = [int(p) for p in m.group(1).split()] if m else []
        m = re.search(r"metrics file (\S+?);", self.line)
        self.metrics_file = m.group(1) if m else None

    def _readline(self, timeout):
        """The next line of stdout ("" after `timeout` seconds without one)."""
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode()

    def stop(self, sig=signal.SIGINT, timeout=30.0):
        self.proc.send_signal(sig)
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, err = self.proc.communicate()
            pytest.fail(f"serve did not stop within {timeout} s after {sig!r}: {err.decode()}")
        return self.proc.returncode, (self.buf + out).decode(), err.decode()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.communicate()
