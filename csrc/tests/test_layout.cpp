// C++ tests of csrc/fastpacket/layout.hpp and encode_header(): the rules of
// docs/wire-format.md for headers. Field byte order, the frame size a length
// field announces (length_includes_header, length_adjustment, Netty's
// LengthFieldBasedFrameDecoder examples mapped onto layouts), saturation of
// absurd u64 lengths, range checks when encoding, and layout validation.
#include <cstdint>
#include <cstring>
#include <vector>

#include "check.hpp"
#include "fastpacket/framing.hpp"
#include "fastpacket/layout.hpp"

using namespace fastpacket;

namespace {

Layout one_field(unsigned width, bool big_endian, bool includes_header, std::int64_t adjustment) {
    Layout l;
    l.nfields = 1;
    l.header_size = static_cast<std::uint16_t>(width);
    l.fields[0] = {0, static_cast<std::uint8_t>(width)};
    l.big_endian = big_endian;
    l.length_index = 0;
    l.length_includes_header = includes_header;
    l.length_adjustment = adjustment;
    return l;
}

void byte_order() {
    std::uint8_t b[8] = {0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08};
    CHECK_EQ(load_unsigned(b, 1, false), 0x01u);
    CHECK_EQ(load_unsigned(b, 2, false), 0x0201u);
    CHECK_EQ(load_unsigned(b, 2, true), 0x0102u);
    CHECK_EQ(load_unsigned(b, 4, false), 0x04030201u);
    CHECK_EQ(load_unsigned(b, 4, true), 0x01020304u);
    CHECK_EQ(load_unsigned(b, 8, false), 0x0807060504030201ull);
    CHECK_EQ(load_unsigned(b, 8, true), 0x0102030405060708ull);
    for (unsigned w : {1u, 2u, 4u, 8u}) {
        for (bool be : {false, true}) {
            std::uint8_t out[8] = {};
            const std::uint64_t v = 0xF1E2D3C4B5A69788ull & max_for_width(w);
            store_unsigned(out, w, be, v);
            CHECK_EQ(load_unsigned(out, w, be), v);
            CHECK_EQ(out[be ? w - 1 : 0], 0x88u);  // the low byte: last in big-endian, first in little
        }
    }
    CHECK_EQ(max_for_width(1), 0xFFu);
    CHECK_EQ(max_for_width(2), 0xFFFFu);
    CHECK_EQ(max_for_width(4), 0xFFFFFFFFu);
    CHECK_EQ(max_for_width(8), ~std::uint64_t{0});
}

void game() {
    // GAME "<HHII": size (whole packet), type, seq, player_id
    const Layout g = game_layout();
    CHECK(g.valid());
    CHECK_EQ(g.header_size, 12u);
    CHECK(!g.big_endian);
    CHECK(g.length_includes_header);
    CHECK_EQ(g.frame_bias(), 0);
    std::uint8_t h[12];
    HeaderValues v;
    v.type = 0x0102;
    v.seq = 0x03040506;
    v.player_id = 0x0708090A;
    CHECK(encode_header(g, h, v, 5) == EncodeError::none);
    const std::uint8_t want[12] = {17, 0, 0x02, 0x01, 0x06, 0x05, 0x04, 0x03, 0x0A, 0x09, 0x08, 0x07};
    CHECK(std::memcmp(h, want, 12) == 0);
    CHECK_EQ(g.frame_size(h), 17);
    // the largest GAME packet is 65535 bytes: 65523 of payload
    CHECK(encode_header(g, h, v, 65523) == EncodeError::none);
    CHECK_EQ(g.frame_size(h), 65535);
    CHECK(encode_header(g, h, v, 65524) == EncodeError::too_large);
}

void length_semantics() {
    // frame size = length value + (length_includes_header ? 0 : header size) + length_adjustment
    std::uint8_t h[4] = {0, 0, 0, 10};  // big-endian u32: 10
    CHECK_EQ(one_field(4, true, true, 0).frame_size(h), 10);
    CHECK_EQ(one_field(4, true, false, 0).frame_size(h), 14);
    CHECK_EQ(one_field(4, true, false, 3).frame_size(h), 17);
    CHECK_EQ(one_field(4, true, true, -6).frame_size(h), 4);
    CHECK_EQ(one_field(4, true, true, -7).frame_size(h), 3);  // below the header: the decoder's too_small
    std::uint64_t value = 0;
    const Layout payload_only = one_field(4, true, false, 3);
    CHECK(payload_only.length_value_for(17, &value));
    CHECK_EQ(value, 10u);
    CHECK(payload_only.length_value_for(7, &value));  // an empty payload: header + adjustment
    CHECK_EQ(value, 0u);
    CHECK(!payload_only.length_value_for(6, &value));  // would need a negative length
    const Layout u8 = one_field(1, false, true, 0);
    CHECK(u8.length_value_for(255, &value));
    CHECK(!u8.length_value_for(256, &value));  // does not fit the field

    // u64 lengths: values from 2^62 up saturate at 2^62 so the bias cannot overflow
    std::uint8_t huge[8];
    store_unsigned(huge, 8, false, ~std::uint64_t{0});
    const Layout l64 = one_field(8, false, false, 1 << 20);
    CHECK_EQ(l64.frame_size(huge), std::int64_t{1} << 62);
    store_unsigned(huge, 8, false, (std::uint64_t{1} << 62) - 1);
    CHECK_EQ(l64.frame_size(huge), (std::int64_t{1} << 62) - 1 + 8 + (1 << 20));
    // the scan applies the same rule: a saturated length is simply too large
    store_unsigned(huge, 8, false, ~std::uint64_t{0});
    const ScanResult r = scan_frames(l64, huge, 8, std::int64_t{1} << 40);
    CHECK(r.error);
    CHECK_EQ(r.count, 0u);
}

// Netty's LengthFieldBasedFrameDecoder announces
//   frame = lengthFieldOffset + lengthFieldLength + lengthAdjustment + value;
// a layout with the length field at the same offset gives the same frame
// with length_includes_header=true and
//   length_adjustment = lengthFieldOffset + lengthFieldLength + lengthAdjustment
// (or length_includes_header=false and that minus the header size). These are
// the examples of Netty's documentation whose fields fastpacket can describe
// (Netty's 3-byte length fields have no counterpart: widths are 1, 2, 4, 8).
void netty_examples() {
    const char hello[] = "HELLO, WORLD";  // 12 bytes of content
    std::vector<std::uint8_t> frame;
    // 1: u16 length at 0 counting the content only (Netty: offset 0, length 2, adjustment 0)
    frame = {0x00, 0x0C};
    frame.insert(frame.end(), hello, hello + 12);
    const Layout content_only = one_field(2, true, false, 0);
    CHECK_EQ(content_only.frame_size(frame.data()), 14);
    CHECK_EQ(one_field(2, true, true, 0 + 2 + 0).frame_size(frame.data()), 14);  // the other spelling
    ScanResult r = scan_frames(content_only, frame.data(), frame.size(), 65535);
    CHECK(!r.error && r.count == 1 && r.end == 14);
    // 2: u16 length at 0 counting the whole frame (Netty: adjustment -2)
    frame[1] = 0x0E;
    const Layout whole = one_field(2, true, true, 0);
    CHECK_EQ(whole.frame_size(frame.data()), 14);
    CHECK_EQ(one_field(2, true, true, 0 + 2 - 2).frame_size(frame.data()), 14);
    r = scan_frames(whole, frame.data(), frame.size(), 65535);
    CHECK(!r.error && r.count == 1 && r.end == 14);
    // 3: a 2-byte header field, then a u16 length of the content (Netty: offset 2, length 2, adjustment 0)
    Layout prefixed;
    prefixed.nfields = 2;
    prefixed.header_size = 4;
    prefixed.big_endian = true;
    prefixed.fields[0] = {0, 2};
    prefixed.fields[1] = {2, 2};
    prefixed.type_index = 0;
    prefixed.length_index = 1;
    prefixed.length_includes_header = false;
    CHECK(prefixed.valid());
    frame = {0xCA, 0xFE, 0x00, 0x0C};
    frame.insert(frame.end(), hello, hello + 12);
    CHECK_EQ(prefixed.frame_size(frame.data()), 16);
    Layout netty_style = prefixed;
    netty_style.length_includes_header = true;
    netty_style.length_adjustment = 2 + 2 + 0;
    CHECK_EQ(netty_style.frame_size(frame.data()), 16);
    // 4: a u16 length of the content, then 2 more header bytes it does not
    // count (Netty: offset 0, length 2, adjustment 2)
    Layout suffixed = prefixed;
    suffixed.fields[0] = {0, 2};
    suffixed.fields[1] = {2, 2};
    suffixed.length_index = 0;
    suffixed.type_index = 1;
    suffixed.length_includes_header = true;
    suffixed.length_adjustment = 0 + 2 + 2;
    frame = {0x00, 0x0C, 0xCA, 0xFE};
    frame.insert(frame.end(), hello, hello + 12);
    CHECK_EQ(suffixed.frame_size(frame.data()), 16);
    Layout suffixed_excl = suffixed;
    suffixed_excl.length_includes_header = false;
    suffixed_excl.length_adjustment = 0 + 2 + 2 - 4;
    CHECK_EQ(suffixed_excl.frame_size(frame.data()), 16);
}

void encode_ranges() {
    Layout l;
    l.nfields = 4;
    l.header_size = 8;
    l.fields[0] = {0, 1};  // type u8
    l.fields[1] = {1, 1};  // length u8, payload only
    l.fields[2] = {2, 2};  // seq u16
    l.fields[3] = {4, 4};  // player_id u32
    l.type_index = 0;
    l.length_index = 1;
    l.seq_index = 2;
    l.player_id_index = 3;
    l.length_includes_header = false;
    CHECK(l.valid());
    std::uint8_t h[8];
    HeaderValues v;
    v.type = 255;
    v.seq = 65535;
    v.player_id = 0xFFFFFFFF;
    CHECK(encode_header(l, h, v, 255) == EncodeError::none);
    CHECK_EQ(l.read(h, 1), 255u);
    CHECK(encode_header(l, h, v, 256) == EncodeError::too_large);
    v.type = 256;
    CHECK(encode_header(l, h, v, 0) == EncodeError::type_range);
    v.type = 1;
    v.seq = 65536;
    CHECK(encode_header(l, h, v, 0) == EncodeError::seq_range);
    v.seq = 1;
    v.player_id = 0x100000000ull;
    CHECK(encode_header(l, h, v, 0) == EncodeError::player_id_range);
    // a field with no role is written as zero
    Layout padded = game_layout();
    padded.player_id_index = -1;
    std::uint8_t g[12];
    std::memset(g, 0xAB, sizeof g);
    v = HeaderValues{};
    v.type = 3;
    v.player_id = 99;  // ignored: the layout gives the field no role
    CHECK(encode_header(padded, g, v, 0) == EncodeError::none);
    CHECK_EQ(padded.read(g, 3), 0u);
}

void validation() {
    CHECK(game_layout().valid());
    Layout l = game_layout();
    l.nfields = 0;
    CHECK(!l.valid());
    l = game_layout();
    l.header_size = 0;
    CHECK(!l.valid());
    l = game_layout();
    l.header_size = kMaxHeaderBytes + 1;
    CHECK(!l.valid());
    l = game_layout();
    l.fields[1].width = 3;
    CHECK(!l.valid());
    l = game_layout();
    l.fields[3].offset = 9;  // u32 at 9 runs past a 12-byte header
    CHECK(!l.valid());
    l = game_layout();
    l.length_index = -1;
    CHECK(!l.valid());
    l = game_layout();
    l.type_index = 4;
    CHECK(!l.valid());
    l = game_layout();
    l.seq_index = -2;
    CHECK(!l.valid());
    // one field in two roles: encoding would write one role over the other
    l = game_layout();
    l.seq_index = l.type_index;
    CHECK(!l.valid());
    l = game_layout();
    l.player_id_index = l.length_index;
    CHECK(!l.valid());
    l = game_layout();
    l.seq_index = -1;
    l.player_id_index = -1;  // roles a layout does not have may all be -1
    CHECK(l.valid());
    // the largest header: 8 u64 fields
    Layout big;
    big.nfields = 8;
    big.header_size = kMaxHeaderBytes;
    for (std::uint16_t i = 0; i < 8; ++i) big.fields[i] = {static_cast<std::uint16_t>(8 * i), 8};
    big.length_index = 7;
    CHECK(big.valid());
}

}  // namespace

int main() {
    byte_order();
    game();
    length_semantics();
    netty_examples();
    encode_ranges();
    validation();
    return fastpacket_test::finish("layout");
}
