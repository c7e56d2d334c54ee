"""atheris target: FrameDecoder(aggregator=) unwrapping aggregate frames in
a stream, checked feed by feed against the reference decoder and the
reference unpacker: the inner packets in stream order, the failed check of
a bad aggregate named at the frame's stream offset, the packets before it
delivered and none of its own.

Input: a layout descriptor (see _fuzzlib), a config byte (bits 0-1:
max_raw_size default / u16 / u8 / 0; bits 2-4: chunk delivery, see
_streams; bit 5: the Aggregator reads the decoder's layout rather than
GAME, which must not matter; bit 6: lz4 through lz4.block rather than
liblz4 directly; bit 7: a raw stream instead of built records), the
max_raw_size argument when asked, max_packet_size - header size (u16), a cut
count (u8) and u16 cut positions, then the stream.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _fuzzlib import Reader, build_stream, fp, read_layout, ref, run, use_lz4_direct  # noqa: E402
from _streams import DELIVERIES, expected_for, run_stream  # noqa: E402

MAX_CUTS = 32
DEFAULT_MAX_RAW_SIZE = 1 << 20


def test_one_input(data: bytes) -> None:
    inp = Reader(data)
    fl = read_layout(inp)
    cfg = inp.u8()
    mode = cfg & 3
    raw_limit = DEFAULT_MAX_RAW_SIZE if mode == 0 else inp.u16() if mode == 1 else inp.u8() if mode == 2 else 0
    use_lz4_direct(not cfg >> 6 & 1)
    agg = fp.Aggregator(max_raw_size=raw_limit, layout=fl.native if cfg >> 5 & 1 else fp.GAME)
    mps = fl.hs + inp.u16()
    dec = fp.FrameDecoder(fl.native, max_packet_size=mps, aggregator=agg)
    cuts = [inp.u16() for _ in range(inp.u8() % (MAX_CUTS + 1))]
    stream = inp.rest() if cfg >> 7 else build_stream(fl, inp, aggregates=True)
    chunks = ref.chunk(stream, [c % (len(stream) + 1) for c in cuts])
    exp = expected_for(fl, stream, mps, max_raw_size=raw_limit)
    run_stream(dec, fl, stream, chunks, (cfg >> 2 & 7) % DELIVERIES, exp, mps)


if __name__ == "__main__":
    run(test_one_input)
