# cython: language_level=3
# The contracts between the parts of fastpacket._native (uvloop's pattern:
# this module's .pxd includes one .pxd per area, and each area's .pxi uses
# another area only through what that area's .pxd declares). The C++ core
# is declared in _core.pxd, one block per csrc/fastpacket header.
#
# Naming, one rule for every native class:
# - An extension type is named for what it is to Python: its public name
#   where it is public (HeaderLayout, PacketBatch, FrameDecoder, RingBuffer,
#   SendBuffer, Aggregator, Metric, ...), Hub for the asyncio adapter's
#   per-server state. Private helper types start with an underscore
#   (_RingView, _SendChunk, _ByteWindow, _PacketIterator).
# - The native part of a class that Python must complete is <Name>Base:
#   SessionBase, completed by fastpacket.aio.Session (asyncio wants a
#   protocol deriving from asyncio.BufferedProtocol). Cython never calls
#   into the Python subclass: it calls only what SessionBase declares here,
#   and user code only through callables handed in (handlers, on_connect,
#   on_close).
# - C++ types keep their C++ names (Layout, TokenBucket, MetricCore); a
#   C++ class whose name the extension type wrapping it takes is declared
#   as Cpp<Name> (CppFrameDecoder, CppRingBuffer, CppSendBuffer).
# - Fields and cdef methods that are not API start with an underscore and
#   are plain cdef: Python reads state only through properties and methods.

cimport cython
cimport numpy as cnp
from cpython.buffer cimport (PyBUF_FORMAT, PyBUF_ND, PyBUF_SIMPLE, PyBUF_WRITABLE, PyBuffer_FillInfo,
                             PyBuffer_Release, PyObject_CheckBuffer, PyObject_GetBuffer)
from cpython.object cimport PyObject
from libc.stdint cimport int8_t, int16_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

from fastpacket._core cimport *

# Feeds and copies of at least this many bytes run with the GIL released;
# below it the release/re-acquire costs more than the work it frees.
cdef enum:
    NOGIL_MIN_BYTES = 16384
# Feeds from this many bytes up to NOGIL_MIN_BYTES are scanned and indexed
# in one pass (FrameDecoder._decode_span); below it, a packet or two, the
# second pass costs less than the one-pass path's copies (callgrind).
cdef enum:
    FUSED_SCAN_MIN_BYTES = 256
# Frames decoded from a receive ring are lent (the batch lies over the
# ring's bytes, pinned) from this many bytes on; below it, copying them
# costs less than the pinned view (callgrind: the relay's 224-byte bursts
# cost 4% more instructions lent, the echo's larger ones 25% fewer).
cdef enum:
    LEND_MIN_BYTES = 2048

include "_buffer.pxd"
include "_args.pxd"
include "_framing.pxd"
include "_ring.pxd"
include "_sendbuf.pxd"
include "_aggregate.pxd"
include "_metrics.pxd"
include "_aio.pxd"
include "_group.pxd"
