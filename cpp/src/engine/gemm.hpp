// The step GEMM: a [K, N] right-hand operand packed once per weight update into panels of
// two SIMD registers' width, and a register-blocked micro-kernel that multiplies a few batch
// rows by it. Compiled once per ISA level: the packet type, the panel width NR and the row
// block MR all follow from the level's registers (Eigen's packet traits).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstring>
#include <type_traits>

#include "../buffer.hpp"
#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// ---- SIMD traits ---------------------------------------------------------------------------

template <typename S>
struct Simd {
    using Packet = typename Eigen::internal::packet_traits<S>::type;
    static constexpr int PS = Eigen::internal::unpacket_traits<Packet>::size;  // lanes
    static constexpr int NR = 2 * PS;  // columns per packed panel: two vector registers
    // rows per register block: with 32 vector registers (AVX-512, NEON) 12 rows are 24
    // accumulators + 3 temps; with 16 (SSE, AVX2) 6 rows are 12 + 3. (A constexpr, not #if:
    // Eigen's SSE path defines the register count with sizeof.)
    static constexpr int MR = EIGEN_ARCH_DEFAULT_NUMBER_OF_REGISTERS >= 32 ? 12 : 6;
};

// Threads split hidden units in chunks of this many: a whole number of gate blocks and of
// packed panels, so that every thread's columns are panel- and block-aligned.
template <typename S>
constexpr Index unit_grain() {
    return std::max<Index>(gate_block<S>(), Simd<S>::NR);
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
}  // namespace detail
}  // namespace eigenlstm
