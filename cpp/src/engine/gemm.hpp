// The step GEMM: a [K, N] right-hand operand packed once per weight update into panels of
// two SIMD registers' width, and a register-blocked micro-kernel that multiplies a few batch
// rows by it. Compiled once per ISA level: the packet type, the panel width NR and the row
// block MR all follow from the level's registers (Eigen's packet traits).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <atomic>
#include <cstdint>
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

// ---- the operands ----------------------------------------------------------------------------

// M rows of A as a representation W's kernels multiply (`prepare`), then multiplied by any
// columns of W (`product`): a time step prepares x_t and h_{t-1} once and runs its products
// and cell a few gate blocks at a time (forward_direction). Each representation of the weights
// names its own (W::Operand); float panels multiply the rows as they are.
template <typename S>
struct FloatRows {
    const S* A = nullptr;
    Index lda = 0, M = 0;
};

// A number that no other packing in the process has had. Packed weights change only by being
// packed again, so (a packing's id) names their contents: thread_copy (plan.hpp) keys its
// copies on it.
inline std::uint64_t next_pack_id() {
    static std::atomic<std::uint64_t> last{0};
    return ++last;
}

// The packed right-hand operand: a [K, N] matrix stored as ceil(N / NR) panels, each [K, NR]
// row-major and zero padded:
//   data[p*K*NR + k*NR + j] = M(k, p*NR + j).
// A step's GEMM streams one panel (K*NR contiguous values, L1-sized for K <= 512 in float32)
// against all batch rows, so the weights are packed once per update, never per time step.
template <typename S>
struct Panels {
    using Operand = FloatRows<S>;
    Index K = 0, N = 0;
    std::uint64_t id = 0;  // next_pack_id() of the last pack
    Buffer<S> data;

    Index bytes() const { return data.size() * Index(sizeof(S)); }

    Index num_panels() const { return (N + Simd<S>::NR - 1) / Simd<S>::NR; }

    // M(k, n) = src[k*rs + n*cs]
    void pack(const S* src, Index k_size, Index n_size, Index rs, Index cs) {
        constexpr int NR = Simd<S>::NR;
        K = k_size;
        N = n_size;
        id = next_pack_id();
        data.resize(checked_mul(num_panels() * NR, std::max<Index>(K, 1)));
        data.zero();
        for (Index p = 0; p < num_panels(); ++p) {
            S* dst = data.data() + p * K * NR;
            const Index n0 = p * NR, w = std::min<Index>(NR, N - n0);
            for (Index k = 0; k < K; ++k)
                for (Index j = 0; j < w; ++j) dst[k * NR + j] = src[k * rs + (n0 + j) * cs];
        }
    }
    void assign(const Panels& o) {
        K = o.K;
        N = o.N;
        id = o.id;
        data.assign(o.data);
    }
};

// One block of C in registers: MR rows by NP panels of NR columns,
//   C[0:MR, panel p) = init + A[MR, K] * panel p,
// each value summed over k in order, one FMA per k, whatever MR and NP are. That order is
// what makes results independent of how rows fall into blocks: a row computes the same bits
// in a block of 12 rows or alone, so a sequence run in one call, in chunks or step by step
// (a stream), and any thread plan, give the same results. Each k loads one row of each panel
// (two packets), broadcasts MR values of A and issues 2*MR*NP FMAs. Few rows (MR < 4: the
// batch-1 and small-batch path, a GEMV) take several panels at once (NP = 4 for one row, 2
// for two or three), so that enough independent FMAs are in flight to hide their latency.
template <typename S, int MR, int NP>
struct Tile {
    using Packet = typename Simd<S>::Packet;
    static constexpr int PS = Simd<S>::PS, NR = Simd<S>::NR;
    Packet acc[NP][MR][2];

    Tile() {
        for (int p = 0; p < NP; ++p)
            for (int m = 0; m < MR; ++m)
                acc[p][m][0] = acc[p][m][1] = Eigen::internal::pset1<Packet>(S(0));
    }

    // acc += A[MR, K] * panels, A row-major with stride lda; panel p ([K, NR]) at
    // panels + p * panel_stride.
    void madd(Index K, const S* A, Index lda, const S* panels, Index panel_stride) {
        using namespace Eigen::internal;
        for (Index k = 0; k < K; ++k)
            for (int p = 0; p < NP; ++p) {
                const S* b = panels + p * panel_stride + k * NR;
                const Packet b0 = pload<Packet>(b), b1 = pload<Packet>(b + PS);
                for (int m = 0; m < MR; ++m) {
                    const Packet am = pset1<Packet>(A[m * lda + k]);
                    acc[p][m][0] = pmadd(am, b0, acc[p][m][0]);
                    acc[p][m][1] = pmadd(am, b1, acc[p][m][1]);
                }
            }
    }

    // C[MR, ncols] = (Accumulate ? C : bias, or 0 if bias is nullptr) + acc[p]; bias [ncols].
    template <bool Accumulate>
    void store(int p, S* C, Index ldc, Index ncols, const S* bias) {
        using namespace Eigen::internal;
        if (ncols == NR) {  // a whole panel, straight from the registers
            const bool add_bias = !Accumulate && bias;
            const Packet b0 = add_bias ? ploadu<Packet>(bias) : pset1<Packet>(S(0));
            const Packet b1 = add_bias ? ploadu<Packet>(bias + PS) : pset1<Packet>(S(0));
            for (int m = 0; m < MR; ++m) {
                S* c = C + m * ldc;
                Packet v0 = acc[p][m][0], v1 = acc[p][m][1];
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
        // accumulators go to the buffer in a loop of their own, which the compiler unrolls;
        // read inside the column loop they were indexed at run time and so kept in memory, on
        // the whole-panel path too.
        alignas(64) S tmp[MR * NR];
        for (int m = 0; m < MR; ++m) {
            pstore(tmp + m * NR, acc[p][m][0]);
            pstore(tmp + m * NR + PS, acc[p][m][1]);
        }
        for (int m = 0; m < MR; ++m) {
            S* c = C + m * ldc;
            const S* t = tmp + m * NR;
            for (Index j = 0; j < ncols; ++j)
                c[j] = Accumulate ? c[j] + t[j] : (bias ? bias[j] + t[j] : t[j]);
        }
    }
};

// f(std::integral_constant<int, r>()) for a run-time r in [1, R].
template <int R, typename F>
void with_rows(Index r, F&& f) {
    if constexpr (R > 0) {
        if (r == R) return f(std::integral_constant<int, R>());
        with_rows<R - 1>(r, f);
    }
}

// The register blocking of a product of M rows by the columns [col_begin, col_end) (col_begin
// on a panel boundary) in panels of NR: block(rows, panels, m, n0) for rows [m, m + R) against
// NP panels from column n0, R and NP as std::integral_constants. Rows go in blocks of MR panel
// by panel (a panel stays in L1 for all of them), then the leftover rows (the whole batch when
// B < MR) over groups of panels: with few rows (a GEMV for one) a tile of one panel has too
// few independent multiply-adds in flight to hide their latency, so one row takes 4 panels at
// once and two or three rows take 2. Shared by every kernel (float, int8, bfloat16).
template <int MR, int NR, typename Block>
void for_each_tile(Index M, Index col_begin, Index col_end, Block&& block) {
    const Index full = M / MR * MR;
    for (Index n0 = col_begin; n0 < col_end && full > 0; n0 += NR)
        for (Index m = 0; m < full; m += MR)
            block(std::integral_constant<int, MR>(), std::integral_constant<int, 1>(), m, n0);
    with_rows<MR - 1>(M - full, [&](auto rows) {
        constexpr int R = decltype(rows)::value, NP = R >= 4 ? 1 : (R == 1 ? 4 : 2);
        Index n0 = col_begin;
        for (; n0 + (NP - 1) * NR < col_end; n0 += NP * NR)  // NP panels, the last may be partial
            block(rows, std::integral_constant<int, NP>(), full, n0);
        for (; n0 < col_end; n0 += NR) block(rows, std::integral_constant<int, 1>(), full, n0);
    });
}

// C[0:M, col_begin:col_end) = init + A[M, K] * Bp, A row-major with stride lda, C row-major
// with stride ldc, init = C itself (Accumulate) or the row bias[col_begin:col_end) (nullptr:
// zero). col_begin is on a panel boundary.
template <typename S, bool Accumulate>
void gemm_panels(Index M, const S* A, Index lda, const Panels<S>& Bp, Index col_begin,
                 Index col_end, S* C, Index ldc, const S* bias = nullptr) {
    constexpr int NR = Simd<S>::NR, MR = Simd<S>::MR;
    const Index K = Bp.K;
    for_each_tile<MR, NR>(M, col_begin, col_end, [&](auto rows, auto panels, Index m, Index n0) {
        constexpr int R = decltype(rows)::value, NP = decltype(panels)::value;
        Tile<S, R, NP> tile;
        tile.madd(K, A + m * lda, lda, Bp.data.data() + (n0 / NR) * K * NR, K * NR);
        for (int p = 0; p < NP; ++p) {
            const Index c0 = n0 + p * NR;
            tile.template store<Accumulate>(p, C + m * ldc + c0, ldc,
                                            std::min<Index>(NR, col_end - c0),
                                            bias ? bias + c0 : nullptr);
        }
    });
}

// C[0:M, col_begin:col_end) = init + A[M, K] W, in two parts, overloaded on W's representation
// (here float panels; quantized.hpp adds int8 and bfloat16 ones, found by argument-dependent
// lookup): prepare(op, M, A, lda, W) puts A's rows in W's operand (W::Operand), then
// product<Accumulate>(op, W, col_begin, col_end, C, ldc, bias) multiplies them by any of W's
// columns, each the same bits whatever the columns of the call. init is C (Accumulate) or the
// row bias[col_begin:col_end) (nullptr: zero); A is row-major with stride lda; col_begin is on
// a panel boundary.
template <typename S>
void prepare(FloatRows<S>& op, Index M, const S* A, Index lda, const Panels<S>&) {
    op = {A, lda, M};
}
template <bool Accumulate, typename S>
void product(const FloatRows<S>& op, const Panels<S>& W, Index col_begin, Index col_end, S* C,
             Index ldc, const S* bias = nullptr) {
    gemm_panels<S, Accumulate>(op.M, op.A, op.lda, W, col_begin, col_end, C, ldc, bias);
}

// How many hidden units a time step of `rows` batch rows runs through its products and its
// cell at a time, of H (forward_direction): one thread-split grain, whose pre-activations
// (8 KB at 16 rows in float32) stay in L1 from the products to the cell. Over all of a
// thread's units they were written, added to and read back through L2: chunks took the eval
// forward at I = H = 256, T = 100, 2 threads from 1.93 to 1.78 ms in float32 and 0.83 to
// 0.75 ms in int8 at B = 4 (bench/README.md).
template <typename S>
Index step_chunk(const Panels<S>&, Index, Index) {
    return unit_grain<S>();
}

// Both at once, for a product that runs once on its rows: A prepared in the calling thread's
// operand (after the first call of a size, none allocates).
template <bool Accumulate, typename S, typename W>
void multiply(Index M, const S* A, Index lda, const W& w, Index col_begin, Index col_end, S* C,
              Index ldc, const S* bias = nullptr) {
    if (M == 0 || col_begin >= col_end) return;
    thread_local typename W::Operand op;
    prepare(op, M, A, lda, w);
    product<Accumulate>(op, w, col_begin, col_end, C, ldc, bias);
}

}  // namespace detail
}  // namespace eigenlstm
