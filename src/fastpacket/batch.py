"""Packet batches: many packets over one buffer the batch keeps alive.

PacketBatch and Packet are native classes (their docstrings are on the
classes); this module is their public home.
"""

from fastpacket._native import Packet, PacketBatch

__all__ = ["PacketBatch", "Packet"]
