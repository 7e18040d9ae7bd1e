// The front end of the engine: configuration, the parameter buffers (in torch's layout),
// the dropout stream's state, and the public LSTM<S> methods, which hand the compute to the
// back end chosen at run time (dispatch.cpp). Compiled for the baseline ISA: nothing here
// runs vector code of a higher level.
#include "eigenlstm/lstm.hpp"

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <utility>

#include "backend.hpp"
#include "buffer.hpp"
#include "dispatch.hpp"
#include "layout.hpp"

namespace eigenlstm {

// Throws std::invalid_argument(message) unless cond holds; the message is built on failure only.
#define EIGENLSTM_REQUIRE(cond, message)                          \
    do {                                                          \
        if (!(cond)) throw std::invalid_argument(message);        \
    } while (false)

void Config::validate() const {
    EIGENLSTM_REQUIRE(input_size > 0, "input_size must be > 0, got " + std::to_string(input_size));
    EIGENLSTM_REQUIRE(hidden_size > 0, "hidden_size must be > 0, got " + std::to_string(hidden_size));
    EIGENLSTM_REQUIRE(num_layers > 0, "num_layers must be > 0, got " + std::to_string(num_layers));
    EIGENLSTM_REQUIRE(proj_size >= 0 && proj_size < hidden_size,
                      "proj_size must be in [0, hidden_size=" + std::to_string(hidden_size) +
                          "), got " + std::to_string(proj_size));
    EIGENLSTM_REQUIRE(dropout >= 0.0 && dropout <= 1.0, "dropout must be in [0, 1], got " + std::to_string(dropout));
    EIGENLSTM_REQUIRE(!(reverse && bidirectional), "reverse must be false when bidirectional is true");
    // !(x >= 0) also refuses NaN
    EIGENLSTM_REQUIRE(cell_clip >= 0.0, "cell_clip must be >= 0 (0: none), got " + std::to_string(cell_clip));
    EIGENLSTM_REQUIRE(proj_clip >= 0.0, "proj_clip must be >= 0 (0: none), got " + std::to_string(proj_clip));
    EIGENLSTM_REQUIRE(recurrent_dropout >= 0.0 && recurrent_dropout < 1.0,
                      "recurrent_dropout must be in [0, 1), got " + std::to_string(recurrent_dropout));
    EIGENLSTM_REQUIRE(weight_drop >= 0.0 && weight_drop < 1.0,
                      "weight_drop must be in [0, 1), got " + std::to_string(weight_drop));
    EIGENLSTM_REQUIRE(zoneout_c >= 0.0 && zoneout_c <= 1.0,
                      "zoneout_c must be in [0, 1], got " + std::to_string(zoneout_c));
    EIGENLSTM_REQUIRE(zoneout_h >= 0.0 && zoneout_h <= 1.0,
                      "zoneout_h must be in [0, 1], got " + std::to_string(zoneout_h));
    EIGENLSTM_REQUIRE(proj_clip == 0.0 || proj_size > 0,
                      "proj_clip needs proj_size > 0, got proj_clip=" + std::to_string(proj_clip) +
                          " with proj_size=0");
}

const char* param_name(Param kind) {
    static const char* const names[kNumParamKinds] = {
        "weight_ih",           "weight_hh",          "bias_ih",
        "bias_hh",             "weight_hr",          "weight_peephole",
        "layer_norm_ih_weight", "layer_norm_ih_bias", "layer_norm_hh_weight",
        "layer_norm_hh_bias",  "layer_norm_c_weight", "layer_norm_c_bias"};
    return names[int(kind)];
}

const char* param_requirement(Param kind) {
    switch (kind) {
        case Param::bias_ih: case Param::bias_hh: return " (bias is false)";
        case Param::weight_hr: return " (proj_size is 0)";
        case Param::weight_peephole: return " (peepholes is false)";
        case Param::layer_norm_ih_weight: case Param::layer_norm_ih_bias:
        case Param::layer_norm_hh_weight: case Param::layer_norm_hh_bias:
        case Param::layer_norm_c_weight: case Param::layer_norm_c_bias:
            return " (layer_norm is false)";
        default: return "";
    }
}

void set_num_threads(int n) {
    EIGENLSTM_REQUIRE(n >= 1, "num_threads must be >= 1, got " + std::to_string(n));
    detail::backend().set_num_threads(n);
}

int get_num_threads() { return detail::backend().get_num_threads(); }

template <typename S>
struct LSTM<S>::Impl {
    detail::Layout<S> layout;
    detail::Buffer<S> params, grads;   // [layout.size] torch layout, padding zero
    std::uint64_t seed = 0, counter = 0;
    BpttMemory bptt_memory;
    std::unique_ptr<detail::Engine<S>> engine;

    Impl(const Config& c, std::uint64_t s) : layout(c), seed(s) {
        const detail::Backend& b = detail::backend();
        params.resize(layout.size);
        params.zero();
        grads.resize(layout.size);
        grads.zero();
        if constexpr (std::is_same_v<S, float>)
            engine.reset(b.make_f32(layout, params.data(), grads.data()));
        else
            engine.reset(b.make_f64(layout, params.data(), grads.data()));
    }
};

template <typename S>
LSTM<S>::LSTM(const Config& config, std::uint64_t seed)
    : impl_(std::make_unique<Impl>(config, seed)) {}
template <typename S> LSTM<S>::~LSTM() = default;
template <typename S> LSTM<S>::LSTM(LSTM&&) noexcept = default;
template <typename S> LSTM<S>& LSTM<S>::operator=(LSTM&&) noexcept = default;

template <typename S> const Config& LSTM<S>::config() const { return impl_->layout.cfg; }
template <typename S> Index LSTM<S>::num_params() const { return impl_->params.size(); }
template <typename S> S* LSTM<S>::params() { return impl_->params.data(); }
template <typename S> const S* LSTM<S>::params() const { return impl_->params.data(); }
template <typename S> S* LSTM<S>::grads() { return impl_->grads.data(); }
template <typename S> const S* LSTM<S>::grads() const { return impl_->grads.data(); }
template <typename S> void LSTM<S>::params_updated() { impl_->engine->params_updated(); }
template <typename S> void LSTM<S>::zero_grad() { impl_->grads.zero(); }
template <typename S> bool LSTM<S>::has_param(Param kind) const { return impl_->layout.has(kind); }

template <typename S>
void LSTM<S>::param_shape(Param kind, Index layer, Index& rows, Index& cols) const {
    const detail::Layout<S>& m = impl_->layout;
    EIGENLSTM_REQUIRE(layer >= 0 && layer < m.L,
                      "layer must be in [0, " + std::to_string(m.L) + "), got " +
                          std::to_string(layer));
    rows = m.rows(kind);
    cols = m.cols(kind, layer);
}

template <typename S>
Index LSTM<S>::param_offset(Param kind, Index layer, Index dir) const {
    const detail::Layout<S>& m = impl_->layout;
    EIGENLSTM_REQUIRE(m.has(kind), std::string("param_offset: this LSTM has no ") +
                                       param_name(kind) + param_requirement(kind));
    EIGENLSTM_REQUIRE(layer >= 0 && layer < m.L,
                      "param_offset: layer must be in [0, " + std::to_string(m.L) + "), got " +
                          std::to_string(layer));
    EIGENLSTM_REQUIRE(dir >= 0 && dir < m.D,
                      "param_offset: direction must be in [0, " + std::to_string(m.D) + "), got " +
                          std::to_string(dir));
    return m.tensor_offset(kind, layer, dir);
}

template <typename S> std::uint64_t LSTM<S>::rng_seed() const { return impl_->seed; }
template <typename S> std::uint64_t LSTM<S>::rng_counter() const { return impl_->counter; }
template <typename S>
void LSTM<S>::set_rng_state(std::uint64_t seed, std::uint64_t counter) {
    impl_->seed = seed;
    impl_->counter = counter;
}

template <typename S>
void LSTM<S>::forward(S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                      const std::int64_t* lengths, Index T, Index B, bool training) {
    Impl& m = *impl_;
    m.engine->forward(y, h_n, c_n, x, h0, c0, lengths, T, B, training, m.seed, m.counter);
    // Each training-mode forward that draws masks takes the next counter (only once it
    // succeeded: a failed call changes nothing).
    if (training && m.layout.cfg.draws_masks()) ++m.counter;
}

template <typename S>
void LSTM<S>::forward_last(S* out, const S* x, const std::int64_t* lengths, Index T, Index B,
                           bool batch_first, const S* W, const S* bias, Index O) {
    impl_->engine->forward_last(out, x, lengths, T, B, batch_first, W, bias, O);
}

template <typename S>
void LSTM<S>::backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n) {
    impl_->engine->backward(dx, dh0, dc0, dy, dh_n, dc_n);
}

template <typename S>
void LSTM<S>::set_bptt_memory(const BpttMemory& memory) {
    impl_->engine->set_bptt_memory(memory);
    impl_->bptt_memory = memory;
}
template <typename S>
typename LSTM<S>::BpttMemory LSTM<S>::bptt_memory() const {
    return impl_->bptt_memory;
}
template <typename S> std::uint64_t LSTM<S>::cache_bytes() const { return impl_->engine->cache_bytes(); }
template <typename S> Index LSTM<S>::cache_segment() const { return impl_->engine->cache_segment(); }

template <typename S>
bool LSTM<S>::cached_sizes(Index& T, Index& B) const {
    return impl_->engine->cached_sizes(T, B);
}

template class LSTM<float>;
template class LSTM<double>;

// ---- reduced precision -----------------------------------------------------------------------

namespace {
// Throws std::invalid_argument unless `v` holds `n` non-null pointers.
template <typename P>
void require_pointers(const std::vector<P>& v, Index n, const char* name) {
    EIGENLSTM_REQUIRE(Index(v.size()) == n, std::string("QuantizedLSTM: ") + name + " must hold " +
                                                std::to_string(n) + " pointers (layers x directions), got " +
                                                std::to_string(v.size()));
    for (std::size_t k = 0; k < v.size(); ++k)
        EIGENLSTM_REQUIRE(v[k] != nullptr, std::string("QuantizedLSTM: ") + name + "[" +
                                               std::to_string(k) + "] is null");
}

// Throws std::invalid_argument unless the n int8 values at w are in [-127, 127]: -128 has no
// positive counterpart (symmetric quantization), and the AVX2 kernel bounds its 16-bit pair
// sums with |w| <= 127.
void require_symmetric(const char* fn, const std::string& name, const void* w, Index n) {
    const auto* q = static_cast<const std::int8_t*>(w);
    EIGENLSTM_REQUIRE(std::find(q, q + n, std::int8_t(-128)) == q + n,
                      std::string(fn) + ": " + name + " must hold values in [-127, 127], got -128");
}

// Throws std::invalid_argument unless an int8 product's depth K fits its int32 sums.
void require_int8_depth(const char* fn, const char* name, Index K) {
    EIGENLSTM_REQUIRE(K <= kMaxInt8Depth, std::string(fn) + ": " + name + " must be <= " +
                                              std::to_string(kMaxInt8Depth) +
                                              " for int8 (its int32 sums would overflow), got " +
                                              std::to_string(K));
}
}  // namespace

struct QuantizedLSTM::Impl {
    detail::Layout<float> layout;  // validates the config
    Precision precision;
    std::unique_ptr<detail::QuantizedEngine> engine;
    Impl(const Config& c, Precision p) : layout(c), precision(p) {}
};

QuantizedLSTM::QuantizedLSTM(const Config& config, Precision precision,
                             const QuantizedWeights& w)
    : impl_(std::make_unique<Impl>(config, precision)) {
    // the options that act in training mode only
    for (const auto& [name, value] :
         {std::pair<const char*, double>{"dropout", config.dropout},
          {"recurrent_dropout", config.recurrent_dropout},
          {"weight_drop", config.weight_drop}})
        EIGENLSTM_REQUIRE(value == 0.0, std::string("QuantizedLSTM: ") + name +
                                            " must be 0 (inference only), got " +
                                            std::to_string(value));
    EIGENLSTM_REQUIRE(!config.layer_norm,
                      "QuantizedLSTM: layer_norm must be false (reduced precision has no layer "
                      "norm kernels)");
    const Index n = config.num_layers * config.directions();
    const bool int8 = precision == Precision::int8;
    require_pointers(w.weight_ih, n, "weight_ih");
    require_pointers(w.weight_hh, n, "weight_hh");
    if (int8) {
        require_pointers(w.scale_ih, n, "scale_ih");
        require_pointers(w.scale_hh, n, "scale_hh");
    }
    if (config.proj_size > 0) {
        require_pointers(w.weight_hr, n, "weight_hr");
        if (int8) require_pointers(w.scale_hr, n, "scale_hr");
    }
    if (config.bias) {
        require_pointers(w.bias_ih, n, "bias_ih");
        require_pointers(w.bias_hh, n, "bias_hh");
    }
    if (config.peepholes) require_pointers(w.peephole, n, "peephole");
    if (int8) {
        const char* fn = "QuantizedLSTM";
        const Index H = config.hidden_size, P = config.proj_size, Hout = config.output_size(),
                    D = config.directions(), G = config.gate_size();
        require_int8_depth(fn, "input_size", config.input_size);
        if (config.num_layers > 1) require_int8_depth(fn, "the layers' input size D*H_out", D * Hout);
        require_int8_depth(fn, "H_out", Hout);
        require_int8_depth(fn, "hidden_size", H);
        for (Index l = 0; l < config.num_layers; ++l)
            for (Index d = 0; d < D; ++d) {
                const std::size_t k = std::size_t(l * D + d);
                const std::string sfx = "_l" + std::to_string(l) + (d ? "_reverse" : "");
                require_symmetric(fn, "weight_ih" + sfx, w.weight_ih[k],
                                  G * (l == 0 ? config.input_size : D * Hout));
                require_symmetric(fn, "weight_hh" + sfx, w.weight_hh[k], G * Hout);
                if (P > 0) require_symmetric(fn, "weight_hr" + sfx, w.weight_hr[k], P * H);
            }
    }
    impl_->engine.reset(detail::backend().make_quantized(impl_->layout, precision, w));
}
QuantizedLSTM::~QuantizedLSTM() = default;
QuantizedLSTM::QuantizedLSTM(QuantizedLSTM&&) noexcept = default;
QuantizedLSTM& QuantizedLSTM::operator=(QuantizedLSTM&&) noexcept = default;
const Config& QuantizedLSTM::config() const { return impl_->layout.cfg; }
Precision QuantizedLSTM::precision() const { return impl_->precision; }

void QuantizedLSTM::forward(float* y, float* h_n, float* c_n, const float* x, const float* h0,
                            const float* c0, const std::int64_t* lengths, Index T, Index B) {
    impl_->engine->forward(y, h_n, c_n, x, h0, c0, lengths, T, B);
}

struct QuantizedLinear::Impl {
    Index in_features, out_features;
    std::unique_ptr<detail::QuantizedMatrix> matrix;
};

QuantizedLinear::QuantizedLinear(Index in_features, Index out_features, Precision precision,
                                 const void* weight, const float* scale, const float* bias)
    : impl_(std::make_unique<Impl>()) {
    EIGENLSTM_REQUIRE(in_features >= 1, "QuantizedLinear: in_features must be >= 1, got " +
                                            std::to_string(in_features));
    EIGENLSTM_REQUIRE(out_features >= 1, "QuantizedLinear: out_features must be >= 1, got " +
                                             std::to_string(out_features));
    EIGENLSTM_REQUIRE(weight != nullptr, "QuantizedLinear: weight is null");
    EIGENLSTM_REQUIRE(precision != Precision::int8 || scale != nullptr,
                      "QuantizedLinear: an int8 weight needs its scales, got null");
    if (precision == Precision::int8) {
        require_int8_depth("QuantizedLinear", "in_features", in_features);
        require_symmetric("QuantizedLinear", "weight", weight, in_features * out_features);
    }
    impl_->in_features = in_features;
    impl_->out_features = out_features;
    impl_->matrix.reset(detail::backend().make_quantized_matrix(in_features, out_features,
                                                                precision, weight, scale, bias));
}
QuantizedLinear::~QuantizedLinear() = default;
QuantizedLinear::QuantizedLinear(QuantizedLinear&&) noexcept = default;
QuantizedLinear& QuantizedLinear::operator=(QuantizedLinear&&) noexcept = default;

Index QuantizedLinear::in_features() const { return impl_->in_features; }
Index QuantizedLinear::out_features() const { return impl_->out_features; }

void QuantizedLinear::forward(float* y, const float* x, Index M) const {
    impl_->matrix->multiply(y, x, M);
}

}  // namespace eigenlstm
