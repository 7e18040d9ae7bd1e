// Google Benchmark microbenchmarks of the C++ engine (eigenlstm::core, no Python): forward in
// eval and training mode, the seed model's inference call (fwd_last), backward, a full training
// step, and Eigen SGEMM rooflines, over the shapes of bench/compare.py; the cell variants'
// forward and training step on the shapes of bench/variants.py. Comparisons with
// PyTorch and ONNX Runtime live in compare.py; how to build, run and read this: bench/README.md.
#include <benchmark/benchmark.h>

#include <Eigen/Core>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "bench_config.h"
#include "eigenlstm/lstm.hpp"

namespace {

using eigenlstm::Index;
using eigenlstm::Param;

// Size letters: T time, B batch, I input size, H hidden, G = 4H gate rows. One layer, one
// direction, float32, no projection: the configuration of every target in the issue.
struct Shape {
    const char* name;
    Index B, T, I, H;
};

// Same names and sizes as SHAPES in bench/compare.py.
const Shape kShapes[] = {
    {"seed", 5, 7, 10, 20},              // the seed's LSTMModel example
    {"streaming", 1, 100, 128, 128},     // batch 1, latency bound
    {"ds_inf_b4", 4, 150, 256, 256},     // DeepBench inference
    {"ds_inf_b32", 32, 100, 256, 256},   // DeepBench-like inference, larger batch
    {"ds_train_512", 64, 25, 512, 512},  // DeepBench training
    {"ds_train_1024", 16, 25, 1024, 1024},
    {"long_seq", 8, 2000, 128, 128},     // long sequence: cache memory
};

// FLOPs of one layer-direction forward: the two GEMMs x W_ih^T and h W_hh^T over all steps,
// 2 * T*B * G * (I + H); the elementwise gate math is ignored. Backward is about 2x forward.
double forward_flops(const Shape& s) {
    return 2.0 * double(s.T) * double(s.B) * double(4 * s.H) * double(s.I + s.H);
}

std::vector<float> random_vector(Index n, float scale, std::uint32_t seed) {
    std::mt19937 gen(seed);
    std::uniform_real_distribution<float> dist(-scale, scale);
    std::vector<float> v(static_cast<std::size_t>(n));
    for (float& e : v) e = dist(gen);
    return v;
}

// A cell variant: the options it sets on the plain LSTM's config (bench/variants.py's).
struct Variant {
    const char* name;
    void (*apply)(eigenlstm::Config&);
};
const Variant kPlain{"plain", [](eigenlstm::Config&) {}};
const Variant kVariants[] = {
    {"peepholes", [](eigenlstm::Config& c) { c.peepholes = true; }},
    {"cell_clip", [](eigenlstm::Config& c) { c.cell_clip = 1.0; }},
    {"cifg", [](eigenlstm::Config& c) { c.cifg = true; }},
    {"recurrent_dropout", [](eigenlstm::Config& c) { c.recurrent_dropout = 0.25; }},
    {"weight_drop", [](eigenlstm::Config& c) { c.weight_drop = 0.5; }},
    {"zoneout", [](eigenlstm::Config& c) { c.zoneout_c = c.zoneout_h = 0.1; }},
    {"layer_norm", [](eigenlstm::Config& c) { c.layer_norm = true; }},
};
const char* const kVariantShapes[] = {"ds_inf_b32", "ds_train_512"};

// An engine with torch's initialisation, U(-1/sqrt(H), 1/sqrt(H)), each tensor written at its
// param_offset() (the padding between tensors stays zero).
eigenlstm::LSTM<float> make_lstm(const Shape& s, const Variant& variant = kPlain) {
    eigenlstm::Config cfg;
    cfg.input_size = s.I;
    cfg.hidden_size = s.H;
    variant.apply(cfg);
    eigenlstm::LSTM<float> lstm(cfg, 1234);
    const float k = 1.0f / std::sqrt(float(s.H));
    std::uint32_t seed = 1;
    for (int kind_index = 0; kind_index < eigenlstm::kNumParamKinds; ++kind_index) {
        const Param kind = Param(kind_index);
        if (!lstm.has_param(kind)) continue;
        Index rows = 0, cols = 0;
        lstm.param_shape(kind, 0, rows, cols);
        const std::vector<float> w = random_vector(rows * cols, k, seed++);
        std::copy(w.begin(), w.end(), lstm.params() + lstm.param_offset(kind, 0, 0));
    }
    lstm.params_updated();
    return lstm;
}

// All buffers of one shape, allocated once outside the timing loops.
struct Buffers {
    std::vector<float> x, y, h_n, c_n;      // x [T, B, I], y [T, B, H], h_n, c_n [1, B, H]
    std::vector<float> dy, dx, dh0, dc0;    // dy [T, B, H], dx [T, B, I], dh0, dc0 [1, B, H]
    explicit Buffers(const Shape& s)
        : x(random_vector(s.T * s.B * s.I, 1.0f, 7)),
          y(std::size_t(s.T * s.B * s.H)),
          h_n(std::size_t(s.B * s.H)),
          c_n(std::size_t(s.B * s.H)),
          dy(random_vector(s.T * s.B * s.H, 1.0f, 8)),
          dx(std::size_t(s.T * s.B * s.I)),
          dh0(std::size_t(s.B * s.H)),
          dc0(std::size_t(s.B * s.H)) {}
};

void set_gflops(benchmark::State& state, double flops_per_iteration) {
    // A rate counter: flops * iterations / elapsed seconds (wall clock: UseRealTime below).
    state.counters["GFLOP/s"] =
        benchmark::Counter(flops_per_iteration * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

// ---- the cases ------------------------------------------------------------------------------

// fwd_eval: inference forward (training = false: no cache is written).
void BM_fwd_eval(benchmark::State& state, Shape s, Variant v) {
    auto lstm = make_lstm(s, v);
    Buffers buf(s);
    for (auto _ : state) {
        lstm.forward(buf.y.data(), buf.h_n.data(), buf.c_n.data(), buf.x.data(), nullptr, nullptr,
                     nullptr, s.T, s.B, /*training=*/false);
        benchmark::DoNotOptimize(buf.y.data());
        benchmark::ClobberMemory();
    }
    set_gflops(state, forward_flops(s));
}

// fwd_last: the seed model's inference call, LSTMModel.forward in eval mode: batch-first
// x [B, T, I], eval forward, the last step's h through a Linear(H -> 1) (LSTM::forward_last).
void BM_fwd_last(benchmark::State& state, Shape s) {
    auto lstm = make_lstm(s);
    Buffers buf(s);
    const std::vector<float> w = random_vector(s.H, 1.0f / std::sqrt(float(s.H)), 9), b(1, 0.1f);
    std::vector<float> out(std::size_t(s.B));
    for (auto _ : state) {
        lstm.forward_last(out.data(), buf.x.data(), nullptr, s.T, s.B, /*batch_first=*/true,
                          w.data(), b.data(), 1);
        benchmark::DoNotOptimize(out.data());
        benchmark::ClobberMemory();
    }
    set_gflops(state, forward_flops(s));
}

// fwd_train: training forward (keeps the cache backward needs; the cache is allocated by the
// first call and reused by the next ones, as in a training loop).
void BM_fwd_train(benchmark::State& state, Shape s) {
    auto lstm = make_lstm(s);
    Buffers buf(s);
    for (auto _ : state) {
        lstm.forward(buf.y.data(), buf.h_n.data(), buf.c_n.data(), buf.x.data(), nullptr, nullptr,
                     nullptr, s.T, s.B, /*training=*/true);
        benchmark::DoNotOptimize(buf.y.data());
        benchmark::ClobberMemory();
    }
    set_gflops(state, forward_flops(s));
}

// bwd_only: backward alone; the training forward it consumes runs with the timer paused
// (PauseTiming costs ~1 us per iteration, visible only on the tiny seed shape).
void BM_bwd_only(benchmark::State& state, Shape s) {
    auto lstm = make_lstm(s);
    Buffers buf(s);
    for (auto _ : state) {
        state.PauseTiming();
        lstm.forward(buf.y.data(), buf.h_n.data(), buf.c_n.data(), buf.x.data(), nullptr, nullptr,
                     nullptr, s.T, s.B, /*training=*/true);
        state.ResumeTiming();
        lstm.backward(buf.dx.data(), buf.dh0.data(), buf.dc0.data(), buf.dy.data(), nullptr, nullptr);
        benchmark::DoNotOptimize(buf.dx.data());
        benchmark::DoNotOptimize(lstm.grads());
        benchmark::ClobberMemory();
    }
    set_gflops(state, 2.0 * forward_flops(s));
}

// fwd_bwd: one training step, training forward + backward (parameter gradients accumulate,
// dx is computed), timed together; FLOPs = 3x forward.
void BM_fwd_bwd(benchmark::State& state, Shape s, Variant v) {
    auto lstm = make_lstm(s, v);
    Buffers buf(s);
    for (auto _ : state) {
        lstm.forward(buf.y.data(), buf.h_n.data(), buf.c_n.data(), buf.x.data(), nullptr, nullptr,
                     nullptr, s.T, s.B, /*training=*/true);
        lstm.backward(buf.dx.data(), buf.dh0.data(), buf.dc0.data(), buf.dy.data(), nullptr, nullptr);
        benchmark::DoNotOptimize(buf.dx.data());
        benchmark::DoNotOptimize(lstm.grads());
        benchmark::ClobberMemory();
    }
    set_gflops(state, 3.0 * forward_flops(s));
}

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// sgemm_lstm: the forward's FLOPs as ONE Eigen GEMM, [T*B, I+H] x [I+H, G] -> [T*B, G]: what the
// engine could reach if the recurrence did not split the work into T dependent steps.
void BM_sgemm_lstm(benchmark::State& state, Shape s) {
    const Index M = s.T * s.B, K = s.I + s.H, N = 4 * s.H;
    RowMat a = RowMat::Random(M, K), b = RowMat::Random(K, N), c(M, N);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    set_gflops(state, 2.0 * double(M) * double(K) * double(N));
}

// sgemm_square: square float32 GEMM, the machine's roofline for this build and thread count.
void BM_sgemm_square(benchmark::State& state) {
    const Index n = state.range(0);
    RowMat a = RowMat::Random(n, n), b = RowMat::Random(n, n), c(n, n);
    for (auto _ : state) {
        c.noalias() = a * b;
        benchmark::DoNotOptimize(c.data());
        benchmark::ClobberMemory();
    }
    set_gflops(state, 2.0 * double(n) * double(n) * double(n));
}

// peak/<instruction>: multiply-adds a second of one core running only that instruction on
// 512-bit registers, 24 independent accumulators (more than latency x throughput), operands in
// registers. It says what each reduced-precision kernel can reach next to float32's FMA: on a
// Xeon with AMX (Sapphire Rapids class) vdpbf16ps ran at a quarter of vfmadd231ps's rate, so
// bfloat16 without the tiles peaks at half of float32's multiply-adds, not twice
// (bench/README.md). Compiled where this build's -march=native has the instruction.
template <int MacsPerInstruction>
void run_peak(benchmark::State& state, void (*loop)(long)) {
    constexpr long kIterations = 1 << 20;  // of 24 instructions
    for (auto _ : state) loop(kIterations);
    state.counters["GMAC/s"] = benchmark::Counter(
        double(kIterations) * 24 * MacsPerInstruction * double(state.iterations()),
        benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}
#define EIGENLSTM_PEAK_LOOP(name, insn)                                                       \
    void name(long n) {                                                                       \
        __asm__ volatile("vpxord %%zmm30, %%zmm30, %%zmm30\n\tvpxord %%zmm31, %%zmm31, %%zmm31\n" \
                         "1:\n\t" EIGENLSTM_PEAK_24(insn) "dec %0\n\tjnz 1b"                  \
                         : "+r"(n)                                                            \
                         :                                                                    \
                         : "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6",   \
                           "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",        \
                           "xmm14", "xmm15", "xmm16", "xmm17", "xmm18", "xmm19", "xmm20",     \
                           "xmm21", "xmm22", "xmm23", "xmm30", "xmm31");                      \
    }
#define EIGENLSTM_PEAK_1(insn, r) insn " %%zmm30, %%zmm31, %%zmm" #r "\n\t"
#define EIGENLSTM_PEAK_24(insn)                                                               \
    EIGENLSTM_PEAK_1(insn, 0) EIGENLSTM_PEAK_1(insn, 1) EIGENLSTM_PEAK_1(insn, 2)             \
    EIGENLSTM_PEAK_1(insn, 3) EIGENLSTM_PEAK_1(insn, 4) EIGENLSTM_PEAK_1(insn, 5)             \
    EIGENLSTM_PEAK_1(insn, 6) EIGENLSTM_PEAK_1(insn, 7) EIGENLSTM_PEAK_1(insn, 8)             \
    EIGENLSTM_PEAK_1(insn, 9) EIGENLSTM_PEAK_1(insn, 10) EIGENLSTM_PEAK_1(insn, 11)           \
    EIGENLSTM_PEAK_1(insn, 12) EIGENLSTM_PEAK_1(insn, 13) EIGENLSTM_PEAK_1(insn, 14)          \
    EIGENLSTM_PEAK_1(insn, 15) EIGENLSTM_PEAK_1(insn, 16) EIGENLSTM_PEAK_1(insn, 17)          \
    EIGENLSTM_PEAK_1(insn, 18) EIGENLSTM_PEAK_1(insn, 19) EIGENLSTM_PEAK_1(insn, 20)          \
    EIGENLSTM_PEAK_1(insn, 21) EIGENLSTM_PEAK_1(insn, 22) EIGENLSTM_PEAK_1(insn, 23)
#if defined(__AVX512F__)
EIGENLSTM_PEAK_LOOP(peak_fma, "vfmadd231ps")
#endif
#if defined(__AVX512VNNI__)
EIGENLSTM_PEAK_LOOP(peak_vpdpbusd, "vpdpbusd")
#endif
#if defined(__AVX512BF16__)
EIGENLSTM_PEAK_LOOP(peak_vdpbf16ps, "vdpbf16ps")
#endif

void register_peaks() {
#if defined(__AVX512F__)
    benchmark::RegisterBenchmark("peak/vfmadd231ps_f32", run_peak<16>, peak_fma);
#endif
#if defined(__AVX512VNNI__)
    benchmark::RegisterBenchmark("peak/vpdpbusd_int8", run_peak<64>, peak_vpdpbusd);
#endif
#if defined(__AVX512BF16__)
    benchmark::RegisterBenchmark("peak/vdpbf16ps_bf16", run_peak<32>, peak_vdpbf16ps);
#endif
}

// ---- the `# config` header ----------------------------------------------------------------

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) {
            const auto colon = line.find(':');
            return colon == std::string::npos ? line : line.substr(colon + 2);
        }
    return "unknown";
}

// The instruction sets this binary (its SGEMM rooflines) was compiled for; the engine reports
// its own level in the `engine` line.
std::string roofline_isa() {
    std::string s;
#if defined(__AVX512F__)
    s += "AVX512F ";
#endif
#if defined(__AVX2__)
    s += "AVX2 ";
#endif
#if defined(__FMA__)
    s += "FMA ";
#endif
#if defined(__AVX__) && !defined(__AVX2__)
    s += "AVX ";
#endif
#if !defined(__AVX__)
    s += "SSE-only ";
#endif
    return s.empty() ? s : s.substr(0, s.size() - 1);
}

std::string levels() {
    std::string s;
    for (const std::string& level : eigenlstm::isa_available()) s += (s.empty() ? "" : ", ") + level;
    return s;
}

std::string compiler() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#else
    return "unknown";
#endif
}

// CMake spells some options "SHELL:-fopenmp"; print them as the compiler saw them.
std::string flags(std::string s) {
    for (std::size_t at; (at = s.find("SHELL:")) != std::string::npos;) s.erase(at, 6);
    const std::size_t first = s.find_first_not_of(' ');
    return first == std::string::npos ? std::string() : s.substr(first);
}

void config(const char* key, const std::string& value) {
    std::printf("# config %-14s %s\n", key, value.c_str());
    benchmark::AddCustomContext(key, value);
}

// Threads: --threads=N (removed from argv before Google Benchmark parses it), else the
// environment variable EIGENLSTM_THREADS, else the engine's default (OpenMP's maximum).
int parse_threads(int& argc, char** argv) {
    int threads = 0;
    if (const char* env = std::getenv("EIGENLSTM_THREADS")) threads = std::atoi(env);
    int out = 1;
    for (int i = 1; i < argc; ++i) {
        if (std::strncmp(argv[i], "--threads=", 10) == 0)
            threads = std::atoi(argv[i] + 10);
        else
            argv[out++] = argv[i];
    }
    argc = out;
    return threads;
}

}  // namespace

int main(int argc, char** argv) {
    const int threads = parse_threads(argc, argv);
    if (threads > 0) eigenlstm::set_num_threads(threads);
    // The engine sets Eigen's GEMM threads in its own translation unit; set them here too so
    // the SGEMM rooflines use the same count whatever the linker did with Eigen's statics.
    Eigen::setNbThreads(eigenlstm::get_num_threads());

    benchmark::Initialize(&argc, argv);
    if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;

    config("compiler", compiler());
    config("build_type", EIGENLSTM_BENCH_BUILD_TYPE);
    config("flags", flags(EIGENLSTM_BENCH_CXX_FLAGS));
    const eigenlstm::BuildInfo engine = eigenlstm::build_info();
    config("engine", engine.isa + " back end (" + engine.compiler + ", SIMD: " + engine.simd +
                         "), levels here: " + levels());
    config("eigen", std::to_string(EIGEN_WORLD_VERSION) + "." + std::to_string(EIGEN_MAJOR_VERSION) +
                        "." + std::to_string(EIGEN_MINOR_VERSION) + " (SIMD: " +
                        Eigen::SimdInstructionSetsInUse() + ")");
    config("roofline_isa", roofline_isa());
    config("cpu", cpu_model());
#ifdef _OPENMP
    config("openmp", std::to_string(_OPENMP) + ", omp_get_max_threads=" +
                         std::to_string(omp_get_max_threads()));
#else
    config("openmp", "off");
#endif
    config("threads", std::to_string(eigenlstm::get_num_threads()) +
                          " (eigenlstm::get_num_threads; Eigen::nbThreads=" +
                          std::to_string(Eigen::nbThreads()) + ")");
    std::fflush(stdout);

    for (const Shape& s : kShapes) {
        const std::string suffix = std::string("/") + s.name;
        benchmark::RegisterBenchmark(("fwd_eval" + suffix).c_str(), BM_fwd_eval, s, kPlain)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("fwd_last" + suffix).c_str(), BM_fwd_last, s)->UseRealTime();
        benchmark::RegisterBenchmark(("fwd_train" + suffix).c_str(), BM_fwd_train, s)->UseRealTime();
        benchmark::RegisterBenchmark(("bwd_only" + suffix).c_str(), BM_bwd_only, s)->UseRealTime();
        benchmark::RegisterBenchmark(("fwd_bwd" + suffix).c_str(), BM_fwd_bwd, s, kPlain)
            ->UseRealTime();
        benchmark::RegisterBenchmark(("sgemm_lstm" + suffix).c_str(), BM_sgemm_lstm, s)->UseRealTime();
    }
    benchmark::RegisterBenchmark("sgemm_square", BM_sgemm_square)->Arg(2048)->UseRealTime();
    register_peaks();
    // The variants next to the plain cell of the same shape: fwd_eval/<shape>/<variant> and
    // fwd_bwd/<shape>/<variant> against fwd_eval/<shape> and fwd_bwd/<shape> above.
    for (const Shape& s : kShapes)
        for (const char* name : kVariantShapes) {
            if (std::strcmp(s.name, name) != 0) continue;
            for (const Variant& v : kVariants) {
                const std::string suffix = std::string("/") + s.name + "/" + v.name;
                benchmark::RegisterBenchmark(("fwd_eval" + suffix).c_str(), BM_fwd_eval, s, v)
                    ->UseRealTime();
                benchmark::RegisterBenchmark(("fwd_bwd" + suffix).c_str(), BM_fwd_bwd, s, v)
                    ->UseRealTime();
            }
        }

    benchmark::RunSpecifiedBenchmarks();
    benchmark::Shutdown();
    return 0;
}
