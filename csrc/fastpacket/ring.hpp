// A byte ring for one producer thread and one consumer thread, lock-free.
//
// On Linux the ring is double-mapped: one memfd of `capacity` bytes mapped
// twice back to back inside one reserved region, so the bytes at
// base[i + capacity] are the bytes at base[i] and every readable or writable
// span is contiguous across the wrap point (the socket can recv_into it and
// the decoder can scan it in place). Elsewhere, or when mapping fails, a plain
// allocation is used and spans stop at the wrap point (two segments).
//
// Indices are 64-bit byte counts that only grow (a position is index & mask),
// so `head - tail` is the fill level without an ambiguous full/empty state.
//
// Views: a caller that hands out a view of a span may "pin" it. A read pin
// keeps the producer from reusing the pinned bytes after the consumer has
// consumed them; a write pin keeps the producer from writing, a full lap
// later, into memory an older writable view still covers. Pins never block
// the side that holds them; they only shrink the producer's free space.
//
// Threads: the producer calls free_space/write_span/commit/write and the
// write pins; the consumer calls readable/read_span/read_segments/consume/
// peek/read and the read pins. size() and free_now() may be called from any
// thread, a third one included; write_pins()/read_pins() from the side that
// owns those pins.
// Plain C++17, no Python.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>

#if defined(__linux__)
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#define FASTPACKET_RING_DOUBLE_MAP 1
#elif defined(__unix__) || defined(__APPLE__)
#include <unistd.h>
#endif

namespace fastpacket {

/// Size of a cache line, for keeping the producer's and consumer's indices
/// apart (no false sharing between the two threads).
constexpr std::size_t kCacheLineBytes = 64;
/// Largest ring capacity accepted, in bytes (1 TiB): keeps 2 * capacity and
/// every index sum far from overflow.
constexpr std::uint64_t kMaxRingCapacity = std::uint64_t{1} << 40;
/// Most views of one side that may be pinned at once.
constexpr std::size_t kMaxRingPins = 64;

/// The system page size in bytes (4096 where it cannot be asked).
inline std::size_t page_size() noexcept {
#if defined(_SC_PAGESIZE)
    const long p = ::sysconf(_SC_PAGESIZE);
    if (p > 0) return static_cast<std::size_t>(p);
#endif
    return 4096;
}

/// `n` rounded up to a power of two and to at least one page; 0 when `n` is
/// above kMaxRingCapacity.
inline std::size_t ring_capacity_for(std::uint64_t n) noexcept {
    if (n > kMaxRingCapacity) return 0;
    std::uint64_t c = page_size();
    while (c < n) c <<= 1;
    return static_cast<std::size_t>(c);
}

/// A contiguous span of ring memory.
struct RingSpan {
    std::uint8_t* data = nullptr;
    std::size_t size = 0;
};

/// A small multiset of pinned stream indices with its minimum; no allocation.
class RingPins {
public:
    bool add(std::uint64_t index) noexcept {
        if (n_ == kMaxRingPins) return false;
        pins_[n_++] = index;
        return true;
    }
    void remove(std::uint64_t index) noexcept {
        for (std::size_t i = 0; i < n_; ++i) {
            if (pins_[i] == index) {
                pins_[i] = pins_[--n_];
                return;
            }
        }
    }
    std::size_t count() const noexcept { return n_; }
    /// The smallest pinned index, or `fallback` when there is none or it is lower.
    std::uint64_t min_or(std::uint64_t fallback) const noexcept {
        std::uint64_t m = fallback;
        for (std::size_t i = 0; i < n_; ++i) m = pins_[i] < m ? pins_[i] : m;
        return m;
    }

private:
    std::uint64_t pins_[kMaxRingPins];
    std::size_t n_ = 0;
};

class RingBuffer {
public:
    RingBuffer() = default;
    RingBuffer(const RingBuffer&) = delete;
    RingBuffer& operator=(const RingBuffer&) = delete;
    ~RingBuffer() { release(); }

    /// Allocates a ring of ring_capacity_for(capacity) bytes, double-mapped
    /// when `double_map` and the platform allows it (falling back to a plain
    /// allocation on any failure). Returns false when out of memory or the
    /// capacity is out of range.
    bool init(std::uint64_t capacity, bool double_map) noexcept {
        release();
        const std::size_t cap = ring_capacity_for(capacity == 0 ? 1 : capacity);
        if (cap == 0) return false;
        if (double_map && map_twice(cap)) {
            double_mapped_ = true;
        } else {
            base_ = static_cast<std::uint8_t*>(std::malloc(cap));
            if (base_ == nullptr) return false;
            double_mapped_ = false;
        }
        cap_ = cap;
        mask_ = cap - 1;
        return true;
    }

    std::size_t capacity() const noexcept { return cap_; }
    bool double_mapped() const noexcept { return double_mapped_; }

    /// Bytes committed and not yet consumed. Any thread may ask; the answer
    /// may be stale by the time it is used, and is never beyond capacity.
    std::size_t size() const noexcept {
        // acquire on the tail: the consumer stored it after loading (acquire)
        // a head at least as large, so the head loaded second is at least the
        // tail and head - tail cannot go negative. From the producer or the
        // consumer thread it is also at most the capacity; a third thread may
        // load the tail, stall, and load a head the producer reached after
        // later consumption, hence the clamp.
        const std::uint64_t t = tail_.load(std::memory_order_acquire);
        const std::uint64_t h = head_.load(std::memory_order_acquire);
        return h - t > cap_ ? cap_ : static_cast<std::size_t>(h - t);
    }

    // -- producer ----------------------------------------------------------

    /// Bytes the producer may write now.
    std::size_t free_space() noexcept { return static_cast<std::size_t>(write_limit() - producer_head()); }

    /// The writable span at the head: the whole free space when
    /// double-mapped, else the part before the wrap point.
    RingSpan write_span() noexcept {
        const std::uint64_t h = producer_head();
        std::size_t n = static_cast<std::size_t>(write_limit() - h);
        const std::size_t pos = static_cast<std::size_t>(h & mask_);
        if (!double_mapped_ && n > cap_ - pos) n = cap_ - pos;
        return {base_ + pos, n};
    }

    /// Makes `n` bytes written at write_span() readable; n <= free_space().
    void commit(std::size_t n) noexcept {
        // release: the bytes written into the span happen-before the consumer's
        // acquire load of the new head, so it never reads stale bytes.
        head_.store(producer_head() + n, std::memory_order_release);
    }

    /// Copies up to `n` bytes in (both segments in the fallback), commits and
    /// returns how many fit.
    std::size_t write(const std::uint8_t* src, std::size_t n) noexcept {
        const std::size_t take = copy_in(src, n);
        commit(take);
        return take;
    }

    /// Copies up to `n` bytes into the free space without committing them;
    /// returns how many fit. commit() them after.
    std::size_t copy_in(const std::uint8_t* src, std::size_t n) noexcept {
        const std::uint64_t h = producer_head();
        const std::size_t room = static_cast<std::size_t>(write_limit(n) - h);
        const std::size_t take = n < room ? n : room;
        store(h, src, take);
        return take;
    }

    /// Copies `n` bytes to stream index `index` (both segments in the
    /// fallback). Touches no index or pin: a binding can size the copy first,
    /// run only this without its interpreter lock, then commit().
    void store(std::uint64_t index, const std::uint8_t* src, std::size_t n) noexcept {
        const std::size_t pos = static_cast<std::size_t>(index & mask_);
        const std::size_t first = double_mapped_ ? n : (n < cap_ - pos ? n : cap_ - pos);
        if (first) std::memcpy(base_ + pos, src, first);
        if (n > first) std::memcpy(base_, src + first, n - first);
    }

    /// Free space as seen from any thread (no cache is touched, no pin list
    /// read: the producer publishes its lowest write pin for this).
    std::size_t free_now() const noexcept {
        // The head first, with acquire: it pairs with commit()'s release, so
        // the pin floor and reclaim index the producer had when it wrote up to
        // this head are visible, and the two relaxed loads below return those
        // values or later ones (read-read coherence). Both only grow (a new
        // pin is at the head, never below the reclaim index in use), so the
        // limit computed is at least the one the producer obeyed: limit >= h.
        const std::uint64_t h = head_.load(std::memory_order_acquire);
        const std::uint64_t floor = write_pin_floor_.load(std::memory_order_relaxed);
        const std::uint64_t r = reclaim_.load(std::memory_order_relaxed);
        const std::uint64_t limit = (floor < r ? floor : r) + cap_;
        // Consumption after the head was loaded can make the answer exceed
        // the capacity; no state makes it negative (the guard is defensive).
        if (limit <= h) return 0;
        return limit - h > cap_ ? cap_ : static_cast<std::size_t>(limit - h);
    }

    /// Pins a writable view starting at stream index `index` (the head when
    /// the view was made): the producer will not write a lap past it.
    bool pin_write(std::uint64_t index) noexcept {
        if (!write_pins_.add(index)) return false;
        publish_write_pin_floor();
        return true;
    }
    void unpin_write(std::uint64_t index) noexcept {
        write_pins_.remove(index);
        publish_write_pin_floor();
    }
    std::uint64_t head_index() const noexcept { return producer_head(); }

    // -- consumer ----------------------------------------------------------

    /// Bytes the consumer may read now.
    std::size_t readable() noexcept { return static_cast<std::size_t>(consumer_head() - consumer_tail()); }

    /// The readable span at the tail: everything readable when double-mapped,
    /// else the part before the wrap point.
    RingSpan read_span() noexcept {
        RingSpan first, second;
        read_segments(&first, &second);
        if (double_mapped_) first.size += second.size;
        return first;
    }

    /// The readable bytes as two segments (the second is empty unless the
    /// data wraps; with a double map the first segment alone covers both).
    void read_segments(RingSpan* first, RingSpan* second) noexcept {
        const std::uint64_t t = consumer_tail();
        const std::size_t n = static_cast<std::size_t>(consumer_head() - t);
        const std::size_t pos = static_cast<std::size_t>(t & mask_);
        const std::size_t before_wrap = cap_ - pos;
        first->data = base_ + pos;
        if (n <= before_wrap) {
            first->size = n;
            second->data = base_;
            second->size = 0;
        } else {
            first->size = before_wrap;
            second->data = base_;
            second->size = n - before_wrap;
        }
    }

    /// Copies up to `n` readable bytes out without consuming; returns how many.
    std::size_t peek(std::uint8_t* dst, std::size_t n) noexcept {
        const std::uint64_t t = consumer_tail();
        const std::size_t have = static_cast<std::size_t>(consumer_head(n) - t);
        const std::size_t take = n < have ? n : have;
        load(t, dst, take);
        return take;
    }

    /// Copies `n` bytes from stream index `index`; touches no index or pin
    /// (see store()).
    void load(std::uint64_t index, std::uint8_t* dst, std::size_t n) const noexcept {
        const std::size_t pos = static_cast<std::size_t>(index & mask_);
        const std::size_t first = double_mapped_ ? n : (n < cap_ - pos ? n : cap_ - pos);
        if (first) std::memcpy(dst, base_ + pos, first);
        if (n > first) std::memcpy(dst + first, base_, n - first);
    }

    /// Frees `n` readable bytes (n <= readable()) for the producer, except
    /// those a read pin still holds.
    void consume(std::size_t n) noexcept {
        const std::uint64_t t = consumer_tail() + n;
        // release: the consumer's reads of the consumed bytes happen-before
        // the producer's acquire load of the tail/reclaim index that lets it
        // overwrite them. len() readers only need a recent value.
        tail_.store(t, std::memory_order_release);
        publish_reclaim(t);
    }

    /// Copies up to `n` bytes out and consumes them; returns how many.
    std::size_t read(std::uint8_t* dst, std::size_t n) noexcept {
        const std::size_t take = peek(dst, n);
        consume(take);
        return take;
    }

    /// Pins a readable view starting at stream index `index` (the tail when
    /// the view was made): its bytes are not reused while it is pinned, even
    /// once consumed.
    bool pin_read(std::uint64_t index) noexcept {
        if (!read_pins_.add(index)) return false;
        publish_reclaim(consumer_tail());
        return true;
    }
    void unpin_read(std::uint64_t index) noexcept {
        read_pins_.remove(index);
        publish_reclaim(consumer_tail());
    }
    std::uint64_t tail_index() const noexcept { return consumer_tail(); }

    std::size_t read_pins() const noexcept { return read_pins_.count(); }
    std::size_t write_pins() const noexcept { return write_pins_.count(); }

private:
    // The producer owns head_ and the consumer owns tail_: their own loads are
    // relaxed (no other thread writes them).
    std::uint64_t producer_head() const noexcept { return head_.load(std::memory_order_relaxed); }
    std::uint64_t consumer_tail() const noexcept { return tail_.load(std::memory_order_relaxed); }

    /// The head as far as the consumer needs it: the cached head is a lower
    /// bound of the real one (it only grows), so reading up to it is safe
    /// without touching the producer's cache line; reload only when it shows
    /// fewer than `need` bytes. acquire pairs with commit()'s release: the
    /// bytes below the head are visible once the head is.
    std::uint64_t consumer_head(std::size_t need = SIZE_MAX) noexcept {
        if (cached_head_ - consumer_tail() < need) cached_head_ = head_.load(std::memory_order_acquire);
        return cached_head_;
    }

    /// Stream index the producer must stay below: a lap past the oldest byte
    /// still needed (the reclaim index, lowered further by a write pin). The
    /// cached reclaim only grows, so it is a safe lower bound; reload only
    /// when it shows less than `need` bytes of room. acquire pairs with
    /// publish_reclaim()'s release: the consumer's reads of a region
    /// happen-before the producer overwrites it.
    std::uint64_t write_limit(std::size_t need = SIZE_MAX) noexcept {
        const std::uint64_t h = producer_head();
        if (cached_reclaim_ + cap_ - h < need) cached_reclaim_ = reclaim_.load(std::memory_order_acquire);
        const std::uint64_t base = write_pins_.min_or(cached_reclaim_);
        return base + cap_;
    }

    void publish_write_pin_floor() noexcept {
        // relaxed: only free_now() reads it, and only after an acquire load of
        // the head; commit()'s release orders this store before any head the
        // producer writes under the new floor.
        write_pin_floor_.store(write_pins_.min_or(kNoWritePin), std::memory_order_relaxed);
    }

    void publish_reclaim(std::uint64_t tail) noexcept {
        // release: see consume(). The value never decreases: a new pin is at
        // the current tail, which is at or above the previous reclaim index.
        reclaim_.store(read_pins_.min_or(tail), std::memory_order_release);
    }

    bool map_twice(std::size_t cap) noexcept {
#if defined(FASTPACKET_RING_DOUBLE_MAP) && defined(SYS_memfd_create)
        const int fd = static_cast<int>(::syscall(SYS_memfd_create, "fastpacket-ring", 1u /* MFD_CLOEXEC */));
        if (fd < 0) return false;
        void* region = MAP_FAILED;
        bool ok = ::ftruncate(fd, static_cast<off_t>(cap)) == 0;
        if (ok) {
            // Reserve 2 * cap of address space first so the two maps land back
            // to back without racing another thread's mmap for the gap.
            region = ::mmap(nullptr, 2 * cap, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            ok = region != MAP_FAILED;
        }
        if (ok) {
            auto* base = static_cast<std::uint8_t*>(region);
            ok = ::mmap(base, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == base &&
                 ::mmap(base + cap, cap, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) == base + cap;
            if (!ok) ::munmap(region, 2 * cap);
        }
        ::close(fd);  // the maps keep the memory alive
        if (!ok) return false;
        base_ = static_cast<std::uint8_t*>(region);
        return true;
#else
        (void)cap;
        return false;
#endif
    }

    void release() noexcept {
        if (base_ == nullptr) return;
#if defined(FASTPACKET_RING_DOUBLE_MAP)
        if (double_mapped_) {
            ::munmap(base_, 2 * cap_);
            base_ = nullptr;
            return;
        }
#endif
        std::free(base_);
        base_ = nullptr;
    }

    std::uint8_t* base_ = nullptr;
    std::size_t cap_ = 0;
    std::uint64_t mask_ = 0;
    bool double_mapped_ = false;

    // Producer's cache line: its index, its cache of the consumer's, its pins
    // and their lowest index, published for free_now() (kNoWritePin: none).
    static constexpr std::uint64_t kNoWritePin = ~std::uint64_t{0};
    alignas(kCacheLineBytes) std::atomic<std::uint64_t> head_{0};
    std::uint64_t cached_reclaim_ = 0;
    std::atomic<std::uint64_t> write_pin_floor_{kNoWritePin};
    RingPins write_pins_;

    // Consumer's cache line(s): its read index, the reclaim index the
    // producer watches (tail lowered by read pins), its cache of the head.
    alignas(kCacheLineBytes) std::atomic<std::uint64_t> tail_{0};
    std::atomic<std::uint64_t> reclaim_{0};
    std::uint64_t cached_head_ = 0;
    RingPins read_pins_;
};

}  // namespace fastpacket
