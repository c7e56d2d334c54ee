"""The ``fastpacket`` command line: ``fastpacket bench`` for now.

Progress and tables are printed here only; library code logs.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence

from fastpacket.benchmarks import SECTIONS, Row, run_sections


def _format_rate(v: float) -> str:
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if v >= scale:
            return f"{v / scale:.2f}{suffix}"
    return f"{v:.1f}"


def format_table(rows: List[Row]) -> str:
    """The bench rows as a fixed-width text table."""
    header = ("section", "case", "implementation", "rate", "unit", "also", "vs plain", "target")
    lines = [header]
    compared = {(r.section, r.case) for r in rows if r.ratio is not None}
    for r in rows:
        if r.ratio is not None:
            vs = f"{r.ratio:.2f}x"
        else:
            vs = "1.00x (base)" if (r.section, r.case) in compared else ""
        lines.append((r.section, r.case, r.impl, _format_rate(r.rate), r.unit, r.extra, vs, r.target))
    widths = [max(len(str(line[i])) for line in lines) for i in range(len(header))]
    out = []
    for k, line in enumerate(lines):
        out.append("  ".join(str(c).ljust(w) for c, w in zip(line, widths)).rstrip())
        if k == 0:
            out.append("  ".join("-" * w for w in widths))
    return "\n".join(out)


def _cmd_bench(args: argparse.Namespace) -> int:
    names = args.sections or list(SECTIONS)
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        print(f"unknown section(s) {unknown}; choose from {list(SECTIONS)}", file=sys.stderr)
        return 2
    progress = (lambda s: print(f"measuring {s} ...", file=sys.stderr, flush=True)) if sys.stderr.isatty() else (lambda s: None)
    rows = run_sections(names, quick=args.quick, progress=progress)
    if args.json:
        print(json.dumps([r.__dict__ for r in rows], indent=2))
    else:
        print(format_table(rows))
        print("\nrates are medians of interleaved repetitions; 'vs plain' is the same-run ratio "
              "to the plain-Python way of doing the same job")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fastpacket", description="fastpacket: the packet core for Python real-time servers")
    sub = parser.add_subparsers(dest="command", required=True)
    bench = sub.add_parser("bench", help="side-by-side benchmarks against the plain-Python way")
    bench.add_argument("sections", nargs="*", help=f"sections to run (default: all of {list(SECTIONS)})")
    bench.add_argument("--quick", action="store_true", help="smaller inputs, fewer repetitions")
    bench.add_argument("--json", action="store_true", help="print the rows as JSON")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
