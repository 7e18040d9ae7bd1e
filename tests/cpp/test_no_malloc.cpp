// Runs training-mode forward and backward, and eval-mode forward, with Eigen's heap
// allocation forbidden inside the time loops (EIGEN_RUNTIME_NO_MALLOC; see NoMallocScope in
// cpp/src/lstm.cpp). An allocation there aborts this program, failing the test.
#include <vector>

#include "eigenlstm/lstm.hpp"
#include "test_common.hpp"

using eigenlstm::Config;
using eigenlstm::Index;

int main() {
    for (int proj : {0, 5}) {
        Config c;
        c.input_size = 8;
        c.hidden_size = 37;
        c.num_layers = 2;
        c.bidirectional = true;
        c.proj_size = proj;
        c.dropout = 0.25;
        eigenlstm::LSTM<double> m(c, 1);
        const Index T = 6, B = 9, Hout = c.output_size(), DL = 4;
        std::vector<double> x(std::size_t(T * B * 8), 0.5), y(std::size_t(T * B * 2 * Hout));
        std::vector<double> h(std::size_t(DL * B * Hout)), cc(std::size_t(DL * B * 37));
        std::vector<double> dx(x.size()), dh0(h.size()), dc0(cc.size());
        const std::int64_t lengths[9] = {6, 1, 0, 3, 6, 2, 5, 4, 6};
        m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, lengths, T, B, true);
        m.backward(dx.data(), dh0.data(), dc0.data(), y.data(), h.data(), cc.data());
        m.forward(y.data(), h.data(), cc.data(), x.data(), nullptr, nullptr, nullptr, T, B, false);
        CHECK(y[0] == y[0]);  // reached the end without an abort
    }
    TEST_MAIN_END();
}
