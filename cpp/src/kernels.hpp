// Engine-private building blocks: aligned buffers, the packed right-hand operand and the
// register-blocked GEMM that every time step runs, the gate activations, a spin barrier for a
// team of threads, and the counter-based dropout stream. Eigen and std only.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <thread>

#if defined(__x86_64__) || defined(_M_X64) || defined(__i386__)
#include <immintrin.h>
#define EIGENLSTM_PAUSE() _mm_pause()
#else
#define EIGENLSTM_PAUSE() ((void)0)
#endif

#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// ---- sizes ---------------------------------------------------------------------------------

// a * b, or std::bad_alloc if the product cannot be a buffer size (it would overflow).
inline Index checked_mul(Index a, Index b) {
    if (a < 0 || b < 0) throw std::bad_alloc();
    if (a != 0 && b > std::numeric_limits<Index>::max() / 8 / a) throw std::bad_alloc();
    return a * b;
}

inline Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }

// ---- aligned storage ---------------------------------------------------------------------

// A 64-byte aligned array that only ever grows: reused across calls of the same or smaller
// size, so steady-state training allocates nothing. Throws std::bad_alloc.
template <typename S>
class Buffer {
public:
    Buffer() = default;
    explicit Buffer(Index n) { resize(n); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& o) noexcept : p_(o.p_), cap_(o.cap_), n_(o.n_) { o.p_ = nullptr; o.cap_ = o.n_ = 0; }
    Buffer& operator=(Buffer&& o) noexcept {
        std::swap(p_, o.p_); std::swap(cap_, o.cap_); std::swap(n_, o.n_);
        return *this;
    }
    ~Buffer() { std::free(p_); }

    // Size n; contents are unspecified unless zero() is called.
    void resize(Index n) {
        if (n > cap_) {
            const Index bytes = round_up(checked_mul(std::max<Index>(n, 1), Index(sizeof(S))), 64);
            void* p = std::aligned_alloc(64, std::size_t(bytes));
            if (!p) throw std::bad_alloc();
            std::free(p_);
            p_ = static_cast<S*>(p);
            cap_ = bytes / Index(sizeof(S));
        }
        n_ = n;
    }
    void zero() { if (n_) std::memset(p_, 0, std::size_t(n_) * sizeof(S)); }
    Index size() const { return n_; }
    S* data() { return p_; }
    const S* data() const { return p_; }

private:
    S* p_ = nullptr;
    Index cap_ = 0;
    Index n_ = 0;
};

// ---- SIMD traits ---------------------------------------------------------------------------

template <typename S>
struct Simd {
    using Packet = typename Eigen::internal::packet_traits<S>::type;
    static constexpr int PS = Eigen::internal::unpacket_traits<Packet>::size;  // lanes
    static constexpr int NR = 2 * PS;  // columns per packed panel: two vector registers
#if EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32
    static constexpr int MR = 12;      // rows per register block: 24 accumulators + 3 temps
#else
    static constexpr int MR = 6;       // 12 accumulators + 3 temps fit in 16 registers
#endif
};

// Threads split hidden units in chunks of this many: a whole number of gate blocks and of
// packed panels, so that every thread's columns are panel- and block-aligned.
template <typename S>
constexpr Index unit_grain() {
    return std::max<Index>(gate_block<S>(), Simd<S>::NR);
}

// [begin, end) of item chunks owned by thread `tid` of `n` when `count` items are split in
// chunks of `grain` (the last chunk may be short).
inline void split_range(Index count, Index grain, int tid, int n, Index& begin, Index& end) {
    const Index chunks = (count + grain - 1) / grain;
    const Index lo = chunks * tid / n, hi = chunks * (tid + 1) / n;
    begin = std::min(count, lo * grain);
    end = std::min(count, hi * grain);
}

// ---- the packed right-hand operand ---------------------------------------------------------

// A [K, N] matrix stored as ceil(N / NR) panels, each [K, NR] row-major and zero padded:
//   data[p*K*NR + k*NR + j] = M(k, p*NR + j).
// A step's GEMM streams one panel (K*NR contiguous values, L1-sized for K <= 512 in float32)
// against all batch rows, so the weights are packed once per update, never per time step.
template <typename S>
struct Panels {
    Index K = 0, N = 0;
    Buffer<S> data;

    Index num_panels() const { return (N + Simd<S>::NR - 1) / Simd<S>::NR; }

    // M(k, n) = src[k*rs + n*cs]
    void pack(const S* src, Index k_size, Index n_size, Index rs, Index cs) {
        constexpr int NR = Simd<S>::NR;
        K = k_size;
        N = n_size;
        data.resize(checked_mul(num_panels() * NR, std::max<Index>(K, 1)));
        data.zero();
        for (Index p = 0; p < num_panels(); ++p) {
            S* dst = data.data() + p * K * NR;
            const Index n0 = p * NR, w = std::min<Index>(NR, N - n0);
            for (Index k = 0; k < K; ++k)
                for (Index j = 0; j < w; ++j) dst[k * NR + j] = src[k * rs + (n0 + j) * cs];
        }
    }
};

// C[0:M, cols of panels p0..p1) (= or +=) A[M, K] * panels, A row-major with stride lda,
// C row-major with stride ldc. One MR x NR register block: each k loads one panel row
// (two packets), broadcasts MR values of A and issues 2*MR FMAs. With few rows (MR < 4, the
// batch-1 and small-batch path) the k loop is split over KU independent accumulator sets so
// that enough FMAs are in flight to hide their latency: a GEMV, not a padded GEMM.
template <typename S, int MR, bool Accumulate>
inline void micro_kernel(Index K, const S* A, Index lda, const S* panel, S* C, Index ldc,
                         Index ncols) {
    using namespace Eigen::internal;
    using Packet = typename Simd<S>::Packet;
    constexpr int PS = Simd<S>::PS, NR = Simd<S>::NR;
    constexpr int KU = MR >= 4 ? 1 : (MR >= 2 ? 2 : 4);
    Packet acc[KU][MR][2];
    for (int u = 0; u < KU; ++u)
        for (int m = 0; m < MR; ++m) acc[u][m][0] = acc[u][m][1] = pset1<Packet>(S(0));
    Index k = 0;
    for (; k + KU <= K; k += KU) {
        for (int u = 0; u < KU; ++u) {
            const S* b = panel + (k + u) * NR;
            const Packet b0 = pload<Packet>(b), b1 = pload<Packet>(b + PS);
            for (int m = 0; m < MR; ++m) {
                const Packet a = pset1<Packet>(A[m * lda + k + u]);
                acc[u][m][0] = pmadd(a, b0, acc[u][m][0]);
                acc[u][m][1] = pmadd(a, b1, acc[u][m][1]);
            }
        }
    }
    for (; k < K; ++k) {
        const S* b = panel + k * NR;
        const Packet b0 = pload<Packet>(b), b1 = pload<Packet>(b + PS);
        for (int m = 0; m < MR; ++m) {
            const Packet a = pset1<Packet>(A[m * lda + k]);
            acc[0][m][0] = pmadd(a, b0, acc[0][m][0]);
            acc[0][m][1] = pmadd(a, b1, acc[0][m][1]);
        }
    }
    for (int u = 1; u < KU; ++u)
        for (int m = 0; m < MR; ++m) {
            acc[0][m][0] = padd(acc[0][m][0], acc[u][m][0]);
            acc[0][m][1] = padd(acc[0][m][1], acc[u][m][1]);
        }
    for (int m = 0; m < MR; ++m) {
        S* c = C + m * ldc;
        if (ncols == NR) {
            if (Accumulate) {
                pstoreu(c, padd(ploadu<Packet>(c), acc[0][m][0]));
                pstoreu(c + PS, padd(ploadu<Packet>(c + PS), acc[0][m][1]));
            } else {
                pstoreu(c, acc[0][m][0]);
                pstoreu(c + PS, acc[0][m][1]);
            }
        } else {  // last, partial panel
            alignas(64) S tmp[NR];
            pstore(tmp, acc[0][m][0]);
            pstore(tmp + PS, acc[0][m][1]);
            for (Index j = 0; j < ncols; ++j) c[j] = Accumulate ? c[j] + tmp[j] : tmp[j];
        }
    }
}

template <typename S, bool Accumulate>
void gemm_panels(Index M, const S* A, Index lda, const Panels<S>& Bp, Index col_begin,
                 Index col_end, S* C, Index ldc) {
    constexpr int NR = Simd<S>::NR, MR = Simd<S>::MR;
    const Index K = Bp.K;
    for (Index n0 = col_begin; n0 < col_end; n0 += NR) {
        const S* panel = Bp.data.data() + (n0 / NR) * K * NR;
        const Index w = std::min<Index>(NR, col_end - n0);
        Index m = 0;
        for (; m + MR <= M; m += MR)
            micro_kernel<S, MR, Accumulate>(K, A + m * lda, lda, panel, C + m * ldc + n0, ldc, w);
        switch (M - m) {  // leftover rows, and the whole batch when B < MR
#define EIGENLSTM_TAIL(r) \
    case r: micro_kernel<S, r, Accumulate>(K, A + m * lda, lda, panel, C + m * ldc + n0, ldc, w); break;
            EIGENLSTM_TAIL(1) EIGENLSTM_TAIL(2) EIGENLSTM_TAIL(3) EIGENLSTM_TAIL(4)
            EIGENLSTM_TAIL(5) EIGENLSTM_TAIL(6) EIGENLSTM_TAIL(7) EIGENLSTM_TAIL(8)
            EIGENLSTM_TAIL(9) EIGENLSTM_TAIL(10) EIGENLSTM_TAIL(11)
#undef EIGENLSTM_TAIL
            default: break;
        }
    }
}

// ---- activations ---------------------------------------------------------------------------

// sigma(x) = 1 / (1 + exp(-x)) with Eigen's vectorized exp (a range-reduced polynomial, about
// 1 ulp): the relative error stays small in the tails too, where sigma -> 0 (exp overflows to
// inf below x ~ -88 in float32 and gives exactly 0, the correct limit). tanh is Eigen's: in
// float32 a clamped rational approximation, vectorized; in float64 std::tanh, so float64 agrees
// with a float64 reference to ~1e-15. tests/test_activations.py measures both against float64.
template <typename X>
auto sigmoid(const X& x) {
    using S = typename X::Scalar;
    return S(1) / (S(1) + (-x).exp());
}

// ---- the fused cell update ---------------------------------------------------------------

// One gate block of HB = gate_block<S>() values: fixed size, so Eigen unrolls it into whole
// SIMD packets (2 x 8 floats on AVX2, 1 x 16 on AVX-512) with no loop or size checks.
template <typename S>
using BlockArray = Eigen::Array<S, gate_block<S>(), 1>;
template <typename S>
using BlockMap = Eigen::Map<BlockArray<S>>;
template <typename S>
using ConstBlockMap = Eigen::Map<const BlockArray<S>>;

// Forward for one full block of one batch row.
//   g       [4*HB]  pre-activations i, f, g, o in; activated gates out (the backward cache)
//   c_prev  [HB]    c_{t-1}; read only
//   c       [HB]    c_t = f*c_{t-1} + i*g; overwritten
//   h       [HB]    o*tanh(c_t); overwritten
template <typename S>
inline void cell_forward_full(S* g, const S* c_prev, S* c, S* h) {
    constexpr Index HB = gate_block<S>();
    BlockMap<S> i(g), f(g + HB), gg(g + 2 * HB), o(g + 3 * HB), cm(c), hm(h);
    i = sigmoid(i);
    f = sigmoid(f);
    gg = gg.tanh();
    o = sigmoid(o);
    cm = f * ConstBlockMap<S>(c_prev) + i * gg;
    hm = o * cm.tanh();
}

// Backward for one full block of one batch row; quotes the forward lines it undoes.
//   g       [4*HB]  activated i, f, g, o in; d(pre-activation) out
//   c_t     [HB]    c_t; read only          c_prev [HB]  c_{t-1}; read only
//   dh      [HB]    dL/dh_t (before any projection); read only
//   dc      [HB]    dL/dc_t in (from later steps); dL/dc_{t-1} out
template <typename S>
inline void cell_backward_full(S* g, const S* c_t, const S* c_prev, const S* dh, S* dc) {
    constexpr Index HB = gate_block<S>();
    BlockMap<S> ai(g), af(g + HB), ag(g + 2 * HB), ao(g + 3 * HB), dcm(dc);
    const BlockArray<S> i = ai, f = af, gg = ag, o = ao;  // values: the maps are overwritten
    const BlockArray<S> th = ConstBlockMap<S>(c_t).tanh();
    const ConstBlockMap<S> dhm(dh), cp(c_prev);
    // forward: h = o*tanh(c)        ->  do = dh*tanh(c),  dc += dh*o*(1 - tanh(c)^2)
    const BlockArray<S> dct = dcm + dhm * o * (S(1) - th * th);
    // forward: o = s(a_o)           ->  da_o = do*o*(1-o)
    ao = dhm * th * o * (S(1) - o);
    // forward: c = f*c_prev + i*g   ->  di = dc*g, df = dc*c_prev, dg = dc*i, dc_prev = dc*f
    // forward: i, f = s(a), g = tanh(a_g)  ->  da = d*s*(1-s), da_g = dg*(1-g^2)
    ai = dct * gg * i * (S(1) - i);
    af = dct * cp * f * (S(1) - f);
    ag = dct * i * (S(1) - gg * gg);
    dcm = dct * f;
}

// The last block of a layer whose H is not a multiple of HB has w < HB units and its gates
// packed as [i(w) f(w) g(w) o(w)]. It is padded to HB lanes on the stack (zeros: no NaN or
// inf in the unused lanes), run through the same SIMD code, and copied back.
template <typename S>
inline void cell_forward(S* g, Index w, const S* c_prev, S* c, S* h) {
    constexpr Index HB = gate_block<S>();
    if (w == HB) return cell_forward_full(g, c_prev, c, h);
    alignas(64) S tg[4 * HB] = {}, tcp[HB] = {}, tc[HB], th[HB];
    for (Index q = 0; q < 4; ++q) std::copy(g + q * w, g + (q + 1) * w, tg + q * HB);
    std::copy(c_prev, c_prev + w, tcp);
    cell_forward_full(tg, tcp, tc, th);
    for (Index q = 0; q < 4; ++q) std::copy(tg + q * HB, tg + q * HB + w, g + q * w);
    std::copy(tc, tc + w, c);
    std::copy(th, th + w, h);
}

template <typename S>
inline void cell_backward(S* g, Index w, const S* c_t, const S* c_prev, const S* dh, S* dc) {
    constexpr Index HB = gate_block<S>();
    if (w == HB) return cell_backward_full(g, c_t, c_prev, dh, dc);
    alignas(64) S tg[4 * HB] = {}, tct[HB] = {}, tcp[HB] = {}, tdh[HB] = {}, tdc[HB] = {};
    for (Index q = 0; q < 4; ++q) std::copy(g + q * w, g + (q + 1) * w, tg + q * HB);
    std::copy(c_t, c_t + w, tct);
    std::copy(c_prev, c_prev + w, tcp);
    std::copy(dh, dh + w, tdh);
    std::copy(dc, dc + w, tdc);
    cell_backward_full(tg, tct, tcp, tdh, tdc);
    for (Index q = 0; q < 4; ++q) std::copy(tg + q * HB, tg + q * HB + w, g + q * w);
    std::copy(tdc, tdc + w, dc);
}

// ---- a team barrier ------------------------------------------------------------------------

// Generation-counting spin barrier for the few threads of one direction's team. A time step is
// a few microseconds, far below what a futex wake-up costs, so threads spin (with pause) for
// about that long, then yield: on an oversubscribed machine the thread being waited for may be
// descheduled, and spinning longer would only keep it off the core.
class SpinBarrier {
public:
    explicit SpinBarrier(int n) : n_(n) {}
    void wait() {
        if (n_ <= 1) return;
        const unsigned gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            count_.store(0, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_release);
        } else {
            for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
                if (spins < 256) EIGENLSTM_PAUSE();
                else std::this_thread::yield();
            }
        }
    }

private:
    const int n_;
    alignas(64) std::atomic<int> count_{0};
    alignas(64) std::atomic<unsigned> gen_{0};
};

// ---- dropout stream ------------------------------------------------------------------------

// splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer with good avalanche. Mask
// element j of a call is a pure function of (seed, counter, layer, j), so masks are identical
// for any thread count and backward regenerates them instead of storing them.
inline std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// y[j] *= keep ? 1/(1-p) : 0 for j < n, with keep = (u >= p) for u uniform in [0, 1).
template <typename S>
void apply_dropout(S* y, Index n, double p, std::uint64_t seed, std::uint64_t counter,
                   Index layer) {
    const std::uint64_t key =
        splitmix64(seed ^ splitmix64(counter * 0x100000001B3ull + std::uint64_t(layer)));
    const double threshold = p * 9007199254740992.0;  // p * 2^53
    const S scale = p < 1.0 ? S(1.0 / (1.0 - p)) : S(0);
    for (Index j = 0; j < n; ++j) {
        const double u = double(splitmix64(key + std::uint64_t(j)) >> 11);
        y[j] = u >= threshold ? y[j] * scale : S(0);
    }
}

}  // namespace detail
}  // namespace eigenlstm
