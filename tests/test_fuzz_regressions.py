"""Bugs the fuzzers (fuzz/) found, as regression tests.

Each was marked xfail(strict=True) while the bug stood; the markers came
off with the fixes (#14), together with the guards that stepped around the
bugs in the fuzz targets, which now check the fixed behaviour.
"""

from __future__ import annotations

import struct

import pytest

import fastpacket as fp

U64_LENGTH = fp.HeaderLayout([("len", "u64"), ("type", "u16")], "len")


@pytest.mark.parametrize("max_packet_size, announced", [(2**63 - 1, 2**64 - 1), (2**62, 2**63)])
def test_a_length_above_a_huge_max_packet_size_is_refused(max_packet_size, announced):
    """Found writing fuzz_feed's oracle (exact sizes against the core's
    saturated ones): a u64 length of 2**63 or more announces more than
    max_packet_size, yet the decoder
    takes it for an incomplete packet of 2**62 bytes and buffers the stream
    without bound instead of raising. Refusing such a max_packet_size
    (ValueError) is a fix too: the one chosen, sizes being u32 (batch
    columns), so every announced length above it is refused, saturated or not."""
    with pytest.raises(ValueError, match="max_packet_size"):
        fp.FrameDecoder(U64_LENGTH, max_packet_size=max_packet_size)
    dec = fp.FrameDecoder(U64_LENGTH, max_packet_size=fp.framing.MAX_PACKET_SIZE)
    with pytest.raises(fp.ProtocolError, match="exceeds max_packet_size"):
        dec.feed(struct.pack("<QH", announced, 1) + b"x" * 100)
    assert dec.pending == 0


def test_a_saturated_length_with_an_adjustment_is_not_an_error_below_max():
    """The same saturation the other way: with length_adjustment=-2**32 a
    length of 2**62 announces 2**62 - 2**32 bytes, under a max_packet_size of
    2**62 - 2**31, so the packet is incomplete, not too large."""
    layout = fp.HeaderLayout([("len", "u64"), ("type", "u16")], "len", length_adjustment=-2**32)
    with pytest.raises(ValueError, match="max_packet_size"):
        fp.FrameDecoder(layout, max_packet_size=2**62 - 2**31)
    # within the u32 limit the adjustment is applied before the comparison
    dec = fp.FrameDecoder(layout, max_packet_size=fp.framing.MAX_PACKET_SIZE)
    assert len(dec.feed(struct.pack("<QH", 2**32 + 100, 1))) == 0
    assert dec.pending == 10
    with pytest.raises(fp.ProtocolError, match="exceeds max_packet_size"):
        fp.FrameDecoder(layout, max_packet_size=fp.framing.MAX_PACKET_SIZE).feed(struct.pack("<QH", 2**62, 1))


@pytest.mark.parametrize("count", [0, 1, 2])
def test_by_type_of_a_batch_with_a_u64_type_field(count):
    """Found by fuzz_aggregator: a batch of at most one packet whose type
    field is a little-endian u64 raised ValueError("buffer source array is
    read-only") from by_type() (a typed memoryview of the read-only types
    column); fixed since empty and one-type batches skip the grouping."""
    layout = fp.HeaderLayout([("len", "u16"), ("type", "u64")], "len")
    batch = fp.FrameDecoder(layout).feed(fp.encode(7, b"abc", layout=layout) * count)
    groups = batch.by_type()
    assert list(groups) == ([7] if count else [])
    assert sum(len(g) for g in groups.values()) == count


def test_send_batch_refuses_a_batch_whose_length_counts_something_else():
    """Found by fuzz_sendbuf: two layouts with the same fields whose length
    field counts the payload in one and the whole packet in the other have
    equal dtypes, and send_batch relays a batch of one into a SendBuffer of
    the other: its peers then misframe the stream (two packets read back as
    one truncated packet)."""
    payload_only = fp.HeaderLayout([("len", "u16"), ("type", "u16")], "len", length_includes_header=False)
    whole = fp.HeaderLayout([("len", "u16"), ("type", "u16")], "len", length_includes_header=True)
    batch = fp.FrameDecoder(payload_only).feed(fp.encode(1, b"hello", layout=payload_only) +
                                               fp.encode(2, b"world!", layout=payload_only))
    with pytest.raises(ValueError, match="layout"):
        fp.SendBuffer(layout=whole).send_batch(batch)


def test_one_field_cannot_take_two_roles():
    """Found by fuzz_layout: with type_field and seq_field naming the same
    field, encode() writes the type and then overwrites it with the seq, so
    encode(7, b"", seq=0) sends type 0. Like the length field taking a role,
    such a layout should be refused."""
    with pytest.raises(ValueError):
        fp.HeaderLayout([("len", "u16"), ("a", "u32")], "len", type_field="a", seq_field="a")
