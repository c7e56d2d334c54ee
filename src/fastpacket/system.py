"""Process and event-loop helpers shared by the library, the apps and the
command line: one place for each, so that a reading means the same thing
everywhere.

- ``rss_bytes()`` / ``peak_rss_bytes()``: resident memory of this process;
- ``cpu_seconds()``: user + system CPU time of this process;
- ``memory_percent()``: system memory in use;
- ``new_event_loop(kind)``: asyncio's default loop or uvloop's;
- ``raise_nofile(need)``: lift the open-files soft limit for many connections;
- ``read_line(fd, timeout)``: the first line a child process prints, bounded in time.

Clock: everything in fastpacket measures time on the monotonic clock
(``time.monotonic()``/``time.monotonic_ns()``, the clock asyncio's
``loop.time()`` and the native code's CLOCK_MONOTONIC read), never on
``time.time()`` or ``perf_counter``, so readings from Python and native code
compare directly.
"""

from __future__ import annotations

import asyncio
import os
import select
import sys
import time
from typing import Optional, Tuple

__all__ = ["LOOPS", "cpu_seconds", "memory_percent", "new_event_loop", "peak_rss_bytes", "raise_nofile", "read_line",
           "rss_bytes"]

#: Event loop kinds ``new_event_loop`` makes.
LOOPS: Tuple[str, ...] = ("asyncio", "uvloop")


def rss_bytes() -> Optional[int]:
    """Resident set size of this process now, in bytes.

    Linux reads /proc/self/statm; elsewhere this falls back to the peak RSS
    (``peak_rss_bytes``); None where neither is available.
    """
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return peak_rss_bytes()


def peak_rss_bytes() -> Optional[int]:
    """Peak resident set size of this process, in bytes (None without the
    ``resource`` module)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # bytes on macOS, KiB elsewhere


def memory_percent() -> Optional[float]:
    """System memory in use, %: 100 * (1 - MemAvailable / MemTotal) from
    /proc/meminfo; elsewhere from sysconf(SC_AVPHYS_PAGES / SC_PHYS_PAGES)
    where both exist (free rather than available memory); else None."""
    try:
        fields = {}
        with open("/proc/meminfo", "rb") as f:
            for line in f:
                key, _, rest = line.partition(b":")
                fields[key] = int(rest.split()[0])
        return 100.0 * (1.0 - fields[b"MemAvailable"] / fields[b"MemTotal"])
    except (OSError, KeyError, ValueError, IndexError, ZeroDivisionError):
        pass
    try:
        total = os.sysconf("SC_PHYS_PAGES")
        avail = os.sysconf("SC_AVPHYS_PAGES")
        return 100.0 * (1.0 - avail / total) if total > 0 else None
    except (ValueError, OSError, AttributeError):
        return None


def cpu_seconds() -> float:
    """User + system CPU time this process has used, in seconds."""
    t = os.times()
    return t.user + t.system


def new_event_loop(kind: str = "asyncio") -> asyncio.AbstractEventLoop:
    """A fresh event loop of `kind`: "asyncio" (the default loop) or
    "uvloop" (ImportError when uvloop is not installed)."""
    if kind == "uvloop":
        import uvloop

        return uvloop.new_event_loop()
    if kind != "asyncio":
        raise ValueError(f"kind must be one of {LOOPS}, got {kind!r}")
    return asyncio.new_event_loop()


def raise_nofile(need: Optional[int] = None) -> int:
    """Raise this process's open-files soft limit to `need` (default: the
    hard limit), never above the hard limit; returns the soft limit now.
    Where the platform has no such limit, returns -1 and changes nothing."""
    try:
        import resource
    except ImportError:
        return -1
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else 1 << 20
    want = ceiling if need is None else min(need, ceiling)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return int(soft)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    except (ValueError, OSError):
        return int(soft)
    return int(want)


def read_line(fd: int, timeout: float) -> str:
    """Bytes read from the pipe `fd` until a newline, end of file or
    `timeout` seconds (what a child process prints when it is ready), decoded;
    whatever came, possibly "" or a partial line."""
    buf = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        buf += chunk
    return buf.decode(errors="replace")
