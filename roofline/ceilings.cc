// Measures the roofline ceilings (see ceilings.h): picks the measuring loops this CPU supports,
// sizes the read buffers from the cache hierarchy, runs the loops on pinned threads, and reads and
// writes the JSON file. The AVX-512 loops live in ceilings_avx512.cc; the AVX2 and SSE2 fallbacks
// are here, compiled per function with target attributes so this file stays baseline x86-64.
#include "roofline/ceilings.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sched.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <barrier>
#include <bit>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <system_error>
#include <thread>

#include "core/int_list.h"
#include "mla/status.h"

namespace mla {
namespace {

using ceilings_detail::IsaLimit;

// ---- fallback measuring loops -----------------------------------------------------------------
// Inline assembly for the same reason as in ceilings_avx512.cc: it fixes the instruction mix and
// keeps the accumulators in registers. %[a], %[b] (and %[ones]) are the loop-invariant operands;
// the compiler puts them in registers the loop does not clobber.

// clang-format off
#define MLA_X12(I) I(0) I(1) I(2) I(3) I(4) I(5) I(6) I(7) I(8) I(9) I(10) I(11)
// Accumulator i with its own temporary i + 6.
#define MLA_X6T(I) I(0, 6) I(1, 7) I(2, 8) I(3, 9) I(4, 10) I(5, 11)
#define MLA_CLOBBER_XMM0_11                                                                     \
  "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11"

// 12 accumulators: ymm latency 4-5 cycles x 2 per cycle on current cores, with a margin.
constexpr int kYmmChains = 12;
// 6 accumulators, each fed by a 2-instruction product into its own temporary.
constexpr int kXmmChains = 6;

#define MLA_ZERO_Y(i) "vpxor %%ymm" #i ", %%ymm" #i ", %%ymm" #i "\n\t"
#define MLA_STORE_Y(i) "vmovdqu %%ymm" #i ", " #i "*32(%[out])\n\t"
#define MLA_ZERO_X(i, t) "pxor %%xmm" #i ", %%xmm" #i "\n\t"
#define MLA_STORE_X(i, t) "movdqu %%xmm" #i ", " #i "*16(%[out])\n\t"
// clang-format on

template <class T>
double sum_out(const T* v, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(v[i]);
  return s;
}

__attribute__((target("avx2,fma"))) double fp32_fma_avx2(uint64_t iters) {
  if (iters == 0) return 0;
#define MLA_FMA_Y(i) "vfmadd231ps %[b], %[a], %%ymm" #i "\n\t"
  const __m256 a = _mm256_set1_ps(1.0f), b = _mm256_set1_ps(1.0f);
  alignas(32) float out[8 * kYmmChains];
  asm volatile(MLA_X12(MLA_ZERO_Y) "1:\n\t" MLA_X12(MLA_FMA_Y) "dec %[n]\n\t"
               "jnz 1b\n\t" MLA_X12(MLA_STORE_Y)
               : [n] "+r"(iters)
               : [a] "x"(a), [b] "x"(b), [out] "r"(out)
               : "cc", "memory", MLA_CLOBBER_XMM0_11);
#undef MLA_FMA_Y
  return sum_out(out, 8 * kYmmChains);
}

// AVX-VNNI (Alder Lake and later without AVX-512): the VEX form of vpdpbusd on ymm. The {vex}
// prefix stops the assembler from choosing the EVEX (AVX512-VNNI) encoding.
__attribute__((target("avx2,avxvnni"))) double int8_dot_avxvnni(uint64_t iters) {
  if (iters == 0) return 0;
#define MLA_DPBUSD_Y(i) "%{vex%} vpdpbusd %[b], %[a], %%ymm" #i "\n\t"
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5);
  alignas(32) int32_t out[8 * kYmmChains];
  asm volatile(MLA_X12(MLA_ZERO_Y) "1:\n\t" MLA_X12(MLA_DPBUSD_Y) "dec %[n]\n\t"
               "jnz 1b\n\t" MLA_X12(MLA_STORE_Y)
               : [n] "+r"(iters)
               : [a] "x"(a), [b] "x"(b), [out] "r"(out)
               : "cc", "memory", MLA_CLOBBER_XMM0_11);
#undef MLA_DPBUSD_Y
  return sum_out(out, 8 * kYmmChains);
}

// AVX2 int8 dot without VNNI, as int8 kernels do it: vpmaddubsw (u8 x s8 -> pairs summed to
// int16), vpmaddwd with ones (-> int32), vpaddd into the accumulator; 32 products per 3
// instructions.
__attribute__((target("avx2"))) double int8_dot_avx2(uint64_t iters) {
  if (iters == 0) return 0;
// clang-format off
#define MLA_I8_Y(i, t)                                       \
  "vpmaddubsw %[b], %[a], %%ymm" #t "\n\t"                   \
  "vpmaddwd %[ones], %%ymm" #t ", %%ymm" #t "\n\t"           \
  "vpaddd %%ymm" #t ", %%ymm" #i ", %%ymm" #i "\n\t"
// clang-format on
#define MLA_ZERO_YT(i, t) MLA_ZERO_Y(i)
#define MLA_STORE_YT(i, t) MLA_STORE_Y(i)
  const __m256i a = _mm256_set1_epi8(3), b = _mm256_set1_epi8(-5), ones = _mm256_set1_epi16(1);
  alignas(32) int32_t out[8 * kXmmChains];
  asm volatile(MLA_X6T(MLA_ZERO_YT) "1:\n\t" MLA_X6T(MLA_I8_Y) "dec %[n]\n\t"
               "jnz 1b\n\t" MLA_X6T(MLA_STORE_YT)
               : [n] "+r"(iters)
               : [a] "x"(a), [b] "x"(b), [ones] "x"(ones), [out] "r"(out)
               : "cc", "memory", MLA_CLOBBER_XMM0_11);
#undef MLA_I8_Y
#undef MLA_ZERO_YT
#undef MLA_STORE_YT
  return sum_out(out, 8 * kXmmChains);
}

// SSE2 (any x86-64): mulps + addps, 4 products per pair.
double fp32_mul_add_sse2(uint64_t iters) {
  if (iters == 0) return 0;
// clang-format off
#define MLA_MULADD_X(i, t)                   \
  "movaps %[a], %%xmm" #t "\n\t"             \
  "mulps %[b], %%xmm" #t "\n\t"              \
  "addps %%xmm" #t ", %%xmm" #i "\n\t"
  // clang-format on
  const __m128 a = _mm_set1_ps(1.0f), b = _mm_set1_ps(1.0f);
  alignas(16) float out[4 * kXmmChains];
  asm volatile(MLA_X6T(MLA_ZERO_X) "1:\n\t" MLA_X6T(MLA_MULADD_X) "dec %[n]\n\t"
               "jnz 1b\n\t" MLA_X6T(MLA_STORE_X)
               : [n] "+r"(iters)
               : [a] "x"(a), [b] "x"(b), [out] "r"(out)
               : "cc", "memory", MLA_CLOBBER_XMM0_11);
#undef MLA_MULADD_X
  return sum_out(out, 4 * kXmmChains);
}

// SSE2 int8 dot: pmaddwd on int8 values widened to int16 (the widening of the operand shared by
// many heads is amortised, so it is left out), 8 products per instruction.
double int8_dot_sse2(uint64_t iters) {
  if (iters == 0) return 0;
// clang-format off
#define MLA_MADD_X(i, t)                     \
  "movdqa %[a], %%xmm" #t "\n\t"             \
  "pmaddwd %[b], %%xmm" #t "\n\t"            \
  "paddd %%xmm" #t ", %%xmm" #i "\n\t"
  // clang-format on
  const __m128i a = _mm_set1_epi16(3), b = _mm_set1_epi16(-5);
  alignas(16) int32_t out[4 * kXmmChains];
  asm volatile(MLA_X6T(MLA_ZERO_X) "1:\n\t" MLA_X6T(MLA_MADD_X) "dec %[n]\n\t"
               "jnz 1b\n\t" MLA_X6T(MLA_STORE_X)
               : [n] "+r"(iters)
               : [a] "x"(a), [b] "x"(b), [out] "r"(out)
               : "cc", "memory", MLA_CLOBBER_XMM0_11);
#undef MLA_MADD_X
  return sum_out(out, 4 * kXmmChains);
}

// Reads: 8 independent sums, so one add per load never limits the load rate.
__attribute__((target("avx2"))) uint64_t read_sum_avx2(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  __m256i s0 = _mm256_setzero_si256(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0,
          s7 = s0;
  for (; c < end; c += 256) {
    s0 = _mm256_add_epi64(s0, _mm256_load_si256(reinterpret_cast<const __m256i*>(c)));
    s1 = _mm256_add_epi64(s1, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 32)));
    s2 = _mm256_add_epi64(s2, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 64)));
    s3 = _mm256_add_epi64(s3, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 96)));
    s4 = _mm256_add_epi64(s4, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 128)));
    s5 = _mm256_add_epi64(s5, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 160)));
    s6 = _mm256_add_epi64(s6, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 192)));
    s7 = _mm256_add_epi64(s7, _mm256_load_si256(reinterpret_cast<const __m256i*>(c + 224)));
  }
  s0 = _mm256_add_epi64(_mm256_add_epi64(_mm256_add_epi64(s0, s1), _mm256_add_epi64(s2, s3)),
                        _mm256_add_epi64(_mm256_add_epi64(s4, s5), _mm256_add_epi64(s6, s7)));
  alignas(32) uint64_t lanes[4];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), s0);
  return lanes[0] + lanes[1] + lanes[2] + lanes[3];
}

uint64_t read_sum_sse2(const void* p, size_t bytes) {
  const char* c = static_cast<const char*>(p);
  const char* end = c + bytes;
  __m128i s0 = _mm_setzero_si128(), s1 = s0, s2 = s0, s3 = s0, s4 = s0, s5 = s0, s6 = s0, s7 = s0;
  for (; c < end; c += 128) {
    s0 = _mm_add_epi64(s0, _mm_load_si128(reinterpret_cast<const __m128i*>(c)));
    s1 = _mm_add_epi64(s1, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 16)));
    s2 = _mm_add_epi64(s2, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 32)));
    s3 = _mm_add_epi64(s3, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 48)));
    s4 = _mm_add_epi64(s4, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 64)));
    s5 = _mm_add_epi64(s5, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 80)));
    s6 = _mm_add_epi64(s6, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 96)));
    s7 = _mm_add_epi64(s7, _mm_load_si128(reinterpret_cast<const __m128i*>(c + 112)));
  }
  s0 = _mm_add_epi64(_mm_add_epi64(_mm_add_epi64(s0, s1), _mm_add_epi64(s2, s3)),
                     _mm_add_epi64(_mm_add_epi64(s4, s5), _mm_add_epi64(s6, s7)));
  alignas(16) uint64_t lanes[2];
  _mm_store_si128(reinterpret_cast<__m128i*>(lanes), s0);
  return lanes[0] + lanes[1];
}

// ---- choosing the loops -----------------------------------------------------------------------

struct ComputeLoop {
  std::string isa;
  double (*run)(uint64_t iters) = nullptr;  // nullptr: take the fp32 figure (bf16 widened)
  double ops_per_iter = 0;                  // 2 per multiply-add
};

struct ReadLoop {
  std::string isa;
  uint64_t (*run)(const void* p, size_t bytes) = nullptr;
};

struct Loops {
  ComputeLoop fp32, bf16, int8;
  ComputeLoop amx_int8, amx_bf16, exp;  // run = nullptr: not measured (rate 0)
  ReadLoop read;
};

// AVX-VNNI: CPUID.(EAX=7,ECX=1):EAX bit 4. Read directly because clang's __builtin_cpu_supports
// does not know "avxvnni"; the OS support for ymm state is implied by the AVX2 check before it.
bool has_avx_vnni() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  return __get_cpuid_count(7, 1, &eax, &ebx, &ecx, &edx) && (eax & (1u << 4)) != 0;
}

Loops choose_loops(IsaLimit limit) {
  namespace cd = ceilings_detail;
  const bool allow512 = limit == IsaLimit::native;
  const bool allow256 = limit != IsaLimit::sse2;
  const bool avx512f = allow512 && __builtin_cpu_supports("avx512f");
  const bool avx2 = allow256 && __builtin_cpu_supports("avx2");
  const bool fma = allow256 && __builtin_cpu_supports("fma");
  constexpr double z = cd::kZmmChains, y = kYmmChains, x = kXmmChains;
  Loops l;
  if (avx512f) {
    l.fp32 = {"avx512f", cd::fp32_fma_avx512f, z * 2 * 16};
  } else if (avx2 && fma) {
    l.fp32 = {"avx2_fma", fp32_fma_avx2, y * 2 * 8};
  } else {
    l.fp32 = {"sse2", fp32_mul_add_sse2, x * 2 * 4};
  }
  if (allow512 && __builtin_cpu_supports("avx512bf16")) {
    l.bf16 = {"avx512_bf16", cd::bf16_dot_avx512bf16, z * 2 * 32};
  } else {
    // No bf16 dot product: kernels widen bf16 to fp32 (a shift) and use the FMA; the widening of
    // the key, shared by all heads, is amortised, so the fp32 rate is the bf16 ceiling.
    l.bf16 = {l.fp32.isa + "_widen", nullptr, 0};
  }
  if (allow512 && __builtin_cpu_supports("avx512vnni")) {
    l.int8 = {"avx512_vnni", cd::int8_dot_avx512vnni, z * 2 * 64};
  } else if (avx2 && has_avx_vnni()) {
    l.int8 = {"avx_vnni", int8_dot_avxvnni, y * 2 * 32};
  } else if (avx2) {
    l.int8 = {"avx2", int8_dot_avx2, x * 2 * 32};
  } else {
    l.int8 = {"sse2", int8_dot_sse2, x * 2 * 8};
  }
  if (avx512f) l.exp = {"avx512f", cd::exp2_avx512f, 8 * 16};
  if (allow512 && cd::amx_usable()) {
    l.amx_int8 = {"amx_int8", cd::amx_int8_loop, 4 * 2 * 16 * 16 * 64};
    l.amx_bf16 = {"amx_bf16", cd::amx_bf16_loop, 4 * 2 * 16 * 16 * 32};
  }
  if (avx512f) {
    l.read = {"avx512f", cd::read_sum_avx512f};
  } else if (avx2) {
    l.read = {"avx2", read_sum_avx2};
  } else {
    l.read = {"sse2", read_sum_sse2};
  }
  return l;
}

// ---- the machine ------------------------------------------------------------------------------

std::string read_first_line(const std::string& path) {
  std::ifstream f(path);
  std::string line;
  if (f) std::getline(f, line);
  return line;
}

// Parses a kernel CPU list such as "0-7,64-71" into the CPU numbers; empty when the file was
// missing or unreadable (the callers count at least one CPU).
std::vector<int> parse_cpu_list(const std::string& s) {
  try {
    return parse_int_list(s, "CPU list", 0, 1 << 20, /*ranges=*/true);
  } catch (const Error&) {
    return {};
  }
}

// "1024K" -> 1048576.
size_t parse_cache_size(const std::string& s) {
  char* end = nullptr;
  const unsigned long long v = std::strtoull(s.c_str(), &end, 10);
  if (end == s.c_str()) return 0;
  if (*end == 'K') return size_t(v) << 10;
  if (*end == 'M') return size_t(v) << 20;
  if (*end == 'G') return size_t(v) << 30;
  return size_t(v);
}

struct CacheInfo {
  size_t l2 = 0;       // per core
  size_t l3 = 0;       // one L3 instance
  int l3_sharing = 1;  // logical CPUs sharing that instance
};

// Sysfs first: glibc's sysconf reports wrong L3 sizes on some AMD guests (320 MiB for a 32 MiB
// L3 under KVM). Fallbacks when neither knows: a 1 MiB L2, and 2 MiB of L3 per CPU.
CacheInfo cache_info() {
  CacheInfo c;
  for (int i = 0; i < 8; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    const std::string level = read_first_line(dir + "level");
    if (level.empty()) break;
    const std::string type = read_first_line(dir + "type");
    if (type == "Instruction") continue;
    const size_t size = parse_cache_size(read_first_line(dir + "size"));
    if (level == "2") c.l2 = size;
    if (level == "3") {
      c.l3 = size;
      c.l3_sharing =
          std::max<int>(1, parse_cpu_list(read_first_line(dir + "shared_cpu_list")).size());
    }
  }
  const long ncpu = std::max(1L, sysconf(_SC_NPROCESSORS_ONLN));
  if (c.l2 == 0) c.l2 = std::max(0L, sysconf(_SC_LEVEL2_CACHE_SIZE));
  if (c.l2 == 0) c.l2 = size_t(1) << 20;
  if (c.l3 == 0) {
    c.l3 = std::max(0L, sysconf(_SC_LEVEL3_CACHE_SIZE));
    c.l3_sharing = int(ncpu);
  }
  if (c.l3 == 0) c.l3 = (size_t(2) << 20) * size_t(ncpu);
  return c;
}

std::string trim(std::string s) {
  const size_t b = s.find_first_not_of(" \t");
  const size_t e = s.find_last_not_of(" \t");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

std::string cpu_name() {
  unsigned regs[12] = {};
  if (__get_cpuid(0x80000000u, &regs[0], &regs[1], &regs[2], &regs[3]) && regs[0] >= 0x80000004u) {
    for (unsigned i = 0; i < 3; ++i)
      __get_cpuid(0x80000002u + i, &regs[4 * i], &regs[4 * i + 1], &regs[4 * i + 2],
                  &regs[4 * i + 3]);
    char name[49] = {};
    std::memcpy(name, regs, 48);
    std::string s = trim(name);
    if (!s.empty()) return s;
  }
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) == 0) {
      const size_t colon = line.find(':');
      if (colon != std::string::npos) return trim(line.substr(colon + 1));
    }
  }
  return "unknown x86-64";
}

// The CPUs this process may run on, one per physical core first, then the SMT siblings, so that
// n threads land on n different cores where there are n.
std::vector<int> cpus_one_per_core_first() {
  cpu_set_t set;
  CPU_ZERO(&set);
  if (sched_getaffinity(0, sizeof(set), &set) != 0) return {};
  std::vector<int> first, rest;
  std::set<int> cores_seen;
  for (int cpu = 0; cpu < CPU_SETSIZE; ++cpu) {
    if (!CPU_ISSET(cpu, &set)) continue;
    const std::vector<int> siblings = parse_cpu_list(read_first_line(
        "/sys/devices/system/cpu/cpu" + std::to_string(cpu) + "/topology/thread_siblings_list"));
    const int core = siblings.empty() ? cpu : siblings.front();
    (cores_seen.insert(core).second ? first : rest).push_back(cpu);
  }
  first.insert(first.end(), rest.begin(), rest.end());
  return first;
}

void pin_to(int cpu) {
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET(cpu, &set);
  (void)sched_setaffinity(0, sizeof(set), &set);  // unpinned threads still measure; just noisier
}

// ---- buffers ----------------------------------------------------------------------------------

struct FreeDeleter {
  void operator()(void* p) const { std::free(p); }
};
using Buffer = std::unique_ptr<char, FreeDeleter>;

constexpr size_t kKiB = size_t(1) << 10, kMiB = size_t(1) << 20, kGiB = size_t(1) << 30;

size_t round_up(size_t v, size_t m) { return (v + m - 1) / m * m; }

// 2 MiB-aligned so that transparent huge pages can back it: the memory test should measure DRAM,
// not page walks.
Buffer allocate(size_t bytes, const char* what) {
  void* p = std::aligned_alloc(2 * kMiB, round_up(bytes, 2 * kMiB));
  MLA_CHECK(p != nullptr, "roofline: cannot allocate " << (bytes >> 20) << " MiB for the " << what
                                                       << " bandwidth test");
#ifdef MADV_HUGEPAGE
  (void)madvise(p, round_up(bytes, 2 * kMiB), MADV_HUGEPAGE);
#endif
  return Buffer(static_cast<char*>(p));
}

struct BufferSizes {
  size_t mem, l3, l2;  // per thread, multiples of 4 KiB
};

// Per-thread read buffers:
//   L2:  half the L2, so the L1 cannot hold it and the L2 holds it with room to spare;
//   L3:  the L2 plus a quarter of this thread's share of its L3, so a cyclic read misses the L2
//        (even where the L3 is a victim cache beside it) and hits the L3. A quarter, not a half:
//        hosts may cap how much of the L3 one core can fill (on the 2-core Zen 4 KVM guest this was
//        written on, one core read 100 GB/s up to 9 MiB, 75 at 12 and 66 at 17 of a 32 MiB L3);
//   mem: 4x all L3s together (at least 256 MiB, at most 2 GiB or a quarter of the RAM), split
//        among the threads, so no cache helps.
BufferSizes buffer_sizes(int threads) {
  const CacheInfo c = cache_info();
  const long ncpu = std::max(1L, sysconf(_SC_NPROCESSORS_CONF));
  const size_t l3_instances = std::max<long>(1, ncpu / c.l3_sharing);
  const size_t l3_share = c.l3 / size_t(std::min(threads, c.l3_sharing));
  size_t mem_total = std::clamp(4 * c.l3 * l3_instances, 256 * kMiB, 2 * kGiB);
  const long pages = sysconf(_SC_PHYS_PAGES), page = sysconf(_SC_PAGESIZE);
  if (pages > 0 && page > 0) mem_total = std::min(mem_total, size_t(pages) * size_t(page) / 4);
  BufferSizes b;
  b.l2 = round_up(std::max(c.l2 / 2, 16 * kKiB), 4 * kKiB);
  b.l3 = round_up(c.l2 + l3_share / 4, 4 * kKiB);
  b.mem = round_up(std::max(mem_total / size_t(threads), 4 * b.l3), 4 * kKiB);
  return b;
}

// ---- running the tests ------------------------------------------------------------------------

enum Test { kFp32, kBf16, kInt8, kL2, kL3, kMem, kAmxInt8, kAmxBf16, kExp, kNumTests };

// Each trial lasts seconds_per_test / kTrials; the best trial counts (the first often runs before
// the clock has ramped up).
constexpr int kTrials = 4;
// A compute chunk: 32768 iterations of 12-16 instructions, 0.1-0.5 ms, so reading the clock after
// each chunk costs nothing and a trial ends within a fraction of a millisecond of its deadline.
constexpr uint64_t kComputeIters = uint64_t(1) << 15;
// A read chunk: 4 MiB (cycling through smaller buffers, stepping through larger ones).
constexpr size_t kReadChunk = 4 * kMiB;

std::atomic<uint64_t> g_sink{0};  // results of the loops, so that none is optimised away

struct ThreadState {
  const Loops* loops = nullptr;
  char* buf[kNumTests] = {};
  size_t bytes[kNumTests] = {};
  size_t offset[kNumTests] = {};
  double sink = 0;

  // Runs one chunk of test t; returns the work done (ops or bytes).
  double chunk(int t) {
    const ComputeLoop* c = t == kFp32      ? &loops->fp32
                           : t == kBf16    ? &loops->bf16
                           : t == kInt8    ? &loops->int8
                           : t == kAmxInt8 ? &loops->amx_int8
                           : t == kAmxBf16 ? &loops->amx_bf16
                           : t == kExp     ? &loops->exp
                                           : nullptr;
    if (c != nullptr) {
      sink += c->run(kComputeIters);
      return double(kComputeIters) * c->ops_per_iter;
    }
    size_t done = 0;
    while (done < kReadChunk) {
      const size_t n = std::min(kReadChunk - done, bytes[t] - offset[t]);
      sink += double(loops->read.run(buf[t] + offset[t], n));
      offset[t] = (offset[t] + n) % bytes[t];
      done += n;
    }
    return double(done);
  }
};

}  // namespace

namespace ceilings_detail {

Ceilings measure_ceilings_limited(int threads, double seconds_per_test, IsaLimit limit) {
  MLA_CHECK(threads >= 1, "roofline: threads = " << threads << " must be at least 1");
  MLA_CHECK(std::isfinite(seconds_per_test) && seconds_per_test > 0,
            "roofline: seconds per test = " << seconds_per_test << " must be positive");
  const Loops loops = choose_loops(limit);
  const BufferSizes sizes = buffer_sizes(threads);
  const std::vector<int> cpus = cpus_one_per_core_first();

  std::vector<int> tests = {kFp32, kInt8, kL2, kL3, kMem};
  if (loops.bf16.run != nullptr) tests.insert(tests.begin() + 1, kBf16);
  for (auto [t, loop] : {std::pair{kAmxInt8, &loops.amx_int8}, std::pair{kAmxBf16, &loops.amx_bf16},
                         std::pair{kExp, &loops.exp}})
    if (loop->run != nullptr) tests.push_back(t);

  // Allocated here, so that a failure throws before any thread starts; each thread touches its own
  // buffers first, so they sit in its NUMA node.
  std::vector<ThreadState> state(threads);
  std::vector<Buffer> owned;
  for (ThreadState& s : state) {
    s.loops = &loops;
    const std::pair<int, size_t> reads[] = {{kL2, sizes.l2}, {kL3, sizes.l3}, {kMem, sizes.mem}};
    for (auto [t, bytes] : reads) {
      owned.push_back(allocate(bytes, t == kL2 ? "L2" : t == kL3 ? "L3" : "memory"));
      s.buf[t] = owned.back().get();
      s.bytes[t] = bytes;
    }
  }

  const auto trial_time = std::chrono::duration<double>(seconds_per_test / kTrials);
  // rate[test][trial][thread], in ops/s or bytes/s
  std::vector<double> rate(size_t(kNumTests) * kTrials * size_t(threads), 0.0);
  std::barrier sync(threads);
  auto body = [&](int i) {
    if (size_t(i) < cpus.size()) pin_to(cpus[size_t(i)]);
    ThreadState& s = state[size_t(i)];
    for (int t : {kL2, kL3, kMem}) std::memset(s.buf[t], 1, s.bytes[t]);
    for (int t : tests) {
      s.chunk(t);  // warm up: caches filled, clocks up
      for (int trial = 0; trial < kTrials; ++trial) {
        sync.arrive_and_wait();
        const auto t0 = std::chrono::steady_clock::now();
        const auto deadline = t0 + trial_time;
        double work = 0;
        auto now = t0;
        do {
          work += s.chunk(t);
          now = std::chrono::steady_clock::now();
        } while (now < deadline);
        rate[(size_t(t) * kTrials + size_t(trial)) * size_t(threads) + size_t(i)] =
            work / std::chrono::duration<double>(now - t0).count();
      }
    }
    g_sink.fetch_add(std::bit_cast<uint64_t>(s.sink), std::memory_order_relaxed);
  };
  std::vector<std::thread> pool;
  std::string start_error;
  for (int i = 0; i < threads; ++i) {
    try {
      pool.emplace_back(body, i);
    } catch (const std::system_error& e) {
      // The threads already running wait at the barrier for all `threads`: take the missing ones
      // out of it so that they finish, then report.
      start_error = "roofline: cannot start thread " + std::to_string(i + 1) + " of " +
                    std::to_string(threads) + ": " + e.what();
      for (int k = i; k < threads; ++k) sync.arrive_and_drop();
      break;
    }
  }
  for (std::thread& th : pool) th.join();
  MLA_CHECK(start_error.empty(), start_error);

  // Threads of one trial ran at the same time, so their rates add; the best trial counts.
  auto best = [&](int t) {
    double b = 0;
    for (int trial = 0; trial < kTrials; ++trial) {
      double total = 0;
      for (int i = 0; i < threads; ++i)
        total += rate[(size_t(t) * kTrials + size_t(trial)) * size_t(threads) + size_t(i)];
      b = std::max(b, total);
    }
    return b * 1e-9;
  };
  Ceilings c;
  c.cpu = cpu_name();
  c.threads = threads;
  c.limit = limit == IsaLimit::native ? "native" : limit == IsaLimit::avx2 ? "avx2" : "sse2";
  c.read_bw_mem_gbs = best(kMem);
  c.read_bw_l2_gbs = best(kL2);
  c.read_bw_l3_gbs = best(kL3);
  c.fp32_fma_gflops = best(kFp32);
  c.bf16_dot_gflops = loops.bf16.run != nullptr ? best(kBf16) : c.fp32_fma_gflops;
  c.int8_dot_gops = best(kInt8);
  c.amx_int8_gops = loops.amx_int8.run != nullptr ? best(kAmxInt8) : 0;
  c.amx_bf16_gflops = loops.amx_bf16.run != nullptr ? best(kAmxBf16) : 0;
  c.exp_gelems = loops.exp.run != nullptr ? best(kExp) : 0;
  c.fp32_isa = loops.fp32.isa;
  c.bf16_isa = loops.bf16.isa;
  c.int8_isa = loops.int8.isa;
  c.read_isa = loops.read.isa;
  return c;
}

}  // namespace ceilings_detail

Ceilings measure_ceilings(int threads, double seconds_per_test) {
  return ceilings_detail::measure_ceilings_limited(threads, seconds_per_test,
                                                   ceilings_detail::IsaLimit::native);
}

// ---- JSON -------------------------------------------------------------------------------------

namespace {

constexpr const char* kRateFields[] = {"read_bw_mem_gbs", "read_bw_l2_gbs",  "read_bw_l3_gbs",
                                       "fp32_fma_gflops", "bf16_dot_gflops", "int8_dot_gops"};
constexpr const char* kIsaFields[] = {"fp32_isa", "bf16_isa", "int8_isa", "read_isa"};
// Rates files from before the AMX kernels lack (read as 0: not measured).
constexpr const char* kOptionalRateFields[] = {"amx_int8_gops", "amx_bf16_gflops", "exp_gelems"};

// The fields named by kRateFields and kIsaFields, in that order (C is Ceilings or const Ceilings).
template <class C>
auto rate_fields(C& c) {
  return std::array{&c.read_bw_mem_gbs, &c.read_bw_l2_gbs,  &c.read_bw_l3_gbs,
                    &c.fp32_fma_gflops, &c.bf16_dot_gflops, &c.int8_dot_gops};
}
template <class C>
auto optional_rate_fields(C& c) {
  return std::array{&c.amx_int8_gops, &c.amx_bf16_gflops, &c.exp_gelems};
}
template <class C>
auto isa_fields(C& c) {
  return std::array{&c.fp32_isa, &c.bf16_isa, &c.int8_isa, &c.read_isa};
}

}  // namespace

std::string ceilings_to_json(const std::vector<Ceilings>& all) {
  nlohmann::ordered_json j;
  j["cpu"] = all.empty() ? std::string() : all.front().cpu;
  j["ceilings"] = nlohmann::ordered_json::array();
  for (const Ceilings& c : all) {
    nlohmann::ordered_json e;
    e["threads"] = c.threads;
    e["limit"] = c.limit;
    for (int i = 0; i < 6; ++i) e[kRateFields[i]] = *rate_fields(c)[i];
    for (int i = 0; i < 3; ++i) e[kOptionalRateFields[i]] = *optional_rate_fields(c)[i];
    for (int i = 0; i < 4; ++i) e[kIsaFields[i]] = *isa_fields(c)[i];
    j["ceilings"].push_back(std::move(e));
  }
  return j.dump(2) + "\n";
}

std::vector<Ceilings> ceilings_from_json_file(const std::string& path) {
  std::ifstream f(path);
  MLA_CHECK(f, path << ": cannot open the ceilings file (" << std::strerror(errno)
                    << "); run roofline to measure this machine");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(f);
  } catch (const nlohmann::json::exception& e) {
    MLA_FAIL(path << ": not valid JSON: " << e.what());
  }
  MLA_CHECK(j.is_object(), path << ": the top level is " << j.type_name() << ", not an object");
  MLA_CHECK(j.contains("cpu") && j["cpu"].is_string(),
            path << ": \"cpu\" is missing or not a string");
  MLA_CHECK(j.contains("ceilings") && j["ceilings"].is_array(),
            path << ": \"ceilings\" is missing or not an array");
  const std::string cpu = j["cpu"].get<std::string>();
  std::vector<Ceilings> all;
  for (size_t k = 0; k < j["ceilings"].size(); ++k) {
    const nlohmann::json& e = j["ceilings"][k];
    const std::string where = path + ": ceilings[" + std::to_string(k) + "]";
    MLA_CHECK(e.is_object(), where << " is " << e.type_name() << ", not an object");
    Ceilings c;
    c.cpu = cpu;
    MLA_CHECK(e.contains("threads") && e["threads"].is_number_integer(),
              where << ".threads is missing or not an integer");
    const int64_t threads = e["threads"].get<int64_t>();
    MLA_CHECK(threads >= 1 && threads <= 1 << 20,
              where << ".threads = " << threads << " is not a thread count");
    c.threads = int(threads);
    if (e.contains("limit")) {  // optional: files from before the AVX2 kernels lack it
      MLA_CHECK(e["limit"].is_string() &&
                    (e["limit"] == "native" || e["limit"] == "avx2" || e["limit"] == "sse2"),
                where << ".limit = " << e["limit"].dump() << " is not native, avx2 or sse2");
      c.limit = e["limit"].get<std::string>();
    }
    for (const Ceilings& o : all)
      MLA_CHECK(o.threads != c.threads || o.limit != c.limit,
                where << " repeats threads = " << c.threads << " (limit " << c.limit << ")");
    for (int i = 0; i < 6; ++i) {
      const char* name = kRateFields[i];
      MLA_CHECK(e.contains(name) && e[name].is_number(),
                where << "." << name << " is missing or not a number");
      const double v = e[name].get<double>();
      MLA_CHECK(std::isfinite(v) && v >= 0,
                where << "." << name << " = " << v << " is not a finite non-negative rate");
      *rate_fields(c)[i] = v;
    }
    for (int i = 0; i < 3; ++i) {
      const char* name = kOptionalRateFields[i];
      if (!e.contains(name)) continue;
      MLA_CHECK(e[name].is_number(), where << "." << name << " is not a number");
      const double v = e[name].get<double>();
      MLA_CHECK(std::isfinite(v) && v >= 0,
                where << "." << name << " = " << v << " is not a finite non-negative rate");
      *optional_rate_fields(c)[i] = v;
    }
    for (int i = 0; i < 4; ++i) {
      const char* name = kIsaFields[i];
      if (!e.contains(name) && std::string(name) == "read_isa") continue;  // optional
      MLA_CHECK(e.contains(name) && e[name].is_string(),
                where << "." << name << " is missing or not a string");
      *isa_fields(c)[i] = e[name].get<std::string>();
    }
    all.push_back(std::move(c));
  }
  return all;
}

const Ceilings* find(const std::vector<Ceilings>& all, int threads) {
  return find(all, threads, "native");
}

const Ceilings* find(const std::vector<Ceilings>& all, int threads, const std::string& limit) {
  for (const Ceilings& c : all)
    if (c.threads == threads && c.limit == limit) return &c;
  if (limit == "avx2")
    for (const Ceilings& c : all)
      if (c.threads == threads && c.limit == "native" && c.fp32_isa == "avx2_fma") return &c;
  return nullptr;
}

std::string default_ceilings_path() {
  const char* env = std::getenv("MLA_CEILINGS");
  return env != nullptr && env[0] != '\0' ? std::string(env) : std::string("ceilings.json");
}

}  // namespace mla
