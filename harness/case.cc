// The random case builder and the check against the float64 reference.
#include "harness/case.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>

#include "core/rng.h"
#include "mla/status.h"
#include "ref/reference.h"
#include "harness/parallel.h"

namespace mla::bench {

namespace {

// core/rng.h's splitmix64, seeded per token so the parallel fill gives the same cache for any
// thread count.
using mla::Rng;

uint64_t mix(uint64_t seed, uint64_t a, uint64_t b) {
  Rng r{seed ^ (a * 0xd1b54a32d192ed03ull) ^ (b * 0x8cb92ba72f3d8dd7ull)};
  r.next();
  return r.next();
}

void check_spec(const CaseSpec& s) {
  MLA_CHECK(s.batch >= 1, "case: batch = " << s.batch << " must be at least 1");
  MLA_CHECK(s.heads >= 1, "case: heads = " << s.heads << " must be at least 1");
  MLA_CHECK(s.q_len >= 1, "case: q_len = " << s.q_len << " must be at least 1");
  MLA_CHECK(s.k >= s.q_len, "case: k = " << s.k << " is shorter than q_len = " << s.q_len
                                         << " (k counts the new tokens too)");
  MLA_CHECK(s.block_size >= 1, "case: block_size = " << s.block_size << " must be at least 1");
  MLA_CHECK(s.score_std > 0 && std::isfinite(s.score_std),
            "case: score_std = " << s.score_std << " must be positive");
}

int64_t blocks_per_seq(const CaseSpec& s) {
  return (int64_t(s.k) + s.block_size - 1) / s.block_size;
}

// The sequences' blocks plus spares (1/8 more, at least 2) that stay unused and hold NaN.
CacheConfig cache_config(const CaseSpec& s) {
  check_spec(s);
  const int64_t used = s.batch * blocks_per_seq(s);
  return CacheConfig{.num_blocks = used + std::max<int64_t>(2, used / 8),
                     .block_size = s.block_size,
                     .dtype = s.kv_dtype,
                     .scale = s.kv_scale,
                     .rotation = s.kv_rotation};
}

}  // namespace

std::string CaseSpec::name() const {
  std::string s = "b";  // appended piecewise: GCC 12 warns (-Wrestrict) on "b" + to_string()
  s += std::to_string(batch);
  s += "_k";
  s += std::to_string(k);
  return s;
}


Case::Case(const CaseSpec& spec)
    : spec_(spec),
      cache_(cache_config(spec)),
      q_dtype_(kernel_q_dtype(spec.kv_dtype, DType::bf16)) {
  const int B = spec.batch, bs = spec.block_size;
  const int threads = hardware_threads();

  // Scattered block tables: the allocator hands out the pool's blocks in shuffled order.
  BlockAllocator alloc(cache_.num_blocks(), bs, mix(spec.seed, 1, 0) | 1);
  std::vector<int> seqs(B);
  for (int b = 0; b < B; ++b) {
    seqs[b] = alloc.add_sequence();
    alloc.append(seqs[b], spec.k);
  }
  block_table_ = alloc.block_table_array(seqs, &max_blocks_);
  seq_lens_.assign(B, spec.k);

  // Random values are uniform in [-1, 1], so the static int8 scales are known without a pass
  // over the data: max |x| / 127.
  if (spec.kv_dtype == KvDType::int8 && spec.kv_scale == KvScale::tensor)
    cache_.set_tensor_scale(1.f / 127.f);
  if (spec.kv_dtype == KvDType::int8 && spec.kv_scale == KvScale::channel) {
    const std::vector<float> s(kLatentDim, 1.f / 127.f);
    cache_.set_channel_scales(s.data());
  }

  used_.assign(cache_.num_slots(), 0);
  const int64_t tokens = int64_t(B) * spec.k;
  for (int64_t t = 0; t < tokens; ++t) used_[alloc.slot(seqs[t / spec.k], int(t % spec.k))] = 1;

  parallel_for(tokens, threads, [&](int64_t begin, int64_t end) {
    float tok[kQkDim];
    for (int64_t t = begin; t < end; ++t) {
      const int b = int(t / spec.k), pos = int(t % spec.k);
      Rng r{mix(spec.seed, 2 + uint64_t(b), uint64_t(pos))};
      for (float& x : tok) x = r.uniform();
      const int64_t slot =
          int64_t(block_table_[int64_t(b) * max_blocks_ + pos / bs]) * bs + pos % bs;
      cache_.write(slot, tok);
    }
  });
  // NaN in every slot no sequence owns. An int8 cache stores NaN latents as 0 (quantization),
  // so in the token and group modes the slot's scales are set to NaN as well: the slot then
  // reads as NaN whole.
  {
    float nan_tok[kQkDim];
    std::fill(nan_tok, nan_tok + kQkDim, std::numeric_limits<float>::quiet_NaN());
    for (int64_t s = 0; s < cache_.num_slots(); ++s)
      if (!used_[s]) cache_.write(s, nan_tok);
    const int per_slot = kv_token_scales(spec.kv_scale);
    if (spec.kv_dtype == KvDType::int8 && per_slot) {
      Int8CacheContent content = cache_.export_int8();
      for (int64_t s = 0; s < cache_.num_slots(); ++s)
        if (!used_[s])
          std::fill_n(content.token_scale.begin() + s * per_slot, per_slot,
                      std::numeric_limits<float>::quiet_NaN());
      cache_.import_int8(content);
    }
  }

  // q uniform in [-a, a]: var(q.k * scale) = scale^2 * 576 * var(q) * var(k), var(k) = 1/3 and
  // var(q) = a^2 / 3, so a = score_std / (scale * sqrt(576 / 9)) = score_std / (8 * scale).
  const double a = spec.score_std / (8.0 * default_softmax_scale());
  const int64_t n = rows() * kQkDim;
  q_bits_.resize(n);
  q_f32_.resize(n);
  Rng r{mix(spec.seed, 0, 7)};
  for (int64_t i = 0; i < n; ++i) {
    const float x = float(a * r.uniform());
    q_bits_[i] = q_dtype_ == DType::f16 ? f32_to_f16(x) : f32_to_bf16(x);
    q_f32_[i] = q_dtype_ == DType::f16 ? f16_to_f32(q_bits_[i]) : bf16_to_f32(q_bits_[i]);
  }
}

DecodeParams Case::params() const {
  return DecodeParams{.batch = spec_.batch,
                      .q_len = spec_.q_len,
                      .num_heads = spec_.heads,
                      .softmax_scale = default_softmax_scale(),
                      .causal = true,
                      .seq_lens = seq_lens_.data(),
                      .q_lens = nullptr,
                      .block_table = block_table_.data(),
                      .max_blocks_per_seq = max_blocks_};
}

void run_decode(const Case& c, const DecodeOptions& opt, float* o, float* lse) {
  decode(c.params(), c.q_dtype(), c.q(), c.cache(), opt, o, lse);
}

// ---- checking --------------------------------------------------------------------------------

Reference compute_reference(const Case& c, double max_work) {
  const CaseSpec& s = c.spec();
  const double per_row = double(s.k) * kQkDim + double(s.k) * kLatentDim;  // k x 1088
  Reference r;
  if (double(c.rows()) * per_row <= max_work) {
    for (int b = 0; b < s.batch; ++b) r.seqs.push_back(b);
    for (int h = 0; h < s.heads; ++h) r.heads.push_back(h);
  } else {
    // First, last and two in between: enough to catch a wrong block table or sequence offset.
    for (int b : {0, s.batch / 3, 2 * s.batch / 3, s.batch - 1}) r.seqs.push_back(b);
    std::sort(r.seqs.begin(), r.seqs.end());
    r.seqs.erase(std::unique(r.seqs.begin(), r.seqs.end()), r.seqs.end());
    const double per_head = double(r.seqs.size()) * s.q_len * per_row;
    const int nh = std::clamp(int(max_work / per_head), 2, s.heads);
    for (int j = 0; j < nh; ++j)
      r.heads.push_back(nh == 1 ? 0 : int(std::lround(double(j) * (s.heads - 1) / (nh - 1))));
    r.heads.erase(std::unique(r.heads.begin(), r.heads.end()), r.heads.end());
  }
  r.sampled = int(r.seqs.size()) < s.batch || int(r.heads.size()) < s.heads;

  // The reference on a problem made of the sampled sequences and heads only.
  const int ns = int(r.seqs.size()), nh = int(r.heads.size());
  const int mb = c.max_blocks_per_seq();
  std::vector<int32_t> seq_lens(ns), table(int64_t(ns) * mb);
  std::vector<float> q(int64_t(ns) * s.q_len * nh * kQkDim);
  for (int j = 0; j < ns; ++j) {
    const int b = r.seqs[j];
    seq_lens[j] = c.seq_lens()[b];
    std::copy_n(c.block_table().begin() + int64_t(b) * mb, mb, table.begin() + int64_t(j) * mb);
    for (int i = 0; i < s.q_len; ++i)
      for (int hj = 0; hj < nh; ++hj)
        std::copy_n(c.q_f32() + ((int64_t(b) * s.q_len + i) * s.heads + r.heads[hj]) * kQkDim,
                    kQkDim, q.begin() + ((int64_t(j) * s.q_len + i) * nh + hj) * kQkDim);
  }
  DecodeParams p = c.params();
  p.batch = ns;
  p.num_heads = nh;
  p.seq_lens = seq_lens.data();
  p.block_table = table.data();
  r.o.resize(int64_t(ns) * s.q_len * nh * kLatentDim);
  r.lse.resize(int64_t(ns) * s.q_len * nh);
  ref::decode(p, q.data(), c.cache(), r.o.data(), r.lse.data());
  return r;
}

std::string CheckResult::summary() const {
  std::string out = cmp.summary();
  if (nonfinite) out += ", " + std::to_string(nonfinite) + " non-finite in the whole output";
  out += sampled ? " (sampled " + std::to_string(rows_checked) + " rows)"
                 : " (" + std::to_string(rows_checked) + " rows)";
  return out;
}

CheckResult check_output(const Case& c, const Reference& ref, const float* o, const float* lse,
                         const ref::Tolerance& tol) {
  const CaseSpec& s = c.spec();
  CheckResult res;
  res.sampled = ref.sampled;
  for (int64_t i = 0; i < c.o_size(); ++i) res.nonfinite += !std::isfinite(o[i]);
  for (int64_t i = 0; i < c.rows(); ++i) res.nonfinite += !std::isfinite(lse[i]);

  // The reference's rows of the output, gathered in the reference's order.
  const int ns = int(ref.seqs.size()), nh = int(ref.heads.size());
  res.rows_checked = int64_t(ns) * s.q_len * nh;
  std::vector<float> so(res.rows_checked * kLatentDim), sl(res.rows_checked);
  for (int j = 0; j < ns; ++j)
    for (int i = 0; i < s.q_len; ++i)
      for (int hj = 0; hj < nh; ++hj) {
        const int64_t row = (int64_t(ref.seqs[j]) * s.q_len + i) * s.heads + ref.heads[hj];
        const int64_t rrow = (int64_t(j) * s.q_len + i) * nh + hj;
        std::copy_n(o + row * kLatentDim, kLatentDim, so.begin() + rrow * kLatentDim);
        sl[rrow] = lse[row];
      }
  res.cmp = ref::compare(so.data(), sl.data(), ref.o.data(), ref.lse.data(), res.rows_checked,
                         kLatentDim, tol);
  res.pass = res.cmp.pass && res.nonfinite == 0;
  return res;
}

void poison(std::vector<float>& o, std::vector<float>& lse) {
  std::fill(o.begin(), o.end(), std::numeric_limits<float>::quiet_NaN());
  std::fill(lse.begin(), lse.end(), std::numeric_limits<float>::quiet_NaN());
}

cpu::KernelArgs whole_sequence_item(const Case& c, const DecodeParams& p, float* o, float* lse,
                                    int chunk, UpForm up) {
  const int heads = c.spec().heads;
  return cpu::KernelArgs{.p = &p,
                         .cache = &c.view(),
                         .q = c.q(),
                         .seq = 0,
                         .head_begin = 0,
                         .head_end = heads,
                         .kv_begin = 0,
                         .kv_end = c.spec().k,
                         .o = o,
                         .o_stride_i = int64_t(heads) * kLatentDim,
                         .o_stride_h = kLatentDim,
                         .lse = lse,
                         .lse_stride_i = heads,
                         .lse_stride_h = 1,
                         .chunk = chunk,
                         .up = up};
}

}  // namespace mla::bench
