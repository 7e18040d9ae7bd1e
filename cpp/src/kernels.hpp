// Engine-private building blocks: aligned buffers, the packed right-hand operand and the
// register-blocked GEMM that every time step runs, the gate activations, a spin barrier for a
// team of threads, and the counter-based dropout stream. Eigen and std only.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <thread>
#include <type_traits>

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
    Index capacity() const { return cap_; }
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

// One MR x NR block of C in registers: C[0:MR, 0:NR) = init + A[MR, K] * panel. Each k loads one panel row (two packets), broadcasts MR values of A
// and issues 2*MR FMAs. With few rows (MR < 4, the batch-1 and small-batch path) the k loop is
// split over KU independent accumulator sets so that enough FMAs are in flight to hide their
// latency: a GEMV, not a padded GEMM.
template <typename S, int MR>
struct Tile {
    using Packet = typename Simd<S>::Packet;
    static constexpr int PS = Simd<S>::PS, NR = Simd<S>::NR;
    static constexpr int KU = MR >= 4 ? 1 : (MR >= 2 ? 2 : 4);
    Packet acc[KU][MR][2];

    Tile() {
        for (int u = 0; u < KU; ++u)
            for (int m = 0; m < MR; ++m)
                acc[u][m][0] = acc[u][m][1] = Eigen::internal::pset1<Packet>(S(0));
    }

    // acc += A[MR, K] * panel, A row-major with stride lda, panel [K, NR].
    void madd(Index K, const S* A, Index lda, const S* panel) {
        using namespace Eigen::internal;
        Index k = 0;
        for (; k + KU <= K; k += KU)
            for (int u = 0; u < KU; ++u) step(u, A + k + u, lda, panel + (k + u) * NR);
        for (; k < K; ++k) step(0, A + k, lda, panel + k * NR);
    }

    // C[MR, ncols] = (Accumulate ? C : bias, or 0 if bias is nullptr) + acc; bias [ncols].
    template <bool Accumulate>
    void store(S* C, Index ldc, Index ncols, const S* bias) {
        using namespace Eigen::internal;
        for (int u = 1; u < KU; ++u)
            for (int m = 0; m < MR; ++m) {
                acc[0][m][0] = padd(acc[0][m][0], acc[u][m][0]);
                acc[0][m][1] = padd(acc[0][m][1], acc[u][m][1]);
            }
        if (ncols == NR) {  // a whole panel, straight from the registers
            const bool add_bias = !Accumulate && bias;
            const Packet b0 = add_bias ? ploadu<Packet>(bias) : pset1<Packet>(S(0));
            const Packet b1 = add_bias ? ploadu<Packet>(bias + PS) : pset1<Packet>(S(0));
            for (int m = 0; m < MR; ++m) {
                S* c = C + m * ldc;
                Packet v0 = acc[0][m][0], v1 = acc[0][m][1];
                if (Accumulate) {
                    v0 = padd(ploadu<Packet>(c), v0);
                    v1 = padd(ploadu<Packet>(c + PS), v1);
                } else if (add_bias) {
                    v0 = padd(v0, b0);
                    v1 = padd(v1, b1);
                }
                pstoreu(c, v0);
                pstoreu(c + PS, v1);
            }
            return;
        }
        // The last, partial panel, through a buffer: reads and writes only ncols columns. The
        // accumulators go to the buffer in a loop of its own, which the compiler unrolls; read
        // inside the column loop they were indexed at run time and so kept in memory, on the
        // whole-panel path too.
        alignas(64) S tmp[MR * NR];
        for (int m = 0; m < MR; ++m) {
            pstore(tmp + m * NR, acc[0][m][0]);
            pstore(tmp + m * NR + PS, acc[0][m][1]);
        }
        for (int m = 0; m < MR; ++m) {
            S* c = C + m * ldc;
            const S* t = tmp + m * NR;
            for (Index j = 0; j < ncols; ++j)
                c[j] = Accumulate ? c[j] + t[j] : (bias ? bias[j] + t[j] : t[j]);
        }
    }

private:
    void step(int u, const S* a, Index lda, const S* b) {
        using namespace Eigen::internal;
        const Packet b0 = pload<Packet>(b), b1 = pload<Packet>(b + PS);
        for (int m = 0; m < MR; ++m) {
            const Packet am = pset1<Packet>(a[m * lda]);
            acc[u][m][0] = pmadd(am, b0, acc[u][m][0]);
            acc[u][m][1] = pmadd(am, b1, acc[u][m][1]);
        }
    }
};

// C[0:M, col_begin:col_end) = init + A[M, K] * Bp, A row-major with stride lda, C row-major
// with stride ldc, init = C itself (Accumulate) or the row bias[col_begin:col_end) (nullptr:
// zero). col_begin is on a panel boundary. Rows go in blocks of MR, then one block of the
// leftover rows.
template <typename S, bool Accumulate>
void gemm_panels(Index M, const S* A, Index lda, const Panels<S>& Bp, Index col_begin,
                 Index col_end, S* C, Index ldc, const S* bias = nullptr) {
    constexpr int NR = Simd<S>::NR, MR = Simd<S>::MR;
    const Index K = Bp.K;
    for (Index n0 = col_begin; n0 < col_end; n0 += NR) {
        const S* panel = Bp.data.data() + (n0 / NR) * K * NR;
        const Index w = std::min<Index>(NR, col_end - n0);
        const S* b = bias ? bias + n0 : nullptr;
        auto block = [&](auto rows, Index m) {
            Tile<S, decltype(rows)::value> tile;
            tile.madd(K, A + m * lda, lda, panel);
            tile.template store<Accumulate>(C + m * ldc + n0, ldc, w, b);
        };
        Index m = 0;
        for (; m + MR <= M; m += MR) block(std::integral_constant<int, MR>(), m);
        switch (M - m) {  // leftover rows, and the whole batch when B < MR
#define EIGENLSTM_TAIL(r) \
    case r: block(std::integral_constant<int, r>(), m); break;
            EIGENLSTM_TAIL(1) EIGENLSTM_TAIL(2) EIGENLSTM_TAIL(3) EIGENLSTM_TAIL(4)
            EIGENLSTM_TAIL(5) EIGENLSTM_TAIL(6) EIGENLSTM_TAIL(7) EIGENLSTM_TAIL(8)
            EIGENLSTM_TAIL(9) EIGENLSTM_TAIL(10) EIGENLSTM_TAIL(11)
#undef EIGENLSTM_TAIL
            default: break;
        }
    }
}

// ---- activations ---------------------------------------------------------------------------

// sigma(x) = 1 / (1 + exp(-x)), elementwise, as an Eigen functor (packet and scalar paths).
// float64: Eigen's vectorized exp. float32: exp(-x) by Eigen's algorithm (Cephes: -x = m ln2 + r,
// |r| <= ln2/2, ln2 in two parts, a degree-5 polynomial, about 1 ulp), arranged to spend as few
// instructions as possible, as sigma is most of the cell update's arithmetic (bench/README.md):
//  - x is clamped to [-89, 88]: for x >= 88 exp(-x) < 2^-126 and sigma = 1; for x < -88.7
//    exp(-x) = inf and sigma = 0 exactly, the correct limit (the true value is below float32's
//    smallest normal). A NaN stays NaN: Eigen's pmin/pmax keep a NaN first operand.
//  - m = round(-x / ln2) comes from one multiply-add with K = 1.5 * 2^23 + 127: the sum's low
//    mantissa bits hold m + 127 in [0, 255], so those bits shifted into the exponent field are
//    2^m itself (no floor, no float-to-int conversion, no clamp of the exponent).
//  - with s = x + m ln2 = -r, exp(-x) = 2^m exp(-s), and the polynomial in -s is the one in r
//    with its odd coefficients negated (no negation of x).
// tanh is Eigen's: in float32 a clamped rational approximation, vectorized; in float64
// std::tanh. tests/test_activations.py measures both against float64.
template <typename S>
struct SigmoidOp {
    S operator()(const S& x) const { return S(1) / (S(1) + std::exp(-x)); }

    template <typename Packet>
    Packet packetOp(const Packet& x) const {
        using namespace Eigen::internal;
        const Packet one = pset1<Packet>(S(1));
        if constexpr (std::is_same_v<S, float>) {
            using PacketI = typename unpacket_traits<Packet>::integer_packet;
            const Packet K = pset1<Packet>(12583039.f);  // 1.5 * 2^23 + 127
            const Packet xc = pmax(pmin(x, pset1<Packet>(88.f)), pset1<Packet>(-89.f));
            const Packet k = pmadd(xc, pset1<Packet>(-1.44269504088896341f), K);
            const Packet m = psub(k, K);
            const Packet two_m =
                preinterpret<Packet>(plogical_shift_left<23>(preinterpret<PacketI>(k)));
            Packet s = pmadd(m, pset1<Packet>(0.693359375f), xc);      // x + m ln2, in two parts
            s = pmadd(m, pset1<Packet>(-2.12194440e-4f), s);
            const Packet s2 = pmul(s, s);
            Packet y = pmadd(pset1<Packet>(-1.9875691500e-4f), s, pset1<Packet>(1.3981999507e-3f));
            Packet y1 = pmadd(pset1<Packet>(4.1665795894e-2f), s, pset1<Packet>(-1.6666665459e-1f));
            y = pmadd(y, s, pset1<Packet>(-8.3334519073e-3f));
            y1 = pmadd(y1, s, pset1<Packet>(5.0000001201e-1f));
            y = pmadd(y, pmul(s2, s), y1);
            y = pmadd(y, s2, psub(one, s));                          // exp(-s) = 1 - s + s^2 y
            return pdiv(one, pmadd(y, two_m, one));
        } else {
            return pdiv(one, padd(one, pexp(pnegate(x))));
        }
    }
};

// ---- the fused cell update ---------------------------------------------------------------

// Copies n <= N values (N a power of two) as fixed-size pieces of N/2, N/4, ..., 1, 1: each a
// register move, and never more than N values. A plain loop of unknown length would be turned
// into a call to memcpy, which costs more than the copy itself for the few values of a partial
// gate block.
template <int N, typename S>
inline void copy_short(S* dst, const S* src, Index n) {
    if constexpr (N > 1) {
        if (n >= N / 2) {
            std::memcpy(dst, src, (N / 2) * sizeof(S));
            dst += N / 2;
            src += N / 2;
            n -= N / 2;
        }
        copy_short<N / 2>(dst, src, n);
    } else if (n > 0) {
        *dst = *src;
    }
}

// The cell update of N units of R batch rows, each row's gates packed as [i(N) f(N) g(N) o(N)].
// N is a compile-time size (a gate block, or half or a quarter of one), so Eigen unrolls a row
// into whole SIMD packets (N = 16 floats: 2 x 8 on AVX2, 1 x 16 on AVX-512) with no size
// checks. Each line below runs over all R rows before the next: R independent dependency
// chains per line for the core to overlap (the seed's forward: 4% faster than a call per row,
// bench/README.md).
//   g       [R, ldg]  first 4*N: pre-activations i, f, g, o in; activated gates out (the
//                     backward cache)
//   c_prev  [R, ldc]  first N: c_{t-1}; read only
//   c       [R, ldc]  first N: c_t = f*c_{t-1} + i*g; overwritten
//   h       [R, ldh]  first N: o*tanh(c_t); overwritten
//   y       [R, ldy]  first N: a second copy of h (the layer output), or nullptr
template <typename S, int N>
inline void cell_forward_n(S* g, Index ldg, Index R, const S* c_prev, S* c, Index ldc, S* h,
                           Index ldh, S* y, Index ldy) {
    using A = Eigen::Array<S, N, Eigen::Dynamic>;
    using Str = Eigen::OuterStride<>;
    Eigen::Map<A, 0, Str> i(g, N, R, Str(ldg)), f(g + N, N, R, Str(ldg)),
        gg(g + 2 * N, N, R, Str(ldg)), o(g + 3 * N, N, R, Str(ldg)), cm(c, N, R, Str(ldc)),
        hm(h, N, R, Str(ldh));
    i = i.unaryExpr(SigmoidOp<S>());
    f = f.unaryExpr(SigmoidOp<S>());
    gg = gg.tanh();
    o = o.unaryExpr(SigmoidOp<S>());
    cm = f * Eigen::Map<const A, 0, Str>(c_prev, N, R, Str(ldc)) + i * gg;
    hm = o * cm.tanh();
    if (y) Eigen::Map<A, 0, Str>(y, N, R, Str(ldy)) = hm;
}

// Backward of the cell update of N units of one batch row; quotes the forward lines it undoes.
//   g       [4*N]  activated i, f, g, o in; d(pre-activation) out
//   c_t     [N]    c_t; read only          c_prev [N]  c_{t-1}; read only
//   dh      [N]    dL/dh_t (before any projection); read only
//   dc      [N]    dL/dc_t in (from later steps); dL/dc_{t-1} out
template <typename S, int N>
inline void cell_backward_n(S* g, const S* c_t, const S* c_prev, const S* dh, S* dc) {
    using A = Eigen::Array<S, N, 1>;
    Eigen::Map<A> ai(g), af(g + N), ag(g + 2 * N), ao(g + 3 * N), dcm(dc);
    const A i = ai, f = af, gg = ag, o = ao;  // values: the maps are overwritten
    const A th = Eigen::Map<const A>(c_t).tanh();
    const Eigen::Map<const A> dhm(dh), cp(c_prev);
    // forward: h = o*tanh(c)        ->  do = dh*tanh(c),  dc += dh*o*(1 - tanh(c)^2)
    const A dct = dcm + dhm * o * (S(1) - th * th);
    // forward: o = s(a_o)           ->  da_o = do*o*(1-o)
    ao = dhm * th * o * (S(1) - o);
    // forward: c = f*c_prev + i*g   ->  di = dc*g, df = dc*c_prev, dg = dc*i, dc_prev = dc*f
    // forward: i, f = s(a), g = tanh(a_g)  ->  da = d*s*(1-s), da_g = dg*(1-g^2)
    ai = dct * gg * i * (S(1) - i);
    af = dct * cp * f * (S(1) - f);
    ag = dct * i * (S(1) - gg * gg);
    dcm = dct * f;
}

// The last block of a layer whose H is not a multiple of HB = gate_block<S>() has w < HB units
// and its gates packed as [i(w) f(w) g(w) o(w)]. When w is exactly HB/2 or HB/4 that is the
// layout of a block of w units, and it runs as one, in half- or quarter-width packets (the
// H = 20 tail of 4 floats: one 128-bit packet per gate, no copies). Any other w is padded on
// the stack to N lanes, the smallest of a quarter, a half or a whole block that holds it,
// zeros in the unused lanes (no NaN or inf), run through the same SIMD code, and copied back.
template <typename S, int N>
inline void cell_forward_padded(S* g, Index w, const S* c_prev, S* c, S* h, S* y) {
    alignas(64) S tg[4 * N] = {}, tcp[N] = {}, tc[N], th[N];
    for (Index q = 0; q < 4; ++q) copy_short<N>(tg + q * N, g + q * w, w);
    copy_short<N>(tcp, c_prev, w);
    cell_forward_n<S, N>(tg, 4 * N, 1, tcp, tc, N, th, N, nullptr, 0);
    for (Index q = 0; q < 4; ++q) copy_short<N>(g + q * w, tg + q * N, w);
    copy_short<N>(c, tc, w);
    copy_short<N>(h, th, w);
    if (y) copy_short<N>(y, th, w);
}

template <typename S, int N>
inline void cell_backward_padded(S* g, Index w, const S* c_t, const S* c_prev, const S* dh, S* dc) {
    alignas(64) S tg[4 * N] = {}, tct[N] = {}, tcp[N] = {}, tdh[N] = {}, tdc[N] = {};
    for (Index q = 0; q < 4; ++q) copy_short<N>(tg + q * N, g + q * w, w);
    copy_short<N>(tct, c_t, w);
    copy_short<N>(tcp, c_prev, w);
    copy_short<N>(tdh, dh, w);
    copy_short<N>(tdc, dc, w);
    cell_backward_n<S, N>(tg, tct, tcp, tdh, tdc);
    for (Index q = 0; q < 4; ++q) copy_short<N>(g + q * w, tg + q * N, w);
    copy_short<N>(dc, tdc, w);
}

// One gate block of w <= HB units (w < HB only for the last block of a layer) of R batch
// rows, strides as in cell_forward_n. Padded blocks go one row at a time.
template <typename S>
inline void cell_forward(S* g, Index ldg, Index R, Index w, const S* c_prev, S* c, Index ldc,
                         S* h, Index ldh, S* y, Index ldy) {
    constexpr int HB = int(gate_block<S>());
    if (w == HB) return cell_forward_n<S, HB>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy);
    if (w == HB / 2) return cell_forward_n<S, HB / 2>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy);
    if (w == HB / 4) return cell_forward_n<S, HB / 4>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy);
    for (Index b = 0; b < R; ++b) {
        S* gb = g + b * ldg;
        const S* cp = c_prev + b * ldc;
        S* cb = c + b * ldc;
        S* hb = h + b * ldh;
        S* yb = y ? y + b * ldy : nullptr;
        if (4 * w <= HB) cell_forward_padded<S, HB / 4>(gb, w, cp, cb, hb, yb);
        else if (2 * w <= HB) cell_forward_padded<S, HB / 2>(gb, w, cp, cb, hb, yb);
        else cell_forward_padded<S, HB>(gb, w, cp, cb, hb, yb);
    }
}

template <typename S>
inline void cell_backward(S* g, Index w, const S* c_t, const S* c_prev, const S* dh, S* dc) {
    constexpr int HB = int(gate_block<S>());
    if (w == HB) cell_backward_n<S, HB>(g, c_t, c_prev, dh, dc);
    else if (w == HB / 2) cell_backward_n<S, HB / 2>(g, c_t, c_prev, dh, dc);
    else if (w == HB / 4) cell_backward_n<S, HB / 4>(g, c_t, c_prev, dh, dc);
    else if (4 * w <= HB) cell_backward_padded<S, HB / 4>(g, w, c_t, c_prev, dh, dc);
    else if (2 * w <= HB) cell_backward_padded<S, HB / 2>(g, w, c_t, c_prev, dh, dc);
    else cell_backward_padded<S, HB>(g, w, c_t, c_prev, dh, dc);
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

// SigmoidOp has a packet path: Eigen vectorizes expressions that use it.
template <typename S>
struct Eigen::internal::functor_traits<eigenlstm::detail::SigmoidOp<S>> {
    enum { Cost = 30 * NumTraits<S>::MulCost, PacketAccess = packet_traits<S>::HasExp };
};
