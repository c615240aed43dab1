// The paged-attention decode operator (DESIGN §2), FlashMLA's flash_mla_with_kvcache on a CPU.
//
//   q            [batch, q_len, num_heads, 576]   f32, bf16 or f16
//   cache        a CacheView of a PagedLatentCache or of caller memory: bf16, fp16, int8 or fp8
//   o            [batch, q_len, num_heads, 512]   f32  (or any strides: DecodeParams::o_strides)
//   lse          [batch, q_len, num_heads]        f32, natural log (or any strides: FlashMLA's
//                                                 [batch, num_heads, q_len] is lse_strides
//                                                 {H x q_len, 1, q_len})
//
// Sequence b brings q_lens[b] <= q_len new tokens (its last q_lens[b] cache positions). With causal
// masking, query row i (0-based) sees cache positions 0 .. seq_lens[b] - q_lens[b] + i:
//
//     seq_len = 6, q_len_b = 3        keys: 0 1 2 3 4 5
//       row 0 (position 3)                  x x x x . .
//       row 1 (position 4)                  x x x x x .
//       row 2 (position 5)                  x x x x x x
//
// Rows i >= q_lens[b] are padding, as is every row of a sequence with seq_len 0: o = 0, lse = -inf.
#pragma once

#include <cstdint>
#include <string_view>
#include <string>

#include "mla/cache.h"
#include "mla/decode_plan.h"
#include "mla/stage_times.h"
#include "mla/dtype.h"
#include "mla/export.h"

namespace mla {

// Strides of an output in elements, per sequence b, query row i and head h; an o row's 512 values
// are contiguous. All zero: dense, [batch, q_len, H, 512] for o and [batch, q_len, H] for lse.
struct OutputStrides {
  int64_t b = 0, i = 0, h = 0;
};
// The strides in effect for rows of `row` elements (512 for o, 1 for lse).
inline OutputStrides resolved(OutputStrides s, int q_len, int num_heads, int64_t row) {
  if (s.b || s.i || s.h) return s;
  return {int64_t(q_len) * num_heads * row, int64_t(num_heads) * row, row};
}

struct DecodeParams {
  int batch = 0;
  int q_len = 1;              // rows per sequence in q, o and lse
  int num_heads = 0;
  float softmax_scale = 0.f;  // multiplies q.k; DeepSeek's default is 1/sqrt(192)
  bool causal = true;
  const int32_t* seq_lens = nullptr;     // [batch] tokens in the cache, the new ones included
  const int32_t* q_lens = nullptr;       // [batch] or nullptr: every sequence has q_len rows
  const int32_t* block_table = nullptr;  // [batch, max_blocks_per_seq]; unused entries may be -1
  int max_blocks_per_seq = 0;
  OutputStrides o_strides, lse_strides;  // all zero: dense (no two rows may overlap)
};

// DeepSeek's softmax scale 1/sqrt(qk_nope_head_dim + qk_rope_head_dim) = 1/sqrt(192), rounded
// once from double.
MLA_API float default_softmax_scale();

// Floating-point operations of a decode of `rows` query rows (tokens x heads) over `keys` keys
// each: 2 x (576 for q.k + 512 for p.v) per row and key.
constexpr int64_t kFlopsPerKeyRow = 2 * (kQkDim + kLatentDim);
inline double decode_flops(int64_t rows, int64_t keys) {
  return double(kFlopsPerKeyRow) * double(rows) * double(keys);
}

inline int q_len_of(const DecodeParams& p, int b) { return p.q_lens ? p.q_lens[b] : p.q_len; }

// Last cache position (inclusive) that query row i of sequence b sees; -1 for a padding row.
inline int last_visible(const DecodeParams& p, int b, int i) {
  const int sl = p.seq_lens[b], ql = q_len_of(p, b);
  if (sl == 0 || i >= ql) return -1;
  return p.causal ? sl - ql + i : sl - 1;
}

// Checks the parameters against the cache's geometry before any work; throws mla::Error naming the
// problem. (decode() also checks the view itself, check_view, once its scales must be set.)
MLA_API void validate(const DecodeParams& p, const CacheView& cache);

enum class Impl { ref, fast };
enum class Reduction { separate, last };  // who merges split-KV partials (DESIGN §5)
enum class UpForm { resident, spill };    // output accumulator kept in registers/L1, or moved
                                          // out and back every chunk (the seed's "old" UP)
// Which kernels: best = the fastest this CPU supports; avx512 / avx2 / amx force that instruction
// set (an error when the CPU lacks it); portable forces the plain C++ kernels; amx_emu forces the
// AMX kernels over a scalar emulation of the tile unit (testing on CPUs without AMX: slow).
enum class Isa { best, portable, avx512, avx2, amx, amx_emu };
MLA_API const char* isa_name(Isa isa);  // "best", "portable", "avx512", "avx2", "amx", "amx-emu"
// The Isa named `name`; false (and *isa untouched) for any other string.
MLA_API bool isa_from_name(std::string_view name, Isa* isa);

struct DecodeOptions {
  Impl impl = Impl::fast;
  int threads = 0;    // workers; 0 = all cores
  int chunk = 4;      // KV tiles of kKvTile tokens per pipeline step (the seed's chunk)
  Reduction reduction = Reduction::last;
  UpForm up = UpForm::resident;
  Isa isa = Isa::best;
  const char* kernel = nullptr;  // a kernel by name (tests, benchmarks); nullptr: chosen by isa
  StageTimes* stage_times = nullptr;  // non-null: per-stage times are added here
  // With a rotated cache (CacheConfig::rotation): true when q's latent parts are already in the
  // rotated space (q R) and o is wanted there too (o R), as the attention layer folds R into its
  // projections; false: decode() rotates q and un-rotates o itself. No effect on other caches.
  bool qo_rotated = false;
};
constexpr int kKvTile = 64;  // tokens per KV tile: FlashMLA's block, whatever the cache's pages
// Bounds of the options and shapes (decode refuses beyond them, naming the value). Chunks past 64
// tiles (4096 tokens a step) only grow the per-thread scratch (at 1M it was 7 GB on 50 tokens);
// threads past 4096 exceed any CPU this runs on and only grow the plan and the partials.
// Heads and q_len: the kernels size per-item scratch by q_len x heads rows; 1024 each is 8x
// DeepSeek's 128 heads and far beyond any MTP depth.
constexpr int kMaxChunk = 64;
constexpr int kMaxThreads = 4096;
constexpr int kMaxHeads = 1024;
constexpr int kMaxQLen = 1024;

// The query type the kernel computes with, for a cache format and a requested query type:
// bf16 for bf16 and int8 caches, f16 for an fp16 cache (the int8 path then quantizes it).
MLA_API DType kernel_q_dtype(KvDType cache, DType requested);

// The query values the fast kernels compute with, from q already rounded to kernel_q_dtype:
// unchanged for bf16/fp16 caches; for int8 the latent part quantized per row to int8
// (scale max|q'|/127, q' = q * channel scale in channel mode) and de-quantized, the rope part as
// is. With a rotated cache the latent part is first rotated and rounded to the kernel's type (as
// decode() does with q in the original space), and the result un-rotated back to the original
// space. q and out: [rows, 576]. A reference on these values and CacheView::read sees exactly what
// the kernel saw.
MLA_API void kernel_query_values(const CacheView& cache, int64_t rows, const float* q, float* out);

// Runs the decode. Validates first; o and lse are untouched when it throws. Plans the step on
// every call (a convenience: a decode step of many layers makes one DecodePlan instead).
MLA_API void decode(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
                    const DecodeOptions& opt, float* o, float* lse);

// Runs the decode with a plan made by make_decode_plan for this shape and these lengths (refused,
// naming the difference, otherwise; so is opt.threads other than 0 or the plan's workers). No
// planning, no allocation: the partials go to `workspace` (plan.workspace_bytes() bytes, 64-byte
// aligned), or to the plan's own workspace when it is null.
MLA_API void decode(const DecodeParams& p, DType q_dtype, const void* q, const CacheView& cache,
                    const DecodeOptions& opt, const DecodePlan& plan, float* o, float* lse,
                    void* workspace = nullptr);

}  // namespace mla
