// C++ tests of csrc/fastpacket/framing.hpp, without Python: a C++ server
// can frame a stream with the core alone. Random streams in random chunks
// are checked against a direct encoding; random garbage must give frames or
// an error, never an out-of-bounds access (run under ASan+UBSan, see
// CMakeLists.txt).
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "fastpacket/framing.hpp"

using namespace fastpacket;

static int failures = 0;
#define CHECK(cond)                                                        \
    do {                                                                   \
        if (!(cond)) {                                                     \
            std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", __FILE__,    \
                         __LINE__, #cond);                                 \
            ++failures;                                                    \
        }                                                                  \
    } while (0)

struct Decoded {
    std::vector<std::uint64_t> types;
    std::vector<std::vector<std::uint8_t>> payloads;
    bool error = false;
    ErrorInfo info;
};

// Feeds `chunks` the way the Python binding does: plan, allocate exactly,
// emit; with `indexed`, plan_indexed() into columns of index_capacity()
// (then emit does no index pass). Each emit gets fresh buffers so ASan sees
// any overrun.
static Decoded feed_all(FrameDecoder& dec, const std::vector<std::vector<std::uint8_t>>& chunks,
                        bool indexed = false) {
    Decoded d;
    const Layout& l = dec.layout();
    for (const auto& c : chunks) {
        const std::size_t cap = indexed ? dec.index_capacity(c.size()) : 0;
        std::vector<std::uint8_t> block(index_bytes(cap, l.header_size));
        IndexColumns cols = index_view(block.data(), cap, l.header_size);
        auto plan = indexed ? dec.plan_indexed(c.data(), c.size(), cols) : dec.plan(c.data(), c.size());
        if (plan.error.kind == FrameError::failed) { d.error = true; break; }
        CHECK(plan.indexed == indexed);
        CHECK(plan.count <= cap || !indexed);
        std::vector<std::uint8_t> out(plan.data_bytes);
        if (!indexed) {
            block.assign(index_bytes(plan.count, l.header_size), 0);
            cols = index_view(block.data(), plan.count, l.header_size);
        }
        dec.emit(c.data(), c.size(), plan, out.data(), cols);
        for (std::size_t i = 0; i < plan.count; ++i) {
            const std::uint8_t* h = cols.headers + i * l.header_size;
            d.types.push_back(l.type_index >= 0 ? l.read(h, l.type_index) : 0);
            const auto off = static_cast<std::size_t>(cols.offsets[i]);
            d.payloads.emplace_back(out.begin() + off + l.header_size, out.begin() + off + cols.sizes[i]);
            CHECK(off + cols.sizes[i] <= out.size());
        }
        if (plan.error.kind != FrameError::none) { d.error = true; d.info = plan.error; break; }
    }
    return d;
}

static std::vector<std::vector<std::uint8_t>> random_chunks(const std::vector<std::uint8_t>& s, std::mt19937& rng,
                                                            std::size_t max_chunk) {
    std::vector<std::vector<std::uint8_t>> out;
    std::size_t pos = 0;
    while (pos < s.size()) {
        std::size_t k = 1 + rng() % max_chunk;
        if (k > s.size() - pos) k = s.size() - pos;
        out.emplace_back(s.begin() + pos, s.begin() + pos + k);
        pos += k;
    }
    return out;
}

static Layout big_u32_layout() {
    Layout l;
    l.nfields = 2;
    l.header_size = 6;
    l.big_endian = true;
    l.fields[0] = {0, 4};
    l.fields[1] = {4, 2};
    l.length_index = 0;
    l.length_includes_header = false;
    l.type_index = 1;
    return l;
}

static Layout tiny_u8_layout() {
    Layout l;
    l.nfields = 2;
    l.header_size = 2;
    l.fields[0] = {0, 1};
    l.fields[1] = {1, 1};
    l.type_index = 0;
    l.length_index = 1;
    l.length_includes_header = false;
    return l;
}

static void round_trip(const Layout& l, std::size_t max_payload, unsigned seed) {
    CHECK(l.valid());
    std::mt19937 rng(seed);
    std::vector<std::uint8_t> stream;
    std::vector<std::uint64_t> types;
    std::vector<std::vector<std::uint8_t>> payloads;
    std::uint8_t header[kMaxHeaderBytes];
    for (int i = 0; i < 2000; ++i) {
        std::vector<std::uint8_t> p(rng() % (max_payload + 1));
        for (auto& b : p) b = static_cast<std::uint8_t>(rng());
        HeaderValues v;
        v.type = rng() % 200;
        v.seq = static_cast<std::uint64_t>(i);
        CHECK(encode_header(l, header, v, p.size()) == EncodeError::none);
        stream.insert(stream.end(), header, header + l.header_size);
        stream.insert(stream.end(), p.begin(), p.end());
        types.push_back(v.type);
        payloads.push_back(p);
    }
    for (std::size_t max_chunk : {std::size_t{1}, std::size_t{7}, std::size_t{300}, std::size_t{5000}, stream.size()}) {
        for (bool indexed : {false, true}) {
            FrameDecoder dec(l, 1 << 20);
            Decoded d = feed_all(dec, random_chunks(stream, rng, max_chunk), indexed);
            CHECK(!d.error);
            CHECK(d.types == types);
            CHECK(d.payloads == payloads);
            CHECK(dec.pending() == 0);
            CHECK(dec.stream_offset() == stream.size());
        }
    }
}

static void errors() {
    const Layout l = game_layout();
    std::uint8_t good[20] = {};
    HeaderValues v;
    v.type = 1;
    CHECK(encode_header(l, good, v, 8) == EncodeError::none);
    std::vector<std::uint8_t> s(good, good + 20);
    std::uint8_t bad[12] = {5, 0};  // size 5 < 12
    s.insert(s.end(), bad, bad + 12);
    FrameDecoder dec(l, 65535), twin(l, 65535);
    Decoded d = feed_all(dec, {s});
    CHECK(d.error && d.types.size() == 1);
    Decoded t = feed_all(twin, {s}, true);
    CHECK(t.error && t.types.size() == 1 && t.info.stream_offset == 20);
    CHECK(d.info.kind == FrameError::too_small && d.info.stream_offset == 20 && d.info.frame_size == 5);
    CHECK(dec.failed());
    auto p = dec.plan(good, 20);
    CHECK(p.error.kind == FrameError::failed);
    dec.reset();
    CHECK(!dec.failed());

    FrameDecoder small(l, 100);
    std::uint8_t big[12] = {101, 0};
    Decoded e = feed_all(small, {std::vector<std::uint8_t>(big, big + 12)});
    CHECK(e.error && e.info.kind == FrameError::too_large && e.info.frame_size == 101);
    CHECK(encode_header(l, good, v, 65535) == EncodeError::too_large);
    v.type = 70000;
    CHECK(encode_header(l, good, v, 0) == EncodeError::type_range);
}

// max_packet_size is at most kMaxPacketSizeLimit (sizes are u32), so a u64
// length that saturates (2^62 and up), whatever its adjustment, is too large.
static void huge_lengths() {
    CHECK(frame_size_ok(12, 12, 12) && !frame_size_ok(11, 12, 100) && !frame_size_ok(101, 12, 100));
    for (std::int64_t adjustment : {-(std::int64_t{1} << 32), std::int64_t{0}, std::int64_t{1} << 32}) {
        Layout l;
        l.nfields = 2;
        l.header_size = 10;
        l.fields[0] = {0, 8};
        l.fields[1] = {8, 2};
        l.length_index = 0;
        l.type_index = 1;
        l.length_adjustment = adjustment;
        CHECK(l.valid());
        FrameDecoder dec(l, ~std::size_t{0});  // taken as kMaxPacketSizeLimit
        CHECK(dec.max_packet_size() == static_cast<std::int64_t>(kMaxPacketSizeLimit));
        for (std::uint64_t announced : {std::uint64_t{1} << 34, (std::uint64_t{1} << 62) - 1, std::uint64_t{1} << 62,
                                        std::uint64_t{1} << 63, ~std::uint64_t{0}}) {
            std::vector<std::uint8_t> s(10 + 100, 'x');
            store_unsigned(s.data(), 8, false, announced);
            Decoded d = feed_all(dec, {s});
            CHECK(d.error && d.info.kind == FrameError::too_large);
            CHECK(dec.pending() == 0);  // refused at the header: nothing buffered
            dec.reset();
        }
    }
}

// A decoder whose caller unwraps aggregates scans aggregate frames up to
// their own limit, and still refuses a plain packet over max_packet_size at
// its header, whole or split.
static void aggregate_allowance() {
    const Layout l = game_layout();
    std::vector<std::uint8_t> agg(3000, 0), plain(3000, 0);
    HeaderValues v;
    v.type = kAggregateType;
    CHECK(encode_header(l, agg.data(), v, agg.size() - 12) == EncodeError::none);
    v.type = 1;
    CHECK(encode_header(l, plain.data(), v, plain.size() - 12) == EncodeError::none);
    for (bool indexed : {false, true}) {  // the two-pass scan and the one-pass scan + index
        FrameDecoder dec(l, 1024, 4096);
        CHECK(dec.max_packet_size() == 1024 && dec.frame_limit() == 4096);
        Decoded d = feed_all(dec, {agg}, indexed);
        CHECK(!d.error && d.types.size() == 1 && d.types[0] == kAggregateType);
        for (std::size_t cut : {std::size_t{3000}, std::size_t{12}, std::size_t{5}}) {
            FrameDecoder p(l, 1024, 4096);
            std::vector<std::vector<std::uint8_t>> chunks;
            chunks.emplace_back(plain.begin(), plain.begin() + static_cast<std::ptrdiff_t>(cut));
            if (cut < 12) chunks.emplace_back(plain.begin() + static_cast<std::ptrdiff_t>(cut), plain.begin() + 12);
            Decoded e = feed_all(p, chunks, indexed);
            CHECK(e.error && e.info.kind == FrameError::too_large && e.info.frame_size == 3000);
            CHECK(p.pending() <= 12);  // the header at most, never its payload
        }
        // an aggregate, then a plain packet over max_packet_size in the same feed
        std::vector<std::uint8_t> both(agg);
        both.insert(both.end(), plain.begin(), plain.begin() + 12);
        FrameDecoder r(l, 1024, 4096);
        Decoded g = feed_all(r, {both}, indexed);
        CHECK(g.error && g.types.size() == 1 && g.info.frame_size == 3000 && g.info.stream_offset == 3000);
        std::vector<std::uint8_t> huge(12, 0);
        HeaderValues h;
        h.type = kAggregateType;
        CHECK(encode_header(l, huge.data(), h, 5000 - 12) == EncodeError::none);
        FrameDecoder q(l, 1024, 4096);
        Decoded f = feed_all(q, {huge}, indexed);
        CHECK(f.error && f.info.kind == FrameError::too_large && f.info.frame_size == 5000);  // over frame_limit
    }
}

static void garbage(const Layout& l, unsigned seed) {
    std::mt19937 rng(seed);
    for (int round = 0; round < 300; ++round) {
        std::vector<std::uint8_t> s(rng() % 4000);
        for (auto& b : s) b = static_cast<std::uint8_t>(rng());
        const std::size_t max = 1 + l.header_size + rng() % 3000;
        const auto chunks = random_chunks(s, rng, 1 + rng() % 600);
        FrameDecoder dec(l, max), twin(l, max);
        Decoded d = feed_all(dec, chunks);
        Decoded e = feed_all(twin, chunks, true);  // plan_indexed: the same frames, the same error
        CHECK(dec.pending() <= static_cast<std::size_t>(dec.max_packet_size()));
        CHECK(d.types == e.types && d.payloads == e.payloads && d.error == e.error);
        CHECK(d.info.kind == e.info.kind && d.info.stream_offset == e.info.stream_offset);
    }
}

static void group() {
    const std::uint64_t keys[] = {5, 3, 5, 9, 3, 5};
    std::uint32_t order[6], starts[7];
    const std::size_t g = group_by_key(keys, 6, order, starts);
    CHECK(g == 3);
    const std::uint32_t want_order[] = {0, 2, 5, 1, 4, 3};
    for (int i = 0; i < 6; ++i) CHECK(order[i] == want_order[i]);
    CHECK(starts[0] == 0 && starts[1] == 3 && starts[2] == 5 && starts[3] == 6);
}

// Payload records: frames built from rows (encode_records) equal frames
// encoded one by one; their records read back (gather_payload_records)
// equal the rows; short payloads are found and masked; uniform strides seen.
static void records(const Layout& l, unsigned seed) {
    std::mt19937 rng(seed);
    for (int round = 0; round < 200; ++round) {
        const std::size_t count = rng() % 40;
        const std::size_t row = rng() % 70;  // past the inline-copy size too
        const std::ptrdiff_t stride = static_cast<std::ptrdiff_t>(row + rng() % 3);
        std::vector<std::uint8_t> rows(count * static_cast<std::size_t>(stride) + 1);
        for (auto& b : rows) b = static_cast<std::uint8_t>(rng());
        std::vector<std::uint64_t> types(count), seqs(count), ids(count);
        for (std::size_t i = 0; i < count; ++i) {
            types[i] = rng() % (l.field_max(l.type_index) + 1);
            seqs[i] = l.seq_index >= 0 ? rng() % (l.field_max(l.seq_index) + 1) : 0;
            ids[i] = l.player_id_index >= 0 ? rng() % (l.field_max(l.player_id_index) + 1) : 0;
        }
        const std::uint64_t one_type = types.empty() ? 0 : types[0];
        const bool scalar_type = rng() % 2 == 0;
        ValueColumn tc{scalar_type ? &one_type : types.data(), scalar_type ? 0u : 1u};
        const std::size_t frame = l.header_size + row;
        std::vector<std::uint8_t> out(count * frame + 1, 0xEE);
        const RecordsFault f = encode_records(l, rows.data(), count, row, stride, tc, ValueColumn{seqs.data(), 1},
                                              ValueColumn{ids.data(), 1}, out.data());
        CHECK(f.error == EncodeError::none);
        CHECK(out[count * frame] == 0xEE);  // nothing past the frames
        std::vector<std::uint8_t> want(frame);
        for (std::size_t i = 0; i < count; ++i) {
            HeaderValues v;
            v.type = scalar_type ? one_type : types[i];
            v.seq = seqs[i];
            v.player_id = ids[i];
            CHECK(encode_header(l, want.data(), v, row) == EncodeError::none);
            std::memcpy(want.data() + l.header_size, rows.data() + i * static_cast<std::size_t>(stride), row);
            CHECK(std::memcmp(out.data() + i * frame, want.data(), frame) == 0);
        }
        // the frames index back to `count` frames of one size, back to back
        const ScanResult r = scan_frames(l, out.data(), count * frame, 1 << 30);
        CHECK(!r.error && r.count == count);
        std::vector<std::uint8_t> block(index_bytes(count, l.header_size) + 1);
        const IndexColumns cols = index_view(block.data(), count, l.header_size);
        index_frames(l, out.data(), count, 0, cols);
        CHECK(uniform_frame_stride(cols.offsets, cols.sizes, count) == (count ? frame : 0));
        CHECK(first_short_payload(cols.sizes, count, l.header_size, row) == count);
        std::vector<std::uint8_t> back(count * row + 1, 0xEE);
        gather_payload_records(out.data(), cols.offsets, cols.sizes, count, l.header_size, row, back.data(), nullptr);
        for (std::size_t i = 0; i < count; ++i) {
            CHECK(std::memcmp(back.data() + i * row, rows.data() + i * static_cast<std::size_t>(stride), row) == 0);
        }
        CHECK(back[count * row] == 0xEE);
        if (count >= 2 && row >= 1) {
            // a record one byte longer than every payload: all short, masked to zeros
            std::vector<std::uint8_t> mask(count, 7), wide(count * (row + 1), 0xEE);
            CHECK(first_short_payload(cols.sizes, count, l.header_size, row + 1) == 0);
            gather_payload_records(out.data(), cols.offsets, cols.sizes, count, l.header_size, row + 1, wide.data(),
                                   mask.data());
            for (std::size_t i = 0; i < count; ++i) CHECK(mask[i] == 0);
            for (std::uint8_t b : wide) CHECK(b == 0);
            // a gap between two frames: no longer a uniform stride
            cols.offsets[1] += 1;
            CHECK(uniform_frame_stride(cols.offsets, cols.sizes, count) == 0);
        }
    }
    // out-of-range values: the first offending index, nothing written
    const std::uint8_t rows2[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    std::vector<std::uint8_t> out(64, 0xEE);
    const std::uint64_t big_type[2] = {1, l.field_max(l.type_index) + 1};
    if (l.field_max(l.type_index) < ~std::uint64_t{0}) {
        const RecordsFault f = encode_records(l, rows2, 2, 4, 4, ValueColumn{big_type, 1}, ValueColumn{},
                                              ValueColumn{}, out.data());
        CHECK(f.error == EncodeError::type_range && f.index == 1 && f.value == big_type[1]);
        for (std::uint8_t b : out) CHECK(b == 0xEE);
    }
    const std::uint64_t t = 1;
    const RecordsFault big = encode_records(l, rows2, 1, static_cast<std::size_t>(l.field_max(l.length_index)) + 1,
                                            0, ValueColumn{&t, 0}, ValueColumn{}, ValueColumn{}, out.data());
    CHECK(big.error == EncodeError::too_large || l.field_max(l.length_index) >= (1u << 30));
}

int main() {
    round_trip(game_layout(), 200, 1);
    round_trip(big_u32_layout(), 700, 2);
    round_trip(tiny_u8_layout(), 255, 3);
    errors();
    huge_lengths();
    aggregate_allowance();
    garbage(game_layout(), 4);
    garbage(big_u32_layout(), 5);
    garbage(tiny_u8_layout(), 6);
    group();
    records(game_layout(), 7);
    records(big_u32_layout(), 8);
    records(tiny_u8_layout(), 9);
    if (failures) {
        std::fprintf(stderr, "%d check(s) failed\n", failures);
        return 1;
    }
    std::puts("framing: all checks passed");
    return 0;
}
