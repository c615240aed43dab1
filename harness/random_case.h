// Test support: seeded random data, and a paged cache filled the way the tests need it (scattered
// block tables, NaN in every slot no sequence uses).
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "mla/attention.h"
#include "mla/cache.h"

namespace mla::cpu {
struct KernelInfo;
}

namespace mla::test {

// A fresh seed per run (printed by the tests through SCOPED_TRACE), or MLA_TEST_SEED if set.
uint64_t test_seed();

// n trials, or a quarter of them (at least 1) when MLA_TEST_QUICK=1: the sanitized passes of
// scripts/test.sh run the long random sweeps on a smaller sample to fit the CI time.
int sweep_trials(int n);

struct CaseSpec {
  int batch = 1, q_len = 1, heads = 1, block_size = 64;
  std::vector<int> seq_lens;   // [batch]
  std::vector<int> q_lens;     // [batch] or empty: q_len each
  KvDType kv = KvDType::bf16;
  KvScale scale = KvScale::token;
  KvRotation rotation = KvRotation::none;
  Fp8Scale fp8_scale = Fp8Scale::exact;
  bool causal = true;
  float score_std = 2.f;   // spread of the attention scores
  bool sink = false;       // one key per sequence dominates (an attention sink)
  bool outliers = false;   // 8 latent channels (the same in every token) 12x the rest
  int spare_blocks = 3;    // blocks no sequence uses (filled with NaN)
};

struct Case {
  CaseSpec spec;
  DecodeParams p;
  PagedLatentCache cache;
  std::vector<int32_t> seq_lens, q_lens, block_table;
  std::vector<float> kv;       // [num_slots, 576] as written (NaN in unused slots)
  std::vector<float> q;        // [B, q_len, H, 576] values in the kernel's working type
  std::vector<float> q_ref;    // the values the fast kernels compute with (int8: quantized q)
  std::vector<uint16_t> q16;   // the same as raw bf16 / f16 bits
  DType q_dtype;
  CacheView view;              // cache.view(), for kernel arguments
  std::string describe() const;
};

Case make_case(const CaseSpec& spec, uint64_t seed);

// The ISAs this CPU runs a kernel of for `kv`, in registry order (portable always; avx512 and
// avx2 where supported): tests force each in turn, so the AVX2 kernels are tested on AVX-512 hosts.
std::vector<Isa> runnable_isas(KvDType kv, KvScale scale = KvScale::token);

// Every registered kernel this CPU runs, in registry order: the parameters of the kernel suites.
std::vector<const cpu::KernelInfo*> supported_kernels();

}  // namespace mla::test
