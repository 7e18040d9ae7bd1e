// How a back end uses threads: the process-wide settings (thread count, denormal flushing),
// one exception-safe way to run an OpenMP region, a cancellable spin barrier for the threads
// that share a time loop, and the plan that decides how many threads a call gets.
#pragma once

#include <algorithm>
#include <atomic>
#include <exception>
#include <mutex>
#include <new>
#include <thread>

#if defined(__SSE__) || defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define EIGENLSTM_X86 1
#define EIGENLSTM_PAUSE() _mm_pause()
#else
#define EIGENLSTM_PAUSE() ((void)0)
#endif

#ifdef _OPENMP
#include <omp.h>
#endif

#include "eigenlstm/lstm.hpp"

namespace eigenlstm {
namespace detail {

// ---- process-wide settings -----------------------------------------------------------------

inline int default_threads() {
#ifdef _OPENMP
    return std::max(1, omp_get_max_threads());  // OMP_NUM_THREADS and the CPU affinity mask
#else
    return 1;
#endif
}
inline std::atomic<int>& thread_setting() {
    static std::atomic<int> n{default_threads()};
    return n;
}
inline int num_threads() { return thread_setting().load(std::memory_order_relaxed); }

inline std::atomic<bool>& flush_denormal_setting() {
    static std::atomic<bool> on{false};
    return on;
}

// Subnormal operands and results take a microcode assist on x86, tens to hundreds of cycles
// each: a layer whose states decay towards zero can run many times slower (bench/README.md).
// While this scope lives, the thread's MXCSR flushes subnormal results to zero (FTZ) and reads
// subnormal inputs as zero (DAZ) if el.set_flush_denormal(True) asked for it, and computes
// exactly (IEEE) otherwise; the thread's previous mode is restored at the end, so neither the
// caller nor other libraries that share the OpenMP threads see a change. Every engine entry
// point and every thread of every parallel region opens one. Other architectures: no effect.
class DenormalScope {
public:
    DenormalScope() {
#ifdef EIGENLSTM_X86
        saved_ = _mm_getcsr();
        constexpr unsigned kFtzDaz = 0x8040;
        const unsigned want = flush_denormal_setting().load(std::memory_order_relaxed)
                                  ? (saved_ | kFtzDaz) : (saved_ & ~kFtzDaz);
        if (want != saved_) _mm_setcsr(want);
#endif
    }
    ~DenormalScope() {
#ifdef EIGENLSTM_X86
        if (_mm_getcsr() != saved_) _mm_setcsr(saved_);
#endif
    }
    DenormalScope(const DenormalScope&) = delete;
    DenormalScope& operator=(const DenormalScope&) = delete;

private:
    unsigned saved_ = 0;
};

// Test hook (Backend::fail_next_parallel_region): the next parallel region throws
// std::bad_alloc in its last thread, as an allocation failure inside it would.
inline std::atomic<bool>& fail_next_region() {
    static std::atomic<bool> armed{false};
    return armed;
}

// ---- parallel regions ------------------------------------------------------------------------

// Thrown by a barrier when another thread of its region failed; run_parallel swallows it (the
// failure that caused it is what the caller gets).
struct Cancelled {};

// Generation-counting spin barrier for the few threads of one direction's team. A time step is
// a few microseconds, far below what a futex wake-up costs, so threads spin (with pause) for
// about that long, then yield: on an oversubscribed machine the thread being waited for may be
// descheduled, and spinning longer would only keep it off the core. If a thread of the region
// fails (`failed`), the waiters throw Cancelled instead of waiting forever for it.
class SpinBarrier {
public:
    SpinBarrier(int n, const std::atomic<bool>& failed) : n_(n), failed_(failed) {}
    void wait() {
        if (n_ <= 1) return;
        const unsigned gen = gen_.load(std::memory_order_acquire);
        if (count_.fetch_add(1, std::memory_order_acq_rel) == n_ - 1) {
            count_.store(0, std::memory_order_relaxed);
            gen_.fetch_add(1, std::memory_order_release);
        } else {
            for (int spins = 0; gen_.load(std::memory_order_acquire) == gen; ++spins) {
                if (failed_.load(std::memory_order_relaxed)) throw Cancelled();
                if (spins < 256) EIGENLSTM_PAUSE();
                else std::this_thread::yield();
            }
        }
    }

private:
    const int n_;
    const std::atomic<bool>& failed_;
    alignas(64) std::atomic<int> count_{0};
    alignas(64) std::atomic<unsigned> gen_{0};
};

// Runs fn(tid, n) on `threads` threads (fn(0, 1) on the calling thread when threads == 1).
// An exception must not leave an OpenMP region (the runtime would terminate the process): each
// thread catches, the region records the first failure in `failed` (which releases threads
// waiting at a SpinBarrier built on it) and the exception is rethrown here, after the region.
template <typename F>
void run_parallel(int threads, std::atomic<bool>& failed, F&& fn) {
#ifdef _OPENMP
    if (threads > 1) {
        std::exception_ptr error;
        std::mutex error_mutex;
#pragma omp parallel num_threads(threads)
        {
            const DenormalScope denormals;
            const int tid = omp_get_thread_num(), n = omp_get_num_threads();
            try {
                if (tid == n - 1 && fail_next_region().exchange(false)) throw std::bad_alloc();
                fn(tid, n);
            } catch (const Cancelled&) {
            } catch (...) {
                const std::lock_guard<std::mutex> lock(error_mutex);
                if (!error) error = std::current_exception();
                failed.store(true, std::memory_order_relaxed);
            }
        }
        if (error) std::rethrow_exception(error);
        return;
    }
#endif
    fn(0, 1);
}

// Runs fn(tid, n) on `threads` threads (n <= threads), or on one (fn(0, 1)) when `work`
// (multiply-adds) is below ~4M: a fork/join costs about as much as 1M multiply-adds on one core.
template <typename F>
void parallel_slices(int threads, double work, F&& fn) {
    std::atomic<bool> failed{false};
    run_parallel(work >= 4e6 ? threads : 1, failed, fn);
}

// Runs body(team, tid, team_size, barrier) for `teams` (1 or 2) teams of `team_size[t]`
// threads each; `barrier` synchronizes the threads of one team. Teams are the directions of a
// layer; their threads share nothing but read-only weights. With fewer threads than teams (one
// thread, two directions), or fewer than asked from the runtime, the teams run one after the
// other on one thread, each as a team of one.
template <typename Body>
void run_teams(int teams, const int* team_size, Body&& body) {
    int total = 0;
    for (int d = 0; d < teams; ++d) total += team_size[d];
    const bool parallel = total > 1 && total <= num_threads();
    std::atomic<bool> failed{false};
    SpinBarrier barrier0(team_size[0], failed), barrier1(teams > 1 ? team_size[1] : 1, failed);
    run_parallel(parallel ? total : 1, failed, [&](int tid, int n) {
        if (!parallel || n != total) {  // serialize on the first thread
            if (tid != 0) return;
            for (int d = 0; d < teams; ++d) {
                SpinBarrier alone(1, failed);
                body(d, 0, 1, alone);
            }
            return;
        }
        int d = 0;
        while (tid >= team_size[d]) tid -= team_size[d++];
        body(d, tid, team_size[d], d == 0 ? barrier0 : barrier1);
    });
}

// [begin, end) of item chunks owned by thread `tid` of `n` when `count` items are split in
// chunks of `grain` (the last chunk may be short).
inline void split_range(Index count, Index grain, int tid, int n, Index& begin, Index& end) {
    const Index chunks = (count + grain - 1) / grain;
    const Index lo = chunks * tid / n, hi = chunks * (tid + 1) / n;
    begin = std::min(count, lo * grain);
    end = std::min(count, hi * grain);
}

}  // namespace detail
}  // namespace eigenlstm
