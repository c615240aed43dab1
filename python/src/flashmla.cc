// FlashMLA's calls: decode (flash_mla_with_kvcache's C++ half, on an array k_cache, FlashMLA's fp8
// bytes or a LatentCache), the Schedule behind get_mla_metadata's tile_scheduler_metadata, and
// the overhead benchmark's C++ timing loop.
//
// Everything that calls the library's decode API sits in namespace glue below: an array k_cache is
// read in place through a CacheView, lse written in FlashMLA's layout through output strides, and
// a schedule (FlashMLA's tile_scheduler_metadata) holds one mla::DecodePlan that every call of a
// decode step reuses. o is converted to q's type when that is not f32.
//
// Locking is per object: a decode holds its schedule (exclusively) and its LatentCache (shared)
// while it runs without the GIL, so decodes on different caches and schedules run at once. The
// library allows that: each kernel's scratch is the calling thread's own, and a decode that finds
// the process's worker pool busy runs its workers' items on its own thread.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <shared_mutex>
#include <string>
#include <vector>

#include "interop.h"
#include "latent_cache.h"
#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/decode_plan.h"
#include "mla/dtype.h"
#include "mla/plan.h"
#include "mla/status.h"

namespace mla_py {

using namespace nb::literals;

namespace {

// f32 -> bf16 rows, the same rounding as mla::f32_to_bf16; an AVX-512 clone where the CPU has it
// (the baseline SSE2 loop was a quarter of a small call's time).
__attribute__((target_clones("avx512f", "default")))
void to_bf16(uint16_t* d, const float* v, int n) {
  for (int k = 0; k < n; ++k) d[k] = mla::f32_to_bf16(v[k]);
}

// n floats into dst[i0 ..] of type t (f32, f16 or bf16).
void store_row(mla::DType t, void* dst, int64_t i0, const float* v, int n) {
  if (t == mla::DType::f32) {
    std::memcpy(static_cast<float*>(dst) + i0, v, size_t(n) * sizeof(float));
  } else if (t == mla::DType::f16) {
    uint16_t* d = static_cast<uint16_t*>(dst) + i0;
    for (int k = 0; k < n; ++k) d[k] = mla::f32_to_f16(v[k]);
  } else {
    to_bf16(static_cast<uint16_t*>(dst) + i0, v, n);
  }
}

// The C++ library's messages say seq_lens; FlashMLA's argument is cache_seqlens.
std::string flashmla_names(std::string m) {
  for (size_t at = 0; (at = m.find("seq_lens", at)) != std::string::npos; at += 13)
    m.replace(at, 8, "cache_seqlens");
  return m;
}

// ---- glue: the only code that calls the library's decode API --------------------------------
namespace glue {

// FlashMLA's tile_scheduler_metadata: the decode plan of one step, made by its first call (or by
// the older get_mla_metadata form) and reused by every later call, which must have the same shape
// and lengths (the library refuses others, naming the difference). With h_kv > 1 every kv head's
// group has the same shape, so one plan serves them all.
struct Schedule {
  explicit Schedule(int threads) : threads(threads) {}
  int threads;  // workers of the plan (0: all cores); a call with other threads is refused
  std::optional<mla::DecodePlan> plan;
  // Held by the decode that uses the plan (it makes the plan on first use, and the plan's
  // workspace holds that decode's partial results): the layers of one step, each decoding
  // with the same schedule, run one at a time; other schedules are not held up.
  mutable std::mutex mu;

  void make(int batch, const int32_t* seq_lens, const int32_t* q_lens, int q_len, int heads,
            int workers) {
    plan.emplace(mla::make_decode_plan({.batch = batch, .q_len = q_len, .num_heads = heads,
                                        .seq_lens = seq_lens, .q_lens = q_lens,
                                        .workers = workers, .kv_tile = mla::kKvTile}));
    threads = workers;
  }
};

struct Call {
  int batch, s_q, h_q, h_kv;
  mla::DType q_type;
  const void* q;                  // [batch, s_q, h_q, 576], contiguous
  const int32_t* seq_lens;        // [batch]
  const int32_t* q_lens;          // [batch] or nullptr
  const int32_t* block_table;     // [batch, max_blocks]
  int max_blocks;
  float scale;
  bool causal;
  int threads;
  Schedule* sched;                // nullptr: the library plans this call alone
  mla::DType out_type;
  void* out;                      // [batch, s_q, h_q, 512] of out_type
  float* lse;                     // [batch, h_q, s_q]: FlashMLA's layout, +inf for empty rows
};

mla::DecodeParams params_of(const Call& c, int heads) {
  return mla::DecodeParams{.batch = c.batch, .q_len = c.s_q, .num_heads = heads,
                           .softmax_scale = c.scale, .causal = c.causal && c.s_q > 1,
                           .seq_lens = c.seq_lens, .q_lens = c.q_lens,
                           .block_table = c.block_table, .max_blocks_per_seq = c.max_blocks};
}

// Runs heads [g*hg, (g+1)*hg) of the call against `cache` and writes them into c.out / c.lse.
void run_group(const Call& c, const mla::CacheView& cache, int g) {
  const int hg = c.h_q / c.h_kv;
  mla::DecodeParams p = params_of(c, hg);
  const int64_t rows = int64_t(c.batch) * c.s_q * hg;
  const size_t qes = mla::dtype_size(c.q_type);
  const void* q = c.q;
  std::vector<uint8_t> qg;
  if (c.h_kv > 1) {  // the group's query heads, gathered: the library takes a dense q
    qg.resize(rows * mla::kQkDim * qes);
    for (int64_t r = 0; r < int64_t(c.batch) * c.s_q; ++r)
      std::memcpy(qg.data() + r * hg * mla::kQkDim * qes,
                  static_cast<const uint8_t*>(c.q) + (r * c.h_q + int64_t(g) * hg) * mla::kQkDim * qes,
                  size_t(hg) * mla::kQkDim * qes);
    q = qg.data();
  }
  // lse (and o when f32) written in place through strides: lse is FlashMLA's [b, h_q, s_q].
  const bool direct = c.out_type == mla::DType::f32;
  p.lse_strides = {int64_t(c.h_q) * c.s_q, 1, c.s_q};
  float* lp = c.lse + int64_t(g) * hg * c.s_q;
  // Uninitialised on purpose (decode writes every element): zero-filling was a third of a small
  // call's binding time.
  std::unique_ptr<float[]> o;
  float* op;
  if (direct) {
    p.o_strides = {int64_t(c.s_q) * c.h_q * mla::kLatentDim, int64_t(c.h_q) * mla::kLatentDim,
                   mla::kLatentDim};
    op = static_cast<float*>(c.out) + int64_t(g) * hg * mla::kLatentDim;
  } else {
    o.reset(new float[rows * mla::kLatentDim]);
    op = o.get();
  }
  const mla::DecodeOptions opt{.threads = c.threads};
  if (c.sched) {
    if (!c.sched->plan) c.sched->make(c.batch, c.seq_lens, c.q_lens, c.s_q, hg, c.threads);
    mla::decode(p, c.q_type, q, cache, opt, *c.sched->plan, op, lp);
  } else {
    mla::decode(p, c.q_type, q, cache, opt, op, lp);
  }
  const float inf = std::numeric_limits<float>::infinity();
  for (int b = 0; b < c.batch; ++b)
    for (int i = 0; i < c.s_q; ++i)
      for (int h = 0; h < hg; ++h) {
        const int hq = g * hg + h;
        float& l = c.lse[(int64_t(b) * c.h_q + hq) * c.s_q + i];
        if (l == -inf) l = inf;  // FlashMLA's convention for rows with nothing to attend
        if (direct) continue;
        const int64_t r = (int64_t(b) * c.s_q + i) * hg + h;
        const int64_t dst = ((int64_t(b) * c.s_q + i) * c.h_q + hq) * mla::kLatentDim;
        store_row(c.out_type, c.out, dst, o.get() + r * mla::kLatentDim, mla::kLatentDim);
      }
}

// k_cache [num_blocks, block_size, h_kv, 576] bf16/fp16, strides (in elements) s_block, s_token,
// s_head and 1: a view of kv head g in the caller's memory per group, nothing copied.
void run_array(const Call& c, mla::DType k_type, const void* k, int64_t num_blocks, int block_size,
               int64_t s_block, int64_t s_token, int64_t s_head) {
  for (int g = 0; g < c.h_kv; ++g) {
    mla::CacheView v;
    v.format = k_type == mla::DType::f16 ? mla::KvDType::fp16 : mla::KvDType::bf16;
    v.blocks = num_blocks;
    v.tokens_per_block = block_size;
    v.kv = static_cast<const uint16_t*>(k) + int64_t(g) * s_head;
    v.kv_block_stride = s_block;
    v.kv_token_stride = s_token;
    run_group(c, v, g);
  }
}

}  // namespace glue

}  // namespace

void bind_flashmla(nb::module_& m) {
  // decode(q, k, ...): k is an array [num_blocks, block_size, h_kv, 576] or a LatentCache.
  m.def(
      "decode",
      [](nb::handle q_, bool q_bf16_bits, nb::handle k, bool k_bf16_bits, nb::handle block_table_,
         nb::handle seq_lens_, nb::handle q_lens_, float scale, bool causal, int threads,
         glue::Schedule* sched, nb::handle out_, nb::handle lse_) {
        const Array q(q_, "q"), block_table(block_table_, "block_table"), seq_lens(seq_lens_, "cache_seqlens");
        std::optional<Array> q_lens;
        if (!q_lens_.is_none()) q_lens.emplace(q_lens_, "q_lens");
        const mla::DType qt = float_type(q, q_bf16_bits, "q");
        if (q.ndim() != 4 || q.shape(3) != size_t(mla::kQkDim))
          throw nb::value_error(("q.shape = " + shape_str(q) +
                                 "; expected (batch, seq_len_q, num_heads_q, 576)").c_str());
        const int batch = int(q.shape(0)), s_q = int(q.shape(1)), h_q = int(q.shape(2));
        if (s_q < 1 || h_q < 1)
          throw nb::value_error(("q.shape = " + shape_str(q) + ": seq_len_q and num_heads_q must be at least 1").c_str());
        require_int32(block_table, "block_table");
        require_shape(block_table, "block_table", {batch, -1});
        require_int32(seq_lens, "cache_seqlens");
        require_shape(seq_lens, "cache_seqlens", {batch});
        if (q_lens) {
          require_int32(*q_lens, "q_lens");
          require_shape(*q_lens, "q_lens", {batch});
        }
        if (threads < 0)
          throw nb::value_error(("threads = " + std::to_string(threads) + " is negative").c_str());
        LatentCache* lc = nullptr;
        std::optional<Array> karr;
        int h_kv = 1, block_size = 0;
        int64_t num_blocks = 0;
        mla::DType kt = mla::DType::bf16;
        bool fp8 = false;  // k_cache uint8: FlashMLA's 656-byte fp8 tokens (is_fp8_kvcache)
        if (nb::try_cast(k, lc)) {
          block_size = lc->cache.block_size();
        } else if (Array ka(k, "k_cache"); ka.dtype().code == kUInt && ka.dtype().bits == 8) {
          // [num_blocks, page_block_size, 656] or [num_blocks, page_block_size, 1, 656]; each
          // token's 656 bytes contiguous, blocks and tokens at any byte stride (FlashMLA pads).
          const bool ok = (ka.ndim() == 3 || (ka.ndim() == 4 && ka.shape(2) == 1)) &&
                          ka.shape(ka.ndim() - 1) == size_t(mla::kFp8TokenBytes) && ka.shape(1) >= 1 &&
                          ka.stride(ka.ndim() - 1) == 1;
          if (!ok)
            throw nb::value_error(("fp8 k_cache.shape = " + shape_str(ka) +
                                   "; expected (num_blocks, page_block_size, 656) or (num_blocks, "
                                   "page_block_size, 1, 656) uint8 with each token's 656 bytes contiguous").c_str());
          if (ka.shape(0) > 1 && ka.stride(0) < int64_t(ka.shape(1)) * ka.stride(1))
            throw nb::value_error(("fp8 k_cache strides: block stride " + std::to_string(ka.stride(0)) +
                                   " bytes overlaps its " + std::to_string(ka.shape(1)) + " tokens").c_str());
          if (ka.shape(1) > 1 && ka.stride(1) < mla::kFp8TokenBytes)
            throw nb::value_error(("fp8 k_cache strides: token stride " + std::to_string(ka.stride(1)) +
                                   " bytes is under 656").c_str());
          fp8 = true;
          num_blocks = int64_t(ka.shape(0));
          block_size = int(ka.shape(1));
          karr.emplace(std::move(ka));
        } else {
          kt = float_type(ka, k_bf16_bits, "k_cache");
          if (kt == mla::DType::f32)
            throw nb::type_error("k_cache has dtype float32; expected bfloat16 or float16 (the cache "
                                 "holds 16-bit values; mla.LatentCache also offers int8)");
          if (ka.ndim() != 4 || ka.shape(3) != size_t(mla::kQkDim) || ka.shape(1) < 1 || ka.shape(2) < 1)
            throw nb::value_error(("k_cache.shape = " + shape_str(ka) +
                                   "; expected (num_blocks, page_block_size, num_heads_k, 576)").c_str());
          num_blocks = int64_t(ka.shape(0));
          block_size = int(ka.shape(1));
          h_kv = int(ka.shape(2));
          if (h_q % h_kv != 0)
            throw nb::value_error(("num_heads_q = " + std::to_string(h_q) +
                                   " is not a multiple of num_heads_k = " + std::to_string(h_kv)).c_str());
          karr.emplace(std::move(ka));
        }
        std::vector<uint8_t> hq, hb, hs, hl, hk;
        const void* qd = contiguous(q, hq);
        glue::Call c{.batch = batch, .s_q = s_q, .h_q = h_q, .h_kv = h_kv, .q_type = qt, .q = qd,
                     .seq_lens = static_cast<const int32_t*>(contiguous(seq_lens, hs)),
                     .q_lens = q_lens ? static_cast<const int32_t*>(contiguous(*q_lens, hl)) : nullptr,
                     .block_table = static_cast<const int32_t*>(contiguous(block_table, hb)),
                     .max_blocks = int(block_table.shape(1)), .scale = scale, .causal = causal,
                     .threads = threads, .sched = sched, .out_type = qt};
        if (batch > 0 && c.max_blocks < 1)
          throw nb::value_error(("block_table.shape = " + shape_str(block_table) +
                                 ": at least one column is needed").c_str());
        for (int b = 0; b < batch; ++b)  // FlashMLA's causal rows need seq_len >= seq_len_q
          if (c.seq_lens[b] > 0 && c.seq_lens[b] < (c.q_lens ? c.q_lens[b] : s_q))
            throw nb::value_error(("cache_seqlens[" + std::to_string(b) + "] = " +
                                   std::to_string(c.seq_lens[b]) + " is shorter than its " +
                                   std::to_string(c.q_lens ? c.q_lens[b] : s_q) +
                                   " query tokens (a non-empty sequence holds its new tokens)").c_str());
        // k_cache: read through its strides where its rows (576 values) are contiguous, else one
        // copy first.
        const void* kd = nullptr;
        int64_t ks[3] = {0, 0, 0};
        if (karr && fp8) {
          kd = karr->data();
          ks[0] = karr->stride(0);
          ks[1] = karr->shape(1) > 1 ? karr->stride(1) : mla::kFp8TokenBytes;
        } else if (karr) {
          if (karr->stride(3) == 1) {
            kd = karr->data();
            for (int i = 0; i < 3; ++i) ks[i] = karr->stride(i);
          } else {
            kd = contiguous(*karr, hk);
            ks[2] = mla::kQkDim;
            ks[1] = int64_t(h_kv) * mla::kQkDim;
            ks[0] = int64_t(block_size) * h_kv * mla::kQkDim;
          }
        }
        // out and lse come from the Python layer (allocating there is cheaper than exporting new
        // arrays from here): out [b, s_q, h_q, 512] of q's type, lse [b, h_q, s_q] float32.
        const Array out(out_, "out", true), lse(lse_, "lse", true);
        const auto contig = [](const Array& a) {
          int64_t st = 1;
          for (size_t i = a.ndim(); i-- > 0; st *= int64_t(a.shape(i)))
            if (a.shape(i) != 1 && a.stride(i) != st) return false;  // torch: any stride at extent 1
          return true;
        };
        const auto same = [](auto& a, std::initializer_list<size_t> want) {
          size_t i = 0;
          for (size_t w : want) if (a.ndim() <= i || a.shape(i++) != w) return false;
          return a.ndim() == want.size();
        };
        if (!same(out, {size_t(batch), size_t(s_q), size_t(h_q), size_t(mla::kLatentDim)}) ||
            out.itemsize() != mla::dtype_size(qt) || !contig(out) || !contig(lse) ||
            lse.dtype().code != kFloat || lse.itemsize() != 4 ||
            !same(lse, {size_t(batch), size_t(h_q), size_t(s_q)}))
          throw nb::value_error("out / lse buffers do not match q (internal to mla/__init__.py)");
        c.out = out.mutable_data();
        c.lse = static_cast<float*>(lse.mutable_data());
        try {
          nb::gil_scoped_release unlocked;
          // The schedule, then the cache (shared: decodes of one cache run at once, its writes
          // wait). An array k_cache is the caller's memory, as in FlashMLA.
          std::unique_lock<std::mutex> sched_lock;
          if (sched) sched_lock = std::unique_lock<std::mutex>(sched->mu);
          std::shared_lock<std::shared_mutex> cache_lock;
          if (lc) cache_lock = std::shared_lock<std::shared_mutex>(lc->mu);
          if (lc) {
            glue::run_group(c, lc->cache.view(), 0);
          } else if (fp8) {
            mla::CacheView v;
            v.format = mla::KvDType::fp8;
            v.blocks = num_blocks;
            v.tokens_per_block = block_size;
            v.fp8 = static_cast<const uint8_t*>(kd);
            v.kv_block_stride = num_blocks > 1 ? ks[0] : int64_t(block_size) * ks[1];
            v.kv_token_stride = ks[1];
            glue::run_group(c, v, 0);
          } else {
            glue::run_array(c, kt, kd, num_blocks, block_size, ks[0], ks[1], ks[2]);
          }
        } catch (const mla::Error& e) {
          throw nb::value_error(flashmla_names(e.what()).c_str());
        }

      },
      "q"_a, "q_bf16_bits"_a, "k_cache"_a, "k_bf16_bits"_a, "block_table"_a, "cache_seqlens"_a,
      "q_lens"_a.none(), "softmax_scale"_a, "causal"_a, "threads"_a, "schedule"_a.none(), "out"_a,
      "lse"_a);

  // FlashMLA's tile_scheduler_metadata: holds one mla::DecodePlan, made by make() or by the first
  // decode that uses it, and reused by every later decode (which must match its shape).
  nb::class_<glue::Schedule>(m, "Schedule")
      .def(nb::init<int>(), "threads"_a)
      .def_prop_ro("threads", [](const glue::Schedule& s) {
        const auto lock = lock_releasing_gil(s.mu);  // a decode's first use may be making the plan
        return s.threads;
      })
      .def_prop_ro("ready", [](const glue::Schedule& s) {
        const auto lock = lock_releasing_gil(s.mu);
        return s.plan.has_value();
      })
      .def(
          "make",
          [](glue::Schedule& s, nb::handle seq_lens_, nb::handle q_lens_, int q_len, int heads,
             int threads) {
            const Array seq_lens(seq_lens_, "cache_seqlens");
            std::optional<Array> q_lens;
            if (!q_lens_.is_none()) q_lens.emplace(q_lens_, "q_lens");
            require_int32(seq_lens, "cache_seqlens");
            require_shape(seq_lens, "cache_seqlens", {-1});
            std::vector<uint8_t> hs, hl;
            const auto* sl = static_cast<const int32_t*>(contiguous(seq_lens, hs));
            const int32_t* ql = nullptr;
            if (q_lens) {
              require_int32(*q_lens, "q_lens");
              require_shape(*q_lens, "q_lens", {int64_t(seq_lens.shape(0))});
              ql = static_cast<const int32_t*>(contiguous(*q_lens, hl));
            }
            if (threads < 0)
              throw nb::value_error(("threads = " + std::to_string(threads) + " is negative").c_str());
            try {
              const auto lock = lock_releasing_gil(s.mu);  // not while a decode uses it
              s.make(int(seq_lens.shape(0)), sl, ql, q_len, heads, threads);
            } catch (const mla::Error& e) {
              throw nb::value_error(flashmla_names(e.what()).c_str());
            }
          },
          "cache_seqlens"_a, "q_lens"_a.none(), "q_len"_a, "num_heads"_a, "threads"_a)
      // The plan's work split: num_workers, worker_offsets, items [n, 6] (seq, head_begin,
      // head_end, kv_begin, kv_end, partial slot or -1), num_partials, and FlashMLA's num_splits
      // [batch + 1] (prefix sums of the pieces per sequence). None before the plan is made.
      .def_prop_ro("info", [](const glue::Schedule& s) -> nb::object {
        const auto lock = lock_releasing_gil(s.mu);
        if (!s.plan) return nb::none();
        const mla::Plan& p = s.plan->work();
        std::vector<int32_t> items;
        for (const mla::WorkItem& it : p.items)
          for (int32_t v : {it.seq, it.head_begin, it.head_end, it.kv_begin, it.kv_end, it.partial})
            items.push_back(v);
        std::vector<int32_t> splits(size_t(s.plan->batch()) + 1, 0);
        for (const mla::WorkItem& it : p.items) splits[it.seq + 1] += 1;
        for (size_t i = 1; i < splits.size(); ++i) splits[i] += splits[i - 1];
        nb::dict d;
        d["num_workers"] = p.num_workers;
        d["worker_offsets"] = numpy_copy(p.worker_offsets.data(), {p.worker_offsets.size()});
        d["items"] = numpy_copy(items.data(), {p.items.size(), size_t(6)});
        d["num_partials"] = p.num_partials;
        d["num_splits"] = numpy_copy(splits.data(), {splits.size()});
        return d;
      });

  // The C++ call's own time, for the overhead benchmark: `iters` decodes of the same inputs from
  // C++ with one plan made first (as a decode step's layers do), mean seconds per call (no Python
  // in the loop).
  m.def(
      "time_decode_cpp",
      [](nb::handle q_, nb::object k, nb::handle block_table_, nb::handle seq_lens_, float scale,
         int threads, int iters) {
        const Array q(q_, "q"), block_table(block_table_, "block_table"), seq_lens(seq_lens_, "cache_seqlens");
        LatentCache* lc = nb::cast<LatentCache*>(k);
        const int batch = int(q.shape(0)), s_q = int(q.shape(1)), h = int(q.shape(2));
        const mla::DType qt = float_type(q, true, "q");
        std::vector<float> o(size_t(batch) * s_q * h * mla::kLatentDim), lse(size_t(batch) * s_q * h);
        const mla::DecodeParams p{.batch = batch, .q_len = s_q, .num_heads = h, .softmax_scale = scale,
                                  .causal = false, .seq_lens = static_cast<const int32_t*>(seq_lens.data()),
                                  .block_table = static_cast<const int32_t*>(block_table.data()),
                                  .max_blocks_per_seq = int(block_table.shape(1))};
        nb::gil_scoped_release unlocked;
        std::shared_lock<std::shared_mutex> lock(lc->mu);
        const mla::DecodePlan plan = mla::make_decode_plan(
            {.batch = batch, .q_len = s_q, .num_heads = h, .seq_lens = p.seq_lens, .workers = threads});
        const mla::CacheView view = lc->cache.view();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i)
          mla::decode(p, qt, q.data(), view, mla::DecodeOptions{.threads = threads}, plan, o.data(), lse.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      },
      "q"_a, "cache"_a, "block_table"_a, "cache_seqlens"_a, "softmax_scale"_a, "threads"_a, "iters"_a);
}

}  // namespace mla_py
