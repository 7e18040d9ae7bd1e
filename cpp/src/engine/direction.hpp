// One direction of one layer: the forward and backward time loops. Everything a loop reads and
// writes is named in a DirectionPass, built once per (layer, direction) by the layer stack
// (engine.cpp); the cell update of each gate block goes through a Cell unit (cell.hpp).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "cell.hpp"
#include "eigenlstm/lstm.hpp"
#include "gemm.hpp"
#include "layer_norm.hpp"
#include "threads.hpp"

namespace eigenlstm {
namespace detail {

// Size letters: T time, B batch, H hidden, P projection, Hout = P or H, NG gates per unit (4,
// or 3 with cifg), G = NG*H gate rows,
// HB = gate_block<S>() hidden units per gate block.

// State slots in time order, shared by forward and backward. A direction keeps T+1 states:
//   forward:  state before step t = slot t,     after = slot t+1   (h0 in slot 0)
//   reverse:  state before step t = slot t+1,   after = slot t     (h0 in slot T)
inline Index slot_before(Index t, bool reverse) { return reverse ? t + 1 : t; }
inline Index slot_after(Index t, bool reverse) { return reverse ? t : t + 1; }

inline bool active(const std::int64_t* lengths, Index t, Index b) {
    return lengths == nullptr || t < lengths[b];
}

// Everything one direction's time loop reads and writes. Pointers are already offset to this
// direction's columns; B stays the row stride of one time step. W is the representation of
// the forward's weights (float panels, or quantized.hpp's int8 and bfloat16 ones); backward
// exists for float panels only.
template <typename S, typename W = Panels<S>>
struct DirectionPass {
    Index T = 0, B = 0, H = 0, P = 0, Hout = 0, NG = 4;
    Index ldg = 0;                     // row stride of gates: D*G
    Index ldy = 0;                     // row stride of the layer output: D*Hout
    bool reverse = false;              // runs from t = T-1 down to 0
    const std::int64_t* lengths = nullptr;  // [B] valid steps, or nullptr (all T)
    const W* whh_t = nullptr;          // W_hh^T [Hout, G]  forward: pre += h_prev W_hh^T
    const W* whr_t = nullptr;          // W_hr^T [H, P]     forward: h = r W_hr^T (P > 0)
    const Panels<S>* whh = nullptr;    // W_hh   [G, Hout]  backward: dh_prev = da W_hh
    const Panels<S>* whr = nullptr;    // W_hr   [P, H]     backward: dr = dh W_hr (P > 0)
    S* gates = nullptr;                // [T, B, ldg] pre-activations in, activated gates out;
                                       //   backward: d(pre-activation) out; [B, ldg] with x
    // eval (step_inputs, engine.cpp): the loop projects each step's input itself, into
    // gates [B, ldg] (pre_t = x_t W_ih^T + b): the pre-activations of all steps (13 MB at
    // B = 32, T = 100, H = 256) are never written out of cache and read back
    const S* x = nullptr;              // [T, B, I] the layer's input, or nullptr
    const W* wih_t = nullptr;          // W_ih^T [I, D*G], both directions
    Index I = 0, wih_col = 0;          // x's row length; this direction's first column (d*G)
    const S* bias = nullptr;           // [D*G] b_ih + b_hh, or nullptr
    // training storage (forward writes, backward reads), slots as above; nullptr in eval
    S* hs = nullptr;                   // [T+1, B, Hout]
    S* cs = nullptr;                   // [T+1, B, H]
    S* rs = nullptr;                   // [T, B, H]  o*tanh(c) before projection (P > 0)
    // eval storage: double-buffered states
    S* hbuf = nullptr;                 // [2, B, Hout]
    S* cbuf = nullptr;                 // [2, B, H]
    S* rbuf = nullptr;                 // [B, H] (P > 0)
    // forward: batch rows [row0, row0 + rows) are this pass's (all B unless a thread owns a
    // slice of the batch: see plan_team)
    Index rows = 0;
    // forward: h0 is zero (no initial state given) and W_hh finite, so the first step's
    // h_{-1} W_hh^T is exactly zero and is skipped (1/T of the recurrent GEMMs: the seed
    // model's T = 7 spends a seventh of them on it)
    bool zero_h0 = false;
    S proj_clip = 0;                   // > 0: h = clip(r W_hr^T) to [-proj_clip, proj_clip]
    // recurrent dropout (training): h_{t-1} enters W_hh as h_{t-1} * rmask
    const S* rmask = nullptr;          // [B, Hout] factors 0 or 1/(1-p), or nullptr
    S* hm = nullptr;                   // [2, B, Hout] h_{t-1} * rmask, double-buffered
    // zoneout: c_t = m*c_{t-1} + (1-m)*c~_t, h likewise; m from the masks in training (0 or
    // 1 per element and step), else the constants (the masks' expectation)
    const S* zc = nullptr;             // [T, B, H] training masks of c, or nullptr
    const S* zh = nullptr;             // [T, B, Hout] training masks of h, or nullptr
    S zoneout_c = 0, zoneout_h = 0;
    // layer norm (config.layer_norm, layer_norm.hpp): pre gains LN(h_{t-1} W_hh^T) instead of
    // the product, and h = o*tanh(LN(c~_t)); LN(x_t W_ih^T) is already in gates
    LayerNorms<const S> ln;            // gains and shifts, engine order; none without
    S* ln_a = nullptr;                 // training [T, B, G]: xhat of each step's h W_hh^T
                                       //   (backward overwrites it with d(h W_hh^T));
                                       //   eval [B, G]: the step's
    S* ln_stats = nullptr;             // training [T, B, 4]: rstd of LN(x W_ih^T), of
                                       //   LN(h W_hh^T), mean and rstd of LN(c); eval nullptr
    S* ln_part = nullptr;              // [2, B, nblk, 2] block moments (hh, c): team scratch

    bool training() const { return hs != nullptr; }

    // The same pass restricted to batch rows [b0, b1): every per-row pointer moves to row b0.
    DirectionPass rows_slice(Index b0, Index b1) const {
        DirectionPass a = *this;
        a.gates += b0 * ldg;
        if (a.x) a.x += b0 * I;
        if (lengths) a.lengths += b0;
        if (a.hs) { a.hs += b0 * Hout; a.cs += b0 * H; }
        if (a.rs) a.rs += b0 * H;
        if (a.hbuf) { a.hbuf += b0 * Hout; a.cbuf += b0 * H; }
        if (a.rbuf) a.rbuf += b0 * H;
        if (a.rmask) { a.rmask += b0 * Hout; a.hm += b0 * Hout; }
        if (a.zc) a.zc += b0 * H;
        if (a.zh) a.zh += b0 * Hout;
        if (a.ln) {
            a.ln_a += b0 * NG * H;
            if (a.ln_stats) a.ln_stats += b0 * 4;
            a.ln_part += b0 * blocks_of(H, gate_block<S>()) * 2;
        }
        a.rows = b1 - b0;
        return a;
    }
};

// Zoneout of columns [j0, j1) of R rows (row stride ld): x = m*prev + (1-m)*x, with m the
// 0/1 training masks (row stride ld) or, without them, the constant z.
template <typename S>
inline void zone_out(S* x, const S* prev, const S* mask, S z, Index R, Index ld, Index j0,
                     Index j1) {
    for (Index b = 0; b < R; ++b) {
        S* xb = x + b * ld;
        const S* pb = prev + b * ld;
        if (mask) {
            const S* mb = mask + b * ld;
            for (Index j = j0; j < j1; ++j) xb[j] = mb[j] != S(0) ? pb[j] : xb[j];
        } else {
            for (Index j = j0; j < j1; ++j) xb[j] = z * pb[j] + (S(1) - z) * xb[j];
        }
    }
}

// Forward time loop of one direction for thread `tid` of a team of `n`.
// Step equations (gate order i, f, g, o; pre = x_t W_ih^T + b_ih + b_hh, computed for all
// steps by one GEMM into `gates`, or by the step itself when the pass has x: step_inputs):
//   pre_t += h_{t-1} W_hh^T                       (packed product, this thread's gate columns)
//   i = s(pre_i), f = s(pre_f), g = tanh(pre_g), o = s(pre_o)
//   c_t = f * c_{t-1} + i * g
//   h_t = o * tanh(c_t)              (P > 0: r_t = o * tanh(c_t), h_t = r_t W_hr^T, clipped
//                                     to [-proj_clip, proj_clip] if proj_clip > 0)
// (the cell unit adds the variants that change the cell update: peepholes, cell clipping).
// Recurrent dropout multiplies h_{t-1} by its mask before the product (a masked copy, hm);
// zoneout mixes c_t and h_t with c_{t-1} and h_{t-1} after the cell (and the projection).
// Layer norm: the product goes to its own buffer, is normalised over each row's G gate values
// and added to pre; after the cell, h = o*tanh(LN(c_t)) over each row's H units. Each is a
// reduction over columns that the threads split, so each adds a barrier to the step.
// Rows past their length keep their state and output 0: the cell update runs over all rows
// (its results for those rows are then replaced; backward zeroes their gate gradients).
//   y     [T, B, ldy]  this direction's output columns; written for the pass's rows
//   h0    [B, Hout]    c0 [B, H]     initial state of the pass's rows; read only
//   h_n   [B, Hout]    c_n [B, H]    final state; overwritten
template <typename S, typename W, typename Cell>
void forward_direction(const DirectionPass<S, W>& a, const Cell& cell, S* y, const S* h0,
                       const S* c0, S* h_n, S* c_n, int tid, int n, SpinBarrier& barrier) {
    const Index T = a.T, B = a.B, R = a.rows, H = a.H, P = a.P, Hout = a.Hout,
                HB = gate_block<S>(), G = a.NG * H, nblk = blocks_of(H, HB);
    Index u0, u1;  // this thread's hidden units, and so gate columns [NG*u0, NG*u1)
    split_range(H, unit_grain<S>(), tid, n, u0, u1);
    Index q0 = 0, q1 = 0;  // this thread's projection columns
    if (P > 0) split_range(P, Simd<S>::NR, tid, n, q0, q1);
    const bool training = a.training();
    const Index h_lo = P > 0 ? q0 : u0, h_hi = P > 0 ? q1 : u1;  // this thread's columns of h

    // x_t and h_{t-1} as the products take them (quantized, rounded, or as they are), and the
    // units a step runs through its products and cell at a time
    thread_local typename W::Operand xop, hop;
    const Index chunk = step_chunk(*a.whh_t, H, R);

    const S* h_prev = h0;
    const S* c_prev = c0;
    if (training) {  // slot of the initial state holds a copy of h0 / c0 (dW_hh reads it)
        const Index s0 = a.reverse ? T : 0;
        S* hs0 = a.hs + s0 * B * Hout;
        S* cs0 = a.cs + s0 * B * H;
        for (Index b = 0; b < R; ++b) {
            std::copy(h0 + b * Hout + h_lo, h0 + b * Hout + h_hi, hs0 + b * Hout + h_lo);
            std::copy(c0 + b * H + u0, c0 + b * H + u1, cs0 + b * H + u0);
        }
    }
    // h * rmask for the product, this thread's columns of h (the product reads all of them)
    auto mask_h = [&](const S* h, S* out) {
        for (Index b = 0; b < R; ++b)
            for (Index j = h_lo; j < h_hi; ++j)
                out[b * Hout + j] = h[b * Hout + j] * a.rmask[b * Hout + j];
    };
    if (a.rmask) {
        mask_h(h0, a.hm);
        barrier.wait();
    }
    for (Index s = 0; s < T; ++s) {
        const Index t = a.reverse ? T - 1 - s : s;
        // the step's pre-activations: its own [B, ldg] when the loop projects its inputs (a.x),
        // else the layer's input projection x_t W_ih^T + b
        S* pre = a.x ? a.gates : a.gates + t * B * a.ldg;
        S* h_next = training ? a.hs + slot_after(t, a.reverse) * B * Hout : a.hbuf + (s & 1) * B * Hout;
        S* c_next = training ? a.cs + slot_after(t, a.reverse) * B * H : a.cbuf + (s & 1) * B * H;
        S* r = P > 0 ? (training ? a.rs + t * B * H : a.rbuf) : nullptr;
        S* y_t = y + t * B * a.ldy;

        const S* h_in = a.rmask ? a.hm + (s & 1) * B * Hout : h_prev;
        S* ln_st = a.ln_stats ? a.ln_stats + t * B * 4 : nullptr;
        const bool recur = s > 0 || !a.zero_h0;  // h_in W_hh^T is not exactly zero
        if (!a.ln) {
            // pre = [x_t W_ih^T + b] + h_in W_hh^T, then the cell, a few gate blocks at a
            // time: a chunk's pre-activations stay in L1 from the products to the cell
            // (written, added to and read back over all of this thread's units, they went
            // through L2 three times a step)
            if (a.x) prepare(xop, R, a.x + t * B * a.I, a.I, *a.wih_t);  // (columns absolute in wih_t)
            if (recur) prepare(hop, R, h_in, Hout, *a.whh_t);
            for (Index k0 = u0; k0 < u1; k0 += chunk) {
                const Index k1 = std::min(u1, k0 + chunk);
                if (a.x)
                    product<false>(xop, *a.wih_t, a.wih_col + a.NG * k0, a.wih_col + a.NG * k1,
                                   pre - a.wih_col, a.ldg, a.bias);
                if (recur) product<true>(hop, *a.whh_t, a.NG * k0, a.NG * k1, pre, a.ldg);
                for (Index ub = k0; ub < k1; ub += HB)
                    cell.forward(ub, pre + a.NG * ub, a.ldg, R, std::min(HB, H - ub), c_prev + ub,
                                 c_next + ub, H, P == 0 ? h_next + ub : r + ub, P == 0 ? Hout : H,
                                 P == 0 ? y_t + ub : nullptr, a.ldy);
            }
        } else {  // pre += LN(h_in W_hh^T), the product in ln_a (a.x is nullptr: LN(x W_ih^T) is in pre)
            S* la = a.ln_a + (training ? t * B * G : 0);
            if (recur)
                multiply<false>(R, h_in, Hout, *a.whh_t, a.NG * u0, a.NG * u1, la, G);
            else
                for (Index b = 0; b < R; ++b) std::fill(la + b * G + a.NG * u0, la + b * G + a.NG * u1, S(0));
            ln_gates_forward(la, pre, a.ldg, R, a.NG, H, u0, u1, a.ln, a.ln_part,
                             ln_st ? ln_st + 1 : nullptr, 4, tid == 0, barrier);
            // (the cell leaves h to ln_cell_forward)
            for (Index ub = u0; ub < u1; ub += HB)
                cell.forward(ub, pre + a.NG * ub, a.ldg, R, std::min(HB, H - ub), c_prev + ub,
                             c_next + ub, H, nullptr, P == 0 ? Hout : H, nullptr, a.ldy);
            // h = o*tanh(LN(c~))
            ln_cell_forward(c_next, H, pre, a.ldg, R, a.NG, H, u0, u1, a.ln,
                            P == 0 ? h_next : r, P == 0 ? Hout : H, P == 0 ? y_t : nullptr, a.ldy,
                            a.ln_part + B * nblk * 2, ln_st ? ln_st + 2 : nullptr, 4, tid == 0,
                            barrier);
        }
        if (a.zoneout_c > 0)
            zone_out(c_next, c_prev, a.zc ? a.zc + t * B * H : nullptr, a.zoneout_c, R, H, u0, u1);
        if (P == 0 && a.zoneout_h > 0) {
            zone_out(h_next, h_prev, a.zh ? a.zh + t * B * Hout : nullptr, a.zoneout_h, R, Hout,
                     u0, u1);
            for (Index b = 0; b < R; ++b)
                std::copy(h_next + b * Hout + u0, h_next + b * Hout + u1, y_t + b * a.ldy + u0);
        }
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
            multiply<false>(R, r, H, *a.whr_t, q0, q1, h_next, Hout);
            if (a.proj_clip > 0)
                for (Index b = 0; b < R; ++b)
                    for (Index j = q0; j < q1; ++j)
                        h_next[b * Hout + j] =
                            std::min(a.proj_clip, std::max(-a.proj_clip, h_next[b * Hout + j]));
            if (a.zoneout_h > 0)
                zone_out(h_next, h_prev, a.zh ? a.zh + t * B * Hout : nullptr, a.zoneout_h, R,
                         Hout, q0, q1);
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
        if (a.rmask) mask_h(h_next, a.hm + ((s + 1) & 1) * B * Hout);
        barrier.wait();  // the next step's GEMM reads all of h_t
        h_prev = h_next;
        c_prev = c_next;
    }
    for (Index b = 0; b < R; ++b) {
        std::copy(h_prev + b * Hout + h_lo, h_prev + b * Hout + h_hi, h_n + b * Hout + h_lo);
        std::copy(c_prev + b * H + u0, c_prev + b * H + u1, c_n + b * H + u0);
    }
}

// Workspace of one direction's backward loop (module-owned, reused across calls).
template <typename S>
struct BackwardWork {
    S* dh;    // [2, B, Hout]  running dh and the next dh_prev
    S* dc;    // [B, H]        running dc
    S* dr;    // [B, H]        dr = dh W_hr (P > 0)
    S* dhs;   // [T, B, P]     dh_t of every step, for dW_hr (P > 0)
    S* dpeep; // [3, H]        the peephole gradients (overwritten, or added to: accumulate),
              //               with peepholes
    // layer norm: [3, B, H] xhat of c, tanh(c^) and d(xhat) -> dc, then [2, B, nblk, 2] block
    // sums (hh, c); and the gain and shift gradients (overwritten, or added to: accumulate)
    S* ln = nullptr;
    LayerNorms<S> dln{};
    // The peephole and layer norm sums continue those of the previous pass (the segment after
    // this one in time: memory-bounded BPTT) instead of starting from zero.
    bool accumulate = false;
};

// Backward time loop of one direction (reverse processing order) for thread `tid` of `n`.
// Running gradients: dh wrt the state h after the step, dc wrt c after the step.
//   dh += dy_t                                     (active rows)
//   P > 0: dh *= (|h_t| < proj_clip) with proj_clip > 0 (forward: h = clip(r W_hr^T))
//          dr = dh W_hr    [dW_hr later from dh_t and r_t]     else dr = dh
//   forward: h = o*tanh(c)       ->  do = dr*tanh(c), dc += dr*o*(1 - tanh(c)^2)
//   forward: c = f*c_prev + i*g  ->  di = dc*g, df = dc*c_prev, dg = dc*i, dc_prev = dc*f
//   forward: i = s(a_i) etc.     ->  da_i = di*i*(1-i), da_f = df*f*(1-f),
//                                    da_g = dg*(1-g^2), da_o = do*o*(1-o)
//   forward: pre += h_prev W_hh^T  ->  dh_prev = da W_hh   (packed GEMM, this thread's columns)
// da overwrites the gate cache in place; rows past their length pass dh and dc through.
// Recurrent dropout: dh_prev *= rmask. Zoneout (masks m, 0 or 1): forward c_t = m*c_{t-1} +
// (1-m)*c~_t, so the cell sees dc~ = (1-m)*dc and c~ (recomputed from the gates), and
// dc_{t-1} gains m*dc; h likewise, with dh_{t-1} += m*dh.
//   dy    [T, B, ldy]  gradient of this direction's output columns; read only
//   dh_n  [B, Hout]    dc_n [B, H]   gradient of the final state; read only (nullptr: zeros)
//   dh0   [B, Hout]    dc0 [B, H]    gradient of the initial state; overwritten
template <typename S, typename Cell>
void backward_direction(const DirectionPass<S>& a, const Cell& cell, const S* dy,
                        const S* dh_n, const S* dc_n, S* dh0, S* dc0, const BackwardWork<S>& w,
                        int tid, int n, SpinBarrier& barrier) {
    const Index T = a.T, B = a.B, H = a.H, P = a.P, Hout = a.Hout, HB = gate_block<S>(),
                NG = a.NG, G = NG * H, nblk = blocks_of(H, HB);
    Index u0, u1;
    split_range(H, unit_grain<S>(), tid, n, u0, u1);
    Index q0 = u0, q1 = u1;  // this thread's columns of dh
    if (P > 0) split_range(P, Simd<S>::NR, tid, n, q0, q1);

    // zoneout of c, or of h without a projection, goes through the cell's block loop
    const bool zoned = a.zc != nullptr || (P == 0 && a.zh != nullptr);
    constexpr Index kMaxBlock = gate_block<S>();
    S* dh = w.dh;
    S* dh_next = w.dh + B * Hout;
    S* dc = w.dc;
    for (Index b = 0; b < B; ++b) {
        for (Index j = q0; j < q1; ++j) dh[b * Hout + j] = dh_n ? dh_n[b * Hout + j] : S(0);
        for (Index j = u0; j < u1; ++j) dc[b * H + j] = dc_n ? dc_n[b * H + j] : S(0);
    }
    if (w.dpeep && !w.accumulate)
        for (Index q = 0; q < 3; ++q) std::fill(w.dpeep + q * H + u0, w.dpeep + q * H + u1, S(0));
    // layer norm: xhat of c~, tanh(c^), d(xhat) -> d(c~) through the norm, block sums
    S* const xc = w.ln;
    S* const thc = xc ? xc + B * H : nullptr;
    S* const dxc = xc ? xc + 2 * B * H : nullptr;
    S* const part_hh = xc ? xc + 3 * B * H : nullptr;
    S* const part_c = xc ? part_hh + B * nblk * 2 : nullptr;
    if (a.ln && !w.accumulate) {
        std::fill(w.dln.gain_hh + NG * u0, w.dln.gain_hh + NG * u1, S(0));
        std::fill(w.dln.shift_hh + NG * u0, w.dln.shift_hh + NG * u1, S(0));
        std::fill(w.dln.gain_c + u0, w.dln.gain_c + u1, S(0));
        std::fill(w.dln.shift_c + u0, w.dln.shift_c + u1, S(0));
    }
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
            // dh_t through the clip, for dr and dW_hr; zero on inactive rows (whose running dh
            // passes on unchanged below)
            S* dhs_t = w.dhs + t * B * P;
            const S* h_t = a.hs + slot_after(t, a.reverse) * B * P;
            for (Index b = 0; b < B; ++b) {
                const bool on = active(a.lengths, t, b);
                const S* zh = a.zh ? a.zh + (t * B + b) * P : nullptr;
                for (Index j = q0; j < q1; ++j)
                    dhs_t[b * P + j] =
                        on && !(a.proj_clip > 0 && std::abs(h_t[b * P + j]) >= a.proj_clip) &&
                                !(zh && zh[j] != S(0))
                            ? dh[b * P + j]
                            : S(0);
            }
            barrier.wait();  // dr reads all of dh_t
            gemm_panels<S, false>(B, dhs_t, P, *a.whr, u0, u1, w.dr, H);
            dr = w.dr;
        }
        const Index ldr = P > 0 ? H : Hout;
        const S* st = a.ln ? a.ln_stats + t * B * 4 : nullptr;
        // What the cell of block ub of an active row b sees: c~_t (the state before zoneout
        // mixed c_{t-1} in: recomputed from the gates) and dL/dh through the zoneout of h.
        alignas(64) S c_cand[kMaxBlock], dr_cand[kMaxBlock];
        auto cell_inputs = [&](Index b, Index ub, Index wb, const S*& cc, const S*& drc) {
            const S* g = da + b * a.ldg + NG * ub;
            const S* zc = a.zc ? a.zc + (t * B + b) * H + ub : nullptr;
            const S* zh = P == 0 && a.zh ? a.zh + (t * B + b) * H + ub : nullptr;
            const S* drb = dr + b * ldr + ub;
            cc = c_t + b * H + ub;
            drc = drb;
            if (zc) {
                cell.candidate(g, wb, c_p + b * H + ub, c_cand);
                cc = c_cand;
            }
            if (zh) {
                for (Index j = 0; j < wb; ++j) dr_cand[j] = zh[j] != S(0) ? S(0) : drb[j];
                drc = dr_cand;
            }
        };
        if (a.ln) {
            // h = o*tanh(c^), c^ = gain*xhat + shift, xhat = (c~ - mean)*rstd over the row:
            // dc^ = dh*o*(1 - tanh(c^)^2), d(xhat) = gain*dc^ (its row sums after the barrier
            // give d(c~)), dgain += dc^*xhat, dshift += dc^
            for (Index b = 0; b < B; ++b) {
                if (!active(a.lengths, t, b)) continue;
                for (Index ub = u0; ub < u1; ub += HB) {
                    const Index wb = std::min(HB, H - ub), e = b * H + ub;
                    const S* cc;
                    const S* drc;
                    cell_inputs(b, ub, wb, cc, drc);
                    const LnCVec<S> o(da + b * a.ldg + NG * ub + (NG - 1) * wb, wb),
                        gain(a.ln.gain_c + ub, wb), shift(a.ln.shift_c + ub, wb),
                        dh_b(drc, wb);
                    LnVec<S> x(xc + e, wb), th(thc + e, wb), dx(dxc + e, wb);
                    x = (LnCVec<S>(cc, wb) - st[b * 4 + 2]) * st[b * 4 + 3];
                    th = (gain * x + shift).tanh();
                    // a fixed maximum size: no allocation
                    const Eigen::Array<S, Eigen::Dynamic, 1, 0, kMaxBlock, 1> dch =
                        dh_b * o * (S(1) - th * th);
                    LnVec<S>(w.dln.gain_c + ub, wb) += dch * x;
                    LnVec<S>(w.dln.shift_c + ub, wb) += dch;
                    dx = gain * dch;
                    piece_sums(dxc + e, xc + e, wb, part_c + (b * nblk + ub / HB) * 2);
                }
            }
            barrier.wait();  // every block's sums
        }
        for (Index b = 0; b < B; ++b) {
            const bool on = active(a.lengths, t, b);
            S m1 = 0, m2 = 0;
            if (a.ln && on) combine_sums(part_c + b * nblk * 2, nblk, H, m1, m2);
            for (Index ub = u0; ub < u1; ub += HB) {
                const Index wb = std::min(HB, H - ub);
                S* g = da + b * a.ldg + NG * ub;
                if (!on) {
                    std::fill(g, g + NG * wb, S(0));
                    continue;
                }
                const S* cp = c_p + b * H + ub;
                S* dcb = dc + b * H + ub;
                const S* th = nullptr;
                const S* dch = nullptr;
                if (a.ln) {  // d(c~) = rstd*(d(xhat) - mean(d(xhat)) - xhat*mean(d(xhat)*xhat))
                    const Index e = b * H + ub;
                    LnVec<S> dx(dxc + e, wb);
                    dx = st[b * 4 + 3] * (dx - m1 - LnCVec<S>(xc + e, wb) * m2);
                    th = thc + e;
                    dch = dxc + e;
                }
                if (!zoned) {
                    cell.backward(ub, g, wb, c_t + b * H + ub, cp, dr + b * ldr + ub, dcb,
                                  w.dpeep, th, dch);
                    continue;
                }
                const S* cc;
                const S* drc;
                cell_inputs(b, ub, wb, cc, drc);
                const S* zc = a.zc ? a.zc + (t * B + b) * H + ub : nullptr;
                alignas(64) S dc_cand[kMaxBlock];
                for (Index j = 0; j < wb; ++j) dc_cand[j] = zc && zc[j] != S(0) ? S(0) : dcb[j];
                cell.backward(ub, g, wb, cc, cp, drc, dc_cand, w.dpeep, th, dch);
                for (Index j = 0; j < wb; ++j)
                    dcb[j] = dc_cand[j] + (zc && zc[j] != S(0) ? dcb[j] : S(0));
            }
        }
        const S* dprod = da;  // d(h_{t-1} W_hh^T)
        Index ldp = a.ldg;
        if (a.ln) {
            // pre = ... + gain*xhat + shift, xhat = LN(h W_hh^T): dgain += da*xhat,
            // dshift += da, and d(h W_hh^T) from d(xhat) = gain*da as above (in ln_a)
            S* la = a.ln_a + t * B * G;
            const Index c0 = NG * u0, nc = NG * (u1 - u0);
            const LnCVec<S> gain(a.ln.gain_hh + c0, nc);
            for (Index b = 0; b < B; ++b) {
                const LnCVec<S> dz(da + b * a.ldg + c0, nc), x(la + b * G + c0, nc);
                LnVec<S>(w.dln.gain_hh + c0, nc) += dz * x;
                LnVec<S>(w.dln.shift_hh + c0, nc) += dz;
                for (Index ub = u0; ub < u1; ub += HB) {
                    const Index len = NG * std::min(HB, H - ub), e = NG * ub;
                    alignas(64) S dx[4 * kMaxBlock];
                    LnVec<S>(dx, len) =
                        LnCVec<S>(a.ln.gain_hh + e, len) * LnCVec<S>(da + b * a.ldg + e, len);
                    piece_sums(dx, la + b * G + e, len, part_hh + (b * nblk + ub / HB) * 2);
                }
            }
            barrier.wait();  // every block's sums
            for (Index b = 0; b < B; ++b) {
                S m1, m2;
                combine_sums(part_hh + b * nblk * 2, nblk, G, m1, m2);
                const LnCVec<S> dz(da + b * a.ldg + c0, nc);
                LnVec<S> x(la + b * G + c0, nc);
                x = st[b * 4 + 1] * (gain * dz - m1 - x * m2);
            }
            dprod = la;
            ldp = G;
        }
        barrier.wait();  // dh_prev reads all of da
        gemm_panels<S, false>(B, dprod, ldp, *a.whh, q0, q1, dh_next, Hout);
        for (Index b = 0; b < B; ++b) {
            S* dn = dh_next + b * Hout;
            const S* db = dh + b * Hout;
            if (!active(a.lengths, t, b)) {
                std::copy(db + q0, db + q1, dn + q0);
                continue;
            }
            if (a.rmask)
                for (Index j = q0; j < q1; ++j) dn[j] *= a.rmask[b * Hout + j];
            if (a.zh) {
                const S* zh = a.zh + (t * B + b) * Hout;
                for (Index j = q0; j < q1; ++j)
                    if (zh[j] != S(0)) dn[j] += db[j];
            }
        }
        std::swap(dh, dh_next);
    }
    for (Index b = 0; b < B; ++b) {
        std::copy(dh + b * Hout + q0, dh + b * Hout + q1, dh0 + b * Hout + q0);
        std::copy(dc + b * H + u0, dc + b * H + u1, dc0 + b * H + u0);
    }
}

}  // namespace detail
}  // namespace eigenlstm
