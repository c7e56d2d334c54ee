"""PacketBatch: build, columns, indexing, by_type, to_bytes, Packet."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastpacket as fp
from tests import reference as ref


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
