// The parameter layout: where each torch tensor lives in the flat buffer, and the
// permutation between torch's gate order and the engine's interleaved gate blocks. Pure index
// arithmetic, the same for every ISA level (a gate block is 64 bytes everywhere), shared by
// the front end (param_offset) and the back ends (which keep engine-order copies).
#pragma once

#include <algorithm>
#include <array>
#include <vector>

#include "buffer.hpp"
#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// Size letters: I input size, H hidden, P projection, Hout = P or H, D directions, L layers,
// NG gates per unit (4: i, f, g, o; 3 with cifg: i, g, o), G = NG*H gate rows, HB =
// gate_block<S>() hidden units per gate block.
template <typename S>
struct Layout {
    Config cfg;
    Index H = 0, P = 0, Hout = 0, NG = 4, G = 0, D = 1, L = 1;
    // perm[e] = torch gate row of engine gate row e. Block j of w <= HB units (u0 = HB*j)
    // starts at engine row NG*u0 and holds rows [i(u0:u0+w), f(...), g(...), o(...)] (no f
    // with cifg).
    std::vector<Index> perm;
    // Flat layout: per layer, blocks in the order weight_ih [D, G, I_l], weight_hh [D, G, Hout],
    // bias_ih [D, G], bias_hh [D, G], weight_hr [D, P, H], weight_peephole [D, 3, H], then the
    // layer norms' layer_norm_ih_weight, _bias, layer_norm_hh_weight, _bias [D, G],
    // layer_norm_c_weight, _bias [D, H]; each block starts 64-byte aligned.
    // offset[l][kind] is the block start (-1 if absent); size is the whole buffer's length.
    // The public buffers (parameters, gradients) hold every tensor as torch does, row-major
    // with gate rows i, f, g, o; a back end's engine-order copies use the same offsets with
    // the gate rows of weight_ih, weight_hh, the biases and the gate layer norms permuted
    // (engine row e = torch row perm[e]; weight_hr, weight_peephole and layer_norm_c_* have
    // no gate rows and are the same in both).
    std::vector<std::array<Index, kNumParamKinds>> offset;
    Index size = 0;

    // Throws std::invalid_argument for a bad config, std::bad_alloc for sizes whose buffers
    // could not exist.
    explicit Layout(const Config& c) : cfg(c) {
        cfg.validate();
        H = cfg.hidden_size; P = cfg.proj_size; Hout = cfg.output_size();
        NG = cfg.gates();
        G = checked_mul(NG, H);
        D = cfg.directions(); L = cfg.num_layers;
        // Each (layer, direction) has a few hundred bytes of packed-weight bookkeeping in a back
        // end: a count whose bytes overflow cannot exist.
        checked_mul(checked_mul(L, D), 256);
        const Index HB = gate_block<S>();
        perm.resize(std::size_t(G));
        for (Index u0 = 0; u0 < H; u0 += HB) {
            const Index w = std::min(HB, H - u0);
            for (Index q = 0; q < NG; ++q)
                for (Index j = 0; j < w; ++j) perm[std::size_t(NG * u0 + q * w + j)] = q * H + u0 + j;
        }
        const Index align = Index(kAlign / sizeof(S));
        offset.resize(std::size_t(L));
        for (Index l = 0; l < L; ++l)
            for (int k = 0; k < kNumParamKinds; ++k) {
                if (!has(Param(k))) { offset[std::size_t(l)][std::size_t(k)] = -1; continue; }
                offset[std::size_t(l)][std::size_t(k)] = size;
                size = round_up(size + checked_mul(D, checked_mul(rows(Param(k)), cols(Param(k), l))), align);
            }
    }

    Index in_size(Index l) const { return l == 0 ? cfg.input_size : D * Hout; }
    Index rows(Param k) const {
        switch (k) {
            case Param::weight_hr: return P;
            case Param::weight_peephole: return 3;
            case Param::layer_norm_c_weight: case Param::layer_norm_c_bias: return H;
            default: return G;
        }
    }
    // Are the rows of kind k gate rows (permuted in engine order)?
    static bool gate_rows(Param k) {
        return k != Param::weight_hr && k != Param::weight_peephole &&
               k != Param::layer_norm_c_weight && k != Param::layer_norm_c_bias;
    }
    Index cols(Param k, Index l) const {
        switch (k) {
            case Param::weight_ih: return in_size(l);
            case Param::weight_hh: return Hout;
            case Param::bias_ih: case Param::bias_hh: return 1;
            case Param::weight_hr: case Param::weight_peephole: return H;
            default: return 1;  // the layer norms' vectors
        }
        return 0;
    }
    bool has(Param k) const {
        if (k == Param::bias_ih || k == Param::bias_hh) return cfg.bias;
        if (k == Param::weight_hr) return P > 0;
        if (k == Param::weight_peephole) return cfg.peepholes;
        if (k >= Param::layer_norm_ih_weight) return cfg.layer_norm;
        return true;
    }
    // Element offset of tensor (k, l, d) in a flat buffer laid out like the parameters.
    Index tensor_offset(Param k, Index l, Index d = 0) const {
        return offset[std::size_t(l)][std::size_t(k)] + d * rows(k) * cols(k, l);
    }
    // Start of tensor (k, l, d) in a flat buffer laid out like the parameters (either order).
    template <typename T>
    T* tensor(T* flat, Param k, Index l, Index d = 0) const {
        return flat + tensor_offset(k, l, d);
    }
};

}  // namespace detail
}  // namespace eigenlstm
