"""Aggregation: Aggregator.pack/unpack beside bare lz4.block / zlib on the
same bytes (the movement and seed batches of fastpacket bench aggregate)."""

import zlib

import lz4.block

from fastpacket import Aggregator, FrameDecoder
from fastpacket.cli.bench.aggregate import movement_batches, seed_batch

BATCHES = {"movement": lambda: movement_batches(1)[0], "seed": seed_batch}


class Pack:
    """One batch into one frame: Aggregator.pack vs the bare codec."""

    params = [["movement", "seed"], ["lz4", "zlib"], ["bare", "fastpacket"]]
    param_names = ["batch", "codec", "impl"]

    def setup(self, batch, codec, impl):
        self.batch = BATCHES[batch]()
        self.body = self.batch.to_bytes()
        agg = Aggregator(codec, threshold=0, min_saving=0.0)
        if impl == "fastpacket":
            self.fn = lambda: agg.pack(self.batch)
        elif codec == "lz4":
            self.fn = lambda: lz4.block.compress(self.body, store_size=False)
        else:
            self.fn = lambda: zlib.compress(self.body, 6)

    def time_pack(self, batch, codec, impl):
        self.fn()


class Unpack:
    """One frame back into a batch: Aggregator.unpack vs the bare codec."""

    params = [["movement", "seed"], ["lz4", "zlib"], ["bare", "fastpacket"]]
    param_names = ["batch", "codec", "impl"]

    def setup(self, batch, codec, impl):
        b = BATCHES[batch]()
        body = b.to_bytes()
        agg = Aggregator(codec, threshold=0, min_saving=0.0)
        frame = agg.pack(b)
        wire = frame[20:]
        n = len(body)
        if impl == "fastpacket":
            self.fn = lambda: agg.unpack(frame)
        elif codec == "lz4":
            self.fn = lambda: lz4.block.decompress(wire, uncompressed_size=n)
        else:
            self.fn = lambda: zlib.decompress(wire)

    def time_unpack(self, batch, codec, impl):
        self.fn()


class DecodeAggregatedStream:
    """A stream of 200 lz4 movement frames through FrameDecoder(aggregator=)."""

    def setup(self):
        agg = Aggregator("lz4", threshold=0, min_saving=0.0)
        self.stream = b"".join(agg.pack(b) for b in movement_batches(200))
        self.dec = FrameDecoder(aggregator=agg)

    def time_feed(self):
        self.dec.feed(self.stream)


class PackThreads:
    """Four threads packing at once: the GIL is released while compressing."""

    params = [[1, 4]]
    param_names = ["threads"]

    def setup(self, threads):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(threads)
        self.threads = threads
        self.agg = Aggregator("zlib", threshold=0, min_saving=0.0)
        self.batches = movement_batches(8 * threads)

    def teardown(self, threads):
        self.pool.shutdown()

    def time_pack_parallel(self, threads):
        list(self.pool.map(self.agg.pack, self.batches))
