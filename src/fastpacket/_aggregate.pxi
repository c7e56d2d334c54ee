# Aggregation: packet batches packed into compressed aggregate frames (type
# 0xFFFF), and the checks that open them again. The C++ side
# (csrc/fastpacket/aggregate.hpp) gathers bodies and validates frames and
# bodies; this side calls the codecs (lz4.block and zlib, which release the
# GIL around their C call) and maps every failure to AggregateError.

from cpython.bytes cimport PyBytes_GET_SIZE, _PyBytes_Resize
from cpython.ref cimport Py_DECREF
from libc.math cimport isfinite

import zlib as _zlib
import lz4 as _lz4
import lz4.block as _lz4_block
import lz4.block._block as _lz4_block_ext

from libc.stdint cimport uintptr_t

_lz4_compress = _lz4_block.compress
_lz4_decompress = _lz4_block.decompress
_zlib_compress = _zlib.compress
_zlib_decompressobj = _zlib.decompressobj

# The lz4 package ships no C headers, but its extension module exports
# liblz4's stable C API. Calling it directly skips a Python call and argument
# parsing per frame, lets decompression write straight into the batch's bytes
# (exactly raw_size allocated, no copy), and releases the GIL in our own
# hands. The addresses are found once, at import, through ctypes in the
# already-loaded module (RTLD_NOLOAD): this extension itself calls no
# dlopen/dlsym, whose glibc 2.34 symbol versions would raise the wheel's
# manylinux policy from 2_28 to 2_34. They are used only after checks that
# they are the liblz4 lz4.block runs (_install_lz4); where anything fails (no
# ctypes, a module that does not export them, liblz4 < 1.7, a larger stream
# state than ours) the lz4.block functions serve, and _LZ4_DIRECT_UNAVAILABLE
# says why.
#
# Compression goes through lz4.block's own entry point (python-lz4's
# lz4_compress_generic: a fresh stream state, then LZ4_compress_fast_continue),
# not LZ4_compress_fast: for inputs under 64 KiB LZ4_compress_fast hashes 4
# bytes into a 16-bit table and the streaming call 5 bytes (on 64-bit
# targets) into a 32-bit one, so they pick different matches. Neither wins
# everywhere (relay traffic: the streaming call ~1% smaller on every burst;
# random-walk movement batches: ~1% larger); the streaming call costs 6-11%
# more instructions in liblz4 (callgrind, 3-6 KB bodies: +4.4k to +5.9k).
# Taken because the same entry point makes both paths write byte-identical
# frames, whichever is in use.
ctypedef int (*_lz4_int_t)() noexcept nogil
ctypedef int (*_lz4_bound_t)(int) noexcept nogil
ctypedef void (*_lz4_reset_stream_t)(void*) noexcept nogil
ctypedef int (*_lz4_compress_continue_t)(void*, const char*, char*, int, int, int) noexcept nogil
ctypedef int (*_lz4_decompress_safe_t)(const char*, char*, int, int) noexcept nogil

cdef enum:
    LZ4_MIN_VERSION = 10700       # LZ4_compress_fast_continue's signature since lz4 1.7.0
    LZ4_MAX_INPUT = 0x7E000000    # LZ4_MAX_INPUT_SIZE, bytes
    # sizeof(LZ4_stream_t) in bytes for liblz4's default LZ4_MEMORY_USAGE (14):
    # (1 << 14) + 32 from lz4 1.7 to 1.10; a build with a larger table is refused.
    LZ4_STATE_BYTES = 16416
    LZ4_STATE_WORDS = LZ4_STATE_BYTES // 8   # held as u64 words: 8-byte aligned, as LZ4_stream_t needs

# liblz4's entry points, in the order _lz4_addresses() returns them.
_LZ4_ENTRY_POINTS = ("LZ4_versionNumber", "LZ4_sizeofState", "LZ4_compressBound", "LZ4_resetStream",
                     "LZ4_compress_fast_continue", "LZ4_decompress_safe")
# What the self-check compresses: short, with repeats near and far (about 400 bytes).
_LZ4_PROBE = b"fastpacket " * 24 + bytes(range(64)) + b"fastpacket " * 6

cdef _lz4_bound_t _lz4_bound = NULL
cdef _lz4_reset_stream_t _lz4_reset_stream = NULL
cdef _lz4_compress_continue_t _lz4_compress_continue = NULL
cdef _lz4_decompress_safe_t _lz4_decompress_safe = NULL
cdef bint _lz4_direct = False
_lz4_library = None   # the ctypes handle, held while its addresses are in use


def _lz4_addresses():
    """The addresses of _LZ4_ENTRY_POINTS in the extension module lz4.block
    runs, as ints, and the ctypes handle that keeps it loaded; or a string
    saying why they cannot be had."""
    if _lz4_block.compress is not _lz4_block_ext.compress:
        return "lz4.block.compress does not come from lz4.block._block"
    path = getattr(_lz4_block_ext, "__file__", None)
    if not path:
        return "lz4.block._block has no file"
    try:
        import ctypes
        import os
        # RTLD_NOLOAD: the module Python already loaded, or nothing (no second copy)
        lib = ctypes.CDLL(path, mode=getattr(os, "RTLD_NOLOAD", 0) | getattr(os, "RTLD_NOW", 0))
        addresses = [ctypes.cast(getattr(lib, name), ctypes.c_void_p).value for name in _LZ4_ENTRY_POINTS]
    except (ImportError, OSError, AttributeError) as e:
        return f"liblz4's symbols not found in {path}: {e}"
    if not all(addresses):
        return f"a null address among liblz4's symbols in {path}"
    return addresses, lib


cdef inline int _lz4_compress_block(const char* src, char* dst, int n, int capacity,
                                    int acceleration) noexcept nogil:
    """liblz4 on src[0, n) into dst[0, capacity) as lz4.block compresses
    (mode "fast" with this acceleration); 0 when it does not fit. The state
    is on the stack: each call its own, so threads need no lock."""
    cdef uint64_t state[LZ4_STATE_WORDS]
    _lz4_reset_stream(state)
    return _lz4_compress_continue(state, src, dst, n, capacity, acceleration)


cdef object _install_lz4(found):
    """Takes the addresses from _lz4_addresses() if they pass the checks
    that they are the liblz4 lz4.block runs: its version number, a stream
    state that fits ours, and the probe compressed to the very bytes
    lz4.block makes and decompressed back. None on success, else why not."""
    global _lz4_bound, _lz4_reset_stream, _lz4_compress_continue, _lz4_decompress_safe, _lz4_library
    if isinstance(found, str):
        return found
    addresses, lib = found
    cdef _lz4_int_t version = <_lz4_int_t><void*><uintptr_t>addresses[0]
    cdef _lz4_int_t sizeof_state = <_lz4_int_t><void*><uintptr_t>addresses[1]
    cdef int v = version()
    if v < LZ4_MIN_VERSION or v != _lz4.library_version_number():
        return (f"liblz4 {v} found, lz4.block reports {_lz4.library_version_number()} "
                f"(at least {LZ4_MIN_VERSION} needed)")
    if sizeof_state() > LZ4_STATE_BYTES or sizeof_state() <= 0:
        return f"liblz4's stream state is {sizeof_state()} bytes, over the {LZ4_STATE_BYTES} reserved"
    _lz4_bound = <_lz4_bound_t><void*><uintptr_t>addresses[2]
    _lz4_reset_stream = <_lz4_reset_stream_t><void*><uintptr_t>addresses[3]
    _lz4_compress_continue = <_lz4_compress_continue_t><void*><uintptr_t>addresses[4]
    _lz4_decompress_safe = <_lz4_decompress_safe_t><void*><uintptr_t>addresses[5]
    cdef bytes probe = _LZ4_PROBE
    cdef int n = len(probe)
    cdef int bound = _lz4_bound(n)
    cdef bytes packed = PyBytes_FromStringAndSize(NULL, max(bound, 1))
    cdef bytes back = PyBytes_FromStringAndSize(NULL, n)
    cdef int clen = _lz4_compress_block(probe, PyBytes_AS_STRING(packed), n, bound, 1)
    expected = _lz4_block.compress(probe, mode="fast", acceleration=1, store_size=False)
    if (bound < n or clen <= 0 or packed[:clen] != expected
            or _lz4_decompress_safe(PyBytes_AS_STRING(packed), PyBytes_AS_STRING(back), clen, n) != n
            or back != probe):
        _lz4_bound = NULL
        _lz4_reset_stream = NULL
        _lz4_compress_continue = NULL
        _lz4_decompress_safe = NULL
        return "liblz4 called directly does not reproduce lz4.block's output"
    _lz4_library = lib
    return None


_LZ4_DIRECT_UNAVAILABLE = _install_lz4(_lz4_addresses())
cdef bint _LZ4_DIRECT_AVAILABLE = _LZ4_DIRECT_UNAVAILABLE is None
_lz4_direct = _LZ4_DIRECT_AVAILABLE


def _use_lz4_direct(bint enabled):
    """Private (tests, benchmarks): call liblz4 directly when it was found
    (True) or always go through lz4.block (False). Returns whether the
    direct path is now in use."""
    global _lz4_direct
    _lz4_direct = enabled and _LZ4_DIRECT_AVAILABLE
    return _lz4_direct

cdef enum:
    CODEC_NONE = 0
    CODEC_LZ4 = 1
    CODEC_ZLIB = 2

_CODEC_NAMES = ("none", "lz4", "zlib")

#: Codec names and their numbers on the wire.
CODECS = {name: number for number, name in enumerate(_CODEC_NAMES)}
#: Packet type of aggregate frames.
AGGREGATE_TYPE = kAggregateType
#: Bytes of the aggregate header (codec, flags, count, raw_size).
AGGREGATE_HEADER_SIZE = kAggregateHeaderBytes
#: Default bound on a frame's raw body, in bytes (1 MiB).
DEFAULT_MAX_RAW_SIZE = kDefaultMaxRawSize
#: Largest max_raw_size, in bytes: what every codec path handles (liblz4's
#: LZ4_MAX_INPUT_SIZE, 0x7E000000).
MAX_RAW_SIZE = kRawSizeLimit
#: Bodies smaller than this many bytes are sent raw by default.
DEFAULT_THRESHOLD = kDefaultCompressionThreshold
#: A compressed body is kept by default when it saves at least this fraction.
DEFAULT_MIN_SAVING = kDefaultMinSaving
#: Most packets one aggregate frame holds (its count field is a u16).
MAX_AGGREGATE_COUNT = kMaxAggregateCount
_ZLIB_MAX_LEVEL = 9
#: Largest lz4 acceleration (liblz4 takes an int; it caps the factor itself).
_LZ4_MAX_ACCELERATION = 0x7FFFFFFF
_ZLIB_DEFAULT_LEVEL = 6

cdef dict _CHECK_NAMES = {
    <int>AggregateCheck.frame: "frame",
    <int>AggregateCheck.not_aggregate: "type",
    <int>AggregateCheck.flags: "flags",
    <int>AggregateCheck.codec: "codec",
    <int>AggregateCheck.max_raw_size: "max_raw_size",
    <int>AggregateCheck.count: "count",
    <int>AggregateCheck.raw_size: "raw_size",
    <int>AggregateCheck.packet_size: "packet_size",
    <int>AggregateCheck.nested: "nested",
    <int>AggregateCheck.max_packet_size: "max_packet_size",
}


@cython.freelist(16)
@cython.final
cdef class _ByteWindow:
    """A read-only buffer over bytes that `_owner` keeps alive: hands a slice
    of a frame or batch to a codec without a memoryview and a slice object."""

    def __getbuffer__(self, Py_buffer* view, int flags):
        PyBuffer_FillInfo(view, self, <void*>self._ptr, self._len, 1, flags)

    def __releasebuffer__(self, Py_buffer* view):
        pass


cdef inline _ByteWindow _window(object owner, const uint8_t* ptr, Py_ssize_t n):
    cdef _ByteWindow w = _ByteWindow.__new__(_ByteWindow)
    w._owner = owner
    w._ptr = ptr
    w._len = n
    return w


cdef str _where(int64_t stream_offset):
    if stream_offset < 0:
        return "Aggregator.unpack"
    return f"aggregate frame at stream offset {stream_offset}"


cdef object _fault_error(AggregateFault f, AggregateFrame* frame, int64_t stream_offset):
    """The AggregateError for a failed check (the one error boundary)."""
    check = _CHECK_NAMES[<int>f.check]
    if f.check == AggregateCheck.frame:
        if f.offset == 0:
            msg = f"an aggregate frame needs at least {f.limit} bytes (header + aggregate header), got {f.value}"
        else:
            msg = (f"the frame's length field announces {f.value} bytes but the frame holds {f.limit} "
                   f"(it must be exactly one packet)")
    elif f.check == AggregateCheck.not_aggregate:
        msg = f"expected packet type {f.limit:#x} (aggregate), found {f.value:#x}" if f.value >= 0 else \
            "the layout has no type field, so no packet can be an aggregate"
    elif f.check == AggregateCheck.flags:
        msg = f"aggregate flags must be 0 (reserved), found {f.value:#04x} at offset {f.offset}"
    elif f.check == AggregateCheck.codec:
        msg = f"unknown codec {f.value} at offset {f.offset} (known: 0..{f.limit})"
    elif f.check == AggregateCheck.max_raw_size:
        msg = (f"raw_size {f.value} at offset {f.offset} exceeds max_raw_size {f.limit}; "
               f"refused before decompressing")
    elif f.check == AggregateCheck.raw_size:
        msg = f"raw_size {f.value} at offset {f.offset} does not match the {f.limit} body bytes"
    elif f.check == AggregateCheck.count:
        if f.limit == f.value + 1:
            msg = (f"count {f.value} does not match the body: more bytes follow packet {f.index} "
                   f"at body offset {f.offset}")
        elif frame != NULL:  # the header check, before decompressing
            msg = f"count {f.value} at offset {f.offset} cannot fit raw_size (at most {f.limit} packets)"
        else:
            msg = f"count says {f.limit} packets but the body ends after {f.value}, at body offset {f.offset}"
    elif f.check == AggregateCheck.packet_size:
        msg = (f"inner packet {f.index} at body offset {f.offset} has size {f.value}; expected "
               f"{'at least' if f.value < f.limit else 'at most'} {f.limit}")
    elif f.check == AggregateCheck.max_packet_size:
        msg = (f"inner packet {f.index} at body offset {f.offset} has size {f.value}, over max_packet_size "
               f"{f.limit} (refused inside an aggregate as it would be alone)")
    else:
        msg = f"inner packet {f.index} at body offset {f.offset} is itself an aggregate (type 0xffff)"
    return AggregateError(f"{_where(stream_offset)}: bad aggregate frame ({check}): {msg}", check=check,
                          offset=f.offset, value=f.value, limit=f.limit)


cdef inline object _codec_error(str check, str msg, int64_t stream_offset, int64_t value=0, int64_t limit=0):
    return AggregateError(f"{_where(stream_offset)}: bad aggregate frame ({check}): {msg}", check=check,
                          value=value, limit=limit)


cdef class Aggregator:
    """Aggregator(codec="lz4", threshold=1024, min_saving=0.10, max_raw_size=1 << 20, *, level=6, acceleration=1, max_frame_size=None, layout=GAME)

    Packs a PacketBatch into aggregate frames and unpacks them, checking
    every field of untrusted frames (docs/wire-format.md).

    Args:
        codec: ``"none"``, ``"lz4"`` or ``"zlib"`` (or 0, 1, 2).
        threshold: bodies smaller than this many bytes are sent raw (codec 0).
        min_saving: a compressed body is kept only when it is smaller than
            ``(1 - min_saving) * body``; otherwise the frame goes raw.
        max_raw_size: largest raw body pack() makes and unpack() accepts,
            in bytes, at most MAX_RAW_SIZE (0x7E000000: what every codec
            path handles); unpack() refuses a larger raw_size before
            decompressing anything.
        level: zlib compression level, 0..9 (default 6).
        acceleration: lz4 acceleration, >= 1 (1 is lz4's default; higher is
            faster and compresses less).
        max_frame_size: cap on a whole frame in bytes, header included, for
            peers whose decoder has a lower max_packet_size; default: what the
            layout's length field can hold (65535 for GAME).
        layout: the layout unpack() reads frames in (default GAME); pack()
            writes frames in the batch's own layout.

    ``stats`` counts frames compressed and left raw, bytes in and out, and
    frames unpacked and rejected, correctly when several threads pack or
    unpack at once (atomic counters). Immutable once made, so pack and
    unpack may run in several threads at once.
    """

    def __cinit__(self, codec="lz4", threshold=kDefaultCompressionThreshold, min_saving=kDefaultMinSaving,
                  max_raw_size=kDefaultMaxRawSize, *, level=_ZLIB_DEFAULT_LEVEL, acceleration=1,
                  max_frame_size=None, layout=None):
        if isinstance(codec, str):
            if codec not in CODECS:
                raise ValueError(f"codec must be one of {sorted(CODECS)}, got {codec!r}")
            number = CODECS[codec]
        elif isinstance(codec, int) and not isinstance(codec, bool) and codec in CODECS.values():
            number = codec
        else:
            raise ValueError(f"codec must be one of {sorted(CODECS)} or 0..2, got {codec!r}")
        threshold = ssize_arg(threshold, "threshold", 0, PY_SSIZE_T_MAX)
        if not isinstance(min_saving, (int, float)):
            raise TypeError(f"min_saving must be a number in [0, 1), not {type(min_saving).__name__!r}")
        if not isfinite(min_saving) or not 0 <= min_saving < 1:
            raise ValueError(f"min_saving must be in [0, 1), got {min_saving!r}")
        max_raw_size = u64_arg(max_raw_size, "max_raw_size", kRawSizeLimit)
        level = ssize_arg(level, "level", 0, _ZLIB_MAX_LEVEL)
        # liblz4 takes an int
        acceleration = ssize_arg(acceleration, "acceleration", 1, _LZ4_MAX_ACCELERATION)
        cdef HeaderLayout nl = _layout_arg(layout)
        min_frame = nl.c.header_size + kAggregateHeaderBytes
        if max_frame_size is not None:  # at least header + aggregate header
            max_frame_size = ssize_arg(max_frame_size, "max_frame_size", min_frame, PY_SSIZE_T_MAX)
        self._stats = new AggregateStats()
        self._codec = number
        self._level = level
        self._acceleration = acceleration
        # mode "fast": lz4.block's "default" ignores acceleration (always 1)
        self._lz4_kwargs = {"mode": "fast", "acceleration": acceleration, "store_size": False}
        self._threshold = threshold
        self._min_saving = min_saving
        self._max_raw_size = max_raw_size
        self._max_frame_size = max_frame_size or 0
        self._layout = nl

    def __dealloc__(self):
        del self._stats

    def __repr__(self):
        return (f"Aggregator(codec={self.codec!r}, threshold={self.threshold}, min_saving={self.min_saving}, "
                f"max_raw_size={self.max_raw_size})")

    @property
    def codec(self):
        """The codec name: "none", "lz4" or "zlib"."""
        return _CODEC_NAMES[self._codec]

    @property
    def threshold(self):
        """Bodies smaller than this many bytes are sent raw."""
        return self._threshold

    @property
    def min_saving(self):
        """Compressed bodies are kept only when smaller than (1 - min_saving) of the body."""
        return self._min_saving

    @property
    def max_raw_size(self):
        """Largest raw body packed or accepted, in bytes."""
        return self._max_raw_size

    @property
    def layout(self):
        """The HeaderLayout unpack() reads frames in (pack uses the batch's)."""
        return self._layout

    @property
    def stats(self):
        """Counters: frames "compressed" and left "raw", "bytes_in" (packets
        packed) and "bytes_out" (frames produced), frames "unpacked" and
        "rejected". Safe to read while other threads pack."""
        cdef AggregateStats.Snapshot s = self._stats.snapshot()
        return {"compressed": s.compressed, "raw": s.raw, "bytes_in": s.bytes_in,
                "bytes_out": s.bytes_out, "unpacked": s.unpacked, "rejected": s.rejected}

    # -- packing -------------------------------------------------------------

    cdef int64_t _frame_limit(self, HeaderLayout nl):
        """Largest frame (header included) the layout's length field can
        announce, capped by max_frame_size."""
        cdef Layout* c = &nl.c
        cdef int64_t bias = (0 if c.length_includes_header else c.header_size) + c.length_adjustment
        cdef uint64_t fmax = c.field_max(c.length_index)
        cdef int64_t limit = (<int64_t>1 << 62) if fmax >= (<uint64_t>1 << 62) else <int64_t>fmax + bias
        if self._max_frame_size > 0 and self._max_frame_size < limit:
            limit = self._max_frame_size
        return limit

    cdef int _check_layout(self, HeaderLayout nl) except -1:
        if nl.c.type_index < 0 or nl.c.field_max(nl.c.type_index) < kAggregateType:
            raise ValueError(f"layout {nl.name} cannot carry aggregate frames: it needs a type field "
                             f"that holds {kAggregateType:#x}")
        return 0

    cdef uint64_t _body_limit(self, HeaderLayout nl):
        """Largest raw body one frame carries even uncompressed (pack_many's split)."""
        cdef int64_t room = self._frame_limit(nl) - nl.c.header_size - <int64_t>kAggregateHeaderBytes
        if room < 0:
            return 0
        return min(<uint64_t>room, self._max_raw_size)

    cdef bytes _pack_run(self, PacketBatch b, Py_ssize_t begin, Py_ssize_t end, uint64_t seq,
                         uint64_t player_id):
        cdef HeaderLayout nl = b._layout
        cdef size_t hs = nl.c.header_size
        cdef size_t count = end - begin, i, raw = 0, payload_len, cap
        cdef size_t head = hs + kAggregateHeaderBytes
        cdef const int64_t* offsets = b._cols.offsets + begin
        cdef const uint32_t* sizes = b._cols.sizes + begin
        cdef const uint8_t* body = NULL
        cdef uint8_t* dst
        cdef object body_owner = None
        cdef object compressed = None
        cdef int codec = CODEC_NONE
        cdef int bound = 0, clen = 0
        cdef bint in_place, payload_written = False
        cdef PyObject* p
        cdef AggregateHeader ah
        cdef HeaderValues values
        cdef EncodeError err
        for i in range(count):
            raw += sizes[i]
        if count > kMaxAggregateCount:
            raise ValueError(f"an aggregate frame holds at most {kMaxAggregateCount} packets (its count "
                             f"field is a u16), this batch has {count}; use pack_many()")
        if raw > self._max_raw_size:
            raise ValueError(f"the batch's {raw} bytes exceed max_raw_size {self._max_raw_size} for one "
                             f"aggregate frame; use pack_many()")
        cdef bint try_codec = self._codec != CODEC_NONE and raw >= self._threshold
        if try_codec:  # the codec needs the body in one piece
            if count == 0 or frames_contiguous(offsets, sizes, 0, count):
                body_owner = b._data
                body = b._base + (offsets[0] if count else 0)
            else:
                body_owner = PyBytes_FromStringAndSize(NULL, raw)
                dst = <uint8_t*>PyBytes_AS_STRING(body_owner)
                with nogil:
                    gather_frames(b._base, offsets, sizes, count, dst)
                body = dst
        # liblz4 called directly compresses straight into the frame, which is
        # allocated once for the larger of lz4's bound and the raw body and
        # shrunk to size at the end.
        in_place = try_codec and self._codec == CODEC_LZ4 and _lz4_direct and raw <= LZ4_MAX_INPUT
        if in_place:
            bound = _lz4_bound(<int>raw)
            cap = max(<size_t>bound, raw)
            out = PyBytes_FromStringAndSize(NULL, head + cap)
            dst = <uint8_t*>PyBytes_AS_STRING(out) + head
            with nogil:
                clen = _lz4_compress_block(<const char*>body, <char*>dst, <int>raw, bound, self._acceleration)
            if clen > 0 and compression_pays(raw, clen, self._min_saving):
                codec = CODEC_LZ4
                payload_len = clen
                payload_written = True
            else:
                payload_len = raw
        else:
            if try_codec:
                compressed = self._compress(body_owner, body, raw)
                if compression_pays(raw, PyBytes_GET_SIZE(compressed), self._min_saving):
                    codec = self._codec
            payload_len = PyBytes_GET_SIZE(compressed) if codec != CODEC_NONE else raw
            out = PyBytes_FromStringAndSize(NULL, head + payload_len)
            dst = <uint8_t*>PyBytes_AS_STRING(out) + head
        cdef int64_t frame_len = head + payload_len
        cdef int64_t limit = self._frame_limit(nl)
        if frame_len > limit:
            raise ValueError(f"{count} packets ({raw} bytes, {_CODEC_NAMES[codec]} body {payload_len} bytes) "
                             f"make a {frame_len}-byte aggregate frame, over the frame-size limit of "
                             f"{limit} bytes (the {nl.field_names[nl.c.length_index]!r} field of "
                             f"{nl.name}{' and max_frame_size' if limit == self._max_frame_size else ''}); "
                             f"use pack_many()")
        values.type = kAggregateType
        values.seq = seq
        values.player_id = player_id
        err = encode_header(nl.c, dst - head, values, kAggregateHeaderBytes + payload_len)
        if err != EncodeError.none:
            raise ValueError("aggregate frame: " + _encode_error_text(err, nl, kAggregateType, seq, player_id,
                                                                   kAggregateHeaderBytes + payload_len))
        ah.codec = codec
        ah.flags = 0
        ah.count = count
        ah.raw_size = raw
        write_aggregate_header(dst - kAggregateHeaderBytes, ah)
        if payload_written:
            pass
        elif codec != CODEC_NONE:
            memcpy(dst, PyBytes_AS_STRING(compressed), payload_len)
        elif body != NULL:  # the gathered or contiguous body, already in hand
            if payload_len >= NOGIL_MIN_BYTES:
                with nogil:
                    memcpy(dst, body, payload_len)
            else:
                memcpy(dst, body, payload_len)
        elif payload_len >= NOGIL_MIN_BYTES:
            with nogil:
                gather_frames(b._base, offsets, sizes, count, dst)
        else:
            gather_frames(b._base, offsets, sizes, count, dst)
        if in_place and <size_t>frame_len != head + cap:
            # _PyBytes_Resize needs the only reference: hand it ours.
            p = <PyObject*>out
            Py_INCREF(out)
            out = None
            _PyBytes_Resize(&p, frame_len)
            out = <bytes>p
            Py_DECREF(out)  # <bytes>p took one more; the one handed over stays with `out`
        self._stats.count_packed(codec != CODEC_NONE, raw, frame_len)
        return out

    cdef bytes _compress(self, object owner, const uint8_t* body, size_t n):
        """The codec on body[0, n), with the GIL released (liblz4 directly,
        or lz4.block and zlib, which release it inside)."""
        cdef int bound, got
        cdef char* dst
        if self._codec == CODEC_LZ4:
            if not _lz4_direct or n > LZ4_MAX_INPUT:
                return _lz4_compress(_window(owner, body, n), **self._lz4_kwargs)
            bound = _lz4_bound(<int>n)
            out = PyBytes_FromStringAndSize(NULL, bound)
            dst = PyBytes_AS_STRING(out)
            with nogil:
                got = _lz4_compress_block(<const char*>body, dst, <int>n, bound, self._acceleration)
            if got <= 0:
                raise ValueError(f"lz4 could not compress a body of {n} bytes")
            return PyBytes_FromStringAndSize(dst, got)
        return _zlib_compress(_window(owner, body, n), self._level)

    def pack(self, batch, *, seq=0, player_id=0):
        """pack(batch, *, seq=0, player_id=0) -> bytes

        One aggregate frame (type 0xFFFF, in the batch's layout, with the
        given seq and player_id) holding every packet of `batch`. The body is
        compressed when it is at least `threshold` bytes and the result
        saves at least `min_saving`; otherwise it is sent raw (codec 0).

        Raises ValueError naming the limit when the batch cannot fit one
        frame: more than 65535 packets, more than max_raw_size bytes, or a
        frame over the frame-size limit (the layout's length field, 65535
        bytes for GAME, or max_frame_size). pack_many() splits instead.
        """
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"pack needs a PacketBatch, not {type(batch).__name__!r}")
        cdef PacketBatch b = <PacketBatch>batch
        cdef uint64_t seq_ = u64_arg(seq, "seq"), pid = u64_arg(player_id, "player_id")
        self._check_layout(b._layout)
        return self._pack_run(b, 0, b._count, seq_, pid)

    def pack_many(self, batch, *, seq=0, player_id=0):
        """pack_many(batch, *, seq=0, player_id=0) -> list[bytes]

        The batch split into as many aggregate frames as needed, in order.
        Each frame's raw body fits the frame-size limit even uncompressed
        and max_raw_size; an empty batch gives one empty frame. Raises
        ValueError only for a single packet too large for any frame.
        """
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"pack_many needs a PacketBatch, not {type(batch).__name__!r}")
        return self._pack_many(<PacketBatch>batch, u64_arg(seq, "seq"), u64_arg(player_id, "player_id"))

    def frame_capacity(self, layout=None):
        """frame_capacity(layout=None) -> int

        The most bytes of packets (headers included) one aggregate frame in
        `layout` (default: this aggregator's) carries even uncompressed:
        the frame-size limit less the packet and aggregate headers, capped
        by max_raw_size. pack_many() refuses a single larger packet, so a
        peer sending through this aggregator needs max_packet_size at most
        this (65515 for GAME and the defaults).
        """
        cdef HeaderLayout nl = self._layout if layout is None else _layout_arg(layout)
        self._check_layout(nl)
        return self._body_limit(nl)

    cdef list _pack_many(self, PacketBatch b, uint64_t seq, uint64_t player_id):
        self._check_layout(b._layout)
        cdef uint64_t max_body = self._body_limit(b._layout)
        cdef size_t too_big = 0, runs, r
        cdef Py_ssize_t begin = 0
        if b._count == 0:
            return [self._pack_run(b, 0, 0, seq, player_id)]
        ends = np.empty(b._count, dtype=np.uintp)
        cdef size_t[::1] ev = ends
        runs = split_runs(b._cols.sizes, b._count, max_body, &ev[0], &too_big)
        if runs == 0:
            raise ValueError(f"packet {too_big} ({b._cols.sizes[too_big]} bytes) cannot fit any aggregate "
                             f"frame: a frame carries at most {max_body} bytes of packets (the frame-size "
                             f"limit {self._frame_limit(b._layout)} less headers, or max_raw_size)")
        frames = []
        for r in range(runs):
            frames.append(self._pack_run(b, begin, ev[r], seq, player_id))
            begin = ev[r]
        return frames

    # -- unpacking -----------------------------------------------------------

    cdef bytes _open(self, HeaderLayout nl, bytes owner, const uint8_t* frame, size_t n,
                     int64_t where, const uint8_t** body_out, size_t* count_out, size_t* nbytes_out,
                     PacketBatch into, int64_t max_packet_size):
        """Checks one whole aggregate frame frame[0, n) (memory kept alive by
        `owner`, or None when the caller's buffer may change; `where` is its
        stream offset, or -1 for unpack()) and decompresses its body.
        Returns the bytes that own the validated body (*body_out,
        *nbytes_out bytes) and sets *count_out; with `into` (a fresh
        batch), also makes it the batch of those packets, indexed in the
        same pass as the check. Raises AggregateError naming the failed
        check; an inner packet over `max_packet_size` fails the
        "max_packet_size" one (kNoMaxPacketSize: only the body bounds them).
        The body never takes more than raw_size <= max_raw_size bytes (+1
        for zlib's overrun probe); the index of `into` is bounded by count
        <= raw_size / header size."""
        cdef AggregateFrame af
        cdef AggregateFault f = parse_aggregate_frame(nl.c, frame, n, self._max_raw_size, &af)
        if f.check != AggregateCheck.ok:
            self._stats.count_rejected()
            raise _fault_error(f, &af, where)
        cdef const uint8_t* src = frame + af.body_offset
        cdef uint32_t raw_size = af.header.raw_size
        cdef bytes data
        cdef const uint8_t* body
        cdef IndexColumns* cols = NULL
        cdef int64_t base_offset = 0
        if af.header.codec == CODEC_NONE:
            if owner is None:  # a mutable buffer: the packets need their own copy
                owner = PyBytes_FromStringAndSize(<const char*>src, raw_size)
                src = <const uint8_t*>PyBytes_AS_STRING(owner)
            data = owner
            body = src
        else:
            try:
                data = self._decompress(af.header.codec, owner, src, af.body_size, raw_size, where)
            except AggregateError:
                self._stats.count_rejected()
                raise
            body = <const uint8_t*>PyBytes_AS_STRING(data)
        if into is not None:
            into._layout = nl
            into._set_data(data)
            into._alloc_index(af.header.count)
            if af.header.count:
                cols = &into._cols
                base_offset = body - into._base
        f = check_aggregate_body(nl.c, body, raw_size, af.header.count, base_offset, cols, max_packet_size)
        if f.check != AggregateCheck.ok:
            self._stats.count_rejected()
            raise _fault_error(f, NULL, where)
        self._stats.count_unpacked()
        body_out[0] = body
        count_out[0] = af.header.count
        nbytes_out[0] = raw_size
        return data

    cdef bytes _decompress(self, int codec, object owner, const uint8_t* src, size_t n, uint32_t raw_size,
                           int64_t where):
        """Exactly raw_size bytes from the codec, or AggregateError."""
        cdef Py_ssize_t got
        cdef int written
        cdef char* dst
        if codec == CODEC_LZ4 and _lz4_direct:
            # Straight into the batch's bytes: exactly raw_size allocated
            # (checked against max_raw_size already); LZ4_decompress_safe
            # never writes past raw_size nor reads past the body.
            if n > LZ4_MAX_INPUT:
                raise _codec_error("decompress", f"an lz4 block of {n} bytes is over lz4's input limit", where,
                                   n, LZ4_MAX_INPUT)
            out = PyBytes_FromStringAndSize(NULL, raw_size)
            dst = PyBytes_AS_STRING(out)
            if raw_size >= NOGIL_MIN_BYTES:
                with nogil:
                    written = _lz4_decompress_safe(<const char*>src, dst, <int>n, <int>raw_size)
            else:
                written = _lz4_decompress_safe(<const char*>src, dst, <int>n, <int>raw_size)
            if written < 0:
                raise _codec_error("decompress", f"the lz4 block is corrupt or decompresses to more than "
                                   f"raw_size {raw_size} bytes (lz4 error at input byte {-written - 1})",
                                   where, 0, raw_size)
            if written != raw_size:
                raise _codec_error("raw_size", f"the lz4 block decompresses to {written} bytes, raw_size says "
                                   f"{raw_size}", where, raw_size, written)
            return out
        if codec == CODEC_LZ4:
            # uncompressed_size caps the output buffer at raw_size (checked
            # against max_raw_size already); lz4 fails on anything longer.
            try:
                out = _lz4_decompress(_window(owner, src, n), raw_size)
            except Exception as exc:
                raise _codec_error("decompress", f"the lz4 block does not decompress into raw_size {raw_size} "
                                   f"bytes: {exc}", where, 0, raw_size) from None
            got = PyBytes_GET_SIZE(out)
            if got != raw_size:
                raise _codec_error("raw_size", f"the lz4 block decompresses to {got} bytes, raw_size says "
                                   f"{raw_size}", where, value=raw_size, limit=got)
            return out
        # zlib: ask for one byte more than raw_size to see an overrun
        # without ever holding more than raw_size + 1 bytes.
        d = _zlib_decompressobj()
        try:
            out = d.decompress(_window(owner, src, n), raw_size + 1)
        except _zlib.error as exc:
            raise _codec_error("decompress", f"the zlib stream is corrupt: {exc}", where) from None
        got = PyBytes_GET_SIZE(out)
        if got > raw_size:
            raise _codec_error("raw_size", f"the zlib stream decompresses to more than raw_size {raw_size} "
                               f"bytes", where, value=raw_size, limit=got)
        if not d.eof:
            raise _codec_error("decompress", f"the zlib stream is truncated (ends after {got} bytes of "
                               f"output, raw_size {raw_size})", where, 0, raw_size)
        if got != raw_size:
            raise _codec_error("raw_size", f"the zlib stream decompresses to {got} bytes, raw_size says "
                               f"{raw_size}", where, value=raw_size, limit=got)
        if d.unused_data:
            raise _codec_error("decompress", f"{len(d.unused_data)} bytes follow the end of the zlib stream",
                               where)
        return out

    def unpack(self, frame, *, layout=None, max_packet_size=None):
        """unpack(frame, *, layout=None, max_packet_size=None) -> PacketBatch

        The packets of one aggregate frame (any contiguous bytes-like object
        holding exactly that packet), in the aggregator's layout unless
        `layout` is given. Every check failure raises AggregateError naming
        the check (see fastpacket.aggregate); raw_size is checked against
        max_raw_size before anything is decompressed. With
        `max_packet_size`, an inner packet larger than that fails the
        "max_packet_size" check, as FrameDecoder refuses it alone.
        """
        cdef HeaderLayout nl = self._layout if layout is None else _layout_arg(layout)
        cdef int64_t limit = kNoMaxPacketSize
        if max_packet_size is not None:
            limit = ssize_arg(max_packet_size, "max_packet_size", nl.c.header_size, kMaxPacketSizeLimit)
        cdef Py_buffer view
        cdef const uint8_t* body
        cdef size_t count, nbytes
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        get_contiguous_buffer(frame, &view, "Aggregator.unpack")
        try:
            self._open(nl, frame if type(frame) is bytes else None, <const uint8_t*>view.buf, view.len, -1,
                       &body, &count, &nbytes, b, limit)
            return b
        finally:
            PyBuffer_Release(&view)

    cdef int64_t _outer_frame_limit(self, HeaderLayout nl, uint64_t budget):
        """Largest aggregate frame (header included) that a peer packing at
        most this aggregator's max_raw_size (and `budget`; 0: none) of
        packets makes: a compressed body is kept only when smaller than the
        raw one, so header + aggregate header + raw body bounds it; no more
        than the layout's length field (or max_frame_size) announces, nor
        MAX_PACKET_SIZE."""
        cdef uint64_t raw = self._max_raw_size if budget == 0 else min(self._max_raw_size, budget)
        cdef int64_t limit = self._frame_limit(nl)
        cdef uint64_t by_raw = nl.c.header_size + kAggregateHeaderBytes + raw
        if limit < 0 or <uint64_t>limit > by_raw:
            limit = <int64_t>by_raw
        return min(limit, <int64_t>kMaxPacketSizeLimit)


cdef Aggregator _aggregator_arg(object aggregator):
    if aggregator is not None and not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator must be a fastpacket.Aggregator or None, not {type(aggregator).__name__!r}")
    return <Aggregator>aggregator


cdef PacketBatch _concat_segments(HeaderLayout nl, list segments):
    """One batch of the segments' packets in order; each segment is
    (owner, address, nbytes, count) of validated packets back to back."""
    cdef size_t nbytes = 0, count = 0, pos = 0, k
    for seg in segments:
        nbytes += <size_t>seg[2]
        count += <size_t>seg[3]
    data = PyBytes_FromStringAndSize(NULL, nbytes)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(data)
    for seg in segments:
        k = seg[2]
        memcpy(dst + pos, <const uint8_t*><size_t>seg[1], k)
        pos += k
    return _batch_over(nl, data, count)


cdef int _add_run(list segments, PacketBatch b, Py_ssize_t begin, Py_ssize_t end) except -1:
    """Adds b's plain packets [begin, end) to `segments` (as they lie in b)."""
    if end <= begin:
        return 0
    cdef size_t nbytes = b._cols.offsets[end - 1] + b._cols.sizes[end - 1] - b._cols.offsets[begin]
    segments.append((b._data, <size_t>(b._base + b._cols.offsets[begin]), nbytes, end - begin))
    return 0


@cython.final
cdef class _Unwrapper:
    """The aggregate-unwrapping half of decoding a stream (FrameDecoder with
    an aggregator; the asyncio adapter's sessions): decoded frames in, their
    packets out in stream order, each aggregate frame replaced by its
    packets, under two limits checked before anything is decompressed:

    - max_packet_size: every packet delivered, alone or inside an
      aggregate, is at most this (frame_size_ok(), the stream's rule);
    - the inflate budget (max_inflate_bytes; 0: none): the raw_size the
      aggregates unwrapped by one call declare adds up to at most the
      budget. An aggregate declaring more than the whole budget is refused
      (AggregateError, check "max_inflate_bytes"); one that would take the
      call past it waits, with every frame after it, for the next call
      (`_held_bytes`), which starts with them.

    A bad frame raises AggregateError (ProtocolError for a plain packet
    over max_packet_size) with the packets before it as exc.batch; the
    frames after it are dropped (the stream cannot be trusted any more)."""

    def __cinit__(self, Aggregator agg not None, HeaderLayout layout not None, int64_t max_packet_size,
                  uint64_t budget):
        self._agg = agg
        self._layout = layout
        self._max_packet_size = max_packet_size
        self._budget = budget
        self._held = []
        self._held_bytes = 0

    cdef int _hold(self, PacketBatch b, Py_ssize_t row, uint64_t stream_base) except -1:
        """Holds b's frames from `row` on (its data at stream offset stream_base)."""
        self._held.append((b, row, stream_base))
        self._held_bytes += _frames_bytes(b, row)
        return 0

    cdef Py_ssize_t _drop_held(self):
        """Forgets the held frames; returns how many there were."""
        cdef Py_ssize_t n = 0
        for item in self._held:
            n += (<PacketBatch>item[0])._count - <Py_ssize_t>item[1]
        self._held = []
        self._held_bytes = 0
        return n

    cdef bint _plain(self, PacketBatch b):
        """True when `b` holds no aggregate and no packet over
        max_packet_size: it passes as it is, uncopied."""
        cdef Layout* c = &b._layout.c
        cdef size_t hs = c.header_size
        cdef Py_ssize_t i
        cdef bint may_aggregate = c.type_index >= 0 and c.field_max(c.type_index) >= kAggregateType
        for i in range(b._count):
            if not frame_size_ok(b._cols.sizes[i], hs, self._max_packet_size):
                return False
            if may_aggregate and c.read(b._cols.headers + i * hs, c.type_index) == kAggregateType:
                return False
        return True

    cdef int _fail(self, list segments, object error, uint64_t where) except -1:
        """Raises `error` for the frame at stream offset `where`, with the
        packets before it (`segments`) as error.batch."""
        self._drop_held()
        error.stream_offset = where
        error.batch = _concat_segments(self._layout, segments)
        raise error

    cdef PacketBatch unwrap(self, PacketBatch frames, uint64_t stream_base):
        """The packets of the frames held from the previous call, then of
        `frames` (complete frames whose data starts at stream offset
        `stream_base`; None or empty: the held ones only), as far as the
        inflate budget goes; the rest is held for the next call."""
        if not self._held:
            if frames is None or frames._count == 0:
                return frames if frames is not None else _batch_over(self._layout, _EMPTY_BYTES, 0)
            if self._plain(frames):
                return frames
        if frames is not None and frames._count:
            self._hold(frames, 0, stream_base)
        cdef HeaderLayout nl = self._layout
        cdef Layout* c = &nl.c
        cdef size_t hs = c.header_size
        cdef bint may_aggregate = c.type_index >= 0 and c.field_max(c.type_index) >= kAggregateType
        cdef PacketBatch b, single
        cdef Py_ssize_t i, row, run_start
        cdef uint64_t base, spent = 0, where
        cdef size_t count, inner_bytes
        cdef const uint8_t* body
        cdef const uint8_t* frame
        cdef AggregateHeader declared
        cdef bint has_declared
        segments = []
        while self._held:
            item = self._held[0]
            b = <PacketBatch>item[0]
            row = item[1]
            base = item[2]
            run_start = row
            i = row
            while i < b._count:
                where = base + b._cols.offsets[i]
                frame = b._base + b._cols.offsets[i]
                if not (may_aggregate and c.read(b._cols.headers + i * hs, c.type_index) == kAggregateType):
                    if not frame_size_ok(b._cols.sizes[i], hs, self._max_packet_size):
                        _add_run(segments, b, run_start, i)
                        self._fail(segments, _oversize_error(nl, b, i, where, self._max_packet_size), where)
                    i += 1
                    continue
                has_declared = declared_aggregate(c[0], frame, b._cols.sizes[i], &declared)
                if self._budget and has_declared:
                    if declared.raw_size > self._budget:
                        self._agg._stats.count_rejected()
                        _add_run(segments, b, run_start, i)
                        self._fail(segments, _budget_error(declared.raw_size, self._budget, where, hs), where)
                    if spent + declared.raw_size > self._budget:
                        # this call's budget is spent: the frames from here on wait for the next
                        _add_run(segments, b, run_start, i)
                        self._held[0] = (b, i, base)
                        self._held_bytes = 0
                        for item in self._held:
                            self._held_bytes += _frames_bytes(<PacketBatch>item[0], item[1])
                        return _concat_segments(nl, segments)
                    spent += declared.raw_size
                _add_run(segments, b, run_start, i)
                single = None
                if b._count == 1 and not segments and len(self._held) == 1:
                    single = PacketBatch.__new__(PacketBatch)  # the only frame: its batch, no copy
                try:
                    owner = self._agg._open(nl, b._data, frame, b._cols.sizes[i], where, &body, &count,
                                            &inner_bytes, single, self._max_packet_size)
                except AggregateError as exc:
                    self._fail(segments, exc, where)
                if single is not None:
                    self._held.pop(0)
                    self._held_bytes = 0
                    return single
                segments.append((owner, <size_t>body, inner_bytes, count))
                i += 1
                run_start = i
            _add_run(segments, b, run_start, b._count)
            self._held.pop(0)
        self._held_bytes = 0
        return _concat_segments(nl, segments)


cdef size_t _frames_bytes(PacketBatch b, Py_ssize_t row):
    """Bytes of b's frames from `row` on."""
    if row >= b._count:
        return 0
    return b._cols.offsets[b._count - 1] + b._cols.sizes[b._count - 1] - b._cols.offsets[row]


cdef object _budget_error(uint64_t raw_size, uint64_t budget, uint64_t where, size_t hs):
    """An aggregate declaring more than the whole inflate budget."""
    return AggregateError(f"{_where(where)}: bad aggregate frame (max_inflate_bytes): raw_size {raw_size} at "
                          f"offset {hs + 4} exceeds max_inflate_bytes {budget}, the most one read inflates; "
                          f"refused before decompressing", check="max_inflate_bytes", offset=hs + 4,
                          value=raw_size, limit=budget)


cdef object _oversize_error(HeaderLayout nl, PacketBatch b, Py_ssize_t i, uint64_t where, int64_t limit):
    """A plain packet over max_packet_size that the scan let through (with
    an aggregator its limit is the aggregate frames'): the ProtocolError
    FrameDecoder raises for it without one."""
    cdef Layout* c = &nl.c
    field = nl.field_names[c.length_index]
    length = c.read(b._cols.headers + i * c.header_size, c.length_index)
    return ProtocolError(f"packet size {b._cols.sizes[i]} at stream offset {where} exceeds max_packet_size "
                         f"{limit} (length field {field!r} = {length})", offset=where, value=b._cols.sizes[i],
                         limit=limit)
