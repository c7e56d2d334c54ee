"""Reading Prometheus text in tests: fetch a /metrics URL (bounded), and sum
samples by name and labels, with prometheus_client's parser."""

from __future__ import annotations

import urllib.request
from typing import Dict, List, Tuple

from prometheus_client.parser import text_string_to_metric_families


def fetch(url: str, timeout: float = 5.0) -> str:
    """The body of `url` (a /metrics endpoint)."""
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return resp.read().decode("utf-8")


def samples(text: str) -> Dict[str, List[Tuple[Dict[str, str], float]]]:
    """{sample name: [(labels, value)]} of a Prometheus text exposition."""
    out: Dict[str, List[Tuple[Dict[str, str], float]]] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out.setdefault(s.name, []).append((dict(s.labels), float(s.value)))
    return out


def total(text: str, name: str, **labels: str) -> float:
    """Sum of the samples called `name` whose labels include `labels`."""
    return sum(v for got, v in samples(text).get(name, [])
               if all(got.get(k) == want for k, want in labels.items()))


def families(text: str) -> Dict[str, str]:
    """{family name: type}; counters are named with their _total, as PromQL sees them."""
    out = {}
    for fam in text_string_to_metric_families(text):
        out[fam.name + "_total" if fam.type == "counter" else fam.name] = fam.type
    return out


#: Set by .ci/run, which installs Debian's `prometheus` package: a missing
#: prometheus or promtool is then a failure, never a skip.
REQUIRE_ENV = "FASTPACKET_REQUIRE_PROMETHEUS"


def require_tool(name: str) -> str:
    """The path of `name` (prometheus, promtool); the test is skipped where it
    is not installed, unless REQUIRE_ENV is set (CI), where it fails."""
    import os
    import shutil

    import pytest

    path = shutil.which(name)
    if path is None:
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"{REQUIRE_ENV} is set but {name} is not on PATH (Debian: apt-get install prometheus)")
        pytest.skip(f"{name} not installed (Debian: apt-get install prometheus)")
    return path
