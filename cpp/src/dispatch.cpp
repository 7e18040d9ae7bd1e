// Runtime dispatch: which instruction-set levels the CPU and the operating system support, the
// EIGENLSTM_MAX_ISA cap, and loading the back end of the chosen level (libeigenlstm_<level>.so,
// next to this library) once per process. Compiled for the baseline ISA, like all of the
// front end: this code must run on any CPU of the architecture.
#include <dlfcn.h>
#include <unistd.h>

#if defined(__linux__)
#include <sys/syscall.h>
#endif

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__x86_64__) || defined(__i386__)
#include <cpuid.h>
#endif

#include "backend.hpp"
#include "dispatch.hpp"

namespace eigenlstm {
namespace detail {
namespace {

// The levels a build can hold, low to high; a build holds the ones CMake compiled (on other
// architectures than x86-64 only "generic"). "native" exists only in a build made with
// EIGENLSTM_NATIVE=ON: compiled with -march=native for the machine that built it, it is
// assumed to run where it was built.
const char* const kLevels[] = {"generic", "avx2", "avx512", "native"};
constexpr int kNumLevels = 4;
constexpr int kAvx512 = 2;
constexpr int kNative = 3;

// EIGENLSTM_MAX_ISA's values, low to high: the levels, with the features of the reduced-
// precision kernels (lstm.hpp: isa_features) between avx512 and native. kCapLevel is the
// highest level each allows.
const char* const kCaps[] = {"generic",     "avx2",       "avx512", "avx512_vnni",
                             "avx512_bf16", "avx512_amx", "native"};
constexpr int kCapLevel[] = {0, 1, 2, 2, 2, 2, 3};
constexpr int kNumCaps = 7;
constexpr int kCapVnni = 3, kCapBf16 = 4, kCapAmx = 5;

#if defined(__x86_64__) || defined(__i386__)
// XCR0: which register states the operating system saves on a context switch. A CPU may have
// AVX-512 that the OS does not enable; using it then faults.
unsigned long long xcr0() {
    unsigned eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (static_cast<unsigned long long>(edx) << 32) | eax;
}

// Exactly the instructions each back end is compiled to use (CMakeLists.txt: -mavx2 -mfma;
// -mavx512f -mavx512bw -mavx512dq -mavx512vl), and the OS state they need.
bool cpu_supports(int level) {
    if (level == 0 || level == kNative) return true;
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return false;
    const bool osxsave = c & bit_OSXSAVE, avx = c & bit_AVX, fma = c & bit_FMA;
    if (!(osxsave && avx && fma)) return false;
    const unsigned long long xcr = xcr0();
    if ((xcr & 0x6) != 0x6) return false;  // SSE and AVX (YMM) state
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(b & bit_AVX2)) return false;
    if (level == 1) return true;
    if ((xcr & 0xE0) != 0xE0) return false;  // opmask, ZMM0-15 upper halves, ZMM16-31
    return (b & bit_AVX512F) && (b & bit_AVX512BW) && (b & bit_AVX512DQ) && (b & bit_AVX512VL);
}

// AVX512_VNNI (CPUID.7.0:ECX[11]) and AVX512_BF16 (CPUID.7.1:EAX[5]), on top of the avx512
// level's features and OS state.
bool cpu_has_vnni() {
    unsigned a, b, c, d;
    return cpu_supports(kAvx512) && __get_cpuid_count(7, 0, &a, &b, &c, &d) && (c & (1u << 11));
}
bool cpu_has_bf16() {
    unsigned a, b, c, d;
    return cpu_supports(kAvx512) && __get_cpuid_count(7, 1, &a, &b, &c, &d) && (a & (1u << 5));
}

// AMX-TILE, AMX-INT8 and AMX-BF16 (CPUID.7.0:EDX[24], [25], [22]), the tile state in XCR0
// (XTILECFG and XTILEDATA, bits 17 and 18), and Linux's permission for this process to use
// the tiles: the 8 KB of tile data are not in a thread's default signal and context-switch
// state, and a first tile instruction without the permission kills the process with SIGILL
// (arch_prctl ARCH_REQ_XCOMP_PERM, Linux 5.16). Asked once, when the back end is loaded.
bool cpu_has_amx() {
    unsigned a, b, c, d;
    if (!(cpu_has_vnni() && cpu_has_bf16() && __get_cpuid_count(7, 0, &a, &b, &c, &d))) return false;
    const unsigned need = (1u << 24) | (1u << 25) | (1u << 22);
    if ((d & need) != need || (xcr0() & 0x60000) != 0x60000) return false;
#if defined(__linux__) && defined(SYS_arch_prctl)
    constexpr int kReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return ::syscall(SYS_arch_prctl, kReqXcompPerm, kXfeatureXtiledata) == 0;
#else
    return false;
#endif
}
#else
bool cpu_supports(int level) { return level == 0 || level == kNative; }
bool cpu_has_vnni() { return false; }
bool cpu_has_bf16() { return false; }
bool cpu_has_amx() { return false; }
#endif

std::string library_dir() {
    Dl_info info{};
    if (dladdr(reinterpret_cast<void*>(&library_dir), &info) == 0 || !info.dli_fname)
        throw std::runtime_error("eigenlstm: cannot find the directory of the eigenlstm library");
    const std::string path = info.dli_fname;
    const auto slash = path.rfind('/');
    return slash == std::string::npos ? std::string(".") : path.substr(0, slash);
}

std::string backend_path(int level) {
    return library_dir() + "/libeigenlstm_" + kLevels[level] + ".so";
}

bool backend_exists(int level) { return ::access(backend_path(level).c_str(), R_OK) == 0; }

// The cap from EIGENLSTM_MAX_ISA, an index into kCaps (unset or empty: no cap).
int max_cap() {
    const char* v = std::getenv("EIGENLSTM_MAX_ISA");
    if (!v || !*v) return kNumCaps - 1;
    for (int i = 0; i < kNumCaps; ++i)
        if (std::string(v) == kCaps[i]) return i;
    std::string valid;
    for (int i = 0; i < kNumCaps; ++i) valid += std::string(i ? ", " : "") + kCaps[i];
    throw std::invalid_argument("EIGENLSTM_MAX_ISA must be one of " + valid + ", got '" +
                                std::string(v) + "'");
}

struct Loaded {
    const Backend* table = nullptr;
    std::string path;
    bool vnni = false, bf16 = false, amx = false;  // features in use
};

Loaded load() {
    const int cap = max_cap();
    int level = -1;
    for (int i = 0; i <= kCapLevel[cap]; ++i)
        if (cpu_supports(i) && backend_exists(i)) level = i;
    if (level < 0)
        throw std::runtime_error("eigenlstm: no back end found: " + backend_path(0) +
                                 " is missing");
    Loaded out;
    out.path = backend_path(level);
    // RTLD_LOCAL: the back end's symbols (its Eigen instantiations among them) never become
    // visible to other objects, so nothing else can bind to code built for another level.
    void* handle = ::dlopen(out.path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) throw std::runtime_error("eigenlstm: cannot load " + out.path + ": " + ::dlerror());
    using Entry = const Backend* (*)();
    const auto entry = reinterpret_cast<Entry>(::dlsym(handle, EIGENLSTM_BACKEND_SYMBOL));
    if (!entry) throw std::runtime_error("eigenlstm: " + out.path + " has no entry point");
    out.table = entry();
    if (!out.table || out.table->abi != kBackendAbi)
        throw std::runtime_error("eigenlstm: " + out.path +
                                 " was built for another version of eigenlstm");
    // The avx512 back end (and a native one built on such a CPU) holds their kernels.
    out.vnni = level >= kAvx512 && cap >= kCapVnni && cpu_has_vnni();
    out.bf16 = level >= kAvx512 && cap >= kCapBf16 && cpu_has_bf16();
    out.amx = out.vnni && out.bf16 && cap >= kCapAmx && cpu_has_amx();
    out.table->set_features(out.vnni, out.bf16, out.amx);
    return out;
}

const Loaded& loaded() {
    static const Loaded l = load();  // a failure throws here, and again on the next call
    return l;
}

}  // namespace

const Backend& backend() { return *loaded().table; }

}  // namespace detail

std::string isa() { return detail::backend().isa; }

std::vector<std::string> isa_available() {
    std::vector<std::string> out;
    for (int i = 0; i < detail::kNumLevels; ++i)
        if (detail::cpu_supports(i) && detail::backend_exists(i)) out.emplace_back(detail::kLevels[i]);
    return out;
}

std::vector<std::string> isa_features() {
    std::vector<std::string> out;
    if (detail::loaded().vnni) out.emplace_back(detail::kCaps[detail::kCapVnni]);
    if (detail::loaded().bf16) out.emplace_back(detail::kCaps[detail::kCapBf16]);
    if (detail::loaded().amx) out.emplace_back(detail::kCaps[detail::kCapAmx]);
    return out;
}

std::string quantized_kernel(Precision precision) {
    return detail::backend().quantized_kernel(precision);
}

BuildInfo build_info() {
    const detail::Backend& b = detail::backend();
    BuildInfo info;
    info.isa = b.isa;
    info.compiler = b.compiler;
    info.eigen = b.eigen;
    info.simd = b.simd;
    info.openmp = b.openmp;
    info.library = detail::loaded().path;
    return info;
}

bool set_flush_denormal(bool on) {
#if defined(__x86_64__) || defined(__i386__)
    detail::backend().set_flush_denormal(on);  // MXCSR's FTZ and DAZ bits (DenormalScope)
    return true;
#else
    (void)on;  // no such mode here: the setting stays off, as torch.set_flush_denormal does
    return false;
#endif
}
bool flush_denormal() { return detail::backend().get_flush_denormal(); }

void testing::fail_next_parallel_region(bool armed) {
    detail::backend().fail_next_parallel_region(armed);
}

}  // namespace eigenlstm
