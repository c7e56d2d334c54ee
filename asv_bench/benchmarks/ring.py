"""RingBuffer beside a bytearray FIFO and one numpy copy of the same bytes,
and FrameDecoder.feed_from(ring) beside feed(bytes)."""

import numpy as np

from fastpacket import FrameDecoder, RingBuffer
from fastpacket.cli.bench.framing import make_stream
from fastpacket.cli.bench.ring import numpy_copy, python_fifo, ring_write_consume


class WriteConsume:
    """64 KiB written then consumed through a zero-copy view, 100 times."""

    params = [["bytearray-fifo", "ring", "ring-fallback", "numpy-copy"]]
    param_names = ["impl"]

    def setup(self, impl):
        self.data = np.random.default_rng(1).integers(0, 256, 64 << 10, dtype=np.uint8).tobytes()
        if impl == "bytearray-fifo":
            self.fn = lambda: python_fifo(100, self.data)
        elif impl.startswith("ring"):
            ring = RingBuffer(64 << 10, double_map=False if impl == "ring-fallback" else None)
            self.fn = lambda: ring_write_consume(100, self.data, ring)
        else:
            src = np.frombuffer(self.data, dtype=np.uint8)
            dst = np.empty_like(src)
            self.fn = lambda: numpy_copy(100, src, dst)

    def time_write_consume(self, impl):
        self.fn()


class DecodeFromRing:
    """A 1 MiB stream of small packets through a 64 KiB ring in 16 KiB reads."""

    params = [["feed-bytes", "feed_from-ring"]]
    param_names = ["impl"]

    def setup(self, impl):
        stream, self.count = make_stream(1 << 20)
        self.chunks = [stream[i:i + (16 << 10)] for i in range(0, len(stream), 16 << 10)]

    def time_decode(self, impl):
        dec = FrameDecoder()
        if impl == "feed-bytes":
            for chunk in self.chunks:
                dec.feed(chunk)
        else:
            ring = RingBuffer(64 << 10)
            for chunk in self.chunks:
                ring.write(chunk)
                dec.feed_from(ring)
