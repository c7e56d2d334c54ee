"""Echo: every packet goes back to its sender, byte for byte (headers, seq
included, as they came), one copy into the session's send buffer and one
write per read burst. ``fastpacket serve echo`` serves it."""

from __future__ import annotations

from fastpacket.aio import Session
from fastpacket.framing import PacketBatch

__all__ = ["echo"]


def echo(session: Session, batch: PacketBatch) -> None:
    """The echo handler: relay the burst back to its sender."""
    session.send_batch(batch)
