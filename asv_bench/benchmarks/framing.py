"""Framing: FrameDecoder beside the plain-Python incremental decoder."""

from fastpacket import FrameDecoder
from fastpacket.cli.bench.framing import (
    fastpacket_arrays,
    fastpacket_iterate,
    make_chunks,
    make_stream,
    plain_python_decode,
)

STREAM_BYTES = 4 << 20  # smaller than `fastpacket bench` so a quick asv run stays short


class DecodeStream:
    """A stream of small GAME packets fed in random chunks of 1..4096 bytes."""

    params = ["python", "fastpacket-arrays", "fastpacket-iterate"]
    param_names = ["impl"]

    def setup(self, impl):
        stream, self.count = make_stream(STREAM_BYTES)
        self.chunks = make_chunks(stream)
        self.fn = {
            "python": plain_python_decode,
            "fastpacket-arrays": fastpacket_arrays,
            "fastpacket-iterate": fastpacket_iterate,
        }[impl]

    def time_decode(self, impl):
        self.fn(self.chunks)

    def peakmem_decode(self, impl):
        self.fn(self.chunks)


class FeedSizes:
    """One feed of whole packets, by feed size: per-feed overhead vs scan."""

    params = [[64, 4096, 1 << 20]]
    param_names = ["feed_bytes"]

    def setup(self, feed_bytes):
        stream, _ = make_stream(feed_bytes + 128)
        batch_end = FrameDecoder().feed(stream[:feed_bytes]).nbytes
        self.data = bytearray(stream[:batch_end])
        self.dec = FrameDecoder()

    def time_feed(self, feed_bytes):
        self.dec.feed(self.data)


class PayloadArray:
    """1,000 payload records as one array: a zero-copy view (equal sizes,
    back to back), a native gather (every other packet), or struct per packet."""

    params = ["python", "fastpacket-view", "fastpacket-gather"]
    param_names = ["impl"]

    def setup(self, impl):
        import struct

        import numpy as np

        from fastpacket import PacketBatch

        self.dtype = np.dtype([("seq", "<u4"), ("vx", "<i2"), ("vy", "<i2")])
        rows = np.zeros(2000, self.dtype)
        rows["seq"] = np.arange(2000)
        batch = FrameDecoder().feed(PacketBatch.build(1, rows).to_bytes())
        record = struct.Struct("<Ihh")
        if impl == "python":
            sub = batch[:1000]
            self.fn = lambda: [record.unpack_from(p.payload) for p in sub]
        elif impl == "fastpacket-view":
            sub = batch[:1000]
            self.fn = lambda: sub.payload_array(self.dtype)
        else:
            sub = batch[::2]
            self.fn = lambda: sub.payload_array(self.dtype)

    def time_payload_array(self, impl):
        self.fn()


class BuildFromArray:
    """1,000 packets from a structured array, or from a list of payloads."""

    params = ["list-of-bytes", "array"]
    param_names = ["payloads"]

    def setup(self, payloads):
        import numpy as np

        self.rows = np.zeros(1000, [("tick", "<u4"), ("x", "<i4"), ("y", "<i4")])
        self.payloads = [r.tobytes() for r in self.rows] if payloads == "list-of-bytes" else self.rows

    def time_build(self, payloads):
        from fastpacket import PacketBatch

        PacketBatch.build(3, self.payloads)
