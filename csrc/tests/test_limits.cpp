// C++ tests of csrc/fastpacket/limits.hpp: TokenBucket::admit(), the call
// the asyncio adapter makes per read burst. Times and rates are binary
// fractions (1/8 s, 1024 B/s, ...) so every expected token count is exact in
// double arithmetic: the tests compare integers, never within a tolerance.
#include <cstdint>
#include <vector>

#include "check.hpp"
#include "fastpacket/limits.hpp"

using fastpacket::TokenBucket;

namespace {

/// An arbitrary monotonic origin, in seconds (the bucket accepts any).
constexpr double kT0 = 1000.0;

std::size_t admit(TokenBucket& b, double now, const std::vector<std::uint32_t>& sizes) {
    return b.admit(now, sizes.data(), sizes.size());
}

std::vector<std::uint32_t> packets(std::size_t n, std::uint32_t size = 20) {
    return std::vector<std::uint32_t>(n, size);
}

void unlimited() {
    TokenBucket none;
    CHECK(!none.enabled());
    CHECK_EQ(admit(none, kT0, packets(100000)), 100000u);
    TokenBucket zero(0, 0, 1.0);
    CHECK(!zero.enabled());
    CHECK_EQ(admit(zero, kT0, packets(7, 1u << 30)), 7u);
    CHECK_EQ(admit(zero, kT0, {}), 0u);
}

void packet_rate() {
    TokenBucket b(8, 0, 2.0);  // 8 packets/s, burst 2 s: 16 packets
    CHECK(b.enabled());
    CHECK_EQ(admit(b, kT0, packets(20)), 16u);           // starts full: the burst, then the longest prefix
    CHECK_EQ(admit(b, kT0, packets(5)), 0u);             // empty until time passes
    CHECK_EQ(admit(b, kT0 + 0.125, packets(5)), 1u);     // 1/8 s refills one packet
    CHECK_EQ(admit(b, kT0 + 0.5, packets(5)), 3u);       // 3/8 s more: three
    CHECK_EQ(admit(b, kT0 + 1000, packets(40)), 16u);    // a long pause refills to the burst, no more
    CHECK_EQ(admit(b, kT0 + 1000, {}), 0u);
    // byte sizes are ignored without a byte rate
    CHECK_EQ(admit(b, kT0 + 1002, packets(3, 0xFFFFFFFFu)), 3u);
}

void fractional_tokens() {
    TokenBucket b(4, 0, 1.0);  // 4 packets/s, burst 4
    CHECK_EQ(admit(b, kT0, packets(4)), 4u);
    CHECK_EQ(admit(b, kT0 + 0.125, packets(1)), 0u);     // half a packet earned: not enough
    CHECK_EQ(admit(b, kT0 + 0.25, packets(2)), 1u);      // the halves add up to one
    CHECK_EQ(admit(b, kT0 + 0.375, packets(1)), 0u);
    CHECK_EQ(admit(b, kT0 + 0.5, packets(1)), 1u);
}

void byte_rate() {
    TokenBucket b(0, 1024, 1.0);  // 1024 bytes/s, burst 1024 bytes
    CHECK(b.enabled());
    CHECK_EQ(admit(b, kT0, {400, 400, 400}), 2u);        // 800 of 1024; 224 left
    CHECK_EQ(admit(b, kT0, {300}), 0u);
    CHECK_EQ(admit(b, kT0 + 0.0625, {300}), 0u);         // +64: 288
    CHECK_EQ(admit(b, kT0 + 0.125, {300, 1}), 2u);       // +64: 352, takes 301, 51 left
    CHECK_EQ(admit(b, kT0 + 0.125, {51, 1}), 1u);        // exactly the tokens left: admitted
    CHECK_EQ(admit(b, kT0 + 0.125, {0, 0, 1}), 2u);      // empty packets cost no bytes
    // the prefix rule: a packet that does not fit stops the burst, even if a
    // later, smaller one would fit (packets are delivered in order or not at all)
    CHECK_EQ(admit(b, kT0 + 100, {100, 2000, 10}), 1u);
    CHECK_EQ(admit(b, kT0 + 100, {924}), 1u);            // the 924 bytes the 2000 did not take
}

void both_rates() {
    TokenBucket b(2, 1024, 1.0);  // 2 packets/s and 1024 bytes/s, burst 1 s
    CHECK_EQ(admit(b, kT0, {10, 10, 10}), 2u);           // the packet bucket binds: 20 bytes taken
    CHECK_EQ(admit(b, kT0 + 0.5, {1000, 1}), 1u);        // +1 packet, bytes capped at 1024: one packet
    CHECK_EQ(admit(b, kT0 + 1.5, {1000, 1000}), 1u);     // 2 packets, but the bytes cap at 1024
    CHECK_EQ(admit(b, kT0 + 1.5, {24}), 1u);
}

void clock_going_back() {
    TokenBucket b(8, 0, 1.0);
    CHECK_EQ(admit(b, kT0, packets(8)), 8u);
    CHECK_EQ(admit(b, kT0 - 5, packets(1)), 0u);         // an earlier time refills nothing
    CHECK_EQ(admit(b, kT0 - 5, packets(1)), 0u);
}

void take_declared_costs() {
    // an aggregate frame is charged what it declares (count, raw_size), before inflating
    TokenBucket b(64, 1024, 1.0);  // 64 packets/s and 1 KiB/s, burst 1 s
    b.refill(kT0);
    CHECK(b.take(40, 512));
    CHECK(!b.take(30, 10));   // 24 packets left: refused, nothing taken
    CHECK(!b.take(1, 600));   // 512 bytes left
    CHECK(b.take(24, 512));   // exactly what is left
    CHECK(!b.take(1, 0));
    b.refill(kT0 + 0.5);      // half a second: 32 packets, 512 bytes
    CHECK(b.take(32, 512));
    CHECK(!b.take(0, 1));
    TokenBucket packets_only(8, 0, 1.0);
    packets_only.refill(kT0);
    CHECK(packets_only.take(8, 1e12));  // no byte rate: bytes are free
    TokenBucket none;
    none.refill(kT0);
    CHECK(none.take(1e12, 1e12));
}

void burst_too_small() {
    // A bucket that cannot hold one packet admits none, ever: the reason the
    // adapter's Options refuse rate_burst * packets_per_s < 1 and
    // rate_burst * bytes_per_s < max_packet_size.
    TokenBucket few(10, 0, 0.05);  // holds half a packet
    for (int i = 0; i < 10; ++i) CHECK_EQ(admit(few, kT0 + 10.0 * i, packets(1)), 0u);
    TokenBucket small(0, 1024, 0.5);  // holds 512 bytes
    for (int i = 0; i < 10; ++i) CHECK_EQ(admit(small, kT0 + 10.0 * i, {513}), 0u);
    CHECK_EQ(admit(small, kT0 + 200, {512}), 1u);
}

}  // namespace

int main() {
    unlimited();
    packet_rate();
    fractional_tokens();
    byte_rate();
    both_rates();
    clock_going_back();
    take_declared_costs();
    burst_too_small();
    return fastpacket_test::finish("limits");
}
