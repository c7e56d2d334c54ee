"""The Python handler the C++ server examples/cpp/embed.cpp (fastpacket_embed)
calls once per read burst: ``fastpacket_embed 0 fastpacket.examples.embed_echo:on_burst``.

``batch`` is a fastpacket.PacketBatch over the burst's bytes in the C++
server's receive buffer (no copy); ``out`` is the connection's
fastpacket.SendBuffer, written by the C++ server after the call. Game logic
goes here, with fastpacket's native batch and send-buffer calls.
"""

from __future__ import annotations

import fastpacket as fp


def on_burst(batch: fp.PacketBatch, out: fp.SendBuffer) -> None:
    """Echo: every packet back, byte for byte (headers and seq as they are)."""
    out.send_batch(batch)
