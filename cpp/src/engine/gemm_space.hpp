// Eigen's GEMM with packing buffers that outlive the call: the products over all T*B rows
// (backward's weight gradients and dx) and forward_last's linear head. The step GEMM of the
// time loops is gemm.hpp's, not this.
#pragma once

#include <Eigen/Core>

#include <type_traits>

#include "../buffer.hpp"
#include "eigenlstm/lstm.hpp"

// Eigen has no public way to hand its GEMM the packing buffers: this calls its internal
// interface (general_matrix_matrix_product, level3_blocking, computeProductBlockingSizes),
// unchanged through Eigen 3.4, the version pyproject.toml pins.
static_assert(EIGEN_WORLD_VERSION == 3 && EIGEN_MAJOR_VERSION == 4,
              "gemm_space.hpp calls Eigen 3.4's internal GEMM interface: check it for this one");

namespace eigenlstm {
namespace detail {

// Eigen's GEMM packs a block of each operand into contiguous memory before its kernel reads
// them (blockA [mc, kc] and blockB [kc, nc], sized from the CPU's caches). A product written
// as an expression (`C.noalias() += A * B`) takes both blocks from the stack up to
// EIGEN_STACK_ALLOCATION_LIMIT (128 KiB) and from the heap above it, on every call: at the
// sizes of a training step (B = 64, I = H = 256) a malloc and a free per product and thread.
// A GemmSpace keeps the two blocks between calls, grown to the largest product it has run.
// One per thread that multiplies, owned with the call's other workspaces.
template <typename S>
class GemmSpace {
public:
    // dst += lhs * rhs with Eigen's single-threaded GEMM (its blocking and kernel) in this
    // space's blocks, or its GEMV when rhs is one column: no allocation once the space has
    // grown to the product's blocks.
    //   dst  [M, N]  row-major; accumulated into
    //   lhs  [M, K]  row- or column-major (e.g. the transpose of a row-major block); read only
    //   rhs  [K, N]  row- or column-major; read only
    // All three are Eigen maps or blocks of maps with unit inner stride. Throws std::bad_alloc
    // when a block cannot grow.
    template <typename Dst, typename Lhs, typename Rhs>
    void add_product(Dst&& dst, const Lhs& lhs, const Rhs& rhs) {
        using DstT = std::remove_reference_t<Dst>;
        static_assert(DstT::IsRowMajor, "add_product writes a row-major destination");
        static_assert(DstT::InnerStrideAtCompileTime == 1 && Lhs::InnerStrideAtCompileTime == 1 &&
                          Rhs::InnerStrideAtCompileTime == 1,
                      "add_product needs unit inner strides");
        const Index M = dst.rows(), N = dst.cols(), K = lhs.cols();
        if (M == 0 || N == 0 || K == 0) return;
        // One column (input size 1: dW_ih and dx) is a matrix-vector product, where Eigen's
        // GEMV reads the matrix once instead of packing it first (B = 32, T = 50, I = 1,
        // H = 64: the whole backward 10% faster than through the GEMM). Mapped as vectors of
        // unit stride, dst and rhs are used in place: Eigen's GEMV copies a vector whose
        // stride is only known at run time into a temporary.
        if (N == 1 && dst.outerStride() == 1 && (!Rhs::IsRowMajor || rhs.outerStride() == 1)) {
            using Vec = Eigen::Matrix<S, Eigen::Dynamic, 1>;
            Eigen::Map<Vec>(dst.data(), M).noalias() += lhs * Eigen::Map<const Vec>(rhs.data(), K);
            return;
        }
        constexpr int kLhsOrder = Lhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
        constexpr int kRhsOrder = Rhs::IsRowMajor ? Eigen::RowMajor : Eigen::ColMajor;
        // Eigen runs a row-major product as its transpose, dst^T = rhs^T lhs^T, and blocks it
        // as a product of N rows and M columns (its gemm_blocking_space does the same).
        Blocking blocking(N, M, K, a_, b_);
        Eigen::internal::general_matrix_matrix_product<Index, S, kLhsOrder, false, S, kRhsOrder,
                                                       false, Eigen::RowMajor, 1>::
            run(M, N, K, lhs.data(), lhs.outerStride(), rhs.data(), rhs.outerStride(), dst.data(),
                1, dst.outerStride(), S(1), blocking);
    }

    // Values held by the two blocks.
    Index capacity() const { return a_.capacity() + b_.capacity(); }

private:
    // Eigen's block sizes for a [rows, depth] x [depth, cols] product on one thread, with the
    // blocks in a_ (mc x kc) and b_ (kc x nc), grown to fit.
    struct Blocking : Eigen::internal::level3_blocking<S, S> {
        Blocking(Index rows, Index cols, Index depth, Buffer<S>& a, Buffer<S>& b) {
            this->m_mc = rows;
            this->m_nc = cols;
            this->m_kc = depth;
            Eigen::internal::computeProductBlockingSizes<S, S, 1>(this->m_kc, this->m_mc,
                                                                 this->m_nc, Index(1));
            a.resize(checked_mul(this->m_mc, this->m_kc));
            b.resize(checked_mul(this->m_kc, this->m_nc));
            this->m_blockA = a.data();
            this->m_blockB = b.data();
        }
    };

    Buffer<S> a_, b_;  // Eigen's blockA and blockB
};

}  // namespace detail
}  // namespace eigenlstm
