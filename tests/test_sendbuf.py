"""SendBuffer: round trips through FrameDecoder, seq numbering, flush rules,
BufferFull and oversize, double-buffered flush views, broadcast, batch relay,
arrays as packets (send_array, scatter)."""

from __future__ import annotations

import array
import random
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastpacket as fp
from tests import reference as ref
from tests.reference_buffers import GAME_HEADER, SendModel, encode_game
from tests.test_framing import LAYOUTS

HS = GAME_HEADER.size


def decode(view) -> list:
    dec = fp.FrameDecoder()
    batch = dec.feed(bytes(view))
    assert dec.pending == 0
    return [(p.type, p.seq, p.player_id, bytes(p.payload)) for p in batch]


# -- send ---------------------------------------------------------------------

def test_round_trip_through_the_decoder(as_buffer):
    sb = fp.SendBuffer()
    assert sb.send(1, as_buffer(b"hello"), player_id=42) == 0
    assert sb.send(2, as_buffer(b""), player_id=7) == 1
    assert sb.send(3, as_buffer(b"x" * 1000)) == 2
    assert len(sb) == 3 and sb.nbytes == 3 * HS + 1005
    view = sb.flush()
    assert view.readonly and len(view) == 3 * HS + 1005
    assert decode(view) == [(1, 0, 42, b"hello"), (2, 1, 7, b""), (3, 2, 0, b"x" * 1000)]
    assert len(sb) == 0 and sb.nbytes == 0


@settings(max_examples=100)
@given(st.lists(st.tuples(st.integers(0, 0xFFFE), st.binary(max_size=200), st.integers(0, 2**32 - 1),
                          st.none() | st.integers(0, 2**32 - 1)), max_size=60))
def test_agrees_with_the_reference_model(sends):
    sb = fp.SendBuffer(max_bytes=4096)
    model = SendModel(max_bytes=4096)
    out, expected = [], []
    for ptype, payload, pid, seq in sends:
        want = model.send(ptype, payload, pid, seq)
        if want is None:
            with pytest.raises(fp.BufferFull):
                sb.send(ptype, payload, player_id=pid, seq=seq)
            out.append(bytes(sb.flush()))
            expected.append(model.flush())
            want = model.send(ptype, payload, pid, seq)
        assert sb.send(ptype, payload, player_id=pid, seq=seq) == want
        assert sb.nbytes == model.nbytes and sb.next_seq == model.next_seq
    out.append(bytes(sb.flush()))
    expected.append(model.flush())
    assert out == expected


def test_seq_wraps_at_2_to_the_32():
    sb = fp.SendBuffer()
    sb.next_seq = 2**32 - 2
    assert [sb.send(1, b"") for _ in range(4)] == [2**32 - 2, 2**32 - 1, 0, 1]
    assert [s for _, s, _, _ in decode(sb.flush())] == [2**32 - 2, 2**32 - 1, 0, 1]
    with pytest.raises(ValueError, match=r"next_seq must be an int in \[0, 4294967295\]"):
        sb.next_seq = 2**32


def test_given_seq_is_written_and_leaves_the_counter():
    sb = fp.SendBuffer()
    assert sb.send(1, b"a") == 0
    assert sb.send(1, b"b", seq=1000) == 1000
    assert sb.send(1, b"c") == 1
    assert [s for _, s, _, _ in decode(sb.flush())] == [0, 1000, 1]


def test_seq_wraps_at_the_layout_field_width():
    layout = fp.HeaderLayout([("size", "u16"), ("type", "u8"), ("seq", "u16"), ("player_id", "u32")], "size")
    sb = fp.SendBuffer(layout=layout)
    sb.next_seq = 65535
    assert [sb.send(1, b"p") for _ in range(3)] == [65535, 0, 1]
    batch = fp.FrameDecoder(layout=layout).feed(bytes(sb.flush()))
    assert list(batch.seqs) == [65535, 0, 1]


def test_values_that_do_not_fit_their_field():
    sb = fp.SendBuffer()
    with pytest.raises(ValueError, match="type 65536 does not fit field 'type'"):
        sb.send(65536, b"")
    with pytest.raises(ValueError, match="player_id 4294967296 does not fit"):
        sb.send(1, b"", player_id=2**32)
    with pytest.raises(ValueError, match="type must be an int in"):
        sb.send(-1, b"")
    with pytest.raises(TypeError, match="seq must be an int, not 'float'"):
        sb.send(1, b"", seq=3.5)
    with pytest.raises(TypeError, match="bytes-like"):
        sb.send(1, "text")
    assert len(sb) == 0 and sb.next_seq == 0  # nothing half-written, no seq used


# -- flush rules and limits ---------------------------------------------------

def test_should_flush_by_count_and_fill_ratio():
    sb = fp.SendBuffer(max_bytes=1000)
    assert not sb.should_flush()
    assert not sb.should_flush(min_packets=0, fill_ratio=0.0)  # never when empty
    for _ in range(9):
        sb.send(1, b"")
    assert not sb.should_flush()
    sb.send(1, b"")
    assert sb.should_flush() and sb.should_flush(min_packets=10)
    assert not sb.should_flush(min_packets=11)
    sb.flush()
    sb.send(1, b"x" * (800 - HS - 1))  # 799 bytes
    assert not sb.should_flush()
    sb.send(1, b"")  # 811 bytes >= 0.8 * 1000
    assert sb.should_flush() and not sb.should_flush(fill_ratio=0.9)


def test_buffer_full_and_oversize():
    sb = fp.SendBuffer(max_bytes=100)
    sb.send(1, b"x" * 50)  # 62 bytes
    with pytest.raises(fp.BufferFull, match="needs 50 bytes but only 38 of 100 are free"):
        sb.send(1, b"y" * 38)
    sb.send(1, b"y" * 26)  # exactly full
    assert sb.free == 0
    with pytest.raises(fp.BufferFull):
        sb.send(1, b"")
    with pytest.raises(ValueError, match="needs 101 bytes, more than max_bytes=100"):
        sb.send(1, b"z" * 89)
    assert decode(sb.flush()) == [(1, 0, 0, b"x" * 50), (1, 1, 0, b"y" * 26)]


@pytest.mark.parametrize("bad", [0, 11, 1 << 31])
def test_max_bytes_range(bad):
    with pytest.raises(ValueError, match=r"max_bytes must be an int in \[12, 1073741824\]"):
        fp.SendBuffer(max_bytes=bad)


def test_never_a_packet_split_across_flushes():
    rng = random.Random(5)
    sb = fp.SendBuffer(max_bytes=1500)
    payloads = [rng.randbytes(rng.randint(0, 400)) for _ in range(500)]
    flushed = []
    for p in payloads:
        try:
            sb.send(9, p)
        except fp.BufferFull:
            flushed.append(bytes(sb.flush()))
            sb.send(9, p)
    flushed.append(bytes(sb.flush()))
    got = []
    for chunk in flushed:
        assert 0 < len(chunk) <= 1500
        got.extend(decode(chunk))  # each flush decodes alone, no pending tail
    assert [payload for _, _, _, payload in got] == payloads
    assert [seq for _, seq, _, _ in got] == list(range(500))


# -- double-buffered flush views ----------------------------------------------

def test_a_flushed_view_stays_intact_while_new_sends_arrive():
    sb = fp.SendBuffer(max_bytes=256)
    sb.send(1, b"first")
    view = sb.flush()
    snapshot = bytes(view)
    for i in range(10):
        sb.send(2, b"second-%d" % i)  # fills the other buffer
    assert bytes(view) == snapshot
    second = sb.flush()
    assert bytes(view) == snapshot  # still held: the next flush did not reuse it
    for _ in range(8):
        sb.send(3, b"third" * 4)  # 8 * 32 bytes: fills the third buffer
    assert bytes(view) == snapshot
    assert decode(view) == [(1, 0, 0, b"first")]
    assert [t for t, _, _, _ in decode(second)] == [2] * 10
    assert [t for t, _, _, _ in decode(sb.flush())] == [3] * 8


def test_flush_reuses_a_released_buffer():
    sb = fp.SendBuffer(max_bytes=64)
    sb.send(1, b"a")
    first = sb.flush()
    first_obj = first.obj
    first.release()
    sb.send(1, b"b")
    sb.flush().release()
    sb.send(1, b"c")
    third = sb.flush()
    assert third.obj is first_obj  # two buffers in turn when views are released
    assert decode(third) == [(1, 2, 0, b"c")]


def test_flush_views_are_read_only_and_empty_flush():
    sb = fp.SendBuffer()
    assert len(sb.flush()) == 0
    sb.send(1, b"abc")
    view = sb.flush()
    with pytest.raises(TypeError):
        view[0] = 0
    with pytest.raises(ValueError):
        np.frombuffer(view.obj, dtype=np.uint8).setflags(write=True)


def test_clear_drops_the_queue():
    sb = fp.SendBuffer()
    sb.send(1, b"abc")
    sb.clear()
    assert len(sb) == 0 and sb.nbytes == 0 and sb.next_seq == 1


# -- broadcast ----------------------------------------------------------------

ID_INPUTS = {
    "list": list,
    "tuple": tuple,
    "range": lambda ids: range(ids[0], ids[-1] + 1),
    "generator": lambda ids: (i for i in ids),
    "numpy-int64": lambda ids: np.array(ids, dtype=np.int64),
    "numpy-uint32": lambda ids: np.array(ids, dtype=np.uint32),
    "numpy-uint16": lambda ids: np.array(ids, dtype=np.uint16),
    "numpy-int8": lambda ids: np.array(ids, dtype=np.int8),
    "numpy-strided": lambda ids: np.repeat(np.array(ids, dtype=np.int32), 2)[::2],
    "array-I": lambda ids: array.array("I", ids),
    "numpy-int-objects": lambda ids: [np.int64(i) for i in ids],
}


@pytest.mark.parametrize("kind", sorted(ID_INPUTS))
def test_broadcast_writes_one_packet_per_player(kind):
    ids = list(range(20, 120))
    sb = fp.SendBuffer()
    sb.send(5, b"before")
    assert sb.broadcast(7, b"p" * 40, ID_INPUTS[kind](ids)) == 1
    assert len(sb) == 101 and sb.next_seq == 101
    got = decode(sb.flush())
    assert got[0] == (5, 0, 0, b"before")
    assert got[1:] == [(7, 1 + k, pid, b"p" * 40) for k, pid in enumerate(ids)]


def test_broadcast_matches_python_loop_bytes():
    ids = np.random.default_rng(3).integers(0, 2**32, size=1000, dtype=np.uint64)
    sb = fp.SendBuffer()
    sb.next_seq = 2**32 - 500  # wraps half-way
    sb.broadcast(300, b"q" * 40, ids)
    expected = b"".join(encode_game(300, b"q" * 40, (2**32 - 500 + k) % 2**32, int(pid)) for k, pid in enumerate(ids))
    assert bytes(sb.flush()) == expected


def test_broadcast_all_or_nothing():
    sb = fp.SendBuffer(max_bytes=1000)
    sb.send(1, b"x" * 500)
    with pytest.raises(fp.BufferFull, match="a broadcast to 10 players needs 520 bytes"):
        sb.broadcast(2, b"y" * 40, range(10))
    with pytest.raises(ValueError, match="more than max_bytes=1000"):
        sb.broadcast(2, b"y" * 40, range(20))
    with pytest.raises(ValueError, match=r"player_ids\[2\] = 4294967296 does not fit"):
        sb.broadcast(2, b"", [1, 2, 2**32])
    with pytest.raises(ValueError, match=r"player_ids\[1\] = -3"):
        sb.broadcast(2, b"", [1, -3])
    with pytest.raises(ValueError, match=r"player_ids\[0\] = -1"):
        sb.broadcast(2, b"", np.array([-1], dtype=np.int16))
    with pytest.raises(TypeError, match="integers"):
        sb.broadcast(2, b"", np.array([1.5]))
    with pytest.raises(TypeError, match="integers"):
        sb.broadcast(2, b"", ["7"])
    with pytest.raises(ValueError, match="one-dimensional"):
        sb.broadcast(2, b"", np.zeros((2, 2), dtype=np.uint32))
    assert len(sb) == 1 and sb.next_seq == 1  # nothing appended, no seq used
    assert sb.broadcast(2, b"", []) == 1 and len(sb) == 1


# -- send_batch ---------------------------------------------------------------

def test_send_batch_relays_byte_for_byte():
    batch = fp.PacketBatch.build([1, 2, 1, 3], [b"a", b"bb", b"ccc", b""], seqs=[9, 8, 7, 6],
                                 player_ids=[4, 4, 5, 5])
    sb = fp.SendBuffer()
    sb.next_seq = 100
    sb.send_batch(batch)
    assert len(sb) == 4 and sb.next_seq == 100  # headers as they are, seq included
    sb.send_batch(batch.by_type()[1])  # non-contiguous rows: two runs
    assert bytes(sb.flush()) == batch.to_bytes() + batch[0].to_bytes() + batch[2].to_bytes()


def test_send_batch_limits_and_layout():
    batch = fp.PacketBatch.build([1] * 10, [b"z" * 38] * 10)  # 10 packets of 50 bytes
    sb = fp.SendBuffer(max_bytes=600)
    sb.send(1, b"x" * 89)  # 101 bytes: 499 left
    assert sb.send_batch(batch) == 9  # what fits, whole packets: 450 bytes
    assert sb.free == 49
    with pytest.raises(fp.BufferFull, match="packet 9 of the batch needs 50 bytes but only 49 of 600"):
        sb.send_batch(batch, 9)
    assert len(sb) == 10
    with pytest.raises(ValueError, match="packet 3 of the batch needs 601 bytes, more than max_bytes=600"):
        sb.send_batch(fp.PacketBatch.build([1] * 5, [b"z"] * 3 + [b"z" * 589] + [b"z"]))
    assert len(sb) == 10  # refused before anything was queued
    other = fp.HeaderLayout([("len", "u32"), ("type", "u16")], "len", name="other")
    with pytest.raises(ValueError, match="layout"):
        sb.send_batch(fp.PacketBatch.build([1], [b""], layout=other))
    with pytest.raises(TypeError, match="PacketBatch"):
        sb.send_batch(b"bytes")
    assert sb.send_batch(batch[:0]) == 0
    assert sb.send_batch(batch, 10) == 0
    with pytest.raises(ValueError, match=r"start must be an int in \[0, 10\], got 11"):
        sb.send_batch(batch, 11)
    assert len(sb) == 10


@pytest.mark.parametrize("max_bytes", [64, 600, 65536])
def test_send_batch_of_any_size_goes_out_whole_and_in_order(max_bytes):
    """Issue 14, finding 1: a batch larger than the buffer raised ValueError
    ("can never fit"). It fills the buffer, the caller flushes and goes on,
    and every packet arrives whole, once, in order."""
    rng = np.random.default_rng(max_bytes)
    payloads = [bytes(rng.integers(0, 256, int(rng.integers(0, 52)), dtype=np.uint8)) for _ in range(5000)]
    batch = fp.PacketBatch.build(rng.integers(0, 100, len(payloads)), payloads, seqs=np.arange(len(payloads)))
    sb = fp.SendBuffer(max_bytes=max_bytes)
    sb.send(9, b"already queued")
    flushes = []
    i = 0
    while i < len(batch):
        try:
            i += sb.send_batch(batch, i)
        except fp.BufferFull:
            pass
        if i < len(batch):
            flushes.append(bytes(sb.flush()))
    flushes.append(bytes(sb.flush()))
    assert all(0 < len(f) <= max_bytes for f in flushes)
    got = []
    dec = fp.FrameDecoder()
    for f in flushes:
        part = dec.feed(f)
        assert dec.pending == 0  # each flush holds whole packets
        got.extend(p.to_bytes() for p in part)
    assert got[0] == fp.encode(9, b"already queued")
    assert b"".join(got[1:]) == batch.to_bytes()
    assert len(flushes) >= batch.nbytes // max_bytes


def test_an_empty_flush_view_may_be_released():
    sb = fp.SendBuffer()
    sb.flush().release()
    assert len(sb.flush()) == 0


def test_send_batch_refuses_a_layout_with_the_same_dtype_but_other_framing():
    # Same fields, same dtype: only whether the length counts the header
    # differs. Relaying such a batch byte-for-byte would make the receiver
    # frame it differently (two packets read as one), so it is refused.
    fields = [("len", "u16"), ("type", "u16")]
    counts_header = fp.HeaderLayout(fields, "len", length_includes_header=True, name="WITH")
    payload_only = fp.HeaderLayout(fields, "len", length_includes_header=False, name="WITHOUT")
    assert counts_header.dtype == payload_only.dtype
    batch = fp.PacketBatch.build([1, 2], [b"abcd", b"efgh"], layout=payload_only)
    sb = fp.SendBuffer(layout=counts_header)
    with pytest.raises(ValueError, match="WITHOUT.*WITH"):
        sb.send_batch(batch)
    assert len(sb) == 0
    # an equal layout built separately is the same framing: accepted
    same = fp.HeaderLayout(fields, "len", length_includes_header=False)
    fp.SendBuffer(layout=same).send_batch(batch)


#: Twisted's IntNStringReceiver framing (Int32StringReceiver): a u32 length
#: of the body, then the body; no type, seq or player id.
INT32_STRING = fp.HeaderLayout([("len", "u32")], "len", length_includes_header=False, byteorder="big")


def test_length_only_layout_sends_a_payload_as_one_frame(as_buffer):
    sb = fp.SendBuffer(layout=INT32_STRING)
    for body in (b"hello", b"", b"x" * 1000):
        sb.send(None, as_buffer(body))
    wire = bytes(sb.flush())
    assert wire == b"".join(struct.pack(">I", len(b)) + b for b in (b"hello", b"", b"x" * 1000))
    batch = fp.FrameDecoder(INT32_STRING).feed(wire)
    assert [bytes(p.payload) for p in batch] == [b"hello", b"", b"x" * 1000]
    built = fp.PacketBatch.build(None, [b"hello", b"", b"x" * 1000], layout=INT32_STRING)
    assert built.to_bytes() == wire
    assert b"".join(fp.encode(None, b, layout=INT32_STRING) for b in (b"hello", b"", b"x" * 1000)) == wire


def test_length_only_layout_refuses_a_type_and_game_requires_one():
    sb = fp.SendBuffer(layout=INT32_STRING)
    for t in (1, 0):
        with pytest.raises(ValueError, match="no type field: pass type=None"):
            sb.send(t, b"x")
    with pytest.raises(ValueError, match="no type field: pass types=None"):
        fp.PacketBatch.build([0], [b"x"], layout=INT32_STRING)
    assert len(sb) == 0 and sb.nbytes == 0
    with pytest.raises(TypeError, match="type must be an int"):
        fp.SendBuffer().send(None, b"x")
    with pytest.raises(TypeError, match="types must be given"):
        fp.PacketBatch.build(None, [b"x"])


# -- send_array and scatter (issue 15) ------------------------------------------


@given(name=st.sampled_from(sorted(LAYOUTS)), n=st.integers(0, 30), width=st.integers(0, 24),
       first_seq=st.integers(0, 2**32 - 1), ids_kind=st.sampled_from(["none", "scalar", "array", "int8"]),
       data=st.data())
def test_send_array_matches_reference(name, n, width, first_seq, ids_kind, data):
    rl, layout = LAYOUTS[name]
    rows = np.frombuffer(data.draw(st.binary(min_size=n * width, max_size=n * width)), dtype=np.uint8)
    rows = rows.reshape(n, width)
    sb = fp.SendBuffer(1 << 16, layout=layout)
    seq_top = rl.field_max("seq") if "seq" in dict(rl.fields) else 0
    sb.next_seq = first_seq & seq_top
    ids = {"none": None, "scalar": 77, "array": np.arange(n, dtype=np.uint32) * 3,
           "int8": np.arange(n, dtype=np.int8)}[ids_kind]
    typ = data.draw(st.integers(0, rl.field_max("type")))
    got = sb.send_array(typ, rows, player_ids=ids)
    assert got == first_seq & seq_top and len(sb) == n
    seqs = [(first_seq + i) & seq_top for i in range(n)]
    pids = [0] * n if ids is None else [77] * n if ids_kind == "scalar" else [int(x) for x in ids]
    want = ref.encode_rows(rl, [typ] * n, [r.tobytes() for r in rows], seqs, pids)
    assert bytes(sb.flush()) == want


def test_send_array_structured_strided_and_all_or_nothing():
    dt = np.dtype([("tick", "<u4"), ("x", "<i4"), ("y", "<i4")])
    rows = np.zeros(10, dtype=dt)
    rows["x"] = np.arange(10)
    sb = fp.SendBuffer(1000)
    sb.send_array(3, rows[::2], player_ids=np.arange(5))  # a strided view: no copy needed
    got = fp.FrameDecoder().feed(bytes(sb.flush()))
    assert got.payload_array(dt)["x"].tolist() == [0, 2, 4, 6, 8]
    assert got.seqs.tolist() == [0, 1, 2, 3, 4] and got.player_ids.tolist() == [0, 1, 2, 3, 4]
    # 1000 bytes hold 41 frames of 24 bytes
    big = np.zeros(42, dtype=dt)
    with pytest.raises(ValueError, match="more than max_bytes"):
        sb.send_array(3, big)
    sb.send_array(3, big[:30])
    with pytest.raises(fp.BufferFull):
        sb.send_array(3, big[:20])
    with pytest.raises(ValueError, match=r"player_ids\[1\] = 4294967296 does not fit"):
        sb.send_array(3, big[:2], player_ids=np.array([0, 2**32], dtype=np.uint64))
    with pytest.raises(ValueError, match="type 65536 does not fit"):
        sb.send_array(65536, big[:2])
    with pytest.raises(TypeError, match="numpy array"):
        sb.send_array(3, [b"abc"])
    with pytest.raises(ValueError, match="at least one dimension"):
        sb.send_array(3, np.zeros((), dtype=dt))
    with pytest.raises(ValueError, match="one value per payload"):
        sb.send_array(3, big[:2], player_ids=[1, 2, 3])
    assert len(sb) == 30 and sb.next_seq == 35  # the failed calls queued nothing


def test_scatter_one_row_per_buffer():
    dt = np.dtype([("x", "<f4"), ("y", "<f4")])
    rows = np.zeros(6, dtype=dt)
    rows["x"] = np.arange(6)
    buffers = [fp.SendBuffer(256) for _ in range(6)]
    buffers[2].next_seq = 41
    assert fp.sendbuf.scatter(buffers, 8, rows, player_ids=np.arange(100, 106)) == 6
    for i, sb in enumerate(buffers):
        (p,) = fp.FrameDecoder().feed(bytes(sb.flush()))
        assert (p.type, p.seq, p.player_id) == (8, 41 if i == 2 else 0, 100 + i)
        assert bytes(p.payload) == rows[i].tobytes()
    assert fp.sendbuf.scatter([], 8, rows[:0]) == 0


def test_scatter_all_or_nothing():
    rows = np.zeros((3, 100), dtype=np.uint8)
    a, b = fp.SendBuffer(200), fp.SendBuffer(200)
    with pytest.raises(fp.BufferFull, match="buffer 2"):
        fp.sendbuf.scatter([a, b, a], 1, rows)  # listed twice, `a` would need 2 x 112 bytes
    assert len(a) == len(b) == 0
    with pytest.raises(ValueError, match="never fit"):
        fp.sendbuf.scatter([fp.SendBuffer(50)], 1, rows[:1])
    with pytest.raises(ValueError, match="one row per buffer"):
        fp.sendbuf.scatter([a, b], 1, rows)
    other = fp.SendBuffer(200, layout=fp.HeaderLayout([("len", "u32"), ("type", "u16")], "len"))
    with pytest.raises(ValueError, match="layout"):
        fp.sendbuf.scatter([a, other], 1, rows[:2])
    with pytest.raises(TypeError, match="SendBuffers"):
        fp.sendbuf.scatter([a, "b"], 1, rows[:2])
    with pytest.raises(ValueError, match=r"player_ids\[1\]"):
        fp.sendbuf.scatter([a, b], 1, rows[:2], player_ids=[1, 2**32])
    assert len(a) == len(b) == 0
    assert fp.sendbuf.scatter([a, b, a], 1, rows[:, :50]) == 3 and len(a) == 2 and len(b) == 1
