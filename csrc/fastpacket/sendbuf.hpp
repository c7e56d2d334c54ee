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

    /// Appends one packet per row of `records` (`count` rows of `row_bytes`,
    /// row i at records + i * row_stride), each with the next automatic seq
    /// and player id ids[i * id_stride] (id_stride 0: one id for all; ids
    /// null: 0). All or nothing, as broadcast(): on any failure nothing is
    /// appended and the seq counter is unchanged; *bad_index is the
    /// position of a player id that does not fit its field.
    template <class Id>
    SendStatus append_records(std::uint64_t type, const std::uint8_t* records, std::size_t count,
                              std::size_t row_bytes, std::ptrdiff_t row_stride, const Id* ids, std::size_t id_stride,
                              std::uint64_t* first_seq, std::size_t* bad_index, EncodeError* err) noexcept {
        static_assert(std::is_integral<Id>::value, "player ids are integers");
        *first_seq = next_seq_;
        if (count == 0) return SendStatus::ok;
        const std::uint64_t frame = std::uint64_t{layout_.header_size} + row_bytes;
        if (frame > max_ / count + 1 || frame * count > max_) return SendStatus::never_fits;
        const SendStatus room = room_for(frame * count);
        if (room != SendStatus::ok) return room;
        std::uint8_t header[kMaxHeaderBytes];  // encoded and checked once; per packet seq and id change
        HeaderValues v;
        v.type = type;
        *err = encode_header(layout_, header, v, row_bytes);
        if (*err != EncodeError::none) return SendStatus::encode_error;
        const int si = layout_.seq_index, pi = layout_.player_id_index;
        if (pi >= 0 && ids != nullptr) {
            const std::uint64_t pid_max = layout_.field_max(pi);
            const std::size_t n = id_stride ? count : 1;
            for (std::size_t i = 0; i < n; ++i) {  // every id checked before anything is written
                const Id id = ids[i * id_stride];
                if ((std::is_signed<Id>::value && id < 0) || static_cast<std::uint64_t>(id) > pid_max) {
                    *bad_index = i;
                    *err = EncodeError::player_id_range;
                    return SendStatus::encode_error;
                }
            }
        }
        const std::size_t hs = layout_.header_size;
        const bool be = layout_.big_endian;
        const auto fsize = static_cast<std::size_t>(frame);
        std::uint8_t* dst = buf_ + used_;
        std::uint64_t seq = next_seq_;
        for (std::size_t i = 0; i < count; ++i) {
            std::memcpy(dst, header, hs);
            if (si >= 0) detail::store_field(dst + layout_.fields[si].offset, layout_.fields[si].width, be, seq);
            if (pi >= 0 && ids != nullptr) {
                detail::store_field(dst + layout_.fields[pi].offset, layout_.fields[pi].width, be,
                                    static_cast<std::uint64_t>(ids[i * id_stride]));
            }
            detail::copy_record(dst + hs, records + static_cast<std::ptrdiff_t>(i) * row_stride, row_bytes);
            dst += fsize;
            seq = (seq + 1) & seq_mask_;
        }
        used_ += static_cast<std::size_t>(frame * count);
        count_ += count;
        next_seq_ = seq;
        return SendStatus::ok;
    }

    /// Appends one frame: `header` (written by encode_header() for this
    /// buffer's layout, the packet's type and a payload of `n` bytes) with
    /// this buffer's next automatic seq and `player_id` patched in, then the
    /// payload. For a caller that encodes one header for many buffers
    /// (scatter) and has checked the player id against its field; false,
    /// with nothing appended, when the frame does not fit now.
    bool append_with_header(const std::uint8_t* header, const std::uint8_t* payload, std::size_t n,
                            std::uint64_t player_id) noexcept {
        const std::size_t hs = layout_.header_size;
        if (room_for(std::uint64_t{hs} + n) != SendStatus::ok) return false;
        std::uint8_t* dst = buf_ + used_;
        std::memcpy(dst, header, hs);
        const int si = layout_.seq_index, pi = layout_.player_id_index;
        const bool be = layout_.big_endian;
        if (si >= 0) detail::store_field(dst + layout_.fields[si].offset, layout_.fields[si].width, be, next_seq_);
        if (pi >= 0) detail::store_field(dst + layout_.fields[pi].offset, layout_.fields[pi].width, be, player_id);
        detail::copy_record(dst + hs, payload, n);
        used_ += hs + n;
        ++count_;
        next_seq_ = (next_seq_ + 1) & seq_mask_;
        return true;
    }

    /// Appends `count` whole frames as they are (headers untouched), one
    /// memcpy per run of frames that lie back to back in `base`. With
    /// `renumber`, each copy's seq field (if the layout has one) gets the
    /// next automatic seq instead, as if each packet had been send() here:
    /// a group send reaches every member with that member's own numbering.
    /// All or nothing.
    SendStatus append_frames(const std::uint8_t* base, const std::int64_t* offsets, const std::uint32_t* sizes,
                             std::size_t count, bool renumber = false) noexcept {
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
        if (renumber && layout_.seq_index >= 0) {
            // the copies are back to back now: walk them by their sizes
            const Field& f = layout_.fields[layout_.seq_index];
            std::uint8_t* frame = buf_ + used_;
            std::uint64_t seq = next_seq_;
            for (std::size_t k = 0; k < count; ++k) {
                detail::store_field(frame + f.offset, f.width, layout_.big_endian, seq);
                frame += sizes[k];
                seq = (seq + 1) & seq_mask_;
            }
            next_seq_ = seq;
        }
        used_ += static_cast<std::size_t>(total);
        count_ += count;
        return SendStatus::ok;
    }

    /// Appends `count` whole frames lying back to back at `src`, `total`
    /// bytes in all, as they are: one memcpy. All or nothing.
    SendStatus append_contiguous(const std::uint8_t* src, std::uint64_t total, std::size_t count) noexcept {
        const SendStatus room = room_for(total);
        if (room != SendStatus::ok) return room;
        std::memcpy(buf_ + used_, src, static_cast<std::size_t>(total));
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

/// A group's fan-out: appends the same `count` frames to each of the `n`
/// send buffers `targets` (SendBuffer::append_frames, renumbered per buffer
/// when `renumber`), one status per target in `status`. A target that
/// fails (full, say) is left as it was and does not stop the others. Plain
/// copies, no allocation: callers release the GIL around it for large
/// fan-outs.
inline void fanout_frames(SendBuffer* const* targets, std::size_t n, const std::uint8_t* base,
                          const std::int64_t* offsets, const std::uint32_t* sizes, std::size_t count,
                          bool renumber, SendStatus* status) noexcept {
    if (!renumber && count != 0) {
        // Frames back to back (a decoded burst, say): their extent is found
        // once, and each target gets one memcpy of it.
        std::uint64_t total = sizes[0];
        std::size_t i = 1;
        while (i < count && offsets[i] == offsets[0] + static_cast<std::int64_t>(total)) total += sizes[i++];
        if (i == count) {
            for (std::size_t t = 0; t < n; ++t) status[t] = targets[t]->append_contiguous(base + offsets[0], total, count);
            return;
        }
    }
    for (std::size_t t = 0; t < n; ++t) status[t] = targets[t]->append_frames(base, offsets, sizes, count, renumber);
}

}  // namespace fastpacket
