"""atheris target: HeaderLayout construction from fuzzed field lists and
arguments, then the layout at work.

The oracle for construction is the rule list of HeaderLayout's docstring
(what must raise ValueError, or TypeError for a field that is not a pair at
all); for an accepted layout, its size, struct format, numpy dtype, roles,
equality, hash and pickling, and packets encoded (fp.encode,
PacketBatch.build) and decoded (FrameDecoder) in it against the reference
encoder and decoder of tests/reference.py.

Input: a field count byte, per field a shape byte, a name byte and a kind
byte (indices into the pools below); then the length field, the length
counts the header flag, byte order, adjustment, three role fields and the
name (one byte each, indices into pools), then packet records (type u32,
seq u32, player_id u32, n u8, n payload bytes) for the round trip.
"""

from __future__ import annotations

import pickle
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import MAX_FUZZ_PACKET_SIZE, FuzzLayout, Reader, batch_rows, expect, fp, ref, run  # noqa: E402

NAMES: Tuple[Any, ...] = ("len", "size", "type", "seq", "player_id", "a", "b", "class", "", "1x", "a b",
                          "é", 5, None, "type", "len")
KINDS: Tuple[Any, ...] = ("u8", "u16", "u32", "u64", "u8", "u16", "u32", "u64", "u128", "i8", "U8", "", None, 8)
WIDTHS = {"u8": 1, "u16": 2, "u32": 4, "u64": 8}
BYTEORDERS: Tuple[Any, ...] = ("little", "big", "little", "big", "LITTLE", "native", None, "")
ADJUSTMENTS: Tuple[Any, ...] = (0, 0, 1, -1, 12, -12, 1 << 32, -(1 << 32), (1 << 32) + 1, 1.0, True, "0")
INCLUDES: Tuple[Any, ...] = (True, False, 1, 0, "yes", None)
MAX_HEADER = 64
MAX_FIELDS = 10
MAX_PACKETS = 16


def field_of(shape: int, name: Any, kind: Any) -> Any:
    if shape == 0:
        return 7  # not a pair at all
    if shape == 1:
        return (name, kind, "extra")
    if shape == 2:
        return [name, kind]
    if shape == 3:
        return (name,)
    return (name, kind)


def expected_error(fields: List[Any], length_field: Any, adjustment: Any, byteorder: Any,
                   roles: Dict[str, Any]) -> Optional[Type[BaseException]]:
    """HeaderLayout's documented rules, in words turned into code."""
    try:
        items = [tuple(f) for f in fields]
    except TypeError:
        return TypeError
    if not items:
        return ValueError
    names: List[Any] = []
    for f in items:
        if len(f) != 2:
            return ValueError
        name, kind = f
        if not isinstance(name, str) or not name.isidentifier() or kind not in WIDTHS or name in names:
            return ValueError
        names.append(name)
    if sum(WIDTHS[k] for _, k in items) > MAX_HEADER or length_field not in names:
        return ValueError
    if byteorder not in ("little", "big"):
        return ValueError
    if not isinstance(adjustment, int):  # 1.0 or "0": never truncated (issue 14 item 6)
        return TypeError
    if abs(adjustment) > 1 << 32:
        return ValueError
    chosen = []
    for role, given in roles.items():
        if given is not None and given not in names:
            return ValueError
        field = given if given is not None else role if role in names else None
        if field == length_field:
            return ValueError
        if field is not None:
            chosen.append(field)
    if len(set(chosen)) != len(chosen):
        return ValueError  # one field cannot hold two values
    return None


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    fields = []
    for _ in range(inp.u8() % MAX_FIELDS):
        shape, name, kind = inp.u8() % 8, NAMES[inp.u8() % len(NAMES)], KINDS[inp.u8() % len(KINDS)]
        fields.append(field_of(shape, name, kind))
    pick = inp.u8()
    pair_names = [f[0] for f in fields if isinstance(f, (tuple, list)) and len(f) >= 1]
    length_field = pair_names[pick % len(pair_names)] if pick < 0x80 and pair_names else NAMES[pick % len(NAMES)]
    includes = INCLUDES[inp.u8() % len(INCLUDES)]
    byteorder = BYTEORDERS[inp.u8() % len(BYTEORDERS)]
    adjustment = ADJUSTMENTS[inp.u8() % len(ADJUSTMENTS)]
    roles = {}
    for role in ("type", "seq", "player_id"):
        sel = inp.u8()
        roles[role] = None if sel < 0xA0 else NAMES[sel % len(NAMES)]
    label = None if inp.u8() & 1 else "X"
    want = expected_error(fields, length_field, adjustment, byteorder, roles)
    try:
        layout = fp.HeaderLayout(fields, length_field, includes, byteorder, length_adjustment=adjustment,
                                 type_field=roles["type"], seq_field=roles["seq"],
                                 player_id_field=roles["player_id"], name=label)
    except (ValueError, TypeError) as err:
        expect(want is not None and isinstance(err, want), "HeaderLayout refused what its rules allow", err, want,
               fields, length_field, byteorder, adjustment, roles)
        return
    expect(want is None, "HeaderLayout accepted what its rules refuse", want, fields, length_field, byteorder,
           adjustment, roles)
    check_layout(inp, layout, [tuple(f) for f in fields], length_field, bool(includes), byteorder, adjustment,
                 roles)


def check_layout(inp: Reader, layout: Any, fields: List[Tuple[str, str]], length_field: str, includes: bool,
                 byteorder: str, adjustment: int, roles: Dict[str, Any]) -> None:
    names = [n for n, _ in fields]
    chosen = {r: (g if g is not None else r if r in names else None) for r, g in roles.items()}
    order = "<" if byteorder == "little" else ">"
    expect(layout.size == sum(WIDTHS[k] for _, k in fields), "size", layout.size)
    expect(layout.struct_format == order + "".join("BHIQ"[list(WIDTHS).index(k)] for _, k in fields),
           "struct_format", layout.struct_format)
    dt = np.dtype({"names": names, "formats": [order + "u" + str(WIDTHS[k]) for _, k in fields]})
    expect(layout.dtype == dt and layout.dtype.itemsize == layout.size, "dtype", layout.dtype, dt)
    expect(tuple(layout.field_names) == tuple(names), "field_names", layout.field_names)
    expect(layout.roles == chosen, "roles", layout.roles, chosen)
    again = fp.HeaderLayout(fields, length_field, includes, byteorder, length_adjustment=adjustment,
                            type_field=roles["type"], seq_field=roles["seq"], player_id_field=roles["player_id"])
    expect(again == layout and hash(again) == hash(layout), "equal arguments, unequal layouts")
    expect(pickle.loads(pickle.dumps(layout)) == layout, "a pickled layout comes back different")

    # the same wire format under the reference's names: roles by name, the
    # length field "len", other fields f<i>
    role_of = {v: k for k, v in chosen.items() if v is not None}
    renamed = tuple(("len" if n == length_field else role_of.get(n, f"f{i}"), k) for i, (n, k) in enumerate(fields))
    model = ref.RefLayout(renamed, "len", includes, byteorder, adjustment)
    fl = FuzzLayout(layout, model)
    packets, want_stream = [], b""
    for _ in range(MAX_PACKETS):
        if not inp.remaining:
            break
        t, s, pid, payload = inp.u32(), inp.u32(), inp.u32(), inp.take(inp.u8())
        t, s, pid = (v & model.field_max(r) if r in role_of.values() else v
                     for v, r in ((t, "type"), (s, "seq"), (pid, "player_id")))
        try:
            want_packet: Optional[bytes] = ref.encode_packet(model, t, payload, s, pid)
        except Exception:  # struct.error: the length cannot be represented
            want_packet = None
        if chosen["type"] is None:
            want_packet = None
        try:
            got = fp.encode(t, payload, seq=s, player_id=pid, layout=layout)
        except ValueError as err:
            expect(want_packet is None, "encode() refused a packet the reference encodes", err, t, s, pid)
            continue
        expect(got == want_packet, "encode() differs from the reference", got, want_packet)
        packets.append((t, s, pid, payload))
        want_stream += got
    if not packets:
        return
    built = fp.PacketBatch.build([p[0] for p in packets], [p[3] for p in packets], seqs=[p[1] for p in packets],
                                 player_ids=[p[2] for p in packets], layout=layout)
    expect(built.to_bytes() == want_stream, "PacketBatch.build differs from encode()")
    decoded, bad, tail = ref.decode_stream(model, want_stream, MAX_FUZZ_PACKET_SIZE)
    expect(bad is None and tail == 0, "the reference cannot decode its own packets")
    batch = fp.FrameDecoder(layout, max_packet_size=MAX_FUZZ_PACKET_SIZE).feed(want_stream)
    rows = batch_rows(batch, fl)
    expect(rows == [tuple(d[n] for n, _ in renamed) + (d["payload"],) for d in decoded], "decoded rows differ")
    for p, (t, s, pid, _), row in zip(batch, packets, rows):
        # a role the layout lacks raises AttributeError (the accessors are typed int)
        got_roles = tuple(getattr(p, r, None) for r in ("type", "seq", "player_id"))
        want_roles = tuple(v if chosen[r] is not None else None
                           for v, r in ((t, "type"), (s, "seq"), (pid, "player_id")))
        expect(got_roles == want_roles, "Packet role values", got_roles, want_roles)
        expect(p.header == dict(zip(names, row[:-1])), "Packet.header", p.header, row)
    for i, n in enumerate(names):
        expect(batch.field(n).tolist() == [r[i] for r in rows], "batch.field column", n)


if __name__ == "__main__":
    run(test_one_input)
