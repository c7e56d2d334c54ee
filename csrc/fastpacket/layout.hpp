// Header layouts: which bytes of a packet header hold which unsigned field,
// and which field gives the frame length (Netty's LengthFieldBasedFrameDecoder
// is the model: offset, width, adjustment). docs/wire-format.md, section 1,
// is the normative text these rules implement.
//
// Plain C++17, no Python. Every read is bounded by the header size, which the
// caller guarantees is available before calling read()/frame_size().
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace fastpacket {

/// Largest header a layout may describe, in bytes.
constexpr std::size_t kMaxHeaderBytes = 64;
/// Most fields a layout may have (every field is at least one byte).
constexpr std::size_t kMaxFields = kMaxHeaderBytes;
/// Packet type reserved for aggregate frames (docs/wire-format.md, section 3).
constexpr std::uint64_t kAggregateType = 0xFFFF;

struct Field {
    std::uint16_t offset = 0;  // byte offset inside the header
    std::uint8_t width = 0;    // 1, 2, 4 or 8 bytes
};

inline std::uint64_t load_unsigned(const std::uint8_t* p, unsigned width, bool big_endian) noexcept {
    std::uint64_t v = 0;
    if (big_endian) {
        for (unsigned i = 0; i < width; ++i) v = (v << 8) | p[i];
    } else {
        for (unsigned i = width; i-- > 0;) v = (v << 8) | p[i];
    }
    return v;
}

inline void store_unsigned(std::uint8_t* p, unsigned width, bool big_endian, std::uint64_t v) noexcept {
    if (big_endian) {
        for (unsigned i = width; i-- > 0;) { p[i] = static_cast<std::uint8_t>(v); v >>= 8; }
    } else {
        for (unsigned i = 0; i < width; ++i) { p[i] = static_cast<std::uint8_t>(v); v >>= 8; }
    }
}

inline std::uint64_t max_for_width(unsigned width) noexcept {
    return width >= 8 ? ~std::uint64_t{0} : ((std::uint64_t{1} << (8 * width)) - 1);
}

/// A header layout: fill in the fields and roles, then check valid() before
/// use (game_layout() builds GAME). The bindings' HeaderLayout validates
/// names, kinds and sizes before it fills one in.
struct Layout {
    Field fields[kMaxFields];
    std::uint16_t nfields = 0;
    std::uint16_t header_size = 0;
    bool big_endian = false;
    int length_index = -1;
    bool length_includes_header = true;
    std::int64_t length_adjustment = 0;  // added to the length field's value
    // Role fields used by encode/SendBuffer/Packet; -1 when the layout has none.
    int type_index = -1;
    int seq_index = -1;
    int player_id_index = -1;

    /// True when the layout is usable: fields inside the header, widths valid,
    /// a length field present, and no field in two roles (encoding would
    /// write one role's value over the other's).
    bool valid() const noexcept {
        if (nfields == 0 || nfields > kMaxFields) return false;
        if (header_size == 0 || header_size > kMaxHeaderBytes) return false;
        for (std::uint16_t i = 0; i < nfields; ++i) {
            const unsigned w = fields[i].width;
            if (w != 1 && w != 2 && w != 4 && w != 8) return false;
            if (std::size_t{fields[i].offset} + w > header_size) return false;
        }
        auto ok_index = [this](int idx) { return idx >= -1 && idx < static_cast<int>(nfields); };
        if (!(length_index >= 0 && ok_index(length_index) && ok_index(type_index) && ok_index(seq_index) &&
              ok_index(player_id_index))) {
            return false;
        }
        const int roles[4] = {length_index, type_index, seq_index, player_id_index};
        for (int i = 0; i < 4; ++i) {
            for (int j = i + 1; j < 4; ++j) {
                if (roles[i] >= 0 && roles[i] == roles[j]) return false;
            }
        }
        return true;
    }

    std::uint64_t read(const std::uint8_t* header, int index) const noexcept {
        // each width a constant: the byte loop unrolls into one load (and a
        // byte swap when big-endian) instead of a loop per field read
        const Field& f = fields[index];
        const std::uint8_t* p = header + f.offset;
        switch (f.width) {
            case 1: return p[0];
            case 2: return load_unsigned(p, 2, big_endian);
            case 4: return load_unsigned(p, 4, big_endian);
            default: return load_unsigned(p, 8, big_endian);
        }
    }

    void write(std::uint8_t* header, int index, std::uint64_t value) const noexcept {
        const Field& f = fields[index];
        store_unsigned(header + f.offset, f.width, big_endian, value);
    }

    std::uint64_t field_max(int index) const noexcept { return max_for_width(fields[index].width); }

    /// What is added to the length field's value to get the whole frame size.
    std::int64_t frame_bias() const noexcept {
        return (length_includes_header ? 0 : static_cast<std::int64_t>(header_size)) + length_adjustment;
    }

    /// Whole frame size (header included) announced by a header, as a signed
    /// 64-bit value so a size below the header or absurdly large is visible to
    /// the caller's checks. Values past 2^62 saturate (they are errors anyway).
    std::int64_t frame_size(const std::uint8_t* header) const noexcept {
        const std::uint64_t raw = read(header, length_index);
        constexpr std::uint64_t kSaturate = std::uint64_t{1} << 62;
        if (raw >= kSaturate) return static_cast<std::int64_t>(kSaturate);
        return static_cast<std::int64_t>(raw) + frame_bias();
    }

    /// The length field's value that announces a frame of `frame` bytes, or
    /// false when it cannot be represented.
    bool length_value_for(std::uint64_t frame, std::uint64_t* out) const noexcept {
        const std::int64_t v = static_cast<std::int64_t>(frame) - frame_bias();
        if (v < 0 || static_cast<std::uint64_t>(v) > field_max(length_index)) return false;
        *out = static_cast<std::uint64_t>(v);
        return true;
    }
};

/// The default GAME layout "<HHII": size (includes header), type, seq, player_id.
inline Layout game_layout() noexcept {
    Layout l;
    l.nfields = 4;
    l.header_size = 12;
    l.fields[0] = {0, 2};
    l.fields[1] = {2, 2};
    l.fields[2] = {4, 4};
    l.fields[3] = {8, 4};
    l.length_index = 0;
    l.type_index = 1;
    l.seq_index = 2;
    l.player_id_index = 3;
    return l;
}

}  // namespace fastpacket
