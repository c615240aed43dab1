// Loading the attention weights of one layer from a checkpoint, with every check done up front.
#include "layer/weights.h"

#include <algorithm>
#include <cmath>

#include "mla/dtype.h"
#include "mla/status.h"

namespace mla::layer {

using cpu::LinearWeight;
using cpu::WDType;

std::string attn_prefix(int layer) { return "model.layers." + std::to_string(layer) + ".self_attn."; }

namespace {

LinearWeight load_linear(const ModelConfig& c, const TensorStore& s, const std::string& name,
                         int64_t out, int64_t in) {
  const StTensor t = s.get(name + ".weight", {out, in},
                             {StDType::bf16, StDType::f16, StDType::f32, StDType::f8_e4m3});
  LinearWeight w{.out = out, .in = in, .w = t.data, .ld = in};
  switch (t.dtype) {
    case StDType::bf16: w.dtype = WDType::bf16; break;
    case StDType::f16: w.dtype = WDType::f16; break;
    case StDType::f32: w.dtype = WDType::f32; break;
    default: {
      w.dtype = WDType::fp8_e4m3;
      MLA_CHECK(c.fp8_block_rows > 0, t.file << ": tensor " << t.name
                                             << " is F8_E4M3 but config.json has no "
                                                "quantization_config.weight_block_size");
      w.block_rows = c.fp8_block_rows;
      w.block_cols = c.fp8_block_cols;
      const int64_t sr = (out + w.block_rows - 1) / w.block_rows, sc = (in + w.block_cols - 1) / w.block_cols;
      const StTensor sv = s.get(name + ".weight_scale_inv", {sr, sc}, {StDType::f32});
      const float* sp = static_cast<const float*>(sv.data);
      for (int64_t i = 0; i < sr * sc; ++i)
        MLA_CHECK(std::isfinite(sp[i]), sv.file << ": tensor " << sv.name << " element " << i
                                                << " is not finite");
      w.scale_inv = sp;
      w.scale_ld = sc;
    }
  }
  return w;
}

// A split of an fp8 tensor at index `at` of a dimension of `n` cuts a scale block unless `at` is a
// multiple of the block or the dimension's end.
void check_block_cut(const LinearWeight& w, const std::string& name, const char* dim, int64_t at,
                     int64_t n, int block, int rank, int size) {
  MLA_CHECK(at % block == 0 || at == n,
            name << ": tensor parallelism over " << size << " ranks splits its " << n << " " << dim
                 << " at " << at << " (rank " << rank << "), inside a " << w.block_rows << "x"
                 << w.block_cols << " fp8 scale block; choose --tp so each rank's heads start and "
                    "end on block boundaries");
}

// Rows [r0, r0 + rows) of w: a view with an offset; row0 keeps the fp8 scale rows global.
LinearWeight row_shard(const LinearWeight& w, const std::string& name, int64_t r0, int64_t rows,
                       int rank, int size) {
  if (rows == w.out) return w;
  if (w.dtype == WDType::fp8_e4m3) {
    check_block_cut(w, name, "rows", r0, w.out, w.block_rows, rank, size);
    check_block_cut(w, name, "rows", r0 + rows, w.out, w.block_rows, rank, size);
  }
  LinearWeight s = w;
  s.out = rows;
  s.row0 = w.row0 + r0;
  s.w = static_cast<const char*>(w.w) + r0 * w.ld * int64_t(cpu::wdtype_size(w.dtype));
  return s;
}

// Columns [c0, c0 + cols) of w: a view starting c0 elements in, with w's ld; the fp8 scale
// columns move by whole blocks (a cut inside one is refused), so `c / block_cols` stays right.
LinearWeight col_shard(const LinearWeight& w, const std::string& name, int64_t c0, int64_t cols,
                       int rank, int size) {
  if (cols == w.in) return w;
  LinearWeight s = w;
  if (w.dtype == WDType::fp8_e4m3) {
    check_block_cut(w, name, "columns", c0, w.in, w.block_cols, rank, size);
    check_block_cut(w, name, "columns", c0 + cols, w.in, w.block_cols, rank, size);
    s.scale_inv = w.scale_inv + c0 / w.block_cols;
  }
  s.in = cols;
  s.w = static_cast<const char*>(w.w) + c0 * int64_t(cpu::wdtype_size(w.dtype));
  return s;
}

std::vector<float> load_norm(const TensorStore& s, const std::string& name, int64_t n) {
  const StTensor t = s.get(name + ".weight", {n}, {StDType::bf16, StDType::f16, StDType::f32});
  std::vector<float> v(n);
  for (int64_t i = 0; i < n; ++i)
    v[i] = t.dtype == StDType::f32 ? static_cast<const float*>(t.data)[i]
           : t.dtype == StDType::bf16 ? bf16_to_f32(static_cast<const uint16_t*>(t.data)[i])
                                      : f16_to_f32(static_cast<const uint16_t*>(t.data)[i]);
  return v;
}

// R folded into the absorbed projections (see weights.h), in float64: each latent-side vector x
// of W_UK[h]^T (a column: stride nope) and of W_UV[h] (a row) becomes x R.
void fold_rotation(const ModelConfig& c, KvRotation rotation, AttnWeights& w) {
  const int64_t H = w.heads, nope = c.qk_nope_head_dim, v = c.v_head_dim;
  const int64_t per_head = int64_t(kLatentDim) * nope;
  std::vector<double> x(kLatentDim);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < nope; ++n) {
      float* col = w.uk_t_f32.data() + h * per_head + n;
      for (int64_t i = 0; i < kLatentDim; ++i) x[i] = col[i * nope];
      rotate_latent(rotation, x.data());
      for (int64_t i = 0; i < kLatentDim; ++i) col[i * nope] = float(x[i]);
    }
  w.uv_f32.resize(H * v * kLatentDim);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t j = 0; j < v; ++j) {
      const int64_t r = h * (nope + v) + nope + j;
      for (int64_t i = 0; i < kLatentDim; ++i) x[i] = w.kv_b.at(r, i);
      rotate_latent(rotation, x.data());
      float* row = w.uv_f32.data() + (h * v + j) * kLatentDim;
      for (int64_t i = 0; i < kLatentDim; ++i) row[i] = float(x[i]);
    }
}

}  // namespace

std::vector<int64_t> split_rows(const LinearWeight& w, int p) {
  const int64_t unit = w.dtype == WDType::fp8_e4m3 ? w.block_rows : 1;
  const int64_t units = (w.out + unit - 1) / unit;
  std::vector<int64_t> s(p + 1);
  for (int r = 0; r <= p; ++r) s[r] = std::min(w.out, r * units / p * unit);
  return s;
}

void load_attn_weights(const ModelConfig& c, const TensorStore& s, int layer, AttnWeights& w,
                       KvRotation rotation, LayerWeights format, bool tiles, int tp_rank,
                       int tp_size) {
  MLA_CHECK(layer >= 0 && layer < c.num_hidden_layers,
            "--layer " << layer << " is outside the model's " << c.num_hidden_layers << " layers");
  MLA_CHECK(tp_size >= 1 && tp_rank >= 0 && tp_rank < tp_size,
            "tensor-parallel rank " << tp_rank << " is outside a group of " << tp_size);
  MLA_CHECK(c.num_heads % tp_size == 0, "tensor parallelism over " << tp_size
                                            << " ranks does not divide the model's " << c.num_heads
                                            << " attention heads");
  const std::string p = attn_prefix(layer);
  const int64_t H = c.num_heads / tp_size, D = c.hidden_size, nope = c.qk_nope_head_dim,
                v = c.v_head_dim;
  const int64_t qk = c.qk_head_dim(), h0 = H * tp_rank;
  w.head0 = h0;
  w.heads = H;
  // Every tensor is checked whole (shapes, dtypes, scales), then the head-split ones cut to the
  // rank's heads; only the shard's pages of the mapping are ever read.
  // The head-free down-projections by rows (weights.h): a view of the rank's rows.
  const auto down_shard = [&](const LinearWeight& whole, const std::string& name,
                              std::vector<int64_t>& split) {
    split = split_rows(whole, tp_size);
    return row_shard(whole, name, split[tp_rank], split[tp_rank + 1] - split[tp_rank], tp_rank,
                     tp_size);
  };
  if (c.q_lora_rank > 0) {
    w.q_a = down_shard(load_linear(c, s, p + "q_a_proj", c.q_lora_rank, D), p + "q_a_proj",
                       w.q_a_split);
    w.q_a_norm = load_norm(s, p + "q_a_layernorm", c.q_lora_rank);
    w.q_b = row_shard(load_linear(c, s, p + "q_b_proj", c.num_heads * qk, c.q_lora_rank),
                      p + "q_b_proj", h0 * qk, H * qk, tp_rank, tp_size);
  } else {
    w.q_proj = row_shard(load_linear(c, s, p + "q_proj", c.num_heads * qk, D), p + "q_proj",
                         h0 * qk, H * qk, tp_rank, tp_size);
  }
  w.kv_a = down_shard(load_linear(c, s, p + "kv_a_proj_with_mqa", kLatentDim + kRopeDim, D),
                      p + "kv_a_proj_with_mqa", w.kv_a_split);
  w.kv_a_norm = load_norm(s, p + "kv_a_layernorm", kLatentDim);
  w.kv_b = row_shard(load_linear(c, s, p + "kv_b_proj", c.num_heads * (nope + v), kLatentDim),
                     p + "kv_b_proj", h0 * (nope + v), H * (nope + v), tp_rank, tp_size);
  w.o = col_shard(load_linear(c, s, p + "o_proj", D, c.num_heads * v), p + "o_proj", h0 * v, H * v,
                  tp_rank, tp_size);

  // W_UK[h] = kv_b rows h*(nope+v) .. +nope; stored transposed so absorption is a plain product.
  w.rotation = rotation;
  const bool rotated = rotation != KvRotation::none;
  const bool bf16 = w.kv_b.dtype == WDType::bf16 && !rotated;
  const int64_t per_head = int64_t(kLatentDim) * nope;
  if (bf16) w.uk_t_bf16.resize(H * per_head); else w.uk_t_f32.resize(H * per_head);
  for (int64_t h = 0; h < H; ++h)
    for (int64_t n = 0; n < nope; ++n) {
      const int64_t r = h * (nope + v) + n;
      for (int64_t col = 0; col < kLatentDim; ++col) {
        const int64_t i = h * per_head + col * nope + n;
        if (bf16) w.uk_t_bf16[i] = static_cast<const uint16_t*>(w.kv_b.w)[r * kLatentDim + col];
        else w.uk_t_f32[i] = w.kv_b.at(r, col);
      }
    }
  if (rotated) fold_rotation(c, rotation, w);
  for (int64_t h = 0; h < H; ++h) {
    LinearWeight uk{.out = kLatentDim, .in = nope, .dtype = bf16 ? WDType::bf16 : WDType::f32, .ld = nope};
    uk.w = bf16 ? static_cast<const void*>(w.uk_t_bf16.data() + h * per_head)
                : static_cast<const void*>(w.uk_t_f32.data() + h * per_head);
    w.uk_t.push_back(uk);
    LinearWeight uv = w.kv_b;
    const int64_t r0 = h * (nope + v) + nope;
    uv.out = v;
    uv.row0 = w.kv_b.row0 + r0;  // fp8 scale rows stay global
    uv.w = static_cast<const char*>(w.kv_b.w) + r0 * kLatentDim * int64_t(cpu::wdtype_size(w.kv_b.dtype));
    if (rotated)
      uv = LinearWeight{.out = v, .in = kLatentDim, .dtype = WDType::f32,
                        .w = w.uv_f32.data() + h * v * kLatentDim, .ld = kLatentDim};
    w.uv.push_back(uv);
  }
  // The products a step runs: int8 and tile copies are made for exactly these.
  std::vector<LinearWeight*> used{&w.kv_a, &w.o};
  if (c.q_lora_rank > 0) used.push_back(&w.q_a), used.push_back(&w.q_b);
  else used.push_back(&w.q_proj);
  for (int64_t h = 0; h < H; ++h) used.push_back(&w.uk_t[h]), used.push_back(&w.uv[h]);
  w.format = format;
  if (format == LayerWeights::int8) {
    int64_t elems = 0, rows = 0;
    for (const LinearWeight* l : used) elems += l->out * l->in, rows += l->out;
    w.i8.resize(elems);
    w.i8_scale.resize(rows);
    elems = rows = 0;
    for (LinearWeight* l : used) {
      cpu::quantize_rows_i8(*l, w.i8.data() + elems, w.i8_scale.data() + rows);
      *l = LinearWeight{.out = l->out, .in = l->in, .dtype = WDType::i8, .w = w.i8.data() + elems,
                        .ld = l->in, .row_scale = w.i8_scale.data() + rows};
      elems += l->out * l->in, rows += l->out;
    }
  }
  if (tiles) {
    const bool i8 = format == LayerWeights::int8;
    int64_t elems = 0;
    for (const LinearWeight* l : used) elems += cpu::tile_elems(l->out, l->in);
    if (i8) w.tiles_i8.resize(elems); else w.tiles.resize(elems);
    elems = 0;
    for (LinearWeight* l : used) {
      if (i8) {
        cpu::pack_tiles_i8(*l, w.tiles_i8.data() + elems);
        l->tiles_i8 = w.tiles_i8.data() + elems;
      } else {
        cpu::pack_tiles(*l, w.tiles.data() + elems);
        l->tiles = w.tiles.data() + elems;
      }
      elems += cpu::tile_elems(l->out, l->in);
    }
  }
  w.bytes_per_step = w.kv_a.bytes() + w.o.bytes() +
                     (c.q_lora_rank > 0 ? w.q_a.bytes() + w.q_b.bytes() : w.q_proj.bytes());
  for (int64_t h = 0; h < H; ++h) w.bytes_per_step += w.uk_t[h].bytes() + w.uv[h].bytes();
}

}  // namespace mla::layer
