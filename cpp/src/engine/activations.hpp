// The gate activations: sigma as an Eigen functor with a float32 packet path tuned for the
// cell update, where it is most of the arithmetic. tanh is Eigen's own.
#pragma once

#include <Eigen/Core>

#include <cmath>
#include <type_traits>

namespace eigenlstm {
namespace detail {


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
}  // namespace detail
}  // namespace eigenlstm

// SigmoidOp has a packet path: Eigen vectorizes expressions that use it.
template <typename S>
struct Eigen::internal::functor_traits<eigenlstm::detail::SigmoidOp<S>> {
    enum { Cost = 30 * NumTraits<S>::MulCost, PacketAccess = packet_traits<S>::HasExp };
};
