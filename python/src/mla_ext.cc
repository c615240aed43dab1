// The Python module mla._mla (nanobind): the only file that sees Python headers. python/mla/
// wraps it with FlashMLA's calls. Arrays arrive as DLPack / buffer-protocol views (NumPy, PyTorch,
// any DLPack producer) and are read in place when C-contiguous; results are new NumPy arrays or
// PyTorch tensors. The GIL is released while the C++ library runs.
//
// Everything that calls the library's decode API sits in namespace glue below: an array k_cache is
// read in place through a CacheView, lse written in FlashMLA's layout through output strides, and
// a schedule (FlashMLA's tile_scheduler_metadata) holds one mla::DecodePlan that every call of a
// decode step reuses. o is converted to q's type when that is not f32.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/vector.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mla/attention.h"
#include "mla/cache.h"
#include "mla/decode_plan.h"
#include "mla/dtype.h"
#include "mla/layer.h"
#include "mla/model.h"
#include "mla/plan.h"
#include "mla/safetensors.h"
#include "mla/status.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

constexpr uint8_t kFloat = uint8_t(nb::dlpack::dtype_code::Float);
constexpr uint8_t kInt = uint8_t(nb::dlpack::dtype_code::Int);
constexpr uint8_t kUInt = uint8_t(nb::dlpack::dtype_code::UInt);
constexpr uint8_t kBfloat = uint8_t(nb::dlpack::dtype_code::Bfloat);

// A CPU array argument: through the buffer protocol when the object has it (NumPy: a fraction
// of a microsecond), otherwise through DLPack (PyTorch, other producers: about a microsecond
// each, a Python method call and a capsule). Strides in elements, as nb::ndarray's.
class Array {
 public:
  Array() = default;
  Array(nb::handle h, const char* arg, bool writable = false) {
    if (PyObject_CheckBuffer(h.ptr()) &&
        PyObject_GetBuffer(h.ptr(), &buf_, writable ? PyBUF_RECORDS : PyBUF_RECORDS_RO) == 0) {
      have_buf_ = true;
      if (from_buffer()) return;
      PyBuffer_Release(&buf_);
      have_buf_ = false;
    }
    PyErr_Clear();
    bool ok = writable ? nb::try_cast(h, rw_) : nb::try_cast(h, ro_);
    if (!ok)
      throw nb::type_error((std::string(arg) + " is a " + nb::type_name(h.type()).c_str() +
                            (writable ? "; expected a writable CPU array" : "; expected a CPU array "
                             "(NumPy, torch or another DLPack producer)")).c_str());
    const auto take = [&](auto& a) {
      data_ = const_cast<void*>(static_cast<const void*>(a.data()));
      ndim_ = a.ndim();
      dtype_ = a.dtype();
      for (size_t i = 0; i < ndim_ && i < kMaxDim; ++i) {
        shape_[i] = a.shape(i);
        stride_[i] = a.stride(i);
      }
    };
    if (writable) take(rw_); else take(ro_);
    if (ndim_ > kMaxDim)
      throw nb::value_error((std::string(arg) + " has " + std::to_string(ndim_) + " dimensions").c_str());
  }
  Array(const Array&) = delete;
  Array& operator=(const Array&) = delete;
  Array(Array&& o) noexcept { *this = std::move(o); }
  Array& operator=(Array&& o) noexcept {
    std::swap(buf_, o.buf_);
    std::swap(have_buf_, o.have_buf_);
    ro_ = std::move(o.ro_);
    rw_ = std::move(o.rw_);
    data_ = o.data_; ndim_ = o.ndim_; dtype_ = o.dtype_; shape_ = o.shape_; stride_ = o.stride_;
    return *this;
  }
  ~Array() { if (have_buf_) PyBuffer_Release(&buf_); }

  size_t ndim() const { return ndim_; }
  size_t shape(size_t i) const { return shape_[i]; }
  int64_t stride(size_t i) const { return stride_[i]; }
  nb::dlpack::dtype dtype() const { return dtype_; }
  size_t itemsize() const { return dtype_.bits / 8; }
  size_t size() const {
    size_t n = 1;
    for (size_t i = 0; i < ndim_; ++i) n *= shape_[i];
    return n;
  }
  const void* data() const { return data_; }
  void* mutable_data() const { return data_; }

 private:
  static constexpr size_t kMaxDim = 8;
  // The buffer's format as a DLPack dtype; false for what DLPack cannot say (big-endian,
  // structured, odd strides), which then goes the DLPack way.
  bool from_buffer() {
    const char* f = buf_.format ? buf_.format : "B";
    if (*f == '<' || *f == '=' || *f == '@') ++f;
    if (f[0] == 0 || f[1] != 0 || buf_.ndim > int(kMaxDim) || buf_.itemsize <= 0) return false;
    uint8_t code;
    switch (*f) {
      case 'e': case 'f': case 'd': code = kFloat; break;
      case 'b': case 'h': case 'i': case 'l': case 'q': code = kInt; break;
      case 'B': case 'H': case 'I': case 'L': case 'Q': code = kUInt; break;
      default: return false;
    }
    dtype_ = nb::dlpack::dtype{code, uint8_t(buf_.itemsize * 8), 1};
    data_ = buf_.buf;
    ndim_ = size_t(buf_.ndim);
    for (size_t i = 0; i < ndim_; ++i) {
      shape_[i] = size_t(buf_.shape[i]);
      if (buf_.strides[i] % buf_.itemsize) return false;
      stride_[i] = buf_.strides[i] / buf_.itemsize;
    }
    return true;
  }
  Py_buffer buf_{};
  bool have_buf_ = false;
  nb::ndarray<nb::ro, nb::device::cpu> ro_;
  nb::ndarray<nb::device::cpu> rw_;
  void* data_ = nullptr;
  size_t ndim_ = 0;
  nb::dlpack::dtype dtype_{};
  std::array<size_t, kMaxDim> shape_{};
  std::array<int64_t, kMaxDim> stride_{};
};

std::string shape_str(const Array& a) {
  std::string s = "(";
  for (size_t i = 0; i < a.ndim(); ++i) s += (i ? ", " : "") + std::to_string(a.shape(i));
  return s + (a.ndim() == 1 ? ",)" : ")");
}

std::string dtype_str(nb::dlpack::dtype t) {
  const char* kind = t.code == kFloat ? "float" : t.code == kInt ? "int" : t.code == kUInt ? "uint"
                     : t.code == kBfloat ? "bfloat" : "code";
  return std::string(kind) + std::to_string(t.bits) + (t.lanes != 1 ? "x" + std::to_string(t.lanes) : "");
}

// The element type of a float array: f32, f16 or bf16. NumPy has no bf16 of its own; the Python
// layer passes an ml_dtypes.bfloat16 array as its uint16 view with bf16_bits = true.
mla::DType float_type(const Array& a, bool bf16_bits, const char* arg) {
  const nb::dlpack::dtype t = a.dtype();
  if (t.lanes == 1) {
    if (t.code == kFloat && t.bits == 32) return mla::DType::f32;
    if (t.code == kFloat && t.bits == 16) return mla::DType::f16;
    if (t.code == kBfloat && t.bits == 16) return mla::DType::bf16;
    if (bf16_bits && t.code == kUInt && t.bits == 16) return mla::DType::bf16;
  }
  throw nb::type_error((std::string(arg) + " has dtype " + dtype_str(t) +
                        "; expected float32, float16 or bfloat16").c_str());
}

void require_int32(const Array& a, const char* arg) {
  const nb::dlpack::dtype t = a.dtype();
  if (!(t.code == kInt && t.bits == 32 && t.lanes == 1))
    throw nb::type_error((std::string(arg) + " has dtype " + dtype_str(t) + "; expected int32").c_str());
}

void require_shape(const Array& a, const char* arg, std::initializer_list<int64_t> want) {
  bool ok = a.ndim() == want.size();
  size_t i = 0;
  for (int64_t w : want) {
    if (ok && w >= 0 && int64_t(a.shape(i)) != w) ok = false;
    ++i;
  }
  if (ok) return;
  std::string w = "(";
  i = 0;
  for (int64_t x : want) w += (i++ ? ", " : "") + (x < 0 ? std::string("any") : std::to_string(x));
  throw nb::value_error((std::string(arg) + ".shape = " + shape_str(a) + "; expected " + w +
                         (want.size() == 1 ? ",)" : ")")).c_str());
}

// A C-contiguous view of `a`: its own memory when it already is (zero-copy), otherwise one copy
// into `hold`.
const void* contiguous(const Array& a, std::vector<uint8_t>& hold) {
  const size_t es = a.itemsize();
  bool cont = true;
  int64_t st = 1;
  for (size_t i = a.ndim(); i-- > 0;) {
    if (a.shape(i) != 1 && a.stride(i) != st) cont = false;
    st *= int64_t(a.shape(i));
  }
  if (cont) return a.data();
  hold.resize(a.size() * es);
  const auto* src = static_cast<const uint8_t*>(a.data());
  std::vector<size_t> idx(a.ndim(), 0);
  for (size_t n = 0; n < a.size(); ++n) {
    int64_t off = 0;
    for (size_t i = 0; i < a.ndim(); ++i) off += int64_t(idx[i]) * a.stride(i);
    std::memcpy(hold.data() + n * es, src + off * int64_t(es), es);
    for (size_t i = a.ndim(); i-- > 0;) {
      if (++idx[i] < a.shape(i)) break;
      idx[i] = 0;
    }
  }
  return hold.data();
}

// A new NumPy array owned by a capsule.
struct OutBuffer {
  std::unique_ptr<uint8_t[]> mem;
  std::vector<size_t> shape;
  mla::DType type;
  static OutBuffer make(std::vector<size_t> shape, mla::DType t) {
    size_t n = 1;
    for (size_t s : shape) n *= s;
    return {std::unique_ptr<uint8_t[]>(new uint8_t[n * mla::dtype_size(t) + 1]), std::move(shape), t};
  }
  template <class T> T* as() { return reinterpret_cast<T*>(mem.get()); }
  nb::object release() {
    uint8_t* p = mem.release();
    nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<uint8_t*>(q); });
    nb::dlpack::dtype dt;
    dt.lanes = 1;
    dt.bits = uint8_t(mla::dtype_size(type) * 8);
    dt.code = type == mla::DType::f32 || type == mla::DType::f16 ? kFloat
              : kUInt;
    return nb::cast(nb::ndarray<nb::numpy>(p, shape.size(), shape.data(), owner, nullptr, dt));
  }
};

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

// One decode at a time: the library's worker pool is shared by the process.
std::mutex& decode_mutex() {
  static std::mutex m;
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

// ---- the Layer object -----------------------------------------------------------------------
// One attention layer of a checkpoint with a paged cache and block allocator of its own: the
// sequences it serves are added, prefilled, decoded and freed through it, so a block table can
// never point at another cache. Weights stay memory-mapped in `store`.
struct Layer {
  mla::ModelConfig cfg;
  mla::TensorStore store;
  std::unique_ptr<mla::MlaLayer> layer;
  mla::PagedLatentCache cache;
  mla::BlockAllocator alloc;
  int threads;

  Layer(const std::string& dir, int index, const std::string& kv_dtype, int block_size,
        int64_t num_blocks, int threads_, const std::string& kv_rotate)
      : cfg(read_config(dir, index)),
        store(mla::TensorStore::open_dir(dir)),
        layer(std::make_unique<mla::MlaLayer>(cfg, store, index, mla::parse_kv_rotation(kv_rotate))),
        cache(cache_config(kv_dtype, block_size, num_blocks, kv_rotate)),
        alloc(num_blocks, block_size),
        threads(threads_) {
    MLA_CHECK(threads_ >= 0, "threads = " << threads_ << " is negative");
  }

  static mla::ModelConfig read_config(const std::string& dir, int index) {
    MLA_CHECK(std::filesystem::is_directory(dir), "model_dir '" << dir << "' is not a directory");
    mla::ModelConfig c = mla::read_model_config((std::filesystem::path(dir) / "config.json").string());
    MLA_CHECK(index >= 0 && index < c.num_hidden_layers,
              "layer = " << index << " is outside the model's " << c.num_hidden_layers << " layers");
    return c;
  }
  static mla::CacheConfig cache_config(const std::string& kv_dtype, int block_size, int64_t num_blocks,
                                       const std::string& kv_rotate) {
    MLA_CHECK(block_size >= 1, "block_size = " << block_size << " must be at least 1");
    MLA_CHECK(num_blocks >= 1, "num_blocks = " << num_blocks << " must be at least 1");
    // int8 with per-token scales: the layer writes tokens as they come, no calibration step.
    return {.num_blocks = num_blocks, .block_size = block_size, .dtype = mla::parse_kv_dtype(kv_dtype),
            .rotation = mla::parse_kv_rotation(kv_rotate)};
  }

  // hidden [n, hidden_size] (2-D) or [B, Q, hidden_size] (3-D), float32, contiguous copy.
  const float* hidden_f32(const Array& h, std::vector<uint8_t>& hold, std::initializer_list<int64_t> shape) const {
    const nb::dlpack::dtype t = h.dtype();
    if (!(t.code == kFloat && t.bits == 32 && t.lanes == 1))
      throw nb::value_error(("hidden has dtype " + dtype_str(t) + "; expected float32").c_str());
    require_shape(h, "hidden", shape);
    return static_cast<const float*>(contiguous(h, hold));
  }

  // Blocks `extra` more tokens of each of `seqs` would take beyond the ones they hold.
  int64_t blocks_needed(const std::vector<int>& seqs, int extra) const {
    const int bs = cache.block_size();
    int64_t need = 0;
    for (int s : seqs) {
      const int have = (alloc.seq_len(s) + bs - 1) / bs, want = (alloc.seq_len(s) + extra + bs - 1) / bs;
      need += want - have;
    }
    return need;
  }
  void require_room(const std::vector<int>& seqs, int extra) const {
    const int64_t need = blocks_needed(seqs, extra);
    MLA_CHECK(need <= alloc.free_blocks(), "the step needs " << need << " more cache blocks; "
                                               << alloc.free_blocks() << " of num_blocks = "
                                               << cache.num_blocks() << " are free");
  }
};

// ---- the LatentCache object -----------------------------------------------------------------
struct LatentCache {
  mla::PagedLatentCache cache;
  mla::BlockAllocator alloc;
  bool static_scale = false;  // int8 tensor / channel mode: a scale was set (writes need one)

  LatentCache(int64_t num_blocks, int block_size, const std::string& dtype, const std::string& scale,
              uint64_t shuffle_seed, const std::string& rotation, const std::string& fp8_scale)
      : cache(config(num_blocks, block_size, dtype, scale, rotation, fp8_scale)),
        alloc(num_blocks, block_size, shuffle_seed) {}

  static mla::CacheConfig config(int64_t num_blocks, int block_size, const std::string& dtype,
                                 const std::string& scale, const std::string& rotation,
                                 const std::string& fp8_scale) {
    MLA_CHECK(num_blocks >= 1, "num_blocks = " << num_blocks << " must be at least 1");
    MLA_CHECK(block_size >= 1, "block_size = " << block_size << " must be at least 1");
    const mla::KvDType kv = mla::parse_kv_dtype(dtype);
    const mla::KvScale mode = mla::parse_kv_scale(scale);
    return {.num_blocks = num_blocks, .block_size = block_size, .dtype = kv, .scale = mode,
            .rotation = mla::parse_kv_rotation(rotation), .fp8_scale = mla::parse_fp8_scale(fp8_scale)};
  }

  void require_writable() const {
    MLA_CHECK(cache.dtype() != mla::KvDType::int8 || mla::kv_token_scales(cache.scale_mode()) >= 1 ||
                  static_scale,
              "this int8 cache has " << mla::kv_scale_name(cache.scale_mode())
                                     << " scales: call set_tensor_scale / set_channel_scales or "
                                        "calibrate before writing tokens");
  }

  // tokens [n, 576] as floats (converted from f16 / bf16), contiguous.
  static std::vector<float> tokens_f32(const Array& t, bool bf16_bits, const char* arg) {
    const mla::DType ty = float_type(t, bf16_bits, arg);
    require_shape(t, arg, {-1, mla::kQkDim});
    std::vector<uint8_t> hold;
    const void* d = contiguous(t, hold);
    std::vector<float> f(t.size());
    for (size_t i = 0; i < f.size(); ++i) f[i] = mla::load_f32(ty, d, int64_t(i));
    return f;
  }

  void write_rows(const int64_t* slots, const std::vector<float>& f, size_t n) {
    for (size_t i = 0; i < n; ++i)
      MLA_CHECK(slots[i] >= 0 && slots[i] < cache.num_slots(),
                "slot_mapping[" << i << "] = " << slots[i] << " is outside the cache's "
                                << cache.num_slots() << " slots");
    for (size_t i = 0; i < n; ++i) cache.write(slots[i], f.data() + i * mla::kQkDim);
  }
};

template <class T>
nb::object numpy_copy(const T* src, std::vector<size_t> shape) {
  size_t n = 1;
  for (size_t s : shape) n *= s;
  auto* p = new T[n + 1];
  std::memcpy(p, src, n * sizeof(T));
  nb::capsule owner(p, [](void* q) noexcept { delete[] static_cast<T*>(q); });
  return nb::cast(nb::ndarray<nb::numpy, T>(p, shape.size(), shape.data(), owner));
}

}  // namespace

NB_MODULE(_mla, m) {
  m.doc() = "C++ half of the mla package (see mla/__init__.py).";
  nb::register_exception_translator([](const std::exception_ptr& p, void*) {
    try {
      std::rethrow_exception(p);
    } catch (const mla::Error& e) {
      PyErr_SetString(PyExc_ValueError, e.what());
    }
  });

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
          std::lock_guard<std::mutex> lock(decode_mutex());
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
      .def_ro("threads", &glue::Schedule::threads)
      .def_prop_ro("ready", [](const glue::Schedule& s) { return s.plan.has_value(); })
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
              std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode uses it
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
        std::lock_guard<std::mutex> lock(decode_mutex());
        const mla::DecodePlan plan = mla::make_decode_plan(
            {.batch = batch, .q_len = s_q, .num_heads = h, .seq_lens = p.seq_lens, .workers = threads});
        const mla::CacheView view = lc->cache.view();
        const auto t0 = std::chrono::steady_clock::now();
        for (int i = 0; i < iters; ++i)
          mla::decode(p, qt, q.data(), view, mla::DecodeOptions{.threads = threads}, plan, o.data(), lse.data());
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / iters;
      },
      "q"_a, "cache"_a, "block_table"_a, "cache_seqlens"_a, "softmax_scale"_a, "threads"_a, "iters"_a);

  nb::class_<Layer>(m, "Layer")
      .def(nb::init<const std::string&, int, const std::string&, int, int64_t, int, const std::string&>(),
           "model_dir"_a, "layer"_a, "kv_dtype"_a, "block_size"_a, "num_blocks"_a, "threads"_a,
           "kv_rotate"_a)
      .def_prop_ro("hidden_size", [](const Layer& l) { return l.cfg.hidden_size; })
      .def_prop_ro("num_heads", [](const Layer& l) { return l.cfg.num_heads; })
      .def_prop_ro("model_type", [](const Layer& l) { return l.cfg.model_type; })
      .def_prop_ro("kv_dtype", [](const Layer& l) { return std::string(mla::kv_dtype_name(l.cache.dtype())); })
      .def_prop_ro("block_size", [](const Layer& l) { return l.cache.block_size(); })
      .def_prop_ro("num_blocks", [](const Layer& l) { return l.cache.num_blocks(); })
      .def_prop_ro("free_blocks", [](const Layer& l) { return l.alloc.free_blocks(); })
      .def_prop_ro("threads", [](const Layer& l) { return l.threads; })
      .def("add_sequence", [](Layer& l) { return l.alloc.add_sequence(); })
      .def("free", [](Layer& l, int seq) { l.alloc.free(seq); }, "seq"_a)
      .def("seq_len", [](const Layer& l, int seq) { return l.alloc.seq_len(seq); }, "seq"_a)
      .def(
          "prefill",
          [](Layer& l, int seq, nb::handle hidden_) {
            const Array h(hidden_, "hidden");
            std::vector<uint8_t> hold;
            const float* hd = l.hidden_f32(h, hold, {-1, l.cfg.hidden_size});
            const int n = int(h.shape(0));
            const int start = l.alloc.seq_len(seq);  // an unknown sequence is refused here
            if (n == 0) return;
            l.require_room({seq}, n);
            std::vector<int32_t> pos(n);
            for (int t = 0; t < n; ++t) pos[t] = start + t;
            nb::gil_scoped_release unlocked;
            std::lock_guard<std::mutex> lock(decode_mutex());
            mla::BlockAllocator before = l.alloc;
            try {
              const std::vector<int64_t> slots = l.alloc.append(seq, n);
              l.layer->prefill(n, hd, pos.data(), slots.data(), l.cache, l.threads);
            } catch (...) {
              l.alloc = std::move(before);
              throw;
            }
          },
          "seq"_a, "hidden"_a)
      .def(
          "decode",
          [](Layer& l, const std::vector<int>& seqs, nb::handle hidden_) {
            const Array h(hidden_, "hidden");
            MLA_CHECK(!seqs.empty(), "seqs is empty");
            std::vector<uint8_t> hold;
            const float* hd = l.hidden_f32(h, hold, {int64_t(seqs.size()), -1, l.cfg.hidden_size});
            const int B = int(seqs.size()), Q = int(h.shape(1)), D = l.cfg.hidden_size;
            MLA_CHECK(Q >= 1, "hidden has shape [" << B << ", 0, " << D << "]: no new tokens");
            for (int i = 0; i < B; ++i) {
              (void)l.alloc.seq_len(seqs[i]);
              for (int j = 0; j < i; ++j)
                MLA_CHECK(seqs[i] != seqs[j], "seqs lists sequence " << seqs[i] << " twice");
            }
            l.require_room(seqs, Q);
            std::vector<float> o(size_t(B) * Q * D);
            {
              nb::gil_scoped_release unlocked;
              std::lock_guard<std::mutex> lock(decode_mutex());
              mla::BlockAllocator before = l.alloc;
              try {
                std::vector<int32_t> lens(B);
                for (int b = 0; b < B; ++b) {
                  l.alloc.append(seqs[b], Q);
                  lens[b] = l.alloc.seq_len(seqs[b]);
                }
                int mb = 0;
                const std::vector<int32_t> bt = l.alloc.block_table_array(seqs, &mb);
                mla::DecodeOptions opt;
                opt.threads = l.threads;
                l.layer->decode(mla::LayerStep{.batch = B, .q_len = Q, .hidden = hd, .seq_lens = lens.data(),
                                               .block_table = bt.data(), .max_blocks_per_seq = mb},
                                l.cache, opt, o.data());
              } catch (...) {
                l.alloc = std::move(before);
                throw;
              }
            }
            return numpy_copy(o.data(), {size_t(B), size_t(Q), size_t(D)});
          },
          "seqs"_a, "hidden"_a);

  nb::class_<LatentCache>(m, "LatentCache")
      .def(nb::init<int64_t, int, const std::string&, const std::string&, uint64_t,
                    const std::string&, const std::string&>(),
           "num_blocks"_a, "block_size"_a, "dtype"_a, "scale"_a, "shuffle_seed"_a, "rotation"_a,
           "fp8_scale"_a)
      .def_prop_ro("rotation", [](const LatentCache& c) { return std::string(mla::kv_rotation_name(c.cache.config().rotation)); })
      .def_prop_ro("fp8_scale", [](const LatentCache& c) { return std::string(mla::fp8_scale_name(c.cache.config().fp8_scale)); })
      .def_prop_ro("num_blocks", [](const LatentCache& c) { return c.cache.num_blocks(); })
      .def_prop_ro("block_size", [](const LatentCache& c) { return c.cache.block_size(); })
      .def_prop_ro("dtype", [](const LatentCache& c) { return std::string(mla::kv_dtype_name(c.cache.dtype())); })
      .def_prop_ro("scale", [](const LatentCache& c) { return std::string(mla::kv_scale_name(c.cache.scale_mode())); })
      .def_prop_ro("free_blocks", [](const LatentCache& c) { return c.alloc.free_blocks(); })
      .def("add_sequence", [](LatentCache& c) { return c.alloc.add_sequence(); })
      .def("free", [](LatentCache& c, int seq) { c.alloc.free(seq); }, "seq"_a)
      .def("seq_len", [](const LatentCache& c, int seq) { return c.alloc.seq_len(seq); }, "seq"_a)
      .def(
          "append",
          [](LatentCache& c, int seq, nb::handle tokens_, bool bf16_bits) {
            const Array tokens(tokens_, "tokens");
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            c.require_writable();
            (void)c.alloc.seq_len(seq);  // an unknown sequence is refused before anything changes
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            const std::vector<int64_t> slots = c.alloc.append(seq, int(tokens.shape(0)));
            c.write_rows(slots.data(), f, slots.size());
            return numpy_copy(slots.data(), {slots.size()});
          },
          "seq"_a, "tokens"_a, "bf16_bits"_a)
      .def(
          "write",
          [](LatentCache& c, nb::handle slots_, nb::handle tokens_, bool bf16_bits) {
            const Array slots(slots_, "slot_mapping"), tokens(tokens_, "tokens");
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            const nb::dlpack::dtype t = slots.dtype();
            if (!(t.code == kInt && t.bits == 64 && t.lanes == 1))
              throw nb::type_error(("slot_mapping has dtype " + dtype_str(t) + "; expected int64").c_str());
            require_shape(slots, "slot_mapping", {int64_t(tokens.shape(0))});
            c.require_writable();
            std::vector<uint8_t> hold;
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.write_rows(static_cast<const int64_t*>(contiguous(slots, hold)), f, tokens.shape(0));
          },
          "slot_mapping"_a, "tokens"_a, "bf16_bits"_a)
      .def(
          "slot_mapping",
          [](const LatentCache& c, int seq, const std::vector<int>& positions) {
            std::vector<int64_t> s;
            for (int pos : positions) {
              MLA_CHECK(pos >= 0 && pos < c.alloc.seq_len(seq),
                        "position " << pos << " is outside sequence " << seq << " of "
                                    << c.alloc.seq_len(seq) << " tokens");
              s.push_back(c.alloc.slot(seq, pos));
            }
            return numpy_copy(s.data(), {s.size()});
          },
          "seq"_a, "positions"_a)
      .def(
          "block_table",
          [](const LatentCache& c, const std::vector<int>& seqs, int min_blocks) {
            int mb = 0;
            std::vector<int32_t> t = c.alloc.block_table_array(seqs, &mb);
            mb = std::max(mb, 1);
            const int cols = std::max(mb, min_blocks);
            std::vector<int32_t> out(seqs.size() * size_t(cols), -1);
            for (size_t i = 0; i < seqs.size(); ++i)
              for (int j = 0; j < mb && size_t(j) < c.alloc.block_table(seqs[i]).size(); ++j)
                out[i * cols + j] = c.alloc.block_table(seqs[i])[j];
            (void)t;
            return numpy_copy(out.data(), {seqs.size(), size_t(cols)});
          },
          "seqs"_a, "min_blocks"_a)
      .def(
          "seq_lens",
          [](const LatentCache& c, const std::vector<int>& seqs) {
            std::vector<int32_t> v;
            for (int s : seqs) v.push_back(c.alloc.seq_len(s));
            return numpy_copy(v.data(), {v.size()});
          },
          "seqs"_a)
      .def("set_tensor_scale", [](LatentCache& c, float s) {
             std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
             c.cache.set_tensor_scale(s);
             c.static_scale = true;
           }, "scale"_a)
      .def(
          "set_channel_scales",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, float, nb::shape<mla::kLatentDim>, nb::c_contig> s) {
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.cache.set_channel_scales(s.data());
            c.static_scale = true;
          },
          "scales"_a)
      .def(
          "calibrate",
          [](LatentCache& c, nb::handle tokens_, bool bf16_bits) {
            const Array tokens(tokens_, "tokens");
            // Scales from these tokens (max|latent| / 127), as if they filled slots 0..n-1.
            const std::vector<float> f = LatentCache::tokens_f32(tokens, bf16_bits, "tokens");
            std::vector<int64_t> slots(tokens.shape(0));
            for (size_t i = 0; i < slots.size(); ++i) slots[i] = int64_t(i);
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.cache.calibrate(f.data(), slots);
            c.static_scale = mla::kv_token_scales(c.cache.scale_mode()) == 0;
          },
          "tokens"_a, "bf16_bits"_a)
      .def(
          "query_values",
          [](const LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig> q) {
            // The query as the kernels compute with it (int8: the latent quantized per row).
            MLA_CHECK(q.size() % mla::kQkDim == 0, "q has " << q.size() << " values, not rows of 576");
            OutBuffer b = OutBuffer::make({q.size() / mla::kQkDim, size_t(mla::kQkDim)}, mla::DType::f32);
            mla::kernel_query_values(c.cache, int64_t(q.size() / mla::kQkDim), q.data(), b.as<float>());
            return b.release();
          },
          "q"_a)
      .def(
          "export_array",
          [](const LatentCache& c) {
            OutBuffer b = OutBuffer::make({size_t(c.cache.num_blocks()), size_t(c.cache.block_size()),
                                           size_t(mla::kQkDim)}, mla::DType::f32);
            c.cache.export_f32(b.as<float>());
            return b.release();
          })
      .def(
          "import_array",
          [](LatentCache& c, nb::handle kv_, bool bf16_bits) {
            const Array kv(kv_, "kv");
            const mla::DType ty = float_type(kv, bf16_bits, "kv");
            require_shape(kv, "kv", {c.cache.num_blocks(), c.cache.block_size(), mla::kQkDim});
            c.require_writable();
            std::vector<uint8_t> hold;
            const void* d = contiguous(kv, hold);
            std::vector<float> f(kv.size());
            for (size_t i = 0; i < f.size(); ++i) f[i] = mla::load_f32(ty, d, int64_t(i));
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.cache.import_f32(f.data());
          },
          "kv"_a, "bf16_bits"_a)
      .def(
          "export_fp8",
          [](const LatentCache& c) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::fp8,
                      "export_fp8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not fp8");
            const std::vector<uint8_t> b = c.cache.export_fp8();
            return numpy_copy(b.data(), {size_t(c.cache.num_blocks()), size_t(c.cache.block_size()),
                                         size_t(mla::kFp8TokenBytes)});
          })
      .def(
          "import_fp8",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, uint8_t, nb::c_contig> bytes) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::fp8,
                      "import_fp8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not fp8");
            const size_t want = size_t(c.cache.num_slots()) * mla::kFp8TokenBytes;
            MLA_CHECK(bytes.size() == want, "fp8 bytes have " << bytes.size() << " values; expected "
                                                 << c.cache.num_slots() << " x 656");
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.cache.import_fp8(bytes.data(), bytes.size());
          },
          "bytes"_a)
      .def(
          "export_int8",
          [](const LatentCache& c) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::int8,
                      "export_int8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not int8");
            const mla::Int8CacheContent x = c.cache.export_int8();
            const size_t nb_ = size_t(c.cache.num_blocks()), bs = size_t(c.cache.block_size());
            nb::dict d;
            d["latent"] = numpy_copy(x.latent.data(), {nb_, bs, size_t(mla::kLatentDim)});
            d["rope"] = numpy_copy(x.rope.data(), {nb_, bs, size_t(mla::kRopeDim)});
            // token mode [num_blocks, block_size]; group modes [num_blocks, block_size, 512 / group]
            const int g = mla::kv_token_scales(c.cache.scale_mode());
            d["token_scale"] = x.token_scale.empty() ? nb::none()
                               : g == 1 ? numpy_copy(x.token_scale.data(), {nb_, bs})
                                        : numpy_copy(x.token_scale.data(), {nb_, bs, size_t(g)});
            d["tensor_scale"] = c.cache.scale_mode() == mla::KvScale::tensor ? nb::cast(x.tensor_scale) : nb::none();
            d["channel_scale"] = x.channel_scale.empty() ? nb::none()
                                                         : numpy_copy(x.channel_scale.data(), {x.channel_scale.size()});
            return d;
          })
      .def(
          "import_int8",
          [](LatentCache& c, nb::ndarray<nb::ro, nb::device::cpu, int8_t, nb::c_contig> latent,
             nb::ndarray<nb::ro, nb::device::cpu, uint16_t, nb::c_contig> rope,
             std::optional<nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig>> token_scale,
             std::optional<float> tensor_scale,
             std::optional<nb::ndarray<nb::ro, nb::device::cpu, float, nb::c_contig>> channel_scale) {
            MLA_CHECK(c.cache.dtype() == mla::KvDType::int8,
                      "import_int8: the cache is " << mla::kv_dtype_name(c.cache.dtype()) << ", not int8");
            const size_t slots = size_t(c.cache.num_slots());
            MLA_CHECK(latent.size() == slots * mla::kLatentDim,
                      "latent has " << latent.size() << " values; expected " << slots << " x 512");
            MLA_CHECK(rope.size() == slots * mla::kRopeDim,
                      "rope has " << rope.size() << " values; expected " << slots << " x 64");
            mla::Int8CacheContent x;
            x.latent.assign(latent.data(), latent.data() + latent.size());
            x.rope.assign(rope.data(), rope.data() + rope.size());
            if (token_scale) x.token_scale.assign(token_scale->data(), token_scale->data() + token_scale->size());
            if (tensor_scale) x.tensor_scale = *tensor_scale;
            if (channel_scale) x.channel_scale.assign(channel_scale->data(), channel_scale->data() + channel_scale->size());
            std::lock_guard<std::mutex> lock(decode_mutex());  // not while a decode reads the cache
            c.cache.import_int8(x);
            c.static_scale = mla::kv_token_scales(c.cache.scale_mode()) == 0;
          },
          "latent"_a, "rope"_a, "token_scale"_a.none(), "tensor_scale"_a.none(), "channel_scale"_a.none());
}
