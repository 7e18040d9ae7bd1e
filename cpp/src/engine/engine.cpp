// The layer stack of one ISA level's back end: packed weights, the training cache, and the
// forward and backward passes over layers and directions. Compiled once per level into
// libeigenlstm_<level>.so (see CMakeLists.txt) with that level's flags; only the entry point
// eigenlstm_backend() is exported. The big products over all T*B rows go to Eigen's GEMM, the
// time loops to direction.hpp.
#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <mutex>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "../backend.hpp"
#include "../buffer.hpp"
#include "../layout.hpp"
#include "cell.hpp"
#include "direction.hpp"
#include "dropout.hpp"
#include "gemm.hpp"
#include "gemm_space.hpp"
#include "layer_norm.hpp"
#include "plan.hpp"
#include "quantized.hpp"
#include "threads.hpp"

#ifndef EIGENLSTM_ISA
#error "EIGENLSTM_ISA names the level this back end is compiled for (CMakeLists.txt sets it)"
#endif

namespace eigenlstm {
namespace detail {
namespace {

// Size letters: T time, B batch, I layer input size, H hidden, P projection, Hout = P or H,
// D directions, L layers, NG gates per unit (4, or 3 with cifg), G = NG*H gate rows, DG = D*G.

template <typename S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename S>
using MapRM = Eigen::Map<RowMat<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using CMapRM = Eigen::Map<const RowMat<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using RowVec = Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>;

// Throws std::invalid_argument(message) unless cond holds. A macro so that the message, which
// formats numbers, is only built on failure: these checks run on every call.
#define EIGENLSTM_REQUIRE(cond, message)                          \
    do {                                                          \
        if (!(cond)) throw std::invalid_argument(message);        \
    } while (false)

// Every lengths[b], b < B, in [lo, T] (no lengths: nothing to check); std::invalid_argument
// naming the first that is not.
void require_lengths(const std::int64_t* lengths, Index B, Index lo, Index T) {
    if (!lengths) return;
    for (Index b = 0; b < B; ++b)
        EIGENLSTM_REQUIRE(lengths[b] >= lo && lengths[b] <= T,
                          "lengths[" + std::to_string(b) + "] must be in [" + std::to_string(lo) +
                              ", " + std::to_string(T) + "], got " + std::to_string(lengths[b]));
}

// The engine splits work between threads itself; Eigen's products run single-threaded
// inside each slice (Eigen's own OpenMP split would nest, and fork for tiny products).
const bool eigen_single_threaded = (Eigen::setNbThreads(1), true);

// Scratch of a forward or forward_last call: the zero initial state when none is given, the
// eval buffers, and forward_last's copies and the packing blocks of its linear head.
template <typename S>
struct Scratch {
    Buffer<S> zeros;   // [D*L, B, max(H, Hout)]   zero h0 / c0
    Buffer<S> gates;   // [T, B, D*G]              eval gates ([B, D*G] when each step
                       //                          projects its own input: step_inputs)
    Buffer<S> io[2];   // [T, B, D*Hout]           eval outputs of the layers below the top
    Buffer<S> state;   // [D, B, 2*Hout + 3*H]     eval h, c double buffers and r
    Buffer<S> x;       // [T, B, I]                forward_last: time-major copy of x
    Buffer<S> y;       // [T, B, D*Hout]           forward_last: the top layer's output
    Buffer<S> hc;      // [D*L, B, Hout + H]       forward_last: h_n and c_n (unused)
    Buffer<S> ln;      // [D, B*G + 4*B*nblk]      layer norm: eval product, block moments
    Buffer<S> last;    // [B, D*Hout]              forward_last: y at each last step
    GemmSpace<S> head; //                          forward_last: Eigen's blocks of the head

    Index bytes() const {
        Index n = zeros.capacity() + gates.capacity() + io[0].capacity() + io[1].capacity() +
                  state.capacity() + x.capacity() + y.capacity() + hc.capacity() +
                  ln.capacity() + last.capacity() + head.capacity();
        return n * Index(sizeof(S));
    }
};

// The scratch a call uses: the module's own when no other call holds it, so that a stream of
// calls on one module (training steps, and the eval calls of validation and inference)
// allocates nothing after the first of its sizes. An eval call that runs while another call
// holds it (one module shared by several threads) takes its thread's scratch instead: a
// stream of small calls on a thread allocates nothing either (a malloc/free per buffer is a
// visible part of a 10 us call), and after a call that grew it past kKeepBytes it is freed,
// so that a thread does not keep a large buffer it used once; such calls are long enough not
// to notice the allocation.
template <typename S>
class ScratchLease {
public:
    static constexpr Index kKeepBytes = Index(1) << 20;
    ScratchLease(Scratch<S>& module_scratch, std::mutex& mutex)
        : lock_(mutex, std::try_to_lock),
          s_(lock_.owns_lock() ? module_scratch : thread_scratch()) {}
    ScratchLease(const ScratchLease&) = delete;
    ScratchLease& operator=(const ScratchLease&) = delete;
    // Runs when the call ends, normally or by an exception.
    ~ScratchLease() {
        if (!lock_.owns_lock() && s_.bytes() > kKeepBytes) s_ = Scratch<S>();
    }
    Scratch<S>& get() { return s_; }

private:
    static Scratch<S>& thread_scratch() {
        thread_local Scratch<S> s;
        return s;
    }
    std::unique_lock<std::mutex> lock_;
    Scratch<S>& s_;
};

// Values of one direction's part of a step buffer holding n: n rounded up to 16, so that a
// direction's part starts on a 64-byte boundary (float32; 128 bytes in float64) in the buffer
// of any number of steps. Memory-bounded BPTT recomputes a segment's steps in buffers of their
// own: its rows then lie at the same offsets modulo 64 bytes as in full storage, and Eigen's
// vector loops, which peel a few values to reach an aligned address, split them alike.
inline Index dir_span(Index n) { return (n + 15) / 16 * 16; }

// Saved activations of the last training-mode forward (llm.c's ActivationTensors): of all T
// steps with full storage; with memory-bounded BPTT (Cache::K < T) only x (layers above the
// first), rmask and the checkpoints, while the step buffers hold one segment of K steps.
template <typename S>
struct LayerCache {
    Buffer<S> x;      // [T, B, I_l]        layer input (after dropout for l > 0); the first
                      //                    layer's has its padding (t >= length) zeroed
    Buffer<S> gates;  // [T, B, D*G]        activated i, f, g, o; backward overwrites
                      //                    them with d(pre-activation)
    Buffer<S> h;      // [D, T+1, B, Hout]  hidden states in time order (slot_before/after)
    Buffer<S> c;      // [D, T+1, B, H]     cell states, same slots
    Buffer<S> r;      // [D, T, B, H]       o*tanh(c) before projection (P > 0 only)
    // the masks of the call (dropout.hpp), kept for backward
    Buffer<S> rmask;  // [D, B, Hout]       recurrent dropout factors (recurrent_dropout > 0)
    Buffer<S> hm;     // [D, 2, B, Hout]    forward: h_{t-1} * rmask, double-buffered
    Buffer<S> zc;     // [D, T, B, H]       zoneout masks of c, 0 or 1 (zoneout_c > 0)
    Buffer<S> zh;     // [D, T, B, Hout]    zoneout masks of h, 0 or 1 (zoneout_h > 0)
    // layer norm: the normalised products, which backward overwrites with their gradients
    Buffer<S> ln_ih;     // [T, B, D*G]     xhat of x W_ih^T -> d(x W_ih^T)
    Buffer<S> ln_hh;     // [D, T, B, G]    xhat of h_{t-1} W_hh^T -> d(h_{t-1} W_hh^T)
    Buffer<S> ln_stats;  // [D, T, B, 4]    rstd of both, mean and rstd of c
    // memory-bounded BPTT: the state entering each segment of K steps in its direction's
    // order (h then c; forward: before step t0, reverse: after step t0 + K - 1)
    Buffer<S> ckpt;      // [D, ceil(T/K), B, Hout + H]

    Index bytes() const {
        const Buffer<S>* all[] = {&x, &gates, &h, &c, &r, &rmask, &hm, &zc, &zh,
                                  &ln_ih, &ln_hh, &ln_stats, &ckpt};
        Index n = 0;
        for (const Buffer<S>* b : all) n += b->capacity();
        return n * Index(sizeof(S));
    }
};

// Values of each LayerCache buffer of layer l for T steps of B rows (x: when keep_x).
struct LayerSizes {
    Index x = 0, gates = 0, h = 0, c = 0, r = 0, rmask = 0, hm = 0, zc = 0, zh = 0, ln_ih = 0,
          ln_hh = 0, ln_stats = 0;
    Index total() const {
        return x + gates + h + c + r + rmask + hm + zc + zh + ln_ih + ln_hh + ln_stats;
    }
};
template <typename S>
LayerSizes layer_sizes(const Layout<S>& m, Index l, Index T, Index B, bool keep_x) {
    const Config& c = m.cfg;
    const Index D = m.D, TB = checked_mul(T, B), DG = D * m.G;
    LayerSizes z;
    if (keep_x) z.x = checked_mul(TB, m.in_size(l));
    z.gates = checked_mul(TB, DG);
    z.h = checked_mul(D, dir_span(checked_mul(T + 1, checked_mul(B, m.Hout))));
    z.c = checked_mul(D, dir_span(checked_mul(T + 1, checked_mul(B, m.H))));
    if (m.P > 0) z.r = checked_mul(D, dir_span(checked_mul(T, checked_mul(B, m.H))));
    if (c.recurrent_dropout > 0) {
        z.rmask = checked_mul(D, checked_mul(B, m.Hout));
        z.hm = 2 * z.rmask;
    }
    if (c.zoneout_c > 0) z.zc = checked_mul(D, dir_span(checked_mul(TB, m.H)));
    if (c.zoneout_h > 0) z.zh = checked_mul(D, dir_span(checked_mul(TB, m.Hout)));
    if (c.layer_norm) {
        z.ln_ih = checked_mul(TB, DG);
        z.ln_hh = checked_mul(D, dir_span(checked_mul(TB, m.G)));
        z.ln_stats = checked_mul(D, dir_span(checked_mul(TB, 4)));
    }
    return z;
}
template <typename S>
void size_layer(LayerCache<S>& lc, const LayerSizes& z) {
    lc.x.resize(z.x);
    lc.gates.resize(z.gates);
    lc.h.resize(z.h);
    lc.c.resize(z.c);
    lc.r.resize(z.r);
    lc.rmask.resize(z.rmask);
    lc.hm.resize(z.hm);
    lc.zc.resize(z.zc);
    lc.zh.resize(z.zh);
    lc.ln_ih.resize(z.ln_ih);
    lc.ln_hh.resize(z.ln_hh);
    lc.ln_stats.resize(z.ln_stats);
}

// Draws the masks of layer l, directions [d0, d1), for steps [t0, t0 + T) of B rows (of a
// call at stream position seed, counter) into lc, sized for T steps: recurrent dropout's
// (the same for every step) and zoneout's, element j of step t0 + s being element
// (t0 + s) * B * n + j of the call's mask (dropout.hpp: a pure function of the element), so
// that a segment draws what full storage draws for its steps.
template <typename S>
void draw_masks(const Layout<S>& m, LayerCache<S>& lc, Index l, Index d0, Index d1, Index t0,
                Index T, Index B, std::uint64_t seed, std::uint64_t counter) {
    const Config& c = m.cfg;
    const Index H = m.H, Hout = m.Hout;
    for (Index d = d0; d < d1; ++d) {
        if (c.recurrent_dropout > 0)
            fill_dropout(lc.rmask.data() + d * B * Hout, B * Hout, c.recurrent_dropout,
                         mask_key(seed, counter, l, Mask::recurrent, d));
        if (c.zoneout_c > 0)
            fill_bernoulli(lc.zc.data() + d * dir_span(T * B * H), T * B * H, c.zoneout_c,
                           mask_key(seed, counter, l, Mask::zoneout_c, d) +
                               std::uint64_t(t0 * B * H));
        if (c.zoneout_h > 0)
            fill_bernoulli(lc.zh.data() + d * dir_span(T * B * Hout), T * B * Hout, c.zoneout_h,
                           mask_key(seed, counter, l, Mask::zoneout_h, d) +
                               std::uint64_t(t0 * B * Hout));
    }
}

// x[t, b, :] for steps [t0, t0 + T) of B rows of n values, zero past each length: the first
// layer's input as its cache keeps it (padding is never read by torch: zeroed, dW_ih = da^T x
// ignores it even when it is not finite).
template <typename S>
void copy_input(S* dst, const S* x, const std::int64_t* lengths, Index t0, Index T, Index B,
                Index n) {
    std::copy(x + t0 * B * n, x + (t0 + T) * B * n, dst);
    if (lengths)
        for (Index t = 0; t < T; ++t)
            for (Index b = 0; b < B; ++b)
                if (t0 + t >= lengths[b]) std::fill_n(dst + (t * B + b) * n, n, S(0));
}

template <typename S>
struct Cache {
    bool valid = false;
    Index T = 0, B = 0;
    Index K = 0;          // steps per segment: T with full storage
    bool zero_h0 = false; // no initial state was given (DirectionPass::zero_h0)
    std::uint64_t seed = 0, counter = 0;  // dropout stream position of that forward
    std::vector<std::int64_t> lengths;    // empty: all T
    std::vector<LayerCache<S>> layers;
    // memory-bounded BPTT (K < T)
    const S* x = nullptr;            // [T, B, I] the caller's input, read again by backward
    LayerCache<S> seg;               // one segment of K steps of one layer (gates, states,
                                     //   masks; x: the first layer's input rows)
    std::vector<std::int64_t> seg_lengths;  // [B] lengths from the segment's first step
    Buffer<S> seg_out;               // [K, B, D*Hout] a recomputed segment's output, then
                                     //   its final state [B, Hout + H]
    Buffer<S> seg_ln;                // [B*G + 4*B*nblk] layer norm's block moments

    Index bytes() const {
        Index n = seg.bytes() + (seg_out.capacity() + seg_ln.capacity()) * Index(sizeof(S));
        for (const LayerCache<S>& lc : layers) n += lc.bytes();
        return n;
    }
};

// Steps of the parameter gradients' chunks, in which backward sums them (the same chunks
// with full storage and with segments, so that both sum the same values in the same order):
// about 512 rows, enough for Eigen's GEMM to run near its peak, and a multiple of 16 rows,
// so that every chunk starts on a 64-byte boundary of the step buffers in float32 and float64
// alike and Eigen's vector loops split a chunk's rows the same way wherever they lie.
inline Index chunk_steps(Index B) {
    const Index rows = 512;
    const Index align = 16 / std::gcd(std::max<Index>(B, 1), Index(16));
    const Index steps = (rows + std::max<Index>(B, 1) - 1) / std::max<Index>(B, 1);
    return (steps + align - 1) / align * align;
}

// What a forward reads of the weights, in the representation W its products take (`multiply`):
// float panels (EngineImpl, rebuilt by params_updated) or int8 or bfloat16 ones
// (QuantizedEngineImpl, packed once).
template <typename S, typename W>
struct ForwardWeights {
    std::vector<W> wih_t;          // [L]    W_ih^T [I_l, D*G], both directions: the input
                                   //        projection of all steps is one packed product
    std::vector<W> whh_t;          // [L*D]  W_hh^T [Hout, G]: forward step gates += h_prev W_hh^T
    std::vector<W> whr_t;          // [L*D]  W_hr^T [H, P]: projection h = r W_hr^T (P > 0)
    std::vector<char> whh_finite;  // [L*D]  no inf or NaN in W_hh: a zero h times W_hh is zero
    Buffer<S> bias_sum;            // [L, D*G] b_ih + b_hh, engine order (zero without biases)
    Buffer<S> peephole;            // [L*D, 3, H] w_ci, w_cf, w_co (config.peepholes), else empty
    const S* ln_weights = nullptr; // engine-order parameters holding the layer norms' gains
                                   // and shifts (config.layer_norm), else nullptr

    explicit ForwardWeights(const Layout<S>& m)
        : wih_t(std::size_t(m.L)), whh_t(std::size_t(m.L * m.D)),
          whr_t(std::size_t(m.P > 0 ? m.L * m.D : 0)), whh_finite(std::size_t(m.L * m.D), 1) {
        bias_sum.resize(checked_mul(m.L, m.D * m.G));
        bias_sum.zero();
        if (m.cfg.peepholes) {
            peephole.resize(checked_mul(m.L * m.D, 3 * m.H));
            peephole.zero();
        }
    }

    // The cell unit of direction k = l*D + d: its peepholes and the config's cell clip.
    CellUnit<S> cell(const Layout<S>& m, Index k) const {
        CellUnit<S> c;
        if (peephole.size()) c.peephole = peephole.data() + k * 3 * m.H;
        c.H = m.H;
        c.clip = S(m.cfg.cell_clip);
        c.cifg = m.cfg.cifg;
        return c;
    }

    // The gains and shifts of tensor kinds `first`, +1, ... of (layer l, direction d) in a
    // buffer laid out like the parameters (the engine-order weights, or their gradients).
    template <typename P>
    static LayerNorms<P> layer_norms(const Layout<S>& m, P* flat, Index l, Index d, Param hh,
                                     Param c) {
        LayerNorms<P> n;
        n.gain_hh = m.tensor(flat, hh, l, d);
        n.shift_hh = m.tensor(flat, Param(int(hh) + 1), l, d);
        n.gain_c = m.tensor(flat, c, l, d);
        n.shift_c = m.tensor(flat, Param(int(c) + 1), l, d);
        return n;
    }
    LayerNorms<const S> layer_norms(const Layout<S>& m, Index l, Index d) const {
        if (!ln_weights) return {};
        return layer_norms(m, ln_weights, l, d, Param::layer_norm_hh_weight,
                           Param::layer_norm_c_weight);
    }
};

// Layer norm of the input projection (config.layer_norm), in place over gates [TB, D*G]:
// each row and direction's G values x become gain*xhat + shift + bias (gain, shift, bias
// [D*G], engine order; bias nullptr: none). Training keeps xhat [TB, D*G] and each row's rstd
// (stats [D, TB, 4], element 0), else both nullptr. Rows are independent: the threads split
// them, each row computed the same way for any thread count.
template <typename S>
void layer_norm_inputs(S* gates, Index TB, Index D, Index G, const S* gain, const S* shift,
                       const S* bias, S* xhat, S* stats) {
    const Index DG = D * G;
    parallel_slices(num_threads(), 8.0 * double(TB) * double(DG), [&](int tid, int n) {
        Index r0, r1;
        split_range(TB, 1, tid, n, r0, r1);
        for (Index r = r0; r < r1; ++r)
            for (Index d = 0; d < D; ++d) {
                LnVec<S> x(gates + r * DG + d * G, G);
                const RowNorm<S> rn = row_norm(x.data(), G);
                x = (x - rn.mean) * rn.rstd;
                if (xhat) LnVec<S>(xhat + r * DG + d * G, G) = x;
                if (stats) stats[d * dir_span(TB * 4) + r * 4] = rn.rstd;
                x = x * LnCVec<S>(gain + d * G, G) + LnCVec<S>(shift + d * G, G);
                if (bias) x += LnCVec<S>(bias + d * G, G);
            }
    });
}

// The forward DirectionPass of (layer l, direction d) over the call's (T, B) with gate buffer
// `gates` (already offset to this layer): training reads and writes the cache, eval the
// double-buffered `eval_state` [D, B, 2*Hout + 3*H]. ln_scratch [D, B*G + 4*B*nblk]: the
// layer norm's eval product and block moments (config.layer_norm; nullptr in backward).
template <typename S, typename W>
DirectionPass<S, W> forward_pass(const Layout<S>& m, const ForwardWeights<S, W>& fw, Index l,
                                 Index d, Index T, Index B, const std::int64_t* lengths, S* gates,
                                 LayerCache<S>* lc, S* eval_state, S* ln_scratch) {
    const Index H = m.H, P = m.P, Hout = m.Hout, G = m.G, D = m.D, k = l * D + d;
    DirectionPass<S, W> a;
    a.T = T; a.B = B; a.H = H; a.P = P; a.Hout = Hout; a.NG = m.NG;
    a.ldg = D * G;
    a.ldy = D * Hout;
    a.reverse = m.cfg.reverse || d == 1;
    a.lengths = lengths;
    a.whh_t = &fw.whh_t[std::size_t(k)];
    if (P > 0) a.whr_t = &fw.whr_t[std::size_t(k)];
    a.gates = gates + d * G;
    if (lc) {
        a.hs = lc->h.data() + d * dir_span((T + 1) * B * Hout);
        a.cs = lc->c.data() + d * dir_span((T + 1) * B * H);
        if (P > 0) a.rs = lc->r.data() + d * dir_span(T * B * H);
    } else {
        S* st = eval_state + d * B * (2 * Hout + 3 * H);
        a.hbuf = st;
        a.cbuf = st + 2 * B * Hout;
        a.rbuf = st + 2 * B * Hout + 2 * B * H;
    }
    a.rows = B;
    a.proj_clip = S(m.cfg.proj_clip);
    a.zoneout_c = S(m.cfg.zoneout_c);
    a.zoneout_h = S(m.cfg.zoneout_h);
    if (lc) {  // training: the call's masks
        if (m.cfg.recurrent_dropout > 0) {
            a.rmask = lc->rmask.data() + d * B * Hout;
            a.hm = lc->hm.data() + d * 2 * B * Hout;
        }
        if (m.cfg.zoneout_c > 0) a.zc = lc->zc.data() + d * dir_span(T * B * H);
        if (m.cfg.zoneout_h > 0) a.zh = lc->zh.data() + d * dir_span(T * B * Hout);
    }
    a.ln = fw.layer_norms(m, l, d);
    if (a.ln) {
        const Index scratch = B * G + 4 * B * blocks_of(H, gate_block<S>());
        if (ln_scratch) {
            a.ln_a = ln_scratch + d * scratch;
            a.ln_part = a.ln_a + B * G;
        }
        if (lc) {
            a.ln_a = lc->ln_hh.data() + d * dir_span(T * B * G);
            a.ln_stats = lc->ln_stats.data() + d * dir_span(T * B * 4);
        }
    }
    return a;
}

// forward_direction for thread tid of a team of n planned by `plan`: by_rows, each thread runs
// its slice of the batch alone, never waiting for the others (rows are independent);
// otherwise the team splits the hidden units. y, h0, c0, h_n, c_n: at row 0 of the pass.
template <typename S, typename W>
void run_forward_direction(const TeamPlan& plan, DirectionPass<S, W> a, const CellUnit<S>& cell,
                           S* y, const S* h0, const S* c0, S* h_n, S* c_n, int tid, int n,
                           SpinBarrier& barrier) {
    Index b0 = 0, b1 = a.B;  // this thread's batch rows
    const std::atomic<bool> no_failure{false};
    SpinBarrier alone(1, no_failure);
    if (plan.by_rows) {
        split_range(a.B, 1, tid, n, b0, b1);
        a = a.rows_slice(b0, b1);
        // every thread reads all the weights: each but the first its own copy (thread_copy)
        if constexpr (!std::is_same<W, Panels<S>>::value) {
            if (tid > 0) {
                if (a.wih_t) a.wih_t = &thread_copy(*a.wih_t);
                a.whh_t = &thread_copy(*a.whh_t);
                if (a.whr_t) a.whr_t = &thread_copy(*a.whr_t);
            }
        }
        tid = 0;
        n = 1;
    }
    forward_direction(a, cell, y + b0 * a.ldy, h0 + b0 * a.Hout, c0 + b0 * a.H,
                      h_n + b0 * a.Hout, c_n + b0 * a.H, tid, n, plan.by_rows ? alone : barrier);
}

// The checks every forward makes first.
inline void require_sizes(Index T, Index B, const std::int64_t* lengths) {
    EIGENLSTM_REQUIRE(T >= 0, "T must be >= 0, got " + std::to_string(T));
    EIGENLSTM_REQUIRE(B >= 0, "B must be >= 0, got " + std::to_string(B));
    require_lengths(lengths, B, 0, T);
}

// The zero initial states of a call given none (h0 or c0 nullptr), from the scratch ws.
template <typename S>
void zero_states(const Layout<S>& m, Scratch<S>& ws, Index B, const S*& h0, const S*& c0) {
    if (h0 && c0) return;
    ws.zeros.resize(checked_mul(m.D * m.L * B, std::max(m.H, m.Hout)));
    ws.zeros.zero();
    if (!h0) h0 = ws.zeros.data();
    if (!c0) c0 = ws.zeros.data();
}

// The forward over the layer stack, for the weights fw in any representation. cache: nullptr
// for an evaluation call; otherwise a training call that keeps in it what backward needs and
// applies dropout (m.cfg.dropout, at stream position seed, counter) between layers.
// whh_t: the recurrent weights the products take instead of fw.whh_t (a training call's
// weight_drop), or nullptr.
template <typename S, typename W>
void forward_layers(const Layout<S>& m, const ForwardWeights<S, W>& fw, Scratch<S>& ws,
                    Cache<S>* cache, S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                    const std::int64_t* lengths, Index T, Index B, std::uint64_t seed,
                    std::uint64_t counter, const std::vector<W>* whh_t = nullptr);

template <typename S>
class EngineImpl final : public Engine<S> {
public:
    EngineImpl(const Layout<S>& layout, const S* params, S* grads)
        : m_(layout), params_(params), grads_(grads), H(layout.H), P(layout.P),
          Hout(layout.Hout), G(layout.G), D(layout.D), L(layout.L), fw_(layout) {
        backward_panels_.resize(std::size_t(L * D));
        weights_.resize(layout.size);
        weights_.zero();
        dweights_.resize(layout.size);
        dweights_.zero();
        if (layout.cfg.layer_norm) fw_.ln_weights = weights_.data();
        params_updated();
    }

    void params_updated() override;
    void forward(S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                 const std::int64_t* lengths, Index T, Index B, bool training,
                 std::uint64_t seed, std::uint64_t counter) override {
        const DenormalScope denormals;
        ScratchLease<S> ws(scratch_, scratch_mutex_);
        const bool drop_weights = training && m_.cfg.weight_drop > 0;
        const Index K = training ? segment_steps(T, B) : T;  // checks a byte budget first
        if (drop_weights) drop_recurrent_weights(seed, counter);
        if (K < T)
            forward_segments(ws.get(), y, h_n, c_n, x, h0, c0, lengths, T, B, K, seed, counter);
        else
            forward_layers<S>(m_, fw_, ws.get(), training ? &cache_ : nullptr, y, h_n, c_n, x,
                              h0, c0, lengths, T, B, seed, counter,
                              drop_weights ? &wd_.whh_t : nullptr);
    }
    void forward_last(S* out, const S* x, const std::int64_t* lengths, Index T, Index B,
                      bool batch_first, const S* W, const S* bias, Index O) override;
    void backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n) override;
    bool cached_sizes(Index& T, Index& B) const override {
        T = cache_.T;
        B = cache_.B;
        return cache_.valid;
    }
    void set_bptt_memory(const typename LSTM<S>::BpttMemory& memory) override {
        memory_ = memory;
    }
    std::uint64_t cache_bytes() const override {
        return cache_.valid ? std::uint64_t(cache_.bytes()) : 0;
    }
    Index cache_segment() const override { return cache_.valid ? cache_.K : 0; }

private:
    // What backward reads of the weights besides fw_, per (layer, direction), rebuilt by
    // params_updated() (the "load-time repack") with fw_ and the engine-order copy weights_.
    struct BackwardPanels {
        Panels<S> whh;     // W_hh    [G, Hout]: backward step dh_prev = dgates W_hh
        Panels<S> whr;     // W_hr    [P, H]:    backward projection dr = dh W_hr
    };
    // Backward's workspaces, kept between calls: a steady-state training step allocates
    // nothing after the first.
    struct BackwardBuffers {
        Buffer<S> state;  // [D, B, 2*Hout + 2*H]  running dh (double-buffered), dc, dr
        Buffer<S> dhs;    // [D, T, B, P]          dh_t of every step (P > 0); [K, B, P] of a
                          //                       segment's with memory-bounded BPTT
        Buffer<S> dio[2]; // [T, B, D*Hout]        d(layer output) below the top layer
        Buffer<S> hm;     // [rows, Hout]          a chunk's h_{t-1} * rmask for dW_hh
                          //                       (recurrent dropout)
        Buffer<S> carry;  // [B, Hout + H]         memory-bounded BPTT: dh and dc between
                          //                       segments
        Buffer<S> ln;     // [D, 3*B*H + 4*B*nblk]  layer norm (direction.hpp: BackwardWork::ln)
        Buffer<S> ln_rows; // [threads, G]         layer norm of the inputs: a row's d(xhat)
        std::vector<GemmSpace<S>> gemm;  // [threads]  Eigen's blocks of each thread's products
    };
    // weight_drop: the recurrent weights of the last training forward, W_hh * M (one mask M
    // per call and (layer, direction), factors 0 or 1/(1-p)), packed for its products and for
    // backward's; backward also scales dW_hh by M.
    struct WeightDrop {
        std::vector<Panels<S>> whh_t;  // [L*D]  (W_hh * M)^T [Hout, G]
        std::vector<Panels<S>> whh;    // [L*D]  W_hh * M     [G, Hout]
        Buffer<S> mask;                // [L*D, G, Hout] M, engine order
        Buffer<S> w;                   // [G, Hout] scratch: W_hh * M of one (layer, direction)
    };

    // Draws the weight_drop masks of the training call at (seed, counter) and packs the
    // dropped weights (wd_). Mask element (r, j) of W_hh is drawn in torch's row order
    // (r * Hout + j), so the masks do not depend on the engine's gate blocks (float32 and
    // float64 drop the same weights).
    void drop_recurrent_weights(std::uint64_t seed, std::uint64_t counter) {
        const double p = m_.cfg.weight_drop;
        const S scale = S(1.0 / (1.0 - p));
        wd_.whh_t.resize(std::size_t(L * D));
        wd_.whh.resize(std::size_t(L * D));
        wd_.mask.resize(checked_mul(L * D, G * Hout));
        wd_.w.resize(G * Hout);
        for (Index l = 0; l < L; ++l)
            for (Index d = 0; d < D; ++d) {
                const Index k = l * D + d;
                const std::uint64_t key = mask_key(seed, counter, l, Mask::weight, d);
                const S* whh = tensor(Param::weight_hh, l, d);
                S* mk = wd_.mask.data() + k * G * Hout;
                for (Index e = 0; e < G; ++e) {
                    const std::uint64_t row = std::uint64_t(m_.perm[std::size_t(e)] * Hout);
                    for (Index j = 0; j < Hout; ++j) {
                        mk[e * Hout + j] = mask_draw(key, row + std::uint64_t(j), p) ? S(0) : scale;
                        wd_.w.data()[e * Hout + j] = whh[e * Hout + j] * mk[e * Hout + j];
                    }
                }
                wd_.whh_t[std::size_t(k)].pack(wd_.w.data(), Hout, G, 1, Hout);
                wd_.whh[std::size_t(k)].pack(wd_.w.data(), G, Hout, Hout, 1);
            }
    }

    // ---- memory-bounded BPTT ---------------------------------------------------------------
    // Values a training call of (T, B) keeps until backward with segments of K steps (K = T:
    // full storage): with segments, the inputs of the layers above the first, the checkpoints,
    // and the buffers of one segment (reused by every layer, so the largest layer's).
    Index kept_values(Index T, Index B, Index K) const {
        Index n = 0;
        if (K >= T) {
            for (Index l = 0; l < L; ++l) n += layer_sizes(m_, l, T, B, true).total();
            return n;
        }
        const Index segments = (T + K - 1) / K;
        Index seg = 0;
        for (Index l = 0; l < L; ++l) {
            if (l > 0) n += layer_sizes(m_, l, T, B, true).x;
            n += checked_mul(D * segments, B * (Hout + H));
            seg = std::max(seg, layer_sizes(m_, l, K, B, l == 0).total());
        }
        return n + seg + seg_out_values(K, B) + seg_ln_values(B);
    }
    // Values of Cache::seg_out for segments of K steps, and of Cache::seg_ln.
    Index seg_out_values(Index K, Index B) const {
        return checked_mul(K * B, D * Hout) + 2 * B * (Hout + H);
    }
    Index seg_ln_values(Index B) const {
        return m_.cfg.layer_norm ? D * B * (G + 4 * blocks_of(H, gate_block<S>())) : 0;
    }

    // Steps per segment of a training forward of (T, B) under memory_: T for full storage.
    // Throws std::invalid_argument when no segment length fits a byte budget.
    Index segment_steps(Index T, Index B) const {
        using Policy = typename LSTM<S>::BpttMemory::Policy;
        if (memory_.policy == Policy::full || T <= 1) return T;
        const Index C = chunk_steps(B);
        auto whole_chunks = [&](Index k) { return (k + C - 1) / C * C; };
        if (memory_.policy == Policy::sqrt) {
            Index k = Index(std::sqrt(double(T)));
            while (k * k < T) ++k;  // ceil(sqrt(T)), exactly
            return whole_chunks(k);
        }
        // bytes: full storage if it fits, else the longest segments that fit, trying every
        // segment count from 2 up. Every length recomputes the whole forward once; longer
        // segments mean fewer, larger products and fewer parallel regions.
        const auto bytes = [&](Index K) {
            return std::uint64_t(kept_values(T, B, K)) * sizeof(S);
        };
        if (bytes(T) <= memory_.bytes) return T;
        std::uint64_t least = bytes(T);
        Index least_K = T;
        for (Index segments = 2, last = T; segments <= (T + C - 1) / C; ++segments) {
            const Index K = whole_chunks((T + segments - 1) / segments);
            if (K >= last) continue;  // the same K as fewer segments
            last = K;
            const std::uint64_t b = bytes(K);
            if (b <= memory_.bytes) return K;
            if (b < least) least = b, least_K = K;
        }
        throw std::invalid_argument(
            "bptt_memory: a training forward of T=" + std::to_string(T) + " steps and B=" +
            std::to_string(B) + " rows keeps at least " + std::to_string(least) +
            " bytes (segments of " + std::to_string(least_K) + " steps), got a budget of " +
            std::to_string(memory_.bytes) + " bytes");
    }

    // Training forward that keeps checkpoints (memory-bounded BPTT, K < T): each layer and
    // direction runs segment by segment in its time order, keeping the state that enters
    // each segment; segment_forward computes for those steps what forward_layers computes.
    void forward_segments(Scratch<S>& ws, S* y, S* h_n, S* c_n, const S* x, const S* h0,
                          const S* c0, const std::int64_t* lengths, Index T, Index B, Index K,
                          std::uint64_t seed, std::uint64_t counter) {
        require_sizes(T, B, lengths);
        const Index TB = T * B, HC = Hout + H, segments = (T + K - 1) / K;
        cache_.valid = false;
        cache_.zero_h0 = h0 == nullptr;
        zero_states(m_, ws, B, h0, c0);
        if (cache_.layers.size() != std::size_t(L)) cache_.layers.resize(std::size_t(L));
        for (Index l = 0; l < L; ++l) {
            LayerCache<S>& lc = cache_.layers[std::size_t(l)];
            LayerCache<S> kept;  // the step buffers of full storage are freed
            kept.x = std::move(lc.x);
            kept.ckpt = std::move(lc.ckpt);
            lc = std::move(kept);
            lc.x.resize(l > 0 ? layer_sizes(m_, l, T, B, true).x : 0);
            lc.ckpt.resize(checked_mul(D * segments, B * HC));
        }
        cache_.lengths.assign(lengths ? lengths : nullptr, lengths ? lengths + B : nullptr);
        cache_.T = T;
        cache_.K = K;
        cache_.B = B;
        cache_.seed = seed;
        cache_.counter = counter;
        cache_.x = x;
        cache_.seg_out.resize(seg_out_values(K, B));
        cache_.seg_ln.resize(seg_ln_values(B));
        S* between = cache_.seg_out.data() + K * B * D * Hout;  // [2, B, Hout + H]

        for (Index l = 0; l < L; ++l) {
            LayerCache<S>& lc = cache_.layers[std::size_t(l)];
            const S* in = l == 0 ? x : lc.x.data();
            S* out = l == L - 1 ? y : cache_.layers[std::size_t(l + 1)].x.data();
            for (Index d = 0; d < D; ++d) {
                const Index k = l * D + d;
                const bool rev = m_.cfg.reverse || d == 1;
                const S* hs = h0 + k * B * Hout;
                const S* cs = c0 + k * B * H;
                for (Index j = 0; j < segments; ++j) {
                    const Index w = rev ? segments - 1 - j : j, t0 = w * K;
                    S* ck = lc.ckpt.data() + (d * segments + w) * B * HC;
                    std::copy(hs, hs + B * Hout, ck);
                    std::copy(cs, cs + B * H, ck + B * Hout);
                    const bool last = j == segments - 1;
                    S* hn = last ? h_n + k * B * Hout : between + (j & 1) * B * HC;
                    S* cn = last ? c_n + k * B * H : hn + B * Hout;
                    segment_forward(l, d, t0, std::min(K, T - t0), in, out + t0 * B * D * Hout,
                                    ck, ck + B * Hout, hn, cn, j == 0 && cache_.zero_h0);
                    hs = hn;
                    cs = cn;
                }
            }
            if (l < L - 1 && m_.cfg.dropout > 0)
                apply_dropout(out, TB * D * Hout, m_.cfg.dropout, seed, counter, l);
        }
        cache_.valid = true;
    }

    // Forward of direction d of layer l over the Tk steps from t0 (a segment), from the state
    // (h0, c0) entering it, into cache_.seg, exactly as forward_layers computes those steps
    // with full storage (same kernels on the same rows; masks drawn for the same elements).
    //   in   [T, B, I_l]          the layer's input, from step 0; read only
    //   y    [Tk, B, D*Hout]      output rows of the segment (this direction's columns)
    //   h0, c0 / h_n, c_n         state entering / leaving the segment, [B, Hout] / [B, H]
    //   zero_h0                   h0 is the call's zero initial state (DirectionPass)
    void segment_forward(Index l, Index d, Index t0, Index Tk, const S* in, S* y, const S* h0,
                         const S* c0, S* h_n, S* c_n, bool zero_h0) {
        LayerCache<S>& sc = cache_.seg;
        const Index B = cache_.B, I_l = m_.in_size(l), DG = D * G, k = l * D + d;
        const std::int64_t* lengths = cache_.lengths.empty() ? nullptr : cache_.lengths.data();
        size_layer(sc, layer_sizes(m_, l, Tk, B, l == 0));
        const S* xin = in + t0 * B * I_l;
        if (l == 0) {
            copy_input(sc.x.data(), in, lengths, t0, Tk, B, I_l);
            xin = sc.x.data();
        }
        draw_masks(m_, sc, l, d, d + 1, t0, Tk, B, cache_.seed, cache_.counter);
        const S* bias = m_.cfg.bias ? fw_.bias_sum.data() + l * DG : nullptr;
        project_inputs(sc.gates.data(), xin, Tk * B, I_l, DG, fw_.ln_weights ? nullptr : bias,
                       fw_.wih_t[std::size_t(l)]);
        if (fw_.ln_weights)
            layer_norm_inputs(sc.gates.data(), Tk * B, D, G,
                              m_.tensor(fw_.ln_weights, Param::layer_norm_ih_weight, l),
                              m_.tensor(fw_.ln_weights, Param::layer_norm_ih_bias, l), bias,
                              sc.ln_ih.data(), sc.ln_stats.data());
        const std::int64_t* seg_lengths = nullptr;
        if (lengths) {  // active(t, b) = t0 + t < lengths[b]
            cache_.seg_lengths.resize(std::size_t(B));
            for (Index b = 0; b < B; ++b) cache_.seg_lengths[std::size_t(b)] = lengths[b] - t0;
            seg_lengths = cache_.seg_lengths.data();
        }
        const TeamPlan plan = plan_team<S>(1, Tk, B, I_l, H, Hout, true);
        run_teams(1, &plan.threads, [&](int, int tid, int n, SpinBarrier& barrier) {
            DirectionPass<S> a = forward_pass<S>(m_, fw_, l, d, Tk, B, seg_lengths,
                                                 sc.gates.data(), &sc, nullptr,
                                                 cache_.seg_ln.data());
            if (m_.cfg.weight_drop > 0) a.whh_t = &wd_.whh_t[std::size_t(k)];
            a.zero_h0 = zero_h0 && fw_.whh_finite[std::size_t(k)];
            run_forward_direction(plan, a, fw_.cell(m_, k), y + d * Hout, h0, c0, h_n, c_n, tid,
                                  n, barrier);
        });
    }

    // Backward of layer l from checkpoints: for each direction, its segments in backward's
    // order (the reverse of its forward's), each recomputed from its checkpoint, then
    // backpropagated with the running dh and dc that the segment after it in the direction's
    // forward order handed back, then its chunks' parameter gradients.
    void backward_segments(Index l, const S* dout, S* din, S* dh0, S* dc0, const S* dh_n,
                           const S* dc_n) {
        LayerCache<S>& lc = cache_.layers[std::size_t(l)];
        LayerCache<S>& sc = cache_.seg;
        const Index T = cache_.T, B = cache_.B, K = cache_.K, C = chunk_steps(B),
                    HC = Hout + H, segments = (T + K - 1) / K, I_l = m_.in_size(l);
        const S* in = l == 0 ? cache_.x : lc.x.data();
        S* carry = bwd_.carry.data();  // running dh [B, Hout] and dc [B, H] between segments
        for (Index d = 0; d < D; ++d) {
            const Index k = l * D + d;
            const bool rev = m_.cfg.reverse || d == 1;
            const S* dhn = dh_n ? dh_n + k * B * Hout : nullptr;
            const S* dcn = dc_n ? dc_n + k * B * H : nullptr;
            for (Index j = 0; j < segments; ++j) {
                const Index w = rev ? j : segments - 1 - j, t0 = w * K, Tk = std::min(K, T - t0);
                const S* ck = lc.ckpt.data() + (d * segments + w) * B * HC;
                S* y = cache_.seg_out.data();
                S* state = y + K * B * D * Hout;
                const bool first_forward = rev ? w == segments - 1 : w == 0;
                segment_forward(l, d, t0, Tk, in, y, ck, ck + B * Hout, state, state + B * Hout,
                                first_forward && cache_.zero_h0);
                const bool last = j == segments - 1;
                S* dh_out = last ? dh0 + k * B * Hout : carry;
                S* dc_out = last ? dc0 + k * B * H : carry + B * Hout;
                const int team = plan_team<S>(1, Tk, B, I_l, H, Hout, false).threads;
                run_teams(1, &team, [&](int, int tid, int n, SpinBarrier& barrier) {
                    const DirectionPass<S> a = backward_pass(l, d, sc, Tk, cache_.seg_lengths);
                    const BackwardWork<S> work = backward_work(l, d, 0, bwd_.dhs.data(), j > 0);
                    backward_direction(a, fw_.cell(m_, k), dout + t0 * B * D * Hout + d * Hout,
                                       dhn, dcn, dh_out, dc_out, work, tid, n, barrier);
                });
                dhn = carry;
                dcn = carry + B * Hout;
                // the segment's chunks, in backward's order
                const Index chunks = (Tk + C - 1) / C;
                for (Index i = 0; i < chunks; ++i) {
                    const Index s0 = (rev ? i : chunks - 1 - i) * C;
                    const S* x = l == 0 ? sc.x.data() + s0 * B * I_l : in + (t0 + s0) * B * I_l;
                    chunk_grads(l, d, sc, Tk, s0, std::min(C, Tk - s0), x, bwd_.dhs.data(),
                                din + (t0 + s0) * B * I_l, j == 0 && i == 0);
                }
            }
        }
    }

    // The workspace of backward_direction for (layer l, direction d), with its running sums
    // (peepholes, layer norm) continuing the previous pass's when `accumulate`; slot: which
    // of bwd_.state's D parts; dhs: dh_t of the pass's steps (P > 0).
    BackwardWork<S> backward_work(Index l, Index d, Index slot, S* dhs, bool accumulate) {
        const Index B = cache_.B;
        S* st = bwd_.state.data() + slot * B * (2 * Hout + 2 * H);
        BackwardWork<S> w{st, st + 2 * B * Hout, st + 2 * B * Hout + B * H,
                          P > 0 ? dhs : nullptr,
                          m_.cfg.peepholes ? m_.tensor(dweights_.data(), Param::weight_peephole, l, d)
                                           : nullptr};
        if (m_.cfg.layer_norm) {
            w.ln = bwd_.ln.data() + slot * ln_work(B);
            w.dln = ForwardWeights<S, Panels<S>>::layer_norms(
                m_, dweights_.data(), l, d, Param::layer_norm_hh_weight, Param::layer_norm_c_weight);
        }
        w.accumulate = accumulate;
        return w;
    }
    Index ln_work(Index B) const { return B * (3 * H + 4 * blocks_of(H, gate_block<S>())); }

    // The share of direction d of layer l's parameter gradients and of dx from the Tc steps
    // from s0 of a pass of T steps stored in lc (all of a call with full storage, one segment
    // with memory-bounded BPTT): one chunk, in which both sum the gradients (chunk_steps).
    //   dW_ih[d] += da_d^T x,   dx (+)= da_d W_ih[d]   (overwritten for d = 0, added for d = 1)
    //   db_ih[d] += sum_rows da_d,   dW_hh[d] += da_d^T h_prev (h_prev * rmask with recurrent
    //   dropout),   dW_hr[d] += dh^T r
    // (layer norm: da_d of the products is d(x W_ih^T) and d(h W_hh^T), computed here and in
    // the time loop). Each thread owns a slice of each product's output rows, multiplied with
    // Eigen's single-threaded GEMM in its own packing blocks (gemm_space.hpp): the split and
    // the blocks follow from the chunk's sizes and the thread count alone.
    //   x    [Tc, B, I_l]   the layer's input at step s0; read only
    //   dhs  [T, B, P]      dh_t of the pass from its first step (P > 0); read only
    //   dx   [Tc, B, I_l]   rows of dx at step s0
    //   first               the first chunk of (l, d): the gradients are overwritten
    void chunk_grads(Index l, Index d, LayerCache<S>& lc, Index T, Index s0, Index Tc,
                     const S* x, const S* dhs, S* dx, bool first) {
        const Index B = cache_.B, rows = Tc * B, DG = D * G, I_l = m_.in_size(l), c0 = d * G;
        const bool rev = m_.cfg.reverse || d == 1, ln = m_.cfg.layer_norm;
        S* g = lc.gates.data() + s0 * B * DG;
        if (ln)
            layer_norm_inputs_backward(l, d, rows, g, lc.ln_ih.data() + s0 * B * DG,
                                       lc.ln_stats.data() + d * dir_span(T * B * 4) + s0 * B * 4,
                                       first);
        const S* hprev = lc.h.data() + d * dir_span((T + 1) * B * Hout) + slot_before(s0, rev) * B * Hout;
        if (m_.cfg.recurrent_dropout > 0) {  // W_hh multiplied h_prev * rmask: dW_hh takes it
            bwd_.hm.resize(checked_mul(rows, Hout));
            const S* mk = lc.rmask.data() + d * B * Hout;
            for (Index r = 0; r < rows; ++r)
                for (Index j = 0; j < Hout; ++j)
                    bwd_.hm[r * Hout + j] = hprev[r * Hout + j] * mk[(r % B) * Hout + j];
            hprev = bwd_.hm.data();
        }
        if (m_.cfg.bias) {  // row by row, in order
            S* db = m_.tensor(dweights_.data(), Param::bias_ih, l) + c0;
            if (first) std::fill_n(db, G, S(0));
            for (Index r = 0; r < rows; ++r)
                for (Index j = 0; j < G; ++j) db[j] += g[r * DG + c0 + j];
        }
        CMapRM<S> dA((ln ? lc.ln_ih.data() + s0 * B * DG : g) + c0, rows, G, Eigen::OuterStride<>(DG));
        CMapRM<S> X(x, rows, I_l, Eigen::OuterStride<>(I_l));
        MapRM<S> dWih(m_.tensor(dweights_.data(), Param::weight_ih, l) + c0 * I_l, G, I_l,
                      Eigen::OuterStride<>(I_l));
        CMapRM<S> Wih(tensor(Param::weight_ih, l, 0) + c0 * I_l, G, I_l, Eigen::OuterStride<>(I_l));
        MapRM<S> dX(dx, rows, I_l, Eigen::OuterStride<>(I_l));
        CMapRM<S> dAhh(ln ? lc.ln_hh.data() + d * dir_span(T * B * G) + s0 * B * G : g + c0, rows,
                       G, Eigen::OuterStride<>(ln ? G : DG));
        CMapRM<S> Hprev(hprev, rows, Hout, Eigen::OuterStride<>(Hout));
        MapRM<S> dWhh(m_.tensor(dweights_.data(), Param::weight_hh, l, d), G, Hout,
                      Eigen::OuterStride<>(Hout));
        const double work = double(rows) * double(G) * double(2 * I_l + Hout + P);
        parallel_slices(num_threads(), work, [&](int tid, int n) {
            GemmSpace<S>& space = bwd_.gemm[std::size_t(tid)];
            Index r0, r1;
            split_range(G, 16, tid, n, r0, r1);
            if (first) dWih.middleRows(r0, r1 - r0).setZero();
            space.add_product(dWih.middleRows(r0, r1 - r0), dA.middleCols(r0, r1 - r0).transpose(), X);
            if (first) dWhh.middleRows(r0, r1 - r0).setZero();
            space.add_product(dWhh.middleRows(r0, r1 - r0), dAhh.middleCols(r0, r1 - r0).transpose(),
                              Hprev);
            split_range(rows, 16, tid, n, r0, r1);
            if (d == 0) dX.middleRows(r0, r1 - r0).setZero();
            space.add_product(dX.middleRows(r0, r1 - r0), dA.middleRows(r0, r1 - r0), Wih);
            if (P > 0) {
                CMapRM<S> dH(dhs + s0 * B * P, rows, P, Eigen::OuterStride<>(P));
                CMapRM<S> R(lc.r.data() + d * dir_span(T * B * H) + s0 * B * H, rows, H,
                            Eigen::OuterStride<>(H));
                MapRM<S> dWhr(m_.tensor(dweights_.data(), Param::weight_hr, l, d), P, H,
                              Eigen::OuterStride<>(H));
                split_range(P, 8, tid, n, r0, r1);
                if (first) dWhr.middleRows(r0, r1 - r0).setZero();
                space.add_product(dWhr.middleRows(r0, r1 - r0), dH.middleCols(r0, r1 - r0).transpose(), R);
            }
        });
    }

    // Backward of the input projection's layer norm of direction d of layer l over `rows` rows
    // (forward: pre = gain*xhat + shift + ..., xhat = LN(x W_ih^T)), from dz = d(pre) (gates,
    // row stride D*G): the gain and shift gradients, sums over rows of dz*xhat and dz in row
    // order (added to, or overwritten when `first`), and d(x W_ih^T) in place of xhat (rows
    // split between the threads). stats: rstd of each row, element 0 of 4.
    void layer_norm_inputs_backward(Index l, Index d, Index rows, const S* dz, S* xhat,
                                    const S* stats, bool first) {
        const Index DG = D * G, c0 = d * G;
        // row by row: contiguous vectors (a column sum of a row-major matrix would stride)
        LnVec<S> dgain(m_.tensor(dweights_.data(), Param::layer_norm_ih_weight, l) + c0, G),
            dshift(m_.tensor(dweights_.data(), Param::layer_norm_ih_bias, l) + c0, G);
        if (first) {
            dgain.setZero();
            dshift.setZero();
        }
        for (Index r = 0; r < rows; ++r) {
            const LnCVec<S> dz_r(dz + r * DG + c0, G);
            dgain += dz_r * LnCVec<S>(xhat + r * DG + c0, G);
            dshift += dz_r;
        }
        const S* gain = tensor(Param::layer_norm_ih_weight, l, 0) + c0;
        const int threads = num_threads();
        bwd_.ln_rows.resize(checked_mul(threads, G));
        parallel_slices(threads, 8.0 * double(rows) * double(G), [&](int tid, int n) {
            Index r0, r1;
            split_range(rows, 1, tid, n, r0, r1);
            LnVec<S> dx(bwd_.ln_rows.data() + tid * G, G);
            for (Index r = r0; r < r1; ++r) {
                LnVec<S> x(xhat + r * DG + c0, G);
                dx = LnCVec<S>(gain, G) * LnCVec<S>(dz + r * DG + c0, G);
                S m1, m2, sums[2];
                piece_sums(dx.data(), x.data(), G, sums);
                combine_sums(sums, 1, G, m1, m2);
                x = stats[r * 4] * (dx - m1 - x * m2);
            }
        });
    }

    // Tensor (k, l, d) of the engine-order copy of the weights: what the compute reads.
    const S* tensor(Param k, Index l, Index d) const { return m_.tensor(weights_.data(), k, l, d); }

    // fn(e, t, n) for every run of every parameter tensor: the n values at offset e of a buffer
    // in engine order are the n values at offset t of one in torch order (layout.hpp: the gate
    // rows of weight_ih, weight_hh and the biases are permuted, weight_hr's rows are not). A
    // run is one gate of one block of units, rows that are consecutive in both orders, or all
    // of weight_hr.
    template <typename F>
    void for_each_run(F&& fn) const {
        const Index HB = gate_block<S>();
        for (Index l = 0; l < L; ++l)
            for (int kind = 0; kind < kNumParamKinds; ++kind) {
                const Param k = Param(kind);
                if (!m_.has(k)) continue;
                const Index n = m_.cols(k, l);
                for (Index d = 0; d < D; ++d) {
                    const Index base = m_.tensor_offset(k, l, d);
                    if (!Layout<S>::gate_rows(k)) {
                        fn(base, base, m_.rows(k) * n);
                        continue;
                    }
                    for (Index u0 = 0; u0 < H; u0 += HB) {  // block of w units from u0
                        const Index w = std::min(HB, H - u0);
                        for (Index e = m_.NG * u0; e < m_.NG * (u0 + w); e += w)  // its gates
                            fn(base + e * n, base + m_.perm[std::size_t(e)] * n, w * n);
                    }
                }
            }
    }

    // for_each_run over the threads, each taking an equal share of the buffer's values (a run
    // may be cut: its values map one to one). A value moved costs about as much as 32
    // multiply-adds of a GEMM (one load and one store against two FMAs of 16 lanes a cycle),
    // so buffers under 128K values stay on one thread, where a fork/join would cost more.
    template <typename F>
    void for_each_run_parallel(F&& fn) const {
        parallel_slices(num_threads(), 32.0 * double(m_.size), [&](int tid, int n) {
            const Index lo = m_.size * tid / n, hi = m_.size * (tid + 1) / n;
            for_each_run([&](Index e, Index t, Index len) {
                const Index a = std::max(e, lo), b = std::min(e + len, hi);
                if (a < b) fn(a, t + (a - e), b - a);
            });
        });
    }

    // The DirectionPass of a backward through (layer l, direction d): the forward's, with the
    // transposed panels its products take.
    // The pass of backward_direction over T steps stored in lc, with these lengths (empty:
    // all T).
    DirectionPass<S> backward_pass(Index l, Index d, LayerCache<S>& lc, Index T,
                                   const std::vector<std::int64_t>& lengths) const {
        DirectionPass<S> a = forward_pass<S>(m_, fw_, l, d, T, cache_.B,
                                             lengths.empty() ? nullptr : lengths.data(),
                                             lc.gates.data(), &lc, nullptr, nullptr);
        const BackwardPanels& pk = backward_panels_[std::size_t(l * D + d)];
        a.whh = m_.cfg.weight_drop > 0 ? &wd_.whh[std::size_t(l * D + d)] : &pk.whh;
        if (P > 0) a.whr = &pk.whr;
        return a;
    }

    const Layout<S>& m_;
    const S* params_;                // [m_.size] the parameters, torch order (the front end's)
    S* grads_;                       // [m_.size] their gradients, torch order; backward adds
    const Index H, P, Hout, G, D, L;
    Buffer<S> weights_;              // [m_.size] the parameters in engine order (gate rows
                                     //           interleaved), gathered by params_updated()
    Buffer<S> dweights_;             // [m_.size] one backward's parameter gradients in engine
                                     //           order, added to grads_ when it succeeds
    ForwardWeights<S, Panels<S>> fw_;             // packed from weights_
    std::vector<BackwardPanels> backward_panels_;  // [L*D] packed from weights_
    Cache<S> cache_;
    typename LSTM<S>::BpttMemory memory_;  // what training forwards keep (set_bptt_memory)
    BackwardBuffers bwd_;
    WeightDrop wd_;
    Scratch<S> scratch_;         // forward and forward_last, taken through a ScratchLease
    std::mutex scratch_mutex_;   // held by the call using scratch_
};

template <typename S>
void EngineImpl<S>::params_updated() {
    // The compute reads gate rows in engine order: gather them from torch's order once here
    // instead of permuting in every product.
    for_each_run_parallel([&](Index e, Index t, Index n) {
        std::copy(params_ + t, params_ + t + n, weights_.data() + e);
    });
    for (Index l = 0; l < L; ++l) {
        const S* wih = tensor(Param::weight_ih, l, 0);  // [D*G, I_l]
        fw_.wih_t[std::size_t(l)].pack(wih, m_.in_size(l), D * G, 1, m_.in_size(l));
    }
    for (Index l = 0; l < L; ++l)
        for (Index d = 0; d < D; ++d) {
            const std::size_t k = std::size_t(l * D + d);
            BackwardPanels& pk = backward_panels_[k];
            const S* whh = tensor(Param::weight_hh, l, d);   // [G, Hout]
            fw_.whh_t[k].pack(whh, Hout, G, 1, Hout);
            pk.whh.pack(whh, G, Hout, Hout, 1);
            fw_.whh_finite[k] =
                Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(whh, G * Hout).allFinite();
            if (P > 0) {
                const S* whr = tensor(Param::weight_hr, l, d);  // [P, H]
                fw_.whr_t[k].pack(whr, H, P, 1, H);
                pk.whr.pack(whr, P, H, H, 1);
            }
            if (m_.cfg.bias) {
                S* b = fw_.bias_sum.data() + (l * D + d) * G;
                const S* bi = tensor(Param::bias_ih, l, d);
                const S* bh = tensor(Param::bias_hh, l, d);
                for (Index g = 0; g < G; ++g) b[g] = bi[g] + bh[g];
            }
            if (m_.cfg.peepholes) {
                const S* pp = tensor(Param::weight_peephole, l, d);
                std::copy(pp, pp + 3 * H, fw_.peephole.data() + (l * D + d) * 3 * H);
            }
        }
}

// ============================================================================================
// forward
// ============================================================================================

template <typename S, typename W>
void forward_layers(const Layout<S>& m, const ForwardWeights<S, W>& fw, Scratch<S>& ws,
                    Cache<S>* cache, S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                    const std::int64_t* lengths, Index T, Index B, std::uint64_t seed,
                    std::uint64_t counter, const std::vector<W>* whh_t) {
    require_sizes(T, B, lengths);
    const Index I = m.cfg.input_size, H = m.H, Hout = m.Hout, D = m.D, L = m.L,
                TB = checked_mul(T, B), DG = D * m.G;
    const bool training = cache != nullptr;
    Index step_bytes = 0;  // the most of W_ih and W_hh that one direction reads a step
    for (Index l = 0; l < L; ++l)
        step_bytes = std::max(step_bytes, fw.wih_t[std::size_t(l)].bytes() / D +
                                              fw.whh_t[std::size_t(l * D)].bytes());
    // An eval forward may project each step's input in the time loop (DirectionPass::x) instead
    // of all steps' at once, where each thread's gate columns start on a panel of the input
    // weights: always with one direction, with two when G is a whole number of panels. Every
    // value is the same either way. Reduced precision always (bench/README.md). Float from
    // kStepInputRows rows, if a step's weights take at most kStepInputBytes (a direction's
    // share of W_ih and its W_hh: with one direction on 2 threads, 1 MiB a thread, in L2):
    // its steps then run in chunks that keep their pre-activations in L1, where the
    // all-steps product writes them all out (13 MB at B = 32, T = 100, H = 256) and the loop
    // reads them back. Eval forwards on 2 threads, all-steps -> per-step, ms: (B, T, I, H) =
    // (32, 100, 256, 256) 14.2-15.1 -> 12.8; (16, 100, 256, 256) 6.8-7.0 -> 6.5;
    // (64, 50, 128, 128) 4.3-4.4 -> 3.4; (8, 100, 256, 256) 3.26 either way. With fewer rows
    // the all-steps product's long row blocks win ((2, 100, 256, 256) 1.23-1.28 -> 1.43-1.46),
    // and with more weights they stream from L3 every step ((8, 50, 512, 512) 7.6-7.7 ->
    // 9.9-10.3).
    constexpr Index kStepInputRows = 16, kStepInputBytes = Index(2) << 20;
    const bool step_inputs =
        !training && !m.cfg.layer_norm && (D == 1 || m.G % Simd<S>::NR == 0) &&
        (!std::is_same<W, Panels<S>>::value || (B >= kStepInputRows && step_bytes <= kStepInputBytes));
    const TeamPlan plan = plan_team<S>(D, T, B, I, H, Hout, true, step_inputs ? step_bytes : 0);
    const int teams[2] = {plan.threads, plan.threads};

    // Zero initial states when none are given, and the eval buffers, come from the calling
    // thread's scratch; training uses the cache, allocated once per (T, B) and reused.
    const bool zero_h0 = h0 == nullptr;
    zero_states(m, ws, B, h0, c0);
    if (training) {
        if (cache->layers.size() != std::size_t(L)) cache->layers.resize(std::size_t(L));
        cache->valid = false;
        for (Index l = 0; l < L; ++l) {
            LayerCache<S>& lc = cache->layers[std::size_t(l)];
            size_layer(lc, layer_sizes(m, l, T, B, true));
            lc.ckpt = Buffer<S>();
            draw_masks(m, lc, l, 0, D, 0, T, B, seed, counter);
        }
        cache->lengths.assign(lengths ? lengths : nullptr, lengths ? lengths + B : nullptr);
        cache->T = cache->K = T;
        cache->B = B;
        cache->zero_h0 = zero_h0;
        cache->seed = seed;
        cache->counter = counter;
        cache->x = nullptr;
        cache->seg = LayerCache<S>();  // full storage needs no segment buffers
        cache->seg_out = Buffer<S>();
        cache->seg_ln = Buffer<S>();
        copy_input(cache->layers[0].x.data(), x, lengths, 0, T, B, I);
    } else {
        ws.gates.resize(step_inputs ? checked_mul(B, DG) : checked_mul(TB, DG));
        if (L > 1) {
            ws.io[0].resize(checked_mul(TB, D * Hout));
            ws.io[1].resize(checked_mul(TB, D * Hout));
        }
        ws.state.resize(checked_mul(D, checked_mul(B, 2 * Hout + 2 * H + H)));
    }
    if (m.cfg.layer_norm)
        ws.ln.resize(checked_mul(D, checked_mul(B, m.G + 4 * blocks_of(H, gate_block<S>()))));
    const std::int64_t* lens =
        training ? (cache->lengths.empty() ? nullptr : cache->lengths.data()) : lengths;

    for (Index l = 0; l < L; ++l) {
        LayerCache<S>* lc = training ? &cache->layers[std::size_t(l)] : nullptr;
        const S* in = training ? lc->x.data() : (l == 0 ? x : ws.io[(l - 1) & 1].data());
        S* out = l == L - 1 ? y
                            : (training ? cache->layers[std::size_t(l + 1)].x.data()
                                        : ws.io[l & 1].data());
        S* gates = training ? lc->gates.data() : ws.gates.data();

        // One product projects the input of every step for both directions:
        //   pre[T*B, D*G] = x[T*B, I] W_ih[D*G, I]^T + (b_ih + b_hh)
        // (layer norm: pre = LN(x W_ih^T) + (b_ih + b_hh)); with step_inputs the time loop
        // projects each step's input instead, into gates [B, D*G]
        const S* bias = m.cfg.bias ? fw.bias_sum.data() + l * DG : nullptr;
        if (!step_inputs)
            project_inputs(gates, in, TB, m.in_size(l), DG, fw.ln_weights ? nullptr : bias,
                           fw.wih_t[std::size_t(l)]);
        if (fw.ln_weights)
            layer_norm_inputs(gates, TB, D, m.G,
                              m.tensor(fw.ln_weights, Param::layer_norm_ih_weight, l),
                              m.tensor(fw.ln_weights, Param::layer_norm_ih_bias, l), bias,
                              training ? lc->ln_ih.data() : nullptr,
                              training ? lc->ln_stats.data() : nullptr);

        run_teams(int(D), teams, [&](int d, int tid, int n, SpinBarrier& barrier) {
            const Index k = l * D + d;
            DirectionPass<S, W> a = forward_pass(m, fw, l, d, T, B, lens, gates, lc,
                                                 ws.state.data(), ws.ln.data());
            if (whh_t) a.whh_t = &(*whh_t)[std::size_t(k)];
            if (step_inputs) {
                a.x = in;
                a.I = m.in_size(l);
                a.wih_t = &fw.wih_t[std::size_t(l)];
                a.wih_col = d * m.G;
                a.bias = bias;
            }
            a.zero_h0 = zero_h0 && fw.whh_finite[std::size_t(k)];
            run_forward_direction(plan, a, fw.cell(m, k), out + d * Hout, h0 + k * B * Hout,
                                  c0 + k * B * H, h_n + k * B * Hout, c_n + k * B * H, tid, n,
                                  barrier);
        });

        if (training && l < L - 1 && m.cfg.dropout > 0)
            apply_dropout(out, TB * D * Hout, m.cfg.dropout, seed, counter, l);
    }
    if (training) cache->valid = true;
}

// ============================================================================================
// inference through a linear head on each sequence's last step
// ============================================================================================

// out[b] = y[last_b, b, :] W^T + bias, with y the top layer's eval output and last_b =
// lengths[b] - 1 (T - 1 without lengths). The reverse direction's y[last_b] is its state after
// its first step (it starts at each sequence's last valid step), as torch's out[:, last, :].
template <typename S>
void EngineImpl<S>::forward_last(S* out, const S* x, const std::int64_t* lengths, Index T,
                                 Index B, bool batch_first, const S* W, const S* bias, Index O) {
    const DenormalScope denormals;
    ScratchLease<S> lease(scratch_, scratch_mutex_);
    Scratch<S>& ws = lease.get();
    EIGENLSTM_REQUIRE(T >= 1, "T must be >= 1 (the output is read at a last step), got " + std::to_string(T));
    EIGENLSTM_REQUIRE(B >= 0, "B must be >= 0, got " + std::to_string(B));
    EIGENLSTM_REQUIRE(O >= 1, "O must be >= 1, got " + std::to_string(O));
    require_lengths(lengths, B, 1, T);  // each sequence needs a last step
    const Index I = m_.cfg.input_size, DH = D * Hout, TB = checked_mul(T, B);
    if (batch_first) {  // [B, T, I] -> [T, B, I]: a time step's rows are contiguous
        ws.x.resize(checked_mul(TB, I));
        for (Index b = 0; b < B; ++b)
            for (Index t = 0; t < T; ++t)
                std::copy(x + (b * T + t) * I, x + (b * T + t + 1) * I, ws.x.data() + (t * B + b) * I);
        x = ws.x.data();
    }
    ws.y.resize(checked_mul(TB, DH));
    ws.hc.resize(checked_mul(D * L * B, Hout + H));
    S* h_n = ws.hc.data();
    forward_layers<S>(m_, fw_, ws, nullptr, ws.y.data(), h_n, h_n + D * L * B * Hout, x, nullptr,
                      nullptr, lengths, T, B, 0, 0);
    ws.last.resize(checked_mul(B, DH));
    for (Index b = 0; b < B; ++b) {
        const S* row = ws.y.data() + ((lengths ? lengths[b] - 1 : T - 1) * B + b) * DH;
        std::copy(row, row + DH, ws.last.data() + b * DH);
    }
    CMapRM<S> last(ws.last.data(), B, DH, Eigen::OuterStride<>(DH));
    CMapRM<S> w(W, O, DH, Eigen::OuterStride<>(DH));
    MapRM<S> o(out, B, O, Eigen::OuterStride<>(O));
    o.setZero();
    ws.head.add_product(o, last, w.transpose());
    if (bias) o.rowwise() += Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(bias, O);
}

// ============================================================================================
// backward
// ============================================================================================

template <typename S>
void EngineImpl<S>::backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n) {
    const DenormalScope denormals;
    if (!cache_.valid)
        throw std::logic_error(
            "backward needs a training-mode forward first (the cache is consumed by backward)");
    cache_.valid = false;  // the gate buffers are about to hold gradients
    const Index T = cache_.T, B = cache_.B, TB = T * B, C = chunk_steps(B);
    const bool segmented = cache_.K < T;
    const int nteam = plan_team<S>(D, T, B, m_.cfg.input_size, H, Hout, false).threads;
    const int teams[2] = {nteam, nteam};

    bwd_.state.resize(checked_mul(D, checked_mul(B, 2 * Hout + 2 * H)));
    if (m_.cfg.layer_norm) bwd_.ln.resize(checked_mul(D, ln_work(B)));
    if (P > 0)
        bwd_.dhs.resize(segmented ? checked_mul(cache_.K * B, P)
                                  : checked_mul(D, dir_span(checked_mul(TB, P))));
    if (segmented) bwd_.carry.resize(checked_mul(B, Hout + H));
    if (L > 1) {
        bwd_.dio[0].resize(checked_mul(TB, D * Hout));
        bwd_.dio[1].resize(checked_mul(TB, D * Hout));
    }
    // The products' thread count, read once: each thread multiplies in its own blocks.
    if (bwd_.gemm.size() < std::size_t(num_threads())) bwd_.gemm.resize(std::size_t(num_threads()));

    for (Index l = L - 1; l >= 0; --l) {
        const S* dout = l == L - 1 ? dy : bwd_.dio[l & 1].data();
        S* din = l == 0 ? dx : bwd_.dio[(l - 1) & 1].data();
        const Index I_l = m_.in_size(l);
        if (segmented) {
            backward_segments(l, dout, din, dh0, dc0, dh_n, dc_n);
        } else {
            LayerCache<S>& lc = cache_.layers[std::size_t(l)];
            run_teams(int(D), teams, [&](int d, int tid, int n, SpinBarrier& barrier) {
                const DirectionPass<S> a = backward_pass(l, d, lc, T, cache_.lengths);
                const Index k = l * D + d;
                const BackwardWork<S> w =
                    backward_work(l, d, d, bwd_.dhs.data() + d * dir_span(TB * P), false);
                backward_direction(a, fw_.cell(m_, k), dout + d * Hout,
                                   dh_n ? dh_n + k * B * Hout : nullptr,
                                   dc_n ? dc_n + k * B * H : nullptr, dh0 + k * B * Hout,
                                   dc0 + k * B * H, w, tid, n, barrier);
            });
            // The parameter gradients chunk by chunk, in each direction's backward order (the
            // order memory-bounded BPTT meets them in).
            const Index chunks = (T + C - 1) / C;
            for (Index d = 0; d < D; ++d) {
                const bool rev = m_.cfg.reverse || d == 1;
                for (Index i = 0; i < chunks; ++i) {
                    const Index s0 = (rev ? i : chunks - 1 - i) * C;
                    chunk_grads(l, d, lc, T, s0, std::min(C, T - s0), lc.x.data() + s0 * B * I_l,
                                bwd_.dhs.data() + d * dir_span(TB * P), din + s0 * B * I_l,
                                i == 0);
                }
            }
        }
        // weight_drop: the products took W_hh * M, so dW_hh = M * d(W_hh * M)
        if (m_.cfg.weight_drop > 0)
            for (Index d = 0; d < D; ++d) {
                MapRM<S> dWhh(m_.tensor(dweights_.data(), Param::weight_hh, l, d), G, Hout,
                              Eigen::OuterStride<>(Hout));
                dWhh.array() *= CMapRM<S>(wd_.mask.data() + (l * D + d) * G * Hout, G, Hout,
                                          Eigen::OuterStride<>(Hout))
                                    .array();
            }
        if (m_.cfg.bias)  // db_hh = db_ih: both biases enter the same sum
            std::copy_n(m_.tensor(dweights_.data(), Param::bias_ih, l), D * G,
                        m_.tensor(dweights_.data(), Param::bias_hh, l));
        // The input of layer l > 0 was dropout(y_{l-1}): dy_{l-1} = din * mask, same mask.
        if (l > 0 && m_.cfg.dropout > 0)
            apply_dropout(din, TB * D * Hout, m_.cfg.dropout, cache_.seed, cache_.counter, l - 1);
    }
    // grads += dweights, each engine run added to its torch run.
    using Vec = Eigen::Array<S, Eigen::Dynamic, 1>;
    for_each_run_parallel([&](Index e, Index t, Index n) {
        Eigen::Map<Vec>(grads_ + t, n) += Eigen::Map<const Vec>(dweights_.data() + e, n);
    });
}

// ============================================================================================
// reduced precision (inference)
// ============================================================================================

// One row of a reduced-precision tensor: its values (int8, or bfloat16 bits) and its scale.
struct QuantizedRow {
    const void* values;
    float scale;
};

// Packs the [K, N] matrix whose column n is the row row_of(n) (K values) of a torch tensor:
// the transposed weights the products take. Int8: scale_of the column is its row's scale, and
// the activations it multiplies are quantized to `levels` (Int8Rows: 255 for inputs that may
// be anything, 127 for the states h and r, bounded in (-1, 1)).
template <typename RowOf>
void pack_rows(Int8Panels& w, Index K, Index N, int levels, RowOf&& row_of) {
    w.pack(
        K, N, levels,
        [&](Index k, Index n) { return static_cast<const std::int8_t*>(row_of(n).values)[k]; },
        [&](Index n) { return row_of(n).scale; });
}
template <typename RowOf>
void pack_rows(Bf16Panels& w, Index K, Index N, int /*levels*/, RowOf&& row_of) {
    w.pack(K, N, [&](Index k, Index n) {
        return static_cast<const std::uint16_t*>(row_of(n).values)[k];
    });
}

// Is every weight finite (so that a zero state times W_hh is exactly zero)? Int8 values are;
// their scales may not be. Bfloat16: no exponent of all ones.
bool finite_rows(Index rows, Index K, Precision p, const void* values, const float* scale) {
    if (p == Precision::int8) {
        for (Index r = 0; r < rows; ++r)
            if (!std::isfinite(scale[r])) return false;
        return true;
    }
    const auto* v = static_cast<const std::uint16_t*>(values);
    for (Index i = 0; i < rows * K; ++i)
        if ((v[i] & 0x7f80u) == 0x7f80u) return false;
    return true;
}

// The layer stack of a QuantizedLSTM, W = Int8Panels or Bf16Panels: the float32 engine's
// forward_layers, time loops and cell over weights packed once here.
template <typename W>
class QuantizedEngineImpl final : public QuantizedEngine {
public:
    QuantizedEngineImpl(const Layout<float>& layout, Precision p, const QuantizedWeights& qw)
        : m_(layout), fw_(layout) {
        const Index G = m_.G, H = m_.H, P = m_.P, Hout = m_.Hout, D = m_.D;
        const Index bytes = p == Precision::int8 ? 1 : 2;
        auto row = [&](const std::vector<const void*>& v, const std::vector<const float*>& sc,
                       Index k, Index r, Index K) {
            return QuantizedRow{static_cast<const char*>(v[std::size_t(k)]) + r * K * bytes,
                                p == Precision::int8 ? sc[std::size_t(k)][r] : 1.0f};
        };
        for (Index l = 0; l < m_.L; ++l) {
            const Index K = m_.in_size(l);
            // both directions: column n is direction n / G's engine gate row n % G. The input
            // of layer 0 is the user's x; above it, the states h of the layer below.
            pack_rows(fw_.wih_t[std::size_t(l)], K, D * G, l == 0 ? 255 : 127, [&](Index n) {
                return row(qw.weight_ih, qw.scale_ih, l * D + n / G, m_.perm[std::size_t(n % G)], K);
            });
            for (Index d = 0; d < D; ++d) {
                const Index k = l * D + d;
                pack_rows(fw_.whh_t[std::size_t(k)], Hout, G, 127, [&](Index n) {
                    return row(qw.weight_hh, qw.scale_hh, k, m_.perm[std::size_t(n)], Hout);
                });
                fw_.whh_finite[std::size_t(k)] =
                    finite_rows(G, Hout, p, qw.weight_hh[std::size_t(k)],
                                p == Precision::int8 ? qw.scale_hh[std::size_t(k)] : nullptr);
                if (P > 0)
                    pack_rows(fw_.whr_t[std::size_t(k)], H, P, 127,
                              [&](Index n) { return row(qw.weight_hr, qw.scale_hr, k, n, H); });
                if (m_.cfg.bias) {
                    float* b = fw_.bias_sum.data() + k * G;
                    const float* bi = qw.bias_ih[std::size_t(k)];
                    const float* bh = qw.bias_hh[std::size_t(k)];
                    for (Index e = 0; e < G; ++e) {
                        const Index t = m_.perm[std::size_t(e)];
                        b[e] = bi[t] + bh[t];
                    }
                }
                if (m_.cfg.peepholes)
                    std::copy(qw.peephole[std::size_t(k)], qw.peephole[std::size_t(k)] + 3 * H,
                              fw_.peephole.data() + k * 3 * H);
            }
        }
    }

    void forward(float* y, float* h_n, float* c_n, const float* x, const float* h0,
                 const float* c0, const std::int64_t* lengths, Index T, Index B) override {
        const DenormalScope denormals;
        ScratchLease<float> ws(scratch_, scratch_mutex_);
        forward_layers<float>(m_, fw_, ws.get(), nullptr, y, h_n, c_n, x, h0, c0, lengths, T, B,
                              0, 0);
    }

private:
    const Layout<float>& m_;
    ForwardWeights<float, W> fw_;
    Scratch<float> scratch_;      // taken through a ScratchLease, as EngineImpl's
    std::mutex scratch_mutex_;
};

// y = x W^T + bias, W packed as a [K, N] reduced-precision matrix.
template <typename W>
class QuantizedMatrixImpl final : public QuantizedMatrix {
public:
    QuantizedMatrixImpl(Index K, Index N, Precision p, const void* weight, const float* scale,
                        const float* bias)
        : K_(K), N_(N) {
        const Index bytes = p == Precision::int8 ? 1 : 2;
        pack_rows(w_, K, N, 255, [&](Index n) {
            return QuantizedRow{static_cast<const char*>(weight) + n * K * bytes,
                                p == Precision::int8 ? scale[n] : 1.0f};
        });
        if (bias) {
            bias_.resize(N);
            std::copy(bias, bias + N, bias_.data());
        }
    }
    void multiply(float* y, const float* x, Index M) const override {
        const DenormalScope denormals;
        EIGENLSTM_REQUIRE(M >= 0, "M must be >= 0, got " + std::to_string(M));
        project_inputs(y, x, M, K_, N_, bias_.size() ? bias_.data() : nullptr, w_);
    }

private:
    const Index K_, N_;
    W w_;
    Buffer<float> bias_;  // [N], or empty
};

QuantizedEngine* make_quantized(const Layout<float>& layout, Precision p,
                                const QuantizedWeights& w) {
    if (p == Precision::int8) return new QuantizedEngineImpl<Int8Panels>(layout, p, w);
    return new QuantizedEngineImpl<Bf16Panels>(layout, p, w);
}

QuantizedMatrix* make_quantized_matrix(Index in_features, Index out_features, Precision p,
                                       const void* weight, const float* scale,
                                       const float* bias) {
    if (p == Precision::int8)
        return new QuantizedMatrixImpl<Int8Panels>(in_features, out_features, p, weight, scale, bias);
    return new QuantizedMatrixImpl<Bf16Panels>(in_features, out_features, p, weight, scale, bias);
}

void set_features(bool vnni, bool bf16, bool amx) {
    features().vnni = vnni && kHasReducedPrecisionKernels;
    features().bf16 = bf16 && kHasReducedPrecisionKernels;
    features().amx = amx && features().vnni && features().bf16;
}

const char* kernel_name(Precision p) {
    return p == Precision::int8 ? int8_kernel() : bf16_kernel();
}

// ============================================================================================
// the back end's entry points
// ============================================================================================

template <typename S>
Engine<S>* make_engine(const Layout<S>& layout, const S* params, S* grads) {
    return new EngineImpl<S>(layout, params, grads);
}

void set_threads(int n) { thread_setting().store(n); }
int get_threads() { return num_threads(); }
void set_flush(bool on) { flush_denormal_setting().store(on); }
bool get_flush() { return flush_denormal_setting().load(); }
void arm_fault(bool armed) { fail_next_region().store(armed); }

#define EIGENLSTM_STR2(x) #x
#define EIGENLSTM_STR(x) EIGENLSTM_STR2(x)

#if defined(__clang__)
#define EIGENLSTM_COMPILER "clang " __clang_version__
#elif defined(__GNUC__)
#define EIGENLSTM_COMPILER "gcc " __VERSION__
#else
#define EIGENLSTM_COMPILER "unknown"
#endif

#ifdef _OPENMP
constexpr int kOpenMP = _OPENMP;
#else
constexpr int kOpenMP = 0;
#endif

constexpr const char* kEigenVersion = EIGENLSTM_STR(EIGEN_WORLD_VERSION) "." EIGENLSTM_STR(
    EIGEN_MAJOR_VERSION) "." EIGENLSTM_STR(EIGEN_MINOR_VERSION);

const Backend& backend_table() {
    static const std::string simd = Eigen::SimdInstructionSetsInUse();
    static const Backend table{kBackendAbi,         EIGENLSTM_STR(EIGENLSTM_ISA),
                               EIGENLSTM_COMPILER,  kEigenVersion,      simd.c_str(),
                               kOpenMP,             &make_engine<float>,
                               &make_engine<double>, &set_threads,
                               &get_threads,        &set_flush,
                               &get_flush,          &arm_fault,
                               &set_features,       &kernel_name,
                               &make_quantized,     &make_quantized_matrix};
    return table;
}

}  // namespace
}  // namespace detail
}  // namespace eigenlstm

extern "C" __attribute__((visibility("default"))) const eigenlstm::detail::Backend*
eigenlstm_backend() {
    return &eigenlstm::detail::backend_table();
}
