// C++ tests of csrc/fastpacket/sendbuf.hpp: seq assignment and wrap-around,
// whole packets in every flush (each flushed buffer frames to exactly its
// packets), capacity and encoding errors that append nothing, broadcast
// (GAME fast path and a generic big-endian layout), relaying frames as they
// are. Every buffer is read back with the decoder's own scan_frames() and
// index_frames().
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "check.hpp"
#include "fastpacket/sendbuf.hpp"

using namespace fastpacket;

namespace {

/// GAME's u32 seq field wraps from this to 0.
constexpr std::uint64_t kU32Max = 0xFFFFFFFFull;

struct Packet {
    std::uint64_t type = 0, seq = 0, player_id = 0;
    std::vector<std::uint8_t> payload;
};

/// The packets of buf[0, n), which must be exactly whole frames.
std::vector<Packet> decode(const Layout& l, const std::uint8_t* buf, std::size_t n) {
    const ScanResult r = scan_frames(l, buf, n, std::numeric_limits<std::int64_t>::max());
    CHECK(!r.error);
    CHECK_EQ(r.end, n);  // nothing left over: no packet split across flushes
    std::vector<std::uint8_t> block(index_bytes(r.count, l.header_size));
    const IndexColumns cols = index_view(block.data(), r.count, l.header_size);
    index_frames(l, buf, r.count, 0, cols);
    std::vector<Packet> out(r.count);
    for (std::size_t i = 0; i < r.count; ++i) {
        const std::uint8_t* h = cols.headers + i * l.header_size;
        if (l.type_index >= 0) out[i].type = l.read(h, l.type_index);
        if (l.seq_index >= 0) out[i].seq = l.read(h, l.seq_index);
        if (l.player_id_index >= 0) out[i].player_id = l.read(h, l.player_id_index);
        const std::uint8_t* p = buf + cols.offsets[i];
        out[i].payload.assign(p + l.header_size, p + cols.sizes[i]);
    }
    return out;
}

std::vector<Packet> decode(const SendBuffer& sb) { return decode(sb.layout(), sb.data(), sb.size()); }

/// Big-endian: u16 length (payload only), u8 type, u16 seq, u64 player_id.
Layout big_endian_layout() {
    Layout l;
    l.nfields = 4;
    l.header_size = 13;
    l.big_endian = true;
    l.fields[0] = {0, 2};
    l.fields[1] = {2, 1};
    l.fields[2] = {3, 2};
    l.fields[3] = {5, 8};
    l.length_index = 0;
    l.length_includes_header = false;
    l.type_index = 1;
    l.seq_index = 2;
    l.player_id_index = 3;
    return l;
}

/// u32 length and u16 type only: no seq, no player_id.
Layout bare_layout() {
    Layout l;
    l.nfields = 2;
    l.header_size = 6;
    l.fields[0] = {0, 4};
    l.fields[1] = {4, 2};
    l.length_index = 0;
    l.type_index = 1;
    return l;
}

SendStatus send(SendBuffer& sb, std::uint64_t type, const std::vector<std::uint8_t>& payload,
                std::uint64_t player_id = 0, std::uint64_t* seq_used = nullptr, bool explicit_seq = false,
                std::uint64_t seq = 0, EncodeError* err_out = nullptr) {
    std::uint64_t used = ~std::uint64_t{0};
    EncodeError err = EncodeError::none;
    const SendStatus st = sb.send(type, payload.data(), payload.size(), player_id, explicit_seq, seq, &used, &err);
    if (seq_used) *seq_used = used;
    if (err_out) *err_out = err;
    return st;
}

/// Longest payload the tests make, in bytes.
constexpr std::size_t kMaxTestPayload = 70000;

/// n bytes counting up from `first`, copied from one table (GCC 12 at -O3
/// warns falsely, -Wstringop-overflow, on stores into a fresh small vector).
std::vector<std::uint8_t> bytes(std::size_t n, std::uint8_t first = 0) {
    static const std::vector<std::uint8_t> counting = [] {
        std::vector<std::uint8_t> t(kMaxTestPayload + 256);
        for (std::size_t i = 0; i < t.size(); ++i) t[i] = static_cast<std::uint8_t>(i);
        return t;
    }();
    CHECK(n <= kMaxTestPayload);
    const auto begin = counting.begin() + first;
    return std::vector<std::uint8_t>(begin, begin + static_cast<std::ptrdiff_t>(std::min(n, kMaxTestPayload)));
}

void seq_assignment() {
    std::vector<std::uint8_t> mem(4096);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    CHECK_EQ(sb.seq_max(), kU32Max);
    std::uint64_t used = 0;
    for (std::uint64_t i = 0; i < 5; ++i) {
        CHECK(send(sb, 10 + i, bytes(i), 100 + i, &used) == SendStatus::ok);
        CHECK_EQ(used, i);
    }
    CHECK(send(sb, 1, bytes(3), 0, &used, true, 1000) == SendStatus::ok);  // an explicit seq
    CHECK_EQ(used, 1000u);
    CHECK_EQ(sb.next_seq(), 5u);  // ... does not move the counter
    CHECK(send(sb, 1, {}, 0, &used) == SendStatus::ok);
    CHECK_EQ(used, 5u);
    CHECK_EQ(sb.count(), 7u);
    const auto got = decode(sb);
    CHECK_EQ(got.size(), 7u);
    for (std::size_t i = 0; i < 5 && i < got.size(); ++i) {
        CHECK_EQ(got[i].type, 10 + i);
        CHECK_EQ(got[i].seq, i);
        CHECK_EQ(got[i].player_id, 100 + i);
        CHECK(got[i].payload == bytes(i));
    }
    if (got.size() == 7) {
        CHECK_EQ(got[5].seq, 1000u);
        CHECK_EQ(got[6].seq, 5u);
    }
}

void seq_wrap() {
    std::vector<std::uint8_t> mem(4096);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    sb.set_next_seq(kU32Max - 1);
    std::uint64_t used = 0;
    const std::uint64_t want[] = {kU32Max - 1, kU32Max, 0, 1};
    for (std::uint64_t w : want) {
        CHECK(send(sb, 1, bytes(4), 0, &used) == SendStatus::ok);
        CHECK_EQ(used, w);
    }
    const auto got = decode(sb);
    for (std::size_t i = 0; i < got.size() && i < 4; ++i) CHECK_EQ(got[i].seq, want[i]);
    sb.set_next_seq((std::uint64_t{1} << 32) + 5);  // reduced to the field's width
    CHECK_EQ(sb.next_seq(), 5u);

    // a u16 seq field wraps at 2^16; an explicit seq over it is refused whole
    std::vector<std::uint8_t> mem2(4096);
    SendBuffer small(big_endian_layout(), mem2.size());
    small.attach(mem2.data());
    CHECK_EQ(small.seq_max(), 0xFFFFu);
    small.set_next_seq(0xFFFF);
    CHECK(send(small, 1, {}, 0, &used) == SendStatus::ok);
    CHECK_EQ(used, 0xFFFFu);
    CHECK(send(small, 1, {}, 0, &used) == SendStatus::ok);
    CHECK_EQ(used, 0u);
    EncodeError err = EncodeError::none;
    const std::size_t size_before = small.size();
    CHECK(send(small, 1, bytes(3), 0, &used, true, 0x10000, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::seq_range);
    CHECK_EQ(small.size(), size_before);
    CHECK_EQ(small.count(), 2u);
    CHECK_EQ(small.next_seq(), 1u);

    // no seq field: nothing to number
    std::vector<std::uint8_t> mem3(256);
    SendBuffer bare(bare_layout(), mem3.size());
    bare.attach(mem3.data());
    CHECK_EQ(bare.seq_max(), 0u);
    CHECK(send(bare, 3, bytes(2)) == SendStatus::ok);
    CHECK(send(bare, 4, bytes(2)) == SendStatus::ok);
    CHECK_EQ(bare.next_seq(), 0u);
    const auto b = decode(bare);
    CHECK_EQ(b.size(), 2u);
    if (b.size() == 2) CHECK_EQ(b[1].type, 4u);
}

void whole_packets_per_flush() {
    // Random packets through a small buffer, flushed whenever one does not
    // fit (double-buffered, as the binding does): every flush is whole
    // packets, and together they are every packet in order.
    const Layout l = game_layout();
    constexpr std::size_t kMax = 1000;
    constexpr int kPackets = 5000;
    std::vector<std::uint8_t> a(kMax), b(kMax);
    SendBuffer sb(l, kMax);
    sb.attach(a.data());
    bool on_a = true;
    std::mt19937 rng(21);
    std::vector<std::uint8_t> wire;
    std::vector<Packet> sent;
    std::size_t flushes = 0;
    auto flush = [&] {
        const auto got = decode(sb);  // CHECKs that the flush holds whole frames only
        CHECK_EQ(got.size(), sb.count());
        wire.insert(wire.end(), sb.data(), sb.data() + sb.size());
        on_a = !on_a;
        sb.attach(on_a ? a.data() : b.data());
        ++flushes;
    };
    for (int i = 0; i < kPackets; ++i) {
        Packet p;
        p.type = rng() % 500;
        p.player_id = rng();
        p.payload = bytes(rng() % 300, static_cast<std::uint8_t>(i));
        p.seq = static_cast<std::uint64_t>(i);
        std::uint64_t used = 0;
        SendStatus st = send(sb, p.type, p.payload, p.player_id, &used);
        if (st == SendStatus::full) {
            const std::size_t size = sb.size(), count = sb.count();
            const std::uint64_t next = sb.next_seq();
            CHECK(sb.room_for(l.header_size + p.payload.size()) == SendStatus::full);
            CHECK_EQ(sb.size(), size);  // a refused packet leaves no trace
            CHECK_EQ(sb.count(), count);
            CHECK_EQ(sb.next_seq(), next);
            flush();
            st = send(sb, p.type, p.payload, p.player_id, &used);
        }
        CHECK(st == SendStatus::ok);
        CHECK_EQ(used, p.seq);
        sent.push_back(p);
    }
    flush();
    CHECK(flushes > kPackets / 10);  // the test really crossed many flushes
    const auto got = decode(l, wire.data(), wire.size());
    CHECK_EQ(got.size(), sent.size());
    for (std::size_t i = 0; i < got.size() && i < sent.size(); ++i) {
        CHECK_EQ(got[i].type, sent[i].type);
        CHECK_EQ(got[i].seq, sent[i].seq);
        CHECK_EQ(got[i].player_id, sent[i].player_id & kU32Max);
        CHECK(got[i].payload == sent[i].payload);
    }
}

void capacity() {
    std::vector<std::uint8_t> mem(100);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    CHECK(send(sb, 1, bytes(89)) == SendStatus::never_fits);  // 101 > max_bytes: no flush helps
    CHECK(send(sb, 1, bytes(38)) == SendStatus::ok);          // 50 bytes
    CHECK(send(sb, 1, bytes(49)) == SendStatus::full);        // 61 > 50 free: flush first
    CHECK(send(sb, 1, bytes(38)) == SendStatus::ok);          // exactly the 50 left
    CHECK_EQ(sb.free_bytes(), 0u);
    CHECK(send(sb, 1, {}) == SendStatus::full);
    CHECK_EQ(sb.count(), 2u);
    sb.attach(mem.data());
    CHECK_EQ(sb.size(), 0u);
    CHECK(send(sb, 1, bytes(88)) == SendStatus::ok);  // a 100-byte frame fills it exactly
    CHECK_EQ(decode(sb).size(), 1u);

    std::vector<std::uint8_t> tiny(12);
    SendBuffer header_only(game_layout(), tiny.size());
    header_only.attach(tiny.data());
    CHECK(send(header_only, 1, {}) == SendStatus::ok);  // an empty payload is a 12-byte frame
    CHECK(send(header_only, 1, bytes(1)) == SendStatus::never_fits);

    // a payload the length field cannot describe (GAME: u16, 65535 - 12)
    std::vector<std::uint8_t> big(70000);
    SendBuffer large(game_layout(), big.size());
    large.attach(big.data());
    EncodeError err = EncodeError::none;
    CHECK(send(large, 1, bytes(65523), 0, nullptr, false, 0, &err) == SendStatus::ok);
    CHECK(send(large, 1, bytes(65524), 0, nullptr, false, 0, &err) == SendStatus::full);
    large.attach(big.data());
    CHECK(send(large, 1, bytes(65524), 0, nullptr, false, 0, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::too_large);
    CHECK_EQ(large.size(), 0u);
}

void encode_errors() {
    std::vector<std::uint8_t> mem(1000);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    EncodeError err = EncodeError::none;
    CHECK(send(sb, 0x10000, bytes(4), 0, nullptr, false, 0, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::type_range);
    CHECK(send(sb, 1, bytes(4), kU32Max + 1, nullptr, false, 0, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::player_id_range);
    CHECK(send(sb, 1, bytes(4), 0, nullptr, true, kU32Max + 1, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::seq_range);
    CHECK_EQ(sb.size(), 0u);
    CHECK_EQ(sb.count(), 0u);
    CHECK_EQ(sb.next_seq(), 0u);  // failed sends consume no seq

    Layout no_type = bare_layout();
    no_type.type_index = -1;
    SendBuffer typeless(no_type, mem.size());
    typeless.attach(mem.data());
    CHECK(send(typeless, 1, {}, 0, nullptr, false, 0, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::no_type_field);
    CHECK_EQ(typeless.count(), 0u);
    // type 0 is "no type": the payload goes out as one length-prefixed frame
    CHECK(send(typeless, 0, bytes(3), 0, nullptr, false, 0, &err) == SendStatus::ok);
    CHECK_EQ(typeless.count(), 1u);
    CHECK_EQ(typeless.size(), std::size_t{no_type.header_size} + 3);
}

template <class Id>
SendStatus broadcast(SendBuffer& sb, std::uint64_t type, const std::vector<std::uint8_t>& payload,
                     const std::vector<Id>& ids, std::uint64_t* first_seq, std::size_t* bad_index,
                     EncodeError* err) {
    return sb.broadcast(type, payload.data(), payload.size(), ids.data(), ids.size(), first_seq, bad_index, err);
}

void broadcasts() {
    std::vector<std::uint8_t> mem(1000);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    std::uint64_t first = 99;
    std::size_t bad = 99;
    EncodeError err = EncodeError::none;
    CHECK(send(sb, 5, bytes(2)) == SendStatus::ok);  // seq 0
    const std::vector<std::uint32_t> ids = {7, 8, kU32Max};
    CHECK(broadcast(sb, 9, bytes(10), ids, &first, &bad, &err) == SendStatus::ok);
    CHECK_EQ(first, 1u);
    CHECK_EQ(sb.next_seq(), 4u);
    CHECK_EQ(sb.count(), 4u);
    auto got = decode(sb);
    CHECK_EQ(got.size(), 4u);
    for (std::size_t i = 1; i < got.size(); ++i) {
        CHECK_EQ(got[i].type, 9u);
        CHECK_EQ(got[i].seq, i);
        CHECK_EQ(got[i].player_id, ids[i - 1]);
        CHECK(got[i].payload == bytes(10));
    }

    // all or nothing: one bad id and nothing is appended, no seq used
    const std::size_t size = sb.size();
    const std::vector<std::int64_t> negative = {1, 2, -1, 4};
    CHECK(broadcast(sb, 9, bytes(10), negative, &first, &bad, &err) == SendStatus::encode_error);
    CHECK_EQ(bad, 2u);
    CHECK(err == EncodeError::player_id_range);
    const std::vector<std::uint64_t> too_big = {1, kU32Max + 1};
    CHECK(broadcast(sb, 9, bytes(10), too_big, &first, &bad, &err) == SendStatus::encode_error);
    CHECK_EQ(bad, 1u);
    CHECK(broadcast(sb, 0x10000, bytes(10), ids, &first, &bad, &err) == SendStatus::encode_error);
    CHECK(err == EncodeError::type_range);
    // 1000 bytes hold 45 frames of 22 bytes; 42 more do not fit now, 46 never
    CHECK(broadcast(sb, 9, bytes(10), std::vector<std::uint32_t>(42, 1), &first, &bad, &err) == SendStatus::full);
    CHECK(broadcast(sb, 9, bytes(10), std::vector<std::uint32_t>(46, 1), &first, &bad, &err) ==
          SendStatus::never_fits);
    CHECK_EQ(sb.size(), size);
    CHECK_EQ(sb.next_seq(), 4u);
    CHECK(broadcast(sb, 9, bytes(10), std::vector<std::uint32_t>{}, &first, &bad, &err) == SendStatus::ok);
    CHECK_EQ(first, 4u);
    CHECK_EQ(sb.size(), size);
    // a count whose byte total would overflow 64 bits is refused before any id is read
    const std::uint32_t one_id = 1;
    CHECK(sb.broadcast(9, nullptr, 0, &one_id, std::size_t{1} << 62, &first, &bad, &err) ==
          SendStatus::never_fits);

    // seq wraps inside a broadcast
    sb.attach(mem.data());
    sb.set_next_seq(kU32Max);
    CHECK(broadcast(sb, 2, bytes(1), std::vector<std::uint16_t>{1, 2, 3}, &first, &bad, &err) == SendStatus::ok);
    CHECK_EQ(first, kU32Max);
    CHECK_EQ(sb.next_seq(), 2u);
    got = decode(sb);
    CHECK_EQ(got.size(), 3u);
    if (got.size() == 3) {
        CHECK_EQ(got[0].seq, kU32Max);
        CHECK_EQ(got[1].seq, 0u);
        CHECK_EQ(got[2].seq, 1u);
    }

    // the generic path: big-endian fields of other widths
    const Layout be = big_endian_layout();
    SendBuffer gen(be, mem.size());
    gen.attach(mem.data());
    gen.set_next_seq(0xFFFE);
    const std::vector<std::uint64_t> wide = {1, 0x0102030405060708ull, ~std::uint64_t{0}};
    CHECK(broadcast(gen, 200, bytes(5), wide, &first, &bad, &err) == SendStatus::ok);
    CHECK_EQ(first, 0xFFFEu);
    CHECK_EQ(gen.next_seq(), 1u);
    got = decode(gen);
    CHECK_EQ(got.size(), 3u);
    const std::uint64_t seqs[] = {0xFFFE, 0xFFFF, 0};
    for (std::size_t i = 0; i < got.size() && i < 3; ++i) {
        CHECK_EQ(got[i].type, 200u);
        CHECK_EQ(got[i].seq, seqs[i]);
        CHECK_EQ(got[i].player_id, wide[i]);
        CHECK(got[i].payload == bytes(5));
    }
    CHECK_EQ(mem[0], 0u);  // big-endian length 5 (payload only)
    CHECK_EQ(mem[1], 5u);
    CHECK(broadcast(gen, 256, bytes(5), wide, &first, &bad, &err) == SendStatus::encode_error);  // u8 type
}

void records() {
    // one packet per row, seq assigned as usual, ids per row or one for all
    std::vector<std::uint8_t> mem(1000);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    std::uint64_t first = 99;
    std::size_t bad = 99;
    EncodeError err = EncodeError::none;
    CHECK(send(sb, 5, bytes(2)) == SendStatus::ok);  // seq 0
    const std::vector<std::uint8_t> rows = bytes(3 * 16);  // 3 rows of 10 bytes, 16 apart
    const std::vector<std::int32_t> ids = {7, 8, 9};
    CHECK(sb.append_records<std::int32_t>(9, rows.data(), 3, 10, 16, ids.data(), 1, &first, &bad, &err) ==
          SendStatus::ok);
    CHECK_EQ(first, 1u);
    CHECK_EQ(sb.next_seq(), 4u);
    auto got = decode(sb);
    CHECK_EQ(got.size(), 4u);
    for (std::size_t i = 1; i < got.size() && i < 4; ++i) {
        CHECK_EQ(got[i].type, 9u);
        CHECK_EQ(got[i].seq, i);
        CHECK_EQ(got[i].player_id, static_cast<std::uint64_t>(ids[i - 1]));
        CHECK(got[i].payload == std::vector<std::uint8_t>(rows.begin() + 16 * (i - 1), rows.begin() + 16 * (i - 1) + 10));
    }
    const std::uint16_t one = 42;
    CHECK(sb.append_records<std::uint16_t>(3, rows.data(), 2, 4, 0, &one, 0, &first, &bad, &err) == SendStatus::ok);
    got = decode(sb);
    CHECK_EQ(got.size(), 6u);
    if (got.size() == 6) {
        CHECK_EQ(got[5].player_id, 42u);
        CHECK(got[5].payload == bytes(4));  // stride 0: the same row twice
    }
    // all or nothing: a bad id, a bad type, no room now, never room
    const std::size_t size = sb.size();
    const std::vector<std::int64_t> negative = {1, -1};
    CHECK(sb.append_records<std::int64_t>(9, rows.data(), 2, 10, 10, negative.data(), 1, &first, &bad, &err) ==
          SendStatus::encode_error);
    CHECK_EQ(bad, 1u);
    CHECK(err == EncodeError::player_id_range);
    CHECK(sb.append_records<std::uint8_t>(0x10000, rows.data(), 1, 1, 1, nullptr, 0, &first, &bad, &err) ==
          SendStatus::encode_error);
    CHECK(err == EncodeError::type_range);
    const std::vector<std::uint8_t> many(1000);
    CHECK(sb.append_records<std::uint8_t>(9, many.data(), 41, 10, 10, nullptr, 0, &first, &bad, &err) ==
          SendStatus::full);
    CHECK(sb.append_records<std::uint8_t>(9, many.data(), 46, 10, 10, nullptr, 0, &first, &bad, &err) ==
          SendStatus::never_fits);
    CHECK_EQ(sb.size(), size);
    CHECK_EQ(sb.next_seq(), 6u);

    // the generic path: big-endian fields of other widths, seq wrapping
    const Layout be = big_endian_layout();
    SendBuffer gen(be, mem.size());
    gen.attach(mem.data());
    gen.set_next_seq(0xFFFF);
    const std::vector<std::uint64_t> wide = {0x0102030405060708ull, ~std::uint64_t{0}};
    const std::vector<std::uint8_t> long_rows = bytes(3 + 70);  // two 70-byte rows, 3 apart: they overlap
    CHECK(gen.append_records<std::uint64_t>(200, long_rows.data(), 2, 70, 3, wide.data(), 1, &first, &bad, &err) ==
          SendStatus::ok);
    got = decode(gen);
    CHECK_EQ(got.size(), 2u);
    for (std::size_t i = 0; i < got.size() && i < 2; ++i) {
        CHECK_EQ(got[i].seq, i == 0 ? 0xFFFFu : 0u);
        CHECK_EQ(got[i].player_id, wide[i]);
        CHECK(got[i].payload == std::vector<std::uint8_t>(long_rows.begin() + 3 * static_cast<std::ptrdiff_t>(i),
                                                          long_rows.begin() + 3 * static_cast<std::ptrdiff_t>(i) + 70));
    }
}

void relay_frames() {
    // frames relayed as they are: headers (seq included) untouched, the
    // buffer's own seq counter unused; runs of adjacent frames in one copy
    const Layout l = game_layout();
    std::vector<std::uint8_t> src(4096);
    SendBuffer maker(l, src.size());
    maker.attach(src.data());
    maker.set_next_seq(500);
    for (std::size_t i = 0; i < 6; ++i) CHECK(send(maker, 40 + i, bytes(i * 3)) == SendStatus::ok);
    const auto all = decode(maker);
    std::vector<std::int64_t> offsets;
    std::vector<std::uint32_t> sizes;
    std::int64_t off = 0;
    for (const auto& p : all) {
        offsets.push_back(off);
        sizes.push_back(static_cast<std::uint32_t>(l.header_size + p.payload.size()));
        off += sizes.back();
    }
    // frames 0, 1, 2 (one run), then 5, then 3 (out of order)
    const std::int64_t pick_off[] = {offsets[0], offsets[1], offsets[2], offsets[5], offsets[3]};
    const std::uint32_t pick_size[] = {sizes[0], sizes[1], sizes[2], sizes[5], sizes[3]};
    const std::size_t order[] = {0, 1, 2, 5, 3};
    std::vector<std::uint8_t> mem(1000);
    SendBuffer sb(l, mem.size());
    sb.attach(mem.data());
    CHECK(sb.append_frames(src.data(), pick_off, pick_size, 5) == SendStatus::ok);
    CHECK_EQ(sb.count(), 5u);
    CHECK_EQ(sb.next_seq(), 0u);
    const auto got = decode(sb);
    CHECK_EQ(got.size(), 5u);
    for (std::size_t i = 0; i < got.size() && i < 5; ++i) {
        CHECK_EQ(got[i].seq, 500 + order[i]);
        CHECK_EQ(got[i].type, 40 + order[i]);
        CHECK(got[i].payload == all[order[i]].payload);
    }
    // all or nothing
    std::vector<std::uint8_t> small_mem(60);
    SendBuffer small(l, small_mem.size());
    small.attach(small_mem.data());
    CHECK(small.append_frames(src.data(), pick_off, pick_size, 3) == SendStatus::ok);  // 12 + 15 + 18
    CHECK(small.append_frames(src.data(), pick_off, pick_size, 5) == SendStatus::never_fits);  // 93 > 60
    CHECK(small.append_frames(src.data(), pick_off + 4, pick_size + 4, 1) == SendStatus::full);  // 21 > 15 free
    CHECK_EQ(small.count(), 3u);
    CHECK_EQ(small.size(), 45u);
    // or as many whole frames as fit, from the front: a batch of any size
    // goes out over several flushes, in order, never a frame split
    small.attach(small_mem.data());
    CHECK_EQ(small.append_frames_fitting(src.data(), pick_off, pick_size, 5), 3u);  // 45 of 60; 21 would not fit
    CHECK_EQ(small.append_frames_fitting(src.data(), pick_off + 3, pick_size + 3, 2), 0u);
    CHECK_EQ(small.size(), 45u);
    small.attach(small_mem.data());
    CHECK_EQ(small.append_frames_fitting(src.data(), pick_off + 3, pick_size + 3, 2), 2u);  // 21 + 12
    const auto rest = decode(small);
    CHECK_EQ(rest.size(), 2u);
    if (rest.size() == 2) CHECK(rest[0].seq == 505 && rest[1].seq == 503);
    CHECK_EQ(small.append_frames_fitting(src.data(), pick_off, pick_size, 0), 0u);
}

void flush_policy() {
    std::vector<std::uint8_t> mem(1000);
    SendBuffer sb(game_layout(), mem.size());
    sb.attach(mem.data());
    CHECK(!sb.should_flush(0, 0.0));  // never when empty
    CHECK(send(sb, 1, bytes(88)) == SendStatus::ok);  // 100 bytes, 1 packet
    CHECK(sb.should_flush(1, 1.0));
    CHECK(!sb.should_flush(2, 0.2));
    CHECK(sb.should_flush(2, 0.1));  // 100 >= 0.1 * 1000
    for (int i = 0; i < 9; ++i) CHECK(send(sb, 1, {}) == SendStatus::ok);
    CHECK(sb.should_flush(10, 0.8));  // 10 packets
    CHECK(!sb.should_flush(11, 0.8));
}

void renumbered_fanout() {
    // a group's fan-out: the same frames into several buffers, each copy
    // numbered by its buffer's own counter (renumber) or kept as it is
    const Layout l = game_layout();
    std::vector<std::uint8_t> src(4096);
    SendBuffer maker(l, src.size());
    maker.attach(src.data());
    maker.set_next_seq(900);
    for (std::size_t i = 0; i < 4; ++i) CHECK(send(maker, 7, bytes(i * 5)) == SendStatus::ok);
    const auto all = decode(maker);
    std::vector<std::int64_t> offsets;
    std::vector<std::uint32_t> sizes;
    std::int64_t off = 0;
    for (const auto& p : all) {
        offsets.push_back(off);
        sizes.push_back(static_cast<std::uint32_t>(l.header_size + p.payload.size()));
        off += sizes.back();
    }
    std::vector<std::uint8_t> mem_a(1000), mem_b(1000), mem_c(40);
    SendBuffer a(l, mem_a.size()), b(l, mem_b.size()), c(l, mem_c.size());
    a.attach(mem_a.data());
    b.attach(mem_b.data());
    c.attach(mem_c.data());
    a.set_next_seq(kU32Max - 1);  // wraps within the fan-out
    b.set_next_seq(10);
    SendBuffer* targets[] = {&a, &b, &c};
    SendStatus status[3];
    fanout_frames(targets, 3, src.data(), offsets.data(), sizes.data(), 4, true, status);
    CHECK(status[0] == SendStatus::ok);
    CHECK(status[1] == SendStatus::ok);
    CHECK(status[2] == SendStatus::never_fits);  // 12 + 17 + 22 + 27 > 40: left as it was
    CHECK_EQ(c.count(), 0u);
    CHECK_EQ(c.next_seq(), 0u);
    const auto got_a = decode(a);
    const auto got_b = decode(b);
    CHECK_EQ(got_a.size(), 4u);
    CHECK_EQ(got_b.size(), 4u);
    const std::uint64_t want_a[] = {kU32Max - 1, kU32Max, 0, 1};
    for (std::size_t i = 0; i < 4 && i < got_a.size() && i < got_b.size(); ++i) {
        CHECK_EQ(got_a[i].seq, want_a[i]);
        CHECK_EQ(got_b[i].seq, 10 + i);
        CHECK(got_a[i].payload == all[i].payload);
        CHECK_EQ(got_b[i].type, 7u);
    }
    CHECK_EQ(a.next_seq(), 2u);
    CHECK_EQ(b.next_seq(), 14u);
    // without renumber the headers travel as they are and the counters stay
    fanout_frames(targets, 2, src.data(), offsets.data(), sizes.data(), 2, false, status);
    CHECK(status[0] == SendStatus::ok && status[1] == SendStatus::ok);
    const auto again = decode(b);
    CHECK_EQ(again.size(), 6u);
    if (again.size() == 6) {
        CHECK_EQ(again[4].seq, 900u);
        CHECK_EQ(again[5].seq, 901u);
    }
    CHECK_EQ(b.next_seq(), 14u);
    // frames not back to back (here in reverse) are copied in the order given
    const std::int64_t rev_offsets[] = {offsets[1], offsets[0]};
    const std::uint32_t rev_sizes[] = {sizes[1], sizes[0]};
    SendBuffer* only_b[] = {&b};
    fanout_frames(only_b, 1, src.data(), rev_offsets, rev_sizes, 2, false, status);
    CHECK(status[0] == SendStatus::ok);
    const auto reversed = decode(b);
    CHECK_EQ(reversed.size(), 8u);
    if (reversed.size() == 8) {
        CHECK(reversed[6].payload == all[1].payload);
        CHECK(reversed[7].payload == all[0].payload);
    }
    // back-to-back frames that cannot fit leave that target as it was
    SendBuffer* only_c[] = {&c};
    fanout_frames(only_c, 1, src.data(), offsets.data(), sizes.data(), 4, false, status);
    CHECK(status[0] == SendStatus::never_fits);
    CHECK_EQ(c.count(), 0u);
    CHECK_EQ(c.size(), 0u);
    // a big-endian layout's narrower seq field wraps at its own width
    const Layout be = big_endian_layout();
    std::vector<std::uint8_t> bsrc(256), bmem(256);
    SendBuffer bmaker(be, bsrc.size()), bsb(be, bmem.size());
    bmaker.attach(bsrc.data());
    bsb.attach(bmem.data());
    CHECK(send(bmaker, 3, bytes(4)) == SendStatus::ok);
    CHECK(send(bmaker, 3, bytes(6)) == SendStatus::ok);
    bsb.set_next_seq(0xFFFF);
    const std::int64_t boff[] = {0, static_cast<std::int64_t>(be.header_size + 4)};
    const std::uint32_t bsize[] = {static_cast<std::uint32_t>(be.header_size + 4),
                                   static_cast<std::uint32_t>(be.header_size + 6)};
    CHECK(bsb.append_frames(bsrc.data(), boff, bsize, 2, true) == SendStatus::ok);
    const auto bgot = decode(bsb);
    CHECK_EQ(bgot.size(), 2u);
    if (bgot.size() == 2) {
        CHECK_EQ(bgot[0].seq, 0xFFFFu);
        CHECK_EQ(bgot[1].seq, 0u);
        CHECK_EQ(bgot[1].payload.size(), 6u);
    }
}

}  // namespace

int main() {
    seq_assignment();
    seq_wrap();
    whole_packets_per_flush();
    capacity();
    encode_errors();
    broadcasts();
    records();
    relay_frames();
    flush_policy();
    renumbered_fanout();
    return fastpacket_test::finish("sendbuf");
}
