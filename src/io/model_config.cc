// config.json of DeepSeek-V2/V3 checkpoints, and the RoPE / softmax-scale quantities derived from
// it (transformers' modeling_rope_utils._compute_yarn_parameters and DeepseekV3Attention).
#include "mla/model.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "mla/cache.h"
#include "mla/status.h"

namespace mla {

using json = nlohmann::json;

namespace {

int get_int(const json& j, const char* key, const std::string& src, int lo, int hi) {
  MLA_CHECK(j.contains(key), src << ": missing \"" << key << "\"");
  MLA_CHECK(j[key].is_number_integer(), src << ": \"" << key << "\" = " << j[key].dump() << " is not an integer");
  const int64_t v = j[key].get<int64_t>();
  MLA_CHECK(v >= lo && v <= hi, src << ": \"" << key << "\" = " << v << " is outside [" << lo << ", " << hi << "]");
  return int(v);
}

double get_num(const json& j, const char* key, const std::string& src, double dflt) {
  if (!j.contains(key) || j[key].is_null()) return dflt;
  MLA_CHECK(j[key].is_number(), src << ": \"" << key << "\" = " << j[key].dump() << " is not a number");
  const double v = j[key].get<double>();
  MLA_CHECK(std::isfinite(v), src << ": \"" << key << "\" is not finite");
  return v;
}

}  // namespace

ModelConfig parse_model_config(const std::string& text, const std::string& src) {
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    MLA_FAIL(src << ": not valid JSON: " << e.what());
  }
  MLA_CHECK(j.is_object(), src << ": not a JSON object");
  ModelConfig c;
  if (j.contains("model_type") && j["model_type"].is_string()) c.model_type = j["model_type"];
  // A config this code does not implement is refused, never run approximately: DeepSeek-V3.2's
  // sparse attention (a lightning indexer picking index_topk positions) is not a dense V3 layer.
  for (const char* key : {"index_topk", "index_n_heads", "index_head_dim"})
    MLA_CHECK(!j.contains(key) || j[key].is_null(),
              src << ": \"" << key << "\" = " << j[key].dump()
                  << ": DeepSeek-V3.2 sparse attention (the lightning indexer) is not implemented");
  MLA_CHECK(c.model_type.empty() || c.model_type == "deepseek_v2" || c.model_type == "deepseek_v3",
            src << ": model_type \"" << c.model_type
                << "\" is not implemented (deepseek_v2 and deepseek_v3 are)");
  c.hidden_size = get_int(j, "hidden_size", src, 1, 1 << 20);
  c.num_heads = get_int(j, "num_attention_heads", src, 1, 1 << 16);
  c.num_hidden_layers = j.contains("num_hidden_layers") ? get_int(j, "num_hidden_layers", src, 1, 1 << 16) : 1;
  if (j.contains("q_lora_rank") && !j["q_lora_rank"].is_null())
    c.q_lora_rank = get_int(j, "q_lora_rank", src, 1, 1 << 20);
  c.kv_lora_rank = get_int(j, "kv_lora_rank", src, 1, 1 << 20);
  c.qk_nope_head_dim = get_int(j, "qk_nope_head_dim", src, 1, 1 << 16);
  c.qk_rope_head_dim = get_int(j, "qk_rope_head_dim", src, 1, 1 << 16);
  c.v_head_dim = get_int(j, "v_head_dim", src, 1, 1 << 16);
  MLA_CHECK(c.kv_lora_rank == kLatentDim, src << ": kv_lora_rank = " << c.kv_lora_rank
                                              << " is not supported: the attention kernels' latent is "
                                              << kLatentDim << " wide");
  MLA_CHECK(c.qk_rope_head_dim == kRopeDim, src << ": qk_rope_head_dim = " << c.qk_rope_head_dim
                                                << " is not supported: the kernels' rope part is "
                                                << kRopeDim << " wide");
  c.rms_norm_eps = get_num(j, "rms_norm_eps", src, 1e-6);
  MLA_CHECK(c.rms_norm_eps > 0, src << ": rms_norm_eps = " << c.rms_norm_eps << " is not positive");
  c.rope_theta = get_num(j, "rope_theta", src, 10000.0);
  MLA_CHECK(c.rope_theta > 1, src << ": rope_theta = " << c.rope_theta << " must exceed 1");
  c.max_position_embeddings = j.contains("max_position_embeddings")
                                  ? get_int(j, "max_position_embeddings", src, 1, 1 << 30) : 0;
  if (j.contains("rope_interleave") && !j["rope_interleave"].is_null()) {
    MLA_CHECK(j["rope_interleave"].is_boolean(), src << ": \"rope_interleave\" is not true/false");
    c.rope_interleave = j["rope_interleave"].get<bool>();
  }
  if (j.contains("attention_bias") && j["attention_bias"].is_boolean())
    MLA_CHECK(!j["attention_bias"].get<bool>(),
              src << ": attention_bias = true is not supported (DeepSeek checkpoints have none)");
  if (j.contains("rope_scaling") && !j["rope_scaling"].is_null()) {
    const json& r = j["rope_scaling"];
    MLA_CHECK(r.is_object(), src << ": \"rope_scaling\" is not an object");
    RopeScaling& s = c.rope;
    s.present = true;
    // transformers: rope_type, originally spelled "type".
    const char* key = r.contains("rope_type") ? "rope_type" : "type";
    MLA_CHECK(r.contains(key) && r[key].is_string(), src << ": rope_scaling has no \"rope_type\" or \"type\"");
    s.type = r[key].get<std::string>();
    MLA_CHECK(s.type == "yarn" || s.type == "default",
              src << ": rope_scaling type \"" << s.type << "\" is not supported (yarn or default)");
    s.factor = get_num(r, "factor", src, s.type == "yarn" ? NAN : 1.0);
    MLA_CHECK(std::isfinite(s.factor) && s.factor > 0,
              src << ": rope_scaling.factor is missing or not positive");
    s.beta_fast = get_num(r, "beta_fast", src, 32.0);
    s.beta_slow = get_num(r, "beta_slow", src, 1.0);
    s.mscale = get_num(r, "mscale", src, 0.0);
    s.mscale_all_dim = get_num(r, "mscale_all_dim", src, 0.0);
    if (r.contains("truncate") && r["truncate"].is_boolean()) s.truncate = r["truncate"].get<bool>();
    s.original_max_position_embeddings =
        r.contains("original_max_position_embeddings") && !r["original_max_position_embeddings"].is_null()
            ? get_int(r, "original_max_position_embeddings", src, 1, 1 << 30)
            : c.max_position_embeddings;
    if (s.type == "yarn")
      MLA_CHECK(s.original_max_position_embeddings > 0,
                src << ": yarn needs original_max_position_embeddings or max_position_embeddings");
  }
  if (j.contains("quantization_config") && j["quantization_config"].is_object()) {
    const json& q = j["quantization_config"];
    if (q.contains("weight_block_size")) {
      const json& b = q["weight_block_size"];
      MLA_CHECK(b.is_array() && b.size() == 2 && b[0].is_number_integer() && b[1].is_number_integer() &&
                    b[0].get<int64_t>() > 0 && b[1].get<int64_t>() > 0,
                src << ": quantization_config.weight_block_size = " << b.dump()
                    << " is not two positive integers");
      c.fp8_block_rows = b[0].get<int>();
      c.fp8_block_cols = b[1].get<int>();
    }
  }
  return c;
}

ModelConfig read_model_config(const std::string& path) {
  std::ifstream in(path);
  MLA_CHECK(in, path << ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_model_config(ss.str(), path);
}

ModelConfig preset_config(const std::string& name) {
  // Attention fields of the published config.json files (deepseek-ai/DeepSeek-V3,
  // deepseek-ai/DeepSeek-V2-Lite).
  if (name == "deepseek-v3")
    return parse_model_config(R"({"model_type": "deepseek_v3", "hidden_size": 7168,
      "num_attention_heads": 128, "num_hidden_layers": 61, "q_lora_rank": 1536, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "rms_norm_eps": 1e-06,
      "rope_theta": 10000, "max_position_embeddings": 163840,
      "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 1.0,
        "mscale_all_dim": 1.0, "original_max_position_embeddings": 4096, "type": "yarn"},
      "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}})",
                              "preset deepseek-v3");
  if (name == "deepseek-v2-lite")
    return parse_model_config(R"({"model_type": "deepseek_v2", "hidden_size": 2048,
      "num_attention_heads": 16, "num_hidden_layers": 27, "q_lora_rank": null, "kv_lora_rank": 512,
      "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128, "rms_norm_eps": 1e-06,
      "rope_theta": 10000, "max_position_embeddings": 163840,
      "rope_scaling": {"beta_fast": 32, "beta_slow": 1, "factor": 40, "mscale": 0.707,
        "mscale_all_dim": 0.707, "original_max_position_embeddings": 4096, "type": "yarn"}})",
                              "preset deepseek-v2-lite");
  MLA_FAIL("--preset " << name << " is not deepseek-v3 or deepseek-v2-lite");
}

double yarn_mscale(double scale, double mscale) {
  if (scale <= 1) return 1.0;
  return 0.1 * mscale * std::log(scale) + 1.0;
}

double softmax_scale(const ModelConfig& c) {
  double s = 1.0 / std::sqrt(double(c.qk_head_dim()));
  if (c.rope.present && c.rope.mscale_all_dim != 0) {
    const double m = yarn_mscale(c.rope.factor, c.rope.mscale_all_dim);
    s *= m * m;
  }
  return s;
}

std::vector<double> rope_inv_freq(const ModelConfig& c) {
  const int dim = c.qk_rope_head_dim;
  const double base = c.rope_theta;
  std::vector<double> f(dim / 2);
  for (int i = 0; i < dim / 2; ++i) f[i] = 1.0 / std::pow(base, double(2 * i) / dim);
  if (!c.rope.present || c.rope.type != "yarn") return f;
  const RopeScaling& r = c.rope;
  auto correction_dim = [&](double rotations) {
    return dim * std::log(double(r.original_max_position_embeddings) / (rotations * 2 * M_PI)) /
           (2 * std::log(base));
  };
  double low = correction_dim(r.beta_fast), high = correction_dim(r.beta_slow);
  if (r.truncate) low = std::floor(low), high = std::ceil(high);
  low = std::max(low, 0.0);
  high = std::min(high, double(dim - 1));
  if (low == high) high += 0.001;  // avoids a division by zero in the ramp
  for (int i = 0; i < dim / 2; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    const double extrapolation = 1.0 - ramp;  // weight of the original frequency
    f[i] = f[i] / r.factor * (1.0 - extrapolation) + f[i] * extrapolation;
  }
  return f;
}

double rope_attention_factor(const ModelConfig& c) {
  if (!c.rope.present || c.rope.type != "yarn") return 1.0;
  const RopeScaling& r = c.rope;
  if (r.mscale != 0 && r.mscale_all_dim != 0)
    return yarn_mscale(r.factor, r.mscale) / yarn_mscale(r.factor, r.mscale_all_dim);
  return yarn_mscale(r.factor, 1.0);
}

}  // namespace mla
