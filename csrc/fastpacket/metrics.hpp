// Lock-free metrics: count, sum, min, max, sum of squares and a log-linear
// histogram of atomic bucket counters over the whole u64 range.
//
// Plain C++17, no Python. Recording never locks and never allocates: every
// field is a lock-free, address-free std::atomic<std::uint64_t>, and every
// struct here is valid when all its bytes are zero ("empty"), holds no
// pointer, and has the same layout in every process. So one MetricCore works
// in process-private memory (MetricCore::create) and, unchanged, inside a
// shared-memory file mapped by several processes (SharedTable).
//
// Histogram: values below 128 have a bucket each; a value v >= 128 with
// e = floor(log2 v) falls in one of 128 equal sub-buckets of [2^e, 2^(e+1)),
// of width 2^(e-7). A bucket's width is at most 1/128 of its lower bound, so
// its midpoint is within 1/256 (0.39%) of any value in it: every percentile
// is within 0.4% relative error of the true sample value. 58 groups
// (values < 128, then e = 7..63) x 128 sub-buckets = 7424 buckets.
//
// Memory per metric: sizeof(MetricCore) = 59,968 bytes (64 B of scalars,
// 58 group counters, 7424 bucket counters, 8 bytes each, padded to 64 B),
// fixed whatever is recorded. The whole structure zero-initialised is the empty metric.
//
// Sum and sum of squares are 128-bit (two u64 words with a carry), exact
// while they stay below 2^128: the sum can never wrap in practice (2^64
// values of 2^64 - 1), the sum of squares wraps once Σv² >= 2^128 (e.g. 64
// values near 2^61); that sets kFlagSumSqWrapped and the standard deviation
// is then computed from the histogram instead (≈0.4% relative).
//
// Reads are relaxed loads field by field: a reading taken while writers run
// is not one atomic snapshot (a value may be in `count` and not yet in `sum`;
// the high word of a 128-bit sum lags its low word for the instant between
// the two adds). Once writers have finished (thread join, process exit),
// every total is exact.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>
#include <thread>
#include <type_traits>

namespace fastpacket {
namespace metrics {

using Atomic64 = std::atomic<std::uint64_t>;
using Atomic32 = std::atomic<std::uint32_t>;
static_assert(Atomic64::is_always_lock_free, "metrics need lock-free 64-bit atomics");
static_assert(Atomic32::is_always_lock_free, "metrics need lock-free 32-bit atomics");
static_assert(sizeof(Atomic64) == 8 && alignof(Atomic64) == 8,
              "an atomic u64 must be a plain 8-byte word to live in a shared file");
static_assert(std::is_standard_layout<Atomic64>::value, "atomic u64 must be standard layout");

constexpr unsigned kSubBits = 7;                       // 128 sub-buckets per power of two
constexpr unsigned kSubBuckets = 1u << kSubBits;       // 128
constexpr unsigned kGroups = 64 - kSubBits + 1;        // 58: values < 128, then e = 7..63
constexpr unsigned kBuckets = kGroups * kSubBuckets;   // 7424
constexpr std::uint64_t kFlagSumSqWrapped = 1;         // Σv² passed 2^128 at least once
constexpr std::uint64_t kFlagSumWrapped = 2;           // Σv passed 2^128 (needs 2^64 records)

/// Histogram bucket of a value: exact below 128, log-linear above.
inline unsigned bucket_index(std::uint64_t v) noexcept {
    if (v < kSubBuckets) return static_cast<unsigned>(v);
    const unsigned e = 63u - static_cast<unsigned>(__builtin_clzll(v));  // >= 7
    return ((e - kSubBits + 1) << kSubBits) |
           static_cast<unsigned>((v >> (e - kSubBits)) & (kSubBuckets - 1));
}

/// Smallest value of bucket `index`.
inline std::uint64_t bucket_lower(unsigned index) noexcept {
    const unsigned g = index >> kSubBits, j = index & (kSubBuckets - 1);
    if (g == 0) return j;
    const unsigned shift = g - 1;  // e - 7
    return (std::uint64_t{kSubBuckets} + j) << shift;
}

/// Largest value of bucket `index` (inclusive).
inline std::uint64_t bucket_upper(unsigned index) noexcept {
    const unsigned g = index >> kSubBits;
    if (g == 0) return index;
    return bucket_lower(index) + ((std::uint64_t{1} << (g - 1)) - 1);
}

/// Value reported for a percentile that falls in bucket `index`: the middle
/// of its range (exact below 128).
inline std::uint64_t bucket_middle(unsigned index) noexcept {
    const std::uint64_t lo = bucket_lower(index);
    return lo + (bucket_upper(index) - lo) / 2;
}

struct U128 {
    std::uint64_t lo = 0, hi = 0;
};

inline U128 square(std::uint64_t v) noexcept {
#if defined(__SIZEOF_INT128__)
    const unsigned __int128 s = static_cast<unsigned __int128>(v) * v;
    return {static_cast<std::uint64_t>(s), static_cast<std::uint64_t>(s >> 64)};
#else
    const std::uint64_t a = v & 0xffffffffu, b = v >> 32;
    const std::uint64_t aa = a * a, ab = a * b, bb = b * b;
    const std::uint64_t mid = (aa >> 32) + ((ab & 0xffffffffu) << 1);
    U128 r;
    r.lo = (mid << 32) | (aa & 0xffffffffu);
    r.hi = bb + ((ab >> 32) << 1) + (mid >> 32);
    return r;
#endif
}

inline bool add_to(U128& acc, std::uint64_t lo, std::uint64_t hi) noexcept {
    const std::uint64_t old_lo = acc.lo;
    acc.lo += lo;
    const std::uint64_t carry = acc.lo < old_lo ? 1 : 0;
    const std::uint64_t old_hi = acc.hi;
    acc.hi += hi + carry;
    return acc.hi < old_hi || (carry && hi + carry == 0);  // wrapped past 2^128
}

/// One metric. All fields relaxed atomics: each is an independent counter
/// (or extreme) whose total is exact whatever the interleaving, because the
/// read-modify-writes of one atomic are totally ordered; no reader infers
/// anything about other memory from one of these values, so no acquire or
/// release is needed. Writers that finish before a reader starts (thread
/// join, waitpid) are ordered by that synchronisation, not by these atomics.
struct alignas(64) MetricCore {
    Atomic64 sum_lo, sum_hi;        // Σv, 128-bit
    Atomic64 sumsq_lo, sumsq_hi;    // Σv², 128-bit
    Atomic64 min_complement;        // ~min: zero bytes mean "no minimum yet" (UINT64_MAX)
    Atomic64 max;                   // 0 when empty
    Atomic64 flags;                 // kFlagSumSqWrapped | kFlagSumWrapped
    Atomic64 reserved;
    Atomic64 groups[kGroups];       // values per power of two; count = Σ groups
    Atomic64 buckets[kBuckets];

    /// Record one value: 4 atomic adds, plus a compare-exchange only when v
    /// is a new extreme. Safe from any thread or process, never blocks.
    void record(std::uint64_t v) noexcept {
        const unsigned idx = bucket_index(v);
        groups[idx >> kSubBits].fetch_add(1, std::memory_order_relaxed);
        buckets[idx].fetch_add(1, std::memory_order_relaxed);
        add_wide(sum_lo, sum_hi, v, 0, kFlagSumWrapped);
        const U128 sq = square(v);
        add_wide(sumsq_lo, sumsq_hi, sq.lo, sq.hi, kFlagSumSqWrapped);
        raise_to(max, v);
        raise_to(min_complement, ~v);
    }

    /// Merge locally accumulated totals (record_many): one atomic add per
    /// non-zero counter instead of one per value.
    void merge(std::uint64_t count_in_groups[kGroups], const std::uint32_t* local_buckets,
               U128 sum, U128 sumsq, std::uint64_t vmin, std::uint64_t vmax,
               std::uint64_t wrapped_flags) noexcept {
        for (unsigned g = 0; g < kGroups; ++g) {
            if (count_in_groups[g] == 0) continue;
            const std::uint32_t* lb = local_buckets + g * kSubBuckets;
            for (unsigned j = 0; j < kSubBuckets; ++j)
                if (lb[j]) buckets[g * kSubBuckets + j].fetch_add(lb[j], std::memory_order_relaxed);
            groups[g].fetch_add(count_in_groups[g], std::memory_order_relaxed);
        }
        add_wide(sum_lo, sum_hi, sum.lo, sum.hi, kFlagSumWrapped);
        add_wide(sumsq_lo, sumsq_hi, sumsq.lo, sumsq.hi, kFlagSumSqWrapped);
        if (wrapped_flags) flags.fetch_or(wrapped_flags, std::memory_order_relaxed);
        raise_to(max, vmax);
        raise_to(min_complement, ~vmin);
    }

    std::uint64_t count() const noexcept {
        std::uint64_t n = 0;
        for (unsigned g = 0; g < kGroups; ++g) n += groups[g].load(std::memory_order_relaxed);
        return n;
    }
    U128 sum() const noexcept { return load_wide(sum_lo, sum_hi); }
    U128 sumsq() const noexcept { return load_wide(sumsq_lo, sumsq_hi); }
    std::uint64_t min_value() const noexcept { return ~min_complement.load(std::memory_order_relaxed); }
    std::uint64_t max_value() const noexcept { return max.load(std::memory_order_relaxed); }
    std::uint64_t flag_bits() const noexcept { return flags.load(std::memory_order_relaxed); }

    /// Values at percentiles ps[0..k) (each in [0, 100]) into out[]; uses the
    /// numpy "inverted_cdf" rank ceil(n * p / 100) (at least 1), reports the
    /// middle of that rank's bucket clamped to [min, max]. Returns the count
    /// it used; 0 means empty (out untouched). At most 58 + 128 loads each.
    std::uint64_t percentiles(const double* ps, std::size_t k, std::uint64_t* out) const noexcept {
        std::uint64_t g_counts[kGroups];
        std::uint64_t n = 0;
        for (unsigned g = 0; g < kGroups; ++g) {
            g_counts[g] = groups[g].load(std::memory_order_relaxed);
            n += g_counts[g];
        }
        if (n == 0) return 0;
        const std::uint64_t lo = min_value(), hi = max_value();
        for (std::size_t i = 0; i < k; ++i) {
            double r = std::ceil(static_cast<double>(n) * (ps[i] / 100.0));
            std::uint64_t rank = r < 1.0 ? 1 : (r >= static_cast<double>(n) ? n : static_cast<std::uint64_t>(r));
            unsigned g = 0;
            while (g < kGroups - 1 && rank > g_counts[g]) rank -= g_counts[g++];
            // Within the group: the bucket sums may trail the group count by
            // the values being recorded right now; stop at the last bucket.
            unsigned idx = g * kSubBuckets, last = idx;
            for (unsigned j = 0; j < kSubBuckets; ++j, ++idx) {
                const std::uint64_t c = buckets[idx].load(std::memory_order_relaxed);
                if (c == 0) continue;
                last = idx;
                if (rank <= c) break;
                rank -= c;
            }
            if (idx >= (g + 1) * kSubBuckets) idx = last;
            std::uint64_t v = bucket_middle(idx);
            if (lo <= hi) v = std::min(std::max(v, lo), hi);
            out[i] = v;
        }
        return n;
    }

    /// Copy the bucket counters (for exposition and histogram stddev).
    void copy_buckets(std::uint64_t* out) const noexcept {
        for (unsigned i = 0; i < kBuckets; ++i) out[i] = buckets[i].load(std::memory_order_relaxed);
    }

    /// Zero every field. Not atomic as a whole: values recorded during a
    /// reset may be partly kept. Meant for quiet moments (tests, new epoch).
    void reset() noexcept {
        for (unsigned i = 0; i < kBuckets; ++i) buckets[i].store(0, std::memory_order_relaxed);
        for (unsigned g = 0; g < kGroups; ++g) groups[g].store(0, std::memory_order_relaxed);
        sum_lo.store(0, std::memory_order_relaxed);
        sum_hi.store(0, std::memory_order_relaxed);
        sumsq_lo.store(0, std::memory_order_relaxed);
        sumsq_hi.store(0, std::memory_order_relaxed);
        min_complement.store(0, std::memory_order_relaxed);
        max.store(0, std::memory_order_relaxed);
        flags.store(0, std::memory_order_relaxed);
    }

  private:
    // 128-bit add as two relaxed fetch_adds: the carry out of the low word
    // goes into the high word. A wrap past 2^128 sets a sticky flag.
    void add_wide(Atomic64& lo_w, Atomic64& hi_w, std::uint64_t lo, std::uint64_t hi,
                  std::uint64_t wrap_flag) noexcept {
        std::uint64_t carry = 0;
        if (lo) {
            const std::uint64_t old = lo_w.fetch_add(lo, std::memory_order_relaxed);
            carry = old + lo < old ? 1 : 0;
        }
        const std::uint64_t add_hi = hi + carry;  // hi <= 2^64 - 2 for a square, so no wrap
        if (add_hi) {
            const std::uint64_t old = hi_w.fetch_add(add_hi, std::memory_order_relaxed);
            if (old + add_hi < old) flags.fetch_or(wrap_flag, std::memory_order_relaxed);
        }
    }
    static U128 load_wide(const Atomic64& lo_w, const Atomic64& hi_w) noexcept {
        // Re-read until the high word is stable around the low word read.
        std::uint64_t hi = hi_w.load(std::memory_order_relaxed), lo, hi2;
        for (;;) {
            lo = lo_w.load(std::memory_order_relaxed);
            hi2 = hi_w.load(std::memory_order_relaxed);
            if (hi2 == hi) break;
            hi = hi2;
        }
        return {lo, hi};
    }
    // Atomic max by compare-exchange (the classic lock-free max loop): the
    // common case, v not a new extreme, is one load and no write.
    static void raise_to(Atomic64& a, std::uint64_t v) noexcept {
        std::uint64_t cur = a.load(std::memory_order_relaxed);
        while (v > cur && !a.compare_exchange_weak(cur, v, std::memory_order_relaxed,
                                                    std::memory_order_relaxed)) {
        }
    }
};

static_assert(sizeof(MetricCore) == 59968, "bytes per metric, as documented");
static_assert(std::is_standard_layout<MetricCore>::value, "MetricCore must be standard layout");

/// How many values record_many accumulates locally before merging (u32
/// local buckets cannot overflow), and below which it records value by value.
constexpr std::size_t kLocalChunk = std::size_t{1} << 24;
constexpr std::size_t kLocalMin = 1024;

enum class ManyError : std::uint8_t { none = 0, negative = 1, not_finite = 2, too_large = 3 };

struct ManyResult {
    ManyError error = ManyError::none;
    std::size_t index = 0;  // first bad element
    double value = 0;       // its value
};

namespace detail {

template <class T>
inline ManyResult validate(const T* v, std::size_t n) noexcept {
    ManyResult r;
    if constexpr (std::is_floating_point<T>::value) {
        constexpr double kTwo64 = 18446744073709551616.0;
        for (std::size_t i = 0; i < n; ++i) {
            const double x = static_cast<double>(v[i]);
            if (x >= 0.0 && std::nearbyint(x) < kTwo64) continue;  // NaN fails both
            r.error = std::isnan(x) ? ManyError::not_finite
                      : x < 0.0     ? ManyError::negative
                      : std::isinf(x) ? ManyError::not_finite
                                      : ManyError::too_large;
            r.index = i;
            r.value = x;
            return r;
        }
    } else if constexpr (std::is_signed<T>::value) {
        // branch-free pass first (vectorises), then find the culprit
        T lowest = 0;
        for (std::size_t i = 0; i < n; ++i) lowest = v[i] < lowest ? v[i] : lowest;
        if (lowest < 0) {
            for (std::size_t i = 0; i < n; ++i)
                if (v[i] < 0) {
                    r.error = ManyError::negative;
                    r.index = i;
                    r.value = static_cast<double>(v[i]);
                    return r;
                }
        }
    }
    (void)v;
    (void)n;
    return r;
}

template <class T>
inline std::uint64_t as_u64(T x) noexcept {
    if constexpr (std::is_floating_point<T>::value)
        return static_cast<std::uint64_t>(std::nearbyint(static_cast<double>(x)));
    else
        return static_cast<std::uint64_t>(x);
}

}  // namespace detail

/// Record n values of type T (u64, i64, f64, ...): all or nothing. Negative,
/// NaN, infinite or >= 2^64 (after rounding to nearest, ties to even) values
/// make it record nothing and say which. Large inputs accumulate into a
/// stack-local histogram (29,696 bytes of u32) and merge once per chunk.
template <class T>
ManyResult record_many(MetricCore& m, const T* v, std::size_t n) noexcept {
    ManyResult bad = detail::validate(v, n);
    if (bad.error != ManyError::none) return bad;
    if (n < kLocalMin) {
        for (std::size_t i = 0; i < n; ++i) m.record(detail::as_u64(v[i]));
        return bad;
    }
    std::uint32_t local[kBuckets];
    std::uint64_t group_counts[kGroups];
    for (std::size_t start = 0; start < n; start += kLocalChunk) {
        const std::size_t end = std::min(n, start + kLocalChunk);
        std::memset(local, 0, sizeof(local));
        U128 sum, sumsq;
        std::uint64_t vmin = ~std::uint64_t{0}, vmax = 0, wrapped = 0;
        for (std::size_t i = start; i < end; ++i) {
            const std::uint64_t x = detail::as_u64(v[i]);
            ++local[bucket_index(x)];
            vmin = x < vmin ? x : vmin;
            vmax = x > vmax ? x : vmax;
            if (add_to(sum, x, 0)) wrapped |= kFlagSumWrapped;
            const U128 sq = square(x);
            if (add_to(sumsq, sq.lo, sq.hi)) wrapped |= kFlagSumSqWrapped;
        }
        for (unsigned g = 0; g < kGroups; ++g) {
            std::uint64_t c = 0;
            for (unsigned j = 0; j < kSubBuckets; ++j) c += local[g * kSubBuckets + j];
            group_counts[g] = c;
        }
        m.merge(group_counts, local, sum, sumsq, vmin, vmax, wrapped);
    }
    return bad;
}

/// A counter: one monotonically increasing u64 (wraps at 2^64).
struct CounterCore {
    Atomic64 value;  // relaxed: an independent total, exact after writers finish
    void add(std::uint64_t n) noexcept { value.fetch_add(n, std::memory_order_relaxed); }
    std::uint64_t get() const noexcept { return value.load(std::memory_order_relaxed); }
    void reset() noexcept { value.store(0, std::memory_order_relaxed); }
};

/// A gauge: one double stored as its bits in an atomic u64 (last write
/// wins; add() is a compare-exchange loop so concurrent adds all count).
struct GaugeCore {
    Atomic64 bits;  // relaxed: the value stands alone, nothing else is published with it
    static std::uint64_t to_bits(double d) noexcept {
        std::uint64_t b;
        std::memcpy(&b, &d, sizeof b);
        return b;
    }
    static double from_bits(std::uint64_t b) noexcept {
        double d;
        std::memcpy(&d, &b, sizeof d);
        return d;
    }
    void set(double d) noexcept { bits.store(to_bits(d), std::memory_order_relaxed); }
    void add(double d) noexcept {
        std::uint64_t cur = bits.load(std::memory_order_relaxed);
        while (!bits.compare_exchange_weak(cur, to_bits(from_bits(cur) + d), std::memory_order_relaxed,
                                           std::memory_order_relaxed)) {
        }
    }
    double get() const noexcept { return from_bits(bits.load(std::memory_order_relaxed)); }
    void reset() noexcept { bits.store(0, std::memory_order_relaxed); }  // bits 0 == +0.0
};

/// A zeroed T on the heap, aligned as T: all-zero bytes are the empty
/// metric, counter or gauge, exactly as in a fresh shared file. Throws
/// std::bad_alloc (the only allocation, made when a metric is created).
template <class T>
T* create_zeroed() {
    void* p = ::operator new(sizeof(T), std::align_val_t{alignof(T)});
    std::memset(p, 0, sizeof(T));
    return static_cast<T*>(p);
}
template <class T>
void destroy_zeroed(T* p) noexcept {
    ::operator delete(static_cast<void*>(p), std::align_val_t{alignof(T)});
}

inline std::uint64_t monotonic_ns() noexcept {
    return static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                          std::chrono::steady_clock::now().time_since_epoch())
                                          .count());
}

// ---------------------------------------------------------------------------
// Shared-memory file: one file for all processes.
//
//   [FileHeader: 4096 bytes][slot 0][slot 1]...[slot n-1]
//   slot = [SlotHeader: 128 bytes][data: sizeof(MetricCore) bytes]
//
// A name maps to a slot by FNV-1a 64 of its bytes modulo the slot count, then
// linear probing. A free slot (state 0) is claimed by compare-exchange 0 -> 1
// (claiming); the winner writes kind and name, then stores state 2 (ready)
// with release. A process that finds a slot claiming waits (bounded, at
// creation only) until it is ready, then compares names: two processes
// creating the same name agree on one slot. When every slot holds another
// name the table is full: lookup returns SlotStatus::full and nothing
// changes. Slots are never freed (reset zeroes values, keeps names).
// ---------------------------------------------------------------------------

constexpr std::uint64_t kFileMagic = 0x314D5054504B5046ull;  // "FPKPTPM1" little-endian
constexpr std::uint32_t kFileVersion = 1;
constexpr std::size_t kFileHeaderBytes = 4096;  // one page: slots start page-aligned
constexpr std::size_t kMaxNameBytes = 112;
constexpr std::size_t kSlotHeaderBytes = 128;
constexpr std::size_t kSlotBytes = kSlotHeaderBytes + sizeof(MetricCore);  // 60,096
constexpr auto kClaimWait = std::chrono::seconds(2);

enum class Kind : std::uint32_t { metric = 1, counter = 2, gauge = 3 };
enum class SlotState : std::uint32_t { free = 0, claiming = 1, ready = 2 };

struct FileHeader {
    std::uint64_t magic;
    std::uint32_t version;
    std::uint32_t slot_count;
    std::uint64_t slot_bytes;
    std::uint64_t file_bytes;
};

struct SlotHeader {
    Atomic32 state;      // SlotState: claimed by CAS, published with release
    std::uint32_t kind;  // Kind, written before state = ready
    std::uint32_t name_len;
    std::uint32_t reserved;
    char name[kMaxNameBytes];
};
static_assert(sizeof(SlotHeader) == kSlotHeaderBytes, "slot header layout");
static_assert(kSlotBytes % 64 == 0, "slots keep metric data 64-byte aligned");

enum class TableError : std::uint8_t { none = 0, too_small = 1, bad_magic = 2, bad_version = 3, bad_size = 4 };
enum class SlotStatus : std::uint8_t { found = 0, created = 1, full = 2, kind_mismatch = 3, busy = 4, bad_name = 5 };

inline std::size_t file_bytes_for(std::uint32_t slots) noexcept {
    return kFileHeaderBytes + static_cast<std::size_t>(slots) * kSlotBytes;
}

inline std::uint64_t fnv1a(const char* s, std::size_t n) noexcept {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (std::size_t i = 0; i < n; ++i) {
        h ^= static_cast<std::uint8_t>(s[i]);
        h *= 0x100000001b3ull;
    }
    return h;
}

/// A view of a mapped metrics file (the caller maps and unmaps it).
class SharedTable {
  public:
    SharedTable() = default;

    /// Write the header of a new, zero-filled file of file_bytes_for(slots)
    /// bytes (done on a private temporary file before it is linked into
    /// place, so no other process ever sees a half-written header).
    static void init(std::uint8_t* base, std::uint32_t slots) noexcept {
        FileHeader h{kFileMagic, kFileVersion, slots, kSlotBytes, file_bytes_for(slots)};
        std::memcpy(base, &h, sizeof h);
    }

    TableError attach(std::uint8_t* base, std::size_t len) noexcept {
        if (len < kFileHeaderBytes) return TableError::too_small;
        FileHeader h;
        std::memcpy(&h, base, sizeof h);
        if (h.magic != kFileMagic) return TableError::bad_magic;
        if (h.version != kFileVersion || h.slot_bytes != kSlotBytes) return TableError::bad_version;
        if (h.slot_count == 0 || h.file_bytes != file_bytes_for(h.slot_count) || len < h.file_bytes)
            return TableError::bad_size;
        base_ = base;
        slots_ = h.slot_count;
        return TableError::none;
    }

    std::uint32_t slot_count() const noexcept { return slots_; }
    SlotHeader* header(std::uint32_t i) const noexcept {
        return reinterpret_cast<SlotHeader*>(base_ + kFileHeaderBytes + std::size_t{i} * kSlotBytes);
    }
    void* data(std::uint32_t i) const noexcept {
        return base_ + kFileHeaderBytes + std::size_t{i} * kSlotBytes + kSlotHeaderBytes;
    }
    /// State of slot i with acquire: when ready, its kind and name are visible.
    SlotState state(std::uint32_t i) const noexcept {
        return static_cast<SlotState>(header(i)->state.load(std::memory_order_acquire));
    }

    /// Find or claim the slot of `name` (1..kMaxNameBytes bytes) for `kind`.
    SlotStatus lookup(const char* name, std::size_t len, Kind kind, std::uint32_t* slot) noexcept {
        if (len == 0 || len > kMaxNameBytes) return SlotStatus::bad_name;
        const std::uint64_t h = fnv1a(name, len);
        for (std::uint32_t probe = 0; probe < slots_; ++probe) {
            const std::uint32_t i = static_cast<std::uint32_t>((h + probe) % slots_);
            SlotHeader* s = header(i);
            std::uint32_t st = s->state.load(std::memory_order_acquire);  // pairs with the ready release
            if (st == static_cast<std::uint32_t>(SlotState::free)) {
                std::uint32_t expected = st;
                // acquire on failure: if the other claimer already stored
                // ready, its kind and name (read below) must be visible. (On
                // success relaxed would do: the winner alone writes the slot
                // header and publishes it with the release store below; C++17
                // wants the success order at least as strong as failure's.)
                if (s->state.compare_exchange_strong(expected, static_cast<std::uint32_t>(SlotState::claiming),
                                                     std::memory_order_acquire, std::memory_order_acquire)) {
                    s->kind = static_cast<std::uint32_t>(kind);
                    s->name_len = static_cast<std::uint32_t>(len);
                    std::memcpy(s->name, name, len);
                    // release: kind and name happen-before any acquire load that sees ready
                    s->state.store(static_cast<std::uint32_t>(SlotState::ready), std::memory_order_release);
                    *slot = i;
                    return SlotStatus::created;
                }
                st = expected;
            }
            if (st == static_cast<std::uint32_t>(SlotState::claiming)) {
                const auto deadline = std::chrono::steady_clock::now() + kClaimWait;
                while ((st = s->state.load(std::memory_order_acquire)) ==
                       static_cast<std::uint32_t>(SlotState::claiming)) {
                    if (std::chrono::steady_clock::now() > deadline) return SlotStatus::busy;
                    std::this_thread::yield();
                }
            }
            // name_len == len <= kMaxNameBytes: the compare stays inside the
            // slot even when the file was written by someone else.
            if (s->name_len == len && std::memcmp(s->name, name, len) == 0) {
                *slot = i;
                return s->kind == static_cast<std::uint32_t>(kind) ? SlotStatus::found : SlotStatus::kind_mismatch;
            }
        }
        return SlotStatus::full;
    }

  private:
    std::uint8_t* base_ = nullptr;
    std::uint32_t slots_ = 0;
};

}  // namespace metrics
}  // namespace fastpacket
