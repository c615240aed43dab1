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
      decode_bf16_avx512bf16,
      decode_bf16_portable,
      decode_f16_avx512f,
      decode_f16_portable,
      decode_i8_avx512vnni,
      decode_i8_portable,
      decode_fp8_avx512bf16,
      decode_fp8_portable,
  };
  return all;
}

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
  for (const KernelInfo& k : kernel_registry())
    if (kernel_runs(k, kv, scale) && (isa == Isa::best || k.portable) && k.supported()) return k;
  MLA_FAIL("no kernel for a " << kv_dtype_name(kv) << " cache");
}

}  // namespace mla::cpu
