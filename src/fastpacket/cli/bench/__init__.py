"""Side-by-side benchmarks behind ``fastpacket bench``.

Each area has a module here with ``run(quick: bool) -> list[Row]``; every
row is measured in the same run as the plain-Python way of doing the same
job, and its ratio is computed from medians of interleaved repetitions (the
machines are noisy: ratios, not single absolute times). The asv suites in
asv_bench/ time the same code paths for history.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, List

from fastpacket.cli.bench._harness import Row, interleaved_medians

__all__ = ["Row", "SECTIONS", "interleaved_medians", "run_sections"]

#: section name -> module under fastpacket.cli.bench providing run(quick)
SECTIONS: Dict[str, str] = {
    "framing": "fastpacket.cli.bench.framing",
    "ring": "fastpacket.cli.bench.ring",
    "sendbuf": "fastpacket.cli.bench.sendbuf",
    "aggregate": "fastpacket.cli.bench.aggregate",
    "metrics": "fastpacket.cli.bench.metrics",
    "echo": "fastpacket.cli.bench.echo",
    "tick": "fastpacket.cli.bench.tick",
    "cluster": "fastpacket.cli.bench.cluster",
    "ws": "fastpacket.cli.bench.ws",
}


def run_sections(names: List[str], quick: bool, progress: Callable[[str], None] = lambda s: None) -> List[Row]:
    """Run the named sections in order and return all their rows."""
    rows: List[Row] = []
    for name in names:
        progress(name)
        module = importlib.import_module(SECTIONS[name])
        rows.extend(module.run(quick=quick))
    return rows
