// A DeepSeek-V2/V3 model's attention configuration, read from the config.json that Hugging Face
// checkpoints ship (the config's own field names), and the quantities derived from it exactly as
// transformers' DeepseekV3Attention / DeepseekV2Attention and their rotary embeddings define them:
// the softmax scale, the RoPE inverse frequencies (default or YaRN) and the cos/sin factor.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mla/export.h"

namespace mla {

struct RopeScaling {
  std::string type = "default";  // "default" or "yarn" (`rope_type`, or the older `type`)
  double factor = 1.0;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 0.0, mscale_all_dim = 0.0;  // 0: absent
  int64_t original_max_position_embeddings = 0;
  bool truncate = true;          // floor/ceil the correction range (transformers' default)
  bool present = false;          // config.json had a rope_scaling object
};

struct ModelConfig {
  std::string model_type;        // "deepseek_v3", "deepseek_v2", ...
  int hidden_size = 0;
  int num_heads = 0;             // num_attention_heads
  int num_hidden_layers = 0;
  int q_lora_rank = 0;           // 0: no q LoRA (q_proj), as in DeepSeek-V2-Lite
  int kv_lora_rank = 0;          // must be 512 (kLatentDim)
  int qk_nope_head_dim = 0;
  int qk_rope_head_dim = 0;      // must be 64 (kRopeDim)
  int v_head_dim = 0;
  double rms_norm_eps = 1e-6;    // the decoder's norms; see kAttnNormEps
  double rope_theta = 10000.0;
  int64_t max_position_embeddings = 0;
  bool rope_interleave = true;   // V3 configs may set false: rotate halves instead of pairs
  RopeScaling rope;
  // quantization_config (fp8 checkpoints): weight_block_size [rows, cols]; 0: none.
  int fp8_block_rows = 0, fp8_block_cols = 0;

  int qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
};

// transformers builds q_a_layernorm and kv_a_layernorm without passing rms_norm_eps, so they use
// the RMSNorm default 1e-6 whatever the config says (DeepSeek's own inference code does the same).
constexpr double kAttnNormEps = 1e-6;

// Parses config.json text; `source` names the file in errors. Checks every field the attention
// needs (present, right type, in range) and refuses what the kernels cannot run: kv_lora_rank
// other than 512, qk_rope_head_dim other than 64, an odd rope dim, attention_bias, an unknown
// rope type.
MLA_API ModelConfig parse_model_config(const std::string& json_text, const std::string& source);
MLA_API ModelConfig read_model_config(const std::string& path);

// Built-in shapes for `mla demo --preset` (the published configs' attention fields).
MLA_API ModelConfig preset_config(const std::string& name);  // "deepseek-v3" | "deepseek-v2-lite"

// yarn_get_mscale: 0.1 * mscale * ln(scale) + 1 for scale > 1, else 1.
MLA_API double yarn_mscale(double scale, double mscale);
// 1/sqrt(qk_nope + qk_rope), times mscale(factor, mscale_all_dim)^2 when rope_scaling has a
// non-zero mscale_all_dim.
MLA_API double softmax_scale(const ModelConfig& c);
// The RoPE inverse frequencies [qk_rope_head_dim / 2] (default or YaRN).
MLA_API std::vector<double> rope_inv_freq(const ModelConfig& c);
// The factor cos and sin carry: 1 (default); YaRN: mscale(factor, mscale) /
// mscale(factor, mscale_all_dim) when both are given, else mscale(factor, 1).
MLA_API double rope_attention_factor(const ModelConfig& c);

}  // namespace mla
