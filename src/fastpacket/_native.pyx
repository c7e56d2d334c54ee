# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True, freethreading_compatible=False
# distutils: language = c++
"""fastpacket's native bindings: one extension module built from one .pxi
per area (msgpack-python's layout), whose contracts are declared in
_native.pxd and the area .pxd files it includes. Cython converts arguments,
owns the C++ objects and releases the GIL; every algorithm lives in
csrc/fastpacket/.

Private: use the public modules (fastpacket.layout, fastpacket.framing,
fastpacket.ring, ...), which re-export these classes and constants.
"""

cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize
from cpython.ref cimport Py_INCREF
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcpy, memmove

import numpy as np

from fastpacket.errors import AggregateError, BufferFull, FastpacketError, ProtocolError

cnp.import_array()

include "_buffer.pxi"
include "_args.pxi"
include "_framing.pxi"
include "_ring.pxi"
include "_sendbuf.pxi"
include "_aggregate.pxi"
include "_metrics.pxi"
include "_aio.pxi"
include "_group.pxi"
