// The threading plan: how many threads a call's time loop gets and how they share it. Numbers
// measured on 2 cores; see bench/README.md.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <vector>

#include "eigenlstm/lstm.hpp"
#include "gemm.hpp"
#include "threads.hpp"

namespace eigenlstm {
namespace detail {

// How the threads of one direction share its time loop.
//   by_rows: each thread owns a slice of the batch and runs the whole recurrence for it. Rows
//            are independent through time, so the threads never wait for each other; every
//            thread reads all of W_hh, which pays when W_hh^T is small enough to stay in each
//            core's own L2 (G*Hout <= 32K values). Measured on 2 cores, eval forward, against
//            the unit split: (B, T, I, H) = (32, 100, 64, 64) 4.5 vs 5.5 ms, (64, 50, 32, 32)
//            1.55 vs 1.91 ms, (16, 100, 128, 64) 2.9 vs 3.5 ms. Only from 2^20 multiply-adds
//            per call: waking a second thread costs 1-10 us here, and for the seed's model
//            (84K multiply-adds, 15 us on one thread) two threads took 14 to 25 us.
//            Forward only (`rows_allowed`); the backward loop splits units.
//            An eval whose steps project their own inputs (every reduced-precision one, and
//            float ones with small weights: engine.cpp) reads W_ih too, so the bound is on
//            `step_bytes`, the most that one direction's W_ih and W_hh take in any layer,
//            packed: 1 MiB (int8 and bfloat16 weights are 4 and 2 times smaller than float32
//            ones; bfloat16 emulated without AVX512_BF16 keeps float32 ones); and each thread
//            needs 16 rows or more, as thinner tiles reread the weights for too few rows.
//            Float32 at (64, 50, 128, 128), all-steps input projection and units -> per-step
//            and rows: 4.3-4.4 -> 3.4 ms.
//            The unit split also quantizes (or rounds) every row of x_t and h_{t-1} in each
//            thread, and waits at its barrier. Measured on 2 cores, T = 100, I = H = 256,
//            ms, units -> rows: int8 B = 32 3.74 -> 2.64 with AMX tiles, 5.74 -> 4.88
//            with vpdpbusd; B = 64 7.9 -> 5.5 and 12.2 -> 10.5; B = 16 (8 rows a thread)
//            1.85 -> 1.72 and 2.8 -> 2.4-2.9 (not taken); B = 8 1.14 -> 1.55 (thin tiles);
//            bfloat16 with tiles B = 32 3.6 -> 3.0; with vdpbf16ps, compute-bound, within
//            5% either way. At I = H = 512 (2 MiB of int8 weights) rows lose: B = 32
//            1.7 -> 2.0, B = 64 3.9 -> 4.1.
//   else:    threads split the hidden units (all four gates of each unit; one barrier per
//            step). At 64K multiply-adds per step (B=1, H=128) two threads already run a
//            step 1.8x faster; below that one thread wins.
struct TeamPlan {
    int threads = 1;
    bool by_rows = false;
};

template <typename S>
TeamPlan plan_team(Index D, Index T, Index B, Index I, Index H, Index Hout, bool rows_allowed,
                   Index step_bytes = 0) {
    const int per_dir = std::max(1, num_threads() / int(D));
    const Index G = 4 * H;
    const double work = double(T) * double(B) * double(G) * double(I + Hout);
    if (rows_allowed && step_bytes > 0 && step_bytes <= (Index(1) << 20) && per_dir > 1 &&
        B >= 16 * per_dir && work >= double(1 << 20))
        return {per_dir, true};
    if (rows_allowed && per_dir > 1 && B >= 2 && G * Hout <= (Index(1) << 15) &&
        work >= double(1 << 20))
        return {int(std::min<Index>(per_dir, B)), true};
    const Index chunks = (H + unit_grain<S>() - 1) / unit_grain<S>();
    if (B * G * Hout < (Index(1) << 16)) return {1, false};
    return {int(std::max<Index>(1, std::min<Index>(per_dir, chunks))), false};
}

// A copy of the packed weights w that belongs to the calling thread, made at its first use
// after each packing of w (Panels::id) and kept for later calls. Threads that split a batch
// by rows each read all of every step's weights, and on the 2-core Xeon two threads reading
// the same packed int8 weights ran 15-20% slower than two reading their own (int8 eval at
// B = 32, T = 100, I = H = 256: each thread's 16 rows took 4.7 ms, against 4.0 alone or in
// two processes; with copies 4.1-4.2 ms, copying included: bench/README.md). Reduced-precision
// weights only: they are packed once, when quantized, where float32 ones are packed again at
// every optimizer step. A thread keeps at most kThreadCopyBytes of copies, the least recently
// used going first, but never its kThreadCopyKeep most recent (one pass's W_ih, W_hh, W_hr),
// so that a reference returned in a pass stays valid through it.
constexpr Index kThreadCopyBytes = Index(16) << 20;
constexpr std::size_t kThreadCopyKeep = 3;
template <typename W>
const W& thread_copy(const W& w) {
    struct Copy {
        std::uint64_t id;
        std::unique_ptr<W> w;
    };
    thread_local std::vector<Copy> copies;  // least recently used first
    for (std::size_t i = 0; i < copies.size(); ++i)
        if (copies[i].id == w.id) {
            std::rotate(copies.begin() + std::ptrdiff_t(i), copies.begin() + std::ptrdiff_t(i) + 1,
                        copies.end());
            return *copies.back().w;
        }
    Index bytes = w.bytes();
    for (const Copy& c : copies) bytes += c.w->bytes();
    while (copies.size() > kThreadCopyKeep && bytes > kThreadCopyBytes) {
        bytes -= copies.front().w->bytes();
        copies.erase(copies.begin());
    }
    auto copy = std::make_unique<W>();
    copy->assign(w);
    copies.push_back({w.id, std::move(copy)});
    return *copies.back().w;
}

// pre[rows, N] = x[rows, K] W + bias, W packed [K, N] in any representation (`multiply`).
// Threads take disjoint row ranges (so every value is computed by one thread, the same way for
// any thread count), and rows go through the kernel in blocks whose slice of x stays in L2
// while the panels stream.
template <typename S, typename W>
void project_inputs(S* pre, const S* x, Index rows, Index K, Index N, const S* bias, const W& w) {
    constexpr Index MR = Simd<S>::MR;
    const Index MB = std::max<Index>(MR, Index(128 * 1024) / Index(sizeof(S)) / std::max<Index>(K, 1) / MR * MR);
    // below ~1M multiply-adds a second thread costs more to wake than it saves
    const bool one = rows < 2 * MR || double(rows) * double(N) * double(K) < 1e6;
    std::atomic<bool> failed{false};
    run_parallel(one ? 1 : num_threads(), failed, [&](int tid, int n) {
        Index r0, r1;
        split_range(rows, MR, tid, n, r0, r1);
        for (Index m0 = r0; m0 < r1; m0 += MB)
            multiply<false>(std::min(MB, r1 - m0), x + m0 * K, K, w, 0, N, pre + m0 * N, N, bias);
    });
}

}  // namespace detail
}  // namespace eigenlstm
