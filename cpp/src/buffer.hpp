// Aligned, grow-only storage and overflow-checked sizes: the only memory the engine owns.
// Shared by the front end (parameters, gradients) and every ISA back end (caches, workspaces);
// std only, no Eigen, so it compiles the same for every level.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstring>
#include <limits>
#include <new>
#include <utility>

#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// a * b, or std::bad_alloc if the product cannot be a buffer size (it would overflow).
inline Index checked_mul(Index a, Index b) {
    if (a < 0 || b < 0) throw std::bad_alloc();
    if (a != 0 && b > std::numeric_limits<Index>::max() / 8 / a) throw std::bad_alloc();
    return a * b;
}

inline Index round_up(Index n, Index m) { return (n + m - 1) / m * m; }

// Every buffer starts on a 64-byte boundary: a whole cache line, and the widest SIMD load of
// any level (AVX-512) is aligned.
constexpr std::size_t kAlign = 64;

// A 64-byte aligned array that only ever grows: reused across calls of the same or smaller
// size, so steady-state training allocates nothing. Aligned operator new (C++17) is the
// portable aligned allocation (std::aligned_alloc does not exist on every platform).
// Throws std::bad_alloc.
template <typename S>
class Buffer {
public:
    Buffer() = default;
    explicit Buffer(Index n) { resize(n); }
    Buffer(const Buffer&) = delete;
    Buffer& operator=(const Buffer&) = delete;
    Buffer(Buffer&& o) noexcept : p_(o.p_), cap_(o.cap_), n_(o.n_) { o.p_ = nullptr; o.cap_ = o.n_ = 0; }
    Buffer& operator=(Buffer&& o) noexcept {
        std::swap(p_, o.p_); std::swap(cap_, o.cap_); std::swap(n_, o.n_);
        return *this;
    }
    ~Buffer() { release(); }

    // Size n; contents are unspecified unless zero() is called.
    void resize(Index n) {
        if (n > cap_) {
            const Index bytes = round_up(checked_mul(std::max<Index>(n, 1), Index(sizeof(S))), Index(kAlign));
            void* p = ::operator new(std::size_t(bytes), std::align_val_t(kAlign));
            release();
            p_ = static_cast<S*>(p);
            cap_ = bytes / Index(sizeof(S));
        }
        n_ = n;
    }
    void zero() { if (n_) std::memset(p_, 0, std::size_t(n_) * sizeof(S)); }
    // A copy of o's contents (copies are explicit: the copy constructor is deleted).
    void assign(const Buffer& o) {
        resize(o.n_);
        if (o.n_) std::memcpy(p_, o.p_, std::size_t(o.n_) * sizeof(S));
    }
    Index size() const { return n_; }
    Index capacity() const { return cap_; }
    S* data() { return p_; }
    const S* data() const { return p_; }
    S& operator[](Index i) { return p_[i]; }
    const S& operator[](Index i) const { return p_[i]; }

private:
    void release() {
        if (p_) ::operator delete(p_, std::align_val_t(kAlign));
        p_ = nullptr;
        cap_ = n_ = 0;
    }
    S* p_ = nullptr;
    Index cap_ = 0;
    Index n_ = 0;
};

}  // namespace detail
}  // namespace eigenlstm
