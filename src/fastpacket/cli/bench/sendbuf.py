"""SendBuffer beside the plain-Python way of coalescing sends:

(a) send: 40-byte payloads, 1,000 packets per flush, through a bytearray +
    struct.pack_into loop vs SendBuffer.send (seq assigned natively);
(b) broadcast: one 40-byte payload to 1,000 players, a Python loop building
    the same bytes vs SendBuffer.broadcast with the ids as a list and as a
    numpy array.
"""

from __future__ import annotations

import struct
from typing import Callable, Dict, List, Union

import numpy as np

from fastpacket import SendBuffer
from fastpacket.cli.bench._harness import Row, interleaved_medians

HEADER = struct.Struct("<HHII")
PAYLOAD = bytes(range(40))
PACKET_TYPE = 7
PER_FLUSH = 1000          # packets per flush (52 KB: fits the default 64 KiB)
ROUNDS, QUICK_ROUNDS = 200, 20
PLAYERS = 1000
BROADCASTS, QUICK_BROADCASTS = 200, 20
SEQ_MASK = 0xFFFFFFFF


def python_send(rounds: int, payload: bytes = PAYLOAD) -> bytes:
    """bytearray + struct.pack_into, seq counted in Python; returns the last flush."""
    buf = bytearray(65536)
    pack_into = HEADER.pack_into
    hs = HEADER.size
    size = hs + len(payload)
    seq = 0
    out: Union[bytes, memoryview] = b""
    for _ in range(rounds):
        pos = 0
        for player in range(PER_FLUSH):
            pack_into(buf, pos, size, PACKET_TYPE, seq, player)
            buf[pos + hs:pos + size] = payload
            pos += size
            seq = (seq + 1) & SEQ_MASK
        out = memoryview(buf)[:pos]
    return bytes(out)


def fastpacket_send(rounds: int, payload: bytes = PAYLOAD) -> bytes:
    """SendBuffer.send per packet, flush per round; returns the last flush."""
    sb = SendBuffer()
    send = sb.send
    out: Union[bytes, memoryview] = b""
    for _ in range(rounds):
        for player in range(PER_FLUSH):
            send(PACKET_TYPE, payload, player_id=player)
        out = sb.flush()
    return bytes(out)


def python_broadcast(times: int, player_ids: List[int], payload: bytes = PAYLOAD) -> bytes:
    """The same payload to every player, one pack_into per player."""
    buf = bytearray(65536)
    pack_into = HEADER.pack_into
    hs = HEADER.size
    size = hs + len(payload)
    seq = 0
    pos = 0
    for _ in range(times):
        pos = 0
        for player in player_ids:
            pack_into(buf, pos, size, PACKET_TYPE, seq, player)
            buf[pos + hs:pos + size] = payload
            pos += size
            seq = (seq + 1) & SEQ_MASK
    return bytes(buf[:pos])


def fastpacket_broadcast(times: int, player_ids, payload: bytes = PAYLOAD) -> bytes:
    sb = SendBuffer()
    broadcast = sb.broadcast
    flush = sb.flush
    out: Union[bytes, memoryview] = b""
    for _ in range(times):
        broadcast(PACKET_TYPE, payload, player_ids)
        out = flush()
    return bytes(out)


def _rows(case: str, medians: Dict[str, float], base: str, packets: int, targets: Dict[str, str]) -> List[Row]:
    rows = []
    for name, t in medians.items():
        rows.append(Row(section="sendbuf", case=case, impl=name, rate=packets / t, unit="packets/s",
                        ratio=None if name == base else medians[base] / t,
                        extra=f"{packets * (HEADER.size + len(PAYLOAD)) / t / 1e6:.0f} MB/s",
                        target=targets.get(name, "")))
    return rows


def _check_same(impls: Dict[str, Callable[[], bytes]]) -> None:
    answers = {name: fn() for name, fn in impls.items()}
    first = next(iter(answers.values()))
    for name, got in answers.items():
        if got != first:
            raise RuntimeError(f"{name} built different bytes than {next(iter(answers))}")


def run(quick: bool = False) -> List[Row]:
    rounds = QUICK_ROUNDS if quick else ROUNDS
    repeat = 3 if quick else 7
    rows: List[Row] = []

    send_impls = {"plain-python": lambda: python_send(rounds), "fastpacket": lambda: fastpacket_send(rounds)}
    _check_same({"plain-python": lambda: python_send(1), "fastpacket": lambda: fastpacket_send(1)})
    rows += _rows(f"send 40-byte payloads, {PER_FLUSH}/flush", interleaved_medians(send_impls, repeat),
                  "plain-python", rounds * PER_FLUSH, {"fastpacket": ">= 3x"})

    times = QUICK_BROADCASTS if quick else BROADCASTS
    ids_list = list(range(1_000_000, 1_000_000 + PLAYERS))
    ids_array = np.array(ids_list, dtype=np.uint32)
    bc_impls = {
        "plain-python": lambda: python_broadcast(times, ids_list),
        "fastpacket ids list": lambda: fastpacket_broadcast(times, ids_list),
        "fastpacket ids numpy": lambda: fastpacket_broadcast(times, ids_array),
    }
    _check_same({"plain-python": lambda: python_broadcast(1, ids_list),
                 "fastpacket ids list": lambda: fastpacket_broadcast(1, ids_list),
                 "fastpacket ids numpy": lambda: fastpacket_broadcast(1, ids_array)})
    rows += _rows(f"broadcast 40-byte payload to {PLAYERS} players", interleaved_medians(bc_impls, repeat),
                  "plain-python", times * PLAYERS,
                  {"fastpacket ids list": ">= 30x", "fastpacket ids numpy": ">= 30x"})
    return rows
