// C++ tests of csrc/fastpacket/aggregate.hpp, without Python: the parts that
// read untrusted bytes (the frame header checks and the body check/index)
// get valid frames, every single-byte corruption of them and random garbage,
// in exactly-sized heap buffers so ASan sees any read past the end.
#include <algorithm>
#include <cstdio>
#include <memory>
#include <random>
#include <vector>

#include "fastpacket/aggregate.hpp"

using namespace fastpacket;

static int failures = 0;
#define CHECK(cond)                                                                      \
    do {                                                                                 \
        if (!(cond)) {                                                                   \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__, __LINE__, #cond); \
            ++failures;                                                                  \
        }                                                                                \
    } while (0)

// A raw (codec 0) aggregate frame of GAME packets.
static std::vector<std::uint8_t> raw_frame(std::mt19937& rng, std::size_t count, std::vector<std::uint8_t>* body) {
    const Layout l = game_layout();
    body->clear();
    for (std::size_t i = 0; i < count; ++i) {
        std::uint8_t h[12];
        HeaderValues v;
        v.type = rng() % 100;
        v.seq = i;
        const std::size_t n = rng() % 50;
        CHECK(encode_header(l, h, v, n) == EncodeError::none);
        body->insert(body->end(), h, h + 12);
        for (std::size_t k = 0; k < n; ++k) body->push_back(static_cast<std::uint8_t>(rng()));
    }
    std::vector<std::uint8_t> frame(12 + kAggregateHeaderBytes + body->size());
    HeaderValues v;
    v.type = kAggregateType;
    CHECK(encode_header(l, frame.data(), v, kAggregateHeaderBytes + body->size()) == EncodeError::none);
    AggregateHeader ah;
    ah.codec = 0;
    ah.flags = 0;
    ah.count = static_cast<std::uint16_t>(count);
    ah.raw_size = static_cast<std::uint32_t>(body->size());
    write_aggregate_header(frame.data() + 12, ah);
    std::copy(body->begin(), body->end(), frame.begin() + 12 + kAggregateHeaderBytes);
    return frame;
}

// Parses and (for codec 0) checks and indexes a frame the way the binding does.
static AggregateCheck open_frame(const std::vector<std::uint8_t>& frame, std::uint64_t max_raw) {
    const Layout l = game_layout();
    auto copy = std::make_unique<std::uint8_t[]>(frame.size());  // exact size: ASan guards the end
    std::copy(frame.begin(), frame.end(), copy.get());
    AggregateFrame af;
    AggregateFault f = parse_aggregate_frame(l, copy.get(), frame.size(), max_raw, &af);
    if (f.check != AggregateCheck::ok) return f.check;
    CHECK(af.body_offset + af.body_size <= frame.size());
    if (af.header.codec != 0) return AggregateCheck::ok;  // compressed bodies are checked after decompressing
    if (af.body_size != af.header.raw_size) return AggregateCheck::raw_size;
    std::vector<std::uint8_t> block(index_bytes(af.header.count, l.header_size) + 1);
    IndexColumns cols = index_view(block.data(), af.header.count, l.header_size);
    f = check_aggregate_body(l, copy.get() + af.body_offset, af.body_size, af.header.count, 0, &cols);
    if (f.check == AggregateCheck::ok) {
        for (std::size_t i = 0; i < af.header.count; ++i) {
            CHECK(cols.offsets[i] >= 0 && static_cast<std::size_t>(cols.offsets[i]) + cols.sizes[i] <= af.body_size);
        }
    }
    return f.check;
}

int main() {
    std::mt19937 rng(7);
    std::vector<std::uint8_t> body;
    for (std::size_t count : {std::size_t{0}, std::size_t{1}, std::size_t{37}}) {
        const auto frame = raw_frame(rng, count, &body);
        CHECK(open_frame(frame, 1 << 20) == AggregateCheck::ok);
        CHECK(open_frame(frame, body.size() ? body.size() - 1 : 0) ==
              (body.empty() ? AggregateCheck::ok : AggregateCheck::max_raw_size));
        // every single-byte change, and every truncation, gives a verdict without overrunning
        for (std::size_t i = 0; i < frame.size(); ++i) {
            for (std::uint8_t delta : {std::uint8_t{1}, std::uint8_t{0x80}, std::uint8_t{0xFF}}) {
                auto bad = frame;
                bad[i] = static_cast<std::uint8_t>(bad[i] + delta);
                (void)open_frame(bad, 1 << 20);
            }
            std::vector<std::uint8_t> cut(frame.begin(), frame.begin() + static_cast<std::ptrdiff_t>(i));
            CHECK(open_frame(cut, 1 << 20) != AggregateCheck::ok || i == frame.size());
        }
    }
    // a nested aggregate inside the body is refused
    {
        auto inner = raw_frame(rng, 2, &body);
        std::vector<std::uint8_t> outer_body = inner;
        std::vector<std::uint8_t> frame(12 + kAggregateHeaderBytes + outer_body.size());
        HeaderValues v;
        v.type = kAggregateType;
        CHECK(encode_header(game_layout(), frame.data(), v, kAggregateHeaderBytes + outer_body.size()) ==
              EncodeError::none);
        AggregateHeader ah;
        ah.count = 1;
        ah.raw_size = static_cast<std::uint32_t>(outer_body.size());
        write_aggregate_header(frame.data() + 12, ah);
        std::copy(outer_body.begin(), outer_body.end(), frame.begin() + 12 + kAggregateHeaderBytes);
        CHECK(open_frame(frame, 1 << 20) == AggregateCheck::nested);
    }
    // inner packets obey the receiver's max_packet_size (frame_size_ok, the stream's rule)
    {
        std::mt19937 sized(11);
        const auto frame = raw_frame(sized, 20, &body);
        const Layout l = game_layout();
        std::int64_t largest = 0;
        for (std::size_t pos = 0; pos < body.size();) {
            const std::int64_t size = l.frame_size(body.data() + pos);
            largest = std::max(largest, size);
            pos += static_cast<std::size_t>(size);
        }
        CHECK(check_aggregate_body(l, body.data(), body.size(), 20, 0, nullptr, largest).check == AggregateCheck::ok);
        const AggregateFault f = check_aggregate_body(l, body.data(), body.size(), 20, 0, nullptr, largest - 1);
        CHECK(f.check == AggregateCheck::max_packet_size && f.value == largest && f.limit == largest - 1);
        CHECK(check_aggregate_body(l, body.data(), body.size(), 20).check == AggregateCheck::ok);  // no limit
        // what it declares, read before any check
        AggregateHeader declared;
        CHECK(declared_aggregate(l, frame.data(), frame.size(), &declared));
        CHECK(declared.count == 20 && declared.raw_size == body.size());
        CHECK(!declared_aggregate(l, frame.data(), 12 + kAggregateHeaderBytes - 1, &declared));  // too short
        std::uint8_t plain[12] = {12, 0, 1, 0};
        CHECK(!declared_aggregate(l, plain, 12, &declared));  // type 1: not an aggregate
    }
    // random garbage
    for (int round = 0; round < 20000; ++round) {
        std::vector<std::uint8_t> g(rng() % 300);
        for (auto& b : g) b = static_cast<std::uint8_t>(rng());
        if (g.size() >= 4 && rng() % 2) {  // often make the outer header plausible
            g[0] = static_cast<std::uint8_t>(g.size());
            g[1] = static_cast<std::uint8_t>(g.size() >> 8);
            g[2] = g[3] = 0xFF;
        }
        (void)open_frame(g, 1 << 20);
    }
    if (failures) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::puts("aggregate: all checks passed");
    return 0;
}
