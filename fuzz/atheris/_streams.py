"""The stream oracle of fuzz_feed and fuzz_decoder_aggregate.

What a FrameDecoder must deliver for a stream comes from the reference
decoder (tests/reference.py), with aggregate frames opened by the reference
unpacker (tests/reference_aggregate.py). StreamRun feeds the stream in
chunks (as bytes-likes, or through a RingBuffer and feed_from) and checks
every feed against it: the packets it completes and no others, the
decoder's stream offset and held bytes, the first error raised by the very
feed that completes the bad header or frame (fail fast) with the packets
before it delivered, and the decoder refusing input until reset().
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

from _fuzzlib import AGGREGATE_TYPE, FuzzLayout, batch_rows, expect, fp, ref, ref_agg

Row = Tuple[Any, ...]

(DELIVER_BYTES, DELIVER_BYTEARRAY, DELIVER_MEMORYVIEW, DELIVER_NUMPY, DELIVER_RING,
 DELIVER_RING_FALLBACK) = range(6)
DELIVERIES = 6
#: Rings are used only for decoders whose packets fit a ring this large
#: (bytes): a ring smaller than a packet can never hold it whole.
MAX_RING_BYTES = 1 << 16
SMALL_RING_BYTES = 4096


class Expected:
    """The reference's account of a stream."""

    def __init__(self) -> None:
        self.rows: List[Row] = []          # packets delivered, in order, up to the first error
        self.ends: List[int] = []          # stream offset after each whole outer packet before it
        self.delivered: List[int] = [0]    # len(rows) once outer packet i is delivered (index i + 1)
        self.error: Optional[str] = None   # "protocol" | "aggregate"
        self.error_at = 0                  # offset of the bad header / bad aggregate frame
        self.error_end = 0                 # offset past which the decoder has seen all of it
        self.value = 0                     # protocol: announced size; its limit
        self.limit = 0
        self.check = ""                    # aggregate: the failed check
        self.tail = 0                      # bytes of an incomplete last packet
        self.frame_limit = 0               # the largest frame the decoder may hold


def expected_for(fl: FuzzLayout, stream: bytes, max_packet_size: int,
                 max_raw_size: Optional[int] = None) -> Expected:
    """The reference's account of `stream`; with `max_raw_size`, aggregate
    frames are opened (the decoder has an Aggregator): aggregate frames may
    then be as large as aggregate_frame_limit(), any other packet is held to
    max_packet_size at its header, and so is every packet inside an
    aggregate (wire format 2.1 and 3.3; no inflate budget here)."""
    e = Expected()
    if max_raw_size is None:
        outer, bad, tail = ref.decode_stream(fl.ref, stream, max_packet_size)
        limit = max_packet_size
    else:
        limit = aggregate_frame_limit(fl, max_packet_size, max_raw_size)
        outer, bad, tail = decode_outer(fl, stream, max_packet_size, limit)
    e.frame_limit = limit
    pos = 0
    for d in outer:
        row = tuple(d[n] for n in fl.names) + (d["payload"],)
        if max_raw_size is not None and fl.carries_aggregates and d["type"] == AGGREGATE_TYPE:
            try:
                inner = ref_agg.ref_unpack(fl.wire(row), max_raw_size=max_raw_size, layout=fl.ref,
                                           max_packet_size=max_packet_size)
            except ref_agg.RefAggregateError as err:
                e.error, e.check, e.error_at, e.error_end = "aggregate", err.check, pos, pos + d["size"]
                return e
            e.rows.extend(fl.row(p) for p in inner)
        else:
            e.rows.append(row)
        pos += d["size"]
        e.ends.append(pos)
        e.delivered.append(len(e.rows))
    if bad is not None:
        header = fl.ref.struct.unpack_from(stream, bad)
        e.error, e.error_at, e.error_end = "protocol", bad, bad + fl.hs
        e.value = fl.announced(header)
        e.limit = fl.hs if e.value < fl.hs else max_packet_size if e.value <= limit else limit
    else:
        e.tail = tail
    return e


def aggregate_frame_limit(fl: FuzzLayout, max_packet_size: int, max_raw_size: int) -> int:
    """The largest frame a decoder unwrapping aggregates takes: an aggregate
    frame of max_raw_size raw bytes (header + 8 + max_raw_size), within what
    the length field announces and fp.framing.MAX_PACKET_SIZE, and never
    less than max_packet_size."""
    by_raw = fl.hs + ref_agg.AGG_HEADER.size + max_raw_size
    return max(max_packet_size, min(by_raw, fl.ref.max_frame, fp.framing.MAX_PACKET_SIZE))


def decode_outer(fl: FuzzLayout, stream: bytes, max_packet_size: int,
                 frame_limit: int) -> Tuple[List[dict], Optional[int], int]:
    """ref.decode_stream() for a decoder that unwraps aggregates: a frame
    up to frame_limit is taken when it is an aggregate, any other only up
    to max_packet_size, each decided at its header."""
    packets, bad, tail = ref.decode_stream(fl.ref, stream, frame_limit)
    pos = 0
    for i, d in enumerate(packets):
        if d["size"] > max_packet_size and not (fl.carries_aggregates and d["type"] == AGGREGATE_TYPE):
            return packets[:i], pos, 0
        pos += d["size"]
    if bad is None and tail >= fl.hs:  # the incomplete tail's header is checked too
        values = dict(zip([n for n, _ in fl.ref.fields], fl.ref.struct.unpack_from(stream, pos)))
        if fl.ref.frame_size(values[fl.ref.length_field]) > max_packet_size and not (
                fl.carries_aggregates and values.get("type") == AGGREGATE_TYPE):
            return packets, pos, 0
    return packets, bad, tail


def as_buffer(chunk: bytes, kind: int) -> Any:
    if kind == DELIVER_BYTEARRAY:
        return bytearray(chunk)
    if kind == DELIVER_MEMORYVIEW:  # a slice at an offset of a larger buffer
        return memoryview(b"\xaa" * 3 + chunk + b"\xbb")[3:3 + len(chunk)]
    if kind == DELIVER_NUMPY:
        return np.frombuffer(chunk, dtype=np.uint8).copy()
    return chunk


class StreamRun:
    """Feeds one decoder and checks each feed against an Expected."""

    def __init__(self, dec: Any, fl: FuzzLayout, exp: Expected, max_packet_size: int) -> None:
        self.dec = dec
        self.fl = fl
        self.exp = exp
        self.mps = max_packet_size
        self.limit = exp.frame_limit
        self.rows: List[Row] = []
        self.fed = 0
        self.ring: Any = None
        self.raised: Optional[BaseException] = None

    # one decoder call, after `added` more stream bytes became available to it
    def step(self, added: int, call: Callable[[], Any]) -> bool:
        before = self.fed
        self.fed += added
        try:
            batch = call()
        except fp.ProtocolError as err:
            self._on_error(err, before)
            return False
        self._on_batch(batch_rows(batch, self.fl))
        return True

    def _on_batch(self, new: List[Row]) -> None:
        exp, dec = self.exp, self.dec
        expect(exp.error is None or self.fed < exp.error_end,
               f"no error raised although the bad {exp.error} data at {exp.error_at} is complete",
               self.fed, exp.error_end)
        k = bisect.bisect_right(exp.ends, self.fed)  # whole outer packets available so far
        want = exp.rows[len(self.rows):exp.delivered[k]]
        expect(new == want, "the feed delivered other packets than the reference", new, want)
        self.rows += new
        offset = exp.ends[k - 1] if k else 0
        held = dec.pending + (len(self.ring) if self.ring is not None else 0)
        expect(dec.stream_offset == offset, "stream_offset is not the end of the last whole packet",
               dec.stream_offset, offset)
        expect(offset + held == self.fed, "bytes lost or duplicated between feeds", offset, held, self.fed)
        expect(dec.pending <= self.limit, "the decoder holds more than its frame limit", dec.pending, self.limit)
        expect(not dec.failed, "failed without raising")

    def _on_error(self, err: BaseException, before: int) -> None:
        exp, dec = self.exp, self.dec
        self.raised = err
        expect(exp.error is not None, "error on a stream the reference accepts", err)
        expect(before < exp.error_end <= self.fed, "the error was not raised by the feed that completed the bad data",
               before, exp.error_end, self.fed, err)
        if exp.error == "aggregate":
            expect(type(err) is fp.AggregateError and err.check == exp.check,  # type: ignore[attr-defined]
                   "wrong aggregate error", err, exp.check)
            expect(getattr(err, "stream_offset", None) == exp.error_at, "wrong aggregate stream_offset",
                   getattr(err, "stream_offset", None), exp.error_at)
        else:
            expect(type(err) is fp.ProtocolError, "wrong error class", err)
            got = (err.offset, err.value, err.limit)  # type: ignore[attr-defined]
            expect(got == (exp.error_at, exp.value, exp.limit), "wrong error details (offset, value, limit)",
                   got, (exp.error_at, exp.value, exp.limit), err)
            expect(f"stream offset {exp.error_at}" in str(err), "the message does not name the offset", err)
            if self.ring is not None and self.ring.double_mapped:
                expect(len(self.ring) == self.fed - exp.error_at, "the bad bytes did not stay in the ring",
                       len(self.ring), self.fed - exp.error_at)
        new = batch_rows(err.batch, self.fl)  # type: ignore[attr-defined]
        expect(self.rows + new == exp.rows, "the packets before the error were not all delivered",
               self.rows + new, exp.rows)
        self.rows += new
        expect(dec.failed, "decoder.failed is False after an error")
        try:
            dec.feed(b"\0" * self.fl.hs)
        except fp.ProtocolError as again:
            expect(type(again) is fp.ProtocolError, "a failed decoder raised another class", again)
        else:
            expect(False, "a failed decoder took input before reset()")

    def finish(self, stream: bytes) -> None:
        """After the last chunk (or the error): the totals, then reset()."""
        exp, dec = self.exp, self.dec
        if self.raised is None:
            expect(exp.error is None, f"the reference's {exp.error} error was never raised", exp.error_at)
            expect(self.rows == exp.rows, "packets differ", self.rows, exp.rows)
            held = dec.pending + (len(self.ring) if self.ring is not None else 0)
            expect(held == exp.tail, "the incomplete tail is not what was held", held, exp.tail)
        dec.reset()
        expect(not dec.failed and dec.pending == 0 and dec.stream_offset == 0, "reset() left state behind")
        if exp.ends:  # a reset decoder decodes the stream's first packet again
            again = batch_rows(dec.feed(stream[:exp.ends[0]]), self.fl)
            expect(again == exp.rows[:exp.delivered[1]], "after reset() the first packet decodes differently",
                   again, exp.rows[:exp.delivered[1]])


def run_stream(dec: Any, fl: FuzzLayout, stream: bytes, chunks: Sequence[bytes], delivery: int,
               exp: Expected, max_packet_size: int) -> None:
    run = StreamRun(dec, fl, exp, max_packet_size)
    if delivery in (DELIVER_RING, DELIVER_RING_FALLBACK) and exp.frame_limit <= MAX_RING_BYTES:
        cap = SMALL_RING_BYTES if exp.frame_limit <= SMALL_RING_BYTES else MAX_RING_BYTES
        run.ring = fp.RingBuffer(cap, double_map=None if delivery == DELIVER_RING else False)
        _through_ring(run, chunks)
    else:
        kind = delivery if delivery < DELIVER_RING else DELIVER_BYTES
        for chunk in chunks:
            buf = as_buffer(chunk, kind)
            if not run.step(len(chunk), lambda b=buf: dec.feed(b)):
                break
    run.finish(stream)


def _through_ring(run: StreamRun, chunks: Sequence[bytes]) -> None:
    ring, dec = run.ring, run.dec
    for chunk in chunks:
        rest = memoryview(chunk)
        idle = 0
        while True:
            n = ring.write(rest)
            rest = rest[n:]
            if not run.step(n, lambda: dec.feed_from(ring)):
                return
            if not rest:
                break
            idle = idle + 1 if n == 0 else 0
            # a full ring at least a packet large holds a whole packet or a bad header
            expect(idle < 2, "the ring is full and feed_from() takes nothing", len(ring), ring.capacity)
