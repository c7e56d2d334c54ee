// Stream framing: find complete frames in a byte stream, keep the incomplete
// tail between feeds, index frames into columns, encode headers. The rules
// (frame size checked as soon as a header arrives, packets before a bad
// header delivered, nothing after it) are docs/wire-format.md, section 2.
//
// Plain C++17, no Python. No allocation in per-packet loops: the decoder's
// pending buffer is reserved once (bounded by max_packet_size) and the
// caller allocates the output of emit() from plan()'s exact counts.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastpacket/layout.hpp"

namespace fastpacket {

/// Default max_packet_size, in bytes: the largest frame GAME's u16 size
/// field can announce.
constexpr std::size_t kDefaultMaxPacketSize = 0xFFFF;
/// Largest max_packet_size a decoder takes, in bytes: a batch's sizes
/// column is u32. Bounded so, every frame size a header can announce is
/// compared exactly: a u64 length field's values from 2^62 up saturate
/// (frame_size()), and 2^62 less any length_adjustment (|adj| <= 2^32)
/// still exceeds this limit, so a saturated size is always too_large.
constexpr std::size_t kMaxPacketSizeLimit = 0xFFFFFFFF;

/// The one frame-size rule, shared by a stream's frames (the decoder) and
/// the packets inside an aggregate frame (check_aggregate_body()): a frame
/// is at least its header and at most max_size bytes.
inline bool frame_size_ok(std::int64_t frame, std::size_t header_size, std::int64_t max_size) noexcept {
    return frame >= static_cast<std::int64_t>(header_size) && frame <= max_size;
}

/// Which frames a decoder that unwraps aggregate frames (type 0xFFFF)
/// takes above max_packet_size: aggregate frames only, up to the larger
/// limit it scans with (they carry many packets; each packet inside is
/// checked against max_packet_size when unwrapped). A plain packet over
/// plain_max is refused as soon as its header arrives, as without one.
struct AggregateAllowance {
    std::int64_t plain_max;  // max_packet_size: frames above it must be aggregates
    const Layout* layout;    // whose type field says so

    static AggregateAllowance none(const Layout& l, std::int64_t max) noexcept { return {max, &l}; }
    bool is_aggregate(const std::uint8_t* header) const noexcept {
        return layout->type_index >= 0 && layout->read(header, layout->type_index) == kAggregateType;
    }
};

enum class FrameError : std::uint8_t {
    none = 0,
    too_small = 1,  // announced frame size below the header size
    too_large = 2,  // announced frame size above max_packet_size
    failed = 3,     // the decoder already failed; reset() it first
};

/// Where and why a stream went wrong.
struct ErrorInfo {
    FrameError kind = FrameError::none;
    std::uint64_t stream_offset = 0;  // offset of the bad header in the whole stream
    std::int64_t frame_size = 0;      // the frame size the header announced
    std::uint64_t length_value = 0;   // the raw length field
};

/// Result of scanning a contiguous buffer for complete frames.
struct ScanResult {
    std::size_t count = 0;  // complete frames found
    std::size_t end = 0;    // offset just past the last complete frame
    bool error = false;     // a bad header sits at `end`
};

namespace detail {

// The length field read with its width and byte order fixed at compile time:
// the scan loop of the default GAME layout (u16 little-endian) compiles to a
// load and an add per packet.
template <unsigned W, bool BE>
struct LengthReader {
    std::uint16_t offset;
    std::int64_t bias;
    std::int64_t operator()(const std::uint8_t* h) const noexcept {
        const std::uint64_t raw = load_unsigned(h + offset, W, BE);
        constexpr std::uint64_t kSaturate = std::uint64_t{1} << 62;
        if (W == 8 && raw >= kSaturate) return static_cast<std::int64_t>(kSaturate);
        return static_cast<std::int64_t>(raw) + bias;
    }
};

template <class Reader>
ScanResult scan_with(const std::uint8_t* data, std::size_t n, std::size_t header_size,
                     std::int64_t max_size, Reader size_of, const AggregateAllowance& allow) noexcept {
    ScanResult r;
    std::size_t pos = 0;
    while (n - pos >= header_size) {
        const std::int64_t frame = size_of(data + pos);
        // one compare more per frame; the allowance's type read only past max_packet_size
        if (!frame_size_ok(frame, header_size, max_size) ||
            (frame > allow.plain_max && !allow.is_aggregate(data + pos))) {
            r.error = true;
            break;
        }
        if (static_cast<std::int64_t>(n - pos) < frame) break;
        pos += static_cast<std::size_t>(frame);
        ++r.count;
    }
    r.end = pos;
    return r;
}

template <unsigned W, bool BE>
ScanResult scan_fixed(const Layout& l, const std::uint8_t* d, std::size_t n, std::int64_t max,
                      const AggregateAllowance& allow) noexcept {
    LengthReader<W, BE> reader{l.fields[l.length_index].offset, l.frame_bias()};
    return scan_with(d, n, l.header_size, max, reader, allow);
}

}  // namespace detail

/// Scans `data[0, n)` for complete frames of layout `l`; stops at the first
/// incomplete frame or at the first bad header (result.error, at result.end).
/// With an `allow`ance, frames above its plain_max (up to max_packet_size)
/// must be aggregate frames.
inline ScanResult scan_frames(const Layout& l, const std::uint8_t* data, std::size_t n,
                              std::int64_t max_packet_size, const AggregateAllowance& allow) noexcept {
    const unsigned w = l.fields[l.length_index].width;
    if (l.big_endian) {
        switch (w) {
            case 1: return detail::scan_fixed<1, true>(l, data, n, max_packet_size, allow);
            case 2: return detail::scan_fixed<2, true>(l, data, n, max_packet_size, allow);
            case 4: return detail::scan_fixed<4, true>(l, data, n, max_packet_size, allow);
            default: return detail::scan_fixed<8, true>(l, data, n, max_packet_size, allow);
        }
    }
    switch (w) {
        case 1: return detail::scan_fixed<1, false>(l, data, n, max_packet_size, allow);
        case 2: return detail::scan_fixed<2, false>(l, data, n, max_packet_size, allow);
        case 4: return detail::scan_fixed<4, false>(l, data, n, max_packet_size, allow);
        default: return detail::scan_fixed<8, false>(l, data, n, max_packet_size, allow);
    }
}

inline ScanResult scan_frames(const Layout& l, const std::uint8_t* data, std::size_t n,
                              std::int64_t max_packet_size) noexcept {
    return scan_frames(l, data, n, max_packet_size, AggregateAllowance::none(l, max_packet_size));
}

/// Column storage for `count` frames: offsets into the data, whole sizes and
/// a copy of each header (count * header_size bytes, the layout's dtype).
struct IndexColumns {
    std::int64_t* offsets = nullptr;
    std::uint32_t* sizes = nullptr;
    std::uint8_t* headers = nullptr;
};

/// Bytes one IndexColumns block needs for `count` frames of `header_size`.
inline std::size_t index_bytes(std::size_t count, std::size_t header_size) noexcept {
    return count * (sizeof(std::int64_t) + sizeof(std::uint32_t) + header_size);
}

/// Lays out an IndexColumns view over one block of index_bytes() bytes;
/// offsets first so every column stays naturally aligned.
inline IndexColumns index_view(void* block, std::size_t count, [[maybe_unused]] std::size_t header_size) noexcept {
    auto* base = static_cast<std::uint8_t*>(block);
    IndexColumns c;
    c.offsets = reinterpret_cast<std::int64_t*>(base);
    c.sizes = reinterpret_cast<std::uint32_t*>(base + count * sizeof(std::int64_t));
    c.headers = base + count * (sizeof(std::int64_t) + sizeof(std::uint32_t));
    return c;
}

namespace detail {

// The index pass with the length reader and, for the default 12-byte
// header, the header copy fixed at compile time: a variable-size memcpy per
// packet is a library call, and a generic field read is a loop.
template <std::size_t HS, class Reader>
void index_with(std::size_t header_size, const std::uint8_t* data, std::size_t count, std::int64_t base_offset,
                IndexColumns cols, Reader size_of) noexcept {
    const std::size_t hs = HS ? HS : header_size;
    std::size_t pos = 0;
    for (std::size_t i = 0; i < count; ++i) {
        const auto frame = static_cast<std::size_t>(size_of(data + pos));
        cols.offsets[i] = base_offset + static_cast<std::int64_t>(pos);
        cols.sizes[i] = static_cast<std::uint32_t>(frame);
        std::memcpy(cols.headers + i * hs, data + pos, HS ? HS : hs);
        pos += frame;
    }
}

template <unsigned W, bool BE>
void index_fixed(const Layout& l, const std::uint8_t* data, std::size_t count, std::int64_t base_offset,
                 IndexColumns cols) noexcept {
    LengthReader<W, BE> reader{l.fields[l.length_index].offset, l.frame_bias()};
    if (l.header_size == 12) return index_with<12>(12, data, count, base_offset, cols, reader);
    return index_with<0>(l.header_size, data, count, base_offset, cols, reader);
}

}  // namespace detail

/// Fills `cols` for `count` frames known (from scan_frames) to lie back to
/// back from data[0]. `base_offset` is added to each stored offset.
inline void index_frames(const Layout& l, const std::uint8_t* data, std::size_t count,
                         std::int64_t base_offset, IndexColumns cols) noexcept {
    const unsigned w = l.fields[l.length_index].width;
    if (l.big_endian) {
        switch (w) {
            case 1: return detail::index_fixed<1, true>(l, data, count, base_offset, cols);
            case 2: return detail::index_fixed<2, true>(l, data, count, base_offset, cols);
            case 4: return detail::index_fixed<4, true>(l, data, count, base_offset, cols);
            default: return detail::index_fixed<8, true>(l, data, count, base_offset, cols);
        }
    }
    switch (w) {
        case 1: return detail::index_fixed<1, false>(l, data, count, base_offset, cols);
        case 2: return detail::index_fixed<2, false>(l, data, count, base_offset, cols);
        case 4: return detail::index_fixed<4, false>(l, data, count, base_offset, cols);
        default: return detail::index_fixed<8, false>(l, data, count, base_offset, cols);
    }
}

namespace detail {

// scan_with() and index_with() in one pass: each complete frame is indexed
// as it is found, so the frames of a feed are read once, not twice.
template <std::size_t HS, class Reader>
ScanResult scan_index_with(std::size_t header_size, const std::uint8_t* data, std::size_t n, std::int64_t max_size,
                           std::int64_t base_offset, IndexColumns cols, Reader size_of,
                           const AggregateAllowance& allow) noexcept {
    ScanResult r;
    const std::size_t hs = HS ? HS : header_size;
    const auto ihs = static_cast<std::int64_t>(hs);
    std::size_t pos = 0, k = 0;
    while (n - pos >= hs) {
        const std::int64_t frame = size_of(data + pos);
        // the allowance's type read only past max_packet_size, as in scan_with()
        if (frame < ihs || frame > max_size || (frame > allow.plain_max && !allow.is_aggregate(data + pos))) {
            r.error = true;
            break;
        }
        if (static_cast<std::int64_t>(n - pos) < frame) break;
        cols.offsets[k] = base_offset + static_cast<std::int64_t>(pos);
        cols.sizes[k] = static_cast<std::uint32_t>(frame);
        std::memcpy(cols.headers + k * hs, data + pos, HS ? HS : hs);
        pos += static_cast<std::size_t>(frame);
        ++k;
    }
    r.count = k;
    r.end = pos;
    return r;
}

template <unsigned W, bool BE>
ScanResult scan_index_fixed(const Layout& l, const std::uint8_t* d, std::size_t n, std::int64_t max,
                            std::int64_t base_offset, IndexColumns cols, const AggregateAllowance& allow) noexcept {
    LengthReader<W, BE> reader{l.fields[l.length_index].offset, l.frame_bias()};
    if (l.header_size == 12) return scan_index_with<12>(12, d, n, max, base_offset, cols, reader, allow);
    return scan_index_with<0>(l.header_size, d, n, max, base_offset, cols, reader, allow);
}

}  // namespace detail

/// Most frames data[0, n) can hold (each frame is at least a header):
/// the capacity of the columns scan_index_frames() fills.
inline std::size_t max_frames(std::size_t n, std::size_t header_size) noexcept { return n / header_size; }

/// scan_frames() that also indexes each complete frame into `cols` (room
/// for max_frames(n) frames), with `base_offset` added to each offset: one
/// pass over the frames instead of scan_frames() then index_frames().
inline ScanResult scan_index_frames(const Layout& l, const std::uint8_t* data, std::size_t n,
                                    std::int64_t max_packet_size, std::int64_t base_offset,
                                    IndexColumns cols, const AggregateAllowance& allow) noexcept {
    const unsigned w = l.fields[l.length_index].width;
    const std::int64_t m = max_packet_size;
    if (l.big_endian) {
        switch (w) {
            case 1: return detail::scan_index_fixed<1, true>(l, data, n, m, base_offset, cols, allow);
            case 2: return detail::scan_index_fixed<2, true>(l, data, n, m, base_offset, cols, allow);
            case 4: return detail::scan_index_fixed<4, true>(l, data, n, m, base_offset, cols, allow);
            default: return detail::scan_index_fixed<8, true>(l, data, n, m, base_offset, cols, allow);
        }
    }
    switch (w) {
        case 1: return detail::scan_index_fixed<1, false>(l, data, n, m, base_offset, cols, allow);
        case 2: return detail::scan_index_fixed<2, false>(l, data, n, m, base_offset, cols, allow);
        case 4: return detail::scan_index_fixed<4, false>(l, data, n, m, base_offset, cols, allow);
        default: return detail::scan_index_fixed<8, false>(l, data, n, m, base_offset, cols, allow);
    }
}

inline ScanResult scan_index_frames(const Layout& l, const std::uint8_t* data, std::size_t n,
                                    std::int64_t max_packet_size, std::int64_t base_offset,
                                    IndexColumns cols) noexcept {
    return scan_index_frames(l, data, n, max_packet_size, base_offset, cols,
                             AggregateAllowance::none(l, max_packet_size));
}

/// Values for a header's role fields; fields without a role are written 0.
struct HeaderValues {
    std::uint64_t type = 0;
    std::uint64_t seq = 0;
    std::uint64_t player_id = 0;
};

enum class EncodeError : std::uint8_t { none = 0, too_large, no_type_field, type_range, seq_range, player_id_range };

/// Writes a header for a frame carrying `payload_len` bytes into `out`
/// (header_size bytes). Checks every value against its field width. A
/// layout without a type field (length + body, Twisted's IntNStringReceiver)
/// frames a payload with type 0, which stands for "no type": any other type
/// is no_type_field, since it could not be carried.
inline EncodeError encode_header(const Layout& l, std::uint8_t* out, const HeaderValues& v,
                                 std::size_t payload_len) noexcept {
    std::memset(out, 0, l.header_size);
    std::uint64_t length = 0;
    if (!l.length_value_for(std::uint64_t{l.header_size} + payload_len, &length)) return EncodeError::too_large;
    if (l.type_index < 0) {
        if (v.type != 0) return EncodeError::no_type_field;
    } else if (v.type > l.field_max(l.type_index)) {
        return EncodeError::type_range;
    }
    if (l.seq_index >= 0 && v.seq > l.field_max(l.seq_index)) return EncodeError::seq_range;
    if (l.player_id_index >= 0 && v.player_id > l.field_max(l.player_id_index)) return EncodeError::player_id_range;
    l.write(out, l.length_index, length);
    if (l.type_index >= 0) l.write(out, l.type_index, v.type);
    if (l.seq_index >= 0) l.write(out, l.seq_index, v.seq);
    if (l.player_id_index >= 0) l.write(out, l.player_id_index, v.player_id);
    return EncodeError::none;
}

namespace detail {

// A header field store with its width fixed at compile time: the byte loop of
// store_unsigned() unrolls and merges into one store.
inline void store_field(std::uint8_t* p, unsigned width, bool big_endian, std::uint64_t v) noexcept {
    switch (width) {
        case 1: return store_unsigned(p, 1, big_endian, v);
        case 2: return store_unsigned(p, 2, big_endian, v);
        case 4: return store_unsigned(p, 4, big_endian, v);
        default: return store_unsigned(p, 8, big_endian, v);
    }
}

/// Records up to this many bytes are copied word by word inline; longer
/// ones with memcpy (a library call costs more than a few moves).
constexpr std::size_t kInlineCopyBytes = 64;

// Copies a record of n bytes: for the usual few-field record (8 to 40
// bytes) a handful of moves instead of a call per packet.
inline void copy_record(std::uint8_t* dst, const std::uint8_t* src, std::size_t n) noexcept {
    if (n > kInlineCopyBytes) {
        std::memcpy(dst, src, n);
        return;
    }
    std::size_t k = 0;
    for (; k + 8 <= n; k += 8) std::memcpy(dst + k, src + k, 8);
    if (n - k >= 4) { std::memcpy(dst + k, src + k, 4); k += 4; }
    if (n - k >= 2) { std::memcpy(dst + k, src + k, 2); k += 2; }
    if (n - k >= 1) dst[k] = src[k];
}

}  // namespace detail

// ---------------------------------------------------------------------------
// Payload records: a fixed-size record at the start of every payload (a
// numpy dtype's itemsize), read into one array and written back as frames,
// so a batch becomes an array and an array becomes packets with no
// per-packet step in the interpreter.

/// The frame size shared by `count` frames that all have the same size and
/// lie back to back (offsets[i] == offsets[0] + i * sizes[0]): their payload
/// records then form a strided array over the data itself. 0 otherwise
/// (and for count == 0).
inline std::size_t uniform_frame_stride(const std::int64_t* offsets, const std::uint32_t* sizes,
                                        std::size_t count) noexcept {
    if (count == 0) return 0;
    const std::uint32_t s = sizes[0];
    for (std::size_t i = 1; i < count; ++i) {
        if (sizes[i] != s || offsets[i] != offsets[i - 1] + static_cast<std::int64_t>(s)) return 0;
    }
    return s;
}

/// Index of the first frame whose payload is shorter than `itemsize`
/// bytes, or `count` when every payload holds a record.
inline std::size_t first_short_payload(const std::uint32_t* sizes, std::size_t count, std::size_t header_size,
                                       std::size_t itemsize) noexcept {
    const std::uint64_t need = std::uint64_t{header_size} + itemsize;
    for (std::size_t i = 0; i < count; ++i) {
        if (sizes[i] < need) return i;
    }
    return count;
}

/// Copies the first `itemsize` bytes of frame i's payload to
/// out[i * itemsize] for `count` frames (whole frames inside `base`, as a
/// batch's index describes them). With `valid` null the caller has checked
/// that every payload holds a record (first_short_payload() == count);
/// otherwise a shorter payload gets a zeroed record and valid[i] = 0, every
/// other valid[i] = 1. Reads stay inside each frame.
inline void gather_payload_records(const std::uint8_t* base, const std::int64_t* offsets,
                                   const std::uint32_t* sizes, std::size_t count, std::size_t header_size,
                                   std::size_t itemsize, std::uint8_t* out, std::uint8_t* valid) noexcept {
    const std::uint64_t need = std::uint64_t{header_size} + itemsize;
    for (std::size_t i = 0; i < count; ++i) {
        std::uint8_t* dst = out + i * itemsize;
        if (valid != nullptr) {
            const bool ok = sizes[i] >= need;
            valid[i] = ok ? 1 : 0;
            if (!ok) {
                std::memset(dst, 0, itemsize);
                continue;
            }
        }
        detail::copy_record(dst, base + offsets[i] + static_cast<std::int64_t>(header_size), itemsize);
    }
}

/// A header value per frame (stride 1), one value for every frame (stride
/// 0), or 0 for every frame (values null).
struct ValueColumn {
    const std::uint64_t* values = nullptr;
    std::size_t stride = 0;
    std::uint64_t at(std::size_t i) const noexcept { return values != nullptr ? values[i * stride] : 0; }
};

/// What encode_records() refused: the error and, for a value out of its
/// field's range, the frame index and the value.
struct RecordsFault {
    EncodeError error = EncodeError::none;
    std::size_t index = 0;
    std::uint64_t value = 0;
};

/// Encodes `count` frames whose payloads are `row_bytes`-byte rows, row i
/// at records + i * row_stride (any stride, 0 included), with header values
/// from the three columns, into out[0, count * (header_size + row_bytes)).
/// Every value is checked against its field before anything is written: on
/// a fault nothing is. Seqs and ids are ignored where the layout has no
/// such field, as in encode_header().
inline RecordsFault encode_records(const Layout& l, const std::uint8_t* records, std::size_t count,
                                   std::size_t row_bytes, std::ptrdiff_t row_stride, ValueColumn types,
                                   ValueColumn seqs, ValueColumn ids, std::uint8_t* out) noexcept {
    RecordsFault f;
    const std::size_t hs = l.header_size;
    std::uint8_t header[kMaxHeaderBytes];
    HeaderValues zero;
    f.error = encode_header(l, header, zero, row_bytes);  // the length, and whether there is a type field
    if (f.error != EncodeError::none) return f;
    struct Role {
        int index;
        ValueColumn column;
        EncodeError error;
    };
    const Role roles[3] = {{l.type_index, types, EncodeError::type_range},
                           {l.seq_index, seqs, EncodeError::seq_range},
                           {l.player_id_index, ids, EncodeError::player_id_range}};
    for (const Role& r : roles) {
        if (r.index < 0 || r.column.values == nullptr) continue;
        const std::uint64_t max = l.field_max(r.index);
        const std::size_t n = r.column.stride ? count : (count ? 1 : 0);
        for (std::size_t i = 0; i < n; ++i) {
            if (r.column.values[i * r.column.stride] > max) {
                f.error = r.error;
                f.index = i;
                f.value = r.column.values[i * r.column.stride];
                return f;
            }
        }
    }
    const bool be = l.big_endian;
    const std::size_t frame = hs + row_bytes;
    for (std::size_t i = 0; i < count; ++i) {
        std::uint8_t* dst = out + i * frame;
        std::memcpy(dst, header, hs);
        for (const Role& r : roles) {
            if (r.index >= 0) {
                detail::store_field(dst + l.fields[r.index].offset, l.fields[r.index].width, be, r.column.at(i));
            }
        }
        detail::copy_record(dst + hs, records + static_cast<std::ptrdiff_t>(i) * row_stride, row_bytes);
    }
    return f;
}

/// Incremental stream decoder. A feed is two calls: plan() finds the frames
/// (completing the one left pending by the previous feed) without changing
/// the decoder, the caller allocates exactly what the plan says, then emit()
/// copies, indexes and commits.
///
///   FeedPlan p = dec.plan(in, n);
///   out = alloc(p.data_bytes); idx = alloc(index_bytes(p.count, hs));
///   dec.emit(in, n, p, out, cols);   // also keeps the new incomplete tail
///
/// An allocation that fails between the two calls leaves the decoder exactly
/// as it was: the same input may be fed again. emit() makes its only
/// allocation (growing the pending buffer) before it changes anything, so it
/// too either commits the whole plan or throws with nothing changed.
///
/// After an error the frames before the bad header are still planned and
/// emitted; the decoder then refuses input (FrameError::failed) until reset().
class FrameDecoder {
public:
    /// `max_packet_size` above kMaxPacketSizeLimit is taken as that limit
    /// (the bindings refuse it with an error instead). A decoder whose
    /// caller unwraps aggregate frames passes `max_aggregate_size`: aggregate
    /// frames up to that size pass the scan (AggregateAllowance).
    FrameDecoder(const Layout& layout, std::size_t max_packet_size, std::size_t max_aggregate_size = 0)
        : layout_(layout),
          plain_max_(static_cast<std::int64_t>(std::min(max_packet_size, kMaxPacketSizeLimit))),
          max_(std::max(plain_max_, static_cast<std::int64_t>(std::min(max_aggregate_size, kMaxPacketSizeLimit)))) {}

    struct FeedPlan {
        bool head_complete = false;  // the pending frame completes with in[0, scan_begin)
        std::size_t scan_begin = 0;  // input bytes that go to the pending frame; whole frames start here
        std::size_t scan_end = 0;    // input offset past the last whole frame
        std::size_t count = 0;       // complete frames in this feed
        std::size_t data_bytes = 0;  // bytes emit() writes to `out`
        ErrorInfo error;             // kind != none: stop after these frames
        bool indexed = false;        // plan_indexed() already filled the columns
    };

    /// The columns plan_indexed() may fill for a feed of n bytes: the frame
    /// completed from the pending bytes, and every frame in[0, n) can hold.
    std::size_t index_capacity(std::size_t n) const noexcept {
        return 1 + max_frames(n, layout_.header_size);
    }

    const Layout& layout() const noexcept { return layout_; }
    std::int64_t max_packet_size() const noexcept { return plain_max_; }
    /// The largest frame scanned: max_packet_size, or the aggregate frames' limit.
    std::int64_t frame_limit() const noexcept { return max_; }
    std::size_t pending() const noexcept { return pending_.size(); }
    std::uint64_t stream_offset() const noexcept { return stream_offset_; }
    bool failed() const noexcept { return failed_; }

    void reset() noexcept {
        pending_.clear();
        stream_offset_ = 0;
        failed_ = false;
    }

    /// Plans the feed of in[0, n): pure, the decoder is unchanged.
    FeedPlan plan(const std::uint8_t* in, std::size_t n) const noexcept { return plan_into(in, n, nullptr); }

    /// plan() that also indexes the planned frames into `cols` (room for
    /// index_capacity(n) frames; offsets relative to the `out` emit() will
    /// fill, or to `in` itself when zero_copy()), so that emit() does not
    /// read the frames a second time. Still pure: only `cols` is written.
    FeedPlan plan_indexed(const std::uint8_t* in, std::size_t n, IndexColumns cols) const noexcept {
        return plan_into(in, n, &cols);
    }

private:
    FeedPlan plan_into(const std::uint8_t* in, std::size_t n, const IndexColumns* index) const noexcept {
        FeedPlan p;
        p.indexed = index != nullptr;
        if (failed_) {
            p.error.kind = FrameError::failed;
            p.error.stream_offset = stream_offset_;
            return p;
        }
        const std::size_t hs = layout_.header_size;
        const std::size_t have = pending_.size();
        const std::uint64_t input_base = stream_offset_ + have;  // stream offset of in[0]
        std::size_t used = 0;
        if (have != 0) {
            // Complete the frame left over from the previous feed, first its
            // header, then (once its size is checked) its body. Every early
            // return marks the input it took for the pending frame as
            // consumed (scan_begin == scan_end).
            std::uint8_t header[kMaxHeaderBytes];
            const std::size_t from_pending = have < hs ? have : hs;
            std::memcpy(header, pending_.data(), from_pending);
            if (from_pending < hs) {
                used = take(n, hs - from_pending);
                std::memcpy(header + from_pending, in, used);
                if (from_pending + used < hs) {  // still no whole header
                    p.scan_begin = p.scan_end = used;
                    return p;
                }
            }
            const std::int64_t frame = layout_.frame_size(header);
            if (!size_ok(frame, header)) {
                p.scan_begin = p.scan_end = used;
                describe(p.error, stream_offset_, frame, header);
                return p;
            }
            const auto want = static_cast<std::size_t>(frame);
            used += take(n - used, want - have - used);
            p.scan_begin = p.scan_end = used;
            if (have + used < want) return p;
            p.head_complete = true;
            p.count = 1;
            p.data_bytes = want;
            if (index != nullptr) {  // the head frame starts the output, its header assembled above
                index->offsets[0] = 0;
                index->sizes[0] = static_cast<std::uint32_t>(want);
                std::memcpy(index->headers, header, hs);
            }
        }
        p.scan_begin = used;
        const AggregateAllowance allow{plain_max_, &layout_};
        ScanResult r;
        if (index != nullptr) {
            // the output holds the head frame (have + used bytes), then
            // in[used, scan_end); without a head it starts at in[used]
            // (at in[0] itself when zero-copy, used being 0 then)
            IndexColumns rest = *index;
            rest.offsets += p.count;
            rest.sizes += p.count;
            rest.headers += p.count * hs;
            const std::int64_t base = p.head_complete ? static_cast<std::int64_t>(have + used) : 0;
            r = scan_index_frames(layout_, in + used, n - used, max_, base, rest, allow);
        } else {
            r = scan_frames(layout_, in + used, n - used, max_, allow);
        }
        p.scan_end = used + r.end;
        p.count += r.count;
        p.data_bytes += r.end;
        if (r.error) {
            const std::uint8_t* bad = in + p.scan_end;
            describe(p.error, input_base + p.scan_end, layout_.frame_size(bad), bad);
        }
        return p;
    }

public:
    /// Commits a plan made by plan(in, ...) on this decoder as it is now:
    /// copies the plan's frames to `out` (p.data_bytes; may be null only when
    /// the caller keeps the input itself as the data, see zero_copy()),
    /// indexes them into `cols` with offsets relative to `out`, and keeps
    /// in[scan_end, n) as the new incomplete tail (n >= p.scan_end).
    void emit(const std::uint8_t* in, std::size_t n, const FeedPlan& p, std::uint8_t* out,
              IndexColumns cols) {
        if (p.error.kind == FrameError::failed) return;
        const bool keep_tail = p.error.kind == FrameError::none && p.scan_end < n;
        // The only allocation, before any change: at most one frame's worth
        // (a header, or a checked header plus less than its frame size).
        const std::size_t held = p.head_complete ? 0 : pending_.size() + p.scan_begin;
        const std::size_t need = held + (keep_tail ? n - p.scan_end : 0);
        if (need > pending_.capacity()) pending_.reserve(need);

        std::size_t head = 0;
        if (p.head_complete) {
            const std::size_t have = pending_.size();
            head = have + p.scan_begin;
            std::memcpy(out, pending_.data(), have);
            std::memcpy(out + have, in, p.scan_begin);
            if (!p.indexed) index_frames(layout_, out, 1, 0, cols);
            cols.offsets += 1;
            cols.sizes += 1;
            cols.headers += layout_.header_size;
            pending_.clear();
        } else if (p.scan_begin != 0) {
            pending_.insert(pending_.end(), in, in + p.scan_begin);  // still incomplete (or a bad header)
        }
        const std::size_t body = p.scan_end - p.scan_begin;
        const std::size_t scanned = p.count - (p.head_complete ? 1 : 0);
        if (out != nullptr) {
            std::memcpy(out + head, in + p.scan_begin, body);
            if (!p.indexed) index_frames(layout_, out + head, scanned, static_cast<std::int64_t>(head), cols);
        } else if (!p.indexed) {
            index_frames(layout_, in + p.scan_begin, scanned, static_cast<std::int64_t>(p.scan_begin), cols);
        }
        stream_offset_ += head + body;
        if (p.error.kind != FrameError::none) {
            failed_ = true;  // the rest of the stream is unusable
            return;
        }
        if (keep_tail) pending_.insert(pending_.end(), in + p.scan_end, in + n);
    }

    /// True when the plan's frames are exactly input[0, scan_end): the caller
    /// may then keep an immutable input as the batch data instead of copying.
    static bool zero_copy(const FeedPlan& p) noexcept { return !p.head_complete && p.scan_begin == 0; }

private:
    static std::size_t take(std::size_t available, std::size_t want) noexcept {
        return want < available ? want : available;
    }

    bool size_ok(std::int64_t frame, const std::uint8_t* header) const noexcept {
        return frame_size_ok(frame, layout_.header_size, max_) &&
               (frame <= plain_max_ || AggregateAllowance{plain_max_, &layout_}.is_aggregate(header));
    }

    void describe(ErrorInfo& e, std::uint64_t offset, std::int64_t frame, const std::uint8_t* header) const noexcept {
        e.kind = frame < static_cast<std::int64_t>(layout_.header_size) ? FrameError::too_small : FrameError::too_large;
        e.stream_offset = offset;
        e.frame_size = frame;
        e.length_value = layout_.read(header, layout_.length_index);
    }

    Layout layout_;
    std::int64_t plain_max_;  // max_packet_size
    std::int64_t max_;        // frame_limit(): plain_max_, or the aggregate frames' limit
    std::vector<std::uint8_t> pending_;
    std::uint64_t stream_offset_ = 0;  // stream offset of the first byte not yet emitted
    bool failed_ = false;
};

}  // namespace fastpacket

namespace fastpacket {

/// Stable grouping of `n` rows by key. Writes into `order` the row indices
/// grouped by key, the groups in order of each key's first appearance and
/// rows in their original order inside a group; writes the start of each
/// group into `group_starts` (n + 1 entries at most, the last one = n) and
/// returns the number of groups. Allocates one scratch vector per call.
inline std::size_t group_by_key(const std::uint64_t* keys, std::size_t n, std::uint32_t* order,
                                std::uint32_t* group_starts) {
    struct Row {
        std::uint64_t key;
        std::uint32_t first;  // first row with this key: orders the groups
        std::uint32_t row;
    };
    std::vector<Row> rows(n);
    for (std::size_t i = 0; i < n; ++i) rows[i] = {keys[i], 0, static_cast<std::uint32_t>(i)};
    // (key, row) sort is stable by construction; then each group's first row
    // is known and a second sort by (first, row) orders the groups.
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        return a.key != b.key ? a.key < b.key : a.row < b.row;
    });
    for (std::size_t i = 0; i < n; ++i) {
        rows[i].first = (i > 0 && rows[i].key == rows[i - 1].key) ? rows[i - 1].first : rows[i].row;
    }
    std::sort(rows.begin(), rows.end(), [](const Row& a, const Row& b) {
        return a.first != b.first ? a.first < b.first : a.row < b.row;
    });
    std::size_t groups = 0;
    for (std::size_t i = 0; i < n; ++i) {
        if (i == 0 || rows[i].key != rows[i - 1].key) group_starts[groups++] = static_cast<std::uint32_t>(i);
        order[i] = rows[i].row;
    }
    group_starts[groups] = static_cast<std::uint32_t>(n);
    return groups;
}

}  // namespace fastpacket
