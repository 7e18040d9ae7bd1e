// Layer normalisation (Config::layer_norm) of the rows the time loops and the input projection
// produce: y = gain * xhat + shift, xhat = (x - mean) * rstd, rstd = 1/sqrt(var + eps), with
// the biased variance over the whole row, as torch.nn.LayerNorm.
//
// In a time loop a row's features are split between the threads of a team (each owns whole
// gate blocks), so its moments are summed in fixed pieces, one per gate block, and the pieces
// combined in block order after a barrier: the same pieces in the same order for any thread
// count, so the same bits (the determinism every other result of the engine has).
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cmath>

#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

template <typename S>
using LnVec = Eigen::Map<Eigen::Array<S, Eigen::Dynamic, 1>>;
template <typename S>
using LnCVec = Eigen::Map<const Eigen::Array<S, Eigen::Dynamic, 1>>;

// Mean and sum of squared deviations of one piece of n values: two passes, so that a row far
// from zero keeps its variance (one pass of sum and sum of squares would cancel it away).
template <typename S>
inline void piece_moments(const S* x, Index n, S* out) {
    const LnCVec<S> v(x, n);
    const S mean = v.mean();
    out[0] = mean;
    out[1] = (v - mean).square().sum();
}

template <typename S>
struct RowNorm {
    S mean, rstd;
};

// Mean and rstd of a row from its pieces' moments part[2k] (mean), part[2k+1] (squared
// deviations), piece k holding size_of(k) values, combined in order with Chan et al.'s
// update: mean += d*n_k/n, M2 += M2_k + d^2*n*n_k/n, d = mean_k - mean.
template <typename S, typename SizeOf>
inline RowNorm<S> combine_moments(const S* part, Index pieces, SizeOf&& size_of) {
    S n = 0, mean = 0, m2 = 0;
    for (Index k = 0; k < pieces; ++k) {
        const S nk = S(size_of(k)), d = part[2 * k] - mean, n1 = n + nk;
        mean += d * nk / n1;
        m2 += part[2 * k + 1] + d * d * n * nk / n1;
        n = n1;
    }
    return {mean, S(1) / std::sqrt(m2 / n + S(kLayerNormEps))};
}

// Mean and rstd of a whole row of n values (one thread owns it).
template <typename S>
inline RowNorm<S> row_norm(const S* x, Index n) {
    S part[2];
    piece_moments(x, n, part);
    return combine_moments(part, 1, [n](Index) { return n; });
}

// Backward of y = gain*xhat + shift over a row of n values: with dxhat = gain*dy and the row
// sums s1 = sum(dxhat), s2 = sum(dxhat*xhat),
//   dx = rstd * (dxhat - s1/n - xhat*s2/n);
// the gain and shift gradients are the sums over rows of dy*xhat and dy.
template <typename S>
inline void piece_sums(const S* dxhat, const S* xhat, Index n, S* out) {
    const LnCVec<S> dx(dxhat, n), x(xhat, n);
    out[0] = dx.sum();
    out[1] = (dx * x).sum();
}
// s1/n and s2/n of a row from its pieces' sums, added in order.
template <typename S>
inline void combine_sums(const S* part, Index pieces, Index n, S& m1, S& m2) {
    S s1 = 0, s2 = 0;
    for (Index k = 0; k < pieces; ++k) {
        s1 += part[2 * k];
        s2 += part[2 * k + 1];
    }
    m1 = s1 / S(n);
    m2 = s2 / S(n);
}

// The layer norms of one direction's time loop, in engine order (nullptr gains: none), and
// their gradients in the backward pass (the same shapes):
//   gain_hh, shift_hh  [G]  of LN(h_{t-1} W_hh^T), gate rows as the engine's
//   gain_c, shift_c    [H]  of LN(c_t) before the tanh of h
template <typename P>
struct LayerNorms {
    P* gain_hh = nullptr;
    P* shift_hh = nullptr;
    P* gain_c = nullptr;
    P* shift_c = nullptr;
    explicit operator bool() const { return gain_hh != nullptr; }
};

// A row's pieces are its gate blocks (layout.hpp): block k holds units [u0, u0 + w), u0 =
// k*HB, w = min(HB, H - u0), and gate columns [NG*u0, NG*(u0 + w)).
inline Index blocks_of(Index H, Index HB) { return (H + HB - 1) / HB; }

// Forward of LN(h_{t-1} W_hh^T) in one thread of a team: a [R, G] holds the product
// (this thread's columns [NG*u0, NG*u1) of every row), is overwritten there with xhat, and
// pre [R, ldg] gains gain*xhat + shift on the same columns. Each row is normalised over all G
// columns: part [R, nblk, 2] is the team's scratch of block moments, and a barrier separates
// writing them from reading them. rstd [R] (stride lds), written by the owner thread, or
// nullptr.
template <typename S, typename Barrier>
void ln_gates_forward(S* a, S* pre, Index ldg, Index R, Index NG, Index H, Index u0, Index u1,
                      const LayerNorms<const S>& ln, S* part, S* rstd, Index lds, bool owner,
                      Barrier& barrier) {
    const Index HB = gate_block<S>(), nblk = blocks_of(H, HB), G = NG * H;
    for (Index b = 0; b < R; ++b)
        for (Index ub = u0; ub < u1; ub += HB)
            piece_moments(a + b * G + NG * ub, NG * std::min(HB, H - ub),
                          part + (b * nblk + ub / HB) * 2);
    barrier.wait();  // every block's moments
    const Index c0 = NG * u0, n = NG * (u1 - u0);
    const LnCVec<S> gain(ln.gain_hh + c0, n), shift(ln.shift_hh + c0, n);
    for (Index b = 0; b < R; ++b) {
        const RowNorm<S> r = combine_moments(part + b * nblk * 2, nblk,
                                             [&](Index k) { return NG * std::min(HB, H - k * HB); });
        if (rstd && owner) rstd[b * lds] = r.rstd;
        LnVec<S> x(a + b * G + c0, n);
        x = (x - r.mean) * r.rstd;
        LnVec<S>(pre + b * ldg + c0, n) += gain * x + shift;
    }
}

// Forward of h = o*tanh(LN(c)) for units [u0, u1) of R rows: c [R, ldc] the cell state (every
// unit of a row), o the activated output gates in `gates` [R, ldg] (block layout), h [R, ldh]
// and y [R, ldy] (or nullptr) overwritten at those units. part [R, nblk, 2] team scratch as
// above; stats [R] (stride lds): mean and rstd, written by the owner thread, or nullptr.
template <typename S, typename Barrier>
void ln_cell_forward(const S* c, Index ldc, const S* gates, Index ldg, Index R, Index NG,
                     Index H, Index u0, Index u1, const LayerNorms<const S>& ln, S* h, Index ldh,
                     S* y, Index ldy, S* part, S* stats, Index lds, bool owner,
                     Barrier& barrier) {
    const Index HB = gate_block<S>(), nblk = blocks_of(H, HB);
    for (Index b = 0; b < R; ++b)
        for (Index ub = u0; ub < u1; ub += HB)
            piece_moments(c + b * ldc + ub, std::min(HB, H - ub), part + (b * nblk + ub / HB) * 2);
    barrier.wait();
    for (Index b = 0; b < R; ++b) {
        const RowNorm<S> r = combine_moments(part + b * nblk * 2, nblk,
                                             [&](Index k) { return std::min(HB, H - k * HB); });
        if (stats && owner) {
            stats[b * lds] = r.mean;
            stats[b * lds + 1] = r.rstd;
        }
        for (Index ub = u0; ub < u1; ub += HB) {
            const Index w = std::min(HB, H - ub);
            const LnCVec<S> cv(c + b * ldc + ub, w), o(gates + b * ldg + NG * ub + (NG - 1) * w, w),
                gain(ln.gain_c + ub, w), shift(ln.shift_c + ub, w);
            LnVec<S> hv(h + b * ldh + ub, w);
            hv = o * (gain * ((cv - r.mean) * r.rstd) + shift).tanh();  // as backward rounds it
            if (y) LnVec<S>(y + b * ldy + ub, w) = hv;
        }
    }
}

}  // namespace detail
}  // namespace eigenlstm
