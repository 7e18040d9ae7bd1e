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
