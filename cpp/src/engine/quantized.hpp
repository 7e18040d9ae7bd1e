// Reduced-precision products for inference: int8 weights with dynamically quantized
// activations, and bfloat16 weights and activations, both accumulating exactly (int32) or in
// float32. They take the place of gemm.hpp's float panels in the time loops (the overloads of
// `multiply` below): a quantized LSTM runs the same loops, cell and thread plan as a float32
// one, and only its products differ.
//
// Kernels, chosen at run time by the features the front end allows (Features):
//   int8   AMX tdpbusd (16x16x64 multiply-adds an instruction), AVX512-VNNI vpdpbusd (64),
//          AVX2 vpmaddubsw + vpmaddwd (with vpsignb for 8-bit rows; the avx2 and avx512
//          levels without VNNI), plain C++ (generic);
//   bf16   AMX tdpbf16ps (16x16x32), AVX512_BF16 vdpbf16ps (32 an instruction), else an
//          emulation: the bfloat16 weights widened to float32 (exact), the activations rounded
//          to bfloat16 as the instruction's operands are, and the float32 kernel, which sums
//          the exact products in its own order (results differ from vdpbf16ps's, and those of
//          tdpbf16ps from both, in the last bits of float32).
// Every int8 kernel computes the same exact int32 sums (integer arithmetic, never saturating:
// see Int8TileAvx2; the front end bounds K by kMaxInt8Depth so that they fit int32), so the
// int8 path gives the same results at every level up to the float32 rounding of the
// dequantization.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../buffer.hpp"
#include "gemm.hpp"
#include "threads.hpp"

namespace eigenlstm {
namespace detail {

// ---- features beyond the back end's level ----------------------------------------------------

// Instructions of the CPU that this back end may use besides its level's, decided once by the
// front end (dispatch.cpp: the CPU, the operating system and EIGENLSTM_MAX_ISA) before any
// engine exists. Only the avx512 and native back ends have kernels for them.
struct Features {
    bool vnni = false;  // AVX512_VNNI: vpdpbusd
    bool bf16 = false;  // AVX512_BF16: vdpbf16ps
    bool amx = false;   // AMX-TILE, AMX-INT8 and AMX-BF16 (with vnni and bf16), and the OS's
                        // permission to use the tiles: tdpbusd, tdpbf16ps
};
inline Features& features() {
    static Features f;
    return f;
}
#if defined(__AVX512F__)
constexpr bool kHasReducedPrecisionKernels = true;
#else
constexpr bool kHasReducedPrecisionKernels = false;
#endif
// With AMX, the depth of packed weights is a whole number of tiles: 16 quads of int8 (64
// values) or 16 pairs of bfloat16 (32), zero padded.
constexpr Index kAmxDepth = 16;
// The tiles compute 16 rows however few there are. A stream step of I = H = 256 on 2 threads
// (bench/README.md) took, in microseconds,
//   rows              1     2     4     8    16    32
//   int8  vpdpbusd   9.0  12.1  16.0  24.6  42.4  68.9
//         tdpbusd   11.2  12.6  17.2  22.6  34.2  48.7
//   bf16  vdpbf16ps 15.1  22.4  37.3  68.4 130.8 210.9
//         tdpbf16ps 15.2  16.4  19.2  22.5  34.1  53.3
// so int8 products of fewer than 8 rows keep vpdpbusd, which computes the same int32 sums: the
// results do not depend on the kernel. tdpbf16ps rounds differently from vdpbf16ps, so bf16
// products use it at every size, or a row's results would depend on its batch's size.
constexpr Index kAmxMinRowsInt8 = 8;

// ---- bfloat16 ------------------------------------------------------------------------------

// The upper 16 bits of a float32, rounded to nearest even (VCVTNEPS2BF16's rounding); a NaN
// stays a (quiet) NaN.
inline std::uint16_t to_bf16(float x) {
    std::uint32_t b;
    std::memcpy(&b, &x, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u) return std::uint16_t((b >> 16) | 0x40u);
    b += 0x7fffu + ((b >> 16) & 1u);
    return std::uint16_t(b >> 16);
}
inline float from_bf16(std::uint16_t h) {
    const std::uint32_t b = std::uint32_t(h) << 16;
    float x;
    std::memcpy(&x, &b, sizeof x);
    return x;
}

// ---- int8: activations -----------------------------------------------------------------------

// The least and greatest of a[0, K) in mn and mx, in one pass of SIMD packets (GCC does not
// vectorize a min/max loop without -ffinite-math-only; as a scalar loop this was 9% of an int8
// forward, and as three Eigen reductions, min, max and the check, 5%). False when a holds an
// inf or a NaN (a - a is then NaN), and mn and mx are then unspecified.
inline bool row_range(const float* a, Index K, float& mn, float& mx) {
    using namespace Eigen::internal;
    using P = packet_traits<float>::type;
    constexpr Index n = packet_traits<float>::size;
    float smn = K > 0 ? a[0] : 0.0f, smx = smn, sbad = 0.0f;
    P vmn = pset1<P>(smn), vmx = vmn, vbad = pset1<P>(0.0f);
    Index k = 0;
    for (; k + n <= K; k += n) {
        const P v = ploadu<P>(a + k);
        vmn = pmin(vmn, v);
        vmx = pmax(vmx, v);
        vbad = padd(vbad, psub(v, v));
    }
    for (; k < K; ++k) {
        smn = std::min(smn, a[k]);
        smx = std::max(smx, a[k]);
        sbad += a[k] - a[k];
    }
    mn = std::min(smn, predux_min(vmn));
    mx = std::max(smx, predux_max(vmx));
    return predux(vbad) + sbad == 0.0f;
}

// M rows of activations quantized per row on the row's own range, to 8 or 7 bits (levels 255
// or 127):
//   A[m][k] ~= lo[m] + step[m] * u[m][k],  u in [0, levels],  step = (max - min) / levels.
// Unsigned, because vpdpbusd and vpmaddubsw multiply unsigned by signed bytes; on the row's own
// range, because the offset lo enters the product exactly (through the weights' column sums)
// and a grid over [min, max] is as fine as a symmetric one over [-max|a|, max|a|] when the
// range is symmetric and finer when it is not (an offset or ReLU'd input). Per row, so that a
// row's result does not depend on the other rows of its batch (a stream's steps equal one
// call). How many bits is the weights' choice (Int8Panels::levels): 8 for the model's input x,
// whose outliers stretch its range, 7 for the states (r = o * tanh(c) and, without a
// projection, h = r are bounded in (-1, 1)), where 7 bits let AVX2 multiply without vpsignb
// (Int8TileAvx2). On the acceptance model (I = H = 256,
// T = 100, standard normal x, random weights) the output error was 1.50e-2 with 7 bits
// everywhere, 0.84e-2 with 8 everywhere and 0.85e-2 with this split.
// split: also store, for AVX2's 8-bit kernel, s = u - 128 as signed bytes in u and |s| in mag.
// A row holding an inf or NaN has no grid: its u are 0 and its step NaN, so its outputs are
// NaN (never a finite number made of a non-finite input; float32 may give NaN or a saturated
// gate there). K is padded to the weights' depth `ldu` (4 Kq: a whole number of quads, the
// kernels' 4 bytes per multiply-add lane) with zeros (u = 0; s = -128 with split), which
// multiply zero weights; rows [M, M_pad) are zero too (AMX loads whole 16-row tiles).
struct Int8Rows {
    Buffer<std::uint8_t> u, mag;  // [M_pad, ldu]
    Buffer<float> step, lo;       // [M]
    Index ldu = 0;

    void quantize(const float* A, Index M, Index K, Index lda, int levels, bool split,
                  Index depth, Index M_pad) {
        ldu = depth;
        u.resize(checked_mul(M_pad, ldu));
        std::fill(u.data() + M * ldu, u.data() + M_pad * ldu, std::uint8_t(0));
        if (split) mag.resize(checked_mul(M, ldu));
        step.resize(M);
        lo.resize(M);
        const float top = float(levels);
        for (Index m = 0; m < M; ++m) {
            const float* a = A + m * lda;
            float mn, mx;
            const bool bad = !row_range(a, K, mn, mx);
            std::uint8_t* q = u.data() + m * ldu;
            // In double, the range of finite values is finite (in float32 [-3e38, 3e38] is
            // not), and 1 / range is clamped to a float: (a - lo) * inv is never 0 * inf.
            const double range = double(mx) - double(mn);
            const float inv = range > 0 ? float(std::min(double(top) / range, double(FLT_MAX))) : 0.0f;
            step[m] = bad ? NAN : float(range / double(top));
            lo[m] = mn;
            if (bad) {
                std::fill(q, q + ldu, std::uint8_t(0));
            } else {
                // round half up: (a - lo) * inv is in [0, levels] up to rounding (or +inf when
                // a - lo overflows float32), clamped
                for (Index k = 0; k < K; ++k)
                    q[k] = std::uint8_t(std::min((a[k] - mn) * inv + 0.5f, top));
                for (Index k = K; k < ldu; ++k) q[k] = 0;
            }
            if (split) {
                std::uint8_t* g = mag.data() + m * ldu;
                for (Index k = 0; k < ldu; ++k) {
                    const int sk = int(q[k]) - 128;
                    q[k] = std::uint8_t(sk);  // as a signed byte: u - 128
                    g[k] = std::uint8_t(sk < 0 ? -sk : sk);
                }
            }
        }
    }
};

// ---- int8: packed weights --------------------------------------------------------------------

// A [K, N] int8 matrix (N output channels, each with its own scale) as panels of NR columns
// (NR = Simd<float>::NR, the float32 panel width, so that thread splits of the float32 loops
// fall on panel boundaries), K in quads:
//   data[((p*Kq + q)*NR + j)*4 + t] = W(4q + t, p*NR + j),  zero padded,
// one 4-byte lane per column: the operand layout of vpdpbusd and of vpmaddubsw + vpmaddwd,
// and 16 quads of 16 columns are an AMX tile. With AMX, Kq is a multiple of 16 (kAmxDepth).
struct Int8Operand;
struct Int8Panels {
    using Operand = Int8Operand;
    static constexpr int NR = Simd<float>::NR;
    Index K = 0, N = 0, Kq = 0;
    std::uint64_t id = 0;         // next_pack_id() of the last pack
    int levels = 255;             // grid of the activations it multiplies (Int8Rows): 255 or 127
    Buffer<std::int8_t> data;     // [panels, Kq, NR, 4]
    Buffer<float> scale;          // [panels * NR]  dequantization scale of each column (0: padding)
    Buffer<std::int32_t> colsum;  // [panels * NR]  sum over k of W(k, n) (|sum| <= 127 K)

    Index num_panels() const { return (N + NR - 1) / NR; }
    Index bytes() const { return data.size(); }

    // W(k, n) = at(k, n) in [-127, 127], column n's scale scale_of(n); activations on a grid
    // of `grid` levels.
    template <typename At, typename ScaleOf>
    void pack(Index k_size, Index n_size, int grid, At&& at, ScaleOf&& scale_of) {
        K = k_size;
        N = n_size;
        id = next_pack_id();
        Kq = round_up((K + 3) / 4, features().amx ? kAmxDepth : 1);
        levels = grid;
        const Index cols = num_panels() * NR;
        data.resize(checked_mul(cols, std::max<Index>(Kq, 1) * 4));
        data.zero();
        scale.resize(cols);
        scale.zero();
        colsum.resize(cols);
        colsum.zero();
        for (Index n = 0; n < N; ++n) {
            const Index p = n / NR, j = n % NR;
            std::int32_t sum = 0;
            for (Index k = 0; k < K; ++k) {
                const std::int8_t w = at(k, n);
                data[((p * Kq + k / 4) * NR + j) * 4 + k % 4] = w;
                sum += w;
            }
            scale[n] = scale_of(n);
            colsum[n] = sum;
        }
    }
    void assign(const Int8Panels& o) {
        K = o.K;
        N = o.N;
        Kq = o.Kq;
        id = o.id;
        levels = o.levels;
        data.assign(o.data);
        scale.assign(o.scale);
        colsum.assign(o.colsum);
    }
};

// The int8 tiles: R rows (quantized, from row m of `rows`) by NP panels, int32 sums over all
// of K in registers, handed out by store() as acc[r][p*NR + j] = sum_k (u[r][k] - kOffset)
// W(k, n) (the VNNI tile's registers go to the dequantization directly). One per instruction
// set.

// Plain C++: the generic level's.
template <int R, int NP>
struct Int8TileScalar {
    static constexpr int NR = Int8Panels::NR, kOffset = 0;
    std::int32_t acc[R][NP * NR] = {};
    void madd(Index Kq, const Int8Rows& rows, Index m, const std::int8_t* w, Index panel_stride) {
        for (Index q = 0; q < Kq; ++q)
            for (int p = 0; p < NP; ++p) {
                const std::int8_t* b = w + p * panel_stride + q * NR * 4;
                for (int r = 0; r < R; ++r) {
                    const std::uint8_t* a = rows.u.data() + (m + r) * rows.ldu + 4 * q;
                    for (int j = 0; j < NR; ++j)
                        acc[r][p * NR + j] += int(a[0]) * b[4 * j] + int(a[1]) * b[4 * j + 1] +
                                              int(a[2]) * b[4 * j + 2] + int(a[3]) * b[4 * j + 3];
                }
            }
    }
    void store(std::int32_t* out) const { std::memcpy(out, acc, sizeof acc); }
};

#if defined(__AVX2__)
// AVX2 (and AVX-512 without VNNI): per int32 lane, vpmaddubsw multiplies unsigned by signed
// bytes and sums pairs into int16 with saturation, and vpmaddwd by ones sums those pairs.
//   7-bit rows (Split = false): u <= 127 times weights |w| <= 127 gives pairs of at most
//     2 * 127 * 127 = 32258 < 32767: never saturated.
//   8-bit rows (Split = true): u up to 255 would saturate (2 * 255 * 127 > 32767), so the
//     tile multiplies s = u - 128 in [-128, 127] instead, its sign moved onto the weights
//     (vpsignb) and |s| <= 128 unsigned: pairs of at most 2 * 128 * 127 = 32512. The 128 taken
//     off each u comes back in the dequantization, as 128 times the column sum (kOffset).
// Either way the sums are exact.
template <int R, int NP, bool Split>
struct Int8TileAvx2Impl {
    static constexpr int NR = Int8Panels::NR, V = NR / 8;  // 8 int32 a register
    static constexpr int kOffset = Split ? 128 : 0;
    __m256i acc[R][NP * V];
    void madd(Index Kq, const Int8Rows& rows, Index m, const std::int8_t* w, Index panel_stride) {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NP * V; ++v) acc[r][v] = _mm256_setzero_si256();
        const __m256i ones = _mm256_set1_epi16(1);
        const std::uint8_t* u = rows.u.data() + m * rows.ldu;
        const std::uint8_t* g = Split ? rows.mag.data() + m * rows.ldu : nullptr;
        for (Index q = 0; q < Kq; ++q) {
            __m256i b[NP * V];
            for (int p = 0; p < NP; ++p)
                for (int v = 0; v < V; ++v)
                    b[p * V + v] = _mm256_load_si256(reinterpret_cast<const __m256i*>(
                        w + p * panel_stride + (q * NR + 8 * v) * 4));
            for (int r = 0; r < R; ++r) {
                std::int32_t quad;
                std::memcpy(&quad, u + r * rows.ldu + 4 * q, 4);
                const __m256i a = _mm256_set1_epi32(quad);
                if (Split) {
                    std::memcpy(&quad, g + r * rows.ldu + 4 * q, 4);
                    const __m256i mag = _mm256_set1_epi32(quad);
                    for (int v = 0; v < NP * V; ++v)
                        acc[r][v] = _mm256_add_epi32(
                            acc[r][v], _mm256_madd_epi16(
                                           _mm256_maddubs_epi16(mag, _mm256_sign_epi8(b[v], a)), ones));
                } else {
                    for (int v = 0; v < NP * V; ++v)
                        acc[r][v] = _mm256_add_epi32(
                            acc[r][v], _mm256_madd_epi16(_mm256_maddubs_epi16(a, b[v]), ones));
                }
            }
        }
    }
    void store(std::int32_t* out) const {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NP * V; ++v)
                _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + r * NP * NR + 8 * v), acc[r][v]);
    }
};
template <int R, int NP>
using Int8TileAvx2 = Int8TileAvx2Impl<R, NP, false>;
template <int R, int NP>
using Int8TileAvx2Split = Int8TileAvx2Impl<R, NP, true>;
#endif

#if defined(__AVX512F__)
// acc + the products of the 4-byte groups of a (unsigned) and b (signed), per int32 lane
// (vpdpbusd), and acc + the products of the bfloat16 pairs of a and b, per float32 lane
// (vdpbf16ps). Inline assembly, so that the back end needs neither feature to build or load
// (the front end enables them where the CPU has them), and so that the accumulator stays in
// its register: GCC 12 compiled the intrinsics' three-operand form with a copy of the
// accumulator into a scratch register and back around each instruction, which doubled the
// instructions of the int8 tile (perf annotate). By value: an accumulator whose address is
// taken lives on the stack.
inline __m512i dpbusd(__m512i acc, __m512i a, __m512i b) {
    __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}
inline __m512 dpbf16ps(__m512 acc, __m512i a, __m512i b) {
    __asm__("vdpbf16ps %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
    return acc;
}

// AVX512-VNNI: vpdpbusd multiplies 4 u8 by 4 s8 per int32 lane and adds them, exactly.
template <int R, int NP>
struct Int8TileVnni {
    static constexpr int NR = Int8Panels::NR, V = NR / 16, kOffset = 0;  // 16 int32 a register
    __m512i acc[R][NP * V];
    void madd(Index Kq, const Int8Rows& rows, Index m, const std::int8_t* w, Index panel_stride) {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NP * V; ++v) acc[r][v] = _mm512_setzero_si512();
        const std::uint8_t* u = rows.u.data() + m * rows.ldu;
        for (Index q = 0; q < Kq; ++q) {
            __m512i b[NP * V];
            for (int p = 0; p < NP; ++p)
                for (int v = 0; v < V; ++v)
                    b[p * V + v] = _mm512_load_si512(w + p * panel_stride + (q * NR + 16 * v) * 4);
            for (int r = 0; r < R; ++r) {
                std::int32_t quad;
                std::memcpy(&quad, u + r * rows.ldu + 4 * q, 4);
                const __m512i a = _mm512_set1_epi32(quad);
                for (int v = 0; v < NP * V; ++v) acc[r][v] = dpbusd(acc[r][v], a, b[v]);
            }
        }
    }
    // no store(): int8_tiles dequantizes acc from its registers (dequantize_row)
};
#endif

// C[m + r, n0 + j] = init + scale[n] * (step[m + r] * dot + lo[m + r] * colsum[n]), n = n0 + j,
// for the R rows and w columns of a block of int32 sums acc[r * ld + j] = sum_k (u - Offset) W,
// dot = acc + Offset * colsum exactly; init = C (Accumulate), else bias[n] (or 0 without a
// bias). Every kernel of a level ends in the same code (this scalar loop; with AVX512-VNNI
// the vpdpbusd and AMX kernels end in dequantize16 instead), so a row's results depend only
// on its int32 sums, which every kernel computes exactly: they are the same with any of the
// level's kernels and in any block.
template <int Offset, bool Accumulate>
void dequantize(const std::int32_t* acc, Index ld, Index R, Index w, Index m, Index n0,
                const Int8Rows& rows, const Int8Panels& W, float* C, Index ldc, const float* bias) {
    for (Index r = 0; r < R; ++r) {
        const float step = rows.step[m + r], lo = rows.lo[m + r];
        float* c = C + (m + r) * ldc + n0;
        const float* sc = W.scale.data() + n0;
        const std::int32_t* cs = W.colsum.data() + n0;
        const std::int32_t* a = acc + r * ld;
        for (Index j = 0; j < w; ++j) {
            const std::int32_t dot = a[j] + Offset * cs[j];  // exact
            const float v = sc[j] * (step * float(dot) + lo * float(cs[j]));
            c[j] = Accumulate ? c[j] + v : (bias ? bias[n0 + j] + v : v);
        }
    }
}

#if defined(__AVX512F__)
// `dequantize` of 16 columns of one row from int32 sums in a register (offset 0). The vpdpbusd
// tiles hand their sums over in the registers that accumulated them (storing and reloading
// them for the scalar loop, with its tails, took 18% of a tile's time at 16 rows, K = 256);
// the AMX blocks load theirs from the tile store. Both end here, so int8 outputs stay the same
// bits with and without the tiles. The columns' scales and sums come in registers, loaded once
// for all the rows of a block (PanelColumns). Every multiply-add is an explicit fmadd: left to
// GCC, the intrinsics' product and sum were contracted into one in some inlined copies and not
// in others, and a row's results then depended on which kernel (so which batch size) computed
// them.
struct Columns16 {
    __mmask16 k;          // the columns of the block, of these 16
    __m512 scale, colsum;  // their scales, and their column sums as float32 (exact: at most
                           // 127 * kMaxInt8Depth < 2^24 in magnitude)
};
template <bool Accumulate>
inline void dequantize16(__m512i dot, const Columns16& col, float step, float lo,
                         const float* bias, float* c) {
    const __m512 lo_cs = _mm512_mul_ps(_mm512_set1_ps(lo), col.colsum);
    const __m512 sum = _mm512_fmadd_ps(_mm512_set1_ps(step), _mm512_cvtepi32_ps(dot), lo_cs);
    const float* init = Accumulate ? c : bias;
    _mm512_mask_storeu_ps(c, col.k,
                          init ? _mm512_fmadd_ps(col.scale, sum, _mm512_maskz_loadu_ps(col.k, init))
                               : _mm512_mul_ps(col.scale, sum));
}

// The w <= NR = 32 columns from n0 of a block, as two Columns16.
struct PanelColumns {
    Index n0, w;
    Columns16 half[2];
    PanelColumns(const Int8Panels& W, Index n0_, Index w_) : n0(n0_), w(w_) {
        for (int h = 0; h < 2; ++h) {
            const Index wh = std::min<Index>(16, std::max<Index>(0, w - 16 * h));
            const __mmask16 k = __mmask16((1u << wh) - 1);
            half[h] = {k, _mm512_maskz_loadu_ps(k, W.scale.data() + n0 + 16 * h),
                       _mm512_cvtepi32_ps(_mm512_maskz_loadu_epi32(k, W.colsum.data() + n0 + 16 * h))};
        }
    }
    // Row `row` of C over these columns, from its 32 int32 sums in two registers.
    template <bool Accumulate>
    void dequantize_row(__m512i dot0, __m512i dot1, Index row, const Int8Rows& rows, float* C,
                        Index ldc, const float* bias) const {
        const float step = rows.step[row], lo = rows.lo[row];
        float* c = C + row * ldc + n0;
        const float* b = bias ? bias + n0 : nullptr;
        dequantize16<Accumulate>(dot0, half[0], step, lo, b, c);
        if (w > 16) dequantize16<Accumulate>(dot1, half[1], step, lo, b ? b + 16 : nullptr, c + 16);
    }
};
#endif

// C = init + the dequantized products over the columns [col_begin, col_end) (col_begin on a
// panel boundary), blocked by for_each_tile.
template <template <int, int> class Tile, int MR, bool Accumulate>
void int8_tiles(Index M, const Int8Rows& rows, const Int8Panels& W, Index col_begin,
                Index col_end, float* C, Index ldc, const float* bias) {
    constexpr int NR = Int8Panels::NR;
    const Index stride = W.Kq * NR * 4;
    for_each_tile<MR, NR>(M, col_begin, col_end, [&](auto rows_c, auto panels_c, Index m, Index n0) {
        constexpr int R = decltype(rows_c)::value, NP = decltype(panels_c)::value;
        Tile<R, NP> tile;
        tile.madd(W.Kq, rows, m, W.data.data() + (n0 / NR) * stride, stride);
#if defined(__AVX512F__)
        if constexpr (std::is_same<Tile<R, NP>, Int8TileVnni<R, NP>>::value) {
            static_assert(Tile<R, NP>::V == 2, "a panel is two registers");
            // constant indices only, so that the accumulators stay registers (an index the
            // compiler cannot resolve puts the tile on the stack, to be zeroed, stored, reloaded)
#pragma GCC unroll 4
            for (int p = 0; p < NP; ++p) {
                const Index c0 = n0 + p * NR;
                if (c0 >= col_end) break;
                const PanelColumns cols(W, c0, std::min<Index>(NR, col_end - c0));
#pragma GCC unroll 8
                for (int r = 0; r < R; ++r)
                    cols.dequantize_row<Accumulate>(tile.acc[r][2 * p], tile.acc[r][2 * p + 1],
                                                    m + r, rows, C, ldc, bias);
            }
        } else  // the other tiles hand their sums out through memory
#endif
        {
            alignas(64) std::int32_t acc[R * NP * NR];
            tile.store(acc);
            dequantize<Tile<R, NP>::kOffset, Accumulate>(acc, NP * NR, R,
                                                         std::min<Index>(NP * NR, col_end - n0), m,
                                                         n0, rows, W, C, ldc, bias);
        }
    });
}

// The int8 kernel this back end runs (for el.config()).
inline const char* int8_kernel() {
#if defined(__AVX512F__)
    if (features().amx) return "avx512_amx (tdpbusd)";
    if (features().vnni) return "avx512_vnni (vpdpbusd)";
#endif
#if defined(__AVX2__)
    return "avx2 (vpmaddubsw, vpmaddwd)";
#else
    return "generic (C++)";
#endif
}

// ---- bfloat16: packed weights ----------------------------------------------------------------

// A [K, N] bfloat16 matrix. With AVX512_BF16, panels of NR columns with K in pairs,
//   data[((p*K2 + q)*NR + j)*2 + t] = W(2q + t, p*NR + j),
// vdpbf16ps's operand layout, of which 16 pairs of 16 columns are an AMX tile (with AMX, K2 is
// a multiple of 16); otherwise the values widened to float32 (exact) in float panels.
struct Bf16Operand;
struct Bf16Panels {
    using Operand = Bf16Operand;
    static constexpr int NR = Simd<float>::NR;
    Index K = 0, N = 0, K2 = 0;
    std::uint64_t id = 0;        // next_pack_id() of the last pack
    bool native = false;
    Buffer<std::uint16_t> data;  // native: [panels, K2, NR, 2]
    Panels<float> wide;          // emulation

    Index num_panels() const { return (N + NR - 1) / NR; }
    Index bytes() const { return native ? data.size() * 2 : wide.bytes(); }

    template <typename At>
    void pack(Index k_size, Index n_size, At&& at) {
        K = k_size;
        N = n_size;
        id = next_pack_id();
        K2 = round_up((K + 1) / 2, features().amx ? kAmxDepth : 1);
        native = kHasReducedPrecisionKernels && features().bf16;
        if (!native) {
            Buffer<float> tmp(checked_mul(std::max<Index>(K, 1), N));
            for (Index k = 0; k < K; ++k)
                for (Index n = 0; n < N; ++n) tmp[k * N + n] = from_bf16(at(k, n));
            wide.pack(tmp.data(), K, N, N, 1);
            return;
        }
        data.resize(checked_mul(num_panels() * NR, std::max<Index>(K2, 1) * 2));
        data.zero();
        for (Index n = 0; n < N; ++n)
            for (Index k = 0; k < K; ++k)
                data[(((n / NR) * K2 + k / 2) * NR + n % NR) * 2 + k % 2] = at(k, n);
    }
    void assign(const Bf16Panels& o) {
        K = o.K;
        N = o.N;
        K2 = o.K2;
        id = o.id;
        native = o.native;
        data.assign(o.data);
        wide.assign(o.wide);
    }
};

#if defined(__AVX512F__)
// AVX512_BF16: vdpbf16ps adds the products of two bfloat16 pairs to each float32 lane.
template <int R, int NP>
struct Bf16TileNative {
    static constexpr int NR = Bf16Panels::NR, V = NR / 16;
    __m512 acc[R][NP * V];
    void madd(Index K2, const std::uint16_t* a, Index lda, const std::uint16_t* w,
              Index panel_stride) {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NP * V; ++v) acc[r][v] = _mm512_setzero_ps();
        for (Index q = 0; q < K2; ++q) {
            __m512i b[NP * V];
            for (int p = 0; p < NP; ++p)
                for (int v = 0; v < V; ++v)
                    b[p * V + v] = _mm512_load_si512(w + p * panel_stride + (q * NR + 16 * v) * 2);
            for (int r = 0; r < R; ++r) {
                std::int32_t pair;
                std::memcpy(&pair, a + r * lda + 2 * q, 4);
                const __m512i x = _mm512_set1_epi32(pair);
                for (int v = 0; v < NP * V; ++v) acc[r][v] = dpbf16ps(acc[r][v], x, b[v]);
            }
        }
    }
    void store(float* out) const {
        for (int r = 0; r < R; ++r)
            for (int v = 0; v < NP * V; ++v) _mm512_storeu_ps(out + r * NP * NR + 16 * v, acc[r][v]);
    }
};

// C[m + r, n0 + j] = init + acc[r * ld + j] for R rows and w columns, init = C (Accumulate),
// else bias[n0 + j] (or 0 without a bias).
template <bool Accumulate>
void bf16_store(const float* acc, Index ld, Index R, Index w, Index m, Index n0, float* C,
                Index ldc, const float* bias) {
    for (Index r = 0; r < R; ++r) {
        float* c = C + (m + r) * ldc + n0;
        const float* a = acc + r * ld;
        for (Index j = 0; j < w; ++j)
            c[j] = Accumulate ? c[j] + a[j] : (bias ? bias[n0 + j] + a[j] : a[j]);
    }
}

// C = init + A_bf16 W over [col_begin, col_end), blocked by for_each_tile.
template <bool Accumulate>
void bf16_tiles(Index M, const std::uint16_t* A, Index lda, const Bf16Panels& W, Index col_begin,
                Index col_end, float* C, Index ldc, const float* bias) {
    constexpr int NR = Bf16Panels::NR, MR = 8;
    const Index stride = W.K2 * NR * 2;
    for_each_tile<MR, NR>(M, col_begin, col_end, [&](auto rows_c, auto panels_c, Index m, Index n0) {
        constexpr int R = decltype(rows_c)::value, NP = decltype(panels_c)::value;
        Bf16TileNative<R, NP> tile;
        tile.madd(W.K2, A + m * lda, lda, W.data.data() + (n0 / NR) * stride, stride);
        alignas(64) float acc[R * NP * NR];
        tile.store(acc);
        bf16_store<Accumulate>(acc, NP * NR, R, std::min<Index>(NP * NR, col_end - n0), m, n0, C,
                               ldc, bias);
    });
}

// ---- AMX -------------------------------------------------------------------------------------

// AMX (Sapphire Rapids and later) computes in 8 tile registers of up to 16 rows of 64 bytes.
// tdpbusd adds to a 16x16 int32 tile C the products of a 16x64 u8 tile A and an s8 tile B whose
// row q holds, for each of 16 columns n, the 4 bytes W(4q..4q+3, n):
//   C[m][n] += sum_{q < 16, t < 4} A[m][4q + t] * B[q][4n + t],
// exactly in int32 (wrapping as vpdpbusd does; kMaxInt8Depth keeps the sums in range): its
// sums are vpdpbusd's to the bit. tdpbf16ps does the same for bfloat16 pairs into float32
// (as vdpbf16ps does, subnormals flushed to zero, but rounding its sums differently).
// 16 quads (pairs) of 16 columns of a packed panel are a B tile as packed: rows at a stride
// of NR * 4 bytes, the panel's next 16 columns 64 bytes on. Inline assembly, as for vpdpbusd:
// the back end must build and load on CPUs without AMX.
//
// The tile configuration belongs to the thread, and another library may load its own in the
// same thread between two of our calls (oneDNN does, for its AMX kernels): each product loads
// ours first (AmxTiles) and releases the tiles when done, which also spares the OS saving 8 KB
// of tile state when it switches threads.
struct alignas(64) AmxConfig {
    std::uint8_t palette = 1, start_row = 0, reserved[14] = {};
    std::uint16_t colsb[16] = {};  // bytes of a row of each tile
    std::uint8_t rows[16] = {};    // rows of each tile
    AmxConfig() {
        for (int t = 0; t < 8; ++t) {
            colsb[t] = 64;
            rows[t] = 16;
        }
    }
};
class AmxTiles {  // the tiles configured for this thread while the object lives
public:
    AmxTiles() {
        static const AmxConfig config;
        __asm__ volatile("ldtilecfg %0" : : "m"(config));
    }
    ~AmxTiles() { __asm__ volatile("tilerelease" ::); }
    AmxTiles(const AmxTiles&) = delete;
    AmxTiles& operator=(const AmxTiles&) = delete;
};

// out[32, 32] (int32 or float32, row-major) = the rows [a, a + 32 * lda) of A times the 32
// columns of the panel b, over `ktiles` tiles of depth: a 2x2 block of C tiles (tmm0-3), two A
// tiles (tmm4-5) and two B tiles (tmm6-7), each A and B tile used twice. two_rows false: A has
// 16 rows left, tmm2-3 stay unused and out's rows 16-31 unwritten.
template <bool Bf16>
void amx_block(const std::uint8_t* a, Index lda, const std::uint8_t* b, Index ktiles,
               bool two_rows, void* out) {
    constexpr Index ldb = Int8Panels::NR * 4, ldc = 32 * 4;
    __asm__ volatile("tilezero %%tmm0\n\ttilezero %%tmm1\n\ttilezero %%tmm2\n\ttilezero %%tmm3" ::);
    for (Index kt = 0; kt < ktiles; ++kt) {
        const std::uint8_t* ak = a + kt * 64;
        const std::uint8_t* bk = b + kt * 16 * ldb;
        __asm__ volatile(
            "tileloadd (%0,%2,1), %%tmm4\n\t"
            "tileloadd (%1,%3,1), %%tmm6\n\t"
            "tileloadd 64(%1,%3,1), %%tmm7"
            :
            : "r"(ak), "r"(bk), "r"(lda), "r"(ldb)
            : "memory");
        if (Bf16)
            __asm__ volatile("tdpbf16ps %%tmm6, %%tmm4, %%tmm0\n\ttdpbf16ps %%tmm7, %%tmm4, %%tmm1" ::);
        else
            __asm__ volatile("tdpbusd %%tmm6, %%tmm4, %%tmm0\n\ttdpbusd %%tmm7, %%tmm4, %%tmm1" ::);
        if (!two_rows) continue;
        __asm__ volatile("tileloadd (%0,%1,1), %%tmm5" : : "r"(ak + 16 * lda), "r"(lda) : "memory");
        if (Bf16)
            __asm__ volatile("tdpbf16ps %%tmm6, %%tmm5, %%tmm2\n\ttdpbf16ps %%tmm7, %%tmm5, %%tmm3" ::);
        else
            __asm__ volatile("tdpbusd %%tmm6, %%tmm5, %%tmm2\n\ttdpbusd %%tmm7, %%tmm5, %%tmm3" ::);
    }
    std::uint8_t* c = static_cast<std::uint8_t*>(out);
    __asm__ volatile(
        "tilestored %%tmm0, (%0,%1,1)\n\t"
        "tilestored %%tmm1, 64(%0,%1,1)"
        :
        : "r"(c), "r"(ldc)
        : "memory");
    if (two_rows)
        __asm__ volatile(
            "tilestored %%tmm2, (%0,%1,1)\n\t"
            "tilestored %%tmm3, 64(%0,%1,1)"
            :
            : "r"(c + 16 * ldc), "r"(ldc)
            : "memory");
}

// The int8 and bfloat16 products with AMX: for each panel of [col_begin, col_end), blocks of
// 32 rows (A's rows padded with zeros to a multiple of 16, its depth to whole tiles), then
// int8_tiles's dequantization or bf16_tiles's store.
template <bool Accumulate>
void int8_amx(Index M, const Int8Rows& rows, const Int8Panels& W, Index col_begin, Index col_end,
              float* C, Index ldc, const float* bias) {
    constexpr int NR = Int8Panels::NR;
    static_assert(NR == 32, "an AMX block is one panel: 32 columns");
    const Index stride = W.Kq * NR * 4;
    const AmxTiles tiles;
    alignas(64) std::int32_t acc[32 * 32];
    for (Index n0 = col_begin; n0 < col_end; n0 += NR) {
        const auto* b = reinterpret_cast<const std::uint8_t*>(W.data.data() + (n0 / NR) * stride);
        const PanelColumns cols(W, n0, std::min<Index>(NR, col_end - n0));
        for (Index m = 0; m < M; m += 32) {
            amx_block<false>(rows.u.data() + m * rows.ldu, rows.ldu, b, W.Kq / kAmxDepth,
                             M - m > 16, acc);
            for (Index r = 0; r < std::min<Index>(32, M - m); ++r)
                cols.dequantize_row<Accumulate>(_mm512_load_si512(acc + r * 32),
                                                _mm512_load_si512(acc + r * 32 + 16), m + r, rows,
                                                C, ldc, bias);
        }
    }
}

template <bool Accumulate>
void bf16_amx(Index M, const std::uint16_t* A, Index lda, const Bf16Panels& W, Index col_begin,
              Index col_end, float* C, Index ldc, const float* bias) {
    constexpr int NR = Bf16Panels::NR;
    static_assert(NR == 32, "an AMX block is one panel: 32 columns");
    const Index stride = W.K2 * NR * 2;
    const AmxTiles tiles;
    alignas(64) float acc[32 * 32];
    for (Index n0 = col_begin; n0 < col_end; n0 += NR) {
        const auto* b = reinterpret_cast<const std::uint8_t*>(W.data.data() + (n0 / NR) * stride);
        const Index w = std::min<Index>(NR, col_end - n0);
        for (Index m = 0; m < M; m += 32) {
            amx_block<true>(reinterpret_cast<const std::uint8_t*>(A + m * lda), 2 * lda, b,
                            W.K2 / kAmxDepth, M - m > 16, acc);
            bf16_store<Accumulate>(acc, 32, std::min<Index>(32, M - m), w, m, n0, C, ldc, bias);
        }
    }
}
#endif

inline const char* bf16_kernel() {
#if defined(__AVX512F__)
    if (features().amx) return "avx512_amx (tdpbf16ps)";
    if (features().bf16) return "avx512_bf16 (vdpbf16ps)";
#endif
    return "emulated (float32 kernel on bfloat16 values)";
}

// ---- the products the time loops call ------------------------------------------------------

// Whether a product of M rows by W runs on the AMX tiles: int8 from kAmxMinRowsInt8 rows,
// bfloat16 at every size. `prepare` pads the rows to whole tiles for it, `product` takes the
// tiles, and `step_chunk` keeps the step whole.
inline bool on_tiles(const Int8Panels&, Index M) {
    return features().amx && M >= kAmxMinRowsInt8;
}
inline bool on_tiles(const Bf16Panels& W, Index) {
    return features().amx && W.native;
}

// `step_chunk` (gemm.hpp). With AMX every product loads the tile configuration and releases
// the tiles (AmxTiles), so a step in chunks of 32 units did that 2 H / 32 times, not twice:
// bfloat16 at B = 32, I = H = 256 took 3.44-3.55 ms against 3.19-3.46 (four alternating
// processes each). A step on the tiles runs all its units at once; int8 steps of fewer rows
// than kAmxMinRowsInt8 multiply with vpdpbusd, in chunks.
template <typename W>
Index step_chunk(const W& w, Index H, Index rows) {
    return on_tiles(w, rows) ? H : unit_grain<float>();
}

// `prepare` and `product` (gemm.hpp) for the reduced-precision weights: prepare converts A's
// rows for the kernel that product then runs (quantized for int8, rounded for bfloat16), in
// the operand's buffers (after the first call of a size, it allocates nothing).
struct Int8Operand {
    Int8Rows rows;
    Index M = 0;
};

inline void prepare(Int8Operand& op, Index M, const float* A, Index lda, const Int8Panels& W) {
    const Index depth = 4 * std::max<Index>(W.Kq, 1);
    op.M = M;
    if (M == 0) return;
#if defined(__AVX512F__)
    if (on_tiles(W, M))
        return op.rows.quantize(A, M, W.K, lda, W.levels, false, depth, round_up(M, 16));
    if (features().vnni) return op.rows.quantize(A, M, W.K, lda, W.levels, false, depth, M);
#endif
#if defined(__AVX2__)
    op.rows.quantize(A, M, W.K, lda, W.levels, W.levels > 127, depth, M);
#else
    op.rows.quantize(A, M, W.K, lda, W.levels, false, depth, M);
#endif
}

template <bool Accumulate>
void product(const Int8Operand& op, const Int8Panels& W, Index col_begin, Index col_end, float* C,
             Index ldc, const float* bias = nullptr) {
    const Index M = op.M;
    if (M == 0 || col_begin >= col_end) return;
#if defined(__AVX512F__)
    if (on_tiles(W, M))
        return int8_amx<Accumulate>(M, op.rows, W, col_begin, col_end, C, ldc, bias);
    if (features().vnni)
        return int8_tiles<Int8TileVnni, 8, Accumulate>(M, op.rows, W, col_begin, col_end, C, ldc,
                                                       bias);
#endif
#if defined(__AVX2__)
    if (W.levels > 127)
        return int8_tiles<Int8TileAvx2Split, 4, Accumulate>(M, op.rows, W, col_begin, col_end, C,
                                                            ldc, bias);
    int8_tiles<Int8TileAvx2, 4, Accumulate>(M, op.rows, W, col_begin, col_end, C, ldc, bias);
#else
    int8_tiles<Int8TileScalar, 4, Accumulate>(M, op.rows, W, col_begin, col_end, C, ldc, bias);
#endif
}

struct Bf16Operand {
    Buffer<std::uint16_t> bits;  // with AVX512_BF16: [M_pad, ld] bfloat16, zero padded
    Buffer<float> wide;          // emulated: [M, K] the bfloat16 values as float32
    Index M = 0, ld = 0;
};

inline void prepare(Bf16Operand& op, Index M, const float* A, Index lda, const Bf16Panels& W) {
    op.M = M;
    if (M == 0) return;
#if defined(__AVX512F__)
    if (W.native) {
        const Index ld = 2 * W.K2, M_pad = on_tiles(W, M) ? round_up(M, 16) : M;
        op.ld = ld;
        op.bits.resize(checked_mul(M_pad, std::max<Index>(ld, 1)));
        for (Index m = 0; m < M; ++m) {
            std::uint16_t* r = op.bits.data() + m * ld;
            for (Index k = 0; k < W.K; ++k) r[k] = to_bf16(A[m * lda + k]);
            for (Index k = W.K; k < ld; ++k) r[k] = 0;
        }
        std::fill(op.bits.data() + M * ld, op.bits.data() + M_pad * ld, std::uint16_t(0));
        return;
    }
#endif
    // The emulation: the operands rounded to bfloat16, the products exact in float32 (8-bit
    // significands), summed in float32 by the float32 kernel.
    op.ld = W.K;
    op.wide.resize(checked_mul(M, std::max<Index>(W.K, 1)));
    for (Index m = 0; m < M; ++m)
        for (Index k = 0; k < W.K; ++k) op.wide[m * W.K + k] = from_bf16(to_bf16(A[m * lda + k]));
}

template <bool Accumulate>
void product(const Bf16Operand& op, const Bf16Panels& W, Index col_begin, Index col_end, float* C,
             Index ldc, const float* bias = nullptr) {
    const Index M = op.M;
    if (M == 0 || col_begin >= col_end) return;
#if defined(__AVX512F__)
    if (W.native) {
        if (on_tiles(W, M))
            return bf16_amx<Accumulate>(M, op.bits.data(), op.ld, W, col_begin, col_end, C, ldc,
                                        bias);
        return bf16_tiles<Accumulate>(M, op.bits.data(), op.ld, W, col_begin, col_end, C, ldc,
                                      bias);
    }
#endif
    gemm_panels<float, Accumulate>(M, op.wide.data(), op.ld, W.wide, col_begin, col_end, C, ldc,
                                   bias);
}

}  // namespace detail
}  // namespace eigenlstm
