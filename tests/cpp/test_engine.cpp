// Engine tests through the public C++ API only: finite-difference gradients in float64, the
// torch layout of the parameter buffer, determinism across runs and thread counts,
// memory-bounded BPTT, the last-step linear head (forward_last), and error handling.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "eigenlstm/lstm.hpp"
#include "test_common.hpp"

using eigenlstm::Config;
using eigenlstm::Index;
using eigenlstm::LSTM;
using eigenlstm::Param;
using eigenlstm_test::randn;
using eigenlstm_test::randomize;

namespace {

struct Problem {
    Index T, B;
    std::vector<double> x, h0, c0, wy, wh, wc;  // inputs and loss weights
    std::vector<std::int64_t> lengths;
};

// loss = <wy, y> + <wh, h_n> + <wc, c_n>: its gradient with respect to y, h_n, c_n is (wy, wh, wc).
double loss(LSTM<double>& m, Problem& p, bool training) {
    const Config& c = m.config();
    const Index DL = c.directions() * c.num_layers;
    std::vector<double> y(std::size_t(p.T * p.B * c.directions() * c.output_size()));
    std::vector<double> h(std::size_t(DL * p.B * c.output_size())), cn(std::size_t(DL * p.B * c.hidden_size));
    m.forward(y.data(), h.data(), cn.data(), p.x.data(), p.h0.data(), p.c0.data(),
              p.lengths.empty() ? nullptr : p.lengths.data(), p.T, p.B, training);
    double s = 0;
    for (std::size_t i = 0; i < y.size(); ++i) s += p.wy[i] * y[i];
    for (std::size_t i = 0; i < h.size(); ++i) s += p.wh[i] * h[i];
    for (std::size_t i = 0; i < cn.size(); ++i) s += p.wc[i] * cn[i];
    return s;
}

// Central differences of the loss against every parameter, x, h0 and c0.
void check_gradients(const Config& cfg, bool with_lengths) {
    std::mt19937_64 rng(42);
    LSTM<double> m(cfg, 7);
    randomize(m, rng);
    Problem p;
    p.T = 5;
    p.B = 3;
    const Index DL = cfg.directions() * cfg.num_layers;
    p.x = randn(std::size_t(p.T * p.B * cfg.input_size), rng);
    p.h0 = randn(std::size_t(DL * p.B * cfg.output_size()), rng);
    p.c0 = randn(std::size_t(DL * p.B * cfg.hidden_size), rng);
    p.wy = randn(std::size_t(p.T * p.B * cfg.directions() * cfg.output_size()), rng);
    p.wh = randn(p.h0.size(), rng);
    p.wc = randn(p.c0.size(), rng);
    if (with_lengths) p.lengths = {5, 2, 0};

    m.zero_grad();
    loss(m, p, true);
    std::vector<double> dx(p.x.size()), dh0(p.h0.size()), dc0(p.c0.size());
    m.backward(dx.data(), dh0.data(), dc0.data(), p.wy.data(), p.wh.data(), p.wc.data());
    const std::vector<double> dparams(m.grads(), m.grads() + m.num_params());

    const double eps = 1e-6;
    auto fd = [&](double& v) {
        const double saved = v;
        v = saved + eps;
        m.params_updated();
        const double up = loss(m, p, false);
        v = saved - eps;
        m.params_updated();
        const double down = loss(m, p, false);
        v = saved;
        m.params_updated();
        return (up - down) / (2 * eps);
    };
    double worst = 0;
    auto compare = [&](double analytic, double numeric) {
        const double err = std::abs(analytic - numeric) / std::max(1.0, std::abs(numeric));
        worst = std::max(worst, err);
    };
    for (Index i = 0; i < m.num_params(); ++i) compare(dparams[std::size_t(i)], fd(m.params()[i]));
    for (std::size_t i = 0; i < p.x.size(); ++i) compare(dx[i], fd(p.x[i]));
    for (std::size_t i = 0; i < p.h0.size(); ++i) compare(dh0[i], fd(p.h0[i]));
    for (std::size_t i = 0; i < p.c0.size(); ++i) compare(dc0[i], fd(p.c0[i]));
    if (!(worst < 1e-7)) std::fprintf(stderr, "worst finite-difference error %g\n", worst);
    CHECK(worst < 1e-7);
}

void test_gradients_match_finite_differences_float64() {
    Config c;
    c.input_size = 3;
    c.hidden_size = 11;  // one partial gate block
    check_gradients(c, false);
    c.num_layers = 2;
    c.bidirectional = true;
    c.proj_size = 4;
    check_gradients(c, true);
    Config r;
    r.input_size = 2;
    r.hidden_size = 19;  // a full and a partial block in float64
    r.reverse = true;
    check_gradients(r, true);
}

// Each tensor is rows x cols contiguous values at its param_offset: inside the buffer, apart
// from every other, the directions of a kind one after the other, each kind's block 64-byte
// aligned.
void test_param_offsets_give_disjoint_tensors_with_aligned_kind_blocks() {
    Config c;
    c.input_size = 5;
    c.hidden_size = 37;
    c.num_layers = 2;
    c.bidirectional = true;
    c.proj_size = 6;
    LSTM<float> m(c, 0);
    std::vector<int> owner(std::size_t(m.num_params()), 0);
    for (Index l = 0; l < 2; ++l)
        for (Param k : {Param::weight_ih, Param::weight_hh, Param::bias_ih, Param::bias_hh,
                        Param::weight_hr}) {
            Index rows, cols;
            m.param_shape(k, l, rows, cols);
            const Index first = m.param_offset(k, l, 0);
            CHECK(first * Index(sizeof(float)) % 64 == 0);
            CHECK(m.param_offset(k, l, 1) == first + rows * cols);
            for (Index d = 0; d < 2; ++d) {
                const Index off = m.param_offset(k, l, d);
                CHECK(off >= 0 && off + rows * cols <= m.num_params());
                for (Index i = off; i < off + rows * cols && i < m.num_params(); ++i)
                    ++owner[std::size_t(i)];
            }
        }
    CHECK(std::all_of(owner.begin(), owner.end(), [](int n) { return n <= 1; }));
    CHECK_THROWS(m.param_offset(Param::weight_ih, 2, 0), std::invalid_argument);
    CHECK_THROWS(m.param_offset(Param::weight_ih, 0, 2), std::invalid_argument);
    CHECK_THROWS(m.param_offset(Param::weight_ih, -1, 0), std::invalid_argument);
    c.proj_size = 0;
    c.bias = false;
    LSTM<float> plain(c, 0);
    CHECK_THROWS(plain.param_offset(Param::weight_hr, 0, 0), std::invalid_argument);
    CHECK_THROWS(plain.param_offset(Param::bias_hh, 0, 0), std::invalid_argument);
}

// The gate rows of params() are torch's i, f, g, o, H rows each: with zero weights and states,
// one step gives c = sigmoid(b_i) tanh(b_g) and h = sigmoid(b_o) tanh(c) for b = b_ih + b_hh.
// H = 20 spans a full and a partial gate block of the engine in float32 and in float64.
template <typename S>
void check_gate_rows_are_in_torch_order() {
    Config c;
    c.input_size = 3;
    c.hidden_size = 20;
    LSTM<S> m(c, 0);
    const Index H = 20, B = 2;
    std::mt19937_64 rng(5);
    const std::vector<double> bi = randn(std::size_t(4 * H), rng), bh = randn(std::size_t(4 * H), rng);
    std::copy(bi.begin(), bi.end(), m.params() + m.param_offset(Param::bias_ih, 0, 0));
    std::copy(bh.begin(), bh.end(), m.params() + m.param_offset(Param::bias_hh, 0, 0));
    m.params_updated();
    std::vector<S> x(std::size_t(B * 3), S(0)), y(std::size_t(B * H)), h(y.size()), cn(y.size());
    m.forward(y.data(), h.data(), cn.data(), x.data(), nullptr, nullptr, nullptr, 1, B, false);
    auto sigmoid = [](double v) { return 1 / (1 + std::exp(-v)); };
    const double tol = std::is_same_v<S, float> ? 1e-6 : 1e-12;
    for (Index b = 0; b < B; ++b)
        for (Index u = 0; u < H; ++u) {
            auto gate = [&](Index q) { return bi[std::size_t(q * H + u)] + bh[std::size_t(q * H + u)]; };
            const double cw = sigmoid(gate(0)) * std::tanh(gate(2));
            const double hw = sigmoid(gate(3)) * std::tanh(cw);
            CHECK(std::abs(double(cn[std::size_t(b * H + u)]) - cw) <= tol);
            CHECK(std::abs(double(h[std::size_t(b * H + u)]) - hw) <= tol);
        }
}

void test_gate_rows_of_the_parameters_are_in_torch_order() {
    check_gate_rows_are_in_torch_order<float>();
    check_gate_rows_are_in_torch_order<double>();
}

void test_results_are_bitwise_identical_across_runs_and_thread_counts() {
    Config c;
    c.input_size = 32;
    c.hidden_size = 96;
    c.num_layers = 2;
    c.bidirectional = true;
    std::mt19937_64 rng(3);
    LSTM<float> m(c, 0);
    randomize(m, rng, 0.1);
    const Index T = 20, B = 16;
    std::vector<double> xv = randn(std::size_t(T * B * 32), rng);
    std::vector<float> x(xv.begin(), xv.end());
    auto run = [&](int threads) {
        eigenlstm::set_num_threads(threads);
        std::vector<float> y(std::size_t(T * B * 2 * 96)), h(std::size_t(4 * B * 96)), cc(h.size());
        m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, nullptr, T, B, true);
        std::vector<float> dx(x.size()), dh0(h.size()), dc0(h.size());
        m.zero_grad();
        m.backward(dx.data(), dh0.data(), dc0.data(), y.data(), nullptr, nullptr);
        y.insert(y.end(), dx.begin(), dx.end());
        y.insert(y.end(), m.grads(), m.grads() + m.num_params());
        return y;
    };
    const int saved = eigenlstm::get_num_threads();
    for (int threads : {1, 2}) {
        const std::vector<float> a = run(threads), b = run(threads);
        CHECK(a == b);
    }
    eigenlstm::set_num_threads(saved);
}

// Memory-bounded BPTT (LSTM::BpttMemory): checkpoints and recomputed segments give the bits
// of full storage, and a budget too small for any segment length throws.
void test_bptt_memory_gives_the_gradients_of_full_storage() {
    Config c;
    c.input_size = 6;
    c.hidden_size = 10;
    c.num_layers = 2;
    c.bidirectional = true;
    c.peepholes = true;
    c.dropout = 0.25;
    std::mt19937_64 rng(5);
    LSTM<float> m(c, 9);
    randomize(m, rng, 0.3);
    const Index T = 150, B = 64, DL = 4, Y = T * B * 2 * 10;
    std::vector<double> xv = randn(std::size_t(T * B * 6), rng), dyv = randn(std::size_t(Y), rng);
    const std::vector<float> x(xv.begin(), xv.end()), dy(dyv.begin(), dyv.end());
    std::vector<std::int64_t> lengths(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) lengths[std::size_t(b)] = (b * 37) % (T + 1);
    using Memory = LSTM<float>::BpttMemory;
    auto run = [&](Memory::Policy policy, std::uint64_t bytes, Index& segment) {
        m.set_bptt_memory({policy, bytes});
        const std::uint64_t stream = m.rng_counter();
        std::vector<float> y(static_cast<std::size_t>(Y)), h(static_cast<std::size_t>(DL * B * 10)),
        cc(h.size());
        m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, lengths.data(), T,
                  B, true);
        m.set_rng_state(m.rng_seed(), stream);  // the next run draws the same masks
        segment = m.cache_segment();
        std::vector<float> dx(x.size()), dh0(h.size()), dc0(h.size());
        m.zero_grad();
        m.backward(dx.data(), dh0.data(), dc0.data(), dy.data(), h.data(), nullptr);
        for (const std::vector<float>* v : {&h, &cc, &dx, &dh0, &dc0})
            y.insert(y.end(), v->begin(), v->end());
        y.insert(y.end(), m.grads(), m.grads() + m.num_params());
        return y;
    };
    Index full_segment = 0, segment = 0;
    const std::vector<float> full = run(Memory::Policy::full, 0, full_segment);
    CHECK(full_segment == T);
    CHECK(run(Memory::Policy::sqrt, 0, segment) == full);
    CHECK(segment == 16);  // ceil(sqrt(150)) = 13, rounded up to chunks of 8 steps (512 rows)
    CHECK(run(Memory::Policy::bytes, 2 << 20, segment) == full);
    CHECK(segment < T);
    m.set_bptt_memory({Memory::Policy::bytes, 1000});
    std::vector<float> y(static_cast<std::size_t>(Y)), h(static_cast<std::size_t>(DL * B * 10)),
        cc(h.size());
    CHECK_THROWS(m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, nullptr, T,
                           B, true),
                 std::invalid_argument);
    CHECK(m.cache_bytes() == 0);
}

void test_bad_input_throws_invalid_argument() {
    Config c;
    c.input_size = 0;
    c.hidden_size = 4;
    CHECK_THROWS(LSTM<float>(c, 0), std::invalid_argument);
    c.input_size = 2;
    c.proj_size = 4;
    CHECK_THROWS(LSTM<float>(c, 0), std::invalid_argument);
    c.proj_size = 0;
    c.dropout = 1.5;
    CHECK_THROWS(LSTM<float>(c, 0), std::invalid_argument);
    c.dropout = 0;
    CHECK_THROWS(eigenlstm::set_num_threads(0), std::invalid_argument);

    LSTM<float> m(c, 0);
    std::vector<float> x(2 * 3 * 2), y(2 * 3 * 4), h(3 * 4), cc(3 * 4), dx(x.size());
    const std::int64_t bad[3] = {1, 3, 0};  // 3 > T = 2
    CHECK_THROWS(m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, bad, 2, 3, true),
                 std::invalid_argument);
    CHECK_THROWS(m.backward(dx.data(), h.data(), cc.data(), y.data(), nullptr, nullptr), std::logic_error);
}

// forward_last = the eval forward's output at each sequence's last step through a linear
// layer, for time-major and batch-first input, with lengths and without.
void test_forward_last_is_the_last_step_of_forward_through_a_linear_layer() {
    Config c;
    c.input_size = 5;
    c.hidden_size = 20;
    c.num_layers = 2;
    c.bidirectional = true;
    LSTM<double> m(c, 0);
    std::mt19937_64 rng(11);
    randomize(m, rng);
    const Index T = 6, B = 4, I = 5, O = 3, DH = 2 * 20;
    const std::vector<double> x = randn(std::size_t(T * B * I), rng);
    const std::vector<double> W = randn(std::size_t(O * DH), rng), bias = randn(std::size_t(O), rng);
    std::vector<double> xbf(x.size());  // [B, T, I]
    for (Index t = 0; t < T; ++t)
        for (Index b = 0; b < B; ++b)
            for (Index i = 0; i < I; ++i) xbf[std::size_t((b * T + t) * I + i)] = x[std::size_t((t * B + b) * I + i)];
    const std::int64_t ragged[B] = {6, 1, 4, 6};
    for (const std::int64_t* lengths : {static_cast<const std::int64_t*>(nullptr), ragged}) {
        std::vector<double> y(std::size_t(T * B * DH)), h(std::size_t(4 * B * 20)), cc(h.size());
        m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, lengths, T, B, false);
        for (bool batch_first : {false, true}) {
            std::vector<double> out(std::size_t(B * O));
            m.forward_last(out.data(), batch_first ? xbf.data() : x.data(), lengths, T, B,
                           batch_first, W.data(), bias.data(), O);
            for (Index b = 0; b < B; ++b) {
                const Index last = lengths ? lengths[b] - 1 : T - 1;
                for (Index o = 0; o < O; ++o) {
                    double want = bias[std::size_t(o)];
                    for (Index j = 0; j < DH; ++j)
                        want += W[std::size_t(o * DH + j)] * y[std::size_t((last * B + b) * DH + j)];
                    CHECK(std::abs(out[std::size_t(b * O + o)] - want) <= 1e-12 * (1 + std::abs(want)));
                }
            }
        }
    }
    std::vector<double> out(std::size_t(B * O));
    const std::int64_t zero[B] = {6, 0, 4, 6};  // a last step needs a length >= 1
    CHECK_THROWS(m.forward_last(out.data(), x.data(), zero, T, B, false, W.data(), bias.data(), O),
                 std::invalid_argument);
    CHECK_THROWS(m.forward_last(out.data(), x.data(), nullptr, 0, B, false, W.data(), bias.data(), O),
                 std::invalid_argument);
}

void test_huge_sizes_throw_bad_alloc() {
    Config c;
    c.input_size = Index(1) << 40;
    c.hidden_size = Index(1) << 20;
    CHECK_THROWS(LSTM<float>(c, 0), std::bad_alloc);
}

// A QuantizedLSTM runs close to the float32 LSTM it was quantized from (the Python tests
// hold its arithmetic exactly), with every option, and refuses what it cannot run.
void test_quantized_lstm_is_close_to_float32_and_checks_its_arguments() {
    Config c;
    c.input_size = 12;
    c.hidden_size = 40;
    c.num_layers = 2;
    c.bidirectional = true;
    c.proj_size = 10;
    LSTM<float> m(c, 0);
    std::mt19937_64 rng(12);
    randomize(m, rng, 0.2);
    const Index T = 9, B = 5, DH = 2 * 10, DL = 4;
    const std::vector<double> xd = randn(std::size_t(T * B * 12), rng);
    const std::vector<float> x(xd.begin(), xd.end());
    const std::int64_t lengths[B] = {9, 3, 0, 7, 1};
    std::vector<float> y(std::size_t(T * B * DH)), h(std::size_t(DL * B * 10)), cc(std::size_t(DL * B * 40));
    m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, lengths, T, B, false);
    for (auto p : {eigenlstm::Precision::int8, eigenlstm::Precision::bfloat16}) {
        eigenlstm_test::QuantizedStore store;
        const eigenlstm::QuantizedWeights w = eigenlstm_test::quantized_weights(m, p, store);
        eigenlstm::QuantizedLSTM q(c, p, w);
        CHECK(q.precision() == p && q.config().proj_size == 10);
        std::vector<float> yq(y.size()), hq(h.size()), cq(cc.size());
        q.forward(yq.data(), hq.data(), cq.data(), x.data(), nullptr, nullptr, lengths, T, B);
        double err = 0, norm = 0;
        for (std::size_t i = 0; i < y.size(); ++i) {
            err += (double(yq[i]) - y[i]) * (double(yq[i]) - y[i]);
            norm += double(y[i]) * y[i];
        }
        CHECK(std::sqrt(err / norm) < 2e-2);
        CHECK(!eigenlstm::quantized_kernel(p).empty());
        eigenlstm::QuantizedWeights missing = w;
        missing.weight_hr.pop_back();
        CHECK_THROWS(eigenlstm::QuantizedLSTM(c, p, missing), std::invalid_argument);
        Config dropout = c;
        dropout.dropout = 0.5;
        CHECK_THROWS(eigenlstm::QuantizedLSTM(dropout, p, w), std::invalid_argument);
        CHECK_THROWS(q.forward(yq.data(), hq.data(), cq.data(), x.data(), nullptr, nullptr, nullptr,
                               -1, B),
                     std::invalid_argument);
    }
    CHECK_THROWS(eigenlstm::QuantizedLinear(0, 3, eigenlstm::Precision::bfloat16, x.data(), nullptr,
                                            nullptr),
                 std::invalid_argument);
    CHECK_THROWS(eigenlstm::QuantizedLinear(3, 3, eigenlstm::Precision::int8, x.data(), nullptr,
                                            nullptr),
                 std::invalid_argument);
}

}  // namespace

int main() {
    if (const int skip = eigenlstm_test::skip_unless_requested_level_runs()) return skip;
    test_gradients_match_finite_differences_float64();
    test_param_offsets_give_disjoint_tensors_with_aligned_kind_blocks();
    test_gate_rows_of_the_parameters_are_in_torch_order();
    test_results_are_bitwise_identical_across_runs_and_thread_counts();
    test_bptt_memory_gives_the_gradients_of_full_storage();
    test_bad_input_throws_invalid_argument();
    test_forward_last_is_the_last_step_of_forward_through_a_linear_layer();
    test_huge_sizes_throw_bad_alloc();
    test_quantized_lstm_is_close_to_float32_and_checks_its_arguments();
    TEST_MAIN_END();
}
