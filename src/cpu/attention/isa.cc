// The run-time checks of the instruction sets in isa.h, compiled for the baseline target.
#include "cpu/attention/isa.h"

namespace mla::cpu {

bool cpu_has_avx512_set() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512bf16") &&
         __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
}

bool cpu_has_avx512f_set() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

bool cpu_has_avx2_set() {
  return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
         __builtin_cpu_supports("f16c");
}

}  // namespace mla::cpu

#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>

namespace mla::cpu {

namespace {

bool cpu_has_amx_bits() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
  constexpr unsigned kAmxBf16 = 1u << 22, kAmxTile = 1u << 24, kAmxInt8 = 1u << 25;
  return (d & (kAmxBf16 | kAmxTile | kAmxInt8)) == (kAmxBf16 | kAmxTile | kAmxInt8);
}

// Linux hands the tile data state out per process, on request; without it the first tile
// instruction raises SIGILL.
bool request_tile_permission() {
  constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}

}  // namespace

bool cpu_has_avx2vnni_set() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (!cpu_has_avx2_set() || !__get_cpuid_count(7, 1, &a, &b, &c, &d)) return false;
  constexpr unsigned kAvxVnni = 1u << 4;
  return (a & kAvxVnni) != 0;
}

bool cpu_has_amx_set() {
  static const bool ok = [] {
    const char* env = std::getenv("MLA_AMX");
    if (env && std::strcmp(env, "0") == 0) return false;
    return cpu_has_avx512_set() && cpu_has_amx_bits() && request_tile_permission();
  }();
  return ok;
}

}  // namespace mla::cpu
