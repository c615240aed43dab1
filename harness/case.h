// One benchmark case: a random paged-attention decode problem (DESIGN §2) with its cache, scattered
// block tables and queries, and the check of any output against the float64 reference (DESIGN §6).
// `mla bench`, the Google Benchmark cases (bench/bench_*.cc) and tests/test_bench_support.cc build
// their inputs here, so what is timed is what is checked. Most tests build theirs with
// harness/random_case.h instead (issue 17: one case builder for both is still to come).
//
// What the builder makes, for batch B sequences of k tokens each:
//   - a PagedLatentCache with a few spare blocks, handed out by a BlockAllocator with a shuffle
//     seed, so every block table is scattered over the pool;
//   - random kv, uniform in [-1, 1], in every slot a sequence owns; NaN in every other slot (the
//     spare blocks and the tail of each sequence's last block), so a kernel that reads a slot it
//     does not own produces NaN that the check sees;
//   - random q in the kernel's working type (kernel_q_dtype), scaled so that the scaled scores
//     q.k * softmax_scale have the standard deviation `score_std` (realistic softmax spread: not
//     flat, not one-hot).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cpu/attention/kernel.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/dtype.h"
#include "ref/compare.h"

namespace mla::bench {

struct CaseSpec {
  int batch = 1;
  int k = 4096;  // seq_len of every sequence: context tokens, its q_len new ones included
  int heads = 128;
  int q_len = 2;
  int block_size = 64;
  KvDType kv_dtype = KvDType::int8;
  KvScale kv_scale = KvScale::token;  // int8 only
  KvRotation kv_rotation = KvRotation::none;
  uint64_t seed = 1;
  double score_std = 1.5;  // standard deviation of q.k * softmax_scale over random q and k

  std::string name() const;  // "b8_k4096"
};

using mla::default_softmax_scale;  // the library's (mla/attention.h)

class Case {
 public:
  // Builds the case (uses all cores for the random fill). Throws mla::Error for a bad spec.
  explicit Case(const CaseSpec& spec);

  const CaseSpec& spec() const { return spec_; }
  // The decode parameters; the pointers stay valid as long as the Case lives.
  DecodeParams params() const;
  const PagedLatentCache& cache() const { return cache_; }
  // The cache's view, for kernel arguments (lives as long as the Case).
  const CacheView& view() const {
    view_ = cache_.view();
    return view_;
  }
  DType q_dtype() const { return q_dtype_; }            // bf16 (bf16 and int8 caches) or f16 (fp16)
  const uint16_t* q() const { return q_bits_.data(); }  // [B, q_len, H, 576] in q_dtype
  const float* q_f32() const { return q_f32_.data(); }  // the same values as float
  int64_t rows() const { return int64_t(spec_.batch) * spec_.q_len * spec_.heads; }
  int64_t o_size() const { return rows() * kLatentDim; }
  const std::vector<int32_t>& seq_lens() const { return seq_lens_; }
  const std::vector<int32_t>& block_table() const { return block_table_; }  // [B, max_blocks]
  int max_blocks_per_seq() const { return max_blocks_; }
  bool slot_used(int64_t slot) const { return used_[slot] != 0; }

 private:
  CaseSpec spec_;
  PagedLatentCache cache_;
  mutable CacheView view_;
  DType q_dtype_;
  std::vector<int32_t> seq_lens_;
  std::vector<int32_t> block_table_;
  int max_blocks_ = 0;
  std::vector<uint8_t> used_;  // [num_slots] 1 where a sequence owns the slot
  std::vector<uint16_t> q_bits_;
  std::vector<float> q_f32_;
};

// Runs mla::decode on the case.
void run_decode(const Case& c, const DecodeOptions& opt, float* o, float* lse);

// ---- checking against the float64 reference --------------------------------------------------

// DESIGN §6 for the kernels is ref::tolerance_for(kv, false). The BLAS baseline computes in fp32
// on the same rounded inputs: only fp32 rounding of sums over up to a few thousand keys separates
// it from float64.
constexpr ref::Tolerance kFp32Tolerance{
    .rel_err = 1e-4, .cosine = 0.99999, .lse_abs = 1e-4, .row_rel_err = 2e-4};

// The float64 reference on all of a case, or on a sample of its sequences and heads when the
// whole would cost more than `max_work` multiply-adds (rows x keys x 1088); the sample always
// holds the first and last sequence and head.
struct Reference {
  std::vector<int> seqs;    // sequences computed, increasing
  std::vector<int> heads;   // heads computed, increasing
  std::vector<double> o;    // [seqs, q_len, heads, 512]
  std::vector<double> lse;  // [seqs, q_len, heads]
  bool sampled = false;     // not every (sequence, head)
};
Reference compute_reference(const Case& c, double max_work = 1.5e8);

struct CheckResult {
  ref::Comparison cmp;       // on the reference's rows
  int64_t nonfinite = 0;     // non-finite values anywhere in o or lse (every row is a real query)
  int64_t rows_checked = 0;  // rows compared with the reference
  bool sampled = false;
  bool pass = false;            // cmp.pass and no non-finite value anywhere
  std::string summary() const;  // "rel 3.1e-03 cos 0.999990 lse 2.0e-04 (sampled 64 rows)"
};
// Compares o [B, q_len, H, 512] and lse [B, q_len, H] with the reference on its rows
// (ref::compare), and scans every element of o and lse for NaN/Inf.
CheckResult check_output(const Case& c, const Reference& ref, const float* o, const float* lse,
                         const ref::Tolerance& tol);

// Fills o and lse with NaN, so that an element the run does not write fails the check.
void poison(std::vector<float>& o, std::vector<float>& lse);

// One work item over all of sequence 0 of the case (every head, positions [0, k)), writing
// o [q_len, heads, 512] and lse [q_len, heads]: what the single-kernel benchmarks time. `p` must
// outlive the returned arguments.
cpu::KernelArgs whole_sequence_item(const Case& c, const DecodeParams& p, float* o, float* lse,
                                    int chunk, UpForm up);

}  // namespace mla::bench
