// The few assertion helpers the C++ tests share: a failed check prints where
// and what (with both values for CHECK_EQ) and the test goes on, so one run
// reports every failure; finish() turns the count into the exit status ctest
// reads. No test framework: the tests build with nothing but a C++17
// compiler, natively, under the sanitizers and for Windows (mingw-w64).
#pragma once

#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <type_traits>

namespace fastpacket_test {

inline int& failures() {
    static int n = 0;
    return n;
}

inline void fail(const char* file, int line, const char* what) {
    std::fprintf(stderr, "%s:%d: CHECK(%s) failed\n", file, line, what);
    ++failures();
}

// Integers print as 64-bit values, floating point with full precision.
template <class A, class B>
void fail_eq(const char* file, int line, const char* a_text, const char* b_text, const A& a, const B& b) {
    if constexpr (std::is_floating_point<A>::value || std::is_floating_point<B>::value) {
        std::fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %.17g != %.17g\n", file, line, a_text, b_text,
                     static_cast<double>(a), static_cast<double>(b));
    } else if constexpr (std::is_pointer<A>::value || std::is_pointer<B>::value) {
        std::fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %p != %p\n", file, line, a_text, b_text,
                     static_cast<const void*>(a), static_cast<const void*>(b));
    } else if constexpr (std::is_signed<A>::value) {
        std::fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %" PRId64 " != %" PRId64 "\n", file, line, a_text,
                     b_text, static_cast<std::int64_t>(a), static_cast<std::int64_t>(b));
    } else {
        std::fprintf(stderr, "%s:%d: CHECK_EQ(%s, %s) failed: %" PRIu64 " != %" PRIu64 "\n", file, line, a_text,
                     b_text, static_cast<std::uint64_t>(a), static_cast<std::uint64_t>(b));
    }
    ++failures();
}

/// a == b; for two integers of different signedness compared by value, as
/// C++20's std::cmp_equal (a negative value equals no unsigned one).
template <class A, class B>
constexpr bool equal(const A& a, const B& b) {
    if constexpr (std::is_integral<A>::value && std::is_integral<B>::value &&
                  std::is_signed<A>::value != std::is_signed<B>::value) {
        if constexpr (std::is_signed<A>::value) {
            return a >= 0 && static_cast<std::make_unsigned_t<A>>(a) == b;
        } else {
            return b >= 0 && a == static_cast<std::make_unsigned_t<B>>(b);
        }
    } else {
        return a == b;
    }
}

/// The process exit status: 0 when every check passed.
inline int finish(const char* name) {
    if (failures() != 0) {
        std::fprintf(stderr, "%s: %d check(s) failed\n", name, failures());
        return 1;
    }
    std::printf("%s: all checks passed\n", name);
    return 0;
}

}  // namespace fastpacket_test

#define CHECK(cond)                                                          \
    do {                                                                     \
        if (!(cond)) fastpacket_test::fail(__FILE__, __LINE__, #cond);       \
    } while (0)

// Compares by value (fastpacket_test::equal); both operands are evaluated once.
#define CHECK_EQ(a, b)                                                                \
    do {                                                                              \
        const auto& check_a_ = (a);                                                   \
        const auto& check_b_ = (b);                                                   \
        if (!fastpacket_test::equal(check_a_, check_b_))                              \
            fastpacket_test::fail_eq(__FILE__, __LINE__, #a, #b, check_a_, check_b_); \
    } while (0)
