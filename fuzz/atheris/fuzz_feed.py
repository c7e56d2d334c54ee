"""atheris target: FrameDecoder.feed / feed_from over fuzzed layouts and
streams, checked feed by feed against the reference decoder.

Input: a layout descriptor (see _fuzzlib), a config byte (bits 0-1: how
max_packet_size is chosen; bits 2-4: how chunks are delivered, see
_streams; bit 5: the stream is built from records rather than taken raw),
the max_packet_size argument when the config asks for one, a cut count
(u8, up to MAX_CUTS) and that many u16 cut positions, then the stream (raw
bytes, or records).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import MAX_FUZZ_PACKET_SIZE, Reader, build_stream, expect, fp, read_layout, ref, run  # noqa: E402
from _streams import DELIVERIES, expected_for, run_stream  # noqa: E402

#: Most chunk boundaries one input asks for.
MAX_CUTS = 32
(MAX_LAYOUT_FRAME, MAX_HEADER_PLUS_U16, MAX_HEADER_PLUS_U8, MAX_ANY_U32) = range(4)
#: The largest max_packet_size tried: what a u64 length field announces
#: (past MAX_FUZZ_PACKET_SIZE: refused, which is checked).
MAX_TRIED = (1 << 64) - 1


def choose_max_packet_size(inp: Reader, hs: int, layout_max: int, mode: int) -> int:
    if mode == MAX_LAYOUT_FRAME:
        return max(hs, min(layout_max, MAX_TRIED))
    if mode == MAX_HEADER_PLUS_U16:
        return hs + inp.u16()
    if mode == MAX_HEADER_PLUS_U8:
        return hs + inp.u8()
    return inp.u32()  # may be below the header size: refused


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    fl = read_layout(inp)
    cfg = inp.u8()
    mps = choose_max_packet_size(inp, fl.hs, fl.ref.max_frame, cfg & 3)
    try:
        dec = fp.FrameDecoder(fl.native, max_packet_size=mps)
    except ValueError:
        expect(mps < fl.hs or mps > MAX_FUZZ_PACKET_SIZE, "FrameDecoder refused a valid max_packet_size", mps,
               fl.hs)
        return
    expect(fl.hs <= mps <= MAX_FUZZ_PACKET_SIZE, "FrameDecoder took a max_packet_size out of range", mps, fl.hs)
    expect(dec.max_packet_size == mps and dec.pending == 0, "a new decoder's state")
    cuts = [inp.u16() for _ in range(inp.u8() % (MAX_CUTS + 1))]
    stream = build_stream(fl, inp, aggregates=False) if cfg >> 5 & 1 else inp.rest()
    chunks = ref.chunk(stream, [c % (len(stream) + 1) for c in cuts])
    run_stream(dec, fl, stream, chunks, (cfg >> 2 & 7) % DELIVERIES, expected_for(fl, stream, mps), mps)


if __name__ == "__main__":
    run(test_one_input)
