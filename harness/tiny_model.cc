// Small random DeepSeek-style checkpoints for the layer tests (see tiny_model.h).
#include "harness/tiny_model.h"

#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>
#include <vector>

#include <nlohmann/json.hpp>

#include "mla/dtype.h"

namespace mla::test {

namespace fs = std::filesystem;

std::string make_temp_dir(const std::string& tag) {
  const char* base = std::getenv("MLA_TEST_TMP");
  static int counter = 0;
  const fs::path d = fs::path(base && *base ? base : fs::temp_directory_path().string()) /
                     ("mla-" + tag + "-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

namespace {

struct Blob {
  std::string name;
  StDType dtype;
  std::vector<int64_t> shape;
  std::vector<unsigned char> bytes;
};

void put(std::vector<Blob>& out, const std::string& name, StDType dt, int64_t rows, int64_t cols,
         const std::vector<float>& v, bool vector_shape, int block = 128) {
  const int64_t n = rows * cols;
  Blob b{name, dt, vector_shape ? std::vector<int64_t>{cols} : std::vector<int64_t>{rows, cols}, {}};
  if (dt == StDType::f8_e4m3 && !vector_shape) {
    const int64_t sr = (rows + block - 1) / block, sc = (cols + block - 1) / block;
    std::vector<float> scale(sr * sc);
    for (int64_t i = 0; i < sr; ++i)
      for (int64_t j = 0; j < sc; ++j) {
        float m = 0;
        for (int64_t r = i * block; r < std::min(rows, (i + 1) * block); ++r)
          for (int64_t c = j * block; c < std::min(cols, (j + 1) * block); ++c)
            m = std::max(m, std::fabs(v[r * cols + c]));
        scale[i * sc + j] = m > 0 ? m / 448.f : 1.f;
      }
    b.bytes.resize(n);
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t c = 0; c < cols; ++c)
        b.bytes[r * cols + c] = f32_to_fp8e4m3(v[r * cols + c] / scale[(r / block) * sc + c / block]);
    out.push_back(std::move(b));
    Blob s{name.substr(0, name.size() - 6) + "weight_scale_inv", StDType::f32, {sr, sc}, {}};
    s.bytes.resize(scale.size() * 4);
    std::memcpy(s.bytes.data(), scale.data(), s.bytes.size());
    out.push_back(std::move(s));
    return;
  }
  const StDType st = dt == StDType::f8_e4m3 ? StDType::f32 : dt;  // norms stay fp32 in fp8 models
  b.dtype = st;
  b.bytes.resize(n * st_dtype_size(st));
  for (int64_t i = 0; i < n; ++i) {
    if (st == StDType::f32) std::memcpy(&b.bytes[i * 4], &v[i], 4);
    else {
      const uint16_t h = st == StDType::bf16 ? f32_to_bf16(v[i]) : f32_to_f16(v[i]);
      std::memcpy(&b.bytes[i * 2], &h, 2);
    }
  }
  out.push_back(std::move(b));
}

}  // namespace

std::string write_tiny_model(const std::string& dir, const TinyModelSpec& s) {
  fs::create_directories(dir);
  nlohmann::json cfg = {
      {"model_type", s.q_lora_rank ? "deepseek_v3" : "deepseek_v2"},
      {"hidden_size", s.hidden}, {"num_attention_heads", s.heads}, {"num_hidden_layers", s.layers},
      {"kv_lora_rank", 512}, {"qk_nope_head_dim", s.qk_nope}, {"qk_rope_head_dim", 64},
      {"v_head_dim", s.v_head}, {"rms_norm_eps", 1e-6}, {"rope_theta", 10000},
      {"max_position_embeddings", 163840}, {"attention_bias", false},
      {"rope_scaling", {{s.rope_type_key ? "rope_type" : "type", "yarn"}, {"factor", 40},
                        {"beta_fast", 32}, {"beta_slow", 1}, {"mscale", s.mscale},
                        {"mscale_all_dim", s.mscale_all_dim},
                        {"original_max_position_embeddings", 4096}}}};
  cfg["q_lora_rank"] = s.q_lora_rank ? nlohmann::json(s.q_lora_rank) : nlohmann::json(nullptr);
  if (!s.rope_interleave) cfg["rope_interleave"] = false;
  if (s.dtype == StDType::f8_e4m3)
    cfg["quantization_config"] = {{"quant_method", "fp8"}, {"weight_block_size", {128, 128}}};
  std::ofstream(fs::path(dir) / "config.json") << cfg.dump(2);

  std::mt19937_64 rng(s.seed);
  std::normal_distribution<float> nd(0.f, 1.f);
  auto mat = [&](int64_t rows, int64_t cols, float gain) {
    std::vector<float> v(rows * cols);
    for (auto& x : v) x = nd(rng) * gain / std::sqrt(float(cols));
    return v;
  };
  auto norm = [&](int64_t n) {
    std::vector<float> v(n);
    for (auto& x : v) x = 1.f + 0.2f * nd(rng);
    return v;
  };
  const int64_t H = s.heads, D = s.hidden, qk = s.qk_nope + 64;
  std::vector<Blob> blobs;
  for (int l = 0; l < s.layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".self_attn.";
    if (s.q_lora_rank) {
      put(blobs, p + "q_a_proj.weight", s.dtype, s.q_lora_rank, D, mat(s.q_lora_rank, D, 1), false);
      put(blobs, p + "q_a_layernorm.weight", s.dtype, 1, s.q_lora_rank, norm(s.q_lora_rank), true);
      put(blobs, p + "q_b_proj.weight", s.dtype, H * qk, s.q_lora_rank, mat(H * qk, s.q_lora_rank, 1), false);
    } else {
      put(blobs, p + "q_proj.weight", s.dtype, H * qk, D, mat(H * qk, D, 1), false);
    }
    put(blobs, p + "kv_a_proj_with_mqa.weight", s.dtype, 576, D, mat(576, D, 1), false);
    put(blobs, p + "kv_a_layernorm.weight", s.dtype, 1, 512, norm(512), true);
    // Gain 3 on kv_b_proj spreads the attention scores (std ~1.5) so the softmax is not flat.
    put(blobs, p + "kv_b_proj.weight", s.dtype, H * (s.qk_nope + s.v_head), 512,
        mat(H * (s.qk_nope + s.v_head), 512, 3), false);
    put(blobs, p + "o_proj.weight", s.dtype, D, H * s.v_head, mat(D, H * s.v_head, 1), false);
  }
  // Unrelated tensors a real checkpoint has beside the attention.
  put(blobs, "model.embed_tokens.weight", StDType::bf16, 8, D, mat(8, D, 1), false);

  auto data = [](const std::vector<Blob>& bs, size_t i0, size_t i1) {
    std::vector<StTensorData> v;
    for (size_t i = i0; i < i1; ++i) v.push_back({bs[i].name, bs[i].dtype, bs[i].shape, bs[i].bytes.data()});
    return v;
  };
  if (s.shards <= 1) {
    write_safetensors((fs::path(dir) / "model.safetensors").string(), data(blobs, 0, blobs.size()));
    return dir;
  }
  nlohmann::json index = {{"metadata", {{"total_size", 0}}}, {"weight_map", nlohmann::json::object()}};
  for (int k = 0; k < s.shards; ++k) {
    char name[64];
    std::snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", k + 1, s.shards);
    const size_t i0 = blobs.size() * k / s.shards, i1 = blobs.size() * (k + 1) / s.shards;
    write_safetensors((fs::path(dir) / name).string(), data(blobs, i0, i1));
    for (size_t i = i0; i < i1; ++i) index["weight_map"][blobs[i].name] = name;
  }
  std::ofstream(fs::path(dir) / "model.safetensors.index.json") << index.dump(2);
  return dir;
}

}  // namespace mla::test
