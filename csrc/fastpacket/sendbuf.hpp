// Coalescing send buffer: packets (header + payload) appended back to back
// into one caller-owned buffer of max_bytes, with per-buffer consecutive
// sequence numbers (docs/wire-format.md, section 2.3), so a server sends many
// packets in one write.
//
// The buffer memory belongs to the caller (attach()), which lets a binding
// double-buffer: flush hands the filled buffer to the transport and attaches
// another while the first is still being written.
//
// Plain C++17, no Python. No allocation: every append is bounds-checked
// against max_bytes first and a packet is written whole or not at all.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "fastpacket/framing.hpp"
#include "fastpacket/layout.hpp"

namespace fastpacket {

/// Default capacity of one buffer (one flush), in bytes.
constexpr std::size_t kDefaultSendBufferBytes = 65536;
/// should_flush() defaults: flush at this many queued packets ...
constexpr std::size_t kDefaultFlushMinPackets = 10;
/// ... or when this fraction of max_bytes is queued.
constexpr double kDefaultFlushFillRatio = 0.8;

enum class SendStatus : std::uint8_t {
    ok = 0,
    full = 1,          // does not fit now: flush, then retry
    never_fits = 2,    // larger than max_bytes: no flush will help
    encode_error = 3,  // a value does not fit its header field (see EncodeError)
};

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

}  // namespace detail

class SendBuffer {
public:
    SendBuffer(const Layout& layout, std::size_t max_bytes) noexcept
        : layout_(layout), max_(max_bytes),
          seq_mask_(layout.seq_index >= 0 ? layout.field_max(layout.seq_index) : 0) {}

    /// Starts filling `buffer` (at least max_bytes long) from empty.
    void attach(std::uint8_t* buffer) noexcept {
        buf_ = buffer;
        used_ = 0;
        count_ = 0;
    }

    const Layout& layout() const noexcept { return layout_; }
    std::size_t max_bytes() const noexcept { return max_; }
    std::size_t size() const noexcept { return used_; }
    std::size_t count() const noexcept { return count_; }
    std::size_t free_bytes() const noexcept { return max_ - used_; }
    const std::uint8_t* data() const noexcept { return buf_; }

    /// The seq the next automatically numbered packet gets.
    std::uint64_t next_seq() const noexcept { return next_seq_; }
    /// Sets the next automatic seq (reduced to the seq field's width).
    void set_next_seq(std::uint64_t seq) noexcept { next_seq_ = seq & seq_mask_; }
    /// The largest seq the layout's seq field holds (0 without a seq field);
    /// automatic numbering wraps from it to 0.
    std::uint64_t seq_max() const noexcept { return seq_mask_; }

    /// The status of appending `frame` bytes.
    SendStatus room_for(std::uint64_t frame) const noexcept {
        if (frame > max_) return SendStatus::never_fits;
        if (frame > max_ - used_) return SendStatus::full;
        return SendStatus::ok;
    }

    /// Appends one packet. `seq` is used when `explicit_seq`, else the next
    /// automatic seq (which then advances); *seq_used receives the one
    /// written. *err says which field failed on encode_error.
    SendStatus send(std::uint64_t type, const std::uint8_t* payload, std::size_t n, std::uint64_t player_id,
                    bool explicit_seq, std::uint64_t seq, std::uint64_t* seq_used, EncodeError* err) noexcept {
        const std::uint64_t frame = std::uint64_t{layout_.header_size} + n;
        const SendStatus room = room_for(frame);
        if (room != SendStatus::ok) return room;
        HeaderValues v;
        v.type = type;
        v.seq = explicit_seq ? seq : next_seq_;
        v.player_id = player_id;
        std::uint8_t* dst = buf_ + used_;
        *err = encode_header(layout_, dst, v, n);
        if (*err != EncodeError::none) return SendStatus::encode_error;
        if (n) std::memcpy(dst + layout_.header_size, payload, n);
        used_ += static_cast<std::size_t>(frame);
        ++count_;
        if (!explicit_seq) next_seq_ = (next_seq_ + 1) & seq_mask_;
        *seq_used = v.seq;
        return SendStatus::ok;
    }

    /// Appends the same payload once per id in ids[0, count), each packet with
    /// the next automatic seq. All or nothing: on any failure nothing is
    /// appended and the seq counter is unchanged; for a player id that does
    /// not fit its field, *bad_index is its position.
    template <class Id>
    SendStatus broadcast(std::uint64_t type, const std::uint8_t* payload, std::size_t n, const Id* ids,
                         std::size_t count, std::uint64_t* first_seq, std::size_t* bad_index,
                         EncodeError* err) noexcept {
        static_assert(std::is_integral<Id>::value, "player ids are integers");
        *first_seq = next_seq_;
        if (count == 0) return SendStatus::ok;
        const std::uint64_t frame = std::uint64_t{layout_.header_size} + n;
        if (frame > max_ / count + 1 || frame * count > max_) return SendStatus::never_fits;
        const SendStatus room = room_for(frame * count);
        if (room != SendStatus::ok) return room;
        // One header encoded and checked once; per packet only seq and
        // player_id change.
        std::uint8_t header[kMaxHeaderBytes];
        HeaderValues v;
        v.type = type;
        *err = encode_header(layout_, header, v, n);
        if (*err != EncodeError::none) return SendStatus::encode_error;
        const std::size_t hs = layout_.header_size;
        const int si = layout_.seq_index, pi = layout_.player_id_index;
        const std::uint64_t pid_max = pi >= 0 ? layout_.field_max(pi) : 0;
        const bool be = layout_.big_endian;
        for (std::size_t i = 0; i < count; ++i) {  // check every id before writing anything
            const Id id = ids[i];
            if ((std::is_signed<Id>::value && id < 0) || static_cast<std::uint64_t>(id) > pid_max) {
                *bad_index = i;
                *err = EncodeError::player_id_range;
                return SendStatus::encode_error;  // used_ not advanced: nothing appended
            }
        }
        // The first frame is written whole; every other one is a copy of it
        // with its seq and player_id patched: one copy of a small, cached
        // frame per packet.
        std::uint8_t* const first = buf_ + used_;
        std::memcpy(first, header, hs);
        if (n) std::memcpy(first + hs, payload, n);
        const auto fsize = static_cast<std::size_t>(frame);
        std::uint8_t* dst = first;
        std::uint64_t seq = next_seq_;
        const bool game_fields = !be && si >= 0 && pi >= 0 && layout_.fields[si].width == 4 &&
                                 layout_.fields[pi].width == 4;
        const std::size_t so = si >= 0 ? layout_.fields[si].offset : 0;
        const std::size_t po = pi >= 0 ? layout_.fields[pi].offset : 0;
        for (std::size_t i = 0; i < count; ++i) {
            if (i) std::memcpy(dst, first, fsize);
            if (game_fields) {  // GAME's u32 little-endian seq and player_id: two plain stores
                detail::store_field(dst + so, 4, false, seq);
                detail::store_field(dst + po, 4, false, static_cast<std::uint64_t>(ids[i]));
            } else {
                if (si >= 0) detail::store_field(dst + so, layout_.fields[si].width, be, seq);
                if (pi >= 0) detail::store_field(dst + po, layout_.fields[pi].width, be, static_cast<std::uint64_t>(ids[i]));
            }
            dst += fsize;
            seq = (seq + 1) & seq_mask_;
        }
        used_ += static_cast<std::size_t>(frame * count);
        count_ += count;
        next_seq_ = seq;
        return SendStatus::ok;
    }

    /// Appends `count` whole frames as they are (headers untouched), one
    /// memcpy per run of frames that lie back to back in `base`. All or
    /// nothing.
    SendStatus append_frames(const std::uint8_t* base, const std::int64_t* offsets, const std::uint32_t* sizes,
                             std::size_t count) noexcept {
        std::uint64_t total = 0;
        for (std::size_t i = 0; i < count; ++i) total += sizes[i];
        const SendStatus room = room_for(total);
        if (room != SendStatus::ok) return room;
        std::uint8_t* dst = buf_ + used_;
        std::size_t i = 0;
        while (i < count) {
            const std::int64_t start = offsets[i];
            std::uint64_t run = sizes[i];
            std::size_t j = i + 1;
            while (j < count && offsets[j] == start + static_cast<std::int64_t>(run)) run += sizes[j++];
            std::memcpy(dst, base + start, static_cast<std::size_t>(run));
            dst += run;
            i = j;
        }
        used_ += static_cast<std::size_t>(total);
        count_ += count;
        return SendStatus::ok;
    }

    /// Appends whole frames from the front of frames [0, count), in order
    /// and as they are, as many as fit the free space now; returns how
    /// many (0 when not even the first fits). A batch larger than the
    /// buffer goes out over several flushes this way, never a packet split.
    std::size_t append_frames_fitting(const std::uint8_t* base, const std::int64_t* offsets,
                                      const std::uint32_t* sizes, std::size_t count) noexcept {
        const std::size_t room = max_ - used_;
        std::size_t k = 0;
        std::uint64_t total = 0;
        while (k < count && total + sizes[k] <= room) total += sizes[k++];
        if (k != 0) append_frames(base, offsets, sizes, k);  // fits: checked above
        return k;
    }

    /// True when the buffer should be flushed: at least `min_packets` packets
    /// or at least fill_ratio * max_bytes bytes queued; never when empty.
    bool should_flush(std::size_t min_packets, double fill_ratio) const noexcept {
        if (count_ == 0) return false;
        return count_ >= min_packets || static_cast<double>(used_) >= fill_ratio * static_cast<double>(max_);
    }

private:
    Layout layout_;
    std::size_t max_;
    std::uint64_t seq_mask_;
    std::uint8_t* buf_ = nullptr;
    std::size_t used_ = 0;
    std::size_t count_ = 0;
    std::uint64_t next_seq_ = 0;
};

}  // namespace fastpacket
