// Per-connection limits: a token bucket over packets and bytes.
//
// Plain C++17, no Python, no allocation. Not thread-safe: one bucket
// belongs to one connection, driven by its event loop's thread.
#pragma once

#include <cstddef>
#include <cstdint>

namespace fastpacket {

/// Two token buckets refilled together: packets per second and bytes per
/// second, each with a burst capacity. A rate of 0 means unlimited.
class TokenBucket {
public:
    TokenBucket() = default;
    TokenBucket(double packets_per_s, double bytes_per_s, double burst_s) noexcept
        : packet_rate_(packets_per_s), byte_rate_(bytes_per_s),
          packet_cap_(packets_per_s * burst_s), byte_cap_(bytes_per_s * burst_s),
          packets_(packet_cap_), bytes_(byte_cap_) {}

    bool enabled() const noexcept { return packet_rate_ > 0 || byte_rate_ > 0; }

    /// Refills both buckets for the time since the last refill (`now` in
    /// seconds, any monotonic origin; time never runs backwards for it).
    void refill(double now) noexcept {
        if (last_ < 0) last_ = now;
        const double dt = now > last_ ? now - last_ : 0.0;
        last_ = now;
        packets_ = packets_ + dt * packet_rate_;
        if (packets_ > packet_cap_) packets_ = packet_cap_;
        bytes_ = bytes_ + dt * byte_rate_;
        if (bytes_ > byte_cap_) bytes_ = byte_cap_;
    }

    /// Takes the tokens of one item that costs `packets` packets and
    /// `bytes` bytes (an aggregate frame: its declared count and raw_size)
    /// when both buckets hold them (an unlimited one always does): true;
    /// else false, and nothing is taken. Call refill() first.
    bool take(double packets, double bytes) noexcept {
        if ((packet_rate_ > 0 && packets > packets_) || (byte_rate_ > 0 && bytes > bytes_)) return false;
        if (packet_rate_ > 0) packets_ -= packets;
        if (byte_rate_ > 0) bytes_ -= bytes;
        return true;
    }

    /// Refills for the time since the last call (`now` in seconds, any
    /// monotonic origin), then admits the longest prefix of `n` packets of
    /// the given sizes that both buckets can pay for, takes its tokens and
    /// returns its length (n when the connection is within its rate).
    std::size_t admit(double now, const std::uint32_t* sizes, std::size_t n) noexcept {
        refill(now);
        std::size_t k = 0;
        double bytes = 0;
        if (packet_rate_ > 0 && static_cast<double>(n) > packets_) n = static_cast<std::size_t>(packets_);
        for (; k < n; ++k) {
            if (byte_rate_ > 0 && bytes + sizes[k] > bytes_) break;
            bytes += sizes[k];
        }
        if (packet_rate_ > 0) packets_ -= static_cast<double>(k);
        if (byte_rate_ > 0) bytes_ -= bytes;
        return k;
    }

private:
    double packet_rate_ = 0, byte_rate_ = 0;
    double packet_cap_ = 0, byte_cap_ = 0;
    double packets_ = 0, bytes_ = 0;
    double last_ = -1;
};

}  // namespace fastpacket
