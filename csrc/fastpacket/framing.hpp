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
    };

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
    FeedPlan plan(const std::uint8_t* in, std::size_t n) const noexcept {
        FeedPlan p;
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
        }
        p.scan_begin = used;
        const ScanResult r = scan_frames(layout_, in + used, n - used, max_, AggregateAllowance{plain_max_, &layout_});
        p.scan_end = used + r.end;
        p.count += r.count;
        p.data_bytes += r.end;
        if (r.error) {
            const std::uint8_t* bad = in + p.scan_end;
            describe(p.error, input_base + p.scan_end, layout_.frame_size(bad), bad);
        }
        return p;
    }

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
            index_frames(layout_, out, 1, 0, cols);
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
            index_frames(layout_, out + head, scanned, static_cast<std::int64_t>(head), cols);
        } else {
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
