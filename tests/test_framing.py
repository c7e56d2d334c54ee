"""FrameDecoder against the reference model: random packets, random
chunkings, three layouts, every input buffer type, malformed streams."""

from __future__ import annotations

import gc
import subprocess
import sys
import random
import struct

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastpacket as fp
from tests import reference as ref

LAYOUTS = {
    "GAME": (ref.GAME, fp.GAME),
    "BIG_U32": (ref.BIG_U32, fp.HeaderLayout([("len", "u32"), ("type", "u16"), ("seq", "u32")], "len",
                                             length_includes_header=False, byteorder="big")),
    "TINY_U8": (ref.TINY_U8, fp.HeaderLayout([("type", "u8"), ("len", "u8")], "len",
                                             length_includes_header=False)),
}


def decoder_max(rl: ref.RefLayout) -> int:
    """The largest max_packet_size a decoder of `rl` takes: what its length
    field announces, at most fp.framing.MAX_PACKET_SIZE (sizes are u32)."""
    return min(rl.max_frame, fp.framing.MAX_PACKET_SIZE)


def packets_for(rl: ref.RefLayout, max_payload: int):
    t_max = rl.field_max("type")
    return st.lists(
        st.tuples(
            st.integers(0, t_max),
            st.integers(0, 2**32 - 1),
            st.integers(0, 2**32 - 1),
            st.binary(max_size=min(max_payload, rl.max_frame - rl.size)),
        ),
        max_size=40,
    )


def fields_of(rl: ref.RefLayout, packet_tuple):
    t, s, pid, payload = packet_tuple
    names = {n for n, _ in rl.fields}
    return (t, s if "seq" in names else None, pid if "player_id" in names else None, payload)


def decode_all(dec: fp.FrameDecoder, chunks):
    out = []
    for c in chunks:
        b = dec.feed(c)
        # a role the layout lacks reads as None here (the Packet raises AttributeError)
        out.extend((getattr(p, "type", None), getattr(p, "seq", None), getattr(p, "player_id", None),
                    bytes(p.payload)) for p in b)
    return out


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(data=st.data())
def test_differential_random_chunking(name, data):
    rl, layout = LAYOUTS[name]
    pkts = data.draw(packets_for(rl, 300))
    stream = ref.encode_all(rl, pkts)
    # every packet encodes the same way natively
    assert b"".join(fp.encode(t, p, seq=s, player_id=pid, layout=layout) if layout is fp.GAME else
                    fp.encode(t, p, seq=s, layout=layout) if "seq" in layout.field_names else
                    fp.encode(t, p, layout=layout) for t, s, pid, p in pkts) == stream
    cuts = data.draw(st.lists(st.integers(0, max(len(stream), 1)), max_size=30))
    dec = fp.FrameDecoder(layout, max_packet_size=decoder_max(rl))
    got = decode_all(dec, ref.chunk(stream, cuts))
    expected, bad, tail = ref.decode_stream(rl, stream, decoder_max(rl))
    assert bad is None and tail == 0
    assert got == [fields_of(rl, p) for p in pkts]
    assert [p["payload"] for p in expected] == [p[3] for p in pkts]
    assert dec.pending == 0 and dec.stream_offset == len(stream)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@pytest.mark.parametrize("chunk_size", [1, 2, 3, 7, 13, 64, 4096, None])
def test_fixed_chunk_sizes(name, chunk_size):
    rl, layout = LAYOUTS[name]
    rng = random.Random(chunk_size or 0)
    pkts = [(rng.randrange(rl.field_max("type") + 1), i, 1000 + i, rng.randbytes(rng.randrange(0, 200)))
            for i in range(200)]
    stream = ref.encode_all(rl, pkts)
    size = chunk_size or len(stream)
    chunks = [stream[i:i + size] for i in range(0, len(stream), size)]
    dec = fp.FrameDecoder(layout, max_packet_size=decoder_max(rl))
    assert decode_all(dec, chunks) == [fields_of(rl, p) for p in pkts]


def test_columns_match_packets():
    rng = random.Random(5)
    pkts = [(rng.randrange(20), rng.randrange(2**32), rng.randrange(1000), rng.randbytes(rng.randrange(50)))
            for _ in range(500)]
    stream = ref.encode_all(ref.GAME, pkts)
    batch = fp.FrameDecoder().feed(stream)
    assert len(batch) == 500
    assert batch.types.tolist() == [p[0] for p in pkts]
    assert batch.seqs.tolist() == [p[1] for p in pkts]
    assert batch.player_ids.tolist() == [p[2] for p in pkts]
    assert batch.sizes.tolist() == [12 + len(p[3]) for p in pkts]
    assert batch.sizes.dtype == np.uint32
    offsets = np.concatenate([[0], np.cumsum(batch.sizes)[:-1]])
    assert batch.offsets.tolist() == offsets.tolist()
    headers = batch.headers
    assert headers.dtype == fp.GAME.dtype
    assert headers["type"].tolist() == [p[0] for p in pkts]
    assert [bytes(batch.payload(i)) for i in range(len(batch))] == [p[3] for p in pkts]
    for col in (batch.types, batch.seqs, batch.sizes, headers):
        assert not col.flags.writeable
    assert batch.to_bytes() == stream


def test_big_endian_columns_read_natively():
    rl, layout = LAYOUTS["BIG_U32"]
    stream = ref.encode_all(rl, [(0x1234, 0x01020304, 0, b"ab"), (7, 9, 0, b"")])
    batch = fp.FrameDecoder(layout).feed(stream)
    assert batch.types.tolist() == [0x1234, 7]
    assert batch.seqs.tolist() == [0x01020304, 9]
    assert batch.sizes.tolist() == [12, 10]
    with pytest.raises(AttributeError, match="no player_id field"):
        batch.player_ids
    assert batch.field("len").tolist() == [2, 0]


def test_input_buffer_types(as_buffer):
    stream = b"".join(fp.encode(i % 7, bytes([i]) * i, seq=i) for i in range(50))
    dec = fp.FrameDecoder()
    half = len(stream) // 2 + 3
    got = list(dec.feed(as_buffer(stream[:half]))) + list(dec.feed(as_buffer(stream[half:])))
    assert [p.seq for p in got] == list(range(50))
    assert [bytes(p.payload) for p in got] == [bytes([i]) * i for i in range(50)]


def test_non_contiguous_buffers_are_refused():
    dec = fp.FrameDecoder()
    with pytest.raises(BufferError, match="C-contiguous"):
        dec.feed(memoryview(bytes(100))[::2])
    with pytest.raises(BufferError, match="C-contiguous"):
        dec.feed(np.zeros(100, dtype=np.uint8)[::3])
    with pytest.raises(TypeError, match="bytes-like"):
        dec.feed("text")
    with pytest.raises(TypeError, match="bytes-like"):
        dec.feed(12)
    assert not dec.failed  # argument errors do not poison the stream


# -- malformed streams --------------------------------------------------------


def test_size_below_header_raises_with_offset_and_delivers_before():
    good = fp.encode(1, b"abc") + fp.encode(2, b"")
    bad = (5).to_bytes(2, "little") + bytes(10)
    dec = fp.FrameDecoder()
    with pytest.raises(fp.ProtocolError) as info:
        dec.feed(good + bad + fp.encode(3, b"never"))
    e = info.value
    assert e.offset == len(good) and e.value == 5 and e.limit == 12
    assert "packet size 5 at stream offset 27 is below the header size 12" in str(e)
    assert [p.type for p in e.batch] == [1, 2]
    assert dec.failed
    with pytest.raises(fp.ProtocolError, match="call reset"):
        dec.feed(fp.encode(1, b""))
    dec.reset()
    assert not dec.failed and dec.pending == 0
    assert [p.type for p in dec.feed(fp.encode(9, b"ok"))] == [9]


def test_size_above_max_fails_fast_on_the_header():
    dec = fp.FrameDecoder(max_packet_size=1000)
    first = fp.encode(1, b"x" * 10)
    header = (1001).to_bytes(2, "little") + (2).to_bytes(2, "little") + bytes(8)
    assert len(dec.feed(first + header[:5])) == 1  # incomplete header: nothing to judge yet
    with pytest.raises(fp.ProtocolError) as info:
        dec.feed(header[5:])  # the header completes: rejected before any payload arrives
    assert info.value.offset == len(first) and info.value.value == 1001 and info.value.limit == 1000
    assert "exceeds max_packet_size 1000" in str(info.value)
    assert len(info.value.batch) == 0


def test_packet_exactly_at_max_is_accepted():
    dec = fp.FrameDecoder(max_packet_size=100)
    (p,) = dec.feed(fp.encode(1, bytes(88)))
    assert p.size == 100
    with pytest.raises(fp.ProtocolError):
        dec.feed(fp.encode(1, bytes(89)))


def test_offsets_count_across_feeds():
    dec = fp.FrameDecoder()
    stream = fp.encode(1, b"a" * 20) * 3
    for i in range(0, len(stream), 7):
        dec.feed(stream[i:i + 7])
    with pytest.raises(fp.ProtocolError) as info:
        dec.feed(b"\x00\x00" + bytes(10))
    assert info.value.offset == len(stream)


def test_huge_u64_length_is_rejected():
    layout = fp.HeaderLayout([("len", "u64"), ("type", "u8")], "len", length_includes_header=False)
    dec = fp.FrameDecoder(layout, max_packet_size=1 << 20)
    with pytest.raises(fp.ProtocolError, match="exceeds max_packet_size"):
        dec.feed(b"\xff" * 9)


def test_length_adjustment():
    # the length counts the payload plus a 2-byte trailer that is part of the frame
    layout = fp.HeaderLayout([("len", "u16"), ("type", "u16")], "len", length_includes_header=False,
                             length_adjustment=2)
    frame = (3).to_bytes(2, "little") + (1).to_bytes(2, "little") + b"abc" + b"\r\n"
    (p,) = fp.FrameDecoder(layout).feed(frame)
    assert bytes(p.payload) == b"abc\r\n" and p.size == 9
    assert fp.encode(1, b"abc\r\n", layout=layout)[:2] == (3).to_bytes(2, "little")


def test_max_packet_size_must_hold_a_header():
    with pytest.raises(ValueError, match=r"max_packet_size must be an int in \[12, 4294967295\], got 11"):
        fp.FrameDecoder(max_packet_size=11)


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(garbage=st.binary(max_size=3000), cuts=st.lists(st.integers(0, 3000), max_size=10))
def test_random_garbage_yields_packets_or_protocol_error(name, garbage, cuts):
    rl, layout = LAYOUTS[name]
    max_size = min(rl.max_frame, 2000)
    dec = fp.FrameDecoder(layout, max_packet_size=max_size)
    got = []
    error = None
    for c in ref.chunk(garbage, cuts):
        try:
            got.extend(bytes(p.payload) for p in dec.feed(c))
        except fp.ProtocolError as e:
            got.extend(bytes(p.payload) for p in e.batch)
            error = e
            break
    expected, bad, tail = ref.decode_stream(rl, garbage, max_size)
    assert got == [p["payload"] for p in expected]
    if bad is None:
        assert error is None and dec.pending == tail
    else:
        assert error is not None and error.offset == bad
    assert dec.pending <= max_size


# -- batch lifetime -------------------------------------------------------------


def test_views_survive_feeding_and_dropping_the_input():
    dec = fp.FrameDecoder()
    buf = bytearray(fp.encode(1, b"first-payload") + fp.encode(2, b"second")[:5])
    batch = dec.feed(buf)
    payload = batch[0].payload
    types = batch.types
    buf[:] = b"\xee" * len(buf)  # the caller reuses its buffer
    del buf
    rest = fp.encode(2, b"second")[5:] + fp.encode(3, b"third")
    batch2 = dec.feed(rest)
    dec.reset()
    del dec, batch
    gc.collect()
    assert bytes(payload) == b"first-payload"
    assert types.tolist() == [1]
    assert [bytes(p.payload) for p in batch2] == [b"second", b"third"]


def test_packet_keeps_batch_alive():
    data = bytearray(fp.encode(4, b"keep me"))
    packet = fp.FrameDecoder().feed(data)[0]
    data[:] = bytes(len(data))
    gc.collect()
    assert packet.type == 4 and bytes(packet.payload) == b"keep me"


def test_zero_copy_bytes_input_is_safe():
    data = fp.encode(1, b"abc") + fp.encode(2, b"de")
    batch = fp.FrameDecoder().feed(data)
    del data
    gc.collect()
    assert [bytes(p.payload) for p in batch] == [b"abc", b"de"]


# -- allocation failure ---------------------------------------------------------

_ALLOC_FAILURE_SCRIPT = r"""
import resource, sys
import fastpacket as fp

head = fp.encode(1, b"the packet left pending")
body = fp.encode(2, bytes(20)) * 2_000_000          # 64 MB of whole packets
tail = fp.encode(3, b"incomplete")[:7]
chunk = head[5:] + body + tail

dec = fp.FrameDecoder()
assert len(dec.feed(head[:5])) == 0 and dec.pending == 5

with open("/proc/self/status") as f:
    vm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmSize:"))
soft, hard = resource.getrlimit(resource.RLIMIT_AS)
# room for the interpreter's small allocations, not for the batch's 112 MB
resource.setrlimit(resource.RLIMIT_AS, ((vm_kib << 10) + (16 << 20), hard))
try:
    dec.feed(chunk)
except MemoryError:
    pass
else:
    sys.exit("the feed did not run out of memory: the test proves nothing")
finally:
    resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

# the failed feed took nothing: the decoder is where it was before it
print("pending", dec.pending, "offset", dec.stream_offset, flush=True)
assert dec.pending == 5 and dec.stream_offset == 0 and not dec.failed
batch = dec.feed(chunk)                                   # the same bytes again
assert len(batch) == 2_000_001, len(batch)
assert batch[0].type == 1 and bytes(batch[0].payload) == b"the packet left pending"
assert batch[1].type == 2 and batch[len(batch) - 1].type == 2
assert dec.pending == 7
print("ok")
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_memory_error_mid_feed_leaves_the_decoder_in_step():
    # A feed that cannot allocate its batch must not have consumed any input:
    # the caller may feed the same bytes again (plan is pure, emit commits).
    proc = subprocess.run([sys.executable, "-c", _ALLOC_FAILURE_SCRIPT], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip().endswith("ok")


# -- found by the fuzzers (the fuzz branch's tests/test_fuzz_regressions.py) ----

U64_LENGTH = fp.HeaderLayout([("len", "u64"), ("type", "u16")], "len")


@pytest.mark.parametrize("max_packet_size", [2**32, 2**62, 2**63 - 1, 2**63, 2**64])
def test_a_max_packet_size_above_u32_is_refused(max_packet_size):
    """A u64 length of 2**63 or more saturated at 2**62 and was then taken
    for an incomplete packet below a huge max_packet_size (unbounded
    buffering); batch sizes are u32, so such limits are refused."""
    with pytest.raises(ValueError, match=r"max_packet_size must be an int in \[10, 4294967295\]"):
        fp.FrameDecoder(U64_LENGTH, max_packet_size=max_packet_size)


@pytest.mark.parametrize("announced", [2**34, 2**62 - 1, 2**62, 2**63, 2**64 - 1])
@pytest.mark.parametrize("adjustment", [-2**32, 0, 2**32])
def test_a_huge_u64_length_is_too_large_whatever_the_adjustment(announced, adjustment):
    layout = fp.HeaderLayout([("len", "u64"), ("type", "u16")], "len", length_adjustment=adjustment)
    dec = fp.FrameDecoder(layout, max_packet_size=fp.framing.MAX_PACKET_SIZE)
    with pytest.raises(fp.ProtocolError, match="exceeds max_packet_size 4294967295"):
        dec.feed(struct.pack("<QH", announced, 1) + b"x" * 100)
    assert dec.pending == 0  # refused as soon as the header arrived: nothing buffered


@pytest.mark.parametrize("count", [0, 1, 2])
def test_by_type_of_a_batch_with_a_u64_type_field(count):
    """by_type() took a writable typed memoryview of the read-only types
    column, which numpy hands back uncopied when it already is contiguous
    uint64: a u64 type field with at most one packet raised ValueError."""
    layout = fp.HeaderLayout([("len", "u16"), ("type", "u64")], "len")
    batch = fp.FrameDecoder(layout).feed(fp.encode(7, b"abc", layout=layout) * count)
    groups = batch.by_type()
    assert list(groups) == ([7] if count else [])
    assert [len(g) for g in groups.values()] == ([count] if count else [])
