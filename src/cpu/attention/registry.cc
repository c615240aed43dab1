// The one list of attention kernels: runtime selection, the tests and the benchmarks all read it,
// so a kernel added here is tested and benchmarked without further work.
#include "cpu/attention/kernel.h"
#include <string_view>

#include "mla/status.h"

namespace mla::cpu {

std::vector<StageOp> item_stages(int rows, int kv_begin, int kv_end, int chunk) {
  return stage_list({.split_qk = false, .rows = rows, .kv_begin = kv_begin, .kv_end = kv_end,
                     .chunk = chunk, .tile = kKvTile});
}

std::vector<StageOp> item_stages_split_qk(int rows, int kv_begin, int kv_end, int chunk) {
  return stage_list({.split_qk = true, .rows = rows, .kv_begin = kv_begin, .kv_end = kv_end,
                     .chunk = chunk, .tile = kKvTile});
}

const std::vector<KernelInfo>& kernel_registry() {
  // Fastest first within a format: select_kernel takes the first supported one.
  static const std::vector<KernelInfo> all = {
      decode_bf16_avx512amx,
      decode_bf16_avx512bf16,
      decode_bf16_avx2,
      decode_bf16_portable,
      decode_bf16_avx512amxemu,  // after the portable kernel: never the best, only forced
      decode_f16_avx512f,
      decode_f16_avx2,
      decode_f16_portable,
      decode_i8_avx512amx,
      decode_i8_avx512vnni,
      decode_i8_avx2vnni,
      decode_i8_avx2,
      decode_i8_portable,
      decode_i8_avx512amxemu,  // after the portable kernel: never the best, only forced
      decode_fp8_avx512amx,
      decode_fp8_avx512bf16,
      decode_fp8_portable,
      decode_fp8_avx512amxemu,
  };
  return all;
}

namespace {
const char* isa_needs(Isa isa) {
  switch (isa) {
    case Isa::avx2:
      return "AVX2, FMA, F16C";
    case Isa::amx:
      return "AMX tiles with int8 and bf16, AVX-512, and the tile state granted by the OS "
             "(arch_prctl ARCH_REQ_XCOMP_PERM)";
    default:
      return "AVX-512";
  }
}
}  // namespace

const KernelInfo& select_kernel(KvDType kv, Isa isa, const char* name, KvScale scale) {
  if (name) {
    for (const KernelInfo& k : kernel_registry()) {
      if (std::string_view(k.name) != name) continue;
      MLA_CHECK(k.kv == kv, "kernel " << name << " is for a " << kv_dtype_name(k.kv)
                                      << " cache, not " << kv_dtype_name(kv));
      MLA_CHECK(k.supported(), "kernel " << name << " needs instructions this CPU lacks");
      MLA_CHECK(kernel_runs(k, kv, scale), "kernel " << name << " does not run the "
                                               << kv_scale_name(scale) << " scale mode");
      return k;
    }
    MLA_FAIL("no kernel named " << name);
  }
  const KernelInfo* forced = nullptr;
  for (const KernelInfo& k : kernel_registry()) {
    if (!kernel_runs(k, kv, scale) || (isa != Isa::best && k.isa != isa)) continue;
    if (k.supported()) return k;
    forced = &k;
  }
  if (forced)
    MLA_FAIL("isa " << isa_name(isa) << ": this CPU lacks the instructions of " << forced->name
                    << " (" << isa_needs(isa) << "); use --isa best");
  MLA_FAIL("no " << isa_name(isa) << " kernel for a " << kv_dtype_name(kv) << " cache"
                 << (kv == KvDType::int8 ? std::string(" with ") + kv_scale_name(scale) + " scales"
                                         : std::string()));
}

}  // namespace mla::cpu

namespace mla {

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::best:
      return "best";
    case Isa::portable:
      return "portable";
    case Isa::avx512:
      return "avx512";
    case Isa::avx2:
      return "avx2";
    case Isa::amx:
      return "amx";
    case Isa::amx_emu:
      return "amx-emu";
  }
  return "?";
}

bool isa_from_name(std::string_view name, Isa* isa) {
  for (Isa i : {Isa::best, Isa::portable, Isa::avx512, Isa::avx2, Isa::amx, Isa::amx_emu})
    if (name == isa_name(i)) {
      *isa = i;
      return true;
    }
  return false;
}

}  // namespace mla
