// The paged latent KV cache (DESIGN §3): a pool of `num_blocks` blocks of `block_size` tokens; each
// token holds the 512-wide latent c_kv followed by the 64-wide rope key k_pe. Token `t` of a
// sequence lives in slot block_table[t / block_size] * block_size + t % block_size.
//
// Formats:
//   bf16, fp16  [num_blocks, block_size, 576] 16-bit values (FlashMLA's layout);
//   int8        latent [num_blocks, block_size, 512] int8, rope [num_blocks, block_size, 64] bf16,
//               and a scale: per token (computed on write), per group of 32, 64 or 128 channels
//               of each token (computed on write; llama.cpp's q8_0 is group32), per tensor or per
//               channel (static, set or calibrated before writing). value = int8 * scale, int8 in
//               [-127, 127].
//   fp8         FlashMLA's fp8 token (its sparse decoding's "V32_FP8Sparse" layout), 656 bytes:
//                 [0, 512)    latent, fp8 e4m3
//                 [512, 528)  four float32 scales, one per 128 latent channels (value = e4m3 * scale;
//                             written by default (Fp8Scale::exact) as max|x| / 448 of the tile,
//                             or as FlashMLA's power of two at or above it (Fp8Scale::pow2); any
//                             positive scale reads the same way. The kernels widen each value to
//                             bf16(e4m3 x scale), exact for power-of-two scales, and read() gives
//                             the same widened values, what the kernels compute with)
//                 [528, 656)  rope, 64 bf16
//               stored as [num_blocks, block_size, 656] bytes, so import/export is a copy.
// Rotation (CacheConfig::rotation, issue 20): with KvRotation::hadamard every token's latent part
// (never the rope part) is stored as c R, R = D H / sqrt(512) (D a fixed +-1 diagonal,
// hadamard_signs(); H the 512-point Walsh-Hadamard matrix; R is orthogonal). A few outlier
// channels then spread over all 512, so one int8 or fp8 scale fits them all. Scores are unchanged
// ((q R) (c R)^T = q c^T) and the output comes back as o = (P (c R)) R^T: decode() rotates the
// query's latent part and un-rotates o (or the caller does both, DecodeOptions::qo_rotated).
// The kernels read the rotated values; read() and export_f32() un-rotate (the original space).
// The kernels gather and repack tokens per chunk, so the storage stays token-major for any block
// size; import/export of the logical content is lossless.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "mla/export.h"

namespace mla {

constexpr int kLatentDim = 512;  // kv_lora_rank: the latent, also the value
constexpr int kRopeDim = 64;     // qk_rope_head_dim
constexpr int kQkDim = kLatentDim + kRopeDim;  // 576

enum class KvDType { bf16, fp16, int8, fp8 };
enum class KvScale { token, tensor, channel, group32, group64, group128 };
constexpr int kNumKvScales = 6;
enum class KvRotation { none, hadamard };  // of the latent before it is stored (see above)
enum class Fp8Scale { exact, pow2 };       // fp8 tile scales written: max|x|/448, or FlashMLA's
MLA_API const char* kv_dtype_name(KvDType t);
MLA_API const char* kv_scale_name(KvScale s);
MLA_API KvDType parse_kv_dtype(const std::string& s);  // "bf16" | "fp16" | "int8" | "fp8"
// "token" | "tensor" | "channel" | "group32" | "group64" | "group128"
MLA_API KvScale parse_kv_scale(const std::string& s);
MLA_API const char* kv_rotation_name(KvRotation r);      // "none" | "hadamard"
MLA_API KvRotation parse_kv_rotation(const std::string& s);
MLA_API const char* fp8_scale_name(Fp8Scale s);          // "exact" | "pow2"
MLA_API Fp8Scale parse_fp8_scale(const std::string& s);

// The +-1 diagonal D of the Hadamard rotation: sign i is the top bit of the i-th output of
// splitmix64 seeded with kHadamardSeed (1 = -1). Fixed, so a cache written by one program (or
// exported, or a layer's folded weights) and read by another agree.
constexpr uint64_t kHadamardSeed = 0x6d6c612d726f7431ull;  // "mla-rot1"
MLA_API const float* hadamard_signs();  // [512], each +1 or -1
// x [rows, stride]: the first 512 values of each row (a latent) become x R (rotate) or x R^T
// (unrotate, the inverse). KvRotation::none leaves x as it is. A fast Walsh-Hadamard transform,
// 9 stages of butterflies (h = 1, 2, ..., 256), O(512 log 512) per row. The double versions are
// for references and for folding R into weights.
MLA_API void rotate_latent(KvRotation r, float* x, int64_t rows = 1, int64_t stride = kLatentDim);
MLA_API void unrotate_latent(KvRotation r, float* x, int64_t rows = 1, int64_t stride = kLatentDim);
MLA_API void rotate_latent(KvRotation r, double* x, int64_t rows = 1, int64_t stride = kLatentDim);
MLA_API void unrotate_latent(KvRotation r, double* x, int64_t rows = 1, int64_t stride = kLatentDim);

// Latent channels that share one per-token scale: 512 in token mode, 32/64/128 in group modes;
// 0 for the static modes (tensor, channel), which have no per-token scale.
constexpr int kv_scale_group(KvScale s) {
  switch (s) {
    case KvScale::token: return kLatentDim;
    case KvScale::group32: return 32;
    case KvScale::group64: return 64;
    case KvScale::group128: return 128;
    default: return 0;
  }
}
// Per-token scales of a token: 1 (token), 512 / group (group modes), 0 (static modes).
constexpr int kv_token_scales(KvScale s) {
  return kv_scale_group(s) ? kLatentDim / kv_scale_group(s) : 0;
}

// FlashMLA's fp8 token (see above).
constexpr int kFp8Tile = 128;                        // latent channels per scale
constexpr int kFp8Tiles = kLatentDim / kFp8Tile;     // 4
constexpr int kFp8ScaleOffset = kLatentDim;          // 512
constexpr int kFp8RopeOffset = kLatentDim + 4 * kFp8Tiles;  // 528
constexpr int kFp8TokenBytes = kFp8RopeOffset + 2 * kRopeDim;  // 656

// 64-byte aligned storage so the kernels' vector loads never split a cache line.
template <class T>
struct AlignedAlloc {
  using value_type = T;
  AlignedAlloc() = default;
  template <class U> AlignedAlloc(const AlignedAlloc<U>&) {}
  T* allocate(size_t n) {
    void* p = ::operator new(n * sizeof(T), std::align_val_t(64));
    return static_cast<T*>(p);
  }
  void deallocate(T* p, size_t) { ::operator delete(p, std::align_val_t(64)); }
  template <class U> bool operator==(const AlignedAlloc<U>&) const { return true; }
};
template <class T> using AlignedVec = std::vector<T, AlignedAlloc<T>>;

struct CacheConfig {
  int64_t num_blocks = 0;
  int block_size = 64;
  KvDType dtype = KvDType::bf16;
  KvScale scale = KvScale::token;  // int8 only
  KvRotation rotation = KvRotation::none;  // of the latent, on write (any format)
  Fp8Scale fp8_scale = Fp8Scale::exact;    // fp8 only: the tile scales write() computes
};

// The logical content of an int8 cache, as imported and exported (lossless).
struct Int8CacheContent {
  std::vector<int8_t> latent;       // [num_slots, 512]
  std::vector<uint16_t> rope;       // [num_slots, 64] bf16 bits
  // [num_slots, kv_token_scales(mode)]: token mode one per slot, group modes 512/group per slot
  // (group g covers channels [g * group, (g + 1) * group)); empty in the static modes.
  std::vector<float> token_scale;
  float tensor_scale = 0.f;         // tensor mode
  std::vector<float> channel_scale; // [512] (channel mode; empty otherwise)
};

// A read-only view of a paged latent cache in memory someone else owns: a PagedLatentCache (its
// view()), a FlashMLA-style k_cache array from Python, or an engine's own pool. The kernels and
// the reference read the cache only through a view. Strides are in elements.
//
//   bf16 / fp16  token t of block b: 576 values at kv + b * kv_block_stride + t * kv_token_stride
//                (FlashMLA's k_cache [num_blocks, block_size, 1, 576]: strides block_size x 576, 576)
//   int8         latent [num_blocks * block_size, 512] int8, rope [.., 64] bf16, dense by slot;
//                scales: per token [num_blocks * block_size, kv_token_scales(scale)] (token
//                and group modes), per tensor, or per channel [512]
//   fp8          token t of block b: 656 bytes at fp8 + b * kv_block_stride + t * kv_token_stride
//                (strides in bytes; FlashMLA's fp8 k_cache [num_blocks, block_size, 1, 656])
struct MLA_API CacheView {
  KvDType format = KvDType::bf16;
  int64_t blocks = 0;
  int tokens_per_block = 64;
  const uint16_t* kv = nullptr;  // bf16 / fp16 bits
  int64_t kv_block_stride = 0, kv_token_stride = kQkDim;
  const int8_t* latent = nullptr;  // int8
  const uint16_t* rope = nullptr;  // int8: bf16 bits
  KvScale scale = KvScale::token;
  const float* scale_per_token = nullptr;  // [slots, kv_token_scales(scale)]
  float scale_per_tensor = 0.f;
  const float* scale_per_channel = nullptr;
  const uint8_t* fp8 = nullptr;  // fp8: 656-byte tokens (kv_*_stride in bytes)
  KvRotation rotation = KvRotation::none;  // the stored latents are c R (see above)
  // Largest finite |value| stored, where the owner tracks it (PagedLatentCache does); -1: not
  // known. decode() refuses inputs whose fp32 scores could overflow against it.
  float max_abs = -1.f;

  // The same reads as PagedLatentCache's, so kernels take either spelling.
  int64_t num_blocks() const { return blocks; }
  int block_size() const { return tokens_per_block; }
  KvDType dtype() const { return format; }
  int64_t num_slots() const { return blocks * tokens_per_block; }
  KvScale scale_mode() const { return scale; }
  // Token `off` of block `block` (bf16 / fp16), and the same by slot.
  const uint16_t* token16_at(int64_t block, int off) const {
    return kv + block * kv_block_stride + off * kv_token_stride;
  }
  const uint16_t* token16(int64_t slot) const {
    if (kv_block_stride == tokens_per_block * kv_token_stride) return kv + slot * kv_token_stride;
    return token16_at(slot / tokens_per_block, int(slot % tokens_per_block));
  }
  // fp8: token `slot`'s 656 bytes.
  const uint8_t* token_fp8(int64_t slot) const {
    return fp8 + (slot / tokens_per_block) * kv_block_stride +
           (slot % tokens_per_block) * kv_token_stride;
  }
  const int8_t* latent_i8(int64_t slot) const { return latent + slot * kLatentDim; }
  const uint16_t* rope_bf16(int64_t slot) const { return rope + slot * kRopeDim; }
  float token_scale(int64_t slot) const { return scale_per_token[slot]; }
  // Group / token mode: the slot's kv_token_scales(scale) scales.
  const float* token_scales(int64_t slot) const {
    return scale_per_token + slot * kv_token_scales(scale);
  }
  float tensor_scale() const { return scale_per_tensor; }
  const float* channel_scales() const { return scale_per_channel; }
  // The token (576 floats) in the original space: the stored 16-bit values, or int8 * scale,
  // with the latent part un-rotated when the cache is rotated (what a reference computes on).
  void read(int64_t slot, float* token) const;
  // The same without the un-rotation: exactly what the kernels read.
  void read_stored(int64_t slot, float* token) const;
};

// Throws mla::Error naming the problem if the view cannot be read as it says (missing pointers,
// strides that overlap tokens, missing or non-positive static scales).
MLA_API void check_view(const CacheView& v);

class MLA_API PagedLatentCache {
 public:
  explicit PagedLatentCache(const CacheConfig& cfg);

  const CacheConfig& config() const { return cfg_; }
  int64_t num_blocks() const { return cfg_.num_blocks; }
  int block_size() const { return cfg_.block_size; }
  KvDType dtype() const { return cfg_.dtype; }
  int64_t num_slots() const { return cfg_.num_blocks * cfg_.block_size; }

  // Static int8 scales (tensor / channel mode); must be positive and finite.
  void set_tensor_scale(float s);
  void set_channel_scales(const float* s /*[512]*/);
  // Static scales from max|latent| / 127 over the given slots of kv [num_slots, 576]; only those
  // slots are read, so garbage (NaN included) elsewhere does not matter. No-op in token mode.
  void calibrate(const float* kv, const std::vector<int64_t>& slots);

  // Stores one token (576 floats, in the original space: rotated here when the cache is):
  // rounded to bf16/fp16, or quantized (int8, fp8). Returns how many
  // values the format could not hold: finite values beyond its range (fp16 past 65504, bf16 past
  // 3.4e38: stored as Inf) and, int8, NaN/Inf latent values (token mode stores the token's scale
  // as NaN, so rows that see it come out NaN; tensor/channel mode stores 0). NaN and Inf are
  // otherwise stored as they are. 0 means the token is exactly what the kernels will see. (In a
  // rotated cache a NaN or Inf latent value spreads over the whole rotated latent; it counts once.)
  int write(int64_t slot, const float* token);
  // The token as stored, de-quantized and brought back to the original space (view().read()).
  void read(int64_t slot, float* token) const;
  int64_t import_f32(const float* kv /*[num_slots, 576]*/);  // write() of every slot; summed count
  void export_f32(float* kv /*[num_slots, 576]*/) const;

  // int8 only. The stored bytes and scales as they are (rotated, in a rotated cache: import them
  // into a cache of the same rotation).
  Int8CacheContent export_int8() const;
  void import_int8(const Int8CacheContent& c);  // checks sizes and scales

  // fp8 only: FlashMLA's bytes, [num_slots, 656] (see above). Import refuses a scale that is not
  // positive and finite, naming the slot; the e4m3 codes are taken as they are (NaN codes read
  // as NaN).
  std::vector<uint8_t> export_fp8() const;
  void import_fp8(const uint8_t* bytes, size_t n);

  // A view of this cache (valid while the cache lives and is not resized); also an implicit
  // conversion, so everything that reads a view reads an owning cache.
  CacheView view() const;
  operator CacheView() const { return view(); }

  // Raw storage.
  const uint16_t* token16(int64_t slot) const { return kv16_.data() + slot * kQkDim; }  // bf16/fp16
  const int8_t* latent_i8(int64_t slot) const { return latent8_.data() + slot * kLatentDim; }
  const uint16_t* rope_bf16(int64_t slot) const { return rope16_.data() + slot * kRopeDim; }
  float token_scale(int64_t slot) const { return token_scale_[slot]; }
  float tensor_scale() const { return tensor_scale_; }
  const float* channel_scales() const { return channel_scale_.data(); }
  KvScale scale_mode() const { return cfg_.scale; }
  // The largest finite magnitude ever stored (as the kernels read it), for decode's check that
  // its fp32 sums cannot overflow; it only grows, so a value overwritten later still counts.
  float max_abs() const { return max_abs_; }

 private:
  void check_slot(int64_t slot) const;
  int write_stored(int64_t slot, const float* token);  // the token as given, no rotation
  void note_magnitude(float v) {
    if (std::isfinite(v) && std::fabs(v) > max_abs_) max_abs_ = std::fabs(v);
  }
  void require_static_scale() const;

  CacheConfig cfg_;
  AlignedVec<uint16_t> kv16_;      // bf16 / fp16
  AlignedVec<int8_t> latent8_;     // int8
  AlignedVec<uint16_t> rope16_;    // int8: rope in bf16
  AlignedVec<uint8_t> fp8_;        // fp8: 656-byte tokens
  std::vector<float> token_scale_; // int8, token and group modes [slots, kv_token_scales]
  float tensor_scale_ = 0.f;       // int8, tensor mode (0: not set)
  float max_abs_ = 0.f;            // see max_abs()
  std::vector<float> channel_scale_;  // int8, channel mode (empty: not set)
};

// Hands out blocks of a pool to sequences. Running out of blocks is an mla::Error and leaves the
// allocator unchanged.
class MLA_API BlockAllocator {
 public:
  // shuffle_seed != 0 hands out free blocks in a shuffled order (scattered block tables).
  BlockAllocator(int64_t num_blocks, int block_size, uint64_t shuffle_seed = 0);

  int add_sequence();                      // a new empty sequence; returns its id
  // Appends n tokens to sequence `seq`, allocating blocks as needed; returns their slots.
  std::vector<int64_t> append(int seq, int n);
  void free(int seq);                      // returns the sequence's blocks to the pool
  int seq_len(int seq) const;
  const std::vector<int32_t>& block_table(int seq) const;
  int64_t slot(int seq, int pos) const;    // slot of token `pos` of sequence `seq`
  int64_t free_blocks() const { return int64_t(free_.size()); }
  int num_sequences() const { return int(seqs_.size()); }
  // Block tables of the given sequences as one [n, max_blocks] array, padded with -1.
  std::vector<int32_t> block_table_array(const std::vector<int>& seqs, int* max_blocks) const;

 private:
  struct Seq {
    bool live = false;
    int len = 0;
    std::vector<int32_t> blocks;
  };
  const Seq& get(int seq) const;
  int64_t num_blocks_;
  int block_size_;
  std::vector<int32_t> free_;  // a stack; back() is handed out next
  std::vector<Seq> seqs_;
};

}  // namespace mla
