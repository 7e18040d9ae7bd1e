// A minimal check harness for the C++ tests (no framework needed): CHECK records a failure
// with file and line and the test binary exits non-zero if any check failed.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "eigenlstm/lstm.hpp"

namespace eigenlstm_test {
inline int& failures() {
    static int n = 0;
    return n;
}

// ctest runs each test once per level built, with EIGENLSTM_MAX_ISA set to it
// (tests/cpp/CMakeLists.txt). A level this CPU cannot run would silently fall back to a lower
// one: such a run is reported as skipped (exit code kSkip) instead. Returns 0 to go on.
constexpr int kSkip = 77;
inline int skip_unless_requested_level_runs() {
    const char* want = std::getenv("EIGENLSTM_MAX_ISA");
    const std::vector<std::string> levels = eigenlstm::isa_available();
    if (want && *want && std::find(levels.begin(), levels.end(), want) == levels.end()) {
        std::printf("level %s: this CPU cannot run it; skipped\n", want);
        return kSkip;
    }
    std::printf("level %s\n", eigenlstm::isa().c_str());
    return 0;
}

// n normal values with standard deviation `scale`.
inline std::vector<double> randn(std::size_t n, std::mt19937_64& rng, double scale = 1.0) {
    std::normal_distribution<double> dist(0.0, scale);
    std::vector<double> v(n);
    for (double& x : v) x = dist(rng);
    return v;
}

// Fill every parameter with random values (normal, standard deviation `scale`), each tensor
// written in torch layout at its param_offset().
template <typename S>
void randomize(eigenlstm::LSTM<S>& m, std::mt19937_64& rng, double scale = 0.4) {
    using eigenlstm::Index;
    using eigenlstm::Param;
    const eigenlstm::Config& c = m.config();
    for (Index l = 0; l < c.num_layers; ++l)
        for (Index d = 0; d < c.directions(); ++d)
            for (Param k : {Param::weight_ih, Param::weight_hh, Param::bias_ih, Param::bias_hh,
                            Param::weight_hr}) {
                if (!m.has_param(k)) continue;
                Index rows, cols;
                m.param_shape(k, l, rows, cols);
                const std::vector<double> v = randn(std::size_t(rows * cols), rng, scale);
                std::copy(v.begin(), v.end(), m.params() + m.param_offset(k, l, d));
            }
    m.params_updated();
}

// The weights of `m` in reduced precision, for a QuantizedLSTM (lstm.hpp): int8 symmetric per
// row (scale max|row| / 127, round half to even) or bfloat16 (round to nearest even). The
// QuantizedWeights point into `store`, which must outlive their use.
struct QuantizedStore {
    std::vector<std::vector<std::int8_t>> i8;
    std::vector<std::vector<std::uint16_t>> bf16;
    std::vector<std::vector<float>> f32;
};
inline eigenlstm::QuantizedWeights quantized_weights(const eigenlstm::LSTM<float>& m,
                                                     eigenlstm::Precision p, QuantizedStore& store) {
    using eigenlstm::Index;
    using eigenlstm::Param;
    const eigenlstm::Config& c = m.config();
    eigenlstm::QuantizedWeights w;
    // enough room that no vector reallocates while pointers into earlier ones are held
    store.i8.reserve(64);
    store.bf16.reserve(64);
    store.f32.reserve(128);
    auto weight = [&](Param k, Index l, Index d, std::vector<const void*>& values,
                      std::vector<const float*>& scales) {
        Index rows, cols;
        m.param_shape(k, l, rows, cols);
        const float* src = m.params() + m.param_offset(k, l, d);
        if (p == eigenlstm::Precision::bfloat16) {
            std::vector<std::uint16_t> v(static_cast<std::size_t>(rows * cols));
            for (std::size_t i = 0; i < v.size(); ++i) {
                std::uint32_t b;
                std::memcpy(&b, &src[i], 4);
                v[i] = std::uint16_t((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
            }
            store.bf16.push_back(std::move(v));
            values.push_back(store.bf16.back().data());
            return;
        }
        std::vector<std::int8_t> v(static_cast<std::size_t>(rows * cols));
        std::vector<float> s(static_cast<std::size_t>(rows));
        for (Index r = 0; r < rows; ++r) {
            float amax = 0;
            for (Index j = 0; j < cols; ++j) amax = std::max(amax, std::abs(src[r * cols + j]));
            s[std::size_t(r)] = amax > 0 ? amax / 127 : 1.0f;
            for (Index j = 0; j < cols; ++j)
                v[std::size_t(r * cols + j)] =
                    std::int8_t(std::nearbyint(src[r * cols + j] / s[std::size_t(r)]));
        }
        store.i8.push_back(std::move(v));
        store.f32.push_back(std::move(s));
        values.push_back(store.i8.back().data());
        scales.push_back(store.f32.back().data());
    };
    for (Index l = 0; l < c.num_layers; ++l)
        for (Index d = 0; d < c.directions(); ++d) {
            weight(Param::weight_ih, l, d, w.weight_ih, w.scale_ih);
            weight(Param::weight_hh, l, d, w.weight_hh, w.scale_hh);
            if (c.proj_size > 0) weight(Param::weight_hr, l, d, w.weight_hr, w.scale_hr);
            if (c.bias) {
                w.bias_ih.push_back(m.params() + m.param_offset(Param::bias_ih, l, d));
                w.bias_hh.push_back(m.params() + m.param_offset(Param::bias_hh, l, d));
            }
        }
    return w;
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
