"""Measurement helpers: interleaved repetitions, medians, table rows."""

from __future__ import annotations

import gc
import statistics
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Mapping, Optional


@dataclass
class Row:
    """One line of the bench table.

    ``rate`` is in ``unit`` (for example "packets/s"); ``ratio`` is this
    implementation's speed divided by the baseline's of the same ``case``
    (None for the baseline itself); ``extra`` holds a second rate (MB/s).
    """

    section: str
    case: str
    impl: str
    rate: float
    unit: str
    ratio: Optional[float] = None
    extra: str = ""
    target: str = ""


def interleaved_medians(funcs: Mapping[str, Callable[[], object]], repeat: int) -> Dict[str, float]:
    """Median wall time in seconds of each function, run in turns
    (a, b, c, a, b, c, ...) so that machine noise hits every one alike.
    The garbage collector is paused inside each timed call."""
    times: Dict[str, List[float]] = {name: [] for name in funcs}
    for _ in range(repeat):
        for name, fn in funcs.items():
            gc.collect()
            gc.disable()
            try:
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
            finally:
                gc.enable()
    return {name: statistics.median(ts) for name, ts in times.items()}
