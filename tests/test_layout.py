"""HeaderLayout validation, dtypes, struct formats, encode()."""

from __future__ import annotations

import pickle
import struct

import numpy as np
import pytest

import fastpacket as fp
from tests import reference as ref


def test_game_layout():
    assert fp.GAME.size == 12
    assert fp.GAME.struct_format == "<HHII"
    assert fp.GAME.dtype == np.dtype([("size", "<u2"), ("type", "<u2"), ("seq", "<u4"), ("player_id", "<u4")])
    assert fp.GAME.field_names == ("size", "type", "seq", "player_id")
    assert fp.GAME.length_field == "size"
    assert fp.GAME.length_includes_header


def test_custom_layout_big_endian():
    layout = fp.HeaderLayout(fields=[("len", "u32"), ("type", "u16")], length_field="len",
                             length_includes_header=False, byteorder="big")
    assert layout.size == 6
    assert layout.struct_format == ">IH"
    assert layout.dtype == np.dtype([("len", ">u4"), ("type", ">u2")])
    assert fp.encode(7, b"abc", layout=layout) == struct.pack(">IH", 3, 7) + b"abc"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(fields=[], length_field="len"), "at least one field"),
        (dict(fields=[("len", "u24")], length_field="len"), "kind must be one of"),
        (dict(fields=[("len", "i32")], length_field="len"), "kind must be one of"),
        (dict(fields=[("len", "u16"), ("len", "u16")], length_field="len"), "duplicate"),
        (dict(fields=[("my len", "u16")], length_field="my len"), "identifiers"),
        (dict(fields=[("len", "u16")], length_field="size"), "not one of the fields"),
        (dict(fields=[("len", "u16")], length_field="len", byteorder="middle"), "byteorder"),
        (dict(fields=[(f"f{i}", "u64") for i in range(9)], length_field="f0"), "at most 64 bytes"),
        (dict(fields=[("len", "u16"), ("t", "u16")], length_field="len", type_field="x"), "type_field"),
        (dict(fields=[("type", "u16")], length_field="type"), "cannot also be the type field"),
        (dict(fields=[("len", "u16")], length_field="len", length_adjustment=2**33), "length_adjustment"),
        (dict(fields=[("len", "u16"), ("a", "u32")], length_field="len", type_field="a", seq_field="a"),
         "both the type field and the seq field"),
        (dict(fields=[("len", "u16"), ("type", "u16"), ("b", "u32")], length_field="len", player_id_field="type"),
         "both the type field and the player_id field"),
    ],
)
def test_layout_validation(kwargs, message):
    with pytest.raises(ValueError, match=message):
        fp.HeaderLayout(**kwargs)


def test_layout_at_64_bytes_is_accepted():
    layout = fp.HeaderLayout([(f"f{i}", "u64") for i in range(8)], length_field="f0")
    assert layout.size == 64


def test_layout_equality_hash_and_pickle():
    a = fp.HeaderLayout([("len", "u16"), ("type", "u8")], "len")
    b = fp.HeaderLayout([("len", "u16"), ("type", "u8")], "len")
    assert a == b and hash(a) == hash(b)
    assert a != fp.GAME
    c = pickle.loads(pickle.dumps(fp.GAME))
    assert c == fp.GAME and c.name == "GAME"
    assert fp.FrameDecoder(c).feed(fp.encode(1, b"x")).types.tolist() == [1]


def test_roles_by_name_and_explicit():
    layout = fp.HeaderLayout([("len", "u16"), ("kind", "u8"), ("who", "u32")], "len",
                             type_field="kind", player_id_field="who")
    data = fp.encode(5, b"zz", player_id=77, layout=layout)
    (p,) = fp.FrameDecoder(layout).feed(data)
    assert (p.type, p.player_id) == (5, 77)
    assert not hasattr(p, "seq")  # no seq field: AttributeError, so p.seq is typed int
    assert p.header == {"len": 7 + 2, "kind": 5, "who": 77}


def test_encode_matches_reference(as_buffer):
    got = fp.encode(3, as_buffer(b"hello"), seq=0xDEADBEEF, player_id=42)
    assert got == ref.encode_packet(ref.GAME, 3, b"hello", 0xDEADBEEF, 42)


def test_encode_range_errors():
    with pytest.raises(ValueError, match="type 65536 does not fit field 'type'"):
        fp.encode(65536, b"")
    with pytest.raises(ValueError, match="does not fit the length field 'size'"):
        fp.encode(1, bytes(65535 - 11))
    assert len(fp.encode(1, bytes(65535 - 12))) == 65535
    with pytest.raises(ValueError, match=r"type must be an int in \[0, "):
        fp.encode(-1, b"")
    with pytest.raises(TypeError, match="type must be an int, not 'float'"):
        fp.encode(3.99, b"")  # never truncated to 3
    tiny = fp.HeaderLayout([("type", "u8"), ("len", "u8")], "len", length_includes_header=False)
    assert len(fp.encode(1, bytes(255), layout=tiny)) == 257
    with pytest.raises(ValueError, match="256 bytes does not fit"):
        fp.encode(1, bytes(256), layout=tiny)
    notype = fp.HeaderLayout([("len", "u16")], "len")
    with pytest.raises(ValueError, match="no type field: pass type=None"):
        fp.encode(1, b"", layout=notype)
    with pytest.raises(ValueError, match="no type field"):
        fp.encode(0, b"", layout=notype)   # None, not 0: there is no field to hold a type
    assert fp.encode(None, b"abc", layout=notype) == b"\x05\x00abc"
    with pytest.raises(TypeError, match="layout GAME has a type field"):
        fp.encode(None, b"abc")


def test_encode_rejects_non_buffers():
    with pytest.raises(TypeError, match="bytes-like"):
        fp.encode(1, "text")
    with pytest.raises(TypeError, match="HeaderLayout"):
        fp.encode(1, b"", layout="GAME")
