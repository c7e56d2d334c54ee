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
