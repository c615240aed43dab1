// The machine's ceilings for the roofline: read bandwidth from memory, L2 and L3, and the peak
// rates of the three dot-product instruction families the attention kernels use (fp32 FMA, bf16
// dot, int8 dot). bench/roofline measures them once per machine and stores them as JSON; the
// benchmarks read the file back and print the fraction of the ceiling each run reached. Kept apart
// from the kernels because it measures the machine, not our code.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace mla {

// Rates are summed over `threads` threads running at once, one per core. Units: GB/s = 1e9 bytes/s;
// flops and ops count 2 per multiply-add, the way the attention kernels count theirs.
struct Ceilings {
  std::string cpu;  // model name, e.g. "AMD EPYC 9654 96-Core Processor"
  int threads = 0;
  // "native": measured with the widest instructions the CPU has; "avx2": limited to AVX2 (+FMA),
  // the ceilings of the AVX2 kernels on a CPU that also has AVX-512; "sse2" likewise.
  std::string limit = "native";
  double read_bw_mem_gbs = 0;  // buffers well beyond the L3
  double read_bw_l2_gbs = 0;   // half the L2 per thread
  double read_bw_l3_gbs = 0;   // L2 + a quarter of each thread's share of the L3
  double fp32_fma_gflops = 0;  // vfmadd231ps: 2 x 16 flops per zmm instruction
  double bf16_dot_gflops = 0;  // vdpbf16ps: 2 x 32 flops per zmm instruction
  double int8_dot_gops = 0;    // vpdpbusd: 2 x 64 ops per zmm instruction
  // The tile unit (AMX, docs/DESIGN.md §10), 0 where the CPU has none or the OS refused the tile
  // state: tdpbssd (2 x 16 x 16 x 64 ops) and tdpbf16ps (2 x 16 x 16 x 32 flops), four
  // independent accumulators. And the vector unit's exp2 rate (1e9 elements/s: the kernels'
  // polynomial on AVX-512; 0 without AVX-512), which bounds the softmax once tiles do the products.
  double amx_int8_gops = 0;
  double amx_bf16_gflops = 0;
  double exp_gelems = 0;
  // Which instructions produced each figure: "avx512f", "avx2_fma", "sse2"; "avx512_bf16" or
  // "<fp32 isa>_widen" (no bf16 dot: bf16 widened to fp32, so the fp32 FMA rate); "avx512_vnni",
  // "avx_vnni", "avx2" (vpmaddubsw + vpmaddwd + vpaddd), "sse2"; read: "avx512f", "avx2", "sse2".
  std::string fp32_isa, bf16_isa, int8_isa, read_isa;
};

// Runs every test with `threads` threads at once (each pinned to its own core where
// sched_setaffinity allows), each test for about seconds_per_test (best of a few trials), and sums
// the threads' rates. Picks the widest instructions this CPU supports for each figure.
// Throws mla::Error for threads < 1 or a non-positive seconds_per_test.
Ceilings measure_ceilings(int threads, double seconds_per_test = 0.2);

// {"cpu": "...", "ceilings": [{"threads": 1, "read_bw_mem_gbs": ..., ..., "int8_isa": "..."}, ...]}
// The cpu of the first entry names the machine.
std::string ceilings_to_json(const std::vector<Ceilings>& all);

// Reads a file written by ceilings_to_json. Throws mla::Error("<path>: <problem>") for a missing or
// unreadable file, invalid JSON, a missing or mistyped field, or a negative or non-finite rate.
std::vector<Ceilings> ceilings_from_json_file(const std::string& path);

// The native entry measured with exactly `threads` threads, or nullptr.
const Ceilings* find(const std::vector<Ceilings>& all, int threads);
// The same for a limit: "native", or "avx2" (the avx2 entry, else a native one measured with
// AVX2: on a CPU without AVX-512 the native ceilings are the AVX2 ones).
const Ceilings* find(const std::vector<Ceilings>& all, int threads, const std::string& limit);

// $MLA_CEILINGS if set and non-empty, else "ceilings.json" in the current directory.
std::string default_ceilings_path();

// ---- the measuring loops; internal to ceilings.cc / ceilings_avx512.cc ------------------------
namespace ceilings_detail {

// Independent accumulators per loop iteration in the AVX-512 compute loops. 16 of the 32 zmm
// registers hide a latency of up to 8 cycles at 2 instructions per cycle (FMA: 4 cycles on Zen 4
// and Golden Cove; vdpbf16ps and vpdpbusd: 5-6).
inline constexpr int kZmmChains = 16;

// Each runs `iters` iterations of kZmmChains independent instructions and returns a value derived
// from the accumulators so that the loop cannot be removed. Call only when the CPU has the feature.
double fp32_fma_avx512f(uint64_t iters);     // vfmadd231ps zmm
double bf16_dot_avx512bf16(uint64_t iters);  // vdpbf16ps zmm
double int8_dot_avx512vnni(uint64_t iters);  // vpdpbusd zmm
// ceilings_avx512amx.cc: whether the tile unit may be used (CPU bits and the OS's permission,
// requested once); 4 tdpbssd / tdpbf16ps per iteration; 8 x 16 exp2 per iteration.
bool amx_usable();
double amx_int8_loop(uint64_t iters);
double amx_bf16_loop(uint64_t iters);
double exp2_avx512f(uint64_t iters);

// Sums `bytes` bytes from p with 64-byte loads; p 64-byte aligned, bytes a multiple of 512.
uint64_t read_sum_avx512f(const void* p, size_t bytes);

// The widest instructions measure_ceilings may use; lower limits let the tests exercise the
// fallbacks (and show a user what the AVX2 paths could reach) on an AVX-512 machine.
enum class IsaLimit { native, avx2, sse2 };
Ceilings measure_ceilings_limited(int threads, double seconds_per_test, IsaLimit limit);

}  // namespace ceilings_detail
}  // namespace mla
