// The fuzz input format shared with the atheris targets (fuzz/atheris/_fuzzlib.py):
// a reader that yields zeros and empty spans past the end, and the layout
// descriptor, read into both the oracle's Spec and a fastpacket::Layout
// (built the way the Python binding builds one: fields back to back).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "fastpacket/framing.hpp"  // kMaxPacketSizeLimit
#include "fastpacket/layout.hpp"
#include "oracle.hpp"

/// A mismatch or broken invariant: print it and abort, so libFuzzer keeps
/// the input as a crash (the whole point of the run).
#define FUZZ_CHECK(cond, ...)                                                          \
    do {                                                                               \
        if (!(cond)) {                                                                 \
            std::fprintf(stderr, "%s:%d: mismatch: %s\n  ", __FILE__, __LINE__, #cond); \
            std::fprintf(stderr, __VA_ARGS__);                                         \
            std::fprintf(stderr, "\n");                                                \
            std::abort();                                                              \
        }                                                                              \
    } while (0)

namespace fuzz {

/// Largest max_packet_size tried: the most a decoder takes (sizes are u32;
/// the bindings refuse more, the core takes more as this limit).
constexpr long long kMaxPacketSize = static_cast<long long>(fastpacket::kMaxPacketSizeLimit);

class Reader {
public:
    Reader(const std::uint8_t* data, std::size_t n) : p_(data), n_(n) {}
    std::size_t remaining() const { return n_ - pos_; }
    std::uint64_t uint(unsigned nbytes) {
        std::uint64_t v = 0;
        for (unsigned i = 0; i < nbytes; ++i) v |= std::uint64_t{pos_ < n_ ? p_[pos_++] : std::uint8_t{0}} << (8 * i);
        return v;
    }
    unsigned u8() { return static_cast<unsigned>(uint(1)); }
    unsigned u16() { return static_cast<unsigned>(uint(2)); }
    std::uint32_t u32() { return static_cast<std::uint32_t>(uint(4)); }
    int i16() {
        const unsigned v = u16();
        return v >= 0x8000 ? static_cast<int>(v) - 0x10000 : static_cast<int>(v);
    }
    /// The rest of the input, as a pointer into it.
    const std::uint8_t* rest(std::size_t* n) {
        *n = n_ - pos_;
        const std::uint8_t* r = p_ + pos_;
        pos_ = n_;
        return r;
    }

private:
    const std::uint8_t* p_;
    std::size_t n_;
    std::size_t pos_ = 0;
};

/// Reads a layout descriptor into `spec` and `layout`.
inline void read_layout(Reader& in, oracle::Spec* spec, fastpacket::Layout* layout) {
    static const unsigned kWidths[4] = {1, 2, 4, 8};
    const unsigned head = in.u8();
    const unsigned n = (head & 7) + 1;
    spec->big_endian = (head >> 3) & 1;
    spec->length_includes_header = (head >> 4) & 1;
    spec->length = static_cast<int>((head >> 5) % n);
    int roles[4] = {-1, -1, -1, -1};  // none, type, seq, player_id
    std::size_t offset = 0;
    for (unsigned i = 0; i < n; ++i) {
        const unsigned b = in.u8();
        const unsigned width = kWidths[b & 3];
        const unsigned role = (b >> 2) & 3;
        spec->fields.push_back({offset, width});
        if (static_cast<int>(i) != spec->length && role != 0 && roles[role] < 0) roles[role] = static_cast<int>(i);
        offset += width;
    }
    spec->header_size = offset;
    spec->adjustment = in.i16();
    spec->type = roles[1];

    *layout = fastpacket::Layout{};
    layout->nfields = static_cast<std::uint16_t>(n);
    for (unsigned i = 0; i < n; ++i) {
        layout->fields[i].offset = static_cast<std::uint16_t>(spec->fields[i].offset);
        layout->fields[i].width = static_cast<std::uint8_t>(spec->fields[i].width);
    }
    layout->header_size = static_cast<std::uint16_t>(offset);
    layout->big_endian = spec->big_endian;
    layout->length_index = spec->length;
    layout->length_includes_header = spec->length_includes_header;
    layout->length_adjustment = spec->adjustment;
    layout->type_index = roles[1];
    layout->seq_index = roles[2];
    layout->player_id_index = roles[3];
    FUZZ_CHECK(layout->valid(), "a descriptor made an invalid Layout");
}

/// An exactly-sized heap copy, so AddressSanitizer sees a read one past the end.
struct Exact {
    explicit Exact(const std::uint8_t* src, std::size_t n) : size(n), data(static_cast<std::uint8_t*>(std::malloc(n ? n : 1))) {
        if (n) std::memcpy(data, src, n);
    }
    explicit Exact(std::size_t n) : size(n), data(static_cast<std::uint8_t*>(std::malloc(n ? n : 1))) {}
    ~Exact() { std::free(data); }
    Exact(const Exact&) = delete;
    Exact& operator=(const Exact&) = delete;
    std::size_t size;
    std::uint8_t* data;
};

inline long long to_ll(oracle::Wide v) {
    return v > static_cast<oracle::Wide>(INT64_MAX) ? INT64_MAX : v < static_cast<oracle::Wide>(INT64_MIN) ? INT64_MIN : static_cast<long long>(v);
}

}  // namespace fuzz
