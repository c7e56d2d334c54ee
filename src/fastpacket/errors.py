"""fastpacket's one exception hierarchy, raised identically from Cython and
Python code.

    FastpacketError
     ├── ProtocolError (also a ValueError): the byte stream is bad
     │    └── AggregateError: an aggregate frame is bad
     ├── BufferFull: no room for a packet right now
     ├── AddressInUse (also an OSError): another process serves the address
     └── BusUnavailable (also a ConnectionError): a server's bus (Redis) cannot be reached

Bad arguments raise the builtin ValueError / TypeError.
"""

from __future__ import annotations

import errno
from typing import Any, Optional

__all__ = ["FastpacketError", "ProtocolError", "AggregateError", "BufferFull", "AddressInUse", "BusUnavailable"]


class FastpacketError(Exception):
    """Base class of every error fastpacket raises on its own account."""


class ProtocolError(FastpacketError, ValueError):
    """A byte stream or frame breaks the wire format.

    Attributes:
        offset: stream offset (bytes from the start of the stream, or of the
            frame for AggregateError) where the bad data starts, or None.
        value: the offending value (for example the announced packet size).
        limit: the limit or expected value it broke.
        batch: the packets decoded before the bad one in the same feed (a
            PacketBatch), or None. They are valid packets: deliver them.
    """

    def __init__(
        self,
        message: str,
        *,
        offset: Optional[int] = None,
        value: Any = None,
        limit: Any = None,
        batch: Any = None,
    ) -> None:
        super().__init__(message)
        self.offset = offset
        self.value = value
        self.limit = limit
        self.batch = batch


class AggregateError(ProtocolError):
    """An aggregate frame (type 0xFFFF) failed a check; none of its packets
    is delivered. `check` names the failed check."""

    def __init__(self, message: str, *, check: str = "", **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.check = check


class BufferFull(FastpacketError):
    """A send buffer has no room for the packet now; flush and retry."""


class AddressInUse(FastpacketError, OSError):
    """Another process already serves the address (host:port, or a Unix
    socket path) a server was asked to serve. `address` is it, printable."""

    def __init__(self, message: str, address: str) -> None:
        super().__init__(errno.EADDRINUSE, message)
        self.address = address

    def __str__(self) -> str:
        return str(self.strerror)


class BusUnavailable(FastpacketError, ConnectionError):
    """A server's bus cannot reach its broker (Redis) at start, or the
    Redis extra is not installed. `url` is the bus URL (its password, if
    any, masked)."""

    def __init__(self, message: str, url: str) -> None:
        super().__init__(message)
        self.url = url

    def __str__(self) -> str:
        return str(self.args[0])
