// Time per pipeline stage of a decode (plain data): what DecodeOptions::stage_times collects and
// `mla bench --stage-times` prints.
#pragma once

#include <cstdint>

#include "mla/export.h"

namespace mla {

// Summed over every work item of every worker. Indexed like the stage vocabulary (QK, QK_nope,
// QK_rope, SM, PV, UP: stage_index_name); steps counts the stage's runs. Added to, never reset,
// by decode.
struct StageTimes {
  static constexpr int kStages = 6;
  double seconds[kStages] = {};
  int64_t steps[kStages] = {};
};
// "QK", "QK_nope", "QK_rope", "SM", "PV", "UP"; "?" outside 0..5.
MLA_API const char* stage_index_name(int i);

}  // namespace mla
