// The framing rules of DESIGN.md re-implemented as plainly as possible, as
// the oracle of the libFuzzer targets. Deliberately independent of
// csrc/fastpacket: its own layout description, byte-by-byte field reads, and
// frame sizes computed exactly in 128 bits (no saturation, no templates, no
// fast paths), one whole buffer at a time (no incremental state).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace oracle {

using Wide = __int128;  // exact for any u64 length plus any bias

/// Bytes of the aggregate header: codec u8, flags u8, count u16, raw_size u32 (little-endian).
constexpr std::size_t kAggregateHeader = 8;
constexpr std::uint64_t kAggregateType = 0xFFFF;
constexpr unsigned kCodecs = 3;  // 0 none, 1 lz4, 2 zlib

struct Field {
    std::size_t offset;
    unsigned width;
};

/// A header layout: fields back to back, one length field, maybe a type field.
struct Spec {
    std::vector<Field> fields;
    bool big_endian = false;
    bool length_includes_header = true;
    long long adjustment = 0;
    int length = 0;
    int type = -1;
    std::size_t header_size = 0;
};

inline std::uint64_t read_field(const Spec& s, const std::uint8_t* header, int index) {
    const Field& f = s.fields[static_cast<std::size_t>(index)];
    std::uint64_t v = 0;
    for (unsigned i = 0; i < f.width; ++i) {
        const unsigned byte = s.big_endian ? i : f.width - 1 - i;  // most significant first
        v = (v << 8) | header[f.offset + byte];
    }
    return v;
}

/// The whole frame size a header announces, exactly.
inline Wide frame_size(const Spec& s, const std::uint8_t* header) {
    Wide size = static_cast<Wide>(read_field(s, header, s.length)) + s.adjustment;
    if (!s.length_includes_header) size += static_cast<Wide>(s.header_size);
    return size;
}

struct Frame {
    std::size_t offset;
    std::size_t size;
};

/// A whole stream, decoded: its complete frames up to the first bad header
/// (a size below the header or above max), and what is left.
struct Stream {
    std::vector<Frame> frames;
    bool bad = false;
    std::size_t bad_offset = 0;
    Wide bad_size = 0;
    std::size_t tail = 0;  // bytes of an incomplete last frame (no bad header)
};

inline Stream decode(const Spec& s, const std::uint8_t* data, std::size_t n, long long max_packet_size) {
    Stream out;
    std::size_t pos = 0;
    const std::size_t hs = s.header_size;
    while (n - pos >= hs) {
        const Wide size = frame_size(s, data + pos);
        if (size < static_cast<Wide>(hs) || size > static_cast<Wide>(max_packet_size)) {
            out.bad = true;
            out.bad_offset = pos;
            out.bad_size = size;
            return out;
        }
        if (static_cast<Wide>(n - pos) < size) break;
        out.frames.push_back({pos, static_cast<std::size_t>(size)});
        pos += static_cast<std::size_t>(size);
    }
    out.tail = n - pos;
    return out;
}

/// Aggregate checks, in the order DESIGN.md and fastpacket.aggregate list them.
enum class Check { ok, frame, not_aggregate, flags, codec, max_raw_size, count, raw_size, packet_size, max_packet_size,
                   nested };

struct Verdict {
    Check check = Check::ok;
    std::size_t offset = 0;  // where the failed field is (frame checks) / the inner packet starts (body checks)
    std::size_t index = 0;   // inner packet index, for body checks
    // for a frame that passes:
    unsigned codec = 0, count = 0;
    std::uint32_t raw_size = 0;
    std::size_t body_offset = 0, body_size = 0;
};

inline std::uint64_t le(const std::uint8_t* p, unsigned width) {
    std::uint64_t v = 0;
    for (unsigned i = width; i-- > 0;) v = (v << 8) | p[i];
    return v;
}

/// The checks on the outer packet and its aggregate header (nothing is
/// decompressed): `frame` must be exactly one packet.
inline Verdict parse_frame(const Spec& s, const std::uint8_t* frame, std::size_t n, std::uint64_t max_raw_size) {
    Verdict v;
    const std::size_t hs = s.header_size;
    if (n < hs + kAggregateHeader) {
        v.check = Check::frame;  // offset 0: the frame itself is too short
        return v;
    }
    if (frame_size(s, frame) != static_cast<Wide>(n)) {
        v.check = Check::frame;
        v.offset = s.fields[static_cast<std::size_t>(s.length)].offset;
        return v;
    }
    if (s.type < 0 || read_field(s, frame, s.type) != kAggregateType) {
        v.check = Check::not_aggregate;
        v.offset = s.type < 0 ? 0 : s.fields[static_cast<std::size_t>(s.type)].offset;
        return v;
    }
    const std::uint8_t* a = frame + hs;
    const unsigned codec = a[0], flags = a[1];
    const auto count = static_cast<unsigned>(le(a + 2, 2));
    const auto raw_size = static_cast<std::uint32_t>(le(a + 4, 4));
    const std::size_t body = n - hs - kAggregateHeader;
    if (flags != 0) {
        v.check = Check::flags;
        v.offset = hs + 1;
    } else if (codec >= kCodecs) {
        v.check = Check::codec;
        v.offset = hs;
    } else if (raw_size > max_raw_size) {
        v.check = Check::max_raw_size;
        v.offset = hs + 4;
    } else if (static_cast<std::uint64_t>(count) * hs > raw_size) {
        v.check = Check::count;  // every packet takes at least a header
        v.offset = hs + 2;
    } else if (codec == 0 && body != raw_size) {
        v.check = Check::raw_size;
        v.offset = hs + 4;
    } else {
        v.codec = codec;
        v.count = count;
        v.raw_size = raw_size;
        v.body_offset = hs + kAggregateHeader;
        v.body_size = body;
    }
    return v;
}

/// The checks on a (decompressed) body: exactly `count` packets back to
/// back, each at least a header and inside the body, none an aggregate.
/// `max_packet_size` < 0: no limit for the packets inside (only the body
/// bounds them); else one larger fails Check::max_packet_size (wire format
/// 3.3: after "below a header", before "past the body").
inline Verdict check_body(const Spec& s, const std::uint8_t* body, std::size_t n, std::size_t count,
                          std::vector<Frame>* packets, Wide max_packet_size = -1) {
    Verdict v;
    const std::size_t hs = s.header_size;
    std::size_t pos = 0;
    for (std::size_t i = 0; i < count; ++i) {
        v.offset = pos;
        v.index = i;
        if (n - pos < hs) {
            v.check = n == pos ? Check::count : Check::packet_size;
            return v;
        }
        const Wide size = frame_size(s, body + pos);
        if (size >= static_cast<Wide>(hs) && max_packet_size >= 0 && size > max_packet_size) {
            v.check = Check::max_packet_size;
            return v;
        }
        if (size < static_cast<Wide>(hs) || size > static_cast<Wide>(n - pos)) {
            v.check = Check::packet_size;
            return v;
        }
        if (s.type >= 0 && read_field(s, body + pos, s.type) == kAggregateType) {
            v.check = Check::nested;
            return v;
        }
        packets->push_back({pos, static_cast<std::size_t>(size)});
        pos += static_cast<std::size_t>(size);
    }
    if (pos != n) {
        v.check = Check::count;  // bytes follow the last announced packet
        v.offset = pos;
        v.index = count;
        return v;
    }
    v.offset = 0;
    v.index = 0;
    return v;
}

}  // namespace oracle
