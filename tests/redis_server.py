"""A real redis-server (Debian's package) for the bus tests: started on a
free loopback port, in a temporary directory, stopped at the end; a local
3-node Redis Cluster for the sharded case. Nothing assumes a Redis runs.

Where redis-server is missing the tests skip, unless FASTPACKET_REQUIRE_REDIS
is set (.ci/run sets it): then they fail."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from typing import List, Optional

import pytest

#: Seconds a redis-server may take to answer PING after it starts.
START_TIMEOUT_S = 10.0
#: Seconds a cluster may take to agree that every slot is served.
CLUSTER_TIMEOUT_S = 30.0


def require_redis() -> str:
    """The redis-server binary; skip (or fail under FASTPACKET_REQUIRE_REDIS) without one."""
    path = shutil.which("redis-server")
    if path is None or shutil.which("redis-cli") is None:
        if os.environ.get("FASTPACKET_REQUIRE_REDIS"):
            pytest.fail("redis-server / redis-cli not found but FASTPACKET_REQUIRE_REDIS is set "
                        "(apt-get install redis-server)")
        pytest.skip("redis-server not installed (apt-get install redis-server)")
    if os.environ.get("FASTPACKET_REQUIRE_REDIS"):
        import redis  # noqa: F401  (fails the test where it is missing)
    else:
        pytest.importorskip("redis", reason="redis-py not installed (pip install 'fastpacket[redis]')")
    return path


#: A cluster node also listens on its port + CLUSTER_BUS_OFFSET (Redis's cluster bus).
CLUSTER_BUS_OFFSET = 10000
#: Tries at finding a free port pair for a cluster node.
PORT_TRIES = 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port() -> int:
    """A free port whose cluster-bus port (+10000) is free and valid too."""
    for _ in range(PORT_TRIES):
        port = free_port()
        if port + CLUSTER_BUS_OFFSET <= 65535 and _bindable(port + CLUSTER_BUS_OFFSET):
            return port
    raise RuntimeError("no free port pair for a cluster node")


def _ping(port: int) -> bool:
    try:
        out = subprocess.run(["redis-cli", "-p", str(port), "ping"], capture_output=True, timeout=5)
    except subprocess.TimeoutExpired:
        return False
    return out.stdout.strip() == b"PONG"


class RedisServer:
    """One redis-server on 127.0.0.1:`port` (a free one by default), its
    files in `workdir`; ``stop()`` and ``start()`` again on the same port
    (an outage)."""

    def __init__(self, workdir: str, port: Optional[int] = None, cluster: bool = False) -> None:
        self.binary = require_redis()
        self.workdir = workdir
        self.port = port or (free_cluster_port() if cluster else free_port())
        self.cluster = cluster
        self.proc: Optional[subprocess.Popen] = None
        os.makedirs(workdir, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "RedisServer":
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", self.workdir, "--protected-mode", "no", "--loglevel", "warning"]
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{self.port}.conf",
                     "--cluster-node-timeout", "5000"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.workdir)
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _ping(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


class RedisCluster:
    """Three redis-server nodes on free loopback ports joined with
    ``redis-cli --cluster create`` (three primaries, no replicas)."""

    def __init__(self, workdir: str, nodes: int = 3) -> None:
        self.nodes: List[RedisServer] = [RedisServer(os.path.join(workdir, f"node{i}"), cluster=True)
                                         for i in range(nodes)]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.nodes[0].port}"

    def start(self) -> "RedisCluster":
        try:
            for n in self.nodes:
                n.start()
            subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{n.port}" for n in self.nodes],
                            "--cluster-yes"], check=True, capture_output=True, timeout=CLUSTER_TIMEOUT_S)
            deadline = time.monotonic() + CLUSTER_TIMEOUT_S
            while True:
                out = subprocess.run(["redis-cli", "-p", str(self.nodes[0].port), "cluster", "info"],
                                     capture_output=True, timeout=5).stdout
                if b"cluster_state:ok" in out and all(
                        b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(n.port), "cluster", "info"],
                                                              capture_output=True, timeout=5).stdout
                        for n in self.nodes):
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"the cluster did not become ready: {out!r}")
                time.sleep(0.1)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for n in self.nodes:
            n.stop()
