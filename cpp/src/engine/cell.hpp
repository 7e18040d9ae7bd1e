// The fused cell update of one gate block (forward and backward), the unit that the time
// loops call for each block of hidden units. Fixed-size Eigen arrays, so a block unrolls into
// whole SIMD packets of the level it is compiled for.
#pragma once

#include <Eigen/Core>

#include <algorithm>
#include <cstring>

#include "activations.hpp"
#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {


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

// The peephole weights of the units a cell call updates (the first N of each row of the
// direction's weight_peephole [3, H], at the block's first unit), or none (i == nullptr).
template <typename S>
struct Peepholes {
    const S* i = nullptr;  // w_ci: i = s(pre_i + w_ci*c_{t-1})
    const S* f = nullptr;  // w_cf: f = s(pre_f + w_cf*c_{t-1})
    const S* o = nullptr;  // w_co: o = s(pre_o + w_co*c_t)
    explicit operator bool() const { return i != nullptr; }
};

// The cell update of N units of R batch rows, each row's gates packed as [i(N) f(N) g(N) o(N)]
// ([i(N) g(N) o(N)] with Cifg: the coupled input-forget gate f = 1 - i has no rows). N is a
// compile-time size (a gate block, or half or a quarter of one), so Eigen unrolls a row into
// whole SIMD packets (N = 16 floats: 2 x 8 on AVX2, 1 x 16 on AVX-512) with no size checks.
// Each line below runs over all R rows before the next: R independent dependency chains per
// line for the core to overlap (the seed's forward: 4% faster than a call per row,
// bench/README.md).
//   g       [R, ldg]  first NG*N: pre-activations in; activated gates out (the backward cache)
//   c_prev  [R, ldc]  first N: c_{t-1}; read only
//   c       [R, ldc]  first N: c_t = f*c_{t-1} + i*g (clipped to [-clip, clip] if clip > 0);
//                     overwritten
//   h       [R, ldh]  first N: o*tanh(c_t); overwritten (nullptr: not computed, as with a
//                     layer norm of c, whose h the caller computes)
//   y       [R, ldy]  first N: a second copy of h (the layer output), or nullptr
//   peep             peephole weights of these N units, or none (with Cifg, w_cf is unused)
// The variants' tests are per call, not per value: the plain cell runs the same lines as
// before they existed.
template <typename S, int N, bool Cifg>
inline void cell_forward_n(S* g, Index ldg, Index R, const S* c_prev, S* c, Index ldc, S* h,
                           Index ldh, S* y, Index ldy, const Peepholes<S>& peep, S clip) {
    using A = Eigen::Array<S, N, Eigen::Dynamic>;
    using V = Eigen::Map<const Eigen::Array<S, N, 1>>;
    using Str = Eigen::OuterStride<>;
    constexpr int G_ = Cifg ? 1 : 2, O_ = Cifg ? 2 : 3;  // blocks of g and o in a row
    Eigen::Map<A, 0, Str> i(g, N, R, Str(ldg)), gg(g + G_ * N, N, R, Str(ldg)),
        o(g + O_ * N, N, R, Str(ldg)), cm(c, N, R, Str(ldc)), hm(h, N, R, Str(ldh));
    const Eigen::Map<const A, 0, Str> cp(c_prev, N, R, Str(ldc));
    // The peephole terms go in column by column: a product with a replicated column
    // (cp.colwise() * w) has no packet access in Eigen 3.4, and the sigmoid of it would be
    // evaluated one scalar at a time through libm's expf (1.25x the plain cell's forward).
    if (peep)
        for (Index r = 0; r < R; ++r) i.col(r) += cp.col(r) * V(peep.i);
    i = i.unaryExpr(SigmoidOp<S>());
    if constexpr (Cifg) {
        gg = gg.tanh();
        if (!peep) o = o.unaryExpr(SigmoidOp<S>());
        cm = (S(1) - i) * cp + i * gg;
    } else {
        Eigen::Map<A, 0, Str> f(g + N, N, R, Str(ldg));
        if (peep)
            for (Index r = 0; r < R; ++r) f.col(r) += cp.col(r) * V(peep.f);
        f = f.unaryExpr(SigmoidOp<S>());
        gg = gg.tanh();
        if (!peep) o = o.unaryExpr(SigmoidOp<S>());
        cm = f * cp + i * gg;
    }
    if (clip > 0) cm = cm.max(-clip).min(clip);
    if (peep) {
        for (Index r = 0; r < R; ++r) o.col(r) += cm.col(r) * V(peep.o);
        o = o.unaryExpr(SigmoidOp<S>());
    }
    if (!h) return;
    hm = o * cm.tanh();
    if (y) Eigen::Map<A, 0, Str>(y, N, R, Str(ldy)) = hm;
}

// Backward of the cell update of N units of one batch row; quotes the forward lines it undoes.
//   g       [NG*N] activated gates in; d(pre-activation) out
//   c_t     [N]    c_t (after any clip); read only          c_prev [N]  c_{t-1}; read only
//   dh      [N]    dL/dh_t (before any projection); read only
//   dc      [N]    dL/dc_t in (from later steps); dL/dc_{t-1} out
//   peep, clip     as in the forward
//   dpeep   [3, ldp]  with peep: the peephole gradients, += da_i*c_{t-1}, da_f*c_{t-1},
//                  da_o*c_t (rows i, f, o, first N of each; row f stays with Cifg)
//   th, dch [N]    with a layer norm of c (h = o*tanh(c^), c^ = LN(c_t)): tanh(c^) and the
//                  gradient of c_t through c^ (layer_norm.hpp); nullptr: h = o*tanh(c_t)
template <typename S, int N, bool Cifg>
inline void cell_backward_n(S* g, const S* c_t, const S* c_prev, const S* dh, S* dc,
                            const Peepholes<S>& peep, S clip, S* dpeep, Index ldp,
                            const S* th_ln, const S* dch) {
    using A = Eigen::Array<S, N, 1>;
    using V = Eigen::Map<const A>;
    constexpr int G_ = Cifg ? 1 : 2, O_ = Cifg ? 2 : 3;
    Eigen::Map<A> ai(g), ag(g + G_ * N), ao(g + O_ * N), dcm(dc);
    const A i = ai, gg = ag, o = ao;  // values: the maps are overwritten
    const V ct(c_t);
    const A th = th_ln ? A(V(th_ln)) : A(ct.tanh());
    const V dhm(dh), cp(c_prev);
    // forward: h = o*tanh(c)        ->  do = dh*tanh(c),  dc += dh*o*(1 - tanh(c)^2)
    //          (h = o*tanh(c^): dc += dch, the layer norm's backward of dh*o*(1 - tanh(c^)^2))
    // forward: o = s(a_o)           ->  da_o = do*o*(1-o)
    const A dao = dhm * th * o * (S(1) - o);
    A dct = th_ln ? A(dcm + V(dch)) : A(dcm + dhm * o * (S(1) - th * th));
    // forward: a_o += w_co*c        ->  dc += da_o*w_co
    if (peep) dct += dao * V(peep.o);
    // forward: c = clip(c~)         ->  dc~ = dc where |c~| < clip (c = c~ there), else 0
    if (clip > 0) dct = (ct.abs() < clip).select(dct, S(0));
    ao = dao;
    // forward: i = s(a_i), g = tanh(a_g)  ->  da_i = di*i*(1-i), da_g = dg*(1-g^2)
    // forward: c = f*c_prev + i*g   ->  di = dc*g, df = dc*c_prev, dg = dc*i, dc_prev = dc*f
    ag = dct * i * (S(1) - gg * gg);
    if constexpr (Cifg) {
        // forward: f = 1 - i        ->  di = dc*(g - c_prev), dc_prev = dc*(1 - i)
        ai = dct * (gg - cp) * i * (S(1) - i);
        dcm = dct * (S(1) - i);
    } else {
        Eigen::Map<A> af(g + N);
        const A f = af;
        ai = dct * gg * i * (S(1) - i);
        af = dct * cp * f * (S(1) - f);
        dcm = dct * f;
        // forward: a_f += w_cf*c_prev  ->  dc_prev += da_f*w_cf, dw_cf += da_f*c_prev
        if (peep) {
            dcm += af * V(peep.f);
            Eigen::Map<A>(dpeep + ldp) += af * cp;
        }
    }
    // forward: a_i += w_ci*c_prev   ->  dc_prev += da_i*w_ci, dw_ci += da_i*c_prev;
    //          a_o += w_co*c        ->  dw_co += da_o*c
    if (peep) {
        dcm += ai * V(peep.i);
        Eigen::Map<A>(dpeep) += ai * cp;
        Eigen::Map<A>(dpeep + 2 * ldp) += dao * ct;
    }
}

// The peephole weights of a padded block: the w < N values of each row copied to the stack,
// zeros in the other lanes. `store` holds 3*N values.
template <typename S, int N>
inline Peepholes<S> pad_peepholes(const Peepholes<S>& peep, Index w, S* store) {
    if (!peep) return {};
    copy_short<N>(store, peep.i, w);
    copy_short<N>(store + N, peep.f, w);
    copy_short<N>(store + 2 * N, peep.o, w);
    Peepholes<S> p;
    p.i = store;
    p.f = store + N;
    p.o = store + 2 * N;
    return p;
}

// The last block of a layer whose H is not a multiple of HB = gate_block<S>() has w < HB units
// and its gates packed as [i(w) f(w) g(w) o(w)] (no f with Cifg). When w is exactly HB/2 or
// HB/4 that is the layout of a block of w units, and it runs as one, in half- or quarter-width
// packets (the H = 20 tail of 4 floats: one 128-bit packet per gate, no copies). Any other w
// is padded on the stack to N lanes, the smallest of a quarter, a half or a whole block that
// holds it, zeros in the unused lanes (no NaN or inf), run through the same SIMD code, and
// copied back.
template <typename S, int N, bool Cifg>
inline void cell_forward_padded(S* g, Index w, const S* c_prev, S* c, S* h, S* y,
                                const Peepholes<S>& peep, S clip) {
    constexpr Index NG = Cifg ? 3 : 4;
    alignas(64) S tg[4 * N] = {}, tcp[N] = {}, tc[N], th[N], tp[3 * N] = {};
    for (Index q = 0; q < NG; ++q) copy_short<N>(tg + q * N, g + q * w, w);
    copy_short<N>(tcp, c_prev, w);
    cell_forward_n<S, N, Cifg>(tg, NG * N, 1, tcp, tc, N, th, N, nullptr, 0,
                               pad_peepholes<S, N>(peep, w, tp), clip);
    for (Index q = 0; q < NG; ++q) copy_short<N>(g + q * w, tg + q * N, w);
    copy_short<N>(c, tc, w);
    if (h) copy_short<N>(h, th, w);
    if (y) copy_short<N>(y, th, w);
}

template <typename S, int N, bool Cifg>
inline void cell_backward_padded(S* g, Index w, const S* c_t, const S* c_prev, const S* dh,
                                 S* dc, const Peepholes<S>& peep, S clip, S* dpeep, Index ldp,
                                 const S* th_ln, const S* dch) {
    constexpr Index NG = Cifg ? 3 : 4;
    alignas(64) S tg[4 * N] = {}, tct[N] = {}, tcp[N] = {}, tdh[N] = {}, tdc[N] = {},
                    tp[3 * N] = {}, tdp[3 * N] = {}, tth[N] = {}, tdch[N] = {};
    for (Index q = 0; q < NG; ++q) copy_short<N>(tg + q * N, g + q * w, w);
    copy_short<N>(tct, c_t, w);
    copy_short<N>(tcp, c_prev, w);
    copy_short<N>(tdh, dh, w);
    copy_short<N>(tdc, dc, w);
    if (th_ln) {
        copy_short<N>(tth, th_ln, w);
        copy_short<N>(tdch, dch, w);
    }
    cell_backward_n<S, N, Cifg>(tg, tct, tcp, tdh, tdc, pad_peepholes<S, N>(peep, w, tp), clip,
                                tdp, N, th_ln ? tth : nullptr, tdch);
    for (Index q = 0; q < NG; ++q) copy_short<N>(g + q * w, tg + q * N, w);
    copy_short<N>(dc, tdc, w);
    if (peep)
        for (Index q = 0; q < 3; ++q)
            for (Index j = 0; j < w; ++j) dpeep[q * ldp + j] += tdp[q * N + j];
}

// The cell as the time loops see it, for one direction of one layer: one call per gate block
// of w units from unit ub (w < HB only for the last block of a layer), forward over R batch
// rows with strides as in cell_forward_n, backward for one row. The variants that change the
// cell update (coupled gates, peepholes, cell clipping) are its fields; the time loops stay
// as they are.
template <typename S>
struct CellUnit {
    const S* peephole = nullptr;  // [3, H] rows w_ci, w_cf, w_co of this direction, or nullptr
    Index H = 0;
    S clip = 0;                   // > 0: c_t clipped to [-clip, clip]
    bool cifg = false;            // f = 1 - i; gate rows (i, g, o)

    Peepholes<S> peepholes_at(Index ub) const {
        Peepholes<S> p;
        if (peephole) {
            p.i = peephole + ub;
            p.f = peephole + H + ub;
            p.o = peephole + 2 * H + ub;
        }
        return p;
    }

    void forward(Index ub, S* g, Index ldg, Index R, Index w, const S* c_prev, S* c, Index ldc,
                 S* h, Index ldh, S* y, Index ldy) const {
        if (cifg) forward_w<true>(ub, g, ldg, R, w, c_prev, c, ldc, h, ldh, y, ldy);
        else forward_w<false>(ub, g, ldg, R, w, c_prev, c, ldc, h, ldh, y, ldy);
    }

    // dpeep [3, H]: with peepholes, the direction's peephole gradients, accumulated here
    // (+= at units [ub, ub + w): the thread that owns a block owns its gradients).
    // th, dch [w]: with a layer norm of c, as in cell_backward_n (else nullptr).
    void backward(Index ub, S* g, Index w, const S* c_t, const S* c_prev, const S* dh, S* dc,
                  S* dpeep, const S* th = nullptr, const S* dch = nullptr) const {
        if (cifg) backward_w<true>(ub, g, w, c_t, c_prev, dh, dc, dpeep, th, dch);
        else backward_w<false>(ub, g, w, c_t, c_prev, dh, dc, dpeep, th, dch);
    }

    // c~_t = f*c_{t-1} + i*g (clipped) of one row's block from its activated gates: the cell
    // state forward computed before zoneout mixed c_{t-1} into it.
    void candidate(const S* g, Index w, const S* c_prev, S* out) const {
        for (Index j = 0; j < w; ++j) {
            const S i = g[j], f = cifg ? S(1) - i : g[w + j], gg = g[(cifg ? 1 : 2) * w + j];
            const S c = f * c_prev[j] + i * gg;
            out[j] = clip > 0 ? std::min(clip, std::max(-clip, c)) : c;
        }
    }

private:
    template <bool Cifg>
    void forward_w(Index ub, S* g, Index ldg, Index R, Index w, const S* c_prev, S* c, Index ldc,
                   S* h, Index ldh, S* y, Index ldy) const {
        constexpr int HB = int(gate_block<S>());
        const Peepholes<S> p = peepholes_at(ub);
        if (w == HB)
            return cell_forward_n<S, HB, Cifg>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy, p, clip);
        if (w == HB / 2)
            return cell_forward_n<S, HB / 2, Cifg>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy, p,
                                                   clip);
        if (w == HB / 4)
            return cell_forward_n<S, HB / 4, Cifg>(g, ldg, R, c_prev, c, ldc, h, ldh, y, ldy, p,
                                                   clip);
        for (Index b = 0; b < R; ++b) {  // padded blocks go one row at a time
            S* gb = g + b * ldg;
            const S* cp = c_prev + b * ldc;
            S* cb = c + b * ldc;
            S* hb = h ? h + b * ldh : nullptr;
            S* yb = y ? y + b * ldy : nullptr;
            if (4 * w <= HB)
                cell_forward_padded<S, HB / 4, Cifg>(gb, w, cp, cb, hb, yb, p, clip);
            else if (2 * w <= HB)
                cell_forward_padded<S, HB / 2, Cifg>(gb, w, cp, cb, hb, yb, p, clip);
            else
                cell_forward_padded<S, HB, Cifg>(gb, w, cp, cb, hb, yb, p, clip);
        }
    }

    template <bool Cifg>
    void backward_w(Index ub, S* g, Index w, const S* c_t, const S* c_prev, const S* dh, S* dc,
                    S* dpeep, const S* th, const S* dch) const {
        constexpr int HB = int(gate_block<S>());
        const Peepholes<S> p = peepholes_at(ub);
        S* dp = peephole ? dpeep + ub : nullptr;
        if (w == HB)
            cell_backward_n<S, HB, Cifg>(g, c_t, c_prev, dh, dc, p, clip, dp, H, th, dch);
        else if (w == HB / 2)
            cell_backward_n<S, HB / 2, Cifg>(g, c_t, c_prev, dh, dc, p, clip, dp, H, th, dch);
        else if (w == HB / 4)
            cell_backward_n<S, HB / 4, Cifg>(g, c_t, c_prev, dh, dc, p, clip, dp, H, th, dch);
        else if (4 * w <= HB)
            cell_backward_padded<S, HB / 4, Cifg>(g, w, c_t, c_prev, dh, dc, p, clip, dp, H, th,
                                                  dch);
        else if (2 * w <= HB)
            cell_backward_padded<S, HB / 2, Cifg>(g, w, c_t, c_prev, dh, dc, p, clip, dp, H, th,
                                                  dch);
        else
            cell_backward_padded<S, HB, Cifg>(g, w, c_t, c_prev, dh, dc, p, clip, dp, H, th, dch);
    }
};

}  // namespace detail
}  // namespace eigenlstm
