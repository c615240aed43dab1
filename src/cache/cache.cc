// Paged latent cache storage, int8 quantization, and the block allocator.
#include "mla/cache.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <cstring>
#include <random>

#include "mla/dtype.h"
#include "mla/status.h"

namespace mla {

const char* kv_dtype_name(KvDType t) {
  switch (t) {
    case KvDType::bf16: return "bf16";
    case KvDType::fp16: return "fp16";
    case KvDType::int8: return "int8";
    case KvDType::fp8: return "fp8";
  }
  return "?";
}

const char* kv_scale_name(KvScale s) {
  switch (s) {
    case KvScale::token: return "token";
    case KvScale::tensor: return "tensor";
    case KvScale::channel: return "channel";
    case KvScale::group32: return "group32";
    case KvScale::group64: return "group64";
    case KvScale::group128: return "group128";
  }
  return "?";
}

KvDType parse_kv_dtype(const std::string& s) {
  if (s == "bf16") return KvDType::bf16;
  if (s == "fp16") return KvDType::fp16;
  if (s == "int8") return KvDType::int8;
  if (s == "fp8") return KvDType::fp8;
  MLA_FAIL("unknown kv dtype '" << s << "' (expected bf16, fp16, int8 or fp8)");
}

KvScale parse_kv_scale(const std::string& s) {
  if (s == "token") return KvScale::token;
  if (s == "tensor") return KvScale::tensor;
  if (s == "channel") return KvScale::channel;
  if (s == "group32") return KvScale::group32;
  if (s == "group64") return KvScale::group64;
  if (s == "group128") return KvScale::group128;
  MLA_FAIL("unknown kv scale mode '" << s
                                     << "' (expected token, tensor, channel, group32, group64 or "
                                        "group128)");
}

namespace {

// Symmetric int8: round to nearest even, saturate at +-127. A zero or non-finite scale stores 0
// (a zero scale means every value it covers was 0; a NaN scale only comes from garbage slots).
inline int8_t quantize(float x, float scale) {
  if (!(scale > 0.f) || !std::isfinite(scale)) return 0;
  float q = std::nearbyint(x / scale);
  if (!(q == q)) return 0;
  return int8_t(std::clamp(q, -127.f, 127.f));
}

float max_abs(const float* x, int n) {
  float m = 0.f;
  for (int i = 0; i < n; ++i) m = std::max(m, std::fabs(x[i]));
  return m;
}

// The fp8 tile scale from r = max(max|x| / 448, 1e-4) (FlashMLA's quantize_k_cache clamps at 1e-4,
// so an all-zero tile gets a positive scale). exact (the default): r itself, so the tile's largest
// value is stored exactly (448 x r) and the rest keep e4m3's full range; on outlier channels the
// largest value of a tile is an outlier's, so about half the outlier values become exact (issue
// 20). pow2: FlashMLA's, the power of two at or above r, which keeps x / scale exact but leaves up
// to half of e4m3's top binade unused. Non-finite max|x| gives a non-finite scale: the tile reads
// NaN.
float fp8_scale(float amax, Fp8Scale mode) {
  const float r = std::max(amax / 448.f, 1e-4f);
  if (!std::isfinite(r) || mode == Fp8Scale::exact) return r;
  int e;
  const float m = std::frexp(r, &e);  // r = m * 2^e, m in [0.5, 1)
  return std::ldexp(1.f, m == 0.5f ? e - 1 : e);
}

int count_nonfinite(const float* x, int n) {
  int k = 0;
  for (int i = 0; i < n; ++i) k += !std::isfinite(x[i]);
  return k;
}

}  // namespace

PagedLatentCache::PagedLatentCache(const CacheConfig& cfg) : cfg_(cfg) {
  MLA_CHECK(cfg.num_blocks > 0, "cache: num_blocks = " << cfg.num_blocks << " must be positive");
  MLA_CHECK(cfg.block_size > 0, "cache: block_size = " << cfg.block_size << " must be positive");
  MLA_CHECK(cfg.num_blocks <= (int64_t(1) << 31) / cfg.block_size,
            "cache: " << cfg.num_blocks << " blocks x " << cfg.block_size
                      << " tokens exceeds 2^31 slots");
  const int64_t n = num_slots();
  if (cfg.dtype == KvDType::int8) {
    latent8_.assign(n * kLatentDim, 0);
    rope16_.assign(n * kRopeDim, 0);
    token_scale_.assign(n * kv_token_scales(cfg.scale), 0.f);
  } else if (cfg.dtype == KvDType::fp8) {
    fp8_.assign(n * kFp8TokenBytes, 0);
  } else {
    kv16_.assign(n * kQkDim, 0);
  }
}

void PagedLatentCache::check_slot(int64_t slot) const {
  MLA_CHECK(slot >= 0 && slot < num_slots(),
            "cache: slot " << slot << " outside the pool of " << num_blocks() << " blocks x "
                           << block_size() << " tokens");
}

void PagedLatentCache::set_tensor_scale(float s) {
  MLA_CHECK(cfg_.dtype == KvDType::int8 && cfg_.scale == KvScale::tensor,
            "cache: a tensor scale needs an int8 cache in tensor-scale mode");
  MLA_CHECK(s > 0.f && std::isfinite(s), "cache: tensor scale " << s << " must be positive and finite");
  tensor_scale_ = s;
}

void PagedLatentCache::set_channel_scales(const float* s) {
  MLA_CHECK(cfg_.dtype == KvDType::int8 && cfg_.scale == KvScale::channel,
            "cache: channel scales need an int8 cache in channel-scale mode");
  for (int c = 0; c < kLatentDim; ++c)
    MLA_CHECK(s[c] > 0.f && std::isfinite(s[c]),
              "cache: channel scale[" << c << "] = " << s[c] << " must be positive and finite");
  channel_scale_.assign(s, s + kLatentDim);
}

void PagedLatentCache::calibrate(const float* kv, const std::vector<int64_t>& slots) {
  if (cfg_.dtype != KvDType::int8 || kv_token_scales(cfg_.scale)) return;
  std::vector<float> m(kLatentDim, 0.f);
  float rotated[kLatentDim];
  for (int64_t s : slots) {
    check_slot(s);
    const float* x = kv + s * kQkDim;
    for (int c = 0; c < kLatentDim; ++c)
      MLA_CHECK(std::isfinite(x[c]), "cache: calibration slot " << s << " channel " << c
                                         << " holds " << x[c] << " (not finite)");
    if (cfg_.rotation != KvRotation::none) {  // the scales of the values stored
      x = std::copy(x, x + kLatentDim, rotated) - kLatentDim;
      rotate_latent(cfg_.rotation, rotated);
    }
    for (int c = 0; c < kLatentDim; ++c) m[c] = std::max(m[c], std::fabs(x[c]));
  }
  // A channel (or tensor) that is 0 everywhere gets scale 1: any scale represents 0 exactly.
  if (cfg_.scale == KvScale::tensor) {
    const float t = *std::max_element(m.begin(), m.end());
    set_tensor_scale(t > 0.f ? t / 127.f : 1.f);
  } else {
    for (auto& v : m) v = v > 0.f ? v / 127.f : 1.f;
    set_channel_scales(m.data());
  }
}

void PagedLatentCache::require_static_scale() const {
  if (cfg_.scale == KvScale::tensor)
    MLA_CHECK(tensor_scale_ > 0.f, "cache: int8 tensor-scale mode needs set_tensor_scale() or "
                                   "calibrate() before writing");
  if (cfg_.scale == KvScale::channel)
    MLA_CHECK(!channel_scale_.empty(), "cache: int8 channel-scale mode needs "
                                       "set_channel_scales() or calibrate() before writing");
}

int PagedLatentCache::write(int64_t slot, const float* x) {
  if (cfg_.rotation == KvRotation::none) return write_stored(slot, x);
  check_slot(slot);
  alignas(64) float t[kQkDim];
  std::copy(x, x + kQkDim, t);
  rotate_latent(cfg_.rotation, t);
  int lost = write_stored(slot, t);
  // int8 and fp8 count non-finite latent values; one in the input made the whole rotated latent
  // non-finite, so count the input's instead.
  if (cfg_.dtype == KvDType::int8 || cfg_.dtype == KvDType::fp8)
    lost += count_nonfinite(x, kLatentDim) - count_nonfinite(t, kLatentDim);
  return lost;
}

int PagedLatentCache::write_stored(int64_t slot, const float* x) {
  check_slot(slot);
  int lost = 0;  // finite values stored as Inf, non-finite latent values in an int8 cache
  switch (cfg_.dtype) {
    case KvDType::bf16: {
      uint16_t* d = kv16_.data() + slot * kQkDim;
      for (int i = 0; i < kQkDim; ++i) {
        d[i] = f32_to_bf16(x[i]);
        lost += std::isfinite(x[i]) && !std::isfinite(bf16_to_f32(d[i]));
        note_magnitude(bf16_to_f32(d[i]));
      }
      return lost;
    }
    case KvDType::fp16: {
      uint16_t* d = kv16_.data() + slot * kQkDim;
      for (int i = 0; i < kQkDim; ++i) {
        d[i] = f32_to_f16(x[i]);
        lost += std::isfinite(x[i]) && !std::isfinite(f16_to_f32(d[i]));
        note_magnitude(f16_to_f32(d[i]));
      }
      return lost;
    }
    case KvDType::fp8: {
      uint8_t* d = fp8_.data() + slot * kFp8TokenBytes;
      for (int g = 0; g < kFp8Tiles; ++g) {
        const float* xg = x + g * kFp8Tile;
        // A NaN or Inf latent value has no e4m3 code with a finite scale (Inf would saturate to
        // 448 x scale): its tile's scale becomes NaN, so the rows that see the token come out
        // NaN (DESIGN §6); counted like an int8 cache's.
        int bad = 0;
        for (int c = 0; c < kFp8Tile; ++c) bad += !std::isfinite(xg[c]);
        lost += bad;
        const float s = bad ? std::numeric_limits<float>::quiet_NaN()
                            : fp8_scale(mla::max_abs(xg, kFp8Tile), cfg_.fp8_scale);
        std::memcpy(d + kFp8ScaleOffset + 4 * g, &s, 4);
        for (int c = 0; c < kFp8Tile; ++c) {
          d[g * kFp8Tile + c] = bad ? 0 : f32_to_fp8e4m3(xg[c] / s);
          if (!bad) note_magnitude(fp8e4m3_to_f32(d[g * kFp8Tile + c]) * s);
        }
      }
      for (int i = 0; i < kRopeDim; ++i) {
        const float v = x[kLatentDim + i];
        const uint16_t r = f32_to_bf16(v);
        std::memcpy(d + kFp8RopeOffset + 2 * i, &r, 2);
        lost += std::isfinite(v) && !std::isfinite(bf16_to_f32(r));
        note_magnitude(bf16_to_f32(r));
      }
      return lost;
    }
    case KvDType::int8: break;
  }
  require_static_scale();
  int8_t* d = latent8_.data() + slot * kLatentDim;
  for (int c = 0; c < kLatentDim; ++c) lost += !std::isfinite(x[c]);
  switch (cfg_.scale) {
    case KvScale::token:
    case KvScale::group32:
    case KvScale::group64:
    case KvScale::group128: {
      // One scale per group of channels of this token, max|x| / 127 over the group. A NaN or Inf
      // latent value cannot be quantized: its group's scale becomes NaN, so every row that sees
      // the token comes out NaN (DESIGN §6) rather than reading a made-up 0.
      const int gs = kv_scale_group(cfg_.scale), ng = kLatentDim / gs;
      for (int g = 0; g < ng; ++g) {
        bool finite = true;
        for (int c = g * gs; c < (g + 1) * gs; ++c) finite &= std::isfinite(x[c]);
        const float s = finite ? mla::max_abs(x + g * gs, gs) / 127.f
                               : std::numeric_limits<float>::quiet_NaN();
        token_scale_[slot * ng + g] = s;
        for (int c = g * gs; c < (g + 1) * gs; ++c) d[c] = quantize(x[c], s);
      }
      break;
    }
    case KvScale::tensor:
      for (int c = 0; c < kLatentDim; ++c) d[c] = quantize(x[c], tensor_scale_);
      break;
    case KvScale::channel:
      for (int c = 0; c < kLatentDim; ++c) d[c] = quantize(x[c], channel_scale_[c]);
      break;
  }
  uint16_t* r = rope16_.data() + slot * kRopeDim;
  for (int i = 0; i < kRopeDim; ++i) {
    const float v = x[kLatentDim + i];
    r[i] = f32_to_bf16(v);
    lost += std::isfinite(v) && !std::isfinite(bf16_to_f32(r[i]));
    note_magnitude(bf16_to_f32(r[i]));
  }
  const int ng = kv_token_scales(cfg_.scale);
  for (int c = 0; c < kLatentDim; ++c) {
    const float s = cfg_.scale == KvScale::tensor    ? tensor_scale_
                    : cfg_.scale == KvScale::channel ? channel_scale_[c]
                                                     : token_scale_[slot * ng + c / (kLatentDim / ng)];
    note_magnitude(float(d[c]) * s);
  }
  return lost;
}

void PagedLatentCache::read(int64_t slot, float* x) const {
  check_slot(slot);
  view().read(slot, x);
}

CacheView PagedLatentCache::view() const {
  CacheView v{.format = cfg_.dtype,
                   .blocks = cfg_.num_blocks,
                   .tokens_per_block = cfg_.block_size,
                   .kv = kv16_.data(),
                   .kv_block_stride = int64_t(cfg_.block_size) * kQkDim,
                   .kv_token_stride = kQkDim,
                   .latent = latent8_.data(),
                   .rope = rope16_.data(),
                   .scale = cfg_.scale,
                   .scale_per_token = token_scale_.data(),
                   .scale_per_tensor = tensor_scale_,
                   .scale_per_channel = channel_scale_.empty() ? nullptr : channel_scale_.data(),
                   .fp8 = fp8_.data(),
                   .rotation = cfg_.rotation,
                   .max_abs = max_abs_};
  if (cfg_.dtype == KvDType::fp8) {
    v.kv_block_stride = int64_t(cfg_.block_size) * kFp8TokenBytes;
    v.kv_token_stride = kFp8TokenBytes;
  }
  return v;
}

void CacheView::read(int64_t slot, float* x) const {
  read_stored(slot, x);
  unrotate_latent(rotation, x);
}

void CacheView::read_stored(int64_t slot, float* x) const {
  switch (format) {
    case KvDType::bf16: {
      const uint16_t* s = token16(slot);
      for (int i = 0; i < kQkDim; ++i) x[i] = bf16_to_f32(s[i]);
      return;
    }
    case KvDType::fp16: {
      const uint16_t* s = token16(slot);
      for (int i = 0; i < kQkDim; ++i) x[i] = f16_to_f32(s[i]);
      return;
    }
    case KvDType::fp8: {
      const uint8_t* t = token_fp8(slot);
      for (int c = 0; c < kLatentDim; ++c) {
        float s;
        std::memcpy(&s, t + kFp8ScaleOffset + 4 * (c / kFp8Tile), 4);
        // As every fp8 kernel widens it: bf16(e4m3 x scale) (exact for power-of-two scales).
        x[c] = bf16_to_f32(f32_to_bf16(fp8e4m3_to_f32(t[c]) * s));
      }
      for (int i = 0; i < kRopeDim; ++i) {
        uint16_t r;
        std::memcpy(&r, t + kFp8RopeOffset + 2 * i, 2);
        x[kLatentDim + i] = bf16_to_f32(r);
      }
      return;
    }
    case KvDType::int8: break;
  }
  const int8_t* q = latent_i8(slot);
  const int gs = kv_scale_group(scale);
  const float* ts = gs ? token_scales(slot) : nullptr;
  for (int c = 0; c < kLatentDim; ++c) {
    const float s = ts ? ts[c / gs] : scale == KvScale::tensor ? scale_per_tensor : scale_per_channel[c];
    x[c] = float(q[c]) * s;
  }
  const uint16_t* r = rope_bf16(slot);
  for (int i = 0; i < kRopeDim; ++i) x[kLatentDim + i] = bf16_to_f32(r[i]);
}

void check_view(const CacheView& v) {
  MLA_CHECK(v.blocks >= 0, "cache view: num_blocks = " << v.blocks << " is negative");
  MLA_CHECK(v.tokens_per_block >= 1,
            "cache view: block_size = " << v.tokens_per_block << " must be at least 1");
  if (v.blocks == 0) return;
  if (v.format == KvDType::fp8) {
    MLA_CHECK(v.fp8, "cache view: the fp8 k_cache pointer is null");
    MLA_CHECK(v.kv_token_stride >= kFp8TokenBytes, "cache view: fp8 token stride "
                                                       << v.kv_token_stride << " bytes is below "
                                                       << kFp8TokenBytes);
    MLA_CHECK(v.kv_block_stride >= v.tokens_per_block * v.kv_token_stride,
              "cache view: fp8 block stride " << v.kv_block_stride << " is below block_size x token "
                                              << "stride = " << v.tokens_per_block * v.kv_token_stride);
    MLA_CHECK(v.kv_token_stride % 4 == 0 && v.kv_block_stride % 4 == 0 &&
                  reinterpret_cast<uintptr_t>(v.fp8) % 4 == 0,
              "cache view: fp8 tokens must start at 4-byte boundaries (their float32 scales), "
              "strides " << v.kv_block_stride << ", " << v.kv_token_stride);
    return;
  }
  if (v.format != KvDType::int8) {
    MLA_CHECK(v.kv, "cache view: the " << kv_dtype_name(v.format) << " k_cache pointer is null");
    MLA_CHECK(v.kv_token_stride >= kQkDim, "cache view: token stride " << v.kv_token_stride
                                                                       << " is below " << kQkDim);
    MLA_CHECK(v.kv_block_stride >= v.tokens_per_block * v.kv_token_stride,
              "cache view: block stride " << v.kv_block_stride << " is below block_size x token "
                                          << "stride = " << v.tokens_per_block * v.kv_token_stride);
    return;
  }
  MLA_CHECK(v.latent && v.rope, "cache view: the int8 latent or rope pointer is null");
  switch (v.scale) {
    case KvScale::token:
    case KvScale::group32:
    case KvScale::group64:
    case KvScale::group128:
      MLA_CHECK(v.scale_per_token, "cache view: the per-token " << kv_scale_name(v.scale)
                                                                << " scales pointer is null");
      break;
    case KvScale::tensor:
      MLA_CHECK(std::isfinite(v.scale_per_tensor) && v.scale_per_tensor > 0.f,
                "cache view: tensor scale " << v.scale_per_tensor << " is not positive and finite"
                                            << " (set or calibrate it first)");
      break;
    case KvScale::channel:
      MLA_CHECK(v.scale_per_channel, "cache view: the channel scales pointer is null"
                                         << " (set or calibrate them first)");
      break;
  }
}

int64_t PagedLatentCache::import_f32(const float* kv) {
  int64_t lost = 0;
  for (int64_t s = 0; s < num_slots(); ++s) lost += write(s, kv + s * kQkDim);
  return lost;
}

void PagedLatentCache::export_f32(float* kv) const {
  for (int64_t s = 0; s < num_slots(); ++s) read(s, kv + s * kQkDim);
}

Int8CacheContent PagedLatentCache::export_int8() const {
  MLA_CHECK(cfg_.dtype == KvDType::int8, "cache: export_int8 on a " << kv_dtype_name(cfg_.dtype)
                                                                     << " cache");
  Int8CacheContent c;
  c.latent.assign(latent8_.begin(), latent8_.end());
  c.rope.assign(rope16_.begin(), rope16_.end());
  c.token_scale = token_scale_;
  c.tensor_scale = tensor_scale_;
  c.channel_scale = channel_scale_;
  return c;
}

void PagedLatentCache::import_int8(const Int8CacheContent& c) {
  MLA_CHECK(cfg_.dtype == KvDType::int8, "cache: import_int8 into a "
                                             << kv_dtype_name(cfg_.dtype) << " cache");
  const int64_t n = num_slots();
  MLA_CHECK(int64_t(c.latent.size()) == n * kLatentDim,
            "cache: int8 import: latent has " << c.latent.size() << " values, expected "
                                              << n * kLatentDim);
  MLA_CHECK(int64_t(c.rope.size()) == n * kRopeDim,
            "cache: int8 import: rope has " << c.rope.size() << " values, expected " << n * kRopeDim);
  for (size_t i = 0; i < c.latent.size(); ++i)
    MLA_CHECK(c.latent[i] >= -127, "cache: int8 import: latent value -128 at " << i
                                       << " (the symmetric format uses -127..127)");
  switch (cfg_.scale) {
    case KvScale::token:
    case KvScale::group32:
    case KvScale::group64:
    case KvScale::group128: {
      const int64_t want = n * kv_token_scales(cfg_.scale);
      MLA_CHECK(int64_t(c.token_scale.size()) == want,
                "cache: int8 import: " << c.token_scale.size() << " " << kv_scale_name(cfg_.scale)
                                       << " scales, expected " << want << " (" << n << " slots x "
                                       << kv_token_scales(cfg_.scale) << ")");
      token_scale_ = c.token_scale;
      break;
    }
    case KvScale::tensor: set_tensor_scale(c.tensor_scale); break;
    case KvScale::channel:
      MLA_CHECK(c.channel_scale.size() == size_t(kLatentDim),
                "cache: int8 import: " << c.channel_scale.size() << " channel scales, expected 512");
      set_channel_scales(c.channel_scale.data());
      break;
  }
  latent8_.assign(c.latent.begin(), c.latent.end());
  rope16_.assign(c.rope.begin(), c.rope.end());
  const CacheView v = view();
  for (int64_t s = 0; s < num_slots(); ++s) {
    float tok[kQkDim];
    v.read_stored(s, tok);
    for (float t : tok) note_magnitude(t);
  }
}

std::vector<uint8_t> PagedLatentCache::export_fp8() const {
  MLA_CHECK(cfg_.dtype == KvDType::fp8, "cache: export_fp8 on a " << kv_dtype_name(cfg_.dtype)
                                                                   << " cache");
  return std::vector<uint8_t>(fp8_.begin(), fp8_.end());
}

void PagedLatentCache::import_fp8(const uint8_t* bytes, size_t n) {
  MLA_CHECK(cfg_.dtype == KvDType::fp8, "cache: import_fp8 into a " << kv_dtype_name(cfg_.dtype)
                                                                    << " cache");
  MLA_CHECK(int64_t(n) == num_slots() * kFp8TokenBytes,
            "cache: fp8 import: " << n << " bytes, expected " << num_slots() << " slots x "
                                  << kFp8TokenBytes);
  for (int64_t s = 0; s < num_slots(); ++s)
    for (int g = 0; g < kFp8Tiles; ++g) {
      float v;
      std::memcpy(&v, bytes + s * kFp8TokenBytes + kFp8ScaleOffset + 4 * g, 4);
      // 0 is allowed: a slot never written holds zeros (and reads as zeros).
      MLA_CHECK(v >= 0.f && std::isfinite(v), "cache: fp8 import: slot " << s << " scale[" << g
                                                  << "] = " << v << " is negative or not finite");
    }
  fp8_.assign(bytes, bytes + n);
  const CacheView v = view();
  for (int64_t s = 0; s < num_slots(); ++s) {
    float tok[kQkDim];
    v.read_stored(s, tok);
    for (float t : tok) note_magnitude(t);
  }
}

}  // namespace mla
