"""The echo and relay apps forward whatever a read burst holds: bursts far
larger than the send buffer, compressed on both ends (issue 14, finding 1:
such a burst closed the session with "handler error" and echoed nothing)."""

from __future__ import annotations

import numpy as np
import pytest

import fastpacket as fp
from fastpacket import aio
from fastpacket.apps.echo import echo
from fastpacket.apps.relay import MOVE, MOVE_FORMAT, Relay
from tests.loops import recv_packets, run  # noqa: F401  (the fixture)

#: Bytes one burst of the test sends: 1 MiB, 16 times the send buffer.
BURST_BYTES = 1 << 20
#: Payload bytes of each packet (2,000 packets of 512 bytes, about 1 MiB).
PAYLOAD_BYTES = 512 - 12
#: max_packet_size of both ends (with an aggregator it must fit one frame).
MAX_PACKET = 4096


def _burst(seed: int, ptype: int = 7, pad: bytes = b"") -> fp.PacketBatch:
    """About BURST_BYTES of packets: compressible (a counter and zeros, as
    game state is) but each one distinct, so a loss or a reorder shows."""
    count = BURST_BYTES // (12 + PAYLOAD_BYTES)
    payloads = [pad + i.to_bytes(4, "little") + bytes([seed]) * 8 + bytes(PAYLOAD_BYTES - 12 - len(pad))
                for i in range(count)]
    return fp.PacketBatch.build([ptype] * count, payloads, seqs=np.arange(count), player_ids=[seed] * count)


@pytest.mark.parametrize("codec", ["lz4", "zlib", "none"])
def test_echo_returns_a_1_mib_burst_compressed_on_both_ends(run, codec):  # noqa: F811
    async def main():
        server = await aio.serve(echo, "127.0.0.1", 0, aggregator=fp.Aggregator(codec), max_packet_size=MAX_PACKET)
        client = await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(codec),
                                   max_packet_size=MAX_PACKET)
        for seed in (1, 2):  # twice: the second burst after the first one's buffers
            burst = _burst(seed)
            assert burst.nbytes > 16 * fp.sendbuf.DEFAULT_MAX_BYTES - 1024
            client.send_batch(burst)
            got = await recv_packets(client, len(burst), timeout=20)
            assert len(got) == len(burst) and b"".join(p.to_bytes() for p in got) == burst.to_bytes()
        assert client.dropped_out == 0 and not client.closed
        assert server.closes == {} and server.drops == {}
        client.close()
        await client.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())


def test_relay_forwards_a_burst_larger_than_the_send_buffer(run):  # noqa: F811
    async def main():
        relay = Relay(rooms=1)
        server = await aio.serve(handlers=relay.handlers, on_close=relay.on_close, aggregator=fp.Aggregator(),
                                 max_packet_size=MAX_PACKET)
        a, b = [await aio.connect("127.0.0.1", server.port, aggregator=fp.Aggregator(), max_packet_size=MAX_PACKET)
                for _ in range(2)]
        b.send(MOVE, MOVE_FORMAT.pack(0, 0, 0, 0), player_id=2)  # b joins room 0
        assert len(await recv_packets(b, 1)) == 1
        burst = _burst(3, MOVE, MOVE_FORMAT.pack(1, 2, 3, 4))
        a.send_batch(burst)
        for s in (a, b):
            got = await recv_packets(s, len(burst), timeout=20)
            assert b"".join(p.to_bytes() for p in got) == burst.to_bytes()
        assert server.closes == {}
        for s in (a, b):
            s.close()
            await s.wait_closed()
        server.close()
        await server.wait_closed()

    run(main())
