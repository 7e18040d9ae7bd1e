// eigenlstm public C++ API: a stacked, optionally bidirectional and projected LSTM with the
// semantics of torch.nn.LSTM, in float32 or float64. No Python and no Eigen types appear here:
// arrays are dense row-major pointers, sizes come from Config and from each call (T, B).
// Input validation of user data (shapes, dtypes) is the caller's job; this API checks sizes.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace eigenlstm {

using Index = std::ptrdiff_t;

// Size letters used throughout the engine:
//   T time steps, B batch, I input size, H hidden (cell) size, P projection size,
//   Hout = P if P > 0 else H, D directions (1 or 2), L layers, G = 4H gate rows (3H with
//   config.cifg).

constexpr double kLayerNormEps = 1e-5;  // Config::layer_norm: var + eps under the square root

struct Config {
    Index input_size = 0;     // I
    Index hidden_size = 0;    // H
    Index num_layers = 1;     // L
    bool bias = true;         // b_ih and b_hh exist (otherwise they are fixed at zero)
    bool bidirectional = false;
    Index proj_size = 0;      // P; 0 means no projection
    double dropout = 0.0;     // between layers, training mode only
    bool reverse = false;     // a unidirectional LSTM that runs backwards in time
    // Cell variants (each off by default; per layer and direction, gate order i, f, g, o):
    bool cifg = false;        // coupled input-forget gate, f = 1 - i: the gate rows are
                              // (i, g, o), G = 3H
    bool peepholes = false;   // i = s(... + w_ci*c_{t-1}), f = s(... + w_cf*c_{t-1}),
                              // o = s(... + w_co*c_t): parameter weight_peephole [3, H]
    double cell_clip = 0.0;   // > 0: c_t clipped to [-cell_clip, cell_clip] after the update
    double proj_clip = 0.0;   // > 0: the projection W_hr r_t clipped to [-proj_clip, proj_clip]
                              // (needs proj_size > 0)
    // Regularizers of the recurrence, training mode only (masks from the dropout stream):
    double recurrent_dropout = 0.0;  // h_{t-1} entering W_hh is h_{t-1}*m/(1-p), one mask
                                     // per sequence and unit for the whole call; in [0, 1)
    double weight_drop = 0.0;        // W_hh*M/(1-p), one mask per call; in [0, 1)
    double zoneout_c = 0.0;          // zoneout of c: training c_t = m*c_{t-1} + (1-m)*c~_t,
    double zoneout_h = 0.0;          // m ~ Bernoulli(z) per element and step; evaluation
                                     // c_t = z*c_{t-1} + (1-z)*c~_t. Same for h. In [0, 1]
    // Layer normalisation (Ba et al. 2016), as torch.nn.LayerNorm with eps kLayerNormEps:
    //   pre = LN(x_t W_ih^T; g_ih, b_ih') + LN(h_{t-1} W_hh^T; g_hh, b_hh') + b_ih + b_hh,
    //   each LN over all G gate features of a row; h_t = o*tanh(LN(c_t; g_c, b_c')) over the
    // H units, c_t itself carried unnormalised. Parameters layer_norm_{ih,hh}_{weight,bias}
    // [G] (gate rows as the biases') and layer_norm_c_{weight,bias} [H].
    bool layer_norm = false;

    Index directions() const { return bidirectional ? 2 : 1; }
    Index output_size() const { return proj_size > 0 ? proj_size : hidden_size; }
    Index gates() const { return cifg ? 3 : 4; }  // gate blocks per unit
    Index gate_size() const { return gates() * hidden_size; }
    // Does a training-mode forward draw masks (and so take the next dropout-stream counter)?
    bool draws_masks() const {
        return (dropout > 0 && num_layers > 1) || recurrent_dropout > 0 || weight_drop > 0 ||
               zoneout_c > 0 || zoneout_h > 0;
    }
    // Throws std::invalid_argument naming the field, the expected and the given value.
    void validate() const;
};

// The parameter tensors of one (layer, direction), named as in torch.nn.LSTM, then the
// variants' own: weight_peephole [3, H], rows w_ci, w_cf, w_co (config.peepholes); the layer
// norms' gains and shifts, layer_norm_ih_* and layer_norm_hh_* [G] in gate order like a bias,
// layer_norm_c_* [H] (config.layer_norm).
enum class Param {
    weight_ih, weight_hh, bias_ih, bias_hh, weight_hr, weight_peephole,
    layer_norm_ih_weight, layer_norm_ih_bias, layer_norm_hh_weight, layer_norm_hh_bias,
    layer_norm_c_weight, layer_norm_c_bias
};
constexpr int kNumParamKinds = 12;
// The name of a kind, as in torch's state_dict keys: "weight_ih", ..., "layer_norm_c_bias".
const char* param_name(Param kind);
// Why an LSTM may lack a kind: " (bias is false)", " (proj_size is 0)", " (peepholes is
// false)", " (layer_norm is false)"; "" for the kinds every LSTM has.
const char* param_requirement(Param kind);

// Number of threads the engine uses for one call (default: OpenMP's maximum, which respects
// OMP_NUM_THREADS and the process's CPU affinity). Process-wide.
void set_num_threads(int n);   // n >= 1, else std::invalid_argument
int get_num_threads();

// ---- instruction-set levels (runtime dispatch) ---------------------------------------------
// The compute kernels are built once per level, each into its own shared object next to this
// library (libeigenlstm_<level>.so), and the best level that the CPU and the operating system
// support is loaded on first use:
//   "generic"  the architecture's baseline (x86-64: SSE2; aarch64: NEON)
//   "avx2"     AVX2 + FMA (x86-64-v3)
//   "avx512"   AVX-512 F/BW/DQ/VL (x86-64-v4)
// Within a level, the reduced-precision kernels (QuantizedLSTM) also use these features when
// the CPU has them (the avx512 back end holds their kernels):
//   "avx512_vnni"  AVX512_VNNI (int8: vpdpbusd)
//   "avx512_bf16"  AVX512_BF16 (bfloat16: vdpbf16ps)
//   "avx512_amx"   AMX-TILE, AMX-INT8 and AMX-BF16 with the two above, where the operating
//                  system lets the process use the tiles (int8: tdpbusd, bfloat16: tdpbf16ps)
// The environment variable EIGENLSTM_MAX_ISA, read once, caps the level and the features
// (like oneDNN's ONEDNN_MAX_CPU_ISA), in the order generic, avx2, avx512, avx512_vnni,
// avx512_bf16, avx512_amx, native: "avx512" runs the avx512 back end without any feature,
// "avx512_vnni" with VNNI only, "avx512_bf16" with VNNI and BF16 but not AMX. An unknown value makes every call below, and the first use of
// the engine, throw std::invalid_argument naming the variable, the value and the valid values.
// A missing or unloadable back end throws std::runtime_error naming the file.
std::string isa();                          // the level in use
std::vector<std::string> isa_available();   // levels this CPU and this build can run, low to high
std::vector<std::string> isa_features();    // the features above in use

struct BuildInfo {
    std::string isa;        // the level in use
    std::string compiler;   // compiler of the back end in use, with its version
    std::string eigen;      // Eigen version, "3.4.0"
    std::string simd;       // Eigen's SIMD instruction sets in the back end in use
    int openmp = 0;         // _OPENMP of the back end (yyyymm), 0 if built without OpenMP
    std::string library;    // path of the back end's shared object
};
BuildInfo build_info();

// Flush subnormal numbers to zero in the engine's arithmetic (FTZ and DAZ on x86), like
// torch.set_flush_denormal. Off by default (IEEE results); applied in every compute thread for
// the duration of each call, never left set in a caller's thread. Process-wide. Has no effect
// on architectures other than x86-64, where it returns false and the setting stays off;
// returns true where it is supported, like torch.set_flush_denormal.
bool set_flush_denormal(bool on);
bool flush_denormal();

namespace testing {
// Test hook. Armed, the next multi-threaded parallel region of the engine throws
// std::bad_alloc in one of its threads, as an allocation failure there would, and disarms;
// the call that ran the region rethrows it. false disarms without a failure.
void fail_next_parallel_region(bool armed);
}  // namespace testing

// Gate layout inside the engine. torch stores the four gate blocks [i; f; g; o] one after the
// other, each H rows, and so do params() and grads(). The engine's compute works on its own
// copy of the weights with the gates interleaved in blocks of `gate_block<S>()` hidden units
// (64 bytes of S):
//   rows [i(u0:u1) f(u0:u1) g(u0:u1) o(u0:u1)] for each block [u0, u1) of hidden units,
// so that one time step's four gate values for a block of units are contiguous and aligned:
// a thread that owns a range of blocks owns a contiguous range of gate columns, computes them
// with one GEMM and applies the fused cell update to its own units (one barrier per step).
template <typename S>
constexpr Index gate_block() { return Index(64 / sizeof(S)); }

template <typename S>
class LSTM {
public:
    // Allocates zero parameters and gradients (the layer norms' gains too: set them, as
    // torch.nn.LayerNorm initialises them, to 1). Throws std::invalid_argument for a bad config
    // and std::bad_alloc when the parameters cannot be allocated.
    LSTM(const Config& config, std::uint64_t seed);
    ~LSTM();
    LSTM(LSTM&&) noexcept;
    LSTM& operator=(LSTM&&) noexcept;
    LSTM(const LSTM&) = delete;
    LSTM& operator=(const LSTM&) = delete;

    const Config& config() const;

    // ---- parameters --------------------------------------------------------------------
    // All parameters live in one flat, 64-byte aligned buffer in torch's layout: each tensor
    // (see param_offset) is stored contiguously, row-major, with the gate rows in torch's
    // order i, f, g, o, exactly as torch.nn.LSTM holds it; padding between tensors is zero.
    // Gradients mirror it exactly. Elementwise optimizers (SGD, Adam) can update params() in
    // place from grads(); they must then call params_updated() so the engine's own copies of
    // the weights (gate-interleaved, packed) are rebuilt: until then it computes with the
    // parameters of the last params_updated().
    Index num_params() const;
    S* params();
    const S* params() const;
    S* grads();
    const S* grads() const;
    void params_updated();
    void zero_grad();

    // Does (kind, layer) exist? Biases need config.bias; weight_hr needs proj_size > 0;
    // weight_peephole needs config.peepholes; the layer_norm_* kinds need config.layer_norm.
    bool has_param(Param kind) const;
    // torch shape (rows, cols) of a parameter; a bias has cols == 1.
    void param_shape(Param kind, Index layer, Index& rows, Index& cols) const;
    // Element offset of one parameter tensor in params(), grads() or any buffer laid out like
    // them (an optimizer moment): its rows x cols values (param_shape) start there, row-major,
    // as in torch. Blocks in Param's order per layer, each kind's block [D, rows, cols]
    // starting 64-byte aligned.
    //   kind   a parameter this LSTM has (has_param)
    //   layer  in [0, num_layers)
    //   dir    in [0, directions()); 1 is torch's "_reverse"
    // Throws std::invalid_argument naming the argument, the valid range and the given value.
    Index param_offset(Param kind, Index layer, Index dir) const;

    // ---- dropout random stream ---------------------------------------------------------
    // Masks (dropout, recurrent_dropout, weight_drop, zoneout) come from a counter-based
    // generator: (seed, counter) is the whole state, and each training-mode forward that draws
    // masks (config.draws_masks()) advances the counter by one.
    std::uint64_t rng_seed() const;
    std::uint64_t rng_counter() const;
    void set_rng_state(std::uint64_t seed, std::uint64_t counter);

    // ---- compute -----------------------------------------------------------------------
    // The calls below keep their buffers in the module, grown to the largest sizes seen and
    // freed with it: after a first call, calls with the same sizes and thread count allocate
    // nothing (with more than two threads, OpenMP's runtime may allocate a team when
    // consecutive parallel regions differ in size). An eval call that runs while another call
    // on the same module is in progress uses its thread's buffers instead, freed after the
    // call if over 1 MiB.

    // Forward over a time-major batch.
    //   y        [T, B, D*Hout]  output; overwritten
    //   h_n      [D*L, B, Hout]  final hidden state; overwritten
    //   c_n      [D*L, B, H]     final cell state; overwritten
    //   x        [T, B, I]       input; read only
    //   h0       [D*L, B, Hout]  initial hidden state; read only (nullptr: zeros)
    //   c0       [D*L, B, H]     initial cell state; read only (nullptr: zeros)
    //   lengths  [B]             valid steps of each sequence in [0, T], or nullptr (all T):
    //                            outputs past a length are 0, the final state is the state at
    //                            the last valid step, and the reverse direction starts there
    //   training                 keep what backward needs (replacing any earlier cache) and
    //                            apply dropout; otherwise change nothing that other calls
    //                            read (eval calls on one module may run concurrently)
    // Throws std::invalid_argument for negative sizes or lengths outside [0, T],
    // std::bad_alloc when buffers cannot be allocated.
    void forward(S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                 const std::int64_t* lengths, Index T, Index B, bool training);

    // Inference of a sequence-to-one model (the seed's LSTMModel): eval forward from zero
    // states, then a linear layer on the top layer's output at each sequence's last step.
    //   out      [B, O]          out[b] = y[last_b, b, :] W^T + bias; overwritten
    //   x        [T, B, I]       input, or [B, T, I] when batch_first; read only
    //   lengths  [B]             valid steps in [1, T] (last_b = lengths[b] - 1), or nullptr
    //                            (last_b = T - 1); same semantics as in forward
    //   W        [O, D*Hout]     weight of the linear layer; read only
    //   bias     [O]             its bias; read only (nullptr: none)
    // Thread safe like an eval forward. Throws std::invalid_argument for T < 1, O < 1 or
    // lengths outside [1, T], std::bad_alloc when buffers cannot be allocated.
    void forward_last(S* out, const S* x, const std::int64_t* lengths, Index T, Index B,
                      bool batch_first, const S* W, const S* bias, Index O);

    // Backward through the last training-mode forward (BPTT). Gradients of the parameters
    // are ACCUMULATED (+=) into grads(); dx, dh0 and dc0 are overwritten.
    //   dx       [T, B, I]       gradient of x; overwritten
    //   dh0      [D*L, B, Hout]  gradient of h0; overwritten
    //   dc0      [D*L, B, H]     gradient of c0; overwritten
    //   dy       [T, B, D*Hout]  gradient of y; read only; ignored past each length
    //   dh_n     [D*L, B, Hout]  gradient of h_n; read only (nullptr: zeros)
    //   dc_n     [D*L, B, H]     gradient of c_n; read only (nullptr: zeros)
    // The cache is consumed (its gate buffer is reused for gate gradients): a second backward
    // needs a new training-mode forward. Throws std::logic_error when there is no cache.
    void backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n);

    // Sizes (T, B) of the cache kept by the last training-mode forward; false if none.
    bool cached_sizes(Index& T, Index& B) const;

    // ---- memory-bounded backpropagation through time -----------------------------------
    // What a training-mode forward keeps for backward (set before the forward; the default
    // is BpttMemory::full). With another policy the forward keeps only the state at the start
    // of each segment of K steps (checkpoints), and backward recomputes each segment's
    // forward from its checkpoint, then backpropagates through it (Chen et al. 2016): one
    // more forward in all, with memory O(T/K + K) instead of O(T) per layer. The gradients
    // are the same bits as with full storage for a given thread count: the recomputation
    // runs the same kernels on the same rows, and the parameter gradients are summed over
    // the same chunks of steps in the same order in every mode (sizes are in
    // bptt_chunk_steps). Layers above the first keep their input (the layer below's output).
    //   full   every step's gates and states
    //   sqrt   K = ceil(sqrt(T)), rounded up to a whole number of chunks
    //   bytes  full storage if it fits in `bytes`, else the longest K whose checkpoints and
    //          segment buffers fit (a training forward throws std::invalid_argument naming
    //          the smallest budget that would do when none fits)
    // With a policy other than full the forward reads x again in backward instead of
    // copying it: x must stay valid and unchanged until backward.
    struct BpttMemory {
        enum class Policy { full, sqrt, bytes };
        Policy policy = Policy::full;
        std::uint64_t bytes = 0;  // the budget of Policy::bytes
    };
    void set_bptt_memory(const BpttMemory& memory);
    BpttMemory bptt_memory() const;
    // Bytes the cache of the last training-mode forward holds for backward (0 when there is
    // none), and the steps of its segments (T with full storage).
    std::uint64_t cache_bytes() const;
    Index cache_segment() const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

extern template class LSTM<float>;
extern template class LSTM<double>;

// ---- reduced precision (inference) ------------------------------------------------------------

// How a QuantizedLSTM stores its weights and multiplies:
//   int8      weights symmetric int8 per output row (w = q * scale, q in [-127, 127]);
//             the inputs of every product quantized at run time per row on the row's range,
//             8 bits for the model's input x, 7 for the states h and r; int32 sums,
//             dequantized to float32. Every product's depth (input_size, the inputs D*Hout of
//             the layers above, Hout, H; a QuantizedLinear's in_features) is at most
//             kMaxInt8Depth, so that its sums fit int32 (255 * 127 * K < 2^31)
//   bfloat16  weights bfloat16 (the upper half of a float32); activations rounded to bfloat16
//             (to nearest even); float32 sums
// Gates, cell (with its variants: peepholes, clipping), nonlinearities and biases stay float32
// in both.
enum class Precision { int8, bfloat16 };
constexpr Index kMaxInt8Depth = 65536;

// The kernel a precision runs on this CPU (for example "avx512_vnni (vpdpbusd)").
std::string quantized_kernel(Precision precision);

// The weights of a QuantizedLSTM, one pointer per (layer, direction) k = layer * D + direction,
// each tensor row-major with torch's shape and gate order (param_shape):
//   weight_ih, weight_hh, weight_hr   int8: std::int8_t values in [-127, 127];
//                                     bfloat16: std::uint16_t bit patterns
//   scale_ih, scale_hh, scale_hr      [rows] float32 per-row scales (int8; unused for bfloat16)
//   bias_ih, bias_hh                  [4H] float32 (with config.bias)
//   peephole                          [3, H] float32 weight_peephole (with config.peepholes)
// weight_hr and scale_hr only with proj_size > 0.
struct QuantizedWeights {
    std::vector<const void*> weight_ih, weight_hh, weight_hr;
    std::vector<const float*> scale_ih, scale_hh, scale_hr;
    std::vector<const float*> bias_ih, bias_hh;
    std::vector<const float*> peephole;
};

// An inference-only LSTM in reduced precision, with LSTM<float>'s evaluation forward: the same
// time loops, cell and thread plan, with int8 or bfloat16 products.
class QuantizedLSTM {
public:
    // Packs the weights (copies: the caller's arrays may be freed afterwards). Throws
    // std::invalid_argument for a bad config (config.dropout, recurrent_dropout and
    // weight_drop must be 0, layer_norm false; zoneout acts as in evaluation; int8: depths up to
    // kMaxInt8Depth), a missing pointer, a pointer count other than L*D or an int8 weight of
    // -128, std::bad_alloc when the weights cannot be allocated.
    QuantizedLSTM(const Config& config, Precision precision, const QuantizedWeights& weights);
    ~QuantizedLSTM();
    QuantizedLSTM(QuantizedLSTM&&) noexcept;
    QuantizedLSTM& operator=(QuantizedLSTM&&) noexcept;
    QuantizedLSTM(const QuantizedLSTM&) = delete;
    QuantizedLSTM& operator=(const QuantizedLSTM&) = delete;

    const Config& config() const;
    Precision precision() const;

    // LSTM<float>::forward with training = false: same arguments and results, thread safe in
    // the same way (calls on one object may overlap), and allocation-free after the first call
    // of a size.
    void forward(float* y, float* h_n, float* c_n, const float* x, const float* h0,
                 const float* c0, const std::int64_t* lengths, Index T, Index B);

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

// y = x W^T + bias with W [out_features, in_features] in reduced precision (as QuantizedLSTM's
// weights): a quantized model's linear head.
class QuantizedLinear {
public:
    // weight: int8 values and per-row scale, or bfloat16 bit patterns (scale unused); bias
    // [out_features] or nullptr. Copies them. Throws std::invalid_argument for sizes < 1, an
    // int8 in_features above kMaxInt8Depth or an int8 weight of -128.
    QuantizedLinear(Index in_features, Index out_features, Precision precision,
                    const void* weight, const float* scale, const float* bias);
    ~QuantizedLinear();
    QuantizedLinear(QuantizedLinear&&) noexcept;
    QuantizedLinear& operator=(QuantizedLinear&&) noexcept;

    Index in_features() const;
    Index out_features() const;
    //   y  [M, out_features]  overwritten
    //   x  [M, in_features]   read only
    // Thread safe; allocation-free after the first call of a size.
    void forward(float* y, const float* x, Index M) const;

private:
    struct Impl;
    std::unique_ptr<Impl> impl_;
};

}  // namespace eigenlstm
