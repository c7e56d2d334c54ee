// libFuzzer target: the C++ stream framing (csrc/fastpacket/framing.hpp) of
// fuzzed layouts over fuzzed streams in fuzzed chunks, against the plain
// whole-buffer decoder of oracle.hpp: scan_frames/index_frames over the
// whole stream, then FrameDecoder::plan/emit chunk by chunk (copying, or
// zero-copy where the plan allows it), every buffer exactly sized so that
// AddressSanitizer sees a read or write one past its end.
//
// Input: a layout descriptor (fuzz_input.hpp), a config byte (bits 0-1: how
// max_packet_size is chosen; bit 2: zero-copy emits), the max_packet_size
// argument when asked, a cut count (u8) and u16 cut positions, the stream.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "fastpacket/framing.hpp"
#include "fuzz_input.hpp"

namespace {

constexpr unsigned kMaxCuts = 32;
/// Length values at or past this are reported as this size (layout.hpp).
constexpr std::uint64_t kSaturation = std::uint64_t{1} << 62;

long long choose_max(fuzz::Reader& in, const oracle::Spec& s, unsigned mode) {
    const auto hs = static_cast<long long>(s.header_size);
    if (mode == 0) {  // what the length field can announce, at most kMaxPacketSize
        const unsigned w = s.fields[static_cast<std::size_t>(s.length)].width;
        const oracle::Wide field_max = (oracle::Wide{1} << (8 * w)) - 1;
        const oracle::Wide frame = field_max + s.adjustment + (s.length_includes_header ? 0 : hs);
        return std::max(hs, fuzz::to_ll(std::min<oracle::Wide>(frame, fuzz::kMaxPacketSize)));
    }
    if (mode == 1) return hs + in.u16();
    if (mode == 2) return hs + in.u8();
    return std::max(hs, static_cast<long long>(in.u32()));  // the binding refuses less than a header
}

std::size_t frames_ending_by(const std::vector<oracle::Frame>& frames, std::size_t fed) {
    std::size_t k = 0;
    while (k < frames.size() && frames[k].offset + frames[k].size <= fed) ++k;
    return k;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    using namespace fastpacket;
    fuzz::Reader in(data, size);
    oracle::Spec spec;
    Layout layout;
    fuzz::read_layout(in, &spec, &layout);
    const unsigned cfg = in.u8();
    const long long max = choose_max(in, spec, cfg & 3);
    const bool zero_copy = (cfg >> 2) & 1;
    std::vector<std::size_t> cuts(in.u8() % (kMaxCuts + 1));
    for (auto& c : cuts) c = in.u16();
    std::size_t n = 0;
    const std::uint8_t* stream = in.rest(&n);
    const std::size_t hs = spec.header_size;
    const oracle::Stream want = oracle::decode(spec, stream, n, max);

    // The whole stream at once: scan, then index.
    {
        fuzz::Exact whole(stream, n);
        const ScanResult r = scan_frames(layout, whole.data, n, max);
        const std::size_t end = want.frames.empty() ? 0 : want.frames.back().offset + want.frames.back().size;
        FUZZ_CHECK(r.count == want.frames.size() && r.end == end && r.error == want.bad,
                   "scan: count %zu end %zu error %d; oracle %zu %zu %d", r.count, r.end, r.error,
                   want.frames.size(), end, want.bad);
        fuzz::Exact block(index_bytes(r.count, hs));
        const IndexColumns cols = index_view(block.data, r.count, hs);
        index_frames(layout, whole.data, r.count, 5, cols);
        for (std::size_t i = 0; i < r.count; ++i) {
            const oracle::Frame& f = want.frames[i];
            FUZZ_CHECK(cols.offsets[i] == static_cast<std::int64_t>(f.offset) + 5 && cols.sizes[i] == f.size &&
                           std::memcmp(cols.headers + i * hs, stream + f.offset, hs) == 0,
                       "index row %zu", i);
        }
    }

    // The same stream in chunks, through the incremental decoder.
    std::vector<std::size_t> points;
    for (std::size_t c : cuts) {
        c %= n + 1;
        if (c > 0 && c < n) points.push_back(c);
    }
    std::sort(points.begin(), points.end());
    points.erase(std::unique(points.begin(), points.end()), points.end());
    points.push_back(n);
    FrameDecoder dec(layout, static_cast<std::size_t>(max));
    std::size_t fed = 0, got = 0, start = 0;
    bool raised = false;
    for (std::size_t stop : points) {
        fuzz::Exact chunk(stream + start, stop - start);
        start = stop;
        const FrameDecoder::FeedPlan plan = dec.plan(chunk.data, chunk.size);
        FUZZ_CHECK(plan.error.kind != FrameError::failed, "failed before any error");
        fuzz::Exact out(plan.data_bytes);
        fuzz::Exact block(index_bytes(plan.count, hs));
        const IndexColumns cols = index_view(block.data, plan.count, hs);
        const bool in_place = zero_copy && FrameDecoder::zero_copy(plan);
        dec.emit(chunk.data, chunk.size, plan, in_place ? nullptr : out.data, cols);
        const std::size_t before = fed;
        fed += chunk.size;
        const std::uint8_t* base = in_place ? chunk.data : out.data;
        const std::size_t base_size = in_place ? chunk.size : out.size;
        FUZZ_CHECK(got + plan.count <= want.frames.size(), "more frames than the oracle: %zu + %zu > %zu", got,
                   plan.count, want.frames.size());
        for (std::size_t i = 0; i < plan.count; ++i) {
            const oracle::Frame& f = want.frames[got + i];
            const auto off = static_cast<std::size_t>(cols.offsets[i]);
            FUZZ_CHECK(cols.sizes[i] == f.size && off + f.size <= base_size &&
                           std::memcmp(base + off, stream + f.offset, f.size) == 0 &&
                           std::memcmp(cols.headers + i * hs, stream + f.offset, hs) == 0,
                       "frame %zu differs (size %u, oracle %zu)", got + i, cols.sizes[i], f.size);
        }
        got += plan.count;
        if (plan.error.kind != FrameError::none) {
            const std::uint64_t raw = oracle::read_field(spec, stream + want.bad_offset, spec.length);
            const std::int64_t reported = raw >= kSaturation ? static_cast<std::int64_t>(kSaturation)
                                                             : fuzz::to_ll(want.bad_size);
            FUZZ_CHECK(want.bad && before < want.bad_offset + hs && want.bad_offset + hs <= fed,
                       "error at %llu not where the oracle has it (bad %d at %zu, fed %zu..%zu)",
                       static_cast<unsigned long long>(plan.error.stream_offset), want.bad, want.bad_offset, before,
                       fed);
            FUZZ_CHECK(plan.error.stream_offset == want.bad_offset && plan.error.frame_size == reported &&
                           plan.error.length_value == raw &&
                           plan.error.kind == (want.bad_size < static_cast<oracle::Wide>(hs) ? FrameError::too_small
                                                                                             : FrameError::too_large),
                       "error details: offset %llu size %lld", static_cast<unsigned long long>(plan.error.stream_offset),
                       static_cast<long long>(plan.error.frame_size));
            FUZZ_CHECK(got == want.frames.size() && dec.failed(), "frames before the error: %zu of %zu", got,
                       want.frames.size());
            FUZZ_CHECK(dec.plan(chunk.data, chunk.size).error.kind == FrameError::failed, "a failed decoder took input");
            raised = true;
            break;
        }
        FUZZ_CHECK(!want.bad || fed < want.bad_offset + hs, "no error although the bad header at %zu is complete",
                   want.bad_offset);
        FUZZ_CHECK(got == frames_ending_by(want.frames, fed), "frames delivered by %zu: %zu", fed, got);
        const std::size_t offset = got ? want.frames[got - 1].offset + want.frames[got - 1].size : 0;
        FUZZ_CHECK(dec.stream_offset() == offset && offset + dec.pending() == fed &&
                       dec.pending() <= static_cast<std::size_t>(max),
                   "offset %llu pending %zu fed %zu", static_cast<unsigned long long>(dec.stream_offset()),
                   dec.pending(), fed);
    }
    if (!raised) {
        FUZZ_CHECK(!want.bad && got == want.frames.size() && dec.pending() == want.tail,
                   "end: %zu frames, %zu pending; oracle %zu, tail %zu, bad %d", got, dec.pending(),
                   want.frames.size(), want.tail, want.bad);
    }
    return 0;
}
