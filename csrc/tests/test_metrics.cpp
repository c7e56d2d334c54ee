// C++ tests of csrc/fastpacket/metrics.hpp: the histogram's bucket
// arithmetic, exact count/sum/sum of squares/min/max (checked against an
// independent 128-bit reference), percentiles within the documented 1/256
// relative error of a sorted reference, record_many() equal to recording
// one by one (and all or nothing on bad input), counters, gauges, the
// shared-memory slot table; and, in the concurrent mode (run under
// ThreadSanitizer with -DFASTPACKET_TSAN=ON), several threads recording,
// reading and claiming slots at once with exact totals afterwards.
//
//   test_metrics              every case
//   test_metrics single       the single-threaded cases
//   test_metrics concurrent   the multi-threaded cases
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <new>
#include <random>
#include <string>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

#include "check.hpp"
#include "fastpacket/metrics.hpp"

using namespace fastpacket::metrics;

namespace {

constexpr std::uint64_t kU64Max = ~std::uint64_t{0};
/// Threads recording at once in the concurrent cases (more than the CI
/// machine's cores, so they are preempted in the middle of a record).
constexpr unsigned kThreads = 4;
/// Values each of them records.
constexpr std::size_t kPerThread = 100000;

/// A MetricCore the way the bindings make one: zeroed, aligned, on the heap.
template <class T>
struct Zeroed {
    T* p = create_zeroed<T>();
    Zeroed() = default;
    Zeroed(const Zeroed&) = delete;
    Zeroed& operator=(const Zeroed&) = delete;
    ~Zeroed() { destroy_zeroed(p); }
    T* operator->() const { return p; }
    T& operator*() const { return *p; }
};

// -- an independent 128-bit reference ----------------------------------------

struct Ref128 {
    std::uint64_t lo = 0, hi = 0;
    void add(std::uint64_t l, std::uint64_t h) {
        lo += l;
        hi += h + (lo < l ? 1 : 0);
    }
    bool operator==(const U128& o) const { return lo == o.lo && hi == o.hi; }
};

/// v * v by long multiplication in 16-bit digits (not the library's way).
Ref128 ref_square(std::uint64_t v) {
    std::uint64_t d[4], out[8] = {};
    for (int i = 0; i < 4; ++i) d[i] = (v >> (16 * i)) & 0xFFFF;
    for (int i = 0; i < 4; ++i)
        for (int j = 0; j < 4; ++j) out[i + j] += d[i] * d[j];
    for (int k = 0; k < 7; ++k) {  // carry into the next digit
        out[k + 1] += out[k] >> 16;
        out[k] &= 0xFFFF;
    }
    Ref128 r;
    for (int k = 0; k < 4; ++k) r.lo |= out[k] << (16 * k);
    for (int k = 0; k < 4; ++k) r.hi |= out[k + 4] << (16 * k);
    return r;
}

/// What a metric must hold after recording `values`.
struct Expected {
    std::uint64_t count = 0, min = kU64Max, max = 0;
    Ref128 sum, sumsq;
    bool sumsq_wrapped = false;
    std::vector<std::uint64_t> sorted;

    explicit Expected(std::vector<std::uint64_t> values) : sorted(std::move(values)) {
        std::sort(sorted.begin(), sorted.end());
        for (std::uint64_t v : sorted) {
            ++count;
            min = std::min(min, v);
            max = std::max(max, v);
            sum.add(v, 0);
            const Ref128 sq = ref_square(v);
            const std::uint64_t hi_before = sumsq.hi;
            sumsq.add(sq.lo, sq.hi);
            sumsq_wrapped |= sumsq.hi < hi_before;
        }
    }
};

void check_totals(const MetricCore& m, const Expected& e) {
    CHECK_EQ(m.count(), e.count);
    CHECK(e.sum == m.sum());
    CHECK(e.sumsq == m.sumsq());
    CHECK_EQ(m.max_value(), e.max);
    CHECK_EQ(m.min_value(), e.min);
}

/// Both metrics have the same value in every bucket and every total.
void check_same(const MetricCore& a, const MetricCore& b) {
    CHECK_EQ(a.count(), b.count());
    CHECK(a.sum().lo == b.sum().lo && a.sum().hi == b.sum().hi);
    CHECK(a.sumsq().lo == b.sumsq().lo && a.sumsq().hi == b.sumsq().hi);
    CHECK_EQ(a.min_value(), b.min_value());
    CHECK_EQ(a.max_value(), b.max_value());
    std::vector<std::uint64_t> ba(kBuckets), bb(kBuckets);
    a.copy_buckets(ba.data());
    b.copy_buckets(bb.data());
    std::size_t differ = 0;
    for (unsigned i = 0; i < kBuckets; ++i) differ += ba[i] != bb[i];
    CHECK_EQ(differ, 0u);
}

/// Values spread over the whole u64 range: small exact ones, every power of
/// two, the extremes.
std::vector<std::uint64_t> wide_values(std::size_t n, unsigned seed) {
    std::mt19937_64 rng(seed);
    std::vector<std::uint64_t> v(n);
    for (std::size_t i = 0; i < n; ++i) {
        switch (rng() % 4) {
            case 0: v[i] = rng() % 200; break;
            case 1: v[i] = rng() >> (rng() % 64); break;    // log-uniform-ish
            case 2: v[i] = (rng() % 100000) * 1000; break;  // latencies in ns
            default: v[i] = rng() % 2 ? kU64Max - rng() % 3 : rng() % 3; break;
        }
    }
    return v;
}

// -- single-threaded ---------------------------------------------------------

void bucket_arithmetic() {
    CHECK_EQ(kBuckets, 7424u);
    CHECK_EQ(bucket_lower(0), 0u);
    CHECK_EQ(bucket_upper(kBuckets - 1), kU64Max);
    std::size_t bad = 0;
    for (unsigned i = 0; i < kBuckets; ++i) {
        const std::uint64_t lo = bucket_lower(i), hi = bucket_upper(i), mid = bucket_middle(i);
        bad += !(lo <= mid && mid <= hi);
        bad += bucket_index(lo) != i || bucket_index(hi) != i;
        if (i > 0) bad += lo != bucket_upper(i - 1) + 1;  // buckets tile the range without gaps
        if (lo < kSubBuckets) {
            bad += lo != hi;  // exact below 128
        } else {
            // the documented bound: the middle is within 1/256 of any value in the bucket
            bad += (hi - mid) > lo / 256 || (mid - lo) > lo / 256;
        }
    }
    CHECK_EQ(bad, 0u);
    // the count-leading-zeros builtin and the portable fallback agree
    std::mt19937_64 rng(1);
    for (int k = 0; k < 100000; ++k) {
        const std::uint64_t v = (rng() >> (rng() % 64)) | 1;
        bad += floor_log2(v) != floor_log2_portable(v);
    }
    for (unsigned e = 0; e < 64; ++e) {
        const std::uint64_t p = std::uint64_t{1} << e;
        bad += floor_log2(p) != e || floor_log2_portable(p) != e;
        bad += floor_log2_portable(p | (p - 1)) != e;
    }
    CHECK_EQ(bad, 0u);
    // the 128-bit square: the compiler's (where it has one), the portable
    // fallback and the reference long multiplication agree
    for (int k = 0; k < 100000; ++k) {
        const std::uint64_t v = k < 3 ? (k == 0 ? 0 : k == 1 ? kU64Max : 0xFFFFFFFF) : rng() >> (rng() % 64);
        const U128 a = square(v), b = square_portable(v);
        bad += !(ref_square(v) == a) || a.lo != b.lo || a.hi != b.hi;
    }
    CHECK_EQ(bad, 0u);
}

void empty_metric() {
    Zeroed<MetricCore> m;
    CHECK_EQ(m->count(), 0u);
    CHECK_EQ(m->max_value(), 0u);
    CHECK_EQ(m->min_value(), kU64Max);  // all-zero bytes: "no minimum yet"
    const double p = 50.0;
    std::uint64_t out = 12345;
    CHECK_EQ(m->percentiles(&p, 1, &out), 0u);
    CHECK_EQ(out, 12345u);  // untouched
    CHECK_EQ(m->flag_bits(), 0u);
}

void totals() {
    Zeroed<MetricCore> m;
    const std::vector<std::uint64_t> values = {5, 1000, 0, kU64Max, 127, 128, 255, 256};
    for (std::uint64_t v : values) m->record(v);
    check_totals(*m, Expected(values));
    CHECK_EQ(m->sum().hi, 1u);  // the sum passed 2^64 and carried
    CHECK_EQ(m->flag_bits(), 0u);

    Zeroed<MetricCore> w;  // 64 * (2^61)^2 = 2^128: the sum of squares wraps once
    for (int i = 0; i < 64; ++i) w->record(std::uint64_t{1} << 61);
    CHECK((w->flag_bits() & kFlagSumSqWrapped) != 0);
    CHECK((w->flag_bits() & kFlagSumWrapped) == 0);
    CHECK_EQ(w->sumsq().lo, 0u);
    CHECK_EQ(w->sumsq().hi, 0u);
    CHECK_EQ(w->sum().hi, 8u);  // 2^67
    CHECK_EQ(w->count(), 64u);

    m->reset();
    CHECK_EQ(m->count(), 0u);
    CHECK_EQ(m->sum().lo, 0u);
    CHECK_EQ(m->sum().hi, 0u);
    CHECK_EQ(m->min_value(), kU64Max);
    CHECK_EQ(m->max_value(), 0u);
    m->record(7);
    CHECK_EQ(m->min_value(), 7u);
    CHECK_EQ(m->max_value(), 7u);
}

void percentile_accuracy() {
    const double ps[] = {0, 0.1, 1, 10, 25, 50, 75, 90, 95, 99, 99.9, 99.99, 100};
    constexpr std::size_t kP = sizeof ps / sizeof ps[0];
    std::mt19937_64 rng(3);
    std::vector<std::vector<std::uint64_t>> sets;
    std::vector<std::uint64_t> v(100000);
    for (auto& x : v) x = rng() % 128;  // exact range
    sets.push_back(v);
    for (auto& x : v) x = static_cast<std::uint64_t>(std::exp2(std::uniform_real_distribution<double>(0, 40)(rng)));
    sets.push_back(v);  // log-uniform, 1 .. 2^40
    for (auto& x : v) x = (std::uint64_t{1} << 63) + (rng() >> 1);
    sets.push_back(v);  // the top of the range
    for (auto& x : v) x = 1000 + static_cast<std::uint64_t>(std::abs(std::normal_distribution<double>(0, 300)(rng)));
    sets.push_back(v);  // a latency-like bump
    sets.push_back(std::vector<std::uint64_t>(1000, 123456789));  // one value
    sets.push_back(wide_values(50000, 4));
    sets.push_back({42});
    for (const auto& values : sets) {
        Zeroed<MetricCore> m;
        for (std::uint64_t x : values) m->record(x);
        const Expected e(values);
        check_totals(*m, e);
        std::uint64_t out[kP];
        CHECK_EQ(m->percentiles(ps, kP, out), e.count);
        for (std::size_t k = 0; k < kP; ++k) {
            // numpy's "inverted_cdf": the value of rank ceil(n * p / 100), at least 1
            const double r = std::ceil(static_cast<double>(e.count) * (ps[k] / 100.0));
            const std::size_t rank = r < 1 ? 1 : std::min<std::size_t>(static_cast<std::size_t>(r), e.count);
            const std::uint64_t want = e.sorted[rank - 1];
            const std::uint64_t diff = out[k] > want ? out[k] - want : want - out[k];
            if (diff > want / 256) {
                std::fprintf(stderr, "p%g of %zu values: got %llu, want %llu (more than 1/256 off)\n", ps[k],
                             values.size(), static_cast<unsigned long long>(out[k]),
                             static_cast<unsigned long long>(want));
                CHECK(false);
            }
            if (want < kSubBuckets) CHECK_EQ(out[k], want);  // exact below 128
            CHECK(out[k] >= e.min && out[k] <= e.max);
        }
    }
}

template <class T>
void record_many_matches(const std::vector<T>& values) {
    Zeroed<MetricCore> many, one;
    const ManyResult r = record_many(*many, values.data(), values.size());
    CHECK(r.error == ManyError::none);
    for (T x : values) {
        if constexpr (std::is_floating_point<T>::value) {
            one->record(static_cast<std::uint64_t>(std::nearbyint(static_cast<double>(x))));
        } else {
            one->record(static_cast<std::uint64_t>(x));
        }
    }
    check_same(*many, *one);
}

void record_many_cases() {
    const auto wide = wide_values(5000, 5);  // >= kLocalMin: the local-histogram path
    record_many_matches(wide);
    record_many_matches(std::vector<std::uint64_t>(wide.begin(), wide.begin() + 100));  // value by value
    std::vector<std::int64_t> signed_values;
    for (std::uint64_t x : wide) signed_values.push_back(static_cast<std::int64_t>(x >> 1));
    record_many_matches(signed_values);
    std::vector<double> doubles = {0.0, -0.0, 0.4, 0.5, 1.5, 2.5, 3.5, 1e6 + 0.25, 18446744073709549568.0};
    for (int i = 0; i < 3000; ++i) doubles.push_back(i * 1.37);
    record_many_matches(doubles);
    std::vector<std::uint32_t> odd_min;  // a merged minimum that is odd and not 0
    for (std::uint32_t i = 0; i < 3000; ++i) odd_min.push_back(1000003 + 7 * ((i * 7919u) % 3000));
    record_many_matches(odd_min);
    {
        Zeroed<MetricCore> m;  // rounding is to nearest, ties to even
        const double halves[] = {0.5, 1.5, 2.5};
        record_many(*m, halves, 3);
        CHECK_EQ(m->sum().lo, 0u + 2u + 2u);
        CHECK_EQ(m->max_value(), 2u);
    }
    // all or nothing, naming the first bad element
    Zeroed<MetricCore> m;
    std::vector<std::int64_t> neg(2000, 5);
    neg[1500] = -1;
    neg[1700] = -2;
    ManyResult r = record_many(*m, neg.data(), neg.size());
    CHECK(r.error == ManyError::negative);
    CHECK_EQ(r.index, 1500u);
    CHECK_EQ(r.value, -1.0);
    const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
    const double bad_doubles[][2] = {{1.0, nan}, {1.0, inf}, {1.0, -0.5}, {1.0, 18446744073709551616.0}};
    const ManyError want[] = {ManyError::not_finite, ManyError::not_finite, ManyError::negative, ManyError::too_large};
    for (int k = 0; k < 4; ++k) {
        r = record_many(*m, bad_doubles[k], 2);
        CHECK(r.error == want[k]);
        CHECK_EQ(r.index, 1u);
    }
    CHECK_EQ(m->count(), 0u);  // nothing recorded by any failed call
}

void counters_and_gauges() {
    Zeroed<CounterCore> c;
    CHECK_EQ(c->get(), 0u);
    c->add(5);
    c->add(kU64Max);  // wraps at 2^64
    CHECK_EQ(c->get(), 4u);
    c->reset();
    CHECK_EQ(c->get(), 0u);
    Zeroed<GaugeCore> g;
    CHECK_EQ(g->get(), 0.0);  // zero bytes are +0.0
    g->set(12.5);
    g->add(-2.25);
    CHECK_EQ(g->get(), 10.25);
    g->set(-3);
    CHECK_EQ(g->get(), -3.0);
    g->reset();
    CHECK_EQ(g->get(), 0.0);
}

/// Page-aligned, zero-filled memory standing in for a mapped metrics file.
struct FileImage {
    std::size_t size;
    std::uint8_t* base;
    explicit FileImage(std::uint32_t slots)
        : size(file_bytes_for(slots)),
          base(static_cast<std::uint8_t*>(::operator new(size, std::align_val_t{kFileHeaderBytes}))) {
        std::memset(base, 0, size);
        SharedTable::init(base, slots);
    }
    FileImage(const FileImage&) = delete;
    FileImage& operator=(const FileImage&) = delete;
    ~FileImage() { ::operator delete(base, std::align_val_t{kFileHeaderBytes}); }
};

void shared_table() {
    FileImage file(4);
    SharedTable t;
    CHECK(t.attach(file.base, file.size) == TableError::none);
    CHECK_EQ(t.slot_count(), 4u);
    std::uint32_t slot = 99, again = 99;
    CHECK(t.lookup("rtt_us", 6, Kind::metric, &slot) == SlotStatus::created);
    CHECK(t.state(slot) == SlotState::ready);
    CHECK(t.lookup("rtt_us", 6, Kind::metric, &again) == SlotStatus::found);
    CHECK_EQ(again, slot);
    CHECK(t.lookup("rtt_us", 6, Kind::counter, &again) == SlotStatus::kind_mismatch);
    const std::string longest(kMaxNameBytes, 'n');
    CHECK(t.lookup(longest.data(), longest.size(), Kind::gauge, &again) == SlotStatus::created);
    CHECK(t.lookup(longest.data(), longest.size() + 1, Kind::gauge, &again) == SlotStatus::bad_name);
    CHECK(t.lookup("", 0, Kind::gauge, &again) == SlotStatus::bad_name);
    CHECK(t.lookup("a", 1, Kind::counter, &again) == SlotStatus::created);
    CHECK(t.lookup("b", 1, Kind::counter, &again) == SlotStatus::created);
    CHECK(t.lookup("c", 1, Kind::counter, &again) == SlotStatus::full);  // four names in four slots
    CHECK(t.lookup("a", 1, Kind::counter, &again) == SlotStatus::found);  // a full table still finds
    // the slot's data is an ordinary, aligned metric
    auto* m = static_cast<MetricCore*>(t.data(slot));
    CHECK(reinterpret_cast<std::uintptr_t>(m) % alignof(MetricCore) == 0);
    m->record(77);
    CHECK_EQ(m->count(), 1u);

    // attaching refuses what is not a file of this version
    SharedTable other;
    CHECK(other.attach(file.base, kFileHeaderBytes - 1) == TableError::too_small);
    CHECK(other.attach(file.base, file.size - 1) == TableError::bad_size);
    FileImage wrong(1);
    wrong.base[0] ^= 1;
    CHECK(other.attach(wrong.base, wrong.size) == TableError::bad_magic);
    wrong.base[0] ^= 1;
    wrong.base[8] = kFileVersion + 1;  // the version follows the 8-byte magic
    CHECK(other.attach(wrong.base, wrong.size) == TableError::bad_version);
}

// -- concurrent --------------------------------------------------------------

/// The values thread t records (deterministic, different per thread).
std::vector<std::uint64_t> thread_values(unsigned t) { return wide_values(kPerThread, 100 + t); }

void concurrent_recorders() {
    Zeroed<MetricCore> m, reference;
    std::vector<std::vector<std::uint64_t>> values(kThreads);
    std::vector<std::uint64_t> all;
    for (unsigned t = 0; t < kThreads; ++t) {
        values[t] = thread_values(t);
        all.insert(all.end(), values[t].begin(), values[t].end());
        for (std::uint64_t v : values[t]) reference->record(v);
    }
    std::atomic<unsigned> running{kThreads};
    std::atomic<std::uint64_t> count_went_back{0}, reads{0};
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            const auto& mine = values[t];
            if (t % 2 == 0) {
                for (std::uint64_t v : mine) m->record(v);
            } else {  // record_many's merge: one atomic add per bucket per chunk
                constexpr std::size_t kChunk = 2 * kLocalMin;
                for (std::size_t i = 0; i < mine.size(); i += kChunk)
                    record_many(*m, mine.data() + i, std::min(kChunk, mine.size() - i));
            }
            // release: this thread's records happen-before the reader's acquire
            // that sees the count drop (the join below orders them anyway)
            running.fetch_sub(1, std::memory_order_release);
        });
    }
    // a reader while they run: every read is some mix of recent values, and
    // the count, a sum of counters that only grow, never goes back
    threads.emplace_back([&] {
        std::uint64_t last = 0;
        const double ps[] = {50, 99};
        std::uint64_t out[2];
        std::vector<std::uint64_t> buckets(kBuckets);
        while (running.load(std::memory_order_acquire) != 0) {
            const std::uint64_t c = m->count();
            if (c < last) count_went_back.fetch_add(1, std::memory_order_relaxed);
            last = c;
            m->percentiles(ps, 2, out);
            m->copy_buckets(buckets.data());
            (void)m->sum();
            (void)m->min_value();
            reads.fetch_add(1, std::memory_order_relaxed);
            std::this_thread::yield();
        }
    });
    for (auto& th : threads) th.join();
    std::printf("metrics: %u threads x %zu records, %llu concurrent reads\n", kThreads, kPerThread,
                static_cast<unsigned long long>(reads.load()));
    CHECK_EQ(count_went_back.load(), 0u);
    check_totals(*m, Expected(all));
    check_same(*m, *reference);
}

void concurrent_counters() {
    Zeroed<CounterCore> c;
    Zeroed<GaugeCore> g;
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            for (std::size_t i = 0; i < kPerThread; ++i) {
                c->add(t + 1);
                g->add(1.0);  // compare-exchange loop: no add is lost (integers: exact in a double)
            }
        });
    }
    for (auto& th : threads) th.join();
    CHECK_EQ(c->get(), kPerThread * (kThreads * (kThreads + 1) / 2));
    CHECK_EQ(g->get(), static_cast<double>(kPerThread * kThreads));
}

void concurrent_slot_claims() {
    // Several "processes" (threads with their own view of one file) create
    // the same names at once, in different orders: they agree on one slot per
    // name, exactly one of them creates it, and records through any view land
    // in the same metric.
    constexpr std::uint32_t kSlots = 64;
    constexpr unsigned kNames = 40;
    constexpr std::uint64_t kRecordsPerName = 100;
    FileImage file(kSlots);
    std::vector<std::string> names;
    for (unsigned i = 0; i < kNames; ++i) names.push_back("metric_" + std::to_string(i * 7919));
    std::vector<std::vector<std::uint32_t>> slots(kThreads, std::vector<std::uint32_t>(kNames, kSlots));
    std::vector<unsigned> created(kThreads, 0), failed(kThreads, 0);
    std::vector<std::thread> threads;
    for (unsigned t = 0; t < kThreads; ++t) {
        threads.emplace_back([&, t] {
            SharedTable view;
            if (view.attach(file.base, file.size) != TableError::none) {
                ++failed[t];
                return;
            }
            std::vector<unsigned> order(kNames);
            for (unsigned i = 0; i < kNames; ++i) order[i] = i;
            std::shuffle(order.begin(), order.end(), std::mt19937(t));
            for (unsigned i : order) {
                const SlotStatus st = view.lookup(names[i].data(), names[i].size(), Kind::metric, &slots[t][i]);
                if (st == SlotStatus::created) {
                    ++created[t];
                } else if (st != SlotStatus::found) {
                    ++failed[t];
                }
            }
            for (unsigned i : order) {
                if (slots[t][i] >= kSlots) continue;
                auto* m = static_cast<MetricCore*>(view.data(slots[t][i]));
                for (std::uint64_t k = 0; k < kRecordsPerName; ++k) m->record(k);
            }
        });
    }
    for (auto& th : threads) th.join();
    unsigned total_created = 0, total_failed = 0;
    for (unsigned t = 0; t < kThreads; ++t) {
        total_created += created[t];
        total_failed += failed[t];
        for (unsigned i = 0; i < kNames; ++i) CHECK_EQ(slots[t][i], slots[0][i]);
    }
    CHECK_EQ(total_failed, 0u);
    CHECK_EQ(total_created, kNames);
    SharedTable t;
    CHECK(t.attach(file.base, file.size) == TableError::none);
    for (unsigned i = 0; i < kNames; ++i) {
        if (slots[0][i] >= kSlots) continue;
        const auto* m = static_cast<const MetricCore*>(t.data(slots[0][i]));
        CHECK_EQ(m->count(), kThreads * kRecordsPerName);
        CHECK_EQ(m->sum().lo, kThreads * (kRecordsPerName * (kRecordsPerName - 1) / 2));
        CHECK_EQ(m->max_value(), kRecordsPerName - 1);
        CHECK_EQ(m->min_value(), 0u);
    }
}

}  // namespace

int main(int argc, char** argv) {
    const std::string mode = argc > 1 ? argv[1] : "all";
    if (mode != "all" && mode != "single" && mode != "concurrent") {
        std::fprintf(stderr, "usage: test_metrics [all|single|concurrent]\n");
        return 2;
    }
    if (mode != "concurrent") {
        bucket_arithmetic();
        empty_metric();
        totals();
        percentile_accuracy();
        record_many_cases();
        counters_and_gauges();
        shared_table();
    }
    if (mode != "single") {
        concurrent_recorders();
        concurrent_counters();
        concurrent_slot_claims();
    }
    return fastpacket_test::finish(("metrics " + mode).c_str());
}
