// libFuzzer target: the aggregate frame checks of csrc/fastpacket/aggregate.hpp
// (the parts that read untrusted bytes before and after decompression)
// against oracle.hpp, and the GAME fast path of the body check against the
// generic path, which must agree on every field of every verdict.
//
// Input: a layout descriptor (fuzz_input.hpp), a config byte (bits 0-1:
// max_raw_size 1 MiB / u16 / u8 / 0; bit 2: body mode; bit 3: a
// max_packet_size for the packets inside, header + u16), the max_raw_size
// argument when asked, the max_packet_size's u16 when asked; then in frame mode the frame (whole: parsed, and for
// codec 0 its body checked and indexed), in body mode a count (u16, mod
// kMaxCount) and a body.
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastpacket/aggregate.hpp"
#include "fuzz_input.hpp"

namespace {

constexpr unsigned kMaxCount = 1024;
constexpr std::int64_t kBaseOffset = 3;  // index offsets are relative to a base

oracle::Check as_oracle(fastpacket::AggregateCheck c) {
    using fastpacket::AggregateCheck;
    switch (c) {
        case AggregateCheck::ok: return oracle::Check::ok;
        case AggregateCheck::frame: return oracle::Check::frame;
        case AggregateCheck::not_aggregate: return oracle::Check::not_aggregate;
        case AggregateCheck::flags: return oracle::Check::flags;
        case AggregateCheck::codec: return oracle::Check::codec;
        case AggregateCheck::max_raw_size: return oracle::Check::max_raw_size;
        case AggregateCheck::count: return oracle::Check::count;
        case AggregateCheck::raw_size: return oracle::Check::raw_size;
        case AggregateCheck::packet_size: return oracle::Check::packet_size;
        case AggregateCheck::max_packet_size: return oracle::Check::max_packet_size;
        case AggregateCheck::nested: return oracle::Check::nested;
    }
    FUZZ_CHECK(false, "an AggregateCheck value outside the enum: %d", static_cast<int>(c));
    return oracle::Check::ok;
}

bool same_fault(const fastpacket::AggregateFault& a, const fastpacket::AggregateFault& b) {
    return a.check == b.check && a.offset == b.offset && a.value == b.value && a.limit == b.limit && a.index == b.index;
}

// The body check against the oracle, with and without an index; returns the check.
void check_body(const fastpacket::Layout& layout, const oracle::Spec& spec, const std::uint8_t* body_src,
                std::size_t n, std::size_t count, std::int64_t max_packet_size) {
    using namespace fastpacket;
    fuzz::Exact body(body_src, n);
    std::vector<oracle::Frame> packets;
    const bool limited = max_packet_size != kNoMaxPacketSize;
    const oracle::Verdict want = oracle::check_body(spec, body.data, n, count, &packets,
                                                    limited ? oracle::Wide{max_packet_size} : oracle::Wide{-1});
    fuzz::Exact block(index_bytes(count, spec.header_size));
    IndexColumns cols = index_view(block.data, count, spec.header_size);
    const AggregateFault f = check_aggregate_body(layout, body.data, n, count, kBaseOffset, &cols, max_packet_size);
    FUZZ_CHECK(as_oracle(f.check) == want.check && (f.check == AggregateCheck::ok ||
                                                    (f.offset == want.offset && f.index == want.index)),
               "body: check %d at %llu index %llu; oracle %d at %zu index %zu", static_cast<int>(f.check),
               static_cast<unsigned long long>(f.offset), static_cast<unsigned long long>(f.index),
               static_cast<int>(want.check), want.offset, want.index);
    const AggregateFault again = check_aggregate_body(layout, body.data, n, count, kBaseOffset, nullptr,
                                                      max_packet_size);
    FUZZ_CHECK(same_fault(f, again), "the body check differs without an index");
    if (detail::is_game_layout(layout)) {  // the fast path and the generic one
        const AggregateFault g =
            detail::check_body_with(detail::GenericFields{layout}, body.data, n, count, 0, nullptr, max_packet_size);
        const AggregateFault h =
            detail::check_body_with(detail::GameFields{}, body.data, n, count, 0, nullptr, max_packet_size);
        FUZZ_CHECK(same_fault(g, h), "GAME fast path and generic path disagree: %d vs %d", static_cast<int>(h.check),
                   static_cast<int>(g.check));
    }
    if (f.check != AggregateCheck::ok) return;
    for (std::size_t i = 0; i < count; ++i) {
        const oracle::Frame& p = packets[i];
        FUZZ_CHECK(cols.offsets[i] == kBaseOffset + static_cast<std::int64_t>(p.offset) && cols.sizes[i] == p.size &&
                       std::memcmp(cols.headers + i * spec.header_size, body.data + p.offset, spec.header_size) == 0,
                   "inner packet %zu indexed wrong", i);
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace fastpacket;
    fuzz::Reader in(data, size);
    oracle::Spec spec;
    Layout layout;
    fuzz::read_layout(in, &spec, &layout);
    const unsigned cfg = in.u8();
    const unsigned mode = cfg & 3;
    const std::uint64_t max_raw = mode == 0 ? (1u << 20) : mode == 1 ? in.u16() : mode == 2 ? in.u8() : 0;
    // the receiver's max_packet_size for the packets inside (#14 item 4), or none
    const std::int64_t max_packet =
        (cfg >> 3) & 1 ? static_cast<std::int64_t>(spec.header_size + in.u16()) : kNoMaxPacketSize;
    std::size_t n = 0;
    if ((cfg >> 2) & 1) {
        const unsigned count = in.u16() % kMaxCount;
        const std::uint8_t* body = in.rest(&n);
        check_body(layout, spec, body, n, count, max_packet);
        return 0;
    }
    const std::uint8_t* src = in.rest(&n);
    fuzz::Exact frame(src, n);
    AggregateFrame af;
    const AggregateFault f = parse_aggregate_frame(layout, frame.data, n, max_raw, &af);
    const oracle::Verdict want = oracle::parse_frame(spec, frame.data, n, max_raw);
    FUZZ_CHECK(as_oracle(f.check) == want.check && f.offset == want.offset,
               "frame: check %d at %llu; oracle %d at %zu", static_cast<int>(f.check),
               static_cast<unsigned long long>(f.offset), static_cast<int>(want.check), want.offset);
    if (f.check != AggregateCheck::ok) return 0;
    FUZZ_CHECK(af.header.codec == want.codec && af.header.count == want.count && af.header.raw_size == want.raw_size &&
                   af.body_offset == want.body_offset && af.body_size == want.body_size &&
                   af.body_offset + af.body_size == n,
               "the parsed header differs");
    if (af.header.codec == 0) {
        check_body(layout, spec, frame.data + af.body_offset, af.body_size, af.header.count, max_packet);
    }
    return 0;
}
