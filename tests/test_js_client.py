"""The JavaScript client (src/fastpacket/static/fastpacket.js) under node's
own test runner: its codec against bytes Python produced (wire_vectors.json,
checked here to be what fastpacket.encode and the Aggregator produce now),
and two node clients in one room of a real ``fastpacket serve relay
--ws-port``. Needs node >= 20 (its WebSocket); skipped without node unless
FASTPACKET_REQUIRE_NODE=1 (.ci/run sets it), where a missing node fails."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

import fastpacket as fp
from tests.served import Served

JS_TESTS = Path(__file__).parent / "js"
VECTORS = JS_TESTS / "wire_vectors.json"
#: Seconds node's whole test run may take.
NODE_TIMEOUT_S = 60.0
#: node 20 is the first with a WebSocket client (behind --experimental-websocket).
MIN_NODE_MAJOR = 20


def wire_vectors():
    """What wire_vectors.json must hold: packets from fastpacket.encode, an
    uncompressed and an lz4 aggregate frame from the Aggregator."""
    packets = [dict(type=1, seq=0, player_id=0, payload=""),
               dict(type=2, seq=7, player_id=42, payload="03000000"),
               dict(type=65000, seq=0xFFFFFFFF, player_id=0xFFFFFFFF, payload=bytes(range(50)).hex())]
    for p in packets:
        p["wire"] = fp.encode(p["type"], bytes.fromhex(p["payload"]), seq=p["seq"], player_id=p["player_id"]).hex()
    small = fp.PacketBatch.build([1, 2, 3], [b"a" * 10, b"b" * 5, b""])
    big = fp.PacketBatch.build([1] * 20, [b"z" * 200] * 20)
    return dict(packets=packets, message="".join(p["wire"] for p in packets),
                aggregate_none=fp.Aggregator("lz4", threshold=1 << 20).pack(small).hex(), aggregate_types=[1, 2, 3],
                aggregate_lz4=fp.Aggregator("lz4", threshold=16).pack(big).hex())


def node():
    """The node binary (>= MIN_NODE_MAJOR), or a skip (a failure under FASTPACKET_REQUIRE_NODE=1)."""
    path = shutil.which("node")
    version = subprocess.run([path, "--version"], capture_output=True, text=True).stdout if path else ""
    m = re.match(r"v(\d+)\.", version)
    if m and int(m.group(1)) >= MIN_NODE_MAJOR:
        return path
    why = f"node >= {MIN_NODE_MAJOR} not found ({path or 'no node'} {version.strip()})"
    if os.environ.get("FASTPACKET_REQUIRE_NODE") == "1":
        pytest.fail(why)
    pytest.skip(why)


def test_wire_vectors_are_what_python_produces():
    assert json.loads(VECTORS.read_text()) == wire_vectors(), (
        "tests/js/wire_vectors.json is stale: rewrite it with json.dump(wire_vectors(), f, indent=1)")


def test_node_client_against_serve_relay_ws_port(tmp_path):
    binary = node()
    served = Served(["relay", "--ws-port", "0"], tmp_path)
    try:
        env = dict(os.environ, FASTPACKET_WS_URL=f"ws://127.0.0.1:{served.ws_port}/")
        result = subprocess.run([binary, "--experimental-websocket", "--no-warnings", "--test", str(JS_TESTS)],
                                capture_output=True, text=True, timeout=NODE_TIMEOUT_S, env=env)
    finally:
        code, out, err = served.stop()
    report = result.stdout + result.stderr
    assert result.returncode == 0, report
    # every node test ran, the one against the server included
    assert re.search(r"^# pass 7$", report, re.M) and re.search(r"^# skipped 0$", report, re.M), report
    assert code == 0, err
