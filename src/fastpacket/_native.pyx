# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, freethreading_compatible=False
# distutils: language = c++
"""fastpacket's native bindings: one extension module built from one .pxi
per area (msgpack-python's layout). Cython converts arguments, owns the C++
objects and releases the GIL; every algorithm lives in csrc/fastpacket/.

Private: use the public modules (fastpacket.layout, fastpacket.batch,
fastpacket.framing, ...), which re-export these classes.
"""

cimport cython
cimport numpy as cnp
from cpython.buffer cimport PyBUF_SIMPLE, PyObject_CheckBuffer, PyObject_GetBuffer, PyBuffer_Release
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

from fastpacket._core cimport *

import numpy as np

from fastpacket.errors import AggregateError, BufferFull, FastpacketError, ProtocolError

cnp.import_array()

# Feeds and copies of at least this many bytes run with the GIL released;
# below it the release/re-acquire costs more than the work it frees.
cdef enum:
    NOGIL_MIN_BYTES = 16384

include "_buffer.pxi"
include "_framing.pxi"
include "_ring.pxi"
include "_sendbuf.pxi"
include "_aggregate.pxi"
include "_metrics.pxi"
include "_aio.pxi"
