// A minimal check harness for the C++ tests (no framework needed): CHECK records a failure
// with file and line and the test binary exits non-zero if any check failed.
#pragma once
#include <cstdio>
#include <cstdlib>

namespace eigenlstm_test {
inline int& failures() {
    static int n = 0;
    return n;
}
}  // namespace eigenlstm_test

#define CHECK(cond)                                                                 \
    do {                                                                            \
        if (!(cond)) {                                                              \
            std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
            ++eigenlstm_test::failures();                                           \
        }                                                                           \
    } while (0)

#define CHECK_THROWS(expr, Exception)                  \
    do {                                               \
        bool thrown_ = false;                          \
        try {                                          \
            expr;                                      \
        } catch (const Exception&) {                   \
            thrown_ = true;                            \
        }                                              \
        CHECK(thrown_ && #expr " throws " #Exception); \
    } while (0)

#define TEST_MAIN_END()                                                        \
    do {                                                                       \
        if (eigenlstm_test::failures()) {                                      \
            std::fprintf(stderr, "%d check(s) failed\n", eigenlstm_test::failures()); \
            return 1;                                                          \
        }                                                                      \
        std::printf("all checks passed\n");                                    \
        return 0;                                                              \
    } while (0)
