#include "harness/random_case.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <sstream>

#include "cpu/attention/kernel.h"

namespace mla::test {

uint64_t test_seed() {
  if (const char* s = std::getenv("MLA_TEST_SEED")) return std::strtoull(s, nullptr, 10);
  static const uint64_t seed = std::random_device{}() | (uint64_t(std::random_device{}()) << 32);
  return seed;
}

int sweep_trials(int n) {
  const char* q = std::getenv("MLA_TEST_QUICK");
  return q && std::string(q) == "1" ? std::max(1, n / 4) : n;
}

std::string Case::describe() const {
  std::ostringstream os;
  os << "batch " << spec.batch << " q_len " << spec.q_len << " heads " << spec.heads << " block "
     << spec.block_size << " kv " << kv_dtype_name(spec.kv) << "/" << kv_scale_name(spec.scale)
     << (spec.causal ? " causal" : " non-causal") << " score_std " << spec.score_std
     << (spec.sink ? " sink" : "") << (spec.outliers ? " outliers" : "") << " rotation "
     << kv_rotation_name(spec.rotation) << " fp8 scale " << fp8_scale_name(spec.fp8_scale)
     << " seq_lens";
  for (int s : seq_lens) os << " " << s;
  os << " q_lens";
  for (int s : q_lens) os << " " << s;
  return os.str();
}

static CacheConfig config_of(const CaseSpec& s) {
  int64_t blocks = s.spare_blocks;
  for (int l : s.seq_lens) blocks += (l + s.block_size - 1) / s.block_size;
  return CacheConfig{.num_blocks = std::max<int64_t>(blocks, 1), .block_size = s.block_size,
                     .dtype = s.kv, .scale = s.scale, .rotation = s.rotation,
                     .fp8_scale = s.fp8_scale};
}

Case make_case(const CaseSpec& spec, uint64_t seed) {
  Case c{.spec = spec, .p = {}, .cache = PagedLatentCache(config_of(spec)), .seq_lens = {},
         .q_lens = {}, .block_table = {}, .kv = {}, .q = {}, .q_ref = {}, .q16 = {}, .q_dtype = DType::bf16};
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int B = spec.batch;
  c.seq_lens.assign(spec.seq_lens.begin(), spec.seq_lens.end());
  c.q_lens = spec.q_lens.empty() ? std::vector<int32_t>(B, spec.q_len)
                                 : std::vector<int32_t>(spec.q_lens.begin(), spec.q_lens.end());
  // Scattered block tables: the allocator hands out blocks in shuffled order.
  BlockAllocator alloc(c.cache.num_blocks(), spec.block_size, seed | 1);
  std::vector<int> seqs;
  for (int b = 0; b < B; ++b) {
    seqs.push_back(alloc.add_sequence());
    alloc.append(seqs.back(), c.seq_lens[b]);
  }
  int mb = 0;
  c.block_table = alloc.block_table_array(seqs, &mb);

  const int64_t slots = c.cache.num_slots();
  c.kv.assign(slots * kQkDim, std::nanf(""));
  std::vector<int64_t> used;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t < c.seq_lens[b]; ++t) {
      const int64_t s = alloc.slot(seqs[b], t);
      used.push_back(s);
      const float boost = (spec.sink && t == 0) ? 4.f : 1.f;
      for (int d = 0; d < kQkDim; ++d)
        c.kv[s * kQkDim + d] = nd(rng) * boost * (spec.outliers && d < kLatentDim && d % 64 == 7 ? 12.f : 1.f);
    }
  c.cache.calibrate(c.kv.data(), used);
  c.cache.import_f32(c.kv.data());

  c.q_dtype = kernel_q_dtype(spec.kv, DType::f32);
  // Scores are q.k * scale with q, k ~ N(0, sigma_q^2), N(0, 1): std = sigma_q sqrt(576) scale.
  const float scale = default_softmax_scale();
  const float sigma_q = spec.score_std / (std::sqrt(float(kQkDim)) * scale);
  const size_t nq = size_t(B) * spec.q_len * spec.heads * kQkDim;
  c.q.resize(nq);
  c.q16.resize(nq);
  for (size_t i = 0; i < nq; ++i) {
    const float v = nd(rng) * sigma_q;
    c.q16[i] = c.q_dtype == DType::f16 ? f32_to_f16(v) : f32_to_bf16(v);
    c.q[i] = c.q_dtype == DType::f16 ? f16_to_f32(c.q16[i]) : bf16_to_f32(c.q16[i]);
  }
  c.q_ref.resize(nq);
  kernel_query_values(c.cache, int64_t(nq / kQkDim), c.q.data(), c.q_ref.data());
  c.p = DecodeParams{.batch = B, .q_len = spec.q_len, .num_heads = spec.heads,
                     .softmax_scale = scale, .causal = spec.causal, .seq_lens = c.seq_lens.data(),
                     .q_lens = c.q_lens.data(), .block_table = c.block_table.data(),
                     .max_blocks_per_seq = mb};
  c.view = c.cache.view();
  return c;
}

std::vector<Isa> runnable_isas(KvDType kv, KvScale scale) {
  std::vector<Isa> out;
  for (const cpu::KernelInfo& k : cpu::kernel_registry())
    if (k.kv == kv && cpu::kernel_runs(k, kv, scale) && k.supported() && std::find(out.begin(), out.end(), k.isa) == out.end())
      out.push_back(k.isa);
  return out;
}

std::vector<const cpu::KernelInfo*> supported_kernels() {
  std::vector<const cpu::KernelInfo*> v;
  for (const cpu::KernelInfo& k : cpu::kernel_registry())
    if (k.supported()) v.push_back(&k);
  return v;
}

}  // namespace mla::test
