// Aggregate frames: many packets packed into one packet of type 0xFFFF whose
// payload is an 8-byte aggregate header (codec u8, flags u8, count u16,
// raw_size u32, little-endian) followed by a body of `count` whole packets,
// compressed by `codec` (docs/wire-format.md, section 3, is the normative
// text: the sender's rule, and the receiver's checks in their order).
//
// Plain C++17, no Python. The codecs themselves (lz4 block, zlib) are called
// by the bindings; this header builds bodies (a gather of frames), chooses
// whether compression pays, writes frame headers, and validates untrusted
// frames and decompressed bodies with a bounds check on every read.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

#include "fastpacket/framing.hpp"
#include "fastpacket/layout.hpp"

namespace fastpacket {

/// Bytes of the aggregate header at the start of an aggregate frame's payload.
constexpr std::size_t kAggregateHeaderBytes = 8;
/// Most packets one aggregate frame can hold (its count field is a u16).
constexpr std::size_t kMaxAggregateCount = 0xFFFF;
/// Largest raw body the raw_size field (u32) can announce, in bytes.
constexpr std::uint64_t kMaxAggregateRawSize = 0xFFFFFFFFull;
/// Largest max_raw_size a codec path handles, in bytes: LZ4_MAX_INPUT_SIZE,
/// the largest block liblz4 compresses or decompresses (its sizes are ints);
/// zlib handles more. A receiver refuses any raw_size above its max_raw_size
/// before decompressing, so this bounds every body it allocates.
constexpr std::uint64_t kRawSizeLimit = 0x7E000000ull;
/// Default max_raw_size, in bytes (1 MiB).
constexpr std::uint64_t kDefaultMaxRawSize = std::uint64_t{1} << 20;
/// The sender compresses bodies of at least this many bytes by default ...
constexpr std::size_t kDefaultCompressionThreshold = 1024;
/// ... and keeps the result when it saves at least this fraction.
constexpr double kDefaultMinSaving = 0.10;

enum class Codec : std::uint8_t { none = 0, lz4 = 1, zlib = 2 };
/// Codecs this version can decode; higher values are rejected.
constexpr std::uint8_t kCodecCount = 3;

/// The aggregate header, decoded.
struct AggregateHeader {
    std::uint8_t codec = 0;
    std::uint8_t flags = 0;
    std::uint16_t count = 0;
    std::uint32_t raw_size = 0;
};

inline void write_aggregate_header(std::uint8_t* out, const AggregateHeader& h) noexcept {
    out[0] = h.codec;
    out[1] = h.flags;
    store_unsigned(out + 2, 2, false, h.count);
    store_unsigned(out + 4, 4, false, h.raw_size);
}

inline AggregateHeader read_aggregate_header(const std::uint8_t* in) noexcept {
    AggregateHeader h;
    h.codec = in[0];
    h.flags = in[1];
    h.count = static_cast<std::uint16_t>(load_unsigned(in + 2, 2, false));
    h.raw_size = static_cast<std::uint32_t>(load_unsigned(in + 4, 4, false));
    return h;
}

/// Which check an aggregate frame failed, in the order they are made
/// (docs/wire-format.md, section 3.3). Each maps to the `check` name of
/// fastpacket.AggregateError in the bindings.
enum class AggregateCheck : std::uint8_t {
    ok = 0,
    frame,         // not one whole packet, or shorter than header + aggregate header
    not_aggregate, // the packet's type is not 0xFFFF
    flags,         // reserved flags not 0
    codec,         // unknown codec
    max_raw_size,  // raw_size above the receiver's max_raw_size (checked before decompressing)
    count,         // count does not match the packets in the body (or cannot fit raw_size)
    raw_size,      // the body is not exactly raw_size bytes
    packet_size,   // an inner packet's size is below the header size or runs past the body
    nested,        // an inner packet is itself an aggregate
    max_packet_size,  // an inner packet is larger than the receiver's max_packet_size
};

/// A failed (or passed) check and where: `offset` is relative to the frame
/// for header checks and to the decompressed body for inner-packet checks.
struct AggregateFault {
    AggregateCheck check = AggregateCheck::ok;
    std::uint64_t offset = 0;
    std::int64_t value = 0;   // the offending value
    std::int64_t limit = 0;   // what it should have been / the bound it broke
    std::uint64_t index = 0;  // inner packet index, for inner-packet checks
};

/// What a valid aggregate frame announces, and where its (compressed) body is.
struct AggregateFrame {
    AggregateHeader header;
    std::size_t body_offset = 0;  // offset of the body in the frame
    std::size_t body_size = 0;    // bytes of (compressed) body on the wire
};

/// Checks the outer packet and the aggregate header of `frame[0, n)`, which
/// must be exactly one packet of layout `l`. Nothing is decompressed here:
/// max_raw_size is enforced before any output is allocated.
inline AggregateFault parse_aggregate_frame(const Layout& l, const std::uint8_t* frame, std::size_t n,
                                            std::uint64_t max_raw_size, AggregateFrame* out) noexcept {
    AggregateFault f;
    const std::size_t hs = l.header_size;
    if (n < hs + kAggregateHeaderBytes) {
        f.check = AggregateCheck::frame;
        f.value = static_cast<std::int64_t>(n);
        f.limit = static_cast<std::int64_t>(hs + kAggregateHeaderBytes);
        return f;
    }
    const std::int64_t announced = l.frame_size(frame);
    if (announced != static_cast<std::int64_t>(n)) {
        f.check = AggregateCheck::frame;
        f.offset = l.fields[l.length_index].offset;
        f.value = announced;
        f.limit = static_cast<std::int64_t>(n);
        return f;
    }
    if (l.type_index < 0 || l.read(frame, l.type_index) != kAggregateType) {
        f.check = AggregateCheck::not_aggregate;
        f.offset = l.type_index < 0 ? 0 : l.fields[l.type_index].offset;
        f.value = l.type_index < 0 ? -1 : static_cast<std::int64_t>(l.read(frame, l.type_index));
        f.limit = static_cast<std::int64_t>(kAggregateType);
        return f;
    }
    const AggregateHeader h = read_aggregate_header(frame + hs);
    if (h.flags != 0) {
        f.check = AggregateCheck::flags;
        f.offset = hs + 1;
        f.value = h.flags;
        return f;
    }
    if (h.codec >= kCodecCount) {
        f.check = AggregateCheck::codec;
        f.offset = hs;
        f.value = h.codec;
        f.limit = kCodecCount - 1;
        return f;
    }
    if (h.raw_size > max_raw_size) {
        f.check = AggregateCheck::max_raw_size;
        f.offset = hs + 4;
        f.value = h.raw_size;
        f.limit = static_cast<std::int64_t>(max_raw_size);
        return f;
    }
    // Every packet takes at least a header: a count that cannot fit raw_size
    // is a lie we can see before decompressing anything.
    if (std::uint64_t{h.count} * hs > h.raw_size) {
        f.check = AggregateCheck::count;
        f.offset = hs + 2;
        f.value = h.count;
        f.limit = static_cast<std::int64_t>(h.raw_size / hs);
        return f;
    }
    const std::size_t body = n - hs - kAggregateHeaderBytes;
    if (h.codec == static_cast<std::uint8_t>(Codec::none) && body != h.raw_size) {
        f.check = AggregateCheck::raw_size;
        f.offset = hs + 4;
        f.value = h.raw_size;
        f.limit = static_cast<std::int64_t>(body);
        return f;
    }
    out->header = h;
    out->body_offset = hs + kAggregateHeaderBytes;
    out->body_size = body;
    return f;
}

/// What an aggregate frame frame[0, n) declares (its aggregate header),
/// read before any check: rate limits and inflate budgets charge an
/// aggregate its declared count and raw_size before anything is
/// decompressed. False (nothing declared) when `frame` is not an aggregate
/// of layout `l` or too short to hold the aggregate header.
inline bool declared_aggregate(const Layout& l, const std::uint8_t* frame, std::size_t n,
                               AggregateHeader* out) noexcept {
    if (n < std::size_t{l.header_size} + kAggregateHeaderBytes || l.type_index < 0 ||
        l.read(frame, l.type_index) != kAggregateType) {
        return false;
    }
    *out = read_aggregate_header(frame + l.header_size);
    return true;
}

namespace detail {

// The body check with the length and type fields read through readers fixed
// at compile time for the default GAME layout (u16 little-endian length at 0,
// u16 type at 2, 12-byte header), so its loop is a few loads per packet; the
// generic readers serve every other layout. `cols` may be null (check only).
struct GenericFields {
    const Layout& l;
    std::size_t header_size() const noexcept { return l.header_size; }
    std::int64_t size(const std::uint8_t* h) const noexcept { return l.frame_size(h); }
    bool is_aggregate(const std::uint8_t* h) const noexcept {
        return l.type_index >= 0 && l.read(h, l.type_index) == kAggregateType;
    }
};

struct GameFields {
    static constexpr std::size_t header_size() noexcept { return 12; }
    static std::int64_t size(const std::uint8_t* h) noexcept { return static_cast<std::int64_t>(load_unsigned(h, 2, false)); }
    static bool is_aggregate(const std::uint8_t* h) noexcept { return load_unsigned(h + 2, 2, false) == kAggregateType; }
};

inline bool is_game_layout(const Layout& l) noexcept {
    const Layout g = game_layout();
    return l.header_size == g.header_size && !l.big_endian && l.length_includes_header &&
           l.length_adjustment == 0 && l.length_index >= 0 && l.type_index >= 0 &&
           l.fields[l.length_index].offset == 0 && l.fields[l.length_index].width == 2 &&
           l.fields[l.type_index].offset == 2 && l.fields[l.type_index].width == 2;
}

template <class Fields>
AggregateFault check_body_with(const Fields& fl, const std::uint8_t* body, std::size_t n, std::size_t count,
                               std::int64_t base_offset, IndexColumns* cols, std::int64_t max_size) noexcept {
    AggregateFault f;
    const std::size_t hs = fl.header_size();
    std::size_t pos = 0;
    std::size_t i = 0;
    for (; i < count; ++i) {
        if (n - pos < hs) {
            // Fewer packets than announced (or a truncated last header).
            f.check = n == pos ? AggregateCheck::count : AggregateCheck::packet_size;
            f.offset = pos;
            f.index = i;
            f.value = n == pos ? static_cast<std::int64_t>(i) : static_cast<std::int64_t>(n - pos);
            f.limit = n == pos ? static_cast<std::int64_t>(count) : static_cast<std::int64_t>(hs);
            return f;
        }
        const std::uint8_t* h = body + pos;
        const std::int64_t size = fl.size(h);
        if (!frame_size_ok(size, hs, max_size) && size >= static_cast<std::int64_t>(hs)) {
            // the stream's rule (framing.hpp), so an aggregate cannot carry a
            // packet its receiver would refuse if it came alone
            f.check = AggregateCheck::max_packet_size;
            f.offset = pos;
            f.index = i;
            f.value = size;
            f.limit = max_size;
            return f;
        }
        if (size < static_cast<std::int64_t>(hs) || size > static_cast<std::int64_t>(n - pos)) {
            f.check = AggregateCheck::packet_size;
            f.offset = pos;
            f.index = i;
            f.value = size;
            f.limit = size < static_cast<std::int64_t>(hs) ? static_cast<std::int64_t>(hs)
                                                            : static_cast<std::int64_t>(n - pos);
            return f;
        }
        if (fl.is_aggregate(h)) {
            f.check = AggregateCheck::nested;
            f.offset = pos;
            f.index = i;
            f.value = static_cast<std::int64_t>(kAggregateType);
            return f;
        }
        if (cols != nullptr) {
            cols->offsets[i] = base_offset + static_cast<std::int64_t>(pos);
            cols->sizes[i] = static_cast<std::uint32_t>(size);
            std::memcpy(cols->headers + i * hs, h, hs);
        }
        pos += static_cast<std::size_t>(size);
    }
    if (pos != n) {  // bytes left after `count` packets: the count lies
        f.check = AggregateCheck::count;
        f.offset = pos;
        f.index = i;
        f.value = static_cast<std::int64_t>(count);
        f.limit = static_cast<std::int64_t>(count) + 1;  // at least one more packet follows
    }
    return f;
}

}  // namespace detail

/// No max_packet_size for the packets of an aggregate: only the body bounds them.
constexpr std::int64_t kNoMaxPacketSize = std::numeric_limits<std::int64_t>::max();

/// Checks a decompressed body of `n` bytes: exactly `count` packets of
/// layout `l` back to back, each at least a header, at most
/// `max_packet_size` (the receiver's limit for packets, frame_size_ok())
/// and inside the body, none an aggregate. One pass over the headers, no
/// allocation. With `cols` (room for `count` rows), also indexes the
/// packets as index_frames() would, offsets relative to body -
/// base_offset; on a fault the rows written so far are meaningless.
inline AggregateFault check_aggregate_body(const Layout& l, const std::uint8_t* body, std::size_t n,
                                           std::size_t count, std::int64_t base_offset = 0,
                                           IndexColumns* cols = nullptr,
                                           std::int64_t max_packet_size = kNoMaxPacketSize) noexcept {
    if (detail::is_game_layout(l)) {
        return detail::check_body_with(detail::GameFields{}, body, n, count, base_offset, cols, max_packet_size);
    }
    return detail::check_body_with(detail::GenericFields{l}, body, n, count, base_offset, cols, max_packet_size);
}

/// Copies `count` frames (offsets/sizes into `base`) back to back into `out`.
inline void gather_frames(const std::uint8_t* base, const std::int64_t* offsets, const std::uint32_t* sizes,
                          std::size_t count, std::uint8_t* out) noexcept {
    std::size_t pos = 0;
    for (std::size_t i = 0; i < count; ++i) {
        std::memcpy(out + pos, base + offsets[i], sizes[i]);
        pos += sizes[i];
    }
}

/// True when frames [begin, end) lie back to back in their buffer (the body
/// is then a slice of it and needs no gather).
inline bool frames_contiguous(const std::int64_t* offsets, const std::uint32_t* sizes, std::size_t begin,
                              std::size_t end) noexcept {
    for (std::size_t i = begin + 1; i < end; ++i) {
        if (offsets[i] != offsets[i - 1] + static_cast<std::int64_t>(sizes[i - 1])) return false;
    }
    return true;
}

/// The sender's rule (docs/wire-format.md, section 3.2): compress only a
/// body of at least `threshold` bytes, and keep the result only when it is
/// smaller than (1 - min_saving) of the body.
inline bool compression_pays(std::size_t raw, std::size_t compressed, double min_saving) noexcept {
    return static_cast<double>(compressed) < (1.0 - min_saving) * static_cast<double>(raw);
}

/// Splits frames [0, count) into runs for pack_many: each run holds at most
/// kMaxAggregateCount packets and at most `max_body` bytes of packets.
/// Writes the end index of each run to `ends` (count entries at most) and
/// returns the number of runs, or 0 with *too_big set to the index of a
/// packet that cannot fit any run on its own.
inline std::size_t split_runs(const std::uint32_t* sizes, std::size_t count, std::uint64_t max_body,
                              std::size_t* ends, std::size_t* too_big) noexcept {
    std::size_t runs = 0;
    std::uint64_t bytes = 0;
    std::size_t in_run = 0;
    for (std::size_t i = 0; i < count; ++i) {
        if (sizes[i] > max_body) {
            *too_big = i;
            return 0;
        }
        if (in_run == kMaxAggregateCount || bytes + sizes[i] > max_body) {
            ends[runs++] = i;
            bytes = 0;
            in_run = 0;
        }
        bytes += sizes[i];
        ++in_run;
    }
    if (in_run > 0) ends[runs++] = count;
    return runs;
}

/// Counters of what an Aggregator did. Each counter is independent (no
/// reader needs two of them to agree with each other at one instant), so
/// relaxed atomic adds suffice: every add is counted exactly once whichever
/// thread makes it, and a reader sees some recent value of each.
struct AggregateStats {
    std::atomic<std::uint64_t> compressed{0};  // frames sent with a codec
    std::atomic<std::uint64_t> raw{0};         // frames sent with codec 0
    std::atomic<std::uint64_t> bytes_in{0};    // bytes of packets packed (raw bodies)
    std::atomic<std::uint64_t> bytes_out{0};   // bytes of aggregate frames produced
    std::atomic<std::uint64_t> unpacked{0};    // frames unpacked successfully
    std::atomic<std::uint64_t> rejected{0};    // frames refused by a check

    void count_packed(bool with_codec, std::uint64_t in, std::uint64_t out) noexcept {
        // relaxed: independent event counters, see above.
        (with_codec ? compressed : raw).fetch_add(1, std::memory_order_relaxed);
        bytes_in.fetch_add(in, std::memory_order_relaxed);
        bytes_out.fetch_add(out, std::memory_order_relaxed);
    }
    void count_unpacked() noexcept { unpacked.fetch_add(1, std::memory_order_relaxed); }  // relaxed: independent counter
    void count_rejected() noexcept { rejected.fetch_add(1, std::memory_order_relaxed); }  // relaxed: independent counter

    struct Snapshot {
        std::uint64_t compressed, raw, bytes_in, bytes_out, unpacked, rejected;
    };
    /// Each value is some recent value of its counter; the six are not one
    /// instant's (they need not be: no invariant links them).
    Snapshot snapshot() const noexcept {
        constexpr auto r = std::memory_order_relaxed;  // relaxed: independent counters, see above
        return {compressed.load(r), raw.load(r), bytes_in.load(r), bytes_out.load(r), unpacked.load(r),
                rejected.load(r)};
    }
};

}  // namespace fastpacket
