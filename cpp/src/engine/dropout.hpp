// The dropout stream between layers: a counter-based generator, so masks are a pure function
// of (seed, counter, layer, element) and backward regenerates them instead of storing them.
#pragma once

#include <cstdint>

#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// splitmix64 (Steele, Lea, Flood 2014): a bijective 64-bit mixer with good avalanche. Mask
// element j of a call is a pure function of (seed, counter, layer, j), so masks are identical
// for any thread count and backward regenerates them instead of storing them.
inline std::uint64_t splitmix64(std::uint64_t x) {
    x += 0x9E3779B97F4A7C15ull;
    x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
    x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
    return x ^ (x >> 31);
}

// The masks a training call draws, each from its own stream of the call's (seed, counter):
//   between_layers   dropout on layer l's output (config.dropout), one value per output element
//   recurrent        recurrent_dropout on h_{t-1} entering W_hh of (l, d): [B, Hout]
//   weight           weight_drop on W_hh of (l, d): [4H, Hout], torch's row order
//   zoneout_c/h      zoneout of (l, d): [T, B, H] for c and [T, B, Hout] for h
enum class Mask : unsigned { between_layers = 0, recurrent, weight, zoneout_c, zoneout_h };

// The key of one mask: element j of it is a function of splitmix64(key + j) alone. The
// between-layers key is the one releases before the other masks used, so their dropout masks
// are unchanged; the others mix in their kind and direction.
inline std::uint64_t mask_key(std::uint64_t seed, std::uint64_t counter, Index layer,
                              Mask kind = Mask::between_layers, Index direction = 0) {
    std::uint64_t k = seed ^ splitmix64(counter * 0x100000001B3ull + std::uint64_t(layer));
    if (kind != Mask::between_layers)
        k ^= splitmix64(0xD1B54A32D192ED03ull * (2 * std::uint64_t(kind) + std::uint64_t(direction)));
    return splitmix64(k);
}

// Bernoulli(q) draw of element j: u < q with u = (splitmix64(key + j) >> 11) / 2^53, uniform
// in [0, 1) on 53 bits (q = 0 never, q = 1 always).
inline bool mask_draw(std::uint64_t key, std::uint64_t j, double q) {
    return double(splitmix64(key + j) >> 11) < q * 9007199254740992.0;  // q * 2^53
}

// m[j] = dropped ? 0 : 1/(1-p), dropped = mask_draw(key, j, p): inverted dropout's factors.
template <typename S>
void fill_dropout(S* m, Index n, double p, std::uint64_t key) {
    const S scale = p < 1.0 ? S(1.0 / (1.0 - p)) : S(0);
    for (Index j = 0; j < n; ++j) m[j] = mask_draw(key, std::uint64_t(j), p) ? S(0) : scale;
}

// m[j] = mask_draw(key, j, q) ? 1 : 0: zoneout's masks (1: keep the previous state).
template <typename S>
void fill_bernoulli(S* m, Index n, double q, std::uint64_t key) {
    for (Index j = 0; j < n; ++j) m[j] = mask_draw(key, std::uint64_t(j), q) ? S(1) : S(0);
}

// y[j] *= the dropout factor of element j of the between-layers mask of `layer`.
template <typename S>
void apply_dropout(S* y, Index n, double p, std::uint64_t seed, std::uint64_t counter,
                   Index layer) {
    const std::uint64_t key = mask_key(seed, counter, layer);
    const S scale = p < 1.0 ? S(1.0 / (1.0 - p)) : S(0);
    for (Index j = 0; j < n; ++j) y[j] = mask_draw(key, std::uint64_t(j), p) ? S(0) : y[j] * scale;
}
}  // namespace detail
}  // namespace eigenlstm
