"""atheris target: SendBuffer operation sequences (send, broadcast,
send_batch, flush, should_flush, next_seq, clear) against a model written
from its documentation (fastpacket/sendbuf.py, DESIGN.md):

- packets are encoded by the reference encoder (tests/reference.py) and
  queued whole, back to back; consecutive automatic seqs wrapping at the
  seq field's width, a given seq leaving the counter alone;
- a call that fails changes nothing; when several of its failures apply
  (no room now -> BufferFull, never fits or a value that does not fit its
  field -> ValueError, a bad argument -> TypeError/ValueError) any of them
  may be the one raised;
- send_batch relays a batch byte for byte, all or nothing, and only a
  batch of the buffer's own layout;
- flush() returns exactly the queued bytes, and a flushed view stays
  intact while it is held, whatever is sent and flushed after it.

Input: a config byte (bit 0: a layout descriptor follows, else GAME; bit
1: max_bytes = header + u8 rather than header + u16), [descriptor], the
max_bytes argument, then operations (op byte and arguments, see OPS).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, List, Optional, Sequence, Set, Tuple, Type

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import (  # noqa: E402
    ANY_PACKET_SIZE, U64_END, FuzzLayout, Reader, encode_packet, expect, fp, read_layout, ref, run,
)

MAX_OPS = 300
(OP_SEND, OP_BROADCAST, OP_SEND_BATCH, OP_FLUSH, OP_SHOULD_FLUSH, OP_NEXT_SEQ, OP_CLEAR, OP_RELEASE,
 OP_CHECK) = range(9)
OPS = 9
#: Argument values outside every field: negative, past u64, not an int
#: (a float is never truncated: TypeError).
BAD_INTS: Tuple[Any, ...] = (-1, U64_END, "7", 1.5)
RATIOS = (0.0, 0.5, 0.8, 1.0, 2.0, -1.0, math.inf, math.nan)
ID_DTYPES = ("list", "tuple", "u1", "u2", "u4", "u8", "i1", "i2", "i4", "i8", ">u1", ">u4", "f8", "2d")
ArgErrors = (TypeError, ValueError)  # never OverflowError: out of range is a ValueError naming the argument
#: A bug found here, fixed since: send_batch() accepted a batch of another
#: layout with the same dtype (one whose length counts something else), so
#: the relayed bytes were misframed by the buffer's peers
#: (tests/test_fuzz_regressions.py). True would step around it again.
KNOWN_SAME_DTYPE_BUG = False


class SendSpec:
    def __init__(self, fl: FuzzLayout, max_bytes: int) -> None:
        self.fl = fl
        self.max = max_bytes
        self.queued: List[bytes] = []
        self.next_seq = 0
        self.seq_max = fl.ref.field_max("seq") if "seq" in fl.names else 0

    @property
    def nbytes(self) -> int:
        return sum(len(p) for p in self.queued)

    def fits(self, name: str, value: int) -> bool:
        return name not in self.fl.names or value <= self.fl.ref.field_max(name)

    def type_errors(self, t: Optional[int], value: bool = True) -> Set[Type[BaseException]]:
        """Errors of the type argument alone: an int on a layout with a type
        field (TypeError for None), None on one without (ValueError for an
        int: the payload is framed alone); with `value`, an int too large
        for the field (checked when a header is encoded, beside the room)."""
        if "type" not in self.fl.names:
            return set() if t is None else {ValueError}
        if t is None:
            return {TypeError}
        return set() if not value or self.fits("type", t) else {ValueError}

    def encode_errors(self, t: Optional[int], payload_len: int) -> Set[Type[BaseException]]:
        """Errors of a header for `payload_len` bytes of type `t`, values aside."""
        frame = self.fl.hs + payload_len
        length = self.fl.ref.length_value(frame)
        out = self.type_errors(t)
        if not 0 <= length <= self.fl.ref.field_max(self.fl.ref.length_field):
            out.add(ValueError)
        return out

    def room_errors(self, nbytes: int) -> Set[Type[BaseException]]:
        if nbytes > self.max:
            return {ValueError}
        if nbytes > self.max - self.nbytes:
            return {fp.BufferFull}
        return set()


def int_arg(inp: Reader, wide: bool = True) -> Any:
    """A u32 (u64 when wide and asked), or now and then a bad value."""
    sel = inp.u8()
    if sel >= 0xFC:
        return BAD_INTS[sel & 3]
    v = inp.u32()
    if wide and sel & 1:
        v |= inp.u32() << 32
    return v


def type_arg(inp: Reader, fl: FuzzLayout) -> Any:
    """A packet type argument: int_arg, or None now and then (what a layout
    without a type field takes)."""
    return None if inp.u8() & 1 else int_arg(inp)


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    cfg = inp.u8()
    fl = read_layout(inp) if cfg & 1 else FuzzLayout(fp.GAME, ref.GAME)
    max_bytes = fl.hs + (inp.u8() if cfg >> 1 & 1 else inp.u16())
    sb = fp.SendBuffer(max_bytes=max_bytes, layout=fl.native)
    spec = SendSpec(fl, max_bytes)
    held: List[Tuple[memoryview, bytes]] = []
    try:
        for _ in range(MAX_OPS):
            if not inp.remaining:
                break
            step(inp, sb, spec, held)
            expect((len(sb), sb.nbytes, sb.free, sb.next_seq) ==
                   (len(spec.queued), spec.nbytes, max_bytes - spec.nbytes, spec.next_seq),
                   "len/nbytes/free/next_seq disagree", (len(sb), sb.nbytes, sb.free, sb.next_seq),
                   (len(spec.queued), spec.nbytes, max_bytes - spec.nbytes, spec.next_seq))
        check_held(held)
        last = sb.flush()
        expect(bytes(last) == b"".join(spec.queued), "the last flush differs")
    finally:
        for mv, _ in held:
            mv.release()


def check_held(held: Sequence[Tuple[memoryview, bytes]]) -> None:
    for mv, want in held:
        expect(bytes(mv) == want, "a held flush() view changed", bytes(mv), want)


def attempt(call: Any, allowed: Set[Type[BaseException]], sb: Any, spec: SendSpec) -> Tuple[bool, Any]:
    """Runs `call`; (True, result) on success, else checks that the error was
    allowed and that nothing changed."""
    before = (len(sb), sb.nbytes, sb.next_seq)
    try:
        return True, call()
    except Exception as err:  # checked just below
        expect(any(isinstance(err, e) for e in allowed), "an error nothing explains", err, allowed)
        expect((len(sb), sb.nbytes, sb.next_seq) == before, "a failed call changed the buffer", before)
        return False, err


def step(inp: Reader, sb: Any, spec: SendSpec, held: List[Tuple[memoryview, bytes]]) -> None:
    fl = spec.fl
    op = inp.u8() % OPS
    if op == OP_SEND:
        t, pid = type_arg(inp, fl), int_arg(inp)
        seq_sel = inp.u8()
        seq: Optional[Any] = None if seq_sel & 1 else int_arg(inp)
        payload = inp.take(inp.u8())
        buf = bytearray(payload) if seq_sel & 2 else payload
        if not all(isinstance(v, int) and 0 <= v < U64_END
                   for v in (() if t is None else (t,)) + (pid,) + ((seq,) if seq is not None else ())):
            ok, _ = attempt(lambda: sb.send(t, buf, player_id=pid, seq=seq), set(ArgErrors), sb, spec)
            expect(not ok, "send() took a bad argument", t, pid, seq)
            return
        used = spec.next_seq if seq is None else seq
        errors = spec.room_errors(fl.hs + len(payload)) | spec.encode_errors(t, len(payload))
        if not spec.fits("seq", used) or not spec.fits("player_id", pid):
            errors.add(ValueError)
        ok, got = attempt(lambda: sb.send(t, buf, player_id=pid, seq=seq), errors, sb, spec)
        if ok:
            expect(not errors, "send() succeeded where the model fails", errors, t, pid, seq, len(payload))
            expect(got == used, "send() returned another seq", got, used)
            spec.queued.append(ref.encode_packet(fl.ref, 0 if t is None else t, payload, used, pid))
            if seq is None:
                spec.next_seq = (spec.next_seq + 1) & spec.seq_max
    elif op == OP_BROADCAST:
        t = type_arg(inp, fl)
        payload = inp.take(inp.u8())
        kind = ID_DTYPES[inp.u8() % len(ID_DTYPES)]
        raw_ids = [int_arg(inp, wide=False) for _ in range(inp.u8() % 24)]
        broadcast(sb, spec, t, payload, kind, raw_ids)
    elif op == OP_SEND_BATCH:
        send_batch(inp, sb, spec)
    elif op == OP_FLUSH:
        keep = inp.u8()
        mv = sb.flush()
        want = b"".join(spec.queued)
        expect(bytes(mv) == want and mv.readonly, "flush() returned other bytes", bytes(mv), want)
        spec.queued = []
        if keep & 1:
            held.append((mv, want))
        else:
            mv.release()
    elif op == OP_SHOULD_FLUSH:
        n = inp.u16()
        min_packets = n - (1 << 16) if n >= 1 << 15 else n
        sel = inp.u8()
        ratio = RATIOS[sel % len(RATIOS)] if sel < 128 else (sel - 128) / 100
        count = len(spec.queued)
        if min_packets < 0 or not 0.0 <= ratio <= 1.0:  # NaN included: a ValueError naming the argument
            ok, err = attempt(lambda: sb.should_flush(min_packets, ratio), {ValueError}, sb, spec)
            expect(not ok and ("min_packets" in str(err) or "fill_ratio" in str(err)),
                   "should_flush took an argument out of range", min_packets, ratio)
            return
        want = count > 0 and (count >= min_packets or float(spec.nbytes) >= ratio * float(spec.max))
        expect(sb.should_flush(min_packets, ratio) == want, "should_flush disagrees", min_packets, ratio,
               count, spec.nbytes)
    elif op == OP_NEXT_SEQ:
        v = int_arg(inp)
        good = isinstance(v, int) and 0 <= v <= spec.seq_max

        def set_seq() -> None:
            sb.next_seq = v

        ok, _ = attempt(set_seq, set() if good else set(ArgErrors), sb, spec)
        if ok:
            spec.next_seq = v
    elif op == OP_CLEAR:
        sb.clear()
        spec.queued = []
    elif op == OP_RELEASE:
        pick = inp.u8()
        if held:
            held.pop(pick % len(held))[0].release()
    else:
        check_held(held)


def broadcast(sb: Any, spec: SendSpec, t: Any, payload: bytes, kind: str, raw_ids: List[Any]) -> None:
    fl = spec.fl
    errors: Set[Type[BaseException]] = set()
    if kind in ("list", "tuple"):
        ids: Any = raw_ids if kind == "list" else tuple(raw_ids)
        values = raw_ids
        for v in raw_ids:
            if not isinstance(v, int):
                errors.add(TypeError)
            elif not 0 <= v < U64_END:
                errors.add(ValueError)
    else:
        u64 = np.array([v % U64_END if isinstance(v, int) else 7 for v in raw_ids], dtype=np.uint64)
        if kind == "2d":
            ids = u64.reshape(len(u64), 1)
            values = [int(v) for v in ids.ravel().tolist()]
            errors.add(ValueError)  # a one-dimensional buffer is required
        else:
            ids = u64.astype(kind)  # wraps into the kind's range
            values = [int(v) for v in ids.tolist()]
            if kind in ("f8", ">u4"):  # only integer buffers in native or little-endian order
                errors.add(TypeError)
    if "player_id" not in fl.names:
        errors.add(ValueError)
    if t is not None and not (isinstance(t, int) and 0 <= t < U64_END):
        # a layout without a type field wants None; then a float is a TypeError, never truncated
        errors.add(TypeError if isinstance(t, (float, str)) and fl.type_at is not None else ValueError)
    else:
        errors |= spec.type_errors(t, value=False)  # checked early, whatever the count
    count = len(values)
    if count and not errors:
        frame = fl.hs + len(payload)
        errors |= spec.room_errors(frame * count) | spec.encode_errors(t, len(payload))
        if any(not isinstance(v, int) or v < 0 or not spec.fits("player_id", v) for v in values):
            errors.add(ValueError)
    ok, got = attempt(lambda: sb.broadcast(t, payload, ids), errors, sb, spec)
    if ok:
        expect(not errors, "broadcast() succeeded where the model fails", errors, kind, values)
        expect(got == spec.next_seq, "broadcast() returned another first seq", got, spec.next_seq)
        for v in values:
            spec.queued.append(ref.encode_packet(fl.ref, 0 if t is None else t, payload, spec.next_seq, v))
            spec.next_seq = (spec.next_seq + 1) & spec.seq_max


def batch_layout(fl: FuzzLayout, sel: int) -> Any:
    """The layout a relayed batch was decoded in: the buffer's own, an equal
    copy, one that differs only in what the length counts, or GAME."""
    if sel == 0:
        return fl.native
    includes = fl.ref.length_includes_header if sel == 1 else not fl.ref.length_includes_header
    if sel == 3:
        return fp.GAME
    return fp.HeaderLayout(list(fl.ref.fields), fl.ref.length_field, includes, fl.ref.byteorder,
                           length_adjustment=fl.ref.length_adjustment)


def send_batch(inp: Reader, sb: Any, spec: SendSpec) -> None:
    fl = spec.fl
    sel, shape = inp.u8() % 4, inp.u8()
    if sel == 2 and KNOWN_SAME_DTYPE_BUG:
        return
    layout = batch_layout(fl, sel)
    other = fl if layout == fl.native else None
    packets: List[bytes] = []
    for _ in range(inp.u8() % 16):
        t, s, pid, n = inp.u16(), inp.u16(), inp.u8(), inp.u8()
        p = encode_packet(fl, t, inp.take(n), s, pid)
        if p is not None:
            packets.append(p)
    # decoded in `layout`, which frames the same bytes only when it is fl's
    if other is None:
        try:
            stream = b"".join(fp.encode(1, b"x" * (i % 5), layout=layout) for i in range(len(packets)))
        except ValueError:  # a layout that cannot encode these: an empty batch of it
            stream = b""
        batch = fp.FrameDecoder(layout, max_packet_size=ANY_PACKET_SIZE).feed(stream)
        wire = [batch[i].to_bytes() for i in range(len(batch))]
    else:
        batch = fp.FrameDecoder(layout, max_packet_size=ANY_PACKET_SIZE).feed(b"".join(packets))
        wire = packets
    if shape & 1:
        batch, wire = batch[::2], wire[::2]  # not back to back: copied run by run
    # like socket.send: as many whole packets of batch[start:] as fit now
    start = min(shape >> 1 & 3, len(wire))
    rest = wire[start:]
    errors: Set[Type[BaseException]] = set()
    fit = 0
    if other is None or any(len(p) > spec.max for p in rest):
        errors.add(ValueError)
    else:
        free = spec.max - spec.nbytes
        while fit < len(rest) and len(rest[fit]) <= free:
            free -= len(rest[fit])
            fit += 1
        if rest and fit == 0:
            errors.add(fp.BufferFull)
    ok, got = attempt(lambda: sb.send_batch(batch, start), errors, sb, spec)
    if ok:
        expect(not errors, "send_batch() succeeded where the model fails", errors, layout, fl.native)
        expect(got == fit, "send_batch() queued another number of packets", got, fit)
        spec.queued.extend(rest[:fit])


if __name__ == "__main__":
    run(test_one_input)
