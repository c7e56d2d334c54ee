"""What the atheris targets share: the reference models, the input format,
fuzzed header layouts, a stream builder and the run loop.

The stream and aggregate oracles are the pure-Python reference models of
tests/ (reference.py, reference_aggregate.py: written from DESIGN.md,
independently of the native code), loaded by path so that no other
installed package called ``tests`` can shadow them. The ring and send
buffer targets carry their own models (tests/reference_buffers.py knows
neither pinned views nor layouts other than GAME).

Inputs are read by a small Reader rather than atheris' FuzzedDataProvider:
its format is fixed and documented here, so fuzz/make_corpus.py can write
seeds (valid streams, aggregates, malformed cases) with the matching Writer.
A Reader past the end of its input reads zeros and empty byte strings.

Run a target with atheris installed (python fuzz/atheris/fuzz_feed.py
[libFuzzer flags] [corpus dirs]); without atheris, or with
FASTPACKET_FUZZ_REPLAY=1 in the environment, the arguments are files or
directories of inputs that are replayed once through the oracle.
"""

from __future__ import annotations

import gc
import importlib.util
import os
import struct
import sys
from pathlib import Path
import types
from types import ModuleType
from typing import Any, Callable, List, Optional, Sequence, Tuple

if os.environ.get("FASTPACKET_FUZZ_REPLAY"):
    atheris = None  # replay only (tests/test_fuzz_corpus.py): no instrumentation
else:
    try:
        import atheris
    except ImportError:  # replay mode: run the oracles over given inputs
        atheris = None

if atheris is not None:
    # Python-level coverage of the package (its argument checks, layout
    # validation, the aio/Python halves); the native module is covered only
    # when built with -fsanitize=fuzzer-no-link (see README, Fuzzing).
    with atheris.instrument_imports(include=["fastpacket"]):
        import fastpacket as fp
else:
    import fastpacket as fp

REPO = Path(__file__).resolve().parents[2]


def _load_reference(name: str) -> ModuleType:
    path = REPO / "tests" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"fastpacket_fuzz_{name}", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the reference model {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


ref = _load_reference("reference")
ref_agg = _load_reference("reference_aggregate")

AGGREGATE_TYPE = 0xFFFF
AGG_HEADER = struct.Struct("<BBHI")  # codec, flags, count, raw_size (DESIGN.md)
#: Values past this saturate in the native length reader (layout.hpp); the
#: error it reports for such a header carries this as the size.
LENGTH_SATURATION = 1 << 62
#: Largest max_packet_size a FrameDecoder takes (sizes are u32); a larger
#: one is refused with ValueError, which the targets check (a u64 length
#: past it, saturated or not, is then always a ProtocolError).
MAX_FUZZ_PACKET_SIZE = fp.framing.MAX_PACKET_SIZE
#: A max_packet_size (bytes) for decoding streams a target built itself:
#: above every packet they hold, the limit is not what is tested there.
ANY_PACKET_SIZE = fp.framing.MAX_PACKET_SIZE
#: One past the largest unsigned 64-bit argument.
U64_END = 1 << 64
#: Corruption parameters (u8) are read as signed deltas around this.
DELTA_ZERO = 128


class OracleMismatch(AssertionError):
    """fastpacket disagreed with the reference model."""


def expect(condition: object, what: str, *details: object) -> None:
    """Raise OracleMismatch(what, details) unless `condition` (not an
    assert: it must hold under python -O too)."""
    if not condition:
        raise OracleMismatch(what + "".join(f"\n  {d!r}" for d in details))


# -- the input format -----------------------------------------------------------

class Reader:
    """Reads a fuzz input front to back; zeros and b"" once it runs out."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out

    def uint(self, nbytes: int) -> int:
        return int.from_bytes(self.take(nbytes).ljust(nbytes, b"\0"), "little")

    def u8(self) -> int:
        return self.uint(1)

    def u16(self) -> int:
        return self.uint(2)

    def u32(self) -> int:
        return self.uint(4)

    def i16(self) -> int:
        v = self.u16()
        return v - (1 << 16) if v >= 1 << 15 else v

    def rest(self) -> bytes:
        return self.take(self.remaining)


class Writer:
    """The inverse of Reader, for seeds."""

    def __init__(self) -> None:
        self.out = bytearray()

    def uint(self, value: int, nbytes: int) -> "Writer":
        self.out += (value % (1 << (8 * nbytes))).to_bytes(nbytes, "little")
        return self

    def u8(self, v: int) -> "Writer":
        return self.uint(v, 1)

    def u16(self, v: int) -> "Writer":
        return self.uint(v, 2)

    def u32(self, v: int) -> "Writer":
        return self.uint(v, 4)

    def raw(self, b: bytes) -> "Writer":
        self.out += b
        return self

    def bytes(self) -> bytes:
        return bytes(self.out)


# -- fuzzed header layouts --------------------------------------------------------
#
# Descriptor: byte 0 = (nfields - 1) in bits 0-2, big-endian bit 3, length
# includes header bit 4, length field index (mod nfields) bits 5-7; then one
# byte per field: kind in bits 0-1 (u8 u16 u32 u64), role in bits 2-3 (none,
# type, seq, player_id; ignored for the length field and for a role already
# taken); then length_adjustment as an i16. fuzz/libfuzzer reads the same.

KINDS = ("u8", "u16", "u32", "u64")
ROLES = (None, "type", "seq", "player_id")
MAX_FIELDS = 8


class FuzzLayout:
    """One layout twice: the native HeaderLayout and the reference's RefLayout."""

    def __init__(self, native: Any, model: Any) -> None:
        self.native = native
        self.ref = model
        self.names = [n for n, _ in model.fields]
        self.hs = model.size
        self.length_at = self.names.index(model.length_field)
        self.type_at = self.names.index("type") if "type" in self.names else None

    @property
    def carries_aggregates(self) -> bool:
        return self.type_at is not None and self.ref.field_max("type") >= AGGREGATE_TYPE

    def announced(self, header_values: Sequence[int]) -> int:
        """The frame size a header announces, as the native decoder reports it."""
        raw = header_values[self.length_at]
        return LENGTH_SATURATION if raw >= LENGTH_SATURATION else self.ref.frame_size(raw)

    def wire(self, row: Tuple[Any, ...]) -> bytes:
        """A (header values..., payload) row back on the wire."""
        return self.ref.struct.pack(*row[:-1]) + row[-1]

    def row(self, packet: bytes) -> Tuple[Any, ...]:
        return tuple(self.ref.struct.unpack_from(packet)) + (bytes(packet[self.hs:]),)


GAME_DESCRIPTOR = bytes([0x13, 0x01, 0x05, 0x0A, 0x0E, 0x00, 0x00])


def layout_descriptor(kinds: Sequence[str], roles: Sequence[Optional[str]], length_index: int,
                      big_endian: bool = False, includes_header: bool = True, adjustment: int = 0) -> bytes:
    """The descriptor bytes of a layout (for seeds)."""
    head = (len(kinds) - 1) | (big_endian << 3) | (includes_header << 4) | (length_index << 5)
    fields = [KINDS.index(k) | (ROLES.index(r) << 2) for k, r in zip(kinds, roles)]
    return bytes([head, *fields]) + (adjustment % (1 << 16)).to_bytes(2, "little")


def read_layout(inp: Reader) -> FuzzLayout:
    start = inp.pos
    head = inp.u8()
    n = (head & 7) + 1
    big = bool(head >> 3 & 1)
    includes = bool(head >> 4 & 1)
    length_index = (head >> 5) % n
    fields: List[Tuple[str, str]] = []
    taken = set()
    for i in range(n):
        b = inp.u8()
        kind = KINDS[b & 3]
        role = ROLES[b >> 2 & 3]
        if i == length_index:
            name = "len"
        elif role is not None and role not in taken:
            name = role
            taken.add(role)
        else:
            name = f"f{i}"
        fields.append((name, kind))
    adjustment = inp.i16()
    if inp.data[start:inp.pos] == GAME_DESCRIPTOR:
        return FuzzLayout(fp.GAME, ref.GAME)  # the default object itself
    byteorder = "big" if big else "little"
    native = fp.HeaderLayout(fields, "len", includes, byteorder, length_adjustment=adjustment)
    model = ref.RefLayout(tuple(fields), "len", includes, byteorder, adjustment)
    return FuzzLayout(native, model)


# -- building streams from records -------------------------------------------------
#
# A built stream is a list of records, each starting with an op byte:
#   RAW:        n u8, n bytes                        (copied as they are)
#   PACKET:     type u16, seq u16, player_id u8, n u8, n payload bytes
#   BAD_LENGTH: value u32 (bit 0 set: a second u32 above it), then a PACKET's
#               fields; the packet's header with its length field replaced
#   AGGREGATE:  spec u8 (codec bits 0-1, 3 = the next byte is the codec;
#               corruption bits 2-4; inner packet count bits 5-7), the inner
#               PACKETs, seq u8, player_id u8, corruption parameter u8
# Values are reduced to their field's width; a record whose length cannot be
# represented in the layout is dropped.

OP_RAW, OP_PACKET, OP_BAD_LENGTH, OP_AGGREGATE = range(4)
(CORRUPT_NONE, CORRUPT_RAW_SIZE, CORRUPT_COUNT, CORRUPT_FLAGS, CORRUPT_FLIP, CORRUPT_TRUNCATE,
 CORRUPT_NESTED, CORRUPT_TRAILING) = range(8)


def _masked(fl: FuzzLayout, name: str, value: int) -> int:
    return value & fl.ref.field_max(name) if name in fl.names else value


def _packet_fields(inp: Reader) -> Tuple[int, int, int, bytes]:
    t, s, pid, n = inp.u16(), inp.u16(), inp.u8(), inp.u8()
    return t, s, pid, inp.take(n)


def encode_packet(fl: FuzzLayout, t: int, payload: bytes, s: int = 0, pid: int = 0) -> Optional[bytes]:
    """The packet through the reference encoder, values reduced to their
    fields; None when its size cannot be represented."""
    try:
        return ref.encode_packet(fl.ref, _masked(fl, "type", t), payload, _masked(fl, "seq", s),
                                 _masked(fl, "player_id", pid))
    except struct.error:
        return None


def build_aggregate(fl: FuzzLayout, inp: Reader) -> bytes:
    """One AGGREGATE record (after its op byte) as a frame, b"" if the layout
    cannot carry it."""
    spec = inp.u8()
    codec = spec & 3
    if codec == 3:
        codec = inp.u8()
    corruption = spec >> 2 & 7
    inner = []
    for _ in range(spec >> 5):
        t, s, pid, payload = _packet_fields(inp)
        p = encode_packet(fl, t, payload, s, pid)
        if p is not None:
            inner.append(p)
    seq, pid, param = inp.u8(), inp.u8(), inp.u8()
    if not fl.carries_aggregates:
        return b""
    if corruption == CORRUPT_NESTED:
        nested = aggregate_frame(fl, [inner[0]] if inner else [], 0)
        if nested is None:
            return b""
        inner.insert(param % (len(inner) + 1), nested)
    body = b"".join(inner)
    count, raw_size, flags = len(inner), len(body), 0
    on_wire = ref_agg.ref_compress(codec, body) if codec in (1, 2) else body
    if corruption == CORRUPT_RAW_SIZE:
        raw_size = (raw_size + param - DELTA_ZERO) % (1 << 32)
    elif corruption == CORRUPT_COUNT:
        count = (count + param - DELTA_ZERO) % (1 << 16)
    elif corruption == CORRUPT_FLAGS:
        flags = param | 1
    elif corruption == CORRUPT_FLIP and on_wire:
        i = param % len(on_wire)
        on_wire = on_wire[:i] + bytes([on_wire[i] ^ (inp.u8() | 1)]) + on_wire[i + 1:]
    elif corruption == CORRUPT_TRUNCATE:
        on_wire = on_wire[:len(on_wire) - param % (len(on_wire) + 1)]
    elif corruption == CORRUPT_TRAILING:
        on_wire += inp.take(param % 16)
    frame = encode_packet(fl, AGGREGATE_TYPE, AGG_HEADER.pack(codec % 256, flags, count, raw_size) + on_wire,
                          seq, pid)
    return frame or b""


def aggregate_frame(fl: FuzzLayout, packets: Sequence[bytes], codec: int, seq: int = 0,
                    pid: int = 0) -> Optional[bytes]:
    """A well-formed aggregate frame of `packets` in layout `fl` (None when
    the layout cannot carry it)."""
    body = b"".join(packets)
    on_wire = ref_agg.ref_compress(codec, body) if codec else body
    return encode_packet(fl, AGGREGATE_TYPE, AGG_HEADER.pack(codec, 0, len(packets), len(body)) + on_wire,
                         seq, pid)


def build_stream(fl: FuzzLayout, inp: Reader, aggregates: bool) -> bytes:
    out = bytearray()
    while inp.remaining:
        op = inp.u8() % (4 if aggregates else 3)
        if op == OP_RAW:
            out += inp.take(inp.u8())
        elif op == OP_PACKET:
            t, s, pid, payload = _packet_fields(inp)
            out += encode_packet(fl, t, payload, s, pid) or b""
        elif op == OP_BAD_LENGTH:
            value = inp.u32()
            if value & 1:
                value |= inp.u32() << 32
            t, s, pid, payload = _packet_fields(inp)
            p = encode_packet(fl, t, payload, s, pid)
            if p is not None:
                values = list(fl.ref.struct.unpack_from(p))
                values[fl.length_at] = value & fl.ref.field_max(fl.ref.length_field)
                out += fl.ref.struct.pack(*values) + payload
        else:
            out += build_aggregate(fl, inp)
    return bytes(out)


class StreamWriter(Writer):
    """Writes built-stream records (for seeds)."""

    def packet(self, t: int, payload: bytes, seq: int = 0, pid: int = 0) -> "StreamWriter":
        self.u8(OP_PACKET).u16(t).u16(seq).u8(pid).u8(len(payload)).raw(payload)
        return self

    def raw_bytes(self, b: bytes) -> "StreamWriter":
        self.u8(OP_RAW).u8(len(b)).raw(b)
        return self

    def bad_length(self, value: int, t: int = 1, payload: bytes = b"") -> "StreamWriter":
        self.u8(OP_BAD_LENGTH).u32(value | (1 if value >= 1 << 32 else 0))
        if value >= 1 << 32:
            self.u32(value >> 32)
        self.u16(t).u16(0).u8(0).u8(len(payload)).raw(payload)
        return self

    def aggregate(self, codec: int, packets: Sequence[Tuple[int, bytes]], corruption: int = CORRUPT_NONE,
                  param: int = 0, seq: int = 0, pid: int = 0, op: bool = True) -> "StreamWriter":
        """An AGGREGATE record (without its op byte when not `op`: the
        form fuzz_aggregator reads)."""
        if op:
            self.u8(OP_AGGREGATE)
        self.u8((min(codec, 3)) | (corruption << 2) | (len(packets) << 5))
        if codec >= 3:
            self.u8(codec)
        for i, (t, payload) in enumerate(packets):
            self.u16(t).u16(i).u8(i).u8(len(payload)).raw(payload)
        self.u8(seq).u8(pid).u8(param)
        if corruption == CORRUPT_FLIP:
            self.u8(0x5A)
        return self


# -- batches as rows ------------------------------------------------------------------

def batch_rows(batch: Any, fl: FuzzLayout) -> List[Tuple[Any, ...]]:
    """A PacketBatch as (header values..., payload) rows, checking that its
    columns, Packet objects and to_bytes() agree with each other."""
    rows = [tuple(h) + (bytes(batch.payload(i)),) for i, h in enumerate(batch.headers.tolist())]
    expect(len(batch) == len(rows), "len(batch) disagrees with its headers", len(batch), len(rows))
    expect(batch.to_bytes() == b"".join(fl.wire(r) for r in rows), "batch.to_bytes() is not its packets")
    expect(batch.sizes.tolist() == [fl.hs + len(r[-1]) for r in rows], "batch.sizes disagree with payloads")
    if fl.type_at is not None:
        expect(batch.types.tolist() == [r[fl.type_at] for r in rows], "batch.types disagree with headers")
    for p, r in zip(batch, rows):
        expect(bytes(p.payload) == r[-1] and p.size == fl.hs + len(r[-1]), "Packet disagrees with its row", r)
        # a layout without a type field: Packet.type raises AttributeError (typed int where it exists)
        got_type = getattr(p, "type", None)
        expect(got_type == (r[fl.type_at] if fl.type_at is not None else None), "Packet.type", got_type, r)
    return rows


# -- lz4 paths ------------------------------------------------------------------------

# The binding calls liblz4 directly where it can and lz4.block otherwise; a
# private switch selects the path. Looked up defensively: if it is renamed,
# the targets still run (on the default path) and say so once.
_lz4_switch: Optional[Callable[[bool], bool]] = getattr(getattr(fp, "_native", None), "_use_lz4_direct", None)
if _lz4_switch is None:
    print("fuzz: no lz4 path switch found; fuzzing the default lz4 path only", file=sys.stderr)


def use_lz4_direct(direct: bool) -> bool:
    """Selects the lz4 path where possible; returns whether liblz4 is now
    called directly (assumed, without the switch: the binding's default)."""
    return bool(_lz4_switch(direct)) if _lz4_switch is not None else True


# -- running -------------------------------------------------------------------------

def _inputs(paths: Sequence[str]) -> List[Path]:
    out: List[Path] = []
    for p in map(Path, paths):
        out.extend(sorted(q for q in p.iterdir() if q.is_file()) if p.is_dir() else [p])
    return out


def _instrument_oracles() -> None:
    """Coverage of the targets and the reference models guides atheris too:
    without a fuzzer-instrumented native build the decoders' branches are
    invisible to it, but the reference's branches (which check failed,
    which record was built) are the same decisions seen from the spec."""
    ours = {"__main__", __name__, "_streams", ref.__name__, ref_agg.__name__}
    for obj in gc.get_objects():
        if isinstance(obj, types.FunctionType) and getattr(obj, "__module__", None) in ours:
            atheris.instrument_func(obj)


def run(test_one_input: Callable[[bytes], None]) -> None:
    """atheris.Fuzz() over `test_one_input`, or, without atheris, one replay
    of every input file named on the command line (files or directories)."""
    if atheris is not None:
        _instrument_oracles()
        atheris.Setup(sys.argv, test_one_input)
        atheris.Fuzz()
        return
    files = _inputs([a for a in sys.argv[1:] if not a.startswith("-")])
    for f in files:
        test_one_input(f.read_bytes())
    print(f"replayed {len(files)} inputs through {Path(sys.argv[0]).name}: no mismatch")

