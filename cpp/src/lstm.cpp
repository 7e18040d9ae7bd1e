// The LSTM engine: parameter layout, forward and backward (BPTT) over layers and directions.
// The big products over all T*B rows go to Eigen's GEMM; each time step runs the packed
// register-blocked GEMM from kernels.hpp and a fused elementwise pass. Knows nothing of Python.
#include "eigenlstm/lstm.hpp"

#include <Eigen/Core>

#include <array>
#include <atomic>
#include <stdexcept>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "kernels.hpp"

namespace eigenlstm {

using detail::Buffer;
using detail::checked_mul;
using detail::Panels;
using detail::split_range;

// Size letters: T time, B batch, I layer input size, H hidden, P projection, Hout = P or H,
// D directions, L layers, G = 4H gate rows. HB = gate_block<S>() hidden units per gate block.

// ============================================================================================
// configuration and threads
// ============================================================================================

// Throws std::invalid_argument(message) unless cond holds. A macro so that the message, which
// formats numbers, is only built on failure: these checks run on every call.
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
}

namespace {
// Every lengths[b], b < B, in [lo, T] (no lengths: nothing to check); std::invalid_argument
// naming the first that is not.
void require_lengths(const std::int64_t* lengths, Index B, Index lo, Index T) {
    if (!lengths) return;
    for (Index b = 0; b < B; ++b)
        EIGENLSTM_REQUIRE(lengths[b] >= lo && lengths[b] <= T,
                          "lengths[" + std::to_string(b) + "] must be in [" + std::to_string(lo) +
                              ", " + std::to_string(T) + "], got " + std::to_string(lengths[b]));
}

int default_threads() {
#ifdef _OPENMP
    return std::max(1, omp_get_max_threads());
#else
    return 1;
#endif
}
std::atomic<int>& thread_setting() {
    static std::atomic<int> n{default_threads()};
    return n;
}
}  // namespace

void set_num_threads(int n) {
    EIGENLSTM_REQUIRE(n >= 1, "num_threads must be >= 1, got " + std::to_string(n));
    thread_setting().store(n);
}

namespace {
// The engine splits work between threads itself; Eigen's products run single-threaded
// inside each slice (Eigen's own OpenMP split would nest, and fork for tiny products).
const bool eigen_single_threaded = (Eigen::setNbThreads(1), true);

// Runs fn(tid, n) on the engine's threads, or on one (fn(0, 1)) when `work` (multiply-adds)
// is below ~4M: a fork/join costs about as much as 1M multiply-adds on one core.
template <typename F>
void parallel_slices(double work, F&& fn) {
    const int threads = get_num_threads();
#ifdef _OPENMP
    if (threads > 1 && work >= 4e6) {
#pragma omp parallel num_threads(threads)
        fn(omp_get_thread_num(), omp_get_num_threads());
        return;
    }
#endif
    fn(0, 1);
}
}  // namespace

int get_num_threads() { return thread_setting().load(); }

// Runs body(team, tid, team_size) for `teams` teams of `team_size[t]` threads each. Teams are
// the directions of a layer; their threads share nothing but read-only weights.
// With fewer threads than teams (one thread, two directions), the teams run one after the
// other on the calling thread.
template <typename Body>
void run_teams(int teams, const int* team_size, Body&& body) {
    int total = 0;
    for (int d = 0; d < teams; ++d) total += team_size[d];
#ifdef _OPENMP
    if (total > 1 && total <= get_num_threads()) {
#pragma omp parallel num_threads(total)
        {
            int tid = omp_get_thread_num();
            if (omp_get_num_threads() != total) {  // the runtime gave fewer threads: serialize
                if (tid == 0)
                    for (int d = 0; d < teams; ++d) body(d, 0, 1);
            } else {
                int d = 0;
                while (tid >= team_size[d]) tid -= team_size[d++];
                body(d, tid, team_size[d]);
            }
        }
        return;
    }
#endif
    for (int d = 0; d < teams; ++d) body(d, 0, 1);
}

// ============================================================================================
// per-thread scratch of the calls that keep nothing
// ============================================================================================

namespace detail {
// Scratch of the eval path (and the zero initial state of any forward), one per calling
// thread: concurrent eval calls share nothing, and a steady stream of small inference calls
// allocates nothing (a malloc/free per buffer is a visible part of a 10 us call). After a
// call that needed more than kKeepBytes the buffers are freed, so that a thread does not keep
// a large buffer it used once; such calls are long enough not to notice the allocation.
template <typename S>
struct Scratch {
    static constexpr Index kKeepBytes = Index(1) << 20;
    Buffer<S> zeros;   // [D*L, B, max(H, Hout)]   zero h0 / c0
    Buffer<S> gates;   // [T, B, D*G]              eval gates
    Buffer<S> io[2];   // [T, B, D*Hout]           eval outputs of the layers below the top
    Buffer<S> state;   // [D, B, 2*Hout + 3*H]     eval h, c double buffers and r
    Buffer<S> x;       // [T, B, I]                forward_last: time-major copy of x
    Buffer<S> y;       // [T, B, D*Hout]           forward_last: the top layer's output
    Buffer<S> hc;      // [D*L, B, Hout + H]       forward_last: h_n and c_n (unused)
    Buffer<S> last;    // [B, D*Hout]              forward_last: y at each last step

    static Scratch& local() {
        thread_local Scratch s;
        return s;
    }
    Index bytes() const {
        Index n = zeros.capacity() + gates.capacity() + io[0].capacity() + io[1].capacity() +
                  state.capacity() + x.capacity() + y.capacity() + hc.capacity() + last.capacity();
        return n * Index(sizeof(S));
    }
    // Frees everything when the call that just ended (normally or by an exception) grew the
    // scratch past kKeepBytes.
    struct Trim {
        Scratch& s;
        explicit Trim(Scratch& scratch) : s(scratch) {}
        Trim(const Trim&) = delete;
        Trim& operator=(const Trim&) = delete;
        ~Trim() {
            if (s.bytes() > kKeepBytes) s = Scratch();
        }
    };
};
}  // namespace detail
using detail::Scratch;

// ============================================================================================
// implementation state
// ============================================================================================

template <typename S>
struct LSTM<S>::Impl {
    Config cfg;
    Index H = 0, P = 0, Hout = 0, G = 0, D = 1, L = 1;
    std::vector<Index> perm;        // [G] engine gate row -> torch gate row

    // Flat parameter layout: per layer, blocks in the order weight_ih [D, G, I_l],
    // weight_hh [D, G, Hout], bias_ih [D, G], bias_hh [D, G], weight_hr [D, P, H]; each
    // block starts 64-byte aligned. offset[l][kind] is the block start (-1 if absent).
    std::vector<std::array<Index, 5>> offset;
    Buffer<S> params, grads;

    // Derived from params by params_updated() (the "load-time repack"):
    struct Packed {
        Panels<S> whh_t;   // W_hh^T  [Hout, G]: forward step  gates += h_prev W_hh^T
        Panels<S> whh;     // W_hh    [G, Hout]: backward step dh_prev = dgates W_hh
        Panels<S> whr_t;   // W_hr^T  [H, P]:    forward projection h = r W_hr^T
        Panels<S> whr;     // W_hr    [P, H]:    backward projection dr = dh W_hr
        bool whh_finite = true;  // no inf or NaN in W_hh: a zero h times W_hh is exactly zero
    };
    std::vector<Packed> packed;     // [L*D]
    std::vector<Panels<S>> wih_t;   // [L] W_ih^T [I_l, D*G], both directions: the input
                                    //     projection of all steps is one packed GEMM
    Buffer<S> bias_sum;             // [L, D*G] b_ih + b_hh, engine order

    std::uint64_t seed = 0, counter = 0;

    // Saved activations of the last training-mode forward (llm.c's ActivationTensors).
    struct LayerCache {
        Buffer<S> x;      // [T, B, I_l]        layer input (after dropout for l > 0)
        Buffer<S> gates;  // [T, B, D*G]        activated i, f, g, o; backward overwrites
                          //                    them with d(pre-activation)
        Buffer<S> h;      // [D, T+1, B, Hout]  hidden states in time order (see slot())
        Buffer<S> c;      // [D, T+1, B, H]     cell states, same slots
        Buffer<S> r;      // [D, T, B, H]       o*tanh(c) before projection (P > 0 only)
    };
    struct Cache {
        bool valid = false;
        Index T = 0, B = 0;
        std::uint64_t counter = 0;           // dropout counter used by that forward
        std::vector<std::int64_t> lengths;   // empty: all T
        std::vector<LayerCache> layers;
    } cache;

    Index in_size(Index l) const { return l == 0 ? cfg.input_size : D * Hout; }
    Index rows(Param k, Index /*l*/) const {
        switch (k) {
            case Param::weight_ih: case Param::weight_hh: case Param::bias_ih: case Param::bias_hh:
                return G;
            case Param::weight_hr: return P;
        }
        return 0;
    }
    Index cols(Param k, Index l) const {
        switch (k) {
            case Param::weight_ih: return in_size(l);
            case Param::weight_hh: return Hout;
            case Param::bias_ih: case Param::bias_hh: return 1;
            case Param::weight_hr: return H;
        }
        return 0;
    }
    bool has(Param k) const {
        if (k == Param::bias_ih || k == Param::bias_hh) return cfg.bias;
        if (k == Param::weight_hr) return P > 0;
        return true;
    }
    S* tensor(S* flat, Param k, Index l, Index d) const {
        return flat + offset[l][int(k)] + d * rows(k, l) * cols(k, l);
    }
    const S* tensor(const S* flat, Param k, Index l, Index d) const {
        return flat + offset[l][int(k)] + d * rows(k, l) * cols(k, l);
    }

    explicit Impl(const Config& c) : cfg(c) {
        cfg.validate();
        H = cfg.hidden_size; P = cfg.proj_size; Hout = cfg.output_size();
        G = checked_mul(4, H);  // sizes whose buffers could not exist: std::bad_alloc
        D = cfg.directions(); L = cfg.num_layers;
        checked_mul(checked_mul(L, D), Index(sizeof(Packed)));
        // Interleave the gates in blocks of HB units: block j of width w holds rows
        // [i(u0:u0+w), f(...), g(...), o(...)], u0 = HB*j, and starts at engine row 4*u0.
        const Index HB = gate_block<S>();
        perm.resize(std::size_t(G));
        for (Index u0 = 0; u0 < H; u0 += HB) {
            const Index w = std::min(HB, H - u0);
            for (Index q = 0; q < 4; ++q)
                for (Index j = 0; j < w; ++j) perm[std::size_t(4 * u0 + q * w + j)] = q * H + u0 + j;
        }
        const Index align = 64 / Index(sizeof(S));
        Index n = 0;
        offset.resize(std::size_t(L));
        for (Index l = 0; l < L; ++l)
            for (int k = 0; k < 5; ++k) {
                if (!has(Param(k))) { offset[l][k] = -1; continue; }
                offset[l][k] = n;
                n = detail::round_up(n + checked_mul(D, checked_mul(rows(Param(k), l),
                                                                    cols(Param(k), l))), align);
            }
        params.resize(n); params.zero();
        grads.resize(n); grads.zero();
        packed.resize(std::size_t(L * D));
        wih_t.resize(std::size_t(L));
        bias_sum.resize(checked_mul(L, D * G));
        update_derived();
    }

    void update_derived() {
        bias_sum.zero();
        for (Index l = 0; l < L; ++l) {
            const S* wih = params.data() + offset[l][int(Param::weight_ih)];  // [D*G, I_l]
            wih_t[std::size_t(l)].pack(wih, in_size(l), D * G, 1, in_size(l));
        }
        for (Index l = 0; l < L; ++l)
            for (Index d = 0; d < D; ++d) {
                Packed& pk = packed[std::size_t(l * D + d)];
                const S* whh = tensor(params.data(), Param::weight_hh, l, d);   // [G, Hout]
                pk.whh_t.pack(whh, Hout, G, 1, Hout);
                pk.whh.pack(whh, G, Hout, Hout, 1);
                pk.whh_finite =
                    Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>(whh, G * Hout).allFinite();
                if (P > 0) {
                    const S* whr = tensor(params.data(), Param::weight_hr, l, d);  // [P, H]
                    pk.whr_t.pack(whr, H, P, 1, H);
                    pk.whr.pack(whr, P, H, H, 1);
                }
                if (cfg.bias) {
                    S* b = bias_sum.data() + (l * D + d) * G;
                    const S* bi = tensor(params.data(), Param::bias_ih, l, d);
                    const S* bh = tensor(params.data(), Param::bias_hh, l, d);
                    for (Index g = 0; g < G; ++g) b[g] = bi[g] + bh[g];
                }
            }
    }

    void forward(Scratch<S>& ws, S* y, S* h_n, S* c_n, const S* x, const S* h0, const S* c0,
                 const std::int64_t* lengths, Index T, Index B, bool training);
    void forward_last(Scratch<S>& ws, S* out, const S* x, const std::int64_t* lengths, Index T,
                      Index B, bool batch_first, const S* W, const S* bias, Index O);
    void backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n);
};

// ============================================================================================
// one direction of one layer: the time loops
// ============================================================================================

namespace {

template <typename S>
using RowMat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename S>
using MapRM = Eigen::Map<RowMat<S>, 0, Eigen::OuterStride<>>;
template <typename S>
using CMapRM = Eigen::Map<const RowMat<S>, 0, Eigen::OuterStride<>>;

// State slots in time order, shared by forward and backward. A direction keeps T+1 states:
//   forward:  state before step t = slot t,     after = slot t+1   (h0 in slot 0)
//   reverse:  state before step t = slot t+1,   after = slot t     (h0 in slot T)
inline Index slot_before(Index t, bool reverse) { return reverse ? t + 1 : t; }
inline Index slot_after(Index t, bool reverse) { return reverse ? t : t + 1; }

// With EIGENLSTM_CHECK_NO_MALLOC (tests/cpp), Eigen aborts on any heap allocation made while
// a time loop runs: the loops must use only the buffers prepared before them.
struct NoMallocScope {
#ifdef EIGENLSTM_CHECK_NO_MALLOC
    NoMallocScope() { Eigen::internal::set_is_malloc_allowed(false); }
    ~NoMallocScope() { Eigen::internal::set_is_malloc_allowed(true); }
#endif
};

inline bool active(const std::int64_t* lengths, Index t, Index b) {
    return lengths == nullptr || t < lengths[b];
}

// Everything one direction's time loop reads and writes. Row strides: gates ldg = D*G,
// y ldy = D*Hout; pointers are already offset to this direction's columns.
template <typename S>
struct DirectionPass {
    Index T, B, H, P, Hout, G, ldg, ldy;
    bool reverse;
    const std::int64_t* lengths;   // [B] or nullptr
    const Panels<S>* whh_t;        // forward packs
    const Panels<S>* whr_t;
    const Panels<S>* whh;          // backward packs
    const Panels<S>* whr;
    S* gates;                      // [T, B, ldg]
    // training storage (nullptr in eval): slots as above
    S* hs;                         // [T+1, B, Hout]
    S* cs;                         // [T+1, B, H]
    S* rs;                         // [T, B, H] (P > 0)
    // eval scratch
    S* hbuf;                       // [2, B, Hout]
    S* cbuf;                       // [2, B, H]
    S* rbuf;                       // [B, H] (P > 0)
    // forward: batch rows this pass computes; B stays the row stride of one time step (the
    // pointers above start at the pass's first row when a thread owns a slice of the batch)
    Index rows = 0;
    // forward: h0 is zero (no initial state given) and W_hh finite, so the first step's
    // h_{-1} W_hh^T is exactly zero and is skipped (1/T of the recurrent GEMMs: the seed
    // model's T = 7 spends a seventh of them on it)
    bool zero_h0 = false;
};

// Forward time loop of one direction for thread `tid` of a team of `n`.
// Step equations (gate order i, f, g, o; pre = x_t W_ih^T + b_ih + b_hh was computed for all
// steps by one GEMM and sits in `gates`):
//   pre_t += h_{t-1} W_hh^T                       (packed GEMM, this thread's gate columns)
//   i = s(pre_i), f = s(pre_f), g = tanh(pre_g), o = s(pre_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)              (P > 0: r_t = o * tanh(c_t), h_t = r_t W_hr^T)
// Rows past their length keep their state and output 0: the cell update runs over all rows
// (its results for those rows are then replaced; backward zeroes their gate gradients).
template <typename S>
void forward_direction(const DirectionPass<S>& a, S* y, const S* h0, const S* c0, S* h_n,
                       S* c_n, int tid, int n, detail::SpinBarrier& barrier) {
    const Index T = a.T, B = a.B, R = a.rows, H = a.H, P = a.P, Hout = a.Hout,
                HB = gate_block<S>();
    Index u0, u1;  // this thread's hidden units, and so gate columns [4*u0, 4*u1)
    split_range(H, detail::unit_grain<S>(), tid, n, u0, u1);
    Index q0 = 0, q1 = 0;  // this thread's projection columns
    if (P > 0) split_range(P, detail::Simd<S>::NR, tid, n, q0, q1);
    const bool training = a.hs != nullptr;

    const S* h_prev = h0;
    const S* c_prev = c0;
    if (training) {  // slot of the initial state holds a copy of h0 / c0 (dW_hh reads it)
        const Index s0 = a.reverse ? T : 0;
        S* hs0 = a.hs + s0 * B * Hout;
        S* cs0 = a.cs + s0 * B * H;
        const Index h_lo = P > 0 ? q0 : u0, h_hi = P > 0 ? q1 : u1;
        for (Index b = 0; b < R; ++b) {
            std::copy(h0 + b * Hout + h_lo, h0 + b * Hout + h_hi, hs0 + b * Hout + h_lo);
            std::copy(c0 + b * H + u0, c0 + b * H + u1, cs0 + b * H + u0);
        }
    }
    [[maybe_unused]] const NoMallocScope no_malloc;
    for (Index s = 0; s < T; ++s) {
        const Index t = a.reverse ? T - 1 - s : s;
        S* pre = a.gates + t * B * a.ldg;
        S* h_next = training ? a.hs + slot_after(t, a.reverse) * B * Hout : a.hbuf + (s & 1) * B * Hout;
        S* c_next = training ? a.cs + slot_after(t, a.reverse) * B * H : a.cbuf + (s & 1) * B * H;
        S* r = P > 0 ? (training ? a.rs + t * B * H : a.rbuf) : nullptr;
        S* y_t = y + t * B * a.ldy;

        if (s > 0 || !a.zero_h0)
            detail::gemm_panels<S, true>(R, h_prev, Hout, *a.whh_t, 4 * u0, 4 * u1, pre, a.ldg);

        for (Index ub = u0; ub < u1; ub += HB)
            detail::cell_forward(pre + 4 * ub, a.ldg, R, std::min(HB, H - ub), c_prev + ub,
                                 c_next + ub, H, P == 0 ? h_next + ub : r + ub,
                                 P == 0 ? Hout : H, P == 0 ? y_t + ub : nullptr, a.ldy);
        for (Index b = 0; b < R; ++b) {
            if (active(a.lengths, t, b)) continue;
            std::copy(c_prev + b * H + u0, c_prev + b * H + u1, c_next + b * H + u0);
            if (P == 0) {
                std::copy(h_prev + b * Hout + u0, h_prev + b * Hout + u1, h_next + b * Hout + u0);
                std::fill(y_t + b * a.ldy + u0, y_t + b * a.ldy + u1, S(0));
            } else {  // dW_hr = sum dh^T r reads every row: keep padded rows finite
                std::fill(r + b * H + u0, r + b * H + u1, S(0));
            }
        }
        if (P > 0) {
            barrier.wait();  // the projection reads all of r_t
            detail::gemm_panels<S, false>(R, r, H, *a.whr_t, q0, q1, h_next, Hout);
            for (Index b = 0; b < R; ++b) {
                S* yb = y_t + b * a.ldy;
                if (active(a.lengths, t, b)) {
                    std::copy(h_next + b * Hout + q0, h_next + b * Hout + q1, yb + q0);
                } else {
                    std::copy(h_prev + b * Hout + q0, h_prev + b * Hout + q1, h_next + b * Hout + q0);
                    std::fill(yb + q0, yb + q1, S(0));
                }
            }
        }
        barrier.wait();  // the next step's GEMM reads all of h_t
        h_prev = h_next;
        c_prev = c_next;
    }
    const Index h_lo = P > 0 ? q0 : u0, h_hi = P > 0 ? q1 : u1;
    for (Index b = 0; b < R; ++b) {
        std::copy(h_prev + b * Hout + h_lo, h_prev + b * Hout + h_hi, h_n + b * Hout + h_lo);
        std::copy(c_prev + b * H + u0, c_prev + b * H + u1, c_n + b * H + u0);
    }
}

// Backward time loop of one direction (reverse processing order) for thread `tid` of `n`.
// Running gradients: dh wrt the state h after the step, dc wrt c after the step.
//   dh += dy_t                                     (active rows)
//   P > 0: dr = dh W_hr    [dW_hr later from dh_t and r_t]     else dr = dh
//   forward: h = o*tanh(c)       ->  do = dr*tanh(c), dc += dr*o*(1 - tanh(c)^2)
//   forward: c = f*c_prev + i*g  ->  di = dc*g, df = dc*c_prev, dg = dc*i, dc_prev = dc*f
//   forward: i = s(a_i) etc.     ->  da_i = di*i*(1-i), da_f = df*f*(1-f),
//                                    da_g = dg*(1-g^2), da_o = do*o*(1-o)
//   forward: pre += h_prev W_hh^T  ->  dh_prev = da W_hh   (packed GEMM, this thread's columns)
// da overwrites the gate cache in place; rows past their length pass dh and dc through.
template <typename S>
void backward_direction(const DirectionPass<S>& a, const S* dy, const S* dh_n, const S* dc_n,
                        S* dh0, S* dc0, S* dhbuf, S* dcbuf, S* drbuf, S* dhs, int tid, int n,
                        detail::SpinBarrier& barrier) {
    const Index T = a.T, B = a.B, H = a.H, P = a.P, Hout = a.Hout, HB = gate_block<S>();
    Index u0, u1;
    split_range(H, detail::unit_grain<S>(), tid, n, u0, u1);
    Index q0 = u0, q1 = u1;  // this thread's columns of dh
    if (P > 0) split_range(P, detail::Simd<S>::NR, tid, n, q0, q1);

    S* dh = dhbuf;             // [B, Hout], two buffers: dh and the next dh_prev
    S* dh_next = dhbuf + B * Hout;
    S* dc = dcbuf;             // [B, H]
    for (Index b = 0; b < B; ++b) {
        for (Index j = q0; j < q1; ++j) dh[b * Hout + j] = dh_n ? dh_n[b * Hout + j] : S(0);
        for (Index j = u0; j < u1; ++j) dc[b * H + j] = dc_n ? dc_n[b * H + j] : S(0);
    }
    [[maybe_unused]] const NoMallocScope no_malloc;
    for (Index s = T - 1; s >= 0; --s) {
        const Index t = a.reverse ? T - 1 - s : s;
        S* da = a.gates + t * B * a.ldg;                 // gates in, d(pre) out
        const S* c_t = a.cs + slot_after(t, a.reverse) * B * H;
        const S* c_p = a.cs + slot_before(t, a.reverse) * B * H;
        const S* dy_t = dy + t * B * a.ldy;
        for (Index b = 0; b < B; ++b)
            if (active(a.lengths, t, b))
                for (Index j = q0; j < q1; ++j) dh[b * Hout + j] += dy_t[b * a.ldy + j];
        const S* dr = dh;
        if (P > 0) {
            S* dhs_t = dhs + t * B * P;  // dh_t for dW_hr; zero on inactive rows
            for (Index b = 0; b < B; ++b) {
                const bool on = active(a.lengths, t, b);
                for (Index j = q0; j < q1; ++j) dhs_t[b * P + j] = on ? dh[b * P + j] : S(0);
            }
            barrier.wait();  // dr reads all of dh
            detail::gemm_panels<S, false>(B, dh, P, *a.whr, u0, u1, drbuf, H);
            dr = drbuf;
        }
        const Index ldr = P > 0 ? H : Hout;
        for (Index b = 0; b < B; ++b) {
            const bool on = active(a.lengths, t, b);
            for (Index ub = u0; ub < u1; ub += HB) {
                const Index w = std::min(HB, H - ub);
                S* g = da + b * a.ldg + 4 * ub;
                if (!on) {
                    std::fill(g, g + 4 * w, S(0));
                    continue;
                }
                detail::cell_backward(g, w, c_t + b * H + ub, c_p + b * H + ub, dr + b * ldr + ub,
                                      dc + b * H + ub);
            }
        }
        barrier.wait();  // dh_prev reads all of da
        detail::gemm_panels<S, false>(B, da, a.ldg, *a.whh, q0, q1, dh_next, Hout);
        for (Index b = 0; b < B; ++b)
            if (!active(a.lengths, t, b))
                std::copy(dh + b * Hout + q0, dh + b * Hout + q1, dh_next + b * Hout + q0);
        std::swap(dh, dh_next);
    }
    for (Index b = 0; b < B; ++b) {
        std::copy(dh + b * Hout + q0, dh + b * Hout + q1, dh0 + b * Hout + q0);
        std::copy(dc + b * H + u0, dc + b * H + u1, dc0 + b * H + u0);
    }
}

// How the threads of one direction share its time loop.
//   by_rows: each thread owns a slice of the batch and runs the whole recurrence for it. Rows
//            are independent through time, so the threads never wait for each other; every
//            thread reads all of W_hh, which pays when W_hh^T is small enough to stay in each
//            core's own L2 (G*Hout <= 32K values). Measured on 2 cores, eval forward, against
//            the unit split: (B, T, I, H) = (32, 100, 64, 64) 4.5 vs 5.5 ms, (64, 50, 32, 32)
//            1.55 vs 1.91 ms, (16, 100, 128, 64) 2.9 vs 3.5 ms. Only from 2^20 multiply-adds
//            per call: waking a second thread costs 1-10 us here, and for the seed's model
//            (84K multiply-adds, 15 us on one thread) two threads took 14 to 25 us.
//            Forward only (`rows_allowed`); the backward loop splits units.
//   else:    threads split the hidden units (all four gates of each unit; one barrier per
//            step). At 64K multiply-adds per step (B=1, H=128) two threads already run a
//            step 1.8x faster; below that one thread wins.
struct TeamPlan {
    int threads = 1;
    bool by_rows = false;
};

template <typename S>
TeamPlan plan_team(Index D, Index T, Index B, Index I, Index H, Index Hout, bool rows_allowed) {
    const int total = get_num_threads();
    const int per_dir = std::max(1, total / int(D));
    const Index G = 4 * H;
    if (rows_allowed && per_dir > 1 && B >= 2 && G * Hout <= (Index(1) << 15) &&
        double(T) * double(B) * double(G) * double(I + Hout) >= double(1 << 20))
        return {int(std::min<Index>(per_dir, B)), true};
    const Index chunks = (H + detail::unit_grain<S>() - 1) / detail::unit_grain<S>();
    if (B * G * Hout < (Index(1) << 16)) return {1, false};
    return {int(std::max<Index>(1, std::min<Index>(per_dir, chunks))), false};
}

// pre[rows, N] = x[rows, K] W + bias, W packed as panels [K, N]. Threads take disjoint row
// ranges (so every value is computed by one thread, the same way for any thread count), and
// rows go through the kernel in blocks whose slice of x stays in L2 while the panels stream.
template <typename S>
void project_inputs(S* pre, const S* x, Index rows, Index K, Index N, const S* bias,
                    const Panels<S>& w) {
    constexpr Index MR = detail::Simd<S>::MR;
    const Index MB = std::max<Index>(MR, Index(128 * 1024) / Index(sizeof(S)) / std::max<Index>(K, 1) / MR * MR);
    auto run = [&](Index r0, Index r1) {
        for (Index m0 = r0; m0 < r1; m0 += MB)
            detail::gemm_panels<S, false>(std::min(MB, r1 - m0), x + m0 * K, K, w, 0, N,
                                          pre + m0 * N, N, bias);
    };
    const int threads = get_num_threads();
    // below ~1M multiply-adds a second thread costs more to wake than it saves
    if (threads == 1 || rows < 2 * MR || double(rows) * double(N) * double(K) < 1e6) {
        run(0, rows);
        return;
    }
#ifdef _OPENMP
#pragma omp parallel num_threads(threads)
    {
        Index r0, r1;
        split_range(rows, MR, omp_get_thread_num(), omp_get_num_threads(), r0, r1);
        run(r0, r1);
    }
#else
    run(0, rows);
#endif
}

}  // namespace

// ============================================================================================
// the stack: forward
// ============================================================================================

template <typename S>
void LSTM<S>::Impl::forward(Scratch<S>& ws, S* y, S* h_n, S* c_n, const S* x, const S* h0,
                            const S* c0, const std::int64_t* lengths, Index T, Index B,
                            bool training) {
    EIGENLSTM_REQUIRE(T >= 0, "T must be >= 0, got " + std::to_string(T));
    EIGENLSTM_REQUIRE(B >= 0, "B must be >= 0, got " + std::to_string(B));
    require_lengths(lengths, B, 0, T);
    const Index TB = checked_mul(T, B), DG = D * G;
    const TeamPlan plan = plan_team<S>(D, T, B, cfg.input_size, H, Hout, true);
    const int teams[2] = {plan.threads, plan.threads};
    const int nteam = plan.by_rows ? 1 : plan.threads;  // threads that share one step

    // Zero initial states when none are given, and the eval buffers, come from the calling
    // thread's scratch; training uses the cache, allocated once per (T, B) and reused.
    const bool zero_h0 = h0 == nullptr;
    if (!h0 || !c0) {
        ws.zeros.resize(checked_mul(D * L * B, std::max(H, Hout)));
        ws.zeros.zero();
        if (!h0) h0 = ws.zeros.data();
        if (!c0) c0 = ws.zeros.data();
    }
    std::uint64_t call_counter = counter;
    if (training) {
        if (cache.layers.size() != std::size_t(L)) cache.layers.resize(std::size_t(L));
        cache.valid = false;
        for (Index l = 0; l < L; ++l) {
            LayerCache& lc = cache.layers[std::size_t(l)];
            lc.x.resize(checked_mul(TB, in_size(l)));
            lc.gates.resize(checked_mul(TB, DG));
            lc.h.resize(checked_mul(D * (T + 1), checked_mul(B, Hout)));
            lc.c.resize(checked_mul(D * (T + 1), checked_mul(B, H)));
            if (P > 0) lc.r.resize(checked_mul(D * T, checked_mul(B, H)));
        }
        cache.lengths.assign(lengths ? lengths : nullptr, lengths ? lengths + B : nullptr);
        cache.T = T;
        cache.B = B;
        cache.counter = call_counter;
        std::copy(x, x + checked_mul(TB, cfg.input_size), cache.layers[0].x.data());
        if (lengths)  // padding is never read by torch: zero it so dW_ih = da^T x ignores it
            for (Index t = 0; t < T; ++t)
                for (Index b = 0; b < B; ++b)
                    if (t >= lengths[b]) {
                        S* row = cache.layers[0].x.data() + (t * B + b) * cfg.input_size;
                        std::fill(row, row + cfg.input_size, S(0));
                    }
        if (cfg.dropout > 0 && L > 1) ++counter;
    } else {
        ws.gates.resize(checked_mul(TB, DG));
        if (L > 1) {
            ws.io[0].resize(checked_mul(TB, D * Hout));
            ws.io[1].resize(checked_mul(TB, D * Hout));
        }
        ws.state.resize(checked_mul(D, checked_mul(B, 2 * Hout + 2 * H + H)));
    }
    const std::int64_t* lens = training ? (cache.lengths.empty() ? nullptr : cache.lengths.data())
                                        : lengths;

    for (Index l = 0; l < L; ++l) {
        LayerCache* lc = training ? &cache.layers[std::size_t(l)] : nullptr;
        const S* in = training ? lc->x.data() : (l == 0 ? x : ws.io[(l - 1) & 1].data());
        S* out = l == L - 1 ? y
                            : (training ? cache.layers[std::size_t(l + 1)].x.data() : ws.io[l & 1].data());
        S* gates = training ? lc->gates.data() : ws.gates.data();
        const Index I_l = in_size(l);

        // One GEMM projects the input of every step for both directions:
        //   pre[T*B, D*G] = x[T*B, I] W_ih[D*G, I]^T + (b_ih + b_hh)
        project_inputs(gates, in, TB, I_l, DG, cfg.bias ? bias_sum.data() + l * DG : nullptr,
                       wih_t[std::size_t(l)]);

        detail::SpinBarrier barrier0(nteam), barrier1(nteam);
        detail::SpinBarrier* barriers[2] = {&barrier0, &barrier1};
        run_teams(int(D), teams, [&](int d, int tid, int n) {
            const Packed& pk = packed[std::size_t(l * D + d)];
            DirectionPass<S> a{T, B, H, P, Hout, G, DG, D * Hout,
                               cfg.reverse || d == 1, lens,
                               &pk.whh_t, P > 0 ? &pk.whr_t : nullptr, &pk.whh, &pk.whr,
                               gates + d * G, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
            if (training) {
                a.hs = lc->h.data() + d * (T + 1) * B * Hout;
                a.cs = lc->c.data() + d * (T + 1) * B * H;
                a.rs = P > 0 ? lc->r.data() + d * T * B * H : nullptr;
            } else {
                S* st = ws.state.data() + d * B * (2 * Hout + 3 * H);
                a.hbuf = st;
                a.cbuf = st + 2 * B * Hout;
                a.rbuf = st + 2 * B * Hout + 2 * B * H;
            }
            const Index k = l * D + d;
            Index b0 = 0, b1 = B;  // this thread's batch rows
            if (plan.by_rows) {
                split_range(B, 1, tid, n, b0, b1);
                tid = 0;
                n = 1;
                a.gates += b0 * DG;
                if (lens) a.lengths = lens + b0;
                if (training) {
                    a.hs += b0 * Hout;
                    a.cs += b0 * H;
                    if (P > 0) a.rs += b0 * H;
                } else {
                    a.hbuf += b0 * Hout;
                    a.cbuf += b0 * H;
                    a.rbuf += b0 * H;
                }
            }
            a.rows = b1 - b0;
            a.zero_h0 = zero_h0 && pk.whh_finite;
            forward_direction(a, out + d * Hout + b0 * D * Hout, h0 + (k * B + b0) * Hout,
                              c0 + (k * B + b0) * H, h_n + (k * B + b0) * Hout,
                              c_n + (k * B + b0) * H, tid, n, *barriers[d]);
        });

        if (training && l < L - 1 && cfg.dropout > 0)
            detail::apply_dropout(out, TB * D * Hout, cfg.dropout, seed, call_counter, l);
    }
    if (training) cache.valid = true;
}

// ============================================================================================
// inference through a linear head on each sequence's last step
// ============================================================================================

// out[b] = y[last_b, b, :] W^T + bias, with y the top layer's eval output and last_b =
// lengths[b] - 1 (T - 1 without lengths). The reverse direction's y[last_b] is its state after
// its first step (it starts at each sequence's last valid step), as torch's out[:, last, :].
template <typename S>
void LSTM<S>::Impl::forward_last(Scratch<S>& ws, S* out, const S* x,
                                 const std::int64_t* lengths, Index T, Index B,
                                 bool batch_first, const S* W, const S* bias, Index O) {
    EIGENLSTM_REQUIRE(T >= 1, "T must be >= 1 (the output is read at a last step), got " + std::to_string(T));
    EIGENLSTM_REQUIRE(B >= 0, "B must be >= 0, got " + std::to_string(B));
    EIGENLSTM_REQUIRE(O >= 1, "O must be >= 1, got " + std::to_string(O));
    require_lengths(lengths, B, 1, T);  // each sequence needs a last step
    const Index I = cfg.input_size, DH = D * Hout, TB = checked_mul(T, B);
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
    forward(ws, ws.y.data(), h_n, h_n + D * L * B * Hout, x, nullptr, nullptr, lengths, T, B,
            false);
    ws.last.resize(checked_mul(B, DH));
    for (Index b = 0; b < B; ++b) {
        const S* row = ws.y.data() + ((lengths ? lengths[b] - 1 : T - 1) * B + b) * DH;
        std::copy(row, row + DH, ws.last.data() + b * DH);
    }
    CMapRM<S> last(ws.last.data(), B, DH, Eigen::OuterStride<>(DH));
    CMapRM<S> w(W, O, DH, Eigen::OuterStride<>(DH));
    MapRM<S> o(out, B, O, Eigen::OuterStride<>(O));
    o.noalias() = last * w.transpose();
    if (bias) o.rowwise() += Eigen::Map<const Eigen::Matrix<S, 1, Eigen::Dynamic>>(bias, O);
}

// ============================================================================================
// the stack: backward
// ============================================================================================

template <typename S>
void LSTM<S>::Impl::backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n,
                             const S* dc_n) {
    if (!cache.valid)
        throw std::logic_error(
            "backward needs a training-mode forward first (the cache is consumed by backward)");
    cache.valid = false;  // the gate buffers are about to hold gradients
    const Index T = cache.T, B = cache.B, TB = T * B, DG = D * G;
    const std::int64_t* lens = cache.lengths.empty() ? nullptr : cache.lengths.data();
    const int nteam = plan_team<S>(D, T, B, cfg.input_size, H, Hout, false).threads;
    const int teams[2] = {nteam, nteam};

    // Per-direction running gradients and, with projection, dh_t for every step.
    Buffer<S> ws(checked_mul(D, checked_mul(B, 2 * Hout + 2 * H)));
    Buffer<S> dhs(P > 0 ? checked_mul(D * T, checked_mul(B, P)) : 0);
    // d(layer output) for layers below the top: dx of the layer above, through dropout.
    Buffer<S> dio[2];
    if (L > 1) {
        dio[0].resize(checked_mul(TB, D * Hout));
        dio[1].resize(checked_mul(TB, D * Hout));
    }

    for (Index l = L - 1; l >= 0; --l) {
        LayerCache& lc = cache.layers[std::size_t(l)];
        const S* dout = l == L - 1 ? dy : dio[l & 1].data();
        S* din = l == 0 ? dx : dio[(l - 1) & 1].data();
        const Index I_l = in_size(l);

        detail::SpinBarrier barrier0(nteam), barrier1(nteam);
        detail::SpinBarrier* barriers[2] = {&barrier0, &barrier1};
        run_teams(int(D), teams, [&](int d, int tid, int n) {
            const Packed& pk = packed[std::size_t(l * D + d)];
            DirectionPass<S> a{T, B, H, P, Hout, G, DG, D * Hout,
                               cfg.reverse || d == 1, lens,
                               &pk.whh_t, P > 0 ? &pk.whr_t : nullptr, &pk.whh, &pk.whr,
                               lc.gates.data() + d * G,
                               lc.h.data() + d * (T + 1) * B * Hout,
                               lc.c.data() + d * (T + 1) * B * H,
                               P > 0 ? lc.r.data() + d * T * B * H : nullptr,
                               nullptr, nullptr, nullptr};
            const Index k = l * D + d;
            S* w = ws.data() + d * B * (2 * Hout + 2 * H);
            backward_direction(a, dout + d * Hout, dh_n ? dh_n + k * B * Hout : nullptr,
                               dc_n ? dc_n + k * B * H : nullptr, dh0 + k * B * Hout,
                               dc0 + k * B * H, w, w + 2 * B * Hout, w + 2 * B * Hout + B * H,
                               P > 0 ? dhs.data() + d * T * B * P : nullptr, tid, n,
                               *barriers[d]);
        });

        // The parameter gradients and dx, each one GEMM over all T*B rows:
        //   dW_ih += da^T x,  dx = da W_ih,  db_ih = db_hh += sum_rows da,
        //   dW_hh += da^T h_prev (per direction),  dW_hr += dh^T r (per direction)
        // Each thread owns a slice of output rows of every product (the same split for any
        // run with this thread count, so results are reproducible), and Eigen runs each
        // slice single-threaded.
        CMapRM<S> dA(lc.gates.data(), TB, DG, Eigen::OuterStride<>(DG));
        CMapRM<S> X(lc.x.data(), TB, I_l, Eigen::OuterStride<>(I_l));
        MapRM<S> dWih(grads.data() + offset[l][int(Param::weight_ih)], DG, I_l,
                      Eigen::OuterStride<>(I_l));
        CMapRM<S> Wih(params.data() + offset[l][int(Param::weight_ih)], DG, I_l,
                      Eigen::OuterStride<>(I_l));
        MapRM<S> dX(din, TB, I_l, Eigen::OuterStride<>(I_l));
        const double work = double(TB) * double(DG) * double(2 * I_l + Hout + P);
        parallel_slices(work, [&](int tid, int n) {
            Index r0, r1;
            split_range(DG, 16, tid, n, r0, r1);
            dWih.middleRows(r0, r1 - r0).noalias() += dA.middleCols(r0, r1 - r0).transpose() * X;
            split_range(TB, 16, tid, n, r0, r1);
            dX.middleRows(r0, r1 - r0).noalias() = dA.middleRows(r0, r1 - r0) * Wih;
            for (Index d = 0; d < D; ++d) {
                const bool rev = cfg.reverse || d == 1;
                CMapRM<S> dAd(lc.gates.data() + d * G, TB, G, Eigen::OuterStride<>(DG));
                CMapRM<S> Hprev(lc.h.data() + (d * (T + 1) + slot_before(0, rev)) * B * Hout,
                                TB, Hout, Eigen::OuterStride<>(Hout));
                MapRM<S> dWhh(tensor(grads.data(), Param::weight_hh, l, d), G, Hout,
                              Eigen::OuterStride<>(Hout));
                split_range(G, 16, tid, n, r0, r1);
                dWhh.middleRows(r0, r1 - r0).noalias() +=
                    dAd.middleCols(r0, r1 - r0).transpose() * Hprev;
                if (P > 0) {
                    CMapRM<S> dH(dhs.data() + d * T * B * P, TB, P, Eigen::OuterStride<>(P));
                    CMapRM<S> R(lc.r.data() + d * T * B * H, TB, H, Eigen::OuterStride<>(H));
                    MapRM<S> dWhr(tensor(grads.data(), Param::weight_hr, l, d), P, H,
                                  Eigen::OuterStride<>(H));
                    split_range(P, 8, tid, n, r0, r1);
                    dWhr.middleRows(r0, r1 - r0).noalias() +=
                        dH.middleCols(r0, r1 - r0).transpose() * R;
                }
            }
        });
        if (cfg.bias) {
            const Eigen::Matrix<S, 1, Eigen::Dynamic> db = dA.colwise().sum();
            Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(
                grads.data() + offset[l][int(Param::bias_ih)], DG) += db;
            Eigen::Map<Eigen::Matrix<S, 1, Eigen::Dynamic>>(
                grads.data() + offset[l][int(Param::bias_hh)], DG) += db;
        }
        // The input of layer l > 0 was dropout(y_{l-1}): dy_{l-1} = din * mask, same mask.
        if (l > 0 && cfg.dropout > 0)
            detail::apply_dropout(din, TB * D * Hout, cfg.dropout, seed, cache.counter, l - 1);
    }
}

// ============================================================================================
// public interface
// ============================================================================================

template <typename S>
LSTM<S>::LSTM(const Config& config, std::uint64_t seed) : impl_(std::make_unique<Impl>(config)) {
    impl_->seed = seed;
}
template <typename S> LSTM<S>::~LSTM() = default;
template <typename S> LSTM<S>::LSTM(LSTM&&) noexcept = default;
template <typename S> LSTM<S>& LSTM<S>::operator=(LSTM&&) noexcept = default;

template <typename S> const Config& LSTM<S>::config() const { return impl_->cfg; }
template <typename S> Index LSTM<S>::num_params() const { return impl_->params.size(); }
template <typename S> S* LSTM<S>::params() { return impl_->params.data(); }
template <typename S> const S* LSTM<S>::params() const { return impl_->params.data(); }
template <typename S> S* LSTM<S>::grads() { return impl_->grads.data(); }
template <typename S> const S* LSTM<S>::grads() const { return impl_->grads.data(); }
template <typename S> void LSTM<S>::params_updated() { impl_->update_derived(); }
template <typename S> void LSTM<S>::zero_grad() { impl_->grads.zero(); }
template <typename S> bool LSTM<S>::has_param(Param kind) const { return impl_->has(kind); }

template <typename S>
void LSTM<S>::param_shape(Param kind, Index layer, Index& rows, Index& cols) const {
    EIGENLSTM_REQUIRE(layer >= 0 && layer < impl_->L,
                      "layer must be in [0, " + std::to_string(impl_->L) + "), got " +
                          std::to_string(layer));
    rows = impl_->rows(kind, layer);
    cols = impl_->cols(kind, layer);
}

// weight_ih, weight_hh and the biases have their gate rows permuted (see Impl::perm);
// weight_hr is stored as torch stores it.
template <typename S>
void LSTM<S>::pack(Param kind, Index layer, Index dir, const S* torch, S* flat) const {
    const Impl& m = *impl_;
    EIGENLSTM_REQUIRE(m.has(kind), "this LSTM has no such parameter");
    EIGENLSTM_REQUIRE(layer >= 0 && layer < m.L && dir >= 0 && dir < m.D, "layer or direction out of range");
    const Index rows = m.rows(kind, layer), cols = m.cols(kind, layer);
    S* dst = m.tensor(flat, kind, layer, dir);
    const bool gated = kind != Param::weight_hr;
    for (Index e = 0; e < rows; ++e) {
        const Index src_row = gated ? m.perm[std::size_t(e)] : e;
        std::copy(torch + src_row * cols, torch + (src_row + 1) * cols, dst + e * cols);
    }
}

template <typename S>
void LSTM<S>::unpack(Param kind, Index layer, Index dir, const S* flat, S* torch) const {
    const Impl& m = *impl_;
    EIGENLSTM_REQUIRE(m.has(kind), "this LSTM has no such parameter");
    EIGENLSTM_REQUIRE(layer >= 0 && layer < m.L && dir >= 0 && dir < m.D, "layer or direction out of range");
    const Index rows = m.rows(kind, layer), cols = m.cols(kind, layer);
    const S* src = m.tensor(flat, kind, layer, dir);
    const bool gated = kind != Param::weight_hr;
    for (Index e = 0; e < rows; ++e) {
        const Index dst_row = gated ? m.perm[std::size_t(e)] : e;
        std::copy(src + e * cols, src + (e + 1) * cols, torch + dst_row * cols);
    }
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
    Scratch<S>& ws = Scratch<S>::local();
    const typename Scratch<S>::Trim trim(ws);
    impl_->forward(ws, y, h_n, c_n, x, h0, c0, lengths, T, B, training);
}

template <typename S>
void LSTM<S>::forward_last(S* out, const S* x, const std::int64_t* lengths, Index T, Index B,
                           bool batch_first, const S* W, const S* bias, Index O) {
    Scratch<S>& ws = Scratch<S>::local();
    const typename Scratch<S>::Trim trim(ws);
    impl_->forward_last(ws, out, x, lengths, T, B, batch_first, W, bias, O);
}

template <typename S>
void LSTM<S>::backward(S* dx, S* dh0, S* dc0, const S* dy, const S* dh_n, const S* dc_n) {
    impl_->backward(dx, dh0, dc0, dy, dh_n, dc_n);
}

template <typename S>
bool LSTM<S>::cached_sizes(Index& T, Index& B) const {
    T = impl_->cache.T;
    B = impl_->cache.B;
    return impl_->cache.valid;
}

template class LSTM<float>;
template class LSTM<double>;

}  // namespace eigenlstm
