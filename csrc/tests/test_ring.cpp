// C++ tests of csrc/fastpacket/ring.hpp, on both paths: the double-mapped
// ring (Linux memfd: spans run across the wrap point) and the portable
// fallback (a plain allocation: spans stop at the wrap point). Capacity
// rounding, wrap-around, full and empty rings, read and write pins, and one
// producer thread and one consumer thread moving a long stream whose every
// byte is checked (run under ThreadSanitizer with -DFASTPACKET_TSAN=ON).
//
//   test_ring          every case
//   test_ring single   the single-threaded cases
//   test_ring spsc     the two-thread cases (what the TSan run is for)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "check.hpp"
#include "fastpacket/ring.hpp"

using namespace fastpacket;

namespace {

#if defined(FASTPACKET_RING_DOUBLE_MAP) && defined(SYS_memfd_create)
constexpr bool kPlatformDoubleMap = true;
#else
constexpr bool kPlatformDoubleMap = false;
#endif

/// Bytes the two-thread test streams through a one-page ring (thousands of laps).
constexpr std::uint64_t kStreamBytes = std::uint64_t{16} << 20;
/// A stream thread that makes no progress for this long gives up and fails
/// the test (a lost wake-up or a wrong free-space computation would
/// otherwise hang it).
constexpr auto kMaxStall = std::chrono::seconds(30);

/// The byte at stream index i: not periodic in any power of two, so a byte
/// read from the wrong lap or the wrong offset shows.
std::uint8_t pattern(std::uint64_t i) {
    const std::uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull;
    return static_cast<std::uint8_t>((x >> 56) ^ (x >> 29) ^ i);
}

void fill(std::uint8_t* dst, std::uint64_t index, std::size_t n) {
    for (std::size_t k = 0; k < n; ++k) dst[k] = pattern(index + k);
}

/// Bytes of src[0, n) that differ from the stream at `index`.
std::size_t mismatches(const std::uint8_t* src, std::uint64_t index, std::size_t n) {
    std::size_t bad = 0;
    for (std::size_t k = 0; k < n; ++k) bad += src[k] != pattern(index + k);
    return bad;
}

const char* path_name(bool double_map) { return double_map ? "double-mapped" : "fallback"; }

bool make(RingBuffer& r, std::uint64_t capacity, bool double_map) {
    if (!r.init(capacity, double_map)) return false;
    // Where the platform double-maps, asking for it must get it: the fallback
    // is only for systems without memfd (or a failed mapping).
    if (r.double_mapped() != (double_map && kPlatformDoubleMap)) {
        std::fprintf(stderr, "ring asked %s, got %s\n", path_name(double_map), path_name(r.double_mapped()));
        CHECK(false);
    }
    return true;
}

void capacity_rounding() {
    const std::size_t page = page_size();
    CHECK(page >= 1 && (page & (page - 1)) == 0);
    CHECK_EQ(ring_capacity_for(1), page);
    CHECK_EQ(ring_capacity_for(page), page);
    CHECK_EQ(ring_capacity_for(page + 1), 2 * page);
    CHECK_EQ(ring_capacity_for(3 * page), 4 * page);
    CHECK_EQ(ring_capacity_for(kMaxRingCapacity), kMaxRingCapacity);
    CHECK_EQ(ring_capacity_for(kMaxRingCapacity + 1), 0u);
    CHECK_EQ(ring_capacity_for(~std::uint64_t{0}), 0u);
    RingBuffer r;
    CHECK(!r.init(kMaxRingCapacity + 1, false));
    CHECK(r.init(0, false));  // zero asks for the smallest ring
    CHECK_EQ(r.capacity(), page);
    CHECK(r.init(page + 1, true));  // re-init releases the old memory (ASan: no leak)
    CHECK_EQ(r.capacity(), 2 * page);
}

void write_and_read(bool dm) {
    RingBuffer r;
    if (!make(r, 1, dm)) {  // out of memory
        CHECK(false);
        return;
    }
    const std::size_t cap = r.capacity();
    CHECK_EQ(r.free_space(), cap);
    CHECK_EQ(r.readable(), 0u);
    CHECK_EQ(r.size(), 0u);
    std::vector<std::uint8_t> src(2 * cap), dst(2 * cap);
    fill(src.data(), 0, 100);
    CHECK_EQ(r.write(src.data(), 100), 100u);
    CHECK_EQ(r.size(), 100u);
    CHECK_EQ(r.readable(), 100u);
    CHECK_EQ(r.free_space(), cap - 100);
    CHECK_EQ(r.free_now(), cap - 100);
    CHECK_EQ(r.peek(dst.data(), 50), 50u);  // peek does not consume
    CHECK_EQ(mismatches(dst.data(), 0, 50), 0u);
    CHECK_EQ(r.readable(), 100u);
    CHECK_EQ(r.read(dst.data(), 30), 30u);
    CHECK_EQ(mismatches(dst.data(), 0, 30), 0u);
    CHECK_EQ(r.read(dst.data(), dst.size()), 70u);  // asks more than there is
    CHECK_EQ(mismatches(dst.data(), 30, 70), 0u);
    CHECK_EQ(r.read(dst.data(), dst.size()), 0u);
    // a write larger than the free space takes what fits; a full ring takes nothing
    fill(src.data(), 100, cap + 10);
    CHECK_EQ(r.write(src.data(), cap + 10), cap);
    CHECK_EQ(r.free_space(), 0u);
    CHECK_EQ(r.write(src.data(), 1), 0u);
    CHECK_EQ(r.write_span().size, 0u);
    CHECK_EQ(r.read(dst.data(), dst.size()), cap);
    CHECK_EQ(mismatches(dst.data(), 100, cap), 0u);
    CHECK_EQ(r.head_index(), 100 + cap);
    CHECK_EQ(r.tail_index(), 100 + cap);
}

void wrap_around(bool dm) {
    RingBuffer r;
    if (!make(r, 1, dm)) {  // out of memory
        CHECK(false);
        return;
    }
    const std::size_t cap = r.capacity();
    const bool mapped = r.double_mapped();  // false on platforms without memfd, whatever was asked
    const std::size_t before_wrap = 100;
    std::vector<std::uint8_t> src(2 * cap), dst(2 * cap);
    // move both indices to 100 bytes before the wrap point
    fill(src.data(), 0, cap - before_wrap);
    CHECK_EQ(r.write(src.data(), cap - before_wrap), cap - before_wrap);
    CHECK_EQ(r.read(dst.data(), cap), cap - before_wrap);
    const std::uint64_t s0 = cap - before_wrap;

    const RingSpan ws = r.write_span();
    CHECK_EQ(ws.size, mapped ? cap : before_wrap);  // only the double map spans the wrap point
    const std::size_t n = 300;
    fill(src.data(), s0, n);
    CHECK_EQ(r.write(src.data(), n), n);  // the fallback writes two segments
    const RingSpan rs = r.read_span();
    CHECK_EQ(rs.size, mapped ? n : before_wrap);
    CHECK_EQ(mismatches(rs.data, s0, rs.size), 0u);  // in the double map, read straight across the wrap
    RingSpan first, second;
    r.read_segments(&first, &second);
    CHECK_EQ(first.size, before_wrap);
    CHECK_EQ(second.size, n - before_wrap);
    CHECK(first.data == rs.data);
    CHECK(second.data + (cap - before_wrap) == first.data);  // the second segment is the ring's start
    CHECK_EQ(mismatches(first.data, s0, first.size), 0u);
    CHECK_EQ(mismatches(second.data, s0 + before_wrap, second.size), 0u);
    if (mapped) CHECK(std::memcmp(first.data + before_wrap, second.data, second.size) == 0);  // one memory, two addresses
    CHECK_EQ(r.peek(dst.data(), n), n);
    CHECK_EQ(mismatches(dst.data(), s0, n), 0u);

    // store/load by stream index, the copies a binding runs without its lock
    std::vector<std::uint8_t> out(n);
    r.load(s0, out.data(), n);
    CHECK_EQ(mismatches(out.data(), s0, n), 0u);
    const std::uint64_t h = r.head_index();
    fill(src.data(), h, 500);
    CHECK_EQ(r.copy_in(src.data(), 500), 500u);  // copied, not yet visible
    CHECK_EQ(r.readable(), n);
    r.commit(500);
    CHECK_EQ(r.readable(), n + 500);
    CHECK_EQ(r.read(dst.data(), dst.size()), n + 500);
    CHECK_EQ(mismatches(dst.data(), s0, n + 500), 0u);

    // commit through write_span(): the producer fills the span in place
    const std::uint64_t h2 = r.head_index();
    const RingSpan span = r.write_span();
    const std::size_t pos = static_cast<std::size_t>(h2 & (cap - 1));
    CHECK_EQ(span.size, mapped ? cap : cap - pos);
    fill(span.data, h2, span.size);
    r.commit(span.size);
    CHECK_EQ(r.readable(), span.size);
    CHECK_EQ(r.read(dst.data(), dst.size()), span.size);
    CHECK_EQ(mismatches(dst.data(), h2, span.size), 0u);
}

void read_pins(bool dm) {
    RingBuffer r;
    if (!make(r, 1, dm)) {  // out of memory
        CHECK(false);
        return;
    }
    const std::size_t cap = r.capacity(), pinned = 1000;
    std::vector<std::uint8_t> src(2 * cap), dst(2 * cap);
    fill(src.data(), 0, pinned);
    r.write(src.data(), pinned);
    const std::uint64_t t = r.tail_index();
    const RingSpan view = r.read_span();
    CHECK(r.pin_read(t));
    CHECK_EQ(r.read_pins(), 1u);
    r.consume(pinned);
    CHECK_EQ(r.readable(), 0u);
    // consumed but pinned: the producer may not reuse those bytes
    CHECK_EQ(r.free_space(), cap - pinned);
    CHECK_EQ(r.free_now(), cap - pinned);
    fill(src.data(), pinned, cap);
    CHECK_EQ(r.write(src.data(), cap), cap - pinned);
    CHECK_EQ(mismatches(view.data, 0, pinned), 0u);  // the view is intact
    r.unpin_read(t);
    CHECK_EQ(r.read_pins(), 0u);
    CHECK_EQ(r.free_space(), pinned);
    CHECK_EQ(r.read(dst.data(), dst.size()), cap - pinned);
    CHECK_EQ(mismatches(dst.data(), pinned, cap - pinned), 0u);

    // at most kMaxRingPins pins per side; a refused pin changes nothing
    for (std::size_t i = 0; i < kMaxRingPins; ++i) CHECK(r.pin_read(r.tail_index()));
    CHECK(!r.pin_read(r.tail_index()));
    CHECK_EQ(r.read_pins(), kMaxRingPins);
    for (std::size_t i = 0; i < kMaxRingPins; ++i) r.unpin_read(r.tail_index());
    CHECK_EQ(r.read_pins(), 0u);
    CHECK_EQ(r.free_space(), cap);
}

void write_pins(bool dm) {
    RingBuffer r;
    if (!make(r, 1, dm)) {  // out of memory
        CHECK(false);
        return;
    }
    const std::size_t cap = r.capacity();
    std::vector<std::uint8_t> src(cap), dst(cap);
    // a writable view made at the head covers [head, head + cap): after the
    // consumer frees everything, the producer still may not lap into it
    const std::uint64_t h = r.head_index();
    CHECK(r.pin_write(h));
    CHECK_EQ(r.write_pins(), 1u);
    fill(src.data(), 0, cap);
    CHECK_EQ(r.write(src.data(), cap), cap);
    CHECK_EQ(r.read(dst.data(), cap), cap);
    CHECK_EQ(mismatches(dst.data(), 0, cap), 0u);
    CHECK_EQ(r.free_space(), 0u);
    CHECK_EQ(r.free_now(), 0u);
    CHECK_EQ(r.write(src.data(), 1), 0u);
    r.unpin_write(h);
    CHECK_EQ(r.write_pins(), 0u);
    CHECK_EQ(r.free_space(), cap);
    for (std::size_t i = 0; i < kMaxRingPins; ++i) CHECK(r.pin_write(r.head_index()));
    CHECK(!r.pin_write(r.head_index()));
    for (std::size_t i = 0; i < kMaxRingPins; ++i) r.unpin_write(r.head_index());
    CHECK_EQ(r.write_pins(), 0u);
}

// -- one producer thread, one consumer thread -------------------------------

struct StreamResult {
    std::uint64_t moved = 0;      // bytes the side handled
    std::uint64_t bad_bytes = 0;  // consumer: bytes that differ from the stream
    bool stalled = false;         // gave up after kMaxStall without progress
};

class Watchdog {
public:
    void progress() { last_ = std::chrono::steady_clock::now(); }
    bool expired() const { return std::chrono::steady_clock::now() - last_ > kMaxStall; }

private:
    std::chrono::steady_clock::time_point last_ = std::chrono::steady_clock::now();
};

// Writes [0, total) of the pattern in random chunks, by every producer call:
// write(), write_span() + commit(), copy_in() + commit(), and a span written
// under a write pin (as a binding's writable view) released after its commit.
void produce(RingBuffer& r, std::uint64_t total, unsigned seed, const std::atomic<bool>& abort, StreamResult& out) {
    std::mt19937 rng(seed);
    const std::size_t cap = r.capacity();
    std::vector<std::uint8_t> src(2 * cap);
    Watchdog dog;
    std::uint64_t pos = 0;
    while (pos < total) {
        if (abort.load(std::memory_order_relaxed)) return;  // relaxed: a stop request carries no data
        std::size_t want = 1 + rng() % (cap + cap / 2);
        if (want > total - pos) want = static_cast<std::size_t>(total - pos);
        std::size_t done = 0;
        switch (rng() % 4) {
            case 0:
                fill(src.data(), pos, want);
                done = r.write(src.data(), want);
                break;
            case 3: {
                const std::uint64_t h = r.head_index();
                if (!r.pin_write(h)) break;
                const RingSpan span = r.write_span();
                done = std::min(span.size, want);
                fill(span.data, pos, done);
                r.commit(done);
                r.unpin_write(h);
                break;
            }
            case 1: {
                const RingSpan span = r.write_span();
                done = std::min(span.size, want);
                fill(span.data, pos, done);
                r.commit(done);
                break;
            }
            default:
                fill(src.data(), pos, want);
                done = r.copy_in(src.data(), want);
                r.commit(done);
                break;
        }
        pos += done;
        if (done) {
            dog.progress();
        } else if (dog.expired()) {
            out.stalled = true;
            return;
        } else {
            std::this_thread::yield();
        }
    }
    out.moved = pos;
}

// Reads and checks [0, total) in random chunks, by every consumer call:
// read(), peek(), read_span() + consume(), read_segments() + consume(), and
// a pinned view that must stay intact after it is consumed while the
// producer keeps writing.
void consume(RingBuffer& r, std::uint64_t total, unsigned seed, const std::atomic<bool>& abort, StreamResult& out) {
    std::mt19937 rng(seed);
    const std::size_t cap = r.capacity();
    std::vector<std::uint8_t> dst(2 * cap);
    Watchdog dog;
    std::uint64_t pos = 0;
    while (pos < total) {
        if (abort.load(std::memory_order_relaxed)) return;  // relaxed: a stop request carries no data
        const std::size_t want = 1 + rng() % (cap + cap / 2);
        std::size_t done = 0;
        switch (rng() % 5) {
            case 0:
                done = r.read(dst.data(), want);
                out.bad_bytes += mismatches(dst.data(), pos, done);
                break;
            case 1: {
                done = r.peek(dst.data(), want);
                out.bad_bytes += mismatches(dst.data(), pos, done);
                r.consume(done);
                break;
            }
            case 2: {
                const RingSpan span = r.read_span();
                done = std::min(span.size, want);
                out.bad_bytes += mismatches(span.data, pos, done);
                r.consume(done);
                break;
            }
            case 3: {
                RingSpan first, second;
                r.read_segments(&first, &second);
                out.bad_bytes += mismatches(first.data, pos, first.size);
                out.bad_bytes += mismatches(second.data, pos + first.size, second.size);
                done = first.size + second.size;
                r.consume(done);
                break;
            }
            default: {
                const std::uint64_t t = r.tail_index();
                const RingSpan view = r.read_span();
                if (view.size == 0 || !r.pin_read(t)) break;
                r.consume(view.size);
                // let the producer run: it must not write into the pinned bytes
                for (int i = 0; i < 8; ++i) std::this_thread::yield();
                out.bad_bytes += mismatches(view.data, pos, view.size);
                r.unpin_read(t);
                done = view.size;
                break;
            }
        }
        pos += done;
        if (done) {
            dog.progress();
        } else if (dog.expired()) {
            out.stalled = true;
            return;
        } else {
            std::this_thread::yield();
        }
    }
    out.moved = pos;
}

void spsc(bool dm, std::uint64_t total, unsigned seed) {
    RingBuffer r;
    if (!make(r, 1, dm)) {  // out of memory  // one page: the stream laps it thousands of times
        CHECK(false);
        return;
    }
    std::atomic<bool> abort{false};
    std::atomic<std::uint64_t> over_capacity{0};
    std::atomic<bool> done_reading{false};  // relaxed everywhere: a stop flag carries no data
    StreamResult prod, cons;
    std::thread producer([&] {
        produce(r, total, seed, abort, prod);
        if (prod.stalled) abort.store(true, std::memory_order_relaxed);  // relaxed: a stop request carries no data
    });
    std::thread consumer([&] {
        consume(r, total, seed + 1, abort, cons);
        done_reading.store(true, std::memory_order_relaxed);
        if (cons.stalled) abort.store(true, std::memory_order_relaxed);
    });
    // size() and free_now() may be asked from any thread while both sides
    // run (and the producer pins); neither ever shows more than the capacity
    std::thread observer([&] {
        while (!done_reading.load(std::memory_order_relaxed) && !abort.load(std::memory_order_relaxed)) {
            if (r.size() > r.capacity() || r.free_now() > r.capacity())
                over_capacity.fetch_add(1, std::memory_order_relaxed);
            std::this_thread::yield();
        }
    });
    producer.join();
    consumer.join();
    abort.store(true, std::memory_order_relaxed);
    observer.join();
    std::printf("spsc %s: %llu bytes through a %zu-byte ring, %llu bad\n", path_name(dm),
                static_cast<unsigned long long>(cons.moved), r.capacity(),
                static_cast<unsigned long long>(cons.bad_bytes));
    CHECK(!prod.stalled);
    CHECK(!cons.stalled);
    CHECK_EQ(prod.moved, total);
    CHECK_EQ(cons.moved, total);
    CHECK_EQ(cons.bad_bytes, 0u);
    CHECK_EQ(over_capacity.load(), 0u);
    CHECK_EQ(r.readable(), 0u);
    CHECK_EQ(r.free_space(), r.capacity());
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "all";
    if (mode != "all" && mode != "single" && mode != "spsc") {
        std::fprintf(stderr, "usage: test_ring [all|single|spsc]\n");
        return 2;
    }
    if (mode != "spsc") {
        capacity_rounding();
        for (bool dm : {true, false}) {
            write_and_read(dm);
            wrap_around(dm);
            read_pins(dm);
            write_pins(dm);
        }
    }
    if (mode != "single") {
        spsc(true, kStreamBytes, 11);
        spsc(false, kStreamBytes, 12);
    }
    return fastpacket_test::finish(("ring " + mode).c_str());
}
