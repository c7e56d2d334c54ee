"""The ``fastpacket`` command line:

- ``fastpacket demo``: a game relay server and a load generator (another
  process) on 127.0.0.1 for a bounded time, then a table of what the server
  did (packets/s in and out, MB/s, RTT percentiles, server CPU per packet,
  RSS, compression savings, closes by reason);
- ``fastpacket serve``: an app (the relay by default) on N worker processes
  sharing the port with SO_REUSEPORT and one metrics registry, /metrics over
  HTTP, stopped cleanly by SIGINT or SIGTERM (fastpacket.runtime);
- ``fastpacket load``: the movement load generator against any such server;
- ``fastpacket bench``: side-by-side benchmarks against the plain-Python way.

Progress and tables are printed here only; library code logs.
"""

from fastpacket.cli.main import build_parser, main
from fastpacket.cli.report import format_markdown, format_table

__all__ = ["build_parser", "format_markdown", "format_table", "main"]
