// The boundary between the front end (lstm.cpp and dispatch.cpp, compiled for the baseline
// ISA) and the compute back ends, one shared object per ISA level (libeigenlstm_<level>.so),
// each holding the whole engine compiled for that level. Only this interface crosses it: no
// Eigen type (whose alignment differs between levels) and no inline function that both sides
// instantiate with different flags.
#pragma once

#include <cstdint>

#include "eigenlstm/lstm.hpp"
#include "layout.hpp"

namespace eigenlstm {
namespace detail {

// One LSTM's compute state in a back end: packed weights, the training cache, workspaces.
// The front end owns the parameters, gradients and the dropout stream's state, and passes
// what each call needs. Arguments and their shapes are documented on LSTM<S> in lstm.hpp.
template <typename S>
class Engine {
public:
    virtual ~Engine() = default;
    // Rebuild everything derived from the parameters (the engine-order copy, packed panels,
    // summed biases).
    virtual void params_updated() = 0;
    // seed, counter: the dropout stream position this call uses (training only).
    virtual void forward(S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                         const std::int64_t* lengths, Index T, Index B, bool training,
                         std::uint64_t seed, std::uint64_t counter) = 0;
    virtual void forward_last(S* out, const S* x, const std::int64_t* lengths, Index T, Index B,
                              bool batch_first, const S* W, const S* bias, Index O) = 0;
    virtual void backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n) = 0;
    virtual bool cached_sizes(Index& T, Index& B) const = 0;
    // Memory-bounded BPTT (LSTM<S>::BpttMemory): the policy of the next training forwards,
    // and what the last one keeps.
    virtual void set_bptt_memory(const typename LSTM<S>::BpttMemory& memory) = 0;
    virtual std::uint64_t cache_bytes() const = 0;
    virtual Index cache_segment() const = 0;
};

// An inference-only LSTM in reduced precision (QuantizedLSTM in lstm.hpp): the weights packed
// at construction, then eval forwards with the arguments of Engine<float>::forward.
class QuantizedEngine {
public:
    virtual ~QuantizedEngine() = default;
    virtual void forward(float* y, float* h_n, float* c_n, const float* x, const float* h0,
                         const float* c0, const std::int64_t* lengths, Index T, Index B) = 0;
};

// y[M, N] = x[M, K] W^T + bias with W [N, K] in reduced precision (QuantizedLinear).
class QuantizedMatrix {
public:
    virtual ~QuantizedMatrix() = default;
    virtual void multiply(float* y, const float* x, Index M) const = 0;
};

// A back end's entry points. kBackendAbi changes whenever this struct or Engine changes, so
// that a stale shared object is refused instead of called with the wrong layout.
constexpr int kBackendAbi = 7;

struct Backend {
    int abi;
    const char* isa;        // the level: "generic", "avx2", "avx512"
    const char* compiler;   // compiler and version the back end was built with
    const char* eigen;      // Eigen version, "3.4.0"
    const char* simd;       // Eigen's SIMD instruction sets in this back end
    int openmp;             // _OPENMP of the back end (yyyymm), 0 without OpenMP
    // The engine reads parameters and accumulates gradients through these pointers, both in
    // torch's layout (layout.hpp); they and the layout outlive the engine.
    Engine<float>* (*make_f32)(const Layout<float>& layout, const float* params, float* grads);
    Engine<double>* (*make_f64)(const Layout<double>& layout, const double* params, double* grads);
    void (*set_num_threads)(int n);
    int (*get_num_threads)();
    void (*set_flush_denormal)(bool on);
    bool (*get_flush_denormal)();
    // Test hook: while armed, the next multi-threaded parallel region throws std::bad_alloc in
    // one of its threads, as an allocation failure inside it would, and disarms
    // (tests/test_reliability_memory.py).
    void (*fail_next_parallel_region)(bool armed);
    // The features (lstm.hpp: isa_features) the front end allows; set once, before any engine.
    void (*set_features)(bool vnni, bool bf16, bool amx);
    const char* (*quantized_kernel)(Precision precision);
    // Validated by the front end: the config (dropout 0) and every pointer weights needs. The
    // layout outlives the engine; the weights are copied.
    QuantizedEngine* (*make_quantized)(const Layout<float>& layout, Precision precision,
                                       const QuantizedWeights& weights);
    QuantizedMatrix* (*make_quantized_matrix)(Index in_features, Index out_features,
                                              Precision precision, const void* weight,
                                              const float* scale, const float* bias);
};

}  // namespace detail
}  // namespace eigenlstm

// Exported by each libeigenlstm_<level>.so; everything else in it is hidden.
#define EIGENLSTM_BACKEND_SYMBOL "eigenlstm_backend"
extern "C" const eigenlstm::detail::Backend* eigenlstm_backend();
