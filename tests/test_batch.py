"""PacketBatch: build (from payloads and from arrays), columns, payloads as
arrays, indexing, by_type, to_bytes, Packet."""

from __future__ import annotations

import gc

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastpacket as fp
from tests import reference as ref
from tests.test_framing import LAYOUTS  # the layouts with their reference twins


def test_build_matches_reference_and_round_trips(as_buffer):
    payloads = [b"", b"a", b"xyz" * 30]
    batch = fp.PacketBatch.build([1, 2, 3], [as_buffer(p) for p in payloads], seqs=[10, 11, 12],
                                 player_ids=np.array([7, 8, 9]))
    expected = ref.encode_all(ref.GAME, [(1, 10, 7, payloads[0]), (2, 11, 8, payloads[1]), (3, 12, 9, payloads[2])])
    assert batch.to_bytes() == expected
    assert batch.nbytes == len(expected)
    again = fp.FrameDecoder().feed(expected)
    assert [p.to_bytes() for p in again] == [p.to_bytes() for p in batch]
    assert list(again) == list(batch)


def test_build_defaults_and_errors():
    batch = fp.PacketBatch.build([5], [b"p"])
    assert (batch[0].seq, batch[0].player_id) == (0, 0)
    assert len(fp.PacketBatch.build([], [])) == 0
    with pytest.raises(ValueError, match="one value per payload"):
        fp.PacketBatch.build([1, 2], [b"a"])
    with pytest.raises(ValueError, match=">= 0"):
        fp.PacketBatch.build([-1], [b"a"])
    with pytest.raises(TypeError, match="integers"):
        fp.PacketBatch.build([1.5], [b"a"])
    with pytest.raises(ValueError, match="packet 1: type 70000 does not fit"):
        fp.PacketBatch.build([1, 70000], [b"a", b"b"])
    with pytest.raises(TypeError, match="bytes-like"):
        fp.PacketBatch.build([1], ["text"])


def test_indexing_slicing_and_iteration():
    batch = fp.PacketBatch.build(list(range(10)), [bytes([i]) * i for i in range(10)], seqs=range(100, 110))
    assert batch[-1].type == 9 and batch[0].type == 0
    with pytest.raises(IndexError):
        batch[10]
    with pytest.raises(IndexError):
        batch[-11]
    sub = batch[2:8:2]
    assert isinstance(sub, fp.PacketBatch)
    assert sub.types.tolist() == [2, 4, 6]
    assert sub.seqs.tolist() == [102, 104, 106]
    assert [bytes(p.payload) for p in sub] == [b"\x02" * 2, b"\x04" * 4, b"\x06" * 6]
    assert sub.to_bytes() == b"".join(batch[i].to_bytes() for i in (2, 4, 6))
    assert [p.seq for p in batch] == list(range(100, 110))
    assert len(batch[5:5]) == 0 and batch[5:5].to_bytes() == b""


@given(types=st.lists(st.integers(0, 5), max_size=200))
def test_by_type_groups_stably(types):
    batch = fp.PacketBatch.build(types, [i.to_bytes(4, "little") for i in range(len(types))],
                                 seqs=range(len(types)))
    groups = batch.by_type()
    first_seen = list(dict.fromkeys(types))
    assert list(groups) == first_seen
    for t, group in groups.items():
        assert set(group.types.tolist()) == {t}
        assert group.seqs.tolist() == [i for i, x in enumerate(types) if x == t]
        assert [int.from_bytes(p.payload, "little") for p in group] == group.seqs.tolist()
    assert sum(len(g) for g in groups.values()) == len(types)


def test_by_type_without_type_field():
    layout = fp.HeaderLayout([("len", "u16")], "len")
    batch = fp.FrameDecoder(layout).feed(b"\x02\x00")
    assert len(batch) == 1
    with pytest.raises(AttributeError, match="no type field"):
        batch.by_type()
    for role in ("type", "seq", "player_id"):  # typed int: a layout without the field raises, never None
        with pytest.raises(AttributeError, match=f"no {role} field"):
            getattr(batch[0], role)
    assert not hasattr(batch[0], "type")
    assert repr(batch[0]) == "Packet(payload=b'')"


def test_packet_api():
    (p,) = fp.PacketBatch.build([3], [b"payload"], seqs=[4], player_ids=[5])
    assert (p.type, p.seq, p.player_id, p.size) == (3, 4, 5, 19)
    assert p.header == {"size": 19, "type": 3, "seq": 4, "player_id": 5}
    assert p.field("seq") == 4
    with pytest.raises(KeyError):
        p.field("nope")
    assert isinstance(p.payload, memoryview) and p.payload.readonly
    assert p.to_bytes() == fp.encode(3, b"payload", seq=4, player_id=5)
    assert "type=3" in repr(p)
    with pytest.raises(TypeError):
        fp.Packet()
    with pytest.raises(TypeError):
        fp.PacketBatch()


def test_payload_views_are_read_only_and_columns_too():
    batch = fp.FrameDecoder().feed(bytearray(fp.encode(1, b"abc")))
    with pytest.raises(TypeError):
        batch.payload(0)[0] = 1
    with pytest.raises(ValueError):
        batch.types[0] = 5


def test_empty_batch_columns():
    batch = fp.FrameDecoder().feed(b"")
    assert len(batch) == 0
    assert batch.types.shape == (0,) and batch.headers.shape == (0,)
    assert batch.by_type() == {} and batch.to_bytes() == b""
    assert list(batch) == []


def test_batch_exports_its_buffer_read_only():
    batch = fp.FrameDecoder().feed(bytearray(fp.encode(1, b"ab") + fp.encode(2, b"cd")))
    view = memoryview(batch)
    assert view.readonly and bytes(view) == batch.to_bytes()
    payload = batch.payload(1)
    assert bytes(payload) == b"cd" and bytes(memoryview(batch)) == bytes(view)  # export range restored
    assert payload.obj is batch


# -- payloads as arrays, arrays as packets (issue 15) ------------------------

# Record dtypes: plain, big-endian, structured with mixed byte orders, unaligned, a subarray.
DTYPES = [
    np.dtype("u1"),
    np.dtype("<u2"),
    np.dtype(">i4"),
    np.dtype([("x", "<f4"), ("y", ">i2"), ("flags", "u1")]),
    np.dtype([("tick", "<u4"), ("dx", "<i2"), ("dy", "<i2")]),
    np.dtype(("u1", 3)),
]


@st.composite
def payload_sets(draw):
    """(layout name, dtype, payloads): equal sizes, unequal sizes, short ones."""
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    rl, _ = LAYOUTS[name]
    dt = draw(st.sampled_from(DTYPES))
    room = rl.max_frame - rl.size
    n = draw(st.integers(0, 30))
    kind = draw(st.sampled_from(["equal", "unequal", "short"]))
    if kind == "equal":
        size = draw(st.integers(dt.itemsize, min(room, dt.itemsize + 20)))
        payloads = [draw(st.binary(min_size=size, max_size=size)) for _ in range(n)]
    else:
        low = 0 if kind == "short" else dt.itemsize
        payloads = [draw(st.binary(min_size=low, max_size=min(room, dt.itemsize + 20))) for _ in range(n)]
    types = [draw(st.integers(0, rl.field_max("type"))) for _ in range(n)]
    return name, dt, types, payloads


@given(payload_sets(), st.booleans())
def test_payload_array_matches_reference(case, copy):
    name, dt, types, payloads = case
    rl, layout = LAYOUTS[name]
    stream = ref.encode_all(rl, [(t, 0, 0, p) for t, p in zip(types, payloads)])
    batch = fp.FrameDecoder(layout, max_packet_size=min(rl.max_frame, fp.framing.MAX_PACKET_SIZE)).feed(stream)
    assert len(batch) == len(payloads)
    want, valid = ref.payload_records(payloads, dt.itemsize)
    if all(valid):
        arr = batch.payload_array(dt, copy=copy)
        assert arr.shape[0] == len(payloads) and arr.dtype == (dt.base if dt.subdtype else dt)
        assert arr.tobytes() == want
        assert arr.flags.writeable == copy
    else:
        first = valid.index(False)
        with pytest.raises(ValueError, match=f"packet {first}'s payload is {len(payloads[first])} bytes"):
            batch.payload_array(dt)
    arr, mask = batch.payload_array(dt, on_short="mask", copy=copy)
    assert mask.dtype == np.bool_ and mask.tolist() == valid
    assert arr.tobytes() == want  # records of short payloads are zeros


@given(payload_sets())
def test_payload_array_of_groups_and_slices(case):
    name, dt, types, payloads = case
    rl, layout = LAYOUTS[name]
    batch = fp.PacketBatch.build(types, payloads, layout=layout)
    for t, group in batch.by_type().items():
        rows = [p for tt, p in zip(types, payloads) if tt == t]
        want, valid = ref.payload_records(rows, dt.itemsize)
        arr, mask = group.payload_array(dt, on_short="mask")
        assert arr.tobytes() == want and mask.tolist() == valid
    sub = batch[1::2]
    want, valid = ref.payload_records(payloads[1::2], dt.itemsize)
    arr, mask = sub.payload_array(dt, on_short="mask")
    assert arr.tobytes() == want and mask.tolist() == valid


def test_payload_array_zero_copy_view_and_gather():
    dt = np.dtype([("x", "<i4"), ("y", "<i4")])
    rows = np.array([(i, -i) for i in range(10)], dtype=dt)
    batch = fp.FrameDecoder().feed(bytes(fp.PacketBatch.build(7, rows).to_bytes()))
    view = batch.payload_array(dt)  # equal sizes, back to back: a strided view into the batch
    assert view.base is batch and not view.flags.owndata and not view.flags.writeable
    assert view.strides == (12 + 8,)
    assert np.array_equal(view, rows)
    with pytest.raises(ValueError):
        view["x"] += 1  # read-only: the batch's bytes are immutable
    copied = batch.payload_array(dt, copy=True)  # always a gather into a new writable array
    assert copied.flags.owndata and copied.flags.writeable and np.array_equal(copied, rows)
    copied["x"] += 1
    assert np.array_equal(batch.payload_array(dt), rows)
    gathered = batch[::3].payload_array(dt)  # not back to back: one native gather, read-only too
    assert gathered.flags.owndata and not gathered.flags.writeable
    assert np.array_equal(gathered, rows[::3])
    longer = fp.PacketBatch.build(7, [r.tobytes() + b"tail" * (i % 2) for i, r in enumerate(rows)])
    assert np.array_equal(longer.payload_array(dt), rows)  # unequal sizes: gathered, tails ignored
    assert longer.payload_array(dt).flags.owndata
    empty = fp.FrameDecoder().feed(b"").payload_array(dt)
    assert empty.shape == (0,) and empty.dtype == dt
    arr, mask = fp.FrameDecoder().feed(b"").payload_array(dt, on_short="mask")
    assert arr.shape == mask.shape == (0,)


def test_payload_array_keeps_the_batch_alive():
    dt = np.dtype("<u8")
    data = bytearray(fp.PacketBatch.build(1, np.arange(100, dtype=dt)).to_bytes())
    arr = fp.FrameDecoder().feed(data).payload_array(dt)  # the batch exists only through the view
    data[:] = bytes(len(data))  # the caller's buffer changes: the batch had its own copy
    gc.collect()
    junk = [bytes(range(256)) * 64 for _ in range(100)]  # reuse any freed memory
    assert arr.tolist() == list(range(100))
    batch = arr.base
    assert isinstance(batch, fp.PacketBatch) and len(batch) == 100
    del batch, junk


def test_payload_array_of_aggregates():
    dt = np.dtype([("id", "<u4"), ("v", "<f8")])
    rows = np.zeros(200, dtype=dt)
    rows["id"] = np.arange(200)
    rows["v"] = np.linspace(0, 1, 200)
    agg = fp.Aggregator("lz4", threshold=0)
    frame = agg.pack(fp.PacketBatch.build(3, rows))
    assert np.array_equal(agg.unpack(frame).payload_array(dt), rows)
    dec = fp.FrameDecoder(aggregator=agg)
    mixed = dec.feed(fp.encode(9, b"other") + frame + fp.encode(9, b"x"))
    assert np.array_equal(mixed.by_type()[3].payload_array(dt), rows)


def test_payload_array_arguments():
    batch = fp.PacketBatch.build(1, [b"abcd", b"efgh"])
    with pytest.raises(TypeError, match="Python objects"):
        batch.payload_array(object)
    with pytest.raises(ValueError, match="itemsize 0"):
        batch.payload_array(np.dtype([]))
    with pytest.raises(ValueError, match="on_short must be"):
        batch.payload_array("u1", on_short="skip")
    with pytest.raises(TypeError):
        batch.payload_array("not a dtype")
    assert batch.payload_array(("u1", 4)).shape == (2, 4)
    assert batch.payload_array("S4").tolist() == [b"abcd", b"efgh"]


@st.composite
def record_sets(draw):
    name = draw(st.sampled_from(sorted(LAYOUTS)))
    rl, layout = LAYOUTS[name]
    n = draw(st.integers(0, 25))
    width = draw(st.integers(0, min(40, rl.max_frame - rl.size)))
    rows = np.frombuffer(draw(st.binary(min_size=n * width, max_size=n * width)), dtype=np.uint8).reshape(n, width)
    shape = draw(st.sampled_from(["c", "strided", "reversed", "fortran", "structured"]))
    if shape == "strided":
        wide = np.zeros((n, width + 3), dtype=np.uint8)
        wide[:, 1:width + 1] = rows
        rows_arg = wide[:, 1:width + 1]  # rows are contiguous inside, not back to back
    elif shape == "reversed":
        rows_arg = rows[::-1].copy()[::-1]  # a negative row stride
    elif shape == "fortran":
        rows_arg = np.asfortranarray(rows)  # rows not contiguous inside: copied first
    elif shape == "structured" and width:
        rows_arg = rows.copy().view(np.dtype([("b", "u1", (width,))])).reshape(n)
    else:
        rows_arg = rows
    def values(top):
        kind = draw(st.sampled_from(["none", "scalar", "array"]))
        if kind == "none":
            return None, [0] * n
        if kind == "scalar":
            v = draw(st.integers(0, top))
            return v, [v] * n
        vs = [draw(st.integers(0, top)) for _ in range(n)]
        return np.array(vs, dtype=np.uint64), vs
    types_arg, types = values(rl.field_max("type"))
    if types_arg is None:
        types_arg, types = 0, [0] * n
    seqs_arg, seqs = values(2**32 - 1)
    ids_arg, ids = values(2**32 - 1)
    return name, rows, rows_arg, types_arg, types, seqs_arg, seqs, ids_arg, ids


@given(record_sets())
def test_build_from_arrays_matches_reference(case):
    name, rows, rows_arg, types_arg, types, seqs_arg, seqs, ids_arg, ids = case
    rl, layout = LAYOUTS[name]
    batch = fp.PacketBatch.build(types_arg, rows_arg, seqs=seqs_arg, player_ids=ids_arg, layout=layout)
    want = ref.encode_rows(rl, types, [r.tobytes() for r in rows], seqs, ids)
    assert batch.to_bytes() == want
    assert len(batch) == len(rows)
    if len(rows) and rows.shape[1]:
        # and back: the payloads as an array are the rows (a zero-copy view)
        back = batch.payload_array(("u1", rows.shape[1]))
        assert np.array_equal(back, rows) and back.base is batch
    # the same as the list-of-payloads path, packet for packet
    slow = fp.PacketBatch.build(types, [r.tobytes() for r in rows], seqs=seqs, player_ids=ids, layout=layout)
    assert slow.to_bytes() == want


def test_build_from_arrays_errors():
    rows = np.zeros((3, 4), dtype=np.uint8)
    with pytest.raises(ValueError, match="packet 0: type 70000 does not fit"):
        fp.PacketBatch.build(70000, rows)
    with pytest.raises(ValueError, match="packet 2: player_id 4294967296 does not fit"):
        fp.PacketBatch.build(1, rows, player_ids=np.array([1, 2, 2**32], dtype=np.uint64))
    with pytest.raises(ValueError, match="one value per payload"):
        fp.PacketBatch.build([1, 2], rows)
    with pytest.raises(ValueError, match=">= 0"):
        fp.PacketBatch.build(1, rows, seqs=np.array([0, -1, 0]))
    with pytest.raises(ValueError, match=r"types must be an int in \[0, 18446744073709551615\], got -1"):
        fp.PacketBatch.build(-1, rows)
    with pytest.raises(TypeError, match="types must be given"):
        fp.PacketBatch.build(None, rows)
    with pytest.raises(ValueError, match="does not fit the length field"):
        fp.PacketBatch.build(1, np.zeros((1, 70000), dtype=np.uint8))
    # an object array is a list of payloads, not records
    objs = np.array([b"ab", b"cde"], dtype=object)
    assert [bytes(p.payload) for p in fp.PacketBatch.build(1, objs)] == [b"ab", b"cde"]
    assert len(fp.PacketBatch.build(1, np.zeros((0, 4), dtype=np.uint8))) == 0
    scalar_type = fp.PacketBatch.build(4, [b"a", b"b"])  # a scalar type on the list path too
    assert scalar_type.types.tolist() == [4, 4]


def test_payload_array_into_a_callers_array():
    dt = np.dtype([("seq", "<u4"), ("vx", "<i2"), ("vy", "<i2")])
    rows = np.zeros(6, dt)
    rows["seq"] = np.arange(6)
    buf = np.zeros(10, dt)
    batch = fp.PacketBatch.build(1, rows)
    got = batch.payload_array(dt, out=buf[2:8])
    assert got.base is buf and np.array_equal(buf[2:8], rows) and (buf[:2]["seq"] == 0).all()
    mixed = fp.PacketBatch.build(1, [rows[0].tobytes() + b"x", rows[1].tobytes()])  # unequal: the gather
    mixed.payload_array(dt, out=buf[8:10])
    assert np.array_equal(buf[8:10], rows[:2])
    for bad in (np.zeros(5, dt), np.zeros(6, np.uint64), buf[::2][:6], np.zeros(6, dt)[::-1], "x"):
        with pytest.raises(ValueError, match="out must be"):
            batch.payload_array(dt, out=bad)
    frozen = np.zeros(6, dt)
    frozen.flags.writeable = False
    with pytest.raises(ValueError, match="out must be"):
        batch.payload_array(dt, out=frozen)
    sub = np.zeros((6, 8), np.uint8)
    batch.payload_array(("u1", 8), out=sub)
    assert sub.tobytes() == rows.tobytes()
    arr, mask = fp.PacketBatch.build(1, [b"\x01\x00\x00\x00" * 2, b"\x02"]).payload_array(
        dt, out=np.zeros(2, dt), on_short="mask")
    assert mask.tolist() == [True, False] and arr["seq"].tolist() == [1, 0]


def test_by_type_of_one_type_is_the_whole_batch_in_order():
    """One type (a burst of MOVEs): by_type() hands the batch back whole
    (no grouping pass), keyed by that type, the same packets in order."""
    batch = fp.PacketBatch.build([7] * 5, [bytes([i]) * 3 for i in range(5)], seqs=range(5))
    groups = batch.by_type()
    assert list(groups) == [7]
    assert [p.payload.tobytes() for p in groups[7]] == [bytes([i]) * 3 for i in range(5)]
    assert list(groups[7].seqs) == list(range(5))
    mixed = fp.PacketBatch.build([7, 7, 8, 7], [b"a", b"b", b"c", b"d"])
    assert {k: [p.payload.tobytes() for p in v] for k, v in mixed.by_type().items()} == {
        7: [b"a", b"b", b"d"], 8: [b"c"]}
    assert fp.PacketBatch.build([], []).by_type() == {}


# -- PacketBatch.over: a batch over an outside buffer (issue 16: Python inside a C++ server) -----


@pytest.mark.parametrize("name", sorted(LAYOUTS))
@given(st.lists(st.tuples(st.integers(0, 200), st.integers(0, 2**32 - 1), st.binary(max_size=40)), max_size=12))
def test_over_agrees_with_the_decoder(name, packets):
    """Whole frames in any layout: the same packets FrameDecoder.feed makes,
    over the caller's bytes (no copy: the batch exports exactly them)."""
    rl, layout = LAYOUTS[name]
    stream = ref.encode_all(rl, [(t % (1 << 8), seq % (1 << 8), 0, p) for t, seq, p in packets])
    owner = bytearray(stream)
    batch = fp.PacketBatch.over(owner, layout=layout)
    want = fp.FrameDecoder(layout).feed(stream)
    assert batch.layout == layout
    assert len(batch) == len(want) == len(packets)
    assert [p.to_bytes() for p in batch] == [p.to_bytes() for p in want]
    assert bytes(batch) == stream
    assert np.frombuffer(batch, np.uint8).ctypes.data == np.frombuffer(owner, np.uint8).ctypes.data  # no copy


def test_over_holds_the_owner_until_the_last_view_is_gone():
    stream = fp.PacketBatch.build([1, 2, 1], [b"a", b"bb", b"ccc"]).to_bytes()
    owner = bytearray(stream)
    batch = fp.PacketBatch.over(owner)
    views = batch.by_type()[1]  # a batch over the same bytes
    payload = batch[2].payload
    del batch
    with pytest.raises(BufferError):
        owner.append(0)  # exported: cannot move under the views
    assert [p.payload.tobytes() for p in views] == [b"a", b"ccc"]
    del views
    gc.collect()
    with pytest.raises(BufferError):
        owner.append(0)
    assert payload.tobytes() == b"ccc"
    del payload
    gc.collect()
    owner.append(0)  # released: the owner is free again
    arr = np.frombuffer(stream, np.uint8).copy()
    kept = fp.PacketBatch.over(arr)
    del arr
    gc.collect()
    assert [p.payload.tobytes() for p in kept] == [b"a", b"bb", b"ccc"]  # the batch keeps the array alive


def test_over_refuses_what_is_not_whole_frames():
    stream = fp.PacketBatch.build([1, 2], [b"a", b"bb"]).to_bytes()
    assert len(fp.PacketBatch.over(b"")) == 0
    with pytest.raises(ValueError, match="offset 13.*cut off"):
        fp.PacketBatch.over(stream[:-1])
    with pytest.raises(ValueError, match="offset 27.*whole header"):
        fp.PacketBatch.over(stream + b"\x01")
    with pytest.raises(ValueError, match="offset 0 declares 3 bytes"):
        fp.PacketBatch.over(b"\x03\x00" + bytes(10))
    with pytest.raises(ValueError, match="offset 13 declares 14 bytes.*max_packet_size=13"):
        fp.PacketBatch.over(stream, max_packet_size=13)
    with pytest.raises(TypeError, match="PacketBatch.over.*bytes-like"):
        fp.PacketBatch.over("text")
    with pytest.raises(BufferError, match="C-contiguous"):
        fp.PacketBatch.over(memoryview(stream * 2)[::2])


def test_over_works_with_every_consumer():
    """A batch over an outside buffer goes wherever a decoded one goes: the
    send buffer, the aggregator, regrouping, bytes."""
    stream = fp.PacketBatch.build([1, 2, 1], [b"a", b"bb", b"ccc"], seqs=[5, 6, 7]).to_bytes()
    batch = fp.PacketBatch.over(memoryview(stream))
    sb = fp.SendBuffer()
    assert sb.send_batch(batch) == 3
    assert bytes(sb.flush()) == stream
    agg = fp.Aggregator()
    assert [p.to_bytes() for p in agg.unpack(agg.pack(batch))] == [p.to_bytes() for p in batch]
    assert batch.to_bytes() == stream and type(batch.to_bytes()) is bytes
    assert [p.payload.tobytes() for p in batch.by_type()[1]] == [b"a", b"ccc"]
    assert batch.seqs.tolist() == [5, 6, 7]
