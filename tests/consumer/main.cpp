// A downstream program of the installed C++ library: a tiny float32 forward through
// eigenlstm::LSTM with weights written in torch layout at their param_offset(). It prints the
// weights, the input and the results ("name v0 v1 ..." lines) for tests/test_packaging.py to
// recompute.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include <eigenlstm/lstm.hpp>

using eigenlstm::Index;
using eigenlstm::Param;

static void print(const char* name, const std::vector<float>& v) {
    std::printf("%s", name);
    for (float x : v) std::printf(" %.9g", x);
    std::printf("\n");
}

int main() {
    const Index T = 5, B = 2, I = 3, H = 4;
    eigenlstm::Config config;
    config.input_size = I;
    config.hidden_size = H;
    eigenlstm::LSTM<float> lstm(config, 0);

    // Deterministic values in (-0.5, 0.5) for every parameter and the input.
    int k = 0;
    auto fill = [&k](std::vector<float>& v) { for (float& x : v) x = 0.5f * std::sin(float(++k)); };
    const char* names[] = {"weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"};
    const Param kinds[] = {Param::weight_ih, Param::weight_hh, Param::bias_ih, Param::bias_hh};
    for (int p = 0; p < 4; ++p) {
        Index rows, cols;
        lstm.param_shape(kinds[p], 0, rows, cols);
        std::vector<float> w(std::size_t(rows * cols));
        fill(w);
        std::copy(w.begin(), w.end(), lstm.params() + lstm.param_offset(kinds[p], 0, 0));
        print(names[p], w);
    }
    lstm.params_updated();

    std::vector<float> x(std::size_t(T * B * I)), y(std::size_t(T * B * H));
    std::vector<float> h_n(std::size_t(B * H)), c_n(std::size_t(B * H));
    fill(x);
    lstm.forward(y.data(), h_n.data(), c_n.data(), x.data(), nullptr, nullptr, nullptr, T, B,
                 false);
    print("x", x);
    print("y", y);
    print("h_n", h_n);
    print("c_n", c_n);
    std::printf("isa %s\nlibrary %s\n", eigenlstm::isa().c_str(),
                eigenlstm::build_info().library.c_str());
    return 0;
}
