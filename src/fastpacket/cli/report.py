"""What the command line prints: exit codes, rates, the bench table (text
and markdown), the titled report tables of demo and load, and the one-line
progress display (on a TTY only)."""

from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Optional, Tuple

from fastpacket.cli.bench import Row

__all__ = ["OK", "FAILED", "USAGE", "Progress", "format_markdown", "format_rate", "format_report", "format_table",
           "fmt_closes", "fmt_latency", "fmt_mib", "fmt_rtt", "fmt_savings", "fmt_us"]

#: exit codes
OK, FAILED, USAGE = 0, 1, 2


def format_rate(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.2f}{suffix}"
    return f"{v:.1f}"


def bench_cells(rows: List[Row]) -> Tuple[Tuple[str, ...], List[Tuple[str, ...]]]:
    header: Tuple[str, ...] = ("section", "case", "implementation", "rate", "unit", "also", "vs plain", "target")
    lines: List[Tuple[str, ...]] = []
    compared = {(r.section, r.case) for r in rows if r.ratio is not None}
    for r in rows:
        if r.ratio is not None:
            vs = f"{r.ratio:.2f}x"
        else:  # the baseline of a compared case, or a row that stands alone
            vs = "1.00x (base)" if (r.section, r.case) in compared else ""
        lines.append((r.section, r.case, r.impl, format_rate(r.rate), r.unit, r.extra, vs, r.target))
    return header, lines


def format_table(rows: List[Row]) -> str:
    """The bench rows as a fixed-width text table."""
    header, body = bench_cells(rows)
    lines = [header] + body
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def format_markdown(rows: List[Row]) -> str:
    """The bench rows as a GitHub markdown table."""
    header, body = bench_cells(rows)
    esc = lambda c: str(c).replace("|", "\\|")  # noqa: E731
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out.extend("| " + " | ".join(esc(c) for c in line) + " |" for line in body)
    return "\n".join(out)


def fmt_us(v: Optional[float]) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.0f}" if v >= 100 else f"{v:.1f}"


def fmt_mib(n: float) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def format_report(title: str, rows: List[Tuple[str, str]]) -> str:
    """A titled two-column table."""
    w = max(len(k) for k, _ in rows)
    lines = [title, ""] + [f"{k.ljust(w)}  {v}" for k, v in rows]
    return "\n".join(lines)


def fmt_closes(d: Dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in sorted(d.items(), key=lambda kv: -kv[1])) or "none"


def fmt_savings(stats: Optional[Dict[str, int]]) -> str:
    if stats is None:
        return "off (--compress turns it on)"
    if not stats.get("bytes_in"):
        return "on, nothing packed"
    saved = 1 - stats["bytes_out"] / stats["bytes_in"]
    return (f"{saved:.1%} ({fmt_mib(stats['bytes_in'])} of packets -> {fmt_mib(stats['bytes_out'])} of frames; "
            f"{stats['compressed']} frames compressed, {stats['raw']} raw)")


def fmt_latency(lat: Dict[str, float]) -> str:
    """Input-to-state latency percentiles (µs) in one cell, with the count."""
    if not lat.get("count"):
        return "no INPUT acknowledged"
    return (f"{lat['p50']:,.0f} / {lat['p95']:,.0f} / {lat['p99']:,.0f} / {lat['max']:,.0f} us over "
            f"{lat['count']:,} INPUTs (includes the wait for the next tick)")


def fmt_rtt(rtt: Dict[str, float]) -> str:
    return (f"{fmt_us(rtt['p50'])} / {fmt_us(rtt['p95'])} / {fmt_us(rtt['p99'])} / {fmt_us(rtt['max'])} us "
            f"over {int(rtt.get('count', 0)):,} round trips")


class Progress:
    """One self-rewriting line on a TTY, nothing elsewhere."""

    def __init__(self, stream: Any = None) -> None:
        self.stream = stream or sys.stdout
        self.on = self.stream.isatty()
        self.width = 0

    def show(self, text: str) -> None:
        if self.on:
            self.width = max(self.width, len(text))
            self.stream.write("\r" + text.ljust(self.width))
            self.stream.flush()

    def clear(self) -> None:
        if self.on and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0
