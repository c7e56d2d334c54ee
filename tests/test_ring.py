"""RingBuffer: wrap-around, the bytearray model, views, two threads,
FrameDecoder.feed_from. Every test runs on the double-mapped ring (where the
platform has it) and on the forced portable fallback."""

from __future__ import annotations

import mmap
import random
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpacket as fp
from tests.reference_buffers import RingModel, encode_game

PAGE = mmap.PAGESIZE
HAS_DOUBLE_MAP = fp.RingBuffer(1).double_mapped


@pytest.fixture(params=["double-map", "fallback"])
def make_ring(request):
    """A RingBuffer factory: double-mapped, or forced to the fallback."""
    if request.param == "double-map":
        if not HAS_DOUBLE_MAP:
            pytest.skip("no double map on this platform")
        return lambda cap: fp.RingBuffer(cap, double_map=True)
    return lambda cap: fp.RingBuffer(cap, double_map=False)


def drain_views(ring: fp.RingBuffer) -> bytes:
    """Everything readable, through readable()/consume() (two views at most)."""
    out = b""
    while len(ring):
        with ring.readable() as mv:
            out += bytes(mv)
            n = len(mv)
        ring.consume(n)
    return out


# -- construction -------------------------------------------------------------

@pytest.mark.parametrize("asked, expected", [(1, PAGE), (PAGE, PAGE), (PAGE + 1, 2 * PAGE), (5 * PAGE, 8 * PAGE)])
def test_capacity_is_a_power_of_two_and_at_least_a_page(make_ring, asked, expected):
    ring = make_ring(asked)
    assert ring.capacity == expected
    assert ring.free == expected and len(ring) == 0


@pytest.mark.parametrize("bad", [0, -1])
def test_capacity_must_be_positive(bad):
    with pytest.raises(ValueError, match=r"capacity must be an int in \[1, "):
        fp.RingBuffer(bad)


def test_double_map_flag():
    assert not fp.RingBuffer(PAGE, double_map=False).double_mapped
    assert fp.RingBuffer(PAGE).double_mapped == HAS_DOUBLE_MAP
    if sys.platform.startswith("linux"):
        assert HAS_DOUBLE_MAP


# -- wrap-around --------------------------------------------------------------

def fill_views(ring: fp.RingBuffer, data: bytes) -> None:
    """Write `data` through writable()/commit() (two views at most)."""
    pos = 0
    while pos < len(data):
        with ring.writable() as mv:
            n = min(len(mv), len(data) - pos)
            assert n > 0
            mv[:n] = data[pos:pos + n]
        ring.commit(n)
        pos += n


def advance(ring: fp.RingBuffer, n: int) -> None:
    """Move head and tail forward by n bytes (the ring empty before and after)."""
    while n:
        k = ring.write(b"\xee" * min(n, ring.capacity))
        assert ring.read() == b"\xee" * k
        n -= k


def test_wrap_around_at_every_offset(make_ring):
    ring = make_ring(PAGE)
    cap = ring.capacity
    chunk = bytes(range(256)) * 2  # crosses the wrap point for offsets above cap - 512
    for offset in range(cap):
        # head and tail are at `offset` (the ring has moved offset bytes mod cap)
        before_wrap = cap - offset
        assert ring.write(chunk) == len(chunk)
        assert len(ring) == len(chunk) and ring.free == cap - len(chunk)
        assert ring.peek() == chunk
        with ring.readable() as mv:
            assert bytes(mv) == (chunk if ring.double_mapped else chunk[:before_wrap])
        assert drain_views(ring) == chunk
        # the same through writable()/commit() and read(), now at offset + 512
        fill_views(ring, chunk)
        assert ring.read(100) + ring.read() == chunk
        assert len(ring) == 0 and ring.free == cap
        advance(ring, (cap - 2 * len(chunk) + 1) % cap)  # net: one byte per iteration


def test_writable_spans_the_free_space(make_ring):
    ring = make_ring(PAGE)
    cap = ring.capacity
    advance(ring, cap - 10)
    ring.write(b"abc")
    with ring.writable() as mv:
        assert len(mv) == (cap - 3 if ring.double_mapped else 7)
        assert not mv.readonly
    ring.write(b"z" * (cap - 3))
    assert ring.free == 0
    with ring.writable() as mv:
        assert len(mv) == 0
    assert ring.write(b"more") == 0
    assert ring.read() == b"abc" + b"z" * (cap - 3)


# -- the bytearray model ------------------------------------------------------

ops = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.binary(max_size=3 * PAGE // 2)),
        st.tuples(st.just("fill"), st.binary(max_size=3 * PAGE // 2)),
        st.tuples(st.just("read"), st.integers(-1, 3 * PAGE // 2)),
        st.tuples(st.just("peek"), st.integers(-1, 3 * PAGE // 2)),
        st.tuples(st.just("consume"), st.integers(0, 3 * PAGE // 2)),
    ),
    max_size=40,
)


@pytest.mark.parametrize("double_map", [None, False])
@settings(max_examples=150)
@given(ops=ops)
def test_agrees_with_a_bytearray_fifo(double_map, ops):
    ring = fp.RingBuffer(PAGE, double_map=double_map)
    model = RingModel(ring.capacity)
    for op, arg in ops:
        if op == "write":
            assert ring.write(arg) == model.write(arg)
        elif op == "fill":
            take = arg[:ring.free]
            fill_views(ring, take)
            model.write(take)
        elif op == "read":
            assert ring.read(arg) == model.read(arg)
        elif op == "peek":
            assert ring.peek(arg) == model.peek(arg)
        else:
            n = min(arg, len(ring))
            with ring.readable() as mv:
                assert bytes(mv[:n]) == model.peek(n)[:len(mv)]
            ring.consume(n)
            model.read(n)
        assert len(ring) == len(model.data)
        assert ring.free == model.free


def test_write_accepts_any_contiguous_buffer(make_ring, as_buffer):
    ring = make_ring(PAGE)
    assert ring.write(as_buffer(b"hello world")) == 11
    assert ring.read() == b"hello world"


def test_write_rejects_non_buffers_and_non_contiguous(make_ring):
    ring = make_ring(PAGE)
    with pytest.raises(TypeError, match="bytes-like"):
        ring.write("text")
    with pytest.raises(BufferError, match="contiguous"):
        ring.write(np.arange(10, dtype=np.uint8)[::2])


def test_commit_and_consume_check_their_bounds(make_ring):
    ring = make_ring(PAGE)
    with pytest.raises(ValueError, match=r"n \(bytes to commit\) must be an int in \[0, "):
        ring.commit(-1)
    with pytest.raises(ValueError, match=rf"bytes to commit.*\[0, {ring.capacity}\]"):
        ring.commit(ring.capacity + 1)
    ring.write(b"abc")
    with pytest.raises(ValueError, match=r"bytes to consume.*\[0, 3\]"):
        ring.consume(4)
    ring.consume(3)
    assert len(ring) == 0


# -- views --------------------------------------------------------------------

def test_readable_view_is_read_only(make_ring):
    ring = make_ring(PAGE)
    ring.write(b"abc")
    mv = ring.readable()
    assert mv.readonly
    with pytest.raises(TypeError):
        mv[0] = 1
    with pytest.raises(ValueError):  # numpy asked for a writable buffer and was refused
        np.frombuffer(mv.obj, dtype=np.uint8).setflags(write=True)


def test_a_consumed_view_is_never_overwritten(make_ring):
    ring = make_ring(PAGE)
    cap = ring.capacity
    ring.write(b"A" * 100)
    view = ring.readable()
    ring.consume(100)  # allowed: the view pins its bytes
    assert len(ring) == 0
    assert ring.free == cap - 100  # the pinned bytes are not free yet
    assert ring.write(b"B" * cap) == cap - 100
    assert bytes(view) == b"A" * 100
    assert ring.read() == b"B" * (cap - 100)
    view.release()
    assert ring.free == cap
    assert ring.write(b"C" * cap) == cap


def test_a_sliced_view_pins_until_the_last_slice_goes(make_ring):
    ring = make_ring(PAGE)
    ring.write(b"xyz" * 10)
    part = ring.readable()[3:6]
    ring.consume(30)
    assert ring._pins == (1, 0)
    assert ring.free == ring.capacity - 30
    assert bytes(part) == b"xyz"
    del part
    assert ring._pins == (0, 0) and ring.free == ring.capacity


def test_writable_view_survives_commit(make_ring):
    # asyncio's BufferedProtocol: get_buffer() -> view, recv_into(view),
    # buffer_updated(n) -> commit(n) while the view is still referenced.
    ring = make_ring(PAGE)
    cap = ring.capacity
    buf = ring.writable()
    buf[:5] = b"hello"
    ring.commit(5)
    assert ring.read() == b"hello"
    # the producer never writes a lap past a live writable view
    assert ring.free == cap - 5
    assert ring.write(b"w" * (2 * cap)) == cap - 5
    assert ring.read(5) == b"wwwww"
    assert ring.free == 0  # more would wrap onto the view's first bytes
    del buf
    assert ring.free == 10


def test_too_many_live_views(make_ring):
    ring = make_ring(PAGE)
    ring.write(b"abc")
    views = [ring.readable() for _ in range(fp.ring.MAX_LIVE_VIEWS)]
    with pytest.raises(BufferError, match="views"):
        ring.readable()
    views.clear()
    ring.readable().release()


# -- two threads --------------------------------------------------------------

STREAM_WORDS = (64 << 20) // 8  # 64 MiB of little-endian u64 counters
IDLE_WAIT_S = 50e-6  # a side that finds the ring full/empty sleeps this long


@pytest.mark.parametrize("views", [False, True], ids=["read-write", "views"])
def test_two_threads_move_64_mib_without_loss(make_ring, views):
    ring = make_ring(64 << 10)
    stream = np.arange(STREAM_WORDS, dtype="<u8").tobytes()
    src = memoryview(stream)
    total = len(stream)
    errors = []

    def produce():
        rng = random.Random(1)
        pos = 0
        while pos < total:
            k = min(rng.randint(1, 48 << 10), total - pos)
            if views:
                with ring.writable() as mv:
                    k = min(k, len(mv))
                    mv[:k] = src[pos:pos + k]
                ring.commit(k)
            else:
                k = ring.write(src[pos:pos + k])
            if k == 0:
                time.sleep(IDLE_WAIT_S)  # full: let the consumer have the GIL
            pos += k

    def consume():
        rng = random.Random(2)
        pos = 0
        crc = 0
        while pos < total:
            if views:
                with ring.readable() as mv:
                    got = bytes(mv[:rng.randint(1, 48 << 10)])
                ring.consume(len(got))
            else:
                got = ring.read(rng.randint(1, 48 << 10))
            if not got:
                time.sleep(IDLE_WAIT_S)  # empty: let the producer have the GIL
                continue
            if got != src[pos:pos + len(got)]:
                errors.append(f"mismatch at stream offset {pos}")
                return
            crc = zlib.crc32(got, crc)
            pos += len(got)
        if crc != zlib.crc32(stream):
            errors.append("checksum differs")

    threads = [threading.Thread(target=produce), threading.Thread(target=consume)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(ring) == 0


# -- FrameDecoder.feed_from -----------------------------------------------------

def make_packets(n: int, seed: int = 0) -> bytes:
    rng = random.Random(seed)
    return b"".join(encode_game(rng.randrange(100), rng.randbytes(rng.randint(0, 300)), i, rng.randrange(1000))
                    for i in range(n))


def test_feed_from_leaves_the_partial_tail_in_the_ring(make_ring):
    ring = make_ring(PAGE)
    a, b = encode_game(1, b"first"), encode_game(2, b"second")
    ring.write(a + b[:7])
    dec = fp.FrameDecoder()
    batch = dec.feed_from(ring)
    assert [p.to_bytes() for p in batch] == [a]
    assert len(ring) == 7 and dec.pending == 0
    ring.write(b[7:])
    batch = dec.feed_from(ring)
    assert [bytes(p.payload) for p in batch] == [b"second"]
    assert len(ring) == 0 and dec.stream_offset == len(a) + len(b)


@settings(max_examples=40)
@given(seed=st.integers(0, 1 << 30), packets=st.integers(1, 120))
def test_feed_from_agrees_with_feed(seed, packets):
    stream = make_packets(packets, seed)
    rng = random.Random(seed)
    for double_map in (None, False):
        ring = fp.RingBuffer(PAGE, double_map=double_map)
        dec = fp.FrameDecoder()
        got = []
        pos = 0
        while pos < len(stream) or len(ring):
            pos += ring.write(stream[pos:pos + rng.randint(1, PAGE)])
            batch = dec.feed_from(ring)
            got.extend(p.to_bytes() for p in batch)
            if pos == len(stream) and not batch and len(ring):
                break
        assert b"".join(got) == stream
        assert len(ring) == 0 and dec.pending == 0


def test_feed_from_after_feed_completes_the_pending_packet(make_ring):
    ring = make_ring(PAGE)
    a = encode_game(3, b"x" * 50)
    dec = fp.FrameDecoder()
    assert len(dec.feed(a[:20])) == 0
    ring.write(a[20:40])
    assert len(dec.feed_from(ring)) == 0
    assert len(ring) == 0 and dec.pending == 40  # the decoder took them
    ring.write(a[40:] + a)
    assert [p.to_bytes() for p in dec.feed_from(ring)] == [a, a]


def test_feed_from_a_bad_header(make_ring):
    ring = make_ring(PAGE)
    good = encode_game(1, b"ok")
    bad = struct_pack_size(5) + b"\x00" * 10
    ring.write(good + bad)
    dec = fp.FrameDecoder()
    with pytest.raises(fp.ProtocolError, match="below the header size") as info:
        dec.feed_from(ring)
    assert info.value.offset == len(good)
    assert [p.to_bytes() for p in info.value.batch] == [good]
    assert ring.peek() == bad  # the good packet was consumed, the bad bytes stay
    with pytest.raises(fp.ProtocolError, match="reset"):
        dec.feed_from(ring)
    dec.reset()
    ring.read()
    ring.write(good)
    assert len(dec.feed_from(ring)) == 1


def test_feed_from_needs_a_ring():
    with pytest.raises(TypeError, match="RingBuffer"):
        fp.FrameDecoder().feed_from(b"abc")


def struct_pack_size(size: int) -> bytes:
    return size.to_bytes(2, "little")


@pytest.mark.parametrize("before_wrap", [5, 12, 30, 42, 60])
def test_feed_from_across_the_wrap_point(make_ring, before_wrap):
    ring = make_ring(PAGE)
    advance(ring, ring.capacity - before_wrap)
    packets = [encode_game(i, bytes([i]) * 18, i, 7) for i in range(4)]  # 30 bytes each
    ring.write(b"".join(packets) + packets[0][:9])
    dec = fp.FrameDecoder()
    batch = dec.feed_from(ring)
    assert [p.to_bytes() for p in batch] == packets
    assert [p.seq for p in batch] == [0, 1, 2, 3]
    assert len(ring) + dec.pending == 9
    ring.write(packets[0][9:])
    assert [p.to_bytes() for p in dec.feed_from(ring)] == [packets[0]]
    assert len(ring) == 0 and dec.pending == 0
