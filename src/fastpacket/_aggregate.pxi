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
        if not isinstance(threshold, int) or threshold < 0:
            raise ValueError(f"threshold must be a non-negative int (bytes), got {threshold!r}")
        if not isinstance(min_saving, (int, float)) or not isfinite(min_saving) or not 0 <= min_saving < 1:
            raise ValueError(f"min_saving must be in [0, 1), got {min_saving!r}")
        if not isinstance(max_raw_size, int) or not 0 <= max_raw_size <= kRawSizeLimit:
            raise ValueError(f"max_raw_size must be an int in [0, {kRawSizeLimit}] (what every codec "
                             f"handles), got {max_raw_size!r}")
        if not isinstance(level, int) or not 0 <= level <= _ZLIB_MAX_LEVEL:
            raise ValueError(f"level must be a zlib level 0..{_ZLIB_MAX_LEVEL}, got {level!r}")
        if not isinstance(acceleration, int) or acceleration < 1:
            raise ValueError(f"acceleration must be an int >= 1, got {acceleration!r}")
        cdef HeaderLayout nl = _layout_arg(layout)
        min_frame = nl.c.header_size + kAggregateHeaderBytes
        if max_frame_size is not None and (not isinstance(max_frame_size, int) or max_frame_size < min_frame):
            raise ValueError(f"max_frame_size must be an int >= {min_frame} (header + aggregate header), "
                             f"got {max_frame_size!r}")
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

    def pack(self, batch, *, uint64_t seq=0, uint64_t player_id=0):
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
        self._check_layout(b._layout)
        return self._pack_run(b, 0, b._count, seq, player_id)

    def pack_many(self, batch, *, uint64_t seq=0, uint64_t player_id=0):
        """pack_many(batch, *, seq=0, player_id=0) -> list[bytes]

        The batch split into as many aggregate frames as needed, in order.
        Each frame's raw body fits the frame-size limit even uncompressed
        and max_raw_size; an empty batch gives one empty frame. Raises
        ValueError only for a single packet too large for any frame.
        """
        if not isinstance(batch, PacketBatch):
            raise TypeError(f"pack_many needs a PacketBatch, not {type(batch).__name__!r}")
        return self._pack_many(<PacketBatch>batch, seq, player_id)

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
                     PacketBatch into):
        """Checks one whole aggregate frame frame[0, n) (memory kept alive by
        `owner`, or None when the caller's buffer may change; `where` is its
        stream offset, or -1 for unpack()) and decompresses its body.
        Returns the bytes that own the validated body (*body_out,
        *nbytes_out bytes) and sets *count_out; with `into` (a fresh
        batch), also makes it the batch of those packets, indexed in the
        same pass as the check. Raises AggregateError naming the failed
        check. The body never takes more than raw_size <= max_raw_size
        bytes (+1 for zlib's overrun probe); the index of `into` is bounded
        by count <= raw_size / header size."""
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
        f = check_aggregate_body(nl.c, body, raw_size, af.header.count, base_offset, cols)
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

    def unpack(self, frame, *, layout=None):
        """unpack(frame, *, layout=None) -> PacketBatch

        The packets of one aggregate frame (any contiguous bytes-like object
        holding exactly that packet), in the aggregator's layout unless
        `layout` is given. Every check failure raises AggregateError naming
        the check (see fastpacket.aggregate); raw_size is checked against
        max_raw_size before anything is decompressed.
        """
        cdef HeaderLayout nl = self._layout if layout is None else _layout_arg(layout)
        cdef Py_buffer view
        cdef const uint8_t* body
        cdef size_t count, nbytes
        cdef PacketBatch b = PacketBatch.__new__(PacketBatch)
        get_contiguous_buffer(frame, &view, "Aggregator.unpack")
        try:
            self._open(nl, frame if type(frame) is bytes else None, <const uint8_t*>view.buf, view.len, -1,
                       &body, &count, &nbytes, b)
            return b
        finally:
            PyBuffer_Release(&view)


cdef Aggregator _aggregator_arg(object aggregator):
    if aggregator is not None and not isinstance(aggregator, Aggregator):
        raise TypeError(f"aggregator must be a fastpacket.Aggregator or None, not {type(aggregator).__name__!r}")
    return <Aggregator>aggregator


cdef PacketBatch _concat_segments(HeaderLayout nl, list segments, size_t nbytes, size_t count):
    """One batch of the segments' packets in order; each segment is
    (owner, address, nbytes, count) of validated packets back to back."""
    data = PyBytes_FromStringAndSize(NULL, nbytes)
    cdef uint8_t* dst = <uint8_t*>PyBytes_AS_STRING(data)
    cdef size_t pos = 0, k
    for seg in segments:
        k = seg[2]
        memcpy(dst + pos, <const uint8_t*><size_t>seg[1], k)
        pos += k
    return _batch_over(nl, data, count)


cdef PacketBatch _unwrap_aggregates(Aggregator agg, PacketBatch b, uint64_t stream_base):
    """The batch with each aggregate frame replaced by its packets, in stream
    order. A bad aggregate raises AggregateError carrying, as exc.batch, the
    packets before it (earlier aggregates unwrapped)."""
    cdef HeaderLayout nl = b._layout
    cdef Layout* c = &nl.c
    cdef size_t hs = c.header_size
    cdef Py_ssize_t i, n = b._count, run_start = 0, naggs = 0
    cdef const uint8_t* body
    cdef size_t count, total_bytes = 0, total_count = 0, inner_bytes
    if c.type_index < 0 or c.field_max(c.type_index) < kAggregateType:
        return b
    for i in range(n):
        if c.read(b._cols.headers + i * hs, c.type_index) == kAggregateType:
            naggs += 1
    if naggs == 0:
        return b
    segments = []
    for i in range(n):
        if c.read(b._cols.headers + i * hs, c.type_index) != kAggregateType:
            continue
        if i > run_start:  # the ordinary packets since the previous aggregate
            inner_bytes = b._cols.offsets[i - 1] + b._cols.sizes[i - 1] - b._cols.offsets[run_start]
            segments.append((b._data, <size_t>(b._base + b._cols.offsets[run_start]), inner_bytes,
                             i - run_start))
            total_bytes += inner_bytes
            total_count += i - run_start
        single = PacketBatch.__new__(PacketBatch) if n == 1 else None
        try:
            owner = agg._open(nl, b._data, b._base + b._cols.offsets[i], b._cols.sizes[i],
                              stream_base + b._cols.offsets[i], &body, &count, &inner_bytes, single)
        except AggregateError as exc:
            exc.stream_offset = stream_base + b._cols.offsets[i]
            exc.batch = _concat_segments(nl, segments, total_bytes, total_count)
            raise
        if single is not None:
            return single  # the whole feed was one aggregate: its batch, no copy
        segments.append((owner, <size_t>body, inner_bytes, count))
        total_bytes += inner_bytes
        total_count += count
        run_start = i + 1
    if run_start < n:
        inner_bytes = b._cols.offsets[n - 1] + b._cols.sizes[n - 1] - b._cols.offsets[run_start]
        segments.append((b._data, <size_t>(b._base + b._cols.offsets[run_start]), inner_bytes, n - run_start))
        total_bytes += inner_bytes
        total_count += n - run_start
    return _concat_segments(nl, segments, total_bytes, total_count)
