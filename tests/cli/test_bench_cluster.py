"""``fastpacket bench cluster --quick`` for real: 2 ``serve relay --bus``
processes on a real redis-server beside 1 server, the delivery check, and
what the section reports per process (user and sys CPU) and for the bus
(messages/s, packets per message, read from the servers' /metrics)."""

from __future__ import annotations

import json
import re
import subprocess

from tests.redis_server import require_redis
from tests.served import CMD

#: Seconds the quick section may take on a loaded 2-core machine.
BENCH_TIMEOUT_S = 240


def test_bench_cluster_quick(tmp_path):
    require_redis()
    r = subprocess.run(CMD + ["bench", "cluster", "--quick", "--json"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=BENCH_TIMEOUT_S)
    assert r.returncode == 0, r.stderr
    rows = {row["impl"]: row for row in json.loads(r.stdout)}
    assert set(rows) == {"1 server", "2 servers + Redis", "bus cost"}
    one, two = rows["1 server"]["extra"], rows["2 servers + Redis"]["extra"]
    assert "delivery ok" in one and "delivery ok" in two
    assert re.search(r"server \d+\.\d+ = user \d+\.\d+ \+ sys \d+\.\d+", one)
    for name in ("server A", "server B", "redis"):
        assert re.search(rf"{name} \d+\.\d+ = user \d+\.\d+ \+ sys \d+\.\d+", two), two
    m = re.search(r"bus ([\d,]+) messages/s, (\d+\.\d) packets each", two)
    assert m and float(m.group(1).replace(",", "")) > 0 and float(m.group(2)) >= 1.0, two
    assert rows["bus cost"]["target"] == "<= 1 µs; p50 ratio <= 2"
