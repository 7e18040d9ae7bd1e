// Steady-state calls allocate nothing: after one call of each kind, repeated training forward,
// backward, eval forward, forward_last and a stream's steps (one-step eval forwards from the
// state the last step left), and a QuantizedLSTM's forward and stream steps and a
// QuantizedLinear's product, with the same shapes make zero heap allocations in
// the whole process (every thread: the engine's, OpenMP's, Eigen's), in float32 and float64, on
// one and two threads. This executable defines malloc and its relatives and every operator
// new; the dynamic linker binds the shared libraries' calls (libeigenlstm, the back end it
// loads, libgomp, libstdc++) to these definitions, which count and forward to glibc's
// allocator. glibc only (__libc_malloc); not built under the sanitizers, which own malloc.
#include <atomic>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>
#include <random>
#include <vector>

#include "eigenlstm/lstm.hpp"
#include "test_common.hpp"

// ---- the counting allocator -----------------------------------------------------------------

extern "C" {
void* __libc_malloc(std::size_t n);
void* __libc_calloc(std::size_t n, std::size_t size);
void* __libc_realloc(void* p, std::size_t n);
void* __libc_memalign(std::size_t alignment, std::size_t n);
void __libc_free(void* p);
}

namespace {

std::atomic<bool> counting{false};
std::atomic<long> allocations{0};

void count() {
    if (counting.load(std::memory_order_relaxed))
        allocations.fetch_add(1, std::memory_order_relaxed);
}

void* counted(std::size_t n) {
    count();
    return __libc_malloc(n ? n : 1);
}

void* counted_aligned(std::size_t n, std::align_val_t alignment) {
    count();
    return __libc_memalign(std::size_t(alignment), n ? n : 1);
}

void* or_throw(void* p) {
    if (!p) throw std::bad_alloc();
    return p;
}

}  // namespace

extern "C" {
void* malloc(std::size_t n) noexcept { count(); return __libc_malloc(n); }
void* calloc(std::size_t n, std::size_t size) noexcept { count(); return __libc_calloc(n, size); }
void* realloc(void* p, std::size_t n) noexcept { count(); return __libc_realloc(p, n); }
void* memalign(std::size_t alignment, std::size_t n) noexcept {
    count();
    return __libc_memalign(alignment, n);
}
void* aligned_alloc(std::size_t alignment, std::size_t n) noexcept {
    count();
    return __libc_memalign(alignment, n);
}
int posix_memalign(void** p, std::size_t alignment, std::size_t n) noexcept {
    count();
    if (alignment % sizeof(void*) != 0 || (alignment & (alignment - 1)) != 0) return EINVAL;
    void* q = __libc_memalign(alignment, n);
    if (!q) return ENOMEM;
    *p = q;
    return 0;
}
}

using std::align_val_t;
using std::nothrow_t;
using std::size_t;

void* operator new(size_t n) { return or_throw(counted(n)); }
void* operator new[](size_t n) { return or_throw(counted(n)); }
void* operator new(size_t n, const nothrow_t&) noexcept { return counted(n); }
void* operator new[](size_t n, const nothrow_t&) noexcept { return counted(n); }
void* operator new(size_t n, align_val_t a) { return or_throw(counted_aligned(n, a)); }
void* operator new[](size_t n, align_val_t a) { return or_throw(counted_aligned(n, a)); }
void* operator new(size_t n, align_val_t a, const nothrow_t&) noexcept {
    return counted_aligned(n, a);
}
void* operator new[](size_t n, align_val_t a, const nothrow_t&) noexcept {
    return counted_aligned(n, a);
}
// Every delete matches the news above: all of them return glibc memory.
void operator delete(void* p) noexcept { __libc_free(p); }
void operator delete[](void* p) noexcept { __libc_free(p); }
void operator delete(void* p, size_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t) noexcept { __libc_free(p); }
void operator delete(void* p, const nothrow_t&) noexcept { __libc_free(p); }
void operator delete[](void* p, const nothrow_t&) noexcept { __libc_free(p); }
void operator delete(void* p, align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, align_val_t) noexcept { __libc_free(p); }
void operator delete(void* p, size_t, align_val_t) noexcept { __libc_free(p); }
void operator delete[](void* p, size_t, align_val_t) noexcept { __libc_free(p); }
void operator delete(void* p, align_val_t, const nothrow_t&) noexcept { __libc_free(p); }
void operator delete[](void* p, align_val_t, const nothrow_t&) noexcept { __libc_free(p); }

namespace {

// Allocations made by the whole process while fn() runs.
template <typename F>
long allocations_during(F&& fn) {
    allocations.store(0);
    counting.store(true);
    fn();
    counting.store(false);
    return allocations.load();
}

using eigenlstm::Config;
using eigenlstm::Index;
using eigenlstm::LSTM;

// Each allocation function above is the one called, and counts once.
void test_every_allocation_function_is_counted() {
    void* volatile sink = nullptr;
    const align_val_t a64{64};
    const long n = allocations_during([&] {
        sink = std::malloc(8); std::free(sink);
        sink = std::calloc(2, 8); std::free(sink);
        sink = std::realloc(nullptr, 8); std::free(sink);
        sink = std::aligned_alloc(64, 64); std::free(sink);
        void* p = nullptr;
        if (posix_memalign(&p, 64, 8) == 0) std::free(p);
        sink = memalign(64, 8); std::free(sink);
        sink = ::operator new(8); ::operator delete(sink);
        sink = ::operator new[](8); ::operator delete[](sink);
        sink = ::operator new(8, std::nothrow); ::operator delete(sink, std::nothrow);
        sink = ::operator new[](8, std::nothrow); ::operator delete[](sink, std::nothrow);
        sink = ::operator new(8, a64); ::operator delete(sink, a64);
        sink = ::operator new[](8, a64); ::operator delete[](sink, a64);
        sink = ::operator new(8, a64, std::nothrow); ::operator delete(sink, a64, std::nothrow);
        sink = ::operator new[](8, a64, std::nothrow); ::operator delete[](sink, a64, std::nothrow);
    });
    CHECK(n == 14);
}

// Shapes that take each path of the engine. The large ones run the threads in parallel (the
// unit split of the time loops, both directions at once, the parallel weight-gradient
// products) and make Eigen's GEMM blocks, in the weight gradients, dx and a 300-wide linear
// head, larger than its 128 KiB stack limit.
struct Case {
    const char* name;
    Index I, H, P, L;
    bool bidirectional;
    double dropout;
    Index T, B, O;     // O: outputs of forward_last's linear head
    bool ragged;       // lengths, h0, c0, dh_n, dc_n given; forward_last reads batch-first x
    bool variants = false;  // the float LSTM with every cell variant (layer norm, peepholes,
                            // clipping, zoneout, recurrent dropout, weight drop)
};

const Case kCases[] = {
    {"seed model", 10, 20, 0, 1, false, 0.0, 7, 5, 1, false},
    {"batch rows split between threads", 64, 64, 0, 1, false, 0.0, 100, 32, 10, true},
    {"large, one layer", 256, 256, 0, 1, false, 0.0, 25, 64, 300, false},
    {"large, two bidirectional layers, dropout", 256, 256, 0, 2, true, 0.25, 12, 64, 300, true},
    {"large, two layers, projection, dropout", 256, 512, 128, 2, false, 0.25, 12, 64, 300, true},
    {"bidirectional, projection", 128, 256, 64, 1, true, 0.0, 25, 64, 10, false},
    {"cell variants, units split between threads", 256, 256, 0, 1, false, 0.0, 12, 64, 10, true,
     true},
    {"cell variants, batch rows split between threads", 64, 64, 0, 1, false, 0.0, 100, 32, 10,
     true, true},
};

// Deterministic values in [-scale, scale).
template <typename S>
std::vector<S> values(std::size_t n, double scale, std::uint64_t seed) {
    std::vector<S> v(n);
    for (S& e : v) {
        seed = seed * 6364136223846793005ull + 1442695040888963407ull;
        e = S(scale * (double(seed >> 11) / 4503599627370496.0 - 1.0));
    }
    return v;
}

template <typename S>
void check_no_allocation_after_warmup(const Case& k, int threads) {
    eigenlstm::set_num_threads(threads);
    Config c;
    c.input_size = k.I;
    c.hidden_size = k.H;
    c.proj_size = k.P;
    c.num_layers = k.L;
    c.bidirectional = k.bidirectional;
    c.dropout = k.dropout;
    if (k.variants) {
        c.layer_norm = true;
        c.peepholes = true;
        c.cell_clip = 0.5;
        c.zoneout_c = 0.1;
        c.zoneout_h = 0.2;
        c.recurrent_dropout = 0.1;
        c.weight_drop = 0.1;
    }
    LSTM<S> m(c, 1);
    std::mt19937_64 rng(1);
    eigenlstm_test::randomize(m, rng, 0.1);

    const Index T = k.T, B = k.B, DL = c.directions() * k.L, DH = c.directions() * c.output_size();
    const std::vector<S> x = values<S>(std::size_t(T * B * k.I), 1.0, 101);
    const std::vector<S> dy = values<S>(std::size_t(T * B * DH), 1.0, 102);
    const std::vector<S> h0 = values<S>(std::size_t(DL * B * c.output_size()), 0.5, 103);
    const std::vector<S> c0 = values<S>(std::size_t(DL * B * k.H), 0.5, 104);
    const std::vector<S> W = values<S>(std::size_t(k.O * DH), 0.1, 105);
    const std::vector<S> bias = values<S>(std::size_t(k.O), 0.1, 106);
    std::vector<std::int64_t> lengths(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) lengths[std::size_t(b)] = T - b % T;  // from T down to 1
    std::vector<S> y(dy.size()), h_n(h0.size()), c_n(c0.size()), dx(x.size()), dh0(h0.size()),
        dc0(c0.size()), out(std::size_t(B * k.O));
    const std::int64_t* lens = k.ragged ? lengths.data() : nullptr;
    const S* h0p = k.ragged ? h0.data() : nullptr;
    const S* c0p = k.ragged ? c0.data() : nullptr;
    // A stream's two state buffers (Python's Stream): a step reads one and writes the other.
    std::vector<S> sh[2] = {h0, h0}, sc[2] = {c0, c0};

    // One training step, an eval forward, a forward_last and two stream steps; allocations of
    // each.
    auto round = [&](long counts[5]) {
        counts[0] = allocations_during([&] {
            m.forward(y.data(), h_n.data(), c_n.data(), x.data(), h0p, c0p, lens, T, B, true);
        });
        counts[1] = allocations_during([&] {
            m.backward(dx.data(), dh0.data(), dc0.data(), dy.data(), k.ragged ? h0.data() : nullptr,
                       k.ragged ? c0.data() : nullptr);
        });
        counts[2] = allocations_during([&] {
            m.forward(y.data(), h_n.data(), c_n.data(), x.data(), h0p, c0p, lens, T, B, false);
        });
        counts[3] = allocations_during([&] {
            m.forward_last(out.data(), x.data(), lens, T, B, k.ragged, W.data(), bias.data(), k.O);
        });
        counts[4] = allocations_during([&] {
            for (int s = 0; s < 2; ++s)
                m.forward(y.data(), sh[1 - s].data(), sc[1 - s].data(), x.data(), sh[s].data(),
                          sc[s].data(), nullptr, 1, B, false);
        });
    };
    long first[5], again[5], steady[5] = {0, 0, 0, 0, 0};
    round(first);  // warm-up: buffers grow, OpenMP starts its threads
    // The counter sees the engine's own allocations: the first training forward allocates the
    // cache backward reads.
    CHECK(first[0] > 0);
    for (int r = 0; r < 3; ++r) {
        round(again);
        for (int i = 0; i < 5; ++i) steady[i] += again[i];
    }
    const char* names[5] = {"forward (training)", "backward", "forward (eval)", "forward_last",
                            "stream steps"};
    for (int i = 0; i < 5; ++i)
        if (steady[i] != 0)
            std::fprintf(stderr, "%s, %s, %d thread(s): %s made %ld allocations in 3 calls\n",
                         k.name, sizeof(S) == 4 ? "float32" : "float64", threads, names[i],
                         steady[i]);
    for (long n : steady) CHECK(n == 0);
}

// The same for a QuantizedLSTM (each precision): eval forwards, a stream's steps, and its
// linear head.
void check_quantized_no_allocation_after_warmup(const Case& k, eigenlstm::Precision p,
                                                int threads) {
    eigenlstm::set_num_threads(threads);
    Config c;
    c.input_size = k.I;
    c.hidden_size = k.H;
    c.proj_size = k.P;
    c.num_layers = k.L;
    c.bidirectional = k.bidirectional;
    LSTM<float> m(c, 1);
    std::mt19937_64 rng(1);
    eigenlstm_test::randomize(m, rng, 0.1);
    eigenlstm_test::QuantizedStore store;
    eigenlstm::QuantizedLSTM q(c, p, eigenlstm_test::quantized_weights(m, p, store));
    const Index T = k.T, B = k.B, DL = c.directions() * k.L, DH = c.directions() * c.output_size();
    const std::vector<float> W = values<float>(std::size_t(k.O * DH), 0.1, 105);
    const std::vector<std::int8_t> Wq(W.size(), 3);
    const std::vector<float> scale(std::size_t(k.O), 0.01f);
    const std::vector<float> bias = values<float>(std::size_t(k.O), 0.1, 106);
    eigenlstm::QuantizedLinear head(DH, k.O, eigenlstm::Precision::int8, Wq.data(), scale.data(),
                                    bias.data());
    const std::vector<float> x = values<float>(std::size_t(T * B * k.I), 1.0, 101);
    const std::vector<float> h0 = values<float>(std::size_t(DL * B * c.output_size()), 0.5, 103);
    const std::vector<float> c0 = values<float>(std::size_t(DL * B * k.H), 0.5, 104);
    std::vector<std::int64_t> lengths(static_cast<std::size_t>(B));
    for (Index b = 0; b < B; ++b) lengths[std::size_t(b)] = T - b % T;
    std::vector<float> y(std::size_t(T * B * DH)), h_n(h0.size()), c_n(c0.size()),
        out(std::size_t(B * k.O));
    std::vector<float> sh[2] = {h0, h0}, sc[2] = {c0, c0};
    auto round = [&](long counts[3]) {
        counts[0] = allocations_during([&] {
            q.forward(y.data(), h_n.data(), c_n.data(), x.data(), k.ragged ? h0.data() : nullptr,
                      k.ragged ? c0.data() : nullptr, k.ragged ? lengths.data() : nullptr, T, B);
        });
        counts[1] = allocations_during([&] {
            for (int s = 0; s < 2; ++s)
                q.forward(y.data(), sh[1 - s].data(), sc[1 - s].data(), x.data(), sh[s].data(),
                          sc[s].data(), nullptr, 1, B);
        });
        counts[2] = allocations_during([&] { head.forward(out.data(), y.data(), B); });
    };
    long first[3], again[3], steady[3] = {0, 0, 0};
    round(first);
    for (int r = 0; r < 3; ++r) {
        round(again);
        for (int i = 0; i < 3; ++i) steady[i] += again[i];
    }
    const char* names[3] = {"forward", "stream steps", "linear head"};
    for (int i = 0; i < 3; ++i)
        if (steady[i] != 0)
            std::fprintf(stderr, "%s, %s, %d thread(s): quantized %s made %ld allocations in 3 calls\n",
                         k.name, p == eigenlstm::Precision::int8 ? "int8" : "bfloat16", threads,
                         names[i], steady[i]);
    for (long n : steady) CHECK(n == 0);
}

}  // namespace

int main() {
    test_every_allocation_function_is_counted();
    const int saved = eigenlstm::get_num_threads();
    for (const Case& k : kCases)
        for (int threads : {1, 2}) {
            check_no_allocation_after_warmup<float>(k, threads);
            check_no_allocation_after_warmup<double>(k, threads);
            if (k.variants) continue;  // reduced precision runs the plain cases' configs
            for (auto p : {eigenlstm::Precision::int8, eigenlstm::Precision::bfloat16})
                check_quantized_no_allocation_after_warmup(k, p, threads);
        }
    eigenlstm::set_num_threads(saved);
    TEST_MAIN_END();
}
