// Harness: small DeepSeek-style checkpoints written to disk the way the Hugging Face hub ships
// them (config.json + model.safetensors, or shards + model.safetensors.index.json), with seeded
// random weights in bf16, fp16, fp32 or fp8 e4m3 with 128x128 block scales.
#pragma once

#include <cstdint>
#include <string>

#include "mla/safetensors.h"

namespace mla::test {

struct TinyModelSpec {
  int hidden = 256, heads = 4, q_lora_rank = 96;  // q_lora_rank 0: q_proj (V2-Lite style)
  int qk_nope = 32, v_head = 48;
  int layers = 2;
  StDType dtype = StDType::bf16;
  int shards = 1;                  // > 1: shards with an index
  bool rope_type_key = false;      // spell rope_scaling's type as "rope_type" instead of "type"
  double mscale = 0.707, mscale_all_dim = 0.707;
  bool rope_interleave = true;     // false: "rope_interleave": false (rotate-half RoPE)
  uint64_t seed = 1;
};

// Writes the model into `dir` (created) and returns dir.
std::string write_tiny_model(const std::string& dir, const TinyModelSpec& spec);

// A fresh temporary directory (under MLA_TEST_TMP if set).
std::string make_temp_dir(const std::string& tag);

}  // namespace mla::test
