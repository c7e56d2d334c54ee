"""SendBuffer beside the plain-Python way (bytearray + struct.pack_into)."""

import numpy as np

from fastpacket.cli.bench.sendbuf import (
    PLAYERS,
    fastpacket_broadcast,
    fastpacket_send,
    python_broadcast,
    python_send,
)


class Send:
    """1,000 sends of a 40-byte payload and one flush, per round."""

    params = ["python", "fastpacket"]
    param_names = ["impl"]

    def setup(self, impl):
        self.fn = {"python": python_send, "fastpacket": fastpacket_send}[impl]

    def time_send_1000(self, impl):
        self.fn(1)


class Broadcast:
    """One 40-byte payload to 1,000 players."""

    params = [["python", "fastpacket"], ["list", "numpy"]]
    param_names = ["impl", "ids"]

    def setup(self, impl, ids):
        id_list = list(range(1_000_000, 1_000_000 + PLAYERS))
        self.ids = id_list if ids == "list" else np.array(id_list, dtype=np.uint32)
        if impl == "python" and ids == "numpy":
            self.ids = id_list  # the Python loop iterates a list either way
        self.fn = {"python": python_broadcast, "fastpacket": fastpacket_broadcast}[impl]

    def time_broadcast(self, impl, ids):
        self.fn(1, self.ids)


class SendArray:
    """1,000 records queued: one send_array call, or send per packet."""

    params = ["send-per-packet", "send_array"]
    param_names = ["impl"]

    def setup(self, impl):
        from fastpacket import SendBuffer

        self.rows = np.zeros(1000, [("tick", "<u4"), ("x", "<i4"), ("y", "<i4")])
        self.payloads = [r.tobytes() for r in self.rows]
        self.ids = np.arange(1000, dtype=np.uint32)
        self.sb = SendBuffer()

    def time_send(self, impl):
        sb = self.sb
        if impl == "send_array":
            sb.send_array(5, self.rows, player_ids=self.ids)
        else:
            send = sb.send
            for i, p in enumerate(self.payloads):
                send(5, p, player_id=i)
        sb.clear()
